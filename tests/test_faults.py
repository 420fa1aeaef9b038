"""Fault injection on whole runs (CPU): kill -9 at random points then --resume, compared with an
uninterrupted run; a full disk and a read-only folder on every write path; torn and damaged run
files; two processes on one run directory. Every failure must end with one line (exit 1 for the
environment, 2 for input) and leave no partial file; every resume must finish.

What is compared bit for bit: the supernet, stage one, the training (metrics, exported weights) and
the summary, wherever the run was interrupted outside stage two. A run interrupted inside stage two
keeps every trial completed before the kill and re-runs the interrupted one, but Optuna's sampler
state is not part of its journal, so the trials sampled after the resume differ (README,
"Reliability")."""

import contextlib
import csv
import errno
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from nas.cli import export_main, search_main, train_main

TINY = dict(supernet_epochs=1, population=4, generations=2, trials=4, final_epochs=2, max_train_images=200, eval_images=100,
            bn_images=100, batch_size=64)
BIN = Path(sys.executable).parent
ENV = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1]), "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}


def search_args(out: Path, **kw) -> list[str]:
    args = ["--budget", "0.02mJ", "--out", str(out), "--quiet"]
    for k, v in {**TINY, **kw}.items():
        args += [f"--{k.replace('_', '-')}", str(v)]
    return args


def cli(name: str, args: list[str], timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / f"shiftaddaug-{name}"), *args], capture_output=True, text=True, env=ENV, timeout=timeout)


def one_line(err: str, start: str = "error: ") -> str:
    lines = [ln for ln in err.splitlines() if not ln.startswith("note: ")]
    assert len(lines) == 1 and lines[0].startswith(start), err
    return lines[0]


def no_temp_files(out: Path) -> None:
    left = [p for p in out.rglob("*") if p.name.endswith(".tmp") or ".tmp." in p.name]
    assert not left, left


def done(out: Path) -> dict:
    try:
        return json.loads((out / "state.json").read_text())["done"]
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


# ------------------------------------------------------------------------------------------ results


def _csv_rows(path: Path, drop=("time_s",)) -> list[dict]:
    with path.open() as f:
        return [{k: v for k, v in r.items() if k not in drop} for r in csv.DictReader(f)]


def _tensors_equal(a: Path, b: Path, key=None) -> bool:
    x, y = torch.load(a, weights_only=True), torch.load(b, weights_only=True)
    if key:
        x, y = x[key], y[key]
    return x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


def _summary(out: Path) -> dict:
    s = json.loads((out / "summary.json").read_text())
    for k in ("time_s", "paths", "train_time_s"):
        s.pop(k, None)
    if isinstance(s.get("export"), dict):
        s["export"].pop("dir", None)
    return s


def assert_same_search(out: Path, ref: Path, stage_two_interrupted: bool = False) -> None:
    assert _tensors_equal(out / "supernet.pt", ref / "supernet.pt", "model")
    assert (out / "subnet.json").read_text() == (ref / "subnet.json").read_text()
    assert _csv_rows(out / "population.csv") == _csv_rows(ref / "population.csv")
    assert_consistent_search(out)
    if stage_two_interrupted:
        return
    assert _csv_rows(out / "trials.csv") == _csv_rows(ref / "trials.csv")
    assert _summary(out) == _summary(ref)
    assert _csv_rows(out / "train" / "metrics.csv") == _csv_rows(ref / "train" / "metrics.csv")
    assert _tensors_equal(out / "target" / "weights.pt", ref / "target" / "weights.pt")


def assert_consistent_search(out: Path) -> None:
    """The files of a finished search belong to one run: state, summary, export and training agree."""
    from nas.arch import Arch

    s = json.loads((out / "summary.json").read_text())
    st = done(out)
    assert {"supernet", "stage1", "stage2", "train", "report"} <= set(st)
    target = Arch.load(out / "target" / "arch.json")
    assert s["target_arch_id"] == target.arch_id == Arch.from_dict(st["stage2"]["target"]).with_ops("shift").arch_id
    assert s["meets_budget"]
    train_cfg = json.loads((out / "train" / "config.json").read_text())["train"]
    assert train_cfg["target_arch"] == st["stage2"]["target"]
    no_temp_files(out)


def assert_same_training(out: Path, ref: Path) -> None:
    assert _csv_rows(out / "metrics.csv") == _csv_rows(ref / "metrics.csv")
    assert _summary(out) == _summary(ref)
    assert _tensors_equal(out / "target" / "weights.pt", ref / "target" / "weights.pt")
    no_temp_files(out)


# ------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """One uninterrupted tiny search (the reference)."""
    out = tmp_path_factory.mktemp("ref") / "search"
    r = cli("search", search_args(out))
    assert r.returncode == 0, r.stderr[-3000:]
    return out


@pytest.fixture
def copy_of(tmp_path):
    def make(src: Path) -> Path:
        dst = tmp_path / src.name
        shutil.copytree(src, dst)
        return dst

    return make


TRAIN_CFG = {"model": "mbv2-tiny", "op": "shift", "aug": "shiftaddaug", "epochs": 3, "max_train_images": 128, "batch_size": 64,
             "bn_images": 100, "width_mults": [1.0, 1.5], "expand_mults": [1.0, 1.5]}


def new_train_dir(path: Path) -> Path:
    """A training run that has not started: its config.json only (so `--resume` starts it)."""
    from nas.train.trainer import TrainConfig

    path.mkdir(parents=True)
    cfg = TrainConfig(**{**TRAIN_CFG, "width_mults": tuple(TRAIN_CFG["width_mults"]), "expand_mults": tuple(TRAIN_CFG["expand_mults"])})
    (path / "config.json").write_text(json.dumps({"schema_version": 1, "train": cfg.validate().to_dict()}))
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """One uninterrupted tiny training run (the reference)."""
    out = new_train_dir(tmp_path_factory.mktemp("ref") / "train")
    r = cli("train", ["--resume", str(out), "--quiet"])
    assert r.returncode == 0, r.stderr[-3000:]
    return out


# ------------------------------------------------------------------------------------------ one writer, no silent reuse


def test_two_searches_on_one_directory(tmp_path):
    """Defect 2: both ran and mixed their results. Now the second stops at once with one line."""
    out = tmp_path / "run"
    first = subprocess.Popen([str(BIN / "shiftaddaug-search"), *search_args(out)], stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True, env=ENV, start_new_session=True)
    try:
        t0 = time.time()
        while not ((out / ".lock").is_file() and (out / ".lock").read_text()) and time.time() - t0 < 120:
            time.sleep(0.1)
        assert first.poll() is None
        second = cli("search", search_args(out))
        assert second.returncode == 1 and first.poll() is None  # refused at once, not after waiting for the first
        line = one_line(second.stderr)
        assert f"{out} is in use by shiftaddaug-search (pid {first.pid} on " in line
        resumed = cli("search", ["--resume", str(out), "--quiet"])  # nor can a resume sneak in
        assert resumed.returncode == 1 and "is in use by shiftaddaug-search" in one_line(resumed.stderr)
        export = cli("export", [str(out)])
        assert export.returncode != 0 and export.stderr.count("\n") == 1
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()


def test_an_existing_run_is_not_silently_reused(finished, copy_of, capsys):
    """Defect 3: a second search with another budget on the same --out reused the first one's steps."""
    out = copy_of(finished)
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file() and p.name != ".lock"}
    assert search_main(search_args(out, trials=9) + ["--budget", "0.05mJ"]) == 2
    line = one_line(capsys.readouterr().err)
    assert line.startswith(f"error: --out: got '{out}'; a new directory: this one already holds a run; continue it with --resume DIR")
    train_dir = out / "train"
    assert train_main(["--model", "mbv2-tiny", "--out", str(train_dir), "--quiet"]) == 2
    assert "already holds a run" in one_line(capsys.readouterr().err)
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file() and p.name != ".lock"} == before  # nothing touched
    # --resume says which options it ignores, and changes nothing in a finished run
    assert search_main(["--resume", str(out), "--budget", "5mJ", "--trials", "3", "--quiet"]) == 0
    err = capsys.readouterr().err
    assert f"note: --resume continues {out} with its recorded configuration; ignored: --budget, --trials" in err
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file() and p.name != ".lock"} == before


# ------------------------------------------------------------------------------------------ files that heal


def test_half_a_journal_resumes_and_completes_and_a_second_resume_is_a_no_op(finished, copy_of, capsys):
    """Defect 1: after a torn last journal line every later resume failed with a JSONDecodeError."""
    from nas.search.target_search import open_study

    out = copy_of(finished)
    state = json.loads((out / "state.json").read_text())
    for step in ("stage2", "train", "report"):
        del state["done"][step]
    (out / "state.json").write_text(json.dumps(state))
    journal = out / "stage2.journal"
    data = journal.read_bytes()
    journal.write_bytes(data[: len(data) // 2])
    assert search_main(["--resume", str(out), "--quiet"]) == 0
    assert "stage2.journal: cut a torn last record" in capsys.readouterr().err
    study = open_study(journal, "stage2", 0)
    assert sum(t.state.name == "COMPLETE" for t in study.trials) == TINY["trials"]
    assert_consistent_search(out)
    files = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in out.rglob("*") if p.is_file() and p.name != ".lock"}
    assert search_main(["--resume", str(out), "--quiet"]) == 0
    assert {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in out.rglob("*") if p.is_file() and p.name != ".lock"} == files


def test_torn_csv_histories_heal_on_resume(finished, copy_of, capsys):
    out = copy_of(finished)
    state = json.loads((out / "state.json").read_text())
    for step in ("train", "report"):
        del state["done"][step]
    (out / "state.json").write_text(json.dumps(state))
    for name in ("population.csv", "trials.csv", "train/metrics.csv"):
        p = out / name
        p.write_bytes(p.read_bytes()[:-7])  # the last row loses its end
    assert search_main(["--resume", str(out), "--quiet"]) == 0
    err = capsys.readouterr().err
    assert err.count("cut a torn last row") == 3
    for name in ("population.csv", "trials.csv", "train/metrics.csv"):  # every complete row kept
        assert _csv_rows(out / name) == _csv_rows(finished / name)[:-1]
    assert _summary(out) == _summary(finished)
    assert_consistent_search(out)


@pytest.mark.slow
@pytest.mark.timeout(1800)  # minutes on a quiet 2-core machine; generous for a loaded one
def test_unreadable_checkpoints_fall_back_or_redo_the_step(finished, copy_of, capsys):
    """A damaged newest training checkpoint falls back to the previous epoch; a supernet with no
    readable copy is trained again. Both end bit-identical to the uninterrupted run."""
    out = copy_of(finished)
    state = json.loads((out / "state.json").read_text())
    for step in ("supernet", "train", "report"):
        del state["done"][step]
    (out / "state.json").write_text(json.dumps(state))
    for p in (out / "supernet.pt", out / "supernet.1.pt"):
        if p.exists():
            p.write_bytes(p.read_bytes()[:1000])
    ck = out / "train" / "checkpoint.pt"
    ck.write_bytes(b"\x80\x02}q\x00X\x05\x00\x00\x00evil" + os.urandom(64))
    assert search_main(["--resume", str(out), "--quiet"]) == 0
    err = capsys.readouterr().err
    assert "note: supernet.pt could not be loaded (<unreadable: " in err and "that step is redone" in err
    assert "checkpoint.pt could not be loaded" in err and "continuing from checkpoint.1.pt" in err
    assert_same_search(out, finished)


# ------------------------------------------------------------------------------------------ one line for every failure


def _edit_json(path: Path, fn) -> None:
    d = json.loads(path.read_text())
    fn(d)
    path.write_text(json.dumps(d))


DAMAGE = {
    "state.json torn": (lambda out: (out / "state.json").write_text('{"schema_version": 1, "do'), "search",
                        "state.json: got '<not valid JSON"),
    "state.json foreign key": (lambda out: _edit_json(out / "state.json", lambda d: d.update(extra=1)), "search",
                               "state.json.extra: got 1; unknown key"),
    "state.json of another run": (lambda out: _edit_json(out / "state.json", lambda d: d.update(config_hash="0123456789abcdef")), "search",
                                  "mixes files of two runs; start over with --overwrite"),
    "config.json unknown key": (lambda out: _edit_json(out / "config.json", lambda d: d["search"].update(budgte="1mJ")), "search",
                                "config.json.search.budgte: got '1mJ'; unknown key"),  # was a TypeError
    "config.json garbage": (lambda out: (out / "config.json").write_bytes(os.urandom(200)), "search", "config.json: got '<not valid JSON"),
    "train --resume on a search": (lambda out: None, "train", "continue it with shiftaddaug-search --resume"),  # was a KeyError
    "export, truncated weights": (lambda out: (out / "target" / "weights.pt").write_bytes(b"PK\x03\x04"), "export-onnx",
                                  "weights.pt: got '<unreadable: "),
    "export, malicious checkpoints": (lambda out: [p.write_bytes(_evil()) for p in (out / "train").glob("checkpoint*.pt")], "export-json",
                                      "refused without running them"),
    "train --resume, foreign checkpoint": (lambda out: [torch.save({"version": 1, "config": {"x": 1}}, p) for p in (out / "train").glob("checkpoint*.pt")],
                                           "train-sub", "mixes files of two runs"),
}


def _evil() -> bytes:
    import pickle

    class Evil:
        def __reduce__(self):
            return (os.system, ("touch /tmp/shiftaddaug-pwned",))

    return pickle.dumps({"model": Evil()}, protocol=2)


@pytest.mark.parametrize("case", sorted(DAMAGE))
def test_damaged_or_foreign_files_give_one_line(case, finished, copy_of, capsys):
    damage, command, expect = DAMAGE[case]
    out = copy_of(finished)
    damage(out)
    rc = {"search": lambda: search_main(["--resume", str(out), "--quiet"]),
          "train": lambda: train_main(["--resume", str(out), "--quiet"]),
          "train-sub": lambda: train_main(["--resume", str(out / "train"), "--quiet"]),
          "export-onnx": lambda: export_main([str(out), "--format", "onnx"]),
          "export-json": lambda: export_main([str(out), "--format", "json"])}[command]()
    line = one_line(capsys.readouterr().err)
    assert rc == 2 and expect in line, line
    assert not Path("/tmp/shiftaddaug-pwned").exists()


def test_truncated_metrics_no_longer_delete_the_history(finished, copy_of, capsys):
    """Defect 6: `shiftaddaug-train --resume` with a truncated metrics.csv deleted it, then crashed."""
    out = copy_of(finished) / "train"  # a finished training run
    (out / "metrics.csv").write_text("epoch,time_s,tr")
    assert train_main(["--resume", str(out), "--quiet"]) == 0
    assert "metrics.csv had no complete header line" in capsys.readouterr().err
    assert any(p.name.startswith("metrics.csv.bad-") for p in out.iterdir())  # kept, not deleted


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root ignores file permissions")
def test_read_only_run_directory(finished, copy_of, capsys):
    out = copy_of(finished) / "train"
    for p in [out, *[q for q in out.rglob("*") if q.is_dir()]]:
        os.chmod(p, 0o555)
    try:
        assert train_main(["--resume", str(out), "--quiet"]) == 1
        assert "permission denied" in one_line(capsys.readouterr().err)
    finally:
        for p in [out, *[q for q in out.rglob("*") if q.is_dir()]]:
            os.chmod(p, 0o755)


# ------------------------------------------------------------------------------------------ full disk, no permission


class WriteFaults:
    """Fail the first write (the rename of ``nas.io.atomic_write_bytes``, or an Optuna journal
    append, which then leaves a torn line as a full disk does) to a file not failed before."""

    def __init__(self, out: Path, errnos=(errno.ENOSPC, errno.EACCES)):
        self.out, self.errnos, self.failed, self.armed = out, errnos, [], True

    def _should_fail(self, target) -> bool:
        rel = os.path.relpath(target, self.out)
        if not self.armed or rel in self.failed or rel.startswith(".."):
            return False
        self.failed.append(rel)
        self.armed = False  # one failure per run
        return True

    def _error(self, target):
        e = self.errnos[len(self.failed) % len(self.errnos)]
        return OSError(e, os.strerror(e))

    @contextlib.contextmanager
    def installed(self, monkeypatch):
        from optuna.storages.journal import JournalFileBackend

        from nas import io as nio

        real_replace, real_append = nio.os.replace, JournalFileBackend.append_logs
        faults = self

        def replace(src, dst):
            if faults._should_fail(dst):
                raise faults._error(dst)
            return real_replace(src, dst)

        def append_logs(backend, logs):
            if len(logs) and faults._should_fail(backend._file_path):
                with open(backend._file_path, "ab") as f:  # the disk filled mid-record
                    f.write(json.dumps(logs[0]).encode()[:20])
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return real_append(backend, logs)

        with monkeypatch.context() as m:
            m.setattr(nio.os, "replace", replace)
            m.setattr(JournalFileBackend, "append_logs", append_logs)
            yield self


@pytest.mark.slow
@pytest.mark.timeout(1800)  # minutes on a quiet 2-core machine; generous for a loaded one
def test_full_disk_and_permission_errors_on_every_write_path(finished, tmp_path, monkeypatch, capsys):
    """Each file the search writes fails once (ENOSPC or EACCES, alternating): every failure is one
    line naming the file, exit 1, no temp file; after each, --resume continues; the result equals
    the uninterrupted run's."""
    out = tmp_path / "run"
    faults = WriteFaults(out)
    args = search_args(out)
    for _attempt in range(80):
        faults.armed = True
        with faults.installed(monkeypatch):
            rc = search_main(args)
        err = capsys.readouterr().err
        if rc == 0:
            break
        line = one_line(err)
        name = faults.failed[-1]
        assert rc == 1, err
        assert (("no space left on the device" in line or "permission denied" in line)
                and f"({out / name})" in line and ("--resume" in line or name == "config.json")), (name, line)
        no_temp_files(out)
        # resumable once config.json exists (before that, the same command runs again)
        args = ["--resume", str(out), "--quiet"] if (out / "config.json").is_file() else search_args(out)
    assert rc == 0
    written = {"config.json", "lut.csv", "supernet.pt", "supernet_log.json", "state.json", "stage1.json", "population.csv",
               "subnet.json", "stage2.journal", "trials.csv", "train/config.json", "train/metrics.csv", "train/checkpoint.pt",
               "target/arch.json", "target/weights.pt", "target/cost.json", "target/meta.json", "train/summary.json",
               "train/curves.png", "pareto.png", "summary.json", "report.md"}
    assert written <= set(faults.failed), written - set(faults.failed)
    assert_same_search(out, finished)


# ------------------------------------------------------------------------------------------ kill -9


def kill_when(cmd: list[str], ready, delay: float, timeout: float = 600) -> bool:
    """Start ``cmd``; once ``ready()`` holds, wait ``delay`` seconds and SIGKILL it (False if it finished first)."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV, start_new_session=True)
    t0 = time.time()
    try:
        while proc.poll() is None and time.time() - t0 < timeout:
            if ready():
                time.sleep(delay)
                if proc.poll() is not None:
                    return False
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                return True
            time.sleep(0.05)
        return False
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


SEARCH_POINTS = [
    ("supernet", lambda out: (out / "config.json").is_file()),
    ("stage one", lambda out: "supernet" in done(out)),
    ("stage two", lambda out: (out / "stage2.journal").is_file()),
    ("training", lambda out: (out / "train" / "config.json").is_file()),
    ("training epoch 2 / export", lambda out: (out / "train" / "checkpoint.pt").is_file()),
]


@pytest.mark.slow
@pytest.mark.timeout(1800)  # minutes on a quiet 2-core machine; generous for a loaded one
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_kill_9_anywhere_in_a_search_then_resume(seed, finished, tmp_path):
    from nas.search.target_search import open_study

    rng = random.Random(seed)
    out = tmp_path / "run"
    cmd = [str(BIN / "shiftaddaug-search"), *search_args(out)]
    kills = []
    for point, ready in rng.sample(SEARCH_POINTS, 2):  # two kills per run, at two random points
        if kill_when(cmd, lambda: ready(out), rng.uniform(0, 1.5)):  # noqa: B023 (called before the loop moves on)
            st = done(out)
            in_stage_two = "stage1" in st and "stage2" not in st and (out / "stage2.journal").is_file()
            trials = {}
            if in_stage_two:
                trials = {t.number: (t.params, t.value) for t in open_study(out / "stage2.journal", "stage2", 0).trials
                          if t.state.name == "COMPLETE"}
            kills.append((point, in_stage_two, trials))
        cmd = [str(BIN / "shiftaddaug-search"), "--resume", str(out), "--quiet"]
    print("killed:", [(point, "inside stage two" if in_two else "") for point, in_two, _ in kills])
    r = cli("search", ["--resume", str(out), "--quiet"])
    assert r.returncode == 0, (kills, r.stderr[-2000:])
    stage_two = any(k[1] for k in kills)
    assert_same_search(out, finished, stage_two_interrupted=stage_two)
    for _, _, trials in kills:  # no completed trial is lost
        study = open_study(out / "stage2.journal", "stage2", 0)
        for number, (params, value) in trials.items():
            assert study.trials[number].params == params and study.trials[number].value == value


TRAIN_POINTS = [
    ("epoch 1", lambda out: (out / ".lock").is_file() and bool((out / ".lock").read_text())),
    ("epoch 2", lambda out: (out / "checkpoint.pt").is_file()),
    ("epoch 3 / export", lambda out: (out / "checkpoint.1.pt").is_file()),
]


@pytest.mark.slow
@pytest.mark.timeout(1800)  # minutes on a quiet 2-core machine; generous for a loaded one
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_kill_9_anywhere_in_a_training_run_then_resume(seed, trained, tmp_path):
    rng = random.Random(100 + seed)
    out = new_train_dir(tmp_path / "train")
    cmd = [str(BIN / "shiftaddaug-train"), "--resume", str(out), "--quiet"]
    point, ready = TRAIN_POINTS[seed % len(TRAIN_POINTS)]
    print("killed:", point if kill_when(cmd, lambda: ready(out), rng.uniform(0.5, 3.0)) else "(finished first)")
    r = cli("train", ["--resume", str(out), "--quiet"])
    assert r.returncode == 0, (point, r.stderr[-2000:])
    assert_same_training(out, trained)
