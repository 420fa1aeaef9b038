"""The two-stage search: evolution, Optuna stage, target space, and the whole pipeline with kills."""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from optuna.trial import TrialState

from nas.arch import Arch
from nas.cost.budget import parse_budget
from nas.cost.energy import price_arch
from nas.errors import InfeasibleBudgetError
from nas.search.evaluator import Pricer
from nas.search.evolution import EvolutionSearch
from nas.search.pipeline import SearchConfig, SearchRun
from nas.search.target_search import open_study, run_stage_two
from nas.space import SearchSpace, TargetSpace

SPACE = SearchSpace.load("tiny")
PRICER = Pricer(parse_budget("0.02mJ"), "shift")


def fake_fitness(arch: Arch) -> float:
    """A deterministic stand-in for supernet accuracy: bigger is better, with a wiggle."""
    return sum(b.out_channels * b.kernel_size for _, _, b in arch.blocks()) / 100 + (int(arch.arch_id, 16) % 7) / 10


def evo(seed=0, **kw):
    return EvolutionSearch(SPACE, fake_fitness, PRICER.cost, 0.02, population=6, generations=3, seed=seed, **kw)


def test_evolution_is_deterministic_and_feasible():
    a, b = evo(), evo()
    best_a, best_b = a.run(progress=False), b.run(progress=False)
    assert best_a.genome == best_b.genome and a.history == b.history
    for c in a.population:
        assert c.cost <= 0.02 * c.multiple and c.target_floor <= 0.02
    assert max(r["accuracy"] for r in a.history) == best_a.accuracy


def test_evolution_resumes_the_same_trajectory(tmp_path):
    ref = evo()
    ref.run(progress=False)
    ck, csv = tmp_path / "stage1.json", tmp_path / "pop.csv"
    first = evo()
    first.generations = 1  # "killed" after the first generation's checkpoint
    first.run(ck, csv, progress=False)
    resumed = evo()
    resumed.run(ck, csv, progress=False)
    assert resumed.history == ref.history
    assert len(csv.read_text().strip().splitlines()) == 1 + len(ref.history)


def test_infeasible_budget_stops_with_the_cheapest_cost():
    floor = PRICER.cost(SPACE.min_arch())
    evaluated = []
    search = EvolutionSearch(SPACE, lambda a: evaluated.append(a) or fake_fitness(a), PRICER.cost, floor / 2,
                             population=4, generations=2)
    with pytest.raises(InfeasibleBudgetError, match=f"smallest feasible budget is {floor:.4g} mJ"):
        search.run(progress=False)
    assert evaluated == []  # stopped before evaluating any candidate


def test_target_space_cuts_fit_the_subnet():
    rng = random.Random(0)
    sub = SPACE.sample(rng)
    ts = TargetSpace(SPACE, sub)
    for _ in range(30):
        t, blocks = ts.decode(ts.sample_genome(rng))
        assert ts.decode(ts.encode(t, blocks)) == (t, blocks)
        for i, (st, idx) in enumerate(zip(t.stages, blocks)):
            assert idx[0] == 0 and set(idx) <= set(range(len(sub.stages[i].blocks)))
            assert st.blocks[0].out_channels <= sub.stages[i].blocks[0].out_channels
    smallest, _ = ts.decode(ts.extreme_genome(False))
    assert PRICER.cost(smallest) <= PRICER.cost(sub)


def _acc(target, blocks):
    return fake_fitness(target)


def test_stage_two_respects_the_budget_and_resumes(tmp_path):
    sub = SPACE.max_arch()
    path = tmp_path / "s2.journal"
    best, study = run_stage_two(SPACE, sub, _acc, PRICER.cost, 0.02, n_trials=8, storage_path=path, progress=False)
    assert best.cost <= 0.02 and best.trial is not None
    warm = [t for t in study.trials if t.user_attrs.get("warm_start")]
    assert {t.user_attrs["warm_start"] for t in warm} == {"largest", "smallest"} and {t.number for t in warm} == {0, 1}
    # a process killed mid-trial leaves it RUNNING in the journal
    study = open_study(path, "stage2", 0)
    zombie = study.ask()
    ts = TargetSpace(SPACE, sub)
    for k, v in ts.genes().items():
        zombie.suggest_categorical(k, list(v))
    best2, study2 = run_stage_two(SPACE, sub, _acc, PRICER.cost, 0.02, n_trials=10, storage_path=path, progress=False)
    states = [t.state.name for t in study2.trials]
    assert states.count("COMPLETE") == 10 and states.count("FAIL") == 1
    requeued = [t for t in study2.trials if t.user_attrs.get("requeued_from") == zombie.number]
    assert len(requeued) == 1 and requeued[0].params == study2.trials[zombie.number].params
    assert best2.accuracy >= best.accuracy


# ---------------------------------------------------------------------------------- the pipeline

SMALL = dict(supernet_epochs=1, population=4, generations=2, trials=6, final_epochs=1, max_train_images=256,
             eval_images=100, bn_images=100, batch_size=64)


def test_pipeline_end_to_end(tmp_path, _count_work):
    run = SearchRun(SearchConfig(budget="0.02mJ", **SMALL), tmp_path / "run", progress=False)
    s = run.run()
    out = tmp_path / "run"
    for name in ("config.json", "supernet.pt", "population.csv", "trials.csv", "pareto.png", "report.md", "summary.json",
                 "target/arch.json", "target/weights.pt", "target/cost.json", "target/meta.json", "subnet.json"):
        assert (out / name).is_file(), name
    assert s["meets_budget"] and s["budget_binding"]
    # re-priced independently (energy model, not the run's table): the same cost, within budget
    target = Arch.load(out / "target" / "arch.json")
    assert target.op_kind == "shift"
    assert price_arch(target).energy_mJ == pytest.approx(s["energy_mJ"], rel=1e-9) and s["energy_mJ"] <= 0.02
    meta = json.loads((out / "target" / "meta.json").read_text())
    assert meta["multiplicative_layers"] == ["classifier"] and meta["export_max_abs_logit_diff"] < 1e-4
    # resuming redoes nothing that is done, counted as work: no supernet or training step, no
    # supernet evaluation; a finished run reads no data and rewrites no file
    work = _count_work()
    assert work["steps"] > 0 and work["evaluations"] > 0 and work["setup"] == 1  # the counters count
    work.update(steps=0, evaluations=0, setup=0)
    files = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file() and p.name != ".lock"}
    again = SearchRun.resume(out, progress=False).run()
    assert work == {"steps": 0, "evaluations": 0, "setup": 0}
    assert again == s
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file() and p.name != ".lock"} == files
    # with the last two steps undone: the final training (already at its last epoch) is exported
    # again without a step, stages one and two are taken from the state file, not re-evaluated
    state = json.loads((out / "state.json").read_text())
    del state["done"]["train"], state["done"]["report"]
    (out / "state.json").write_text(json.dumps(state))
    kept = {n: (out / n).read_bytes() for n in ("supernet.pt", "stage1.json", "stage2.journal", "trials.csv", "population.csv")}
    work.update(steps=0, evaluations=0, setup=0)
    again = SearchRun.resume(out, progress=False).run()
    assert work == {"steps": 0, "evaluations": 0, "setup": 1}
    assert again["accuracy"] == s["accuracy"] and again["target_arch_id"] == s["target_arch_id"]
    assert {n: (out / n).read_bytes() for n in kept} == kept


@pytest.fixture
def _count_work(monkeypatch):
    """Counters of the work a search does: training steps (supernet and final), supernet
    evaluations, data set-ups."""
    from nas.search.evaluator import Evaluator
    from nas.train.loop import TrainLoop

    work = {"steps": 0, "evaluations": 0, "setup": 0}

    def counting(cls, name, key):
        orig = getattr(cls, name)

        def wrapper(self, *a, **k):
            work[key] += 1
            return orig(self, *a, **k)

        monkeypatch.setattr(cls, name, wrapper)

    counting(TrainLoop, "step", "steps")
    counting(Evaluator, "accuracy", "evaluations")
    counting(SearchRun, "setup", "setup")
    return lambda: work


def test_budget_that_does_not_bind(tmp_path):
    run = SearchRun(SearchConfig(budget="20mJ", **SMALL), tmp_path / "r", progress=False)
    info = run.check_budget()  # no setup: the price check reads no data
    assert not info["binds"] and info["feasible"] and info["cost_range"][1] < 20
    assert [p["space"] for p in info["binds_in"]] == ["mobile224"] and info["binds_in"][0]["presets"] == ["imagenet"]
    assert not (tmp_path / "r").exists()


def test_infeasible_budget_stops_before_training(tmp_path):
    exe = str(Path(sys.executable).parent / "shiftaddaug-search")
    r = subprocess.run([exe, "--budget", "1uJ", "--out", str(tmp_path / "r"), "--quiet"], capture_output=True, text=True)
    assert r.returncode == 3
    assert "smallest feasible budget is" in r.stderr and r.stderr.count("\n") == 1
    assert not (tmp_path / "r").exists()  # stopped before training (before creating the run directory)


def _search_cmd(out: Path, **overrides) -> list[str]:
    exe = str(Path(sys.executable).parent / "shiftaddaug-search")
    args = {**SMALL, **overrides}
    cmd = [exe, "--budget", "0.02mJ", "--out", str(out), "--quiet"]
    for k, v in args.items():
        if k != "bn_images":
            cmd += [f"--{k.replace('_', '-')}", str(v)]
    return cmd


def _kill_when(cmd: list[str], ready, timeout: float = 240) -> bool:
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    t0 = time.time()
    try:
        while proc.poll() is None and time.time() - t0 < timeout:
            if ready():
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                return True
            time.sleep(0.05)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return False


def _state(out: Path) -> dict:
    try:
        return json.loads((out / "state.json").read_text())["done"]
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def test_killed_search_resumes_without_redoing_work(tmp_path):
    out = tmp_path / "run"
    cmd = _search_cmd(out, supernet_epochs=2, trials=40)
    # kill 1: during supernet training, after the first epoch's checkpoint
    assert _kill_when(cmd, lambda: (out / "supernet_log.json").is_file())
    epoch1 = json.loads((out / "supernet_log.json").read_text())["epochs"][0]
    # kill 2 (after resuming): in the middle of stage two
    resume = [cmd[0], "--resume", str(out), "--quiet"]

    def mid_stage_two():
        if "stage1" not in _state(out) or not (out / "stage2.journal").is_file():
            return False
        study = open_study(out / "stage2.journal", "stage2", 0)
        return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))) >= 3

    killed = _kill_when(resume, mid_stage_two)
    print("killed in stage two:", killed)
    done = _state(out)
    assert "supernet" in done and "stage1" in done
    stage1_before = done["stage1"]
    if killed:
        completed_before = len(open_study(out / "stage2.journal", "stage2", 0).get_trials(states=(TrialState.COMPLETE,)))
    r = subprocess.run(resume, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["meets_budget"]
    log = json.loads((out / "supernet_log.json").read_text())["epochs"]
    assert [e["epoch"] for e in log] == [1, 2] and log[0] == epoch1  # epoch 1 was not trained again
    assert _state(out)["stage1"] == stage1_before  # stage one was not rerun
    if killed:
        study = open_study(out / "stage2.journal", "stage2", 0)
        states = [t.state.name for t in study.trials]
        assert states.count("COMPLETE") == 40 and states.count("COMPLETE") >= completed_before
