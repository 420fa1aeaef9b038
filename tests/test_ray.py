"""The search on a real Ray cluster (``ray start --head`` on loopback, 2 CPUs): same answers as a
local run (or the documented differences, nas/search/ray_executor.py), killed workers retried,
and ray optional.

The cluster tests skip when ray is not installed; the first two tests (no ray) always run.
"""

import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

# read when ray is imported: keep this process's Ray on loopback, no token in $HOME, no usage stats
RAY_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
for _k, _v in RAY_ENV.items():
    os.environ.setdefault(_k, _v)

from nas.errors import ConfigError  # noqa: E402
from nas.search.pipeline import SearchConfig, SearchRun  # noqa: E402

SMALL = dict(supernet_epochs=1, population=4, generations=2, trials=6, final_epochs=1, max_train_images=256,
             eval_images=100, bn_images=100, batch_size=64)


# ---------------------------------------------------------------------------------- ray stays optional
def test_ray_is_imported_lazily_and_only_by_the_executor():
    code = ("import sys\n"
            "import nas, nas.cli, nas.search.pipeline, nas.search.executor, nas.search.ray_executor, nas.supernet.train, "
            "nas.train.trainer, nas.train.loop, nas.train.distributed, nas.train.ray_train\n"
            "from nas.search.ray_executor import RayOptions\n"
            "RayOptions.from_env({'SHIFTADDAUG_RAY_MAX_CONCURRENT': '1'})\n"
            "print(sorted(m for m in sys.modules if m == 'ray' or m.startswith('ray.')))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"


def test_without_ray_the_option_says_how_to_install_it(monkeypatch, tmp_path, capsys):
    from nas.cli import search_main
    from nas.search.ray_executor import check_ray, connect

    for name in [m for m in sys.modules if m == "ray" or m.startswith("ray.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "ray", None)  # "import ray" now raises ImportError
    with pytest.raises(ConfigError, match=r"^--ray-address: got 'local'; needs the ray extra: pip install -e '\.\[ray\]'$"):
        check_ray("local")
    with pytest.raises(ConfigError, match="needs the ray extra"):
        connect("127.0.0.1:6379")
    with pytest.raises(ConfigError, match="allowed: local, auto or HOST:PORT"):
        check_ray("somewhere")
    assert search_main(["--ray-address", "local", "--out", str(tmp_path / "r"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pip install -e '.[ray]'" in err
    assert not (tmp_path / "r").exists()  # nothing ran
    # the local path needs no ray at all
    run = SearchRun(SearchConfig(**SMALL), tmp_path / "local", progress=False)
    run.setup()
    assert run.check_budget()["binds"]


def test_options_from_the_environment():
    from nas.search.ray_executor import RayOptions

    o = RayOptions.from_env({"SHIFTADDAUG_RAY_EVAL_WORKERS": "3", "SHIFTADDAUG_RAY_MAX_CONCURRENT": "1",
                             "SHIFTADDAUG_RAY_USE_GPU": "1", "SHIFTADDAUG_RAY_MAX_FAILURES": "0"})
    assert (o.eval_workers, o.max_concurrent, o.use_gpu, o.max_failures, o.train_workers) == (3, 1, True, 0, None)
    with pytest.raises(ConfigError, match="^SHIFTADDAUG_RAY_TRAIN_WORKERS: got 'two'"):
        RayOptions.from_env({"SHIFTADDAUG_RAY_TRAIN_WORKERS": "two"})
    with pytest.raises(ConfigError, match="^SHIFTADDAUG_RAY_EVAL_WORKERS: got 0"):
        RayOptions(eval_workers=0)


# ---------------------------------------------------------------------------------- a real cluster
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _session_pids(sid: int) -> list[int]:
    """Processes of the session ``ray start`` opened (the cluster's daemons and workers)."""
    pids = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                stat = Path(f"/proc/{d}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[3]) == sid:
                pids.append(int(d))
    return pids


def _cpu_seconds(pid: int) -> float:
    f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def _title(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
    except OSError:
        return ""


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """``ray start --head`` on 127.0.0.1 with 2 CPUs, HOME pointed at an empty folder; stopped at
    the end by terminating that ``ray start --block`` (which stops its daemons and workers), not
    with ``ray stop``, which would stop every Ray instance on the machine."""
    pytest.importorskip("ray.tune")
    pytest.importorskip("ray.train")
    if not sys.platform.startswith("linux"):
        pytest.skip("the cluster fixture reads /proc")
    exe = Path(sys.executable).parent / "ray"
    exe = str(exe) if exe.is_file() else shutil.which("ray")
    if exe is None:
        pytest.skip("the ray command is not installed")
    home = tmp_path_factory.mktemp("home")
    temp = Path(tempfile.mkdtemp(prefix="ray", dir="/tmp"))  # short: Ray's unix sockets live in here
    port = _free_port()
    log = temp / "ray_start.log"
    # a stopping node waits for running work to drain (30 s by default): not in a test
    env = {**os.environ, **RAY_ENV, "HOME": str(home), "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "1"}
    cmd = [exe, "start", "--head", f"--port={port}", "--num-cpus=2",
           "--disable-usage-stats", "--include-dashboard=false", f"--temp-dir={temp}", "--block"]
    with log.open("w") as f:
        proc = subprocess.Popen(cmd, env=env, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
    mp = pytest.MonkeyPatch()
    try:
        t0 = time.time()
        while "Ray runtime started" not in log.read_text():
            assert proc.poll() is None, log.read_text()[-3000:]
            assert time.time() - t0 < 120, "ray start did not come up"
            time.sleep(0.2)
        mp.setenv("HOME", str(home))
        yield {"address": f"127.0.0.1:{port}", "sid": proc.pid, "home": home}
    finally:
        mp.undo()
        import ray

        ray.shutdown()
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        for pid in _session_pids(proc.pid):  # normally none: only this cluster's own processes
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        shutil.rmtree(temp, ignore_errors=True)


@contextmanager
def one_thread():
    """Ray workers use one torch thread; float rounding depends on the thread count."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


@pytest.fixture(scope="module")
def local(tmp_path_factory):
    """The reference: the whole search, locally, with the same seed (one torch thread)."""
    out = tmp_path_factory.mktemp("local") / "run"
    with one_thread():
        SearchRun(SearchConfig(budget="0.02mJ", **SMALL), out, progress=False).run()
    return out


def ray_run(out: Path, address: str, options=None, reuse_from: Path | None = None, steps=()) -> SearchRun:
    """A run through the cluster; ``steps`` finished steps copied from ``reuse_from`` (not the
    price table: its CSV round trip is not bit-exact, and each run builds its own)."""
    from nas.search.ray_executor import RayExecutor, RayOptions

    out.mkdir(parents=True)
    if steps:
        for name in ("supernet.pt", "supernet_log.json", "stage1.json", "population.csv", "subnet.json"):
            if (reuse_from / name).is_file():
                shutil.copy(reuse_from / name, out / name)
        state = json.loads((reuse_from / "state.json").read_text())
        state["done"] = {k: state["done"][k] for k in steps}
        (out / "state.json").write_text(json.dumps(state))
    executor = RayExecutor(address, out / "ray", options or RayOptions(), progress=False)
    return SearchRun(SearchConfig(budget="0.02mJ", ray_address=address, **SMALL), out, progress=False, executor=executor)


def _weights(path: Path, key: str | None = "model") -> dict:
    import torch

    sd = torch.load(path, map_location="cpu", weights_only=True)
    return sd[key] if key else sd


def _same_tensors(a: dict, b: dict) -> bool:
    import torch

    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _no_time(d: dict) -> dict:
    """A result without wall times and run-directory paths."""
    return {k: (_no_time(v) if isinstance(v, dict) else v) for k, v in d.items() if k not in ("time_s", "train_time_s", "dir")}


def test_search_through_the_cluster_equals_the_local_run(cluster, local, tmp_path):
    from nas.search.ray_executor import RayOptions

    out = tmp_path / "ray"
    # two stage-one actors, one trial at a time, one training worker: every number as local
    run = ray_run(out, cluster["address"], RayOptions(eval_workers=2, max_concurrent=1, train_workers=1))
    with one_thread():
        s = run.run()
    ref = json.loads((local / "summary.json").read_text())
    assert _no_time({k: v for k, v in s.items() if k != "paths"}) == _no_time({k: v for k, v in ref.items() if k != "paths"})
    done, ref_done = json.loads((out / "state.json").read_text())["done"], json.loads((local / "state.json").read_text())["done"]
    assert _same_tensors(_weights(out / "supernet.pt"), _weights(local / "supernet.pt"))  # Ray Train, 1 worker
    assert _no_time(done["stage1"]) == _no_time(ref_done["stage1"])  # actors
    assert (out / "population.csv").read_text() == (local / "population.csv").read_text()
    assert _no_time(done["stage2"]) == _no_time(ref_done["stage2"])  # Tune + OptunaSearch on the same study
    assert (out / "trials.csv").read_text() == (local / "trials.csv").read_text()
    assert _no_time(done["train"]) == _no_time(ref_done["train"])  # Ray Train, 1 worker
    assert _same_tensors(_weights(out / "target" / "weights.pt", None), _weights(local / "target" / "weights.pt", None))
    # results under the run directory, nothing under $HOME
    assert {"supernet", "stage2", "train"} <= {p.name for p in (out / "ray").iterdir()}
    assert not any(p.name in ("ray_results", ".ray") for p in cluster["home"].iterdir())


def _supernet_samples_digest(run: SearchRun) -> str:
    """What every rank must have sampled in epoch 1: the local trainer's sequence."""
    import hashlib

    sup = run.supernet_job().trainer(run.loaders)
    seq = []
    for _ in range(sup.steps_per_epoch):
        sub, target, blocks = sup.sample_pair()
        seq.append((sub.arch_id, target.arch_id, blocks))
    return hashlib.sha256(repr(seq).encode()).hexdigest()[:16]


def test_parallel_search_differs_only_in_the_documented_ways(cluster, local, tmp_path):
    out = tmp_path / "ray2"
    run = ray_run(out, cluster["address"])  # defaults: 2 actors, 2 trials in flight, 2 training workers
    s = run.run()
    # Ray Train: two ranks that sampled the local run's subnets, step for step, and stayed identical
    # (every epoch ends with a check of weights and samples across ranks that raises on a difference)
    supernet, training = run.executor.train_results
    assert supernet["world_size"] == 2 and training["world_size"] == 2
    assert supernet["samples_digests"] == [_supernet_samples_digest(run)]
    assert len(training["samples_digests"]) == SMALL["final_epochs"]
    # the documented differences: per-rank BatchNorm statistics, so other weights than the local run's
    assert not _same_tensors(_weights(out / "supernet.pt"), _weights(local / "supernet.pt"))
    # ... and everything still works: a full study, a feasible TargetNet, an exported model in budget
    trials = (out / "trials.csv").read_text().strip().splitlines()
    assert len(trials) == 1 + SMALL["trials"] and all(",COMPLETE," in t for t in trials[1:])
    assert s["meets_budget"] and s["energy_mJ"] <= 0.02 and (out / "target" / "weights.pt").is_file()
    assert "train" in json.loads((out / "state.json").read_text())["done"]
    # resuming a finished Ray run redoes nothing: no data set up, no file rewritten
    files = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file() and p.name != ".lock"}
    again = SearchRun.resume(out, progress=False)
    setups = []
    again.setup = lambda: setups.append(1)
    assert again.cfg.ray_address == cluster["address"] and again.run()["accuracy"] == s["accuracy"] and setups == []
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file() and p.name != ".lock"} == files


def test_killed_actor_is_restarted_and_its_evaluation_retried(cluster, local, tmp_path):
    from nas.search.evaluator import Evaluator
    from nas.search.ray_executor import RayExecutor, RayOptions

    run = ray_run(tmp_path / "k1", cluster["address"], reuse_from=local, steps=("supernet",))
    run.setup()
    rng = random.Random(1)
    archs = list({a.arch_id: a for a in (run.space.sample(rng, "subnet") for _ in range(60))}.values())[:32]
    net = run.run_supernet()
    with one_thread():
        ev = Evaluator(net, run.calib, run.val)
        expected = [ev.accuracy(a) for a in archs]
    remote = Evaluator(net, run.calib, run.val)  # its cache and count filled by the actors
    ex = RayExecutor(cluster["address"], tmp_path / "k1" / "ray", RayOptions(eval_workers=2), progress=False)
    try:
        assert ex.evaluate(remote, []) == []  # starts the actors
        victim = ex.eval_pids()[0]  # also waits until both actors are up
        killed_at = []

        def kill():  # once the victim has done 0.15 s of work on the batch: surely mid-evaluation
            t0 = _cpu_seconds(victim)
            while _cpu_seconds(victim) - t0 < 0.15:
                time.sleep(0.005)
            os.kill(victim, signal.SIGKILL)
            killed_at.append(time.time())

        killer = threading.Thread(target=kill)
        killer.start()
        got = ex.evaluate(remote, archs)
        finished_at = time.time()
        killer.join()
        assert killed_at and killed_at[0] < finished_at  # the actor died while the batch was evaluated
        assert got == expected and remote.calls == len(archs)  # nothing lost, every score exact, in order
        assert victim not in ex.eval_pids()  # the actor was restarted in a new process
        assert ex.evaluate(remote, archs[:3]) == expected[:3] and remote.calls == len(archs)  # cached
    finally:
        ex.release()


def test_killed_trial_worker_is_retried_and_the_study_completes(cluster, local, tmp_path):
    from nas.search.ray_executor import RayOptions

    from nas.arch import Arch
    from nas.search.evaluator import Evaluator

    run = ray_run(tmp_path / "k2", cluster["address"], RayOptions(max_concurrent=1), reuse_from=local,
                  steps=("supernet", "stage1"))
    killed, stop = [], threading.Event()

    def kill_the_first_running_trial():
        while not stop.is_set() and not killed:
            for pid in _session_pids(cluster["sid"]):
                if _title(pid).startswith("ray::ImplicitFunc.train"):  # a Tune trial inside its train() call
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)
                    break
            time.sleep(0.005)

    killer = threading.Thread(target=kill_the_first_running_trial)
    killer.start()
    try:
        with one_thread():
            run.setup()
            s2 = run.run_stage_two(Evaluator(run.run_supernet(), run.calib, run.val), Arch.load(run.out / "subnet.json"))
    finally:
        stop.set()
        killer.join()
    assert killed, "no trial was running to be killed"
    errors = list((run.out / "ray" / "stage2").glob("trial_*/error.txt"))
    assert len(errors) == 1  # Tune saw exactly one trial die ...
    assert (run.out / "trials.csv").read_text() == (local / "trials.csv").read_text()  # ... re-ran it: nothing lost
    ref = json.loads((local / "state.json").read_text())["done"]["stage2"]
    assert _no_time(s2) == _no_time(ref)


def test_train_command_on_the_cluster_equals_a_local_training(cluster, tmp_path, monkeypatch, capsys):
    from nas.cli import train_main

    argv = ["--model", "mbv2-tiny", "--op", "add", "--epochs", "1", "--max-train-images", "96", "--batch-size", "32",
            "--width-mults", "1,1.5", "--expand-mults", "1,1.5", "--quiet"]
    with one_thread():
        assert train_main(argv + ["--out", str(tmp_path / "local")]) == 0
    monkeypatch.setenv("SHIFTADDAUG_RAY_TRAIN_WORKERS", "1")
    out = tmp_path / "ray"
    assert train_main(argv + ["--out", str(out), "--ray-address", cluster["address"]]) == 0
    assert f"run directory   {out}" in capsys.readouterr().out
    assert _same_tensors(_weights(out / "target" / "weights.pt", None), _weights(tmp_path / "local" / "target" / "weights.pt", None))
    ray_s, local_s = (json.loads((d / "summary.json").read_text()) for d in (out, tmp_path / "local"))
    assert (ray_s["val_acc"], ray_s["test_acc"]) == (local_s["val_acc"], local_s["test_acc"])
    assert (out / "ray" / "train").is_dir()
    # resuming the finished run through the cluster trains nothing more
    before = (out / "metrics.csv").read_text()
    assert train_main(["--resume", str(out), "--ray-address", cluster["address"], "--quiet"]) == 0
    assert (out / "metrics.csv").read_text() == before
