"""Atomic file writes and checkpoints that survive a crash.

* ``atomic_write_*``: write a temp file next to the target, fsync, rename over it. A crash (or a
  full disk, or a permission error) never leaves a half-written target behind, and the temp file is
  removed on every failure. An ``OSError`` names the target file (not the temp file), so the
  command line can say which file could not be written.
* ``save_checkpoint(obj, path, keep=2)``: ``torch.save`` through ``atomic_write_bytes``, keeping the
  previous ``keep - 1`` checkpoints as ``<stem>.1<suffix>`` (``checkpoint.1.pt``), ...;
  ``load_checkpoint(path)`` loads the newest readable one (``weights_only=True``) and says in one
  line when it had to fall back to an older one.
"""

from __future__ import annotations

import io
import json
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from nas.errors import ConfigError


def is_writer() -> bool:
    """True in the process that writes run files: a single process, or rank 0 of a torchrun job
    (``RANK``); other ranks only read."""
    try:
        return int(os.environ.get("RANK") or 0) == 0
    except ValueError:
        return True


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600 files; give the usual permissions
            f = os.fdopen(fd, "wb")
        except BaseException:
            os.close(fd)
            raise
        with f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        tmp = None
        _fsync_dir(path.parent)
    except OSError as e:
        # name the target, not the temp file: "no space left on device: runs/x/supernet.pt"
        raise OSError(e.errno, e.strerror or str(e), str(path)) from e
    finally:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass


def _fsync_dir(folder: Path) -> None:
    """Make a rename durable (best effort: some file systems cannot fsync a directory)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, sort_keys=True, indent=2) + "\n")


def _torch_bytes(obj: Any) -> bytes:
    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """torch.save through a temp file + rename."""
    atomic_write_bytes(path, _torch_bytes(obj))


def new_figure(**kw):
    """A matplotlib ``Figure`` with its own Agg canvas: drawn and saved without pyplot, so the
    global backend (a notebook's, a GUI's) is never switched or touched."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(**kw)
    FigureCanvasAgg(fig)
    return fig


def atomic_savefig(fig, path: str | Path, **kw) -> None:
    """``fig.savefig`` (format from the suffix) through ``atomic_write_bytes``."""
    buf = io.BytesIO()
    fig.savefig(buf, format=Path(path).suffix.lstrip(".") or "png", **kw)
    atomic_write_bytes(path, buf.getvalue())


# ------------------------------------------------------------------------------------------------
# checkpoints


def previous_checkpoint(path: str | Path, i: int = 1) -> Path:
    """The ``i``-th older copy kept by ``save_checkpoint``: ``checkpoint.pt`` -> ``checkpoint.1.pt``."""
    path = Path(path)
    return path.with_name(f"{path.stem}.{i}{path.suffix}")


def checkpoint_copies(path: str | Path) -> list[Path]:
    """The existing copies of a checkpoint, newest first (``path``, then ``.1``, ``.2`` ...)."""
    path = Path(path)
    out = [path] if path.is_file() else []
    i = 1
    while previous_checkpoint(path, i).is_file():
        out.append(previous_checkpoint(path, i))
        i += 1
    return out


def save_checkpoint(obj: Any, path: str | Path, keep: int = 2) -> None:
    """``torch.save(obj)`` to ``path`` atomically, keeping the previous ``keep - 1`` versions.

    Serialised first (a failing ``torch.save`` touches no file). The older copies move up one
    place and the current file is hard-linked to ``.1`` before the new one is renamed over it, so
    at every instant ``path`` holds a complete checkpoint (the newest or the one before).
    """
    if keep < 1:
        raise ConfigError("keep", keep, "an integer >= 1")
    path = Path(path)
    data = _torch_bytes(obj)
    if keep > 1 and path.is_file():
        older = [previous_checkpoint(path, i) for i in range(1, keep)]
        try:
            for i in range(len(older) - 1, 0, -1):
                if older[i - 1].is_file():
                    os.replace(older[i - 1], older[i])
            older[0].unlink(missing_ok=True)
            try:
                os.link(path, older[0])
            except OSError:  # no hard links on this file system: copy
                atomic_write_bytes(older[0], path.read_bytes())
        except OSError as e:
            raise OSError(e.errno, e.strerror or str(e), str(older[0])) from e
    atomic_write_bytes(path, data)


def read_torch(path: str | Path) -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU; a damaged or unsafe file -> ConfigError.

    ``OSError`` (missing file, permission) passes through: that is the environment, not the file.
    """
    import pickle

    import torch

    path = Path(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except OSError:
        raise
    except pickle.UnpicklingError as e:
        if "weights only" in str(e).lower():
            reason = "it holds Python objects other than tensors, refused without running them"
        else:
            reason = f"not a torch file ({_first_line(e)})"
        raise ConfigError(str(path), f"<unreadable: {reason}>", _DAMAGED) from None
    except Exception as e:  # truncated zip, garbage, empty file ...
        raise ConfigError(str(path), f"<unreadable: {_first_line(e)}>", _DAMAGED) from None


_DAMAGED = "a file written by shiftaddaug (it is damaged or foreign)"


def load_checkpoint(path: str | Path, apply: Callable[[Any], None] | None = None) -> tuple[Any, Path]:
    """The newest checkpoint copy that loads, and which file it was: ``(obj, path_used)``.

    Tries ``path``, then ``checkpoint.1.pt`` ... With ``apply`` (e.g. ``model.load_state_dict``)
    a copy counts as loaded only when ``apply(obj)`` succeeds too. When an older copy is used, one
    line on stderr says so and the unreadable newer copies are moved aside (``<name>.bad-<time>``,
    never deleted), so the next ``save_checkpoint`` keeps the good one. When no copy loads, one
    ConfigError names the file.
    """
    path = Path(path)
    copies = checkpoint_copies(path)
    if not copies:
        raise ConfigError(str(path), "<missing>", "a checkpoint written by shiftaddaug")
    failed: list[tuple[Path, str, BaseException]] = []
    for p in copies:
        try:
            obj = read_torch(p)
        except ConfigError as e:  # damaged or unsafe
            failed.append((p, str(e.value), e))
            continue
        try:
            if apply is not None:
                apply(obj)
        except OSError:
            raise
        except Exception as e:  # loads, but is not this run's (another version, configuration, shape)
            failed.append((p, _first_line(e), e))
            continue
        if failed and is_writer():  # (other ranks read the same files: only the writer moves them)
            for bad, _, _ in failed:
                try:
                    set_aside(bad)
                except FileNotFoundError:
                    pass
            names = ", ".join(b.name for b, _, _ in failed)
            note(f"note: {names} could not be loaded ({failed[0][1]}); continuing from {p.name}, the previous checkpoint (moved the bad copy aside)")
        return obj, p
    first = failed[0][2]
    if isinstance(first, ConfigError) and not str(first.field) == str(failed[0][0]):
        raise first  # the run's own check (e.g. another configuration's checkpoint) says best what is wrong
    raise ConfigError(
        str(path),
        failed[0][1] if len(failed) == 1 else f"{failed[0][1]} (and {len(failed) - 1} older copies)",
        f"{_DAMAGED}; no readable copy is left: start the run over (--overwrite)",
    )


def set_aside(path: str | Path, tag: str = "bad") -> Path:
    """Rename ``path`` (a file or a folder) to ``<name>.<tag>-<time>`` next to it, a new name if taken
    (kept for inspection, never deleted); returns the new path."""
    path = Path(path)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    dest = path.with_name(f"{path.name}.{tag}-{stamp}")
    n = 1
    while dest.exists():
        dest = path.with_name(f"{path.name}.{tag}-{stamp}-{n}")
        n += 1
    os.replace(path, dest)
    return dest


def note(msg: str) -> None:
    """One line for the user (a repair, a fallback, an ignored option): a warning of the ``nas``
    logger, which the commands print on stderr (and Python prints there when nothing is configured)."""
    logging.getLogger("nas").warning(msg)


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    line = text[0] if text else type(e).__name__
    return line if len(line) <= 160 else line[:157] + "..."
