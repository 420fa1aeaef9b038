"""Run-directory building blocks (fast, no training): the lock, no silent reuse, config hashes,
journal / CSV healing, rotating checkpoints, atomic writes that clean up, one-line OS errors,
the private kernel cache."""

import errno
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from nas import io as nio
from nas import rundir
from nas.errors import ConfigError, RunLockedError
from nas.rundir import RunLock, claim, config_hash, heal_csv, heal_journal

# ------------------------------------------------------------------------------------------ the lock

HOLD = textwrap.dedent("""
    import sys, time
    from nas.rundir import claim
    with claim(sys.argv[1], "holder", resume=True):
        print("locked", flush=True)
        time.sleep(60)
""")


def _holder(folder: Path) -> subprocess.Popen:
    (folder / "config.json").write_text("{}")
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])})
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_a_second_process_stops_naming_the_holder(tmp_path):
    proc = _holder(tmp_path)
    try:
        with pytest.raises(RunLockedError) as e:
            RunLock(tmp_path, "second").acquire()
        msg = str(e.value)
        assert f"is in use by holder (pid {proc.pid} on " in msg and "\n" not in msg
    finally:
        proc.kill()
        proc.wait()
    # the kernel dropped the lock with the process: taken over, with a note naming the dead holder
    lock = RunLock(tmp_path, "third")
    lock.acquire()
    try:
        holder = json.loads((tmp_path / ".lock").read_text())
        assert holder["pid"] == os.getpid() and holder["command"] == "third"
    finally:
        lock.release()
    assert (tmp_path / ".lock").read_text() == ""  # a clean exit leaves no holder behind


def test_a_run_inside_a_busy_run_is_refused(tmp_path):
    """`shiftaddaug-train --resume RUN/train` while a search runs on RUN, and the reverse."""
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "config.json").write_text("{}")
    proc = _holder(tmp_path)
    try:
        with pytest.raises(RunLockedError, match=f"{tmp_path} is in use by holder"):
            with claim(tmp_path / "train", "train", resume=True):
                pass
    finally:
        proc.kill()
        proc.wait()
    proc = _holder(tmp_path / "train")  # now a run in train/: the search around it cannot resume
    try:
        with pytest.raises(RunLockedError, match="a run inside this directory, such as its train/"):
            with claim(tmp_path, "search", resume=True):
                pass
    finally:
        proc.kill()
        proc.wait()
    with claim(tmp_path, "search", resume=True):
        pass


def test_stale_lock_is_taken_over_with_a_note(tmp_path, capsys):
    (tmp_path / ".lock").write_text(json.dumps({"pid": 999999999, "host": os.uname().nodename, "command": "shiftaddaug-search",
                                                "since": "2026-01-01 00:00:00"}) + "\n")
    (tmp_path / "config.json").write_text("{}")
    with claim(tmp_path, "me", resume=True):
        pass
    err = capsys.readouterr().err
    assert "took over the lock left by shiftaddaug-search (pid 999999999, since 2026-01-01 00:00:00)" in err


def test_without_flock_a_live_recorded_pid_still_holds(tmp_path, monkeypatch):
    monkeypatch.setattr(rundir, "_flock", lambda fd: None)  # a file system without flock
    (tmp_path / ".lock").write_text(json.dumps({"pid": os.getppid(), "host": os.uname().nodename, "command": "other"}))
    with pytest.raises(RunLockedError, match=f"in use by other \\(pid {os.getppid()}"):
        RunLock(tmp_path, "me").acquire()
    (tmp_path / ".lock").write_text(json.dumps({"pid": 999999999, "host": os.uname().nodename, "command": "dead"}))
    RunLock(tmp_path, "me").acquire().release()


def test_only_rank_zero_locks(tmp_path, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    with claim(tmp_path / "r", "train", overwrite=False):
        assert not (tmp_path / "r" / ".lock").exists()


# ------------------------------------------------------------------------------------------ no silent reuse


def test_existing_run_is_refused_unless_overwrite(tmp_path, capsys):
    out = tmp_path / "run"
    with claim(out, "search"):
        (out / "config.json").write_text("{}")
    with pytest.raises(ConfigError, match="already holds a run; continue it with --resume DIR, start over with --overwrite"):
        with claim(out, "search"):
            pass
    with claim(out, "search", overwrite=True):
        assert not (out / "config.json").exists()
    moved = [p for p in tmp_path.iterdir() if p.name.startswith("run.old-")]
    assert len(moved) == 1 and (moved[0] / "config.json").read_text() == "{}"  # moved aside, not deleted
    assert f"moved to {moved[0]}" in capsys.readouterr().err


def test_overwrite_leaves_foreign_folders_alone(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    for overwrite in (False, True):
        with pytest.raises(ConfigError, match="holds other files and is left alone"):
            with claim(tmp_path, "train", overwrite=overwrite):
                pass
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]  # not even a lock file


def test_resume_needs_a_run_directory(tmp_path):
    for folder in (tmp_path / "missing", tmp_path):
        with pytest.raises(ConfigError, match="an existing run directory"):
            with claim(folder, "search", resume=True):
                pass
    assert list(tmp_path.iterdir()) == []  # no lock file left in a folder that is not a run


def test_empty_or_lock_only_folder_is_reused(tmp_path):
    with claim(tmp_path, "a"):
        pass
    with claim(tmp_path, "b"):  # only the .lock of an earlier process: nothing to lose
        pass


def test_config_hash_is_canonical():
    assert config_hash({"a": 1, "b": [1, 2]}) == config_hash({"b": (1, 2), "a": 1})
    assert config_hash({"a": 1}) != config_hash({"a": 2})
    with pytest.raises(ConfigError, match="mixes files of two runs"):
        rundir.check_config_hash(config_hash({"a": 1}), {"a": 2}, "state.json")


def test_run_config_of_the_wrong_kind_or_damaged(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"schema_version": 1, "kind": "search", "search": {}}))
    with pytest.raises(ConfigError, match="continue it with shiftaddaug-search --resume"):
        rundir.read_run_config(tmp_path, "train")
    (tmp_path / "config.json").write_text('{"schema_version": 1, "tra')
    with pytest.raises(ConfigError, match="config.json: got '<not valid JSON: Unterminated string"):
        rundir.read_run_config(tmp_path, "train")
    (tmp_path / "config.json").write_text(json.dumps({"schema_version": 1, "train": {}, "extra": 1}))
    with pytest.raises(ConfigError, match=r"config.json.extra: got 1; unknown key"):
        rundir.read_run_config(tmp_path, "train")


# ------------------------------------------------------------------------------------------ healing


def _journal(path: Path, n: int) -> list[bytes]:
    lines = [json.dumps({"op_code": i % 3, "worker_id": "w", "n": i}, separators=(",", ":")).encode() + b"\n" for i in range(n)]
    path.write_bytes(b"".join(lines))
    return lines


def test_torn_journal_record_is_cut_keeping_every_complete_one(tmp_path):
    p = tmp_path / "stage2.journal"
    lines = _journal(p, 5)
    p.write_bytes(b"".join(lines) + lines[0][:7])  # a disk that filled mid-append
    assert "cut a torn last record (7 bytes); kept 5 complete records" in heal_journal(p)
    assert p.read_bytes() == b"".join(lines)
    assert heal_journal(p) is None  # healthy: untouched


def test_damaged_journal_record_keeps_the_consistent_prefix(tmp_path):
    p = tmp_path / "stage2.journal"
    lines = _journal(p, 6)
    merged = lines[2][:9] + lines[3]  # what Optuna writes after a torn line it did not cut
    p.write_bytes(b"".join(lines[:2]) + merged + b"".join(lines[4:]))
    Path(str(p) + ".lock").symlink_to(p)  # left by a process killed inside Optuna's append
    msg = heal_journal(p)
    assert "removed the stale journal lock" in msg and "kept 2 complete records" in msg
    assert p.read_bytes() == b"".join(lines[:2])
    side = [q for q in tmp_path.iterdir() if ".cut-" in q.name]
    assert len(side) == 1 and side[0].read_bytes() == merged + b"".join(lines[4:])  # nothing is lost


def test_journal_healing_lets_optuna_resume(tmp_path):
    import optuna

    from nas.search.target_search import open_study

    p = tmp_path / "s.journal"
    study = open_study(p, "s", 0)
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=3)
    data = p.read_bytes()
    p.write_bytes(data[: len(data) - 10])  # cut in the middle of the last record
    heal_journal(p)
    study = open_study(p, "s", 0)
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
    again = open_study(p, "s", 0)  # readable after appends: was "JSONDecodeError" forever
    assert len(again.trials) == 5 and all(t.state == optuna.trial.TrialState.COMPLETE for t in again.trials[3:])


def test_torn_csv_row_is_cut(tmp_path):
    p = tmp_path / "metrics.csv"
    p.write_text("epoch,loss,acc\n1,0.5,10\n2,0.4,20\n3,0.")
    assert "cut a torn last row (4 bytes); kept 2 complete rows" in heal_csv(p)
    assert p.read_text() == "epoch,loss,acc\n1,0.5,10\n2,0.4,20\n"
    p.write_text("epo")
    assert "no complete header line" in heal_csv(p) and not p.exists()
    assert heal_csv(p) is None


def test_truncated_metrics_are_healed_not_deleted(tmp_path):
    """Defect 6: a truncated metrics.csv was deleted, then the run crashed plotting it."""
    from nas.train.trainer import _plot_curves, _truncate_metrics

    p = tmp_path / "metrics.csv"
    p.write_text("epoch,time_s,train_loss,val_acc\n1,1.0,2.3,11.0\n2,1.0,2.2,1")
    _truncate_metrics(p, 2)
    assert p.read_text() == "epoch,time_s,train_loss,val_acc\n1,1.0,2.3,11.0\n"
    _plot_curves(p, tmp_path / "curves.png")
    p.write_text("epoch,time_s,tr")  # torn inside the header: set aside, plotting skips it
    _truncate_metrics(p, 2)
    _plot_curves(p, tmp_path / "c2.png")
    assert not p.exists() and any(q.name.startswith("metrics.csv.bad-") for q in tmp_path.iterdir())


# ------------------------------------------------------------------------------------------ checkpoints


def test_rotating_checkpoint_keeps_the_previous_one(tmp_path):
    p = tmp_path / "checkpoint.pt"
    for epoch in range(1, 4):
        nio.save_checkpoint({"epoch": epoch}, p)
    assert sorted(q.name for q in tmp_path.iterdir()) == ["checkpoint.1.pt", "checkpoint.pt"]
    assert nio.load_checkpoint(p) == ({"epoch": 3}, p)
    nio.save_checkpoint({"epoch": 4}, p, keep=3)
    assert [nio.read_torch(q)["epoch"] for q in nio.checkpoint_copies(p)] == [4, 3, 2]


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty", "malicious"])
def test_damaged_checkpoint_falls_back_to_the_previous_one(tmp_path, capsys, damage):
    p = tmp_path / "checkpoint.pt"
    nio.save_checkpoint({"epoch": 1, "w": torch.ones(3)}, p)
    nio.save_checkpoint({"epoch": 2, "w": torch.ones(3)}, p)
    _damage(p, damage)
    obj, used = nio.load_checkpoint(p)
    assert obj["epoch"] == 1 and used.name == "checkpoint.1.pt"
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "checkpoint.pt could not be loaded" in err and "continuing from checkpoint.1.pt" in err
    assert not p.exists() and any(q.name.startswith("checkpoint.pt.bad-") for q in tmp_path.iterdir())
    nio.save_checkpoint({"epoch": 2}, p)  # the next save keeps the good older copy
    assert nio.read_torch(nio.previous_checkpoint(p))["epoch"] == 1


def test_no_readable_copy_is_one_config_error(tmp_path):
    p = tmp_path / "supernet.pt"
    nio.save_checkpoint({"epoch": 1}, p)
    _damage(p, "malicious")
    with pytest.raises(ConfigError) as e:
        nio.load_checkpoint(p)
    msg = str(e.value)
    assert msg.startswith(f"{p}: got '<unreadable: it holds Python objects other than tensors, refused without running them>'")
    assert "start the run over (--overwrite)" in msg and "\n" not in msg


def test_malicious_checkpoint_never_runs(tmp_path):
    p = tmp_path / "x.pt"
    _damage(p, "malicious")
    with pytest.raises(ConfigError):
        nio.read_torch(p)
    assert not (tmp_path / "pwned").exists()


def test_apply_failure_counts_as_not_loaded(tmp_path):
    p = tmp_path / "c.pt"
    nio.save_checkpoint({"v": 1}, p)
    nio.save_checkpoint({"v": 2}, p)
    seen = []

    def apply(obj):
        if obj["v"] == 2:
            raise ConfigError("checkpoint.version", 2, "this version reads 1")
        seen.append(obj["v"])

    assert nio.load_checkpoint(p, apply=apply)[0] == {"v": 1} and seen == [1]


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def _damage(p: Path, how: str) -> None:
    if how == "truncate":
        p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    elif how == "garbage":
        p.write_bytes(os.urandom(300))
    elif how == "empty":
        p.write_bytes(b"")
    else:
        import pickle

        p.write_bytes(pickle.dumps({"model": _Evil()}, protocol=2))


# ------------------------------------------------------------------------------------------ atomic writes


@pytest.mark.parametrize("err", [errno.ENOSPC, errno.EACCES])
@pytest.mark.parametrize("where", ["write", "replace"])
def test_failed_atomic_write_leaves_no_partial_file(tmp_path, monkeypatch, err, where):
    target = tmp_path / "state.json"
    target.write_text("old")

    def boom(*a, **k):
        raise OSError(err, os.strerror(err))

    if where == "replace":
        monkeypatch.setattr(nio.os, "replace", boom)
    else:
        monkeypatch.setattr(nio.os, "fsync", boom)
    with pytest.raises(OSError) as e:
        nio.atomic_write_json(target, {"new": 1})
    assert e.value.errno == err and e.value.filename == str(target)  # names the target, not the temp file
    assert target.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]


def test_os_errors_become_one_line_naming_the_file(tmp_path):
    def failing(name, err=errno.ENOSPC, filename=True):
        with pytest.raises(OSError) as e:
            with claim(tmp_path / "run", "search", resume=(tmp_path / "run" / "config.json").exists()):
                raise OSError(err, os.strerror(err), str(tmp_path / "run" / name) if filename else None)
        return rundir.describe_os_error(e.value)

    (tmp_path / "run").mkdir()  # (a directory the failing run created itself is removed again: tested below)
    line, code = failing("config.json")
    assert code == 1 and line.endswith("free some space; then run the same command again")  # nothing to resume yet
    (tmp_path / "run" / "config.json").write_text("{}")
    line, code = failing("supernet.pt")
    assert code == 1 and line == (f"no space left on the device ({tmp_path}/run/supernet.pt); free some space; "
                                  f"then continue with --resume {tmp_path}/run")
    line, _ = failing("x", errno.EACCES, filename=False)  # no file name: the run directory
    assert line.startswith(f"permission denied ({tmp_path}/run); make ") and line.endswith(f"--resume {tmp_path}/run")


def test_a_run_that_fails_before_writing_leaves_no_directory(tmp_path):
    with pytest.raises(ConfigError):
        with claim(tmp_path / "new" / "run", "train"):
            raise ConfigError("dataset", "x", "a dataset")
    assert not (tmp_path / "new" / "run").exists()
    with pytest.raises(ConfigError):  # something was written: the directory stays
        with claim(tmp_path / "kept", "train"):
            (tmp_path / "kept" / "config.json").write_text("{}")
            raise ConfigError("dataset", "x", "a dataset")
    assert (tmp_path / "kept" / "config.json").is_file()


# ------------------------------------------------------------------------------------------ kernel cache


def test_kernel_cache_is_private(tmp_path, monkeypatch):
    from nas.ops import _ext

    shared = tmp_path / "shared"
    shared.mkdir(mode=0o777)
    os.chmod(shared, 0o777)  # writable by anyone: another user could plant a library there
    monkeypatch.setenv(_ext.ENV_DIR, str(shared))
    (tmp_path / "no-cache").write_text("")  # and the default cache cannot be made: XDG_CACHE_HOME is a file
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "no-cache"))
    with pytest.warns(RuntimeWarning, match="is not private"):
        d = _ext._cache_dir()
    # a fresh per-process folder (mkdtemp), not a predictable one in the shared temp directory
    assert d != shared and d.name.startswith("shiftaddaug-ext-") and oct(os.stat(d).st_mode & 0o777) == "0o700"
    with pytest.warns(RuntimeWarning):
        assert _ext.private(d) and _ext._cache_dir() == d  # one folder per process
    if os.getuid() == 0:  # root can give the folder away: owned by someone else
        os.chmod(shared, 0o755)
        os.chown(shared, 65534, 65534)
        with pytest.warns(RuntimeWarning):
            assert _ext._cache_dir() != shared
    mine = tmp_path / "mine"
    monkeypatch.setenv(_ext.ENV_DIR, str(mine))
    assert _ext._cache_dir() == mine and oct(os.stat(mine).st_mode & 0o777) == "0o700"


def test_planted_library_is_not_loaded(tmp_path, monkeypatch):
    from nas.ops import _ext

    if _ext.disabled():
        pytest.skip("kernels disabled")
    monkeypatch.setenv(_ext.ENV_DIR, str(tmp_path))
    monkeypatch.setattr(_ext, "_state", {"lib": None, "failed": False, "reason": "", "build_seconds": None, "path": None})
    try:
        _ext._compiler()
    except FileNotFoundError:
        pytest.skip("no C++ compiler")
    lib = _ext.load()
    built = Path(_ext.info()["path"])
    assert lib is not None and built.parent == tmp_path
    os.chmod(built, 0o777)  # now anyone could have replaced it
    monkeypatch.setattr(_ext, "_state", {"lib": None, "failed": False, "reason": "", "build_seconds": None, "path": None})
    assert _ext.load() is not None
    assert Path(_ext.info()["path"]).parent != tmp_path  # rebuilt in a private per-process folder
