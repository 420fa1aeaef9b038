"""Run directories that cannot be corrupted: one writer, no silent reuse, one configuration, files that heal.

* **One writer.** ``claim(dir, command)`` takes an OS file lock (``fcntl.flock`` on ``<dir>/.lock``)
  for as long as the command runs, and writes the holder's pid, host, command and start time into
  that file. A second process on the same directory stops at once with one line naming the holder
  (``RunLockedError``). The kernel drops the lock when its process dies, however it dies, so a lock
  left by a killed run is simply taken over, with a note naming the dead holder. Where the file
  system has no ``flock`` (some network mounts) the recorded pid is checked instead. Under
  ``torchrun`` only rank 0 (``RANK``) writes, so only rank 0 takes the lock.
* **No silent reuse.** A new run refuses a ``--out`` that already holds files unless told
  ``--overwrite``, which moves the old directory aside to ``<dir>.old-<time>`` (nothing is
  deleted); ``--resume`` continues it.
* **One configuration.** ``config_hash`` of the resolved configuration is recorded in the run's
  state (``state.json`` of a search, every training checkpoint); a resumed run whose files carry
  another hash stops with one line instead of mixing two runs.
* **Files that heal.** On resume, before anything reads them: a torn trailing record of the Optuna
  journal (``stage2.journal``, one JSON record per line) is cut off, keeping every complete record
  (``heal_journal``); the same for CSV histories (``heal_csv``); a checkpoint none of whose copies
  loads is moved aside so that its step is redone (``heal_checkpoint``). Every repair prints one
  line. Nothing is deleted: dropped bytes and damaged files are kept next to the original as
  ``<name>.cut-<time>`` / ``<name>.bad-<time>``.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import hashlib
import io
import json
import os
import socket
import time
from pathlib import Path
from typing import Any, Iterator

from nas.errors import ConfigError, RunEnvironmentError, RunLockedError, check_keys
from nas.io import atomic_write_bytes, checkpoint_copies, is_writer, note, read_torch, set_aside

LOCK_NAME = ".lock"
RUN_FILES = {"config.json", "state.json", "checkpoint.pt", "supernet.pt", "summary.json"}  # a folder with one is a run
_HELD: dict[str, "RunLock"] = {}  # resolved dir -> lock held by this process


# Where a run executes, not what it computes: a run may resume on another device, on a cluster, or
# with a different number of loader workers, so these keys do not enter the configuration's hash.
RUNTIME_KEYS = frozenset({"device", "ray_address", "workers"})


def config_hash(cfg: dict) -> str:
    """A short stable hash of a configuration dict (canonical JSON), ``RUNTIME_KEYS`` left out."""
    cfg = {k: v for k, v in cfg.items() if k not in RUNTIME_KEYS}
    text = json.dumps(cfg, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# ------------------------------------------------------------------------------------------------
# the lock


class RunLock:
    """An exclusive lock on a run directory, held until ``release`` (or the process's death)."""

    def __init__(self, folder: str | Path, command: str):
        self.folder = Path(folder)
        self.command = command
        self.fd: int | None = None

    @property
    def path(self) -> Path:
        return self.folder / LOCK_NAME

    def acquire(self) -> "RunLock":
        key = str(self.folder.resolve())
        if key in _HELD:
            raise RunLockedError(f"{self.folder} is already in use by this process ({_HELD[key].command})")
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            got = _flock(fd)
            previous = _read_holder(fd)
            if got is False or (got is None and previous and _alive(previous)):
                # busy, or no flock on this file system and the recorded holder may still run
                raise RunLockedError(_busy(self.folder, previous))
            if previous and previous.get("pid") != os.getpid():
                where = "" if previous.get("host") == socket.gethostname() else f" on {previous.get('host')}"
                note(f"note: {self.folder}: took over the lock left by {previous.get('command', 'a run')} "
                     f"(pid {previous.get('pid')}{where}, since {previous.get('since', '?')}), which is no longer running")
            info = {"pid": os.getpid(), "host": socket.gethostname(), "command": self.command,
                    "since": time.strftime("%Y-%m-%d %H:%M:%S")}
            os.ftruncate(fd, 0)
            os.lseek(fd, 0, os.SEEK_SET)
            os.write(fd, (json.dumps(info) + "\n").encode())
        except BaseException:
            os.close(fd)
            raise
        self.fd = fd
        _HELD[key] = self
        return self

    def release(self) -> None:
        if self.fd is None:
            return
        try:
            os.ftruncate(self.fd, 0)  # a clean exit leaves no holder behind (a killed one does)
        except OSError:
            pass
        os.close(self.fd)  # closing drops the flock
        self.fd = None
        _HELD.pop(str(self.folder.resolve()), None)


def _flock(fd: int) -> bool | None:
    """Lock ``fd`` exclusively without waiting: True when locked, False when another process holds
    it, None when this file system cannot lock (then the recorded pid decides)."""
    try:
        import fcntl
    except ImportError:  # Windows
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError as e:
        if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return False
        if e.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
            return None
        raise


def _read_holder(fd: int) -> dict | None:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        text = os.read(fd, 4096).decode("utf-8", "replace").strip()
        d = json.loads(text) if text else None
        return d if isinstance(d, dict) else None
    except (OSError, ValueError):
        return None


def _alive(holder: dict) -> bool:
    """Whether the recorded holder may still run (always True for another host: we cannot tell)."""
    if holder.get("host") != socket.gethostname():
        return True
    try:
        os.kill(int(holder.get("pid", -1)), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, ValueError, TypeError, OverflowError):
        return True
    return True


def _busy(folder: Path, holder: dict | None) -> str:
    if not holder:
        return f"{folder} is in use by another process (its lock file {LOCK_NAME} is held); wait for it to finish or choose another directory"
    who = f"{holder.get('command', 'a run')} (pid {holder.get('pid')} on {holder.get('host')}, since {holder.get('since', '?')})"
    if holder.get("host") == socket.gethostname() and not _alive(holder):
        return (f"{folder} is locked by another process ({who} has exited; a run inside this directory, such as "
                "its train/, or a child process left over holds the lock); wait for it or end it, then retry")
    return f"{folder} is in use by {who}; wait for it to finish, or choose another directory"


@contextlib.contextmanager
def claim(folder: str | Path, command: str, *, resume: bool = False, overwrite: bool = False,
          flag: str = "--out") -> Iterator[Path]:
    """Hold ``folder`` as this command's run directory for the ``with`` block.

    ``resume``: the directory must hold a run. Otherwise a directory that already holds files is
    refused unless ``overwrite``, which moves it aside to ``<dir>.old-<time>``. A run inside another
    run (a search's ``train/``) also holds the parent's lock shared, so neither can be resumed while
    the other runs. Only the writing process (``is_writer``) locks; other ranks pass through.
    """
    folder = Path(folder)
    if not is_writer():
        yield folder
        return
    lock = None
    if resume:
        if not folder.is_dir() or not {p.name for p in folder.iterdir()} & RUN_FILES:
            raise ConfigError("--resume", str(folder), "an existing run directory (with config.json)")
        lock = RunLock(folder, command).acquire()
    elif folder.exists():
        if not folder.is_dir():
            raise ConfigError(flag, str(folder), "a directory (this is a file)")
        names = {p.name for p in folder.iterdir()}
        if names and not names & (RUN_FILES | {LOCK_NAME}):  # not ours: never lock, move or write into it
            raise ConfigError(flag, str(folder), "a new directory or a shiftaddaug run: this folder holds other files "
                              "and is left alone; choose another directory")
        lock = RunLock(folder, command).acquire()
        if names - {LOCK_NAME}:
            if not overwrite:
                lock.release()
                raise ConfigError(flag, str(folder), "a new directory: this one already holds a run; continue it with "
                                  "--resume DIR, start over with --overwrite (the old one is moved aside), or choose another directory")
            moved = set_aside(folder, "old")
            lock.release()
            lock = None
            note(f"note: --overwrite: the previous run moved to {moved}")
    created = not folder.exists()
    if lock is None:
        folder.mkdir(parents=True, exist_ok=True)
        lock = RunLock(folder, command).acquire()
    try:
        parent = _share_parent_lock(folder)
    except BaseException:
        lock.release()
        raise
    failed = True
    try:
        yield folder
        failed = False
    except OSError as e:  # the one-line message names the run to resume (``describe_os_error``)
        if getattr(e, "run_dir", None) is None:
            e.run_dir = folder  # type: ignore[attr-defined]  # read by describe_os_error
        raise
    finally:
        if parent is not None:
            os.close(parent)
        lock.release()
        if failed and created:
            _remove_if_empty(folder)


def _remove_if_empty(folder: Path) -> None:
    """Undo the creation of a run directory when the run stopped before writing anything in it
    (bad input found after the directory was claimed): leave nothing behind but what was computed."""
    try:
        names = {p.name for p in folder.iterdir()}
        if names <= {LOCK_NAME}:
            (folder / LOCK_NAME).unlink(missing_ok=True)
            folder.rmdir()
    except OSError:
        pass


def _share_parent_lock(folder: Path) -> int | None:
    """A shared lock on the run directory around ``folder``, if there is one (else None)."""
    path = folder.resolve().parent / LOCK_NAME
    if not path.is_file():
        return None
    fd = os.open(path, os.O_RDONLY)
    try:
        import fcntl

        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return fd
    except (ImportError, OSError) as e:
        holder = _read_holder(fd)
        os.close(fd)
        if isinstance(e, OSError) and e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise RunLockedError(_busy(path.parent, holder)) from None
        return None


# ------------------------------------------------------------------------------------------------
# reading the run's own files


def read_json(path: str | Path, advice: str) -> Any:
    """Parse a JSON file the toolkit wrote; a damaged one -> ConfigError naming it and ``advice``."""
    path = Path(path)
    try:
        return json.loads(path.read_bytes())
    except (ValueError, RecursionError) as e:
        msg = getattr(e, "msg", None) or type(e).__name__
        raise ConfigError(str(path), f"<not valid JSON: {msg}>", advice) from None


def read_run_config(run_dir: str | Path, kind: str, flag: str = "--resume") -> dict:
    """The ``kind`` ("search" or "train") configuration dict of a run directory's ``config.json``.

    Missing, damaged, foreign or the other kind's file -> one ConfigError that says what to do.
    """
    run_dir = Path(run_dir)
    path = run_dir / "config.json"
    if not path.is_file():
        raise ConfigError(flag, str(run_dir), f"a run directory written by shiftaddaug-{kind} (config.json missing)")
    d = read_json(path, "the run's configuration is damaged; start the run over (--overwrite)")
    other = "train" if kind == "search" else "search"
    if isinstance(d, dict) and kind not in d and (other in d or d.get("kind") == other):
        raise ConfigError(flag, str(run_dir), f"a shiftaddaug-{kind} run directory; this one was written by "
                          f"shiftaddaug-{other}: continue it with shiftaddaug-{other} --resume {run_dir}")
    check_keys(d, str(path), {"schema_version", "kind", kind, "runtime"}, {kind})  # runtime: where it computed
    if d.get("schema_version", 1) != 1:
        raise ConfigError(f"{path}.schema_version", d.get("schema_version"), "this version reads 1")
    if not isinstance(d[kind], dict):
        raise ConfigError(f"{path}.{kind}", d[kind], "a mapping of configuration fields")
    return d[kind]


def check_config_hash(recorded: str | None, cfg: dict, where: str) -> None:
    """A file recorded ``recorded`` as its configuration's hash; it must be ``cfg``'s."""
    if recorded is not None and recorded != config_hash(cfg):
        raise ConfigError(where, f"<config hash {recorded}>", f"the hash of this run's config.json ({config_hash(cfg)}): "
                          "the directory mixes files of two runs; start over with --overwrite")


# ------------------------------------------------------------------------------------------------
# healing


def heal_journal(path: str | Path) -> str | None:
    """Cut an Optuna journal file after its last complete, valid record (one JSON object a line).

    A disk that fills while Optuna appends leaves a partial last line; Optuna would append after
    it and never read the file again. Records after a damaged one are dropped too (a prefix of the
    log is always a consistent study) and kept in ``<name>.cut-<time>``. Also removes the lock
    file a killed Optuna process leaves (``<name>.lock``; the run's own lock guards the journal).
    Returns the note printed, or None when nothing was wrong.
    """
    path = Path(path)
    msgs = []
    stale = Path(str(path) + ".lock")
    if stale.is_symlink() or stale.exists():
        stale.unlink()
        msgs.append(f"removed the stale journal lock {stale.name}")
    if path.is_file():
        data = path.read_bytes()
        good, records = _valid_prefix(data, _json_record)
        if good < len(data):
            msgs.append(_cut(path, data, good, records, "record"))
    if not msgs:
        return None
    line = f"note: {path.name}: " + "; ".join(msgs)
    note(line)
    return line


def heal_csv(path: str | Path) -> str | None:
    """Cut a CSV history after its last complete row (every field of the header, newline-ended).

    A file without a complete header is moved aside. Returns the note printed, or None.
    """
    path = Path(path)
    if not path.is_file():
        return None
    data = path.read_bytes()
    nl = data.find(b"\n")
    if nl < 0 or not _csv_fields(data[: nl + 1]):
        moved = set_aside(path)
        line = f"note: {path.name} had no complete header line; moved it to {moved.name}, the history starts again"
        note(line)
        return line
    width = len(_csv_fields(data[: nl + 1]))
    good, rows = _valid_prefix(data, lambda line: len(_csv_fields(line)) == width)
    if good == len(data):
        return None
    line = f"note: {path.name}: " + _cut(path, data, good, rows - 1, "row")
    note(line)
    return line


def heal_json(path: str | Path) -> str | None:
    """Move aside a JSON file the toolkit wrote that does not parse (a log or a JSON checkpoint)."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        json.loads(path.read_bytes())
        return None
    except (ValueError, RecursionError):
        moved = set_aside(path)
        line = f"note: {path.name} is damaged; moved it to {moved.name}, that step starts again"
        note(line)
        return line


def heal_checkpoint(path: str | Path) -> bool:
    """False (after moving every copy aside, with a note) when no copy of a checkpoint loads.

    A newest copy that fails while an older one loads is left to ``load_checkpoint``, which
    falls back to the older one; here only the case "nothing usable" is settled: the step that
    wrote the checkpoint is redone from its start.
    """
    copies = checkpoint_copies(path)
    reasons = []
    for p in copies:
        try:
            read_torch(p)
            return True
        except ConfigError as e:
            reasons.append(str(e.value))
    if not copies:
        return True
    for p in copies:
        set_aside(p)
    more = f" (and {len(copies) - 1} older copies)" if len(copies) > 1 else ""
    note(f"note: {Path(path).name}{more} could not be loaded ({reasons[0]}); moved aside, that step is redone")
    return False


def heal_search_dir(out: str | Path) -> set[str]:
    """Repair a search run directory before it resumes; returns the steps whose checkpoint is gone."""
    out = Path(out)
    heal_journal(out / "stage2.journal")
    for name in ("population.csv", "trials.csv", "train/metrics.csv"):
        heal_csv(out / name)
    redo = set()
    for name in ("supernet_log.json", "stage1.json"):
        heal_json(out / name)
    for name, step in (("supernet.pt", "supernet"), ("train/checkpoint.pt", "train")):
        if not heal_checkpoint(out / name):
            redo.add(step)
    return redo


def heal_train_dir(run_dir: str | Path) -> None:
    """Repair a training run directory before it resumes (metrics history, checkpoints)."""
    run_dir = Path(run_dir)
    heal_csv(run_dir / "metrics.csv")
    heal_checkpoint(run_dir / "checkpoint.pt")


def _valid_prefix(data: bytes, valid) -> tuple[int, int]:
    """(bytes, lines) of the longest prefix of newline-ended lines that ``valid(line)`` accepts."""
    good = n = pos = 0
    while pos < len(data):
        nl = data.find(b"\n", pos)
        if nl < 0 or not valid(data[pos : nl + 1]):
            break
        good = pos = nl + 1
        n += 1
    return good, n


def _json_record(line: bytes) -> bool:
    try:
        return isinstance(json.loads(line), dict)
    except (ValueError, RecursionError):
        return False


def _csv_fields(line: bytes) -> list[str]:
    try:
        rows = list(csv.reader(io.StringIO(line.decode("utf-8"))))
    except (UnicodeDecodeError, csv.Error):
        return []
    return rows[0] if len(rows) == 1 and line.endswith(b"\n") else []


def _cut(path: Path, data: bytes, good: int, kept: int, what: str) -> str:
    tail = data[good:]
    complete = tail.count(b"\n")
    kept_note = f"kept {kept} complete {what}s"
    if complete:  # whole lines are dropped, not only a torn end: keep them for inspection
        side = path.with_name(f"{path.name}.cut-{time.strftime('%Y%m%d-%H%M%S')}")
        atomic_write_bytes(side, tail)
        msg = f"cut {len(tail)} bytes after the first damaged {what} ({complete} lines, saved to {side.name}); {kept_note}"
    else:
        msg = f"cut a torn last {what} ({len(tail)} bytes); {kept_note}"
    try:
        with open(path, "r+b") as f:
            f.truncate(good)
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        raise OSError(e.errno, e.strerror, str(path)) from e
    return msg


def describe_os_error(e: OSError) -> tuple[str, int]:
    """(one line, exit code) for an OSError that reached a command: the file and what to do."""
    run = getattr(e, "run_dir", None)  # set by ``claim`` when the error left its run
    target = e.filename or (str(run) if run is not None else None)
    where = f" ({target})" if target else ""
    again = ""
    if run is not None:  # resumable once its configuration is written
        again = f"; then continue with --resume {run}" if (run / "config.json").is_file() else "; then run the same command again"
    if isinstance(e, RunEnvironmentError):
        return str(e), 1
    if e.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", -1)):
        return f"no space left on the device{where}; free some space{again}", 1
    if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        folder = Path(target).parent if target else "the folder"
        return f"permission denied{where}; make {folder} writable (or choose another directory){again}", 1
    return f"{e.strerror or type(e).__name__}{where}{again}", 1
