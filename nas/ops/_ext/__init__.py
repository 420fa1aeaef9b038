"""Lazily built CPU kernels for the adder operator.

``adder_kernels.cpp`` is plain C++ (no torch headers, no ninja): it is compiled on first use with
the system compiler (``$CXX``, else ``c++``/``g++``/``clang++``) into a shared library that is called
through ``ctypes`` on tensor data pointers. Building takes about 3 s once per machine; the result is
cached per user in ``$SHIFTADDAUG_EXT_DIR`` (default ``~/.cache/shiftaddaug``) under a name that
hashes the source, the flags and the CPU's feature flags, because ``-march=native`` ties the binary
to the CPU it was built on. Loading a library runs its code, so the cache is private: a folder is
used only when it is owned by the current user and not writable by group or others, and a cached
library only when it passes the same check (``os.stat`` before loading). When no such folder can
be had, the library is built in a fresh per-process folder from ``tempfile.mkdtemp`` (mode 0700,
removed at exit), never in a predictable shared one. A file lock
serialises concurrent builds (pytest-xdist, several ranks); the library is written to a temporary
name and renamed into place, so a reader never sees a half-written file.

Nothing is built at import. ``load()`` returns ``None`` when ``SHIFTADDAUG_NO_EXT=1`` is set
(forcing the pure-torch path) or when the build, load or a small self-test fails; in the latter case
it warns once per process and the caller falls back to the pure-torch implementation.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
import warnings
from pathlib import Path

ENV_DISABLE = "SHIFTADDAUG_NO_EXT"
ENV_DIR = "SHIFTADDAUG_EXT_DIR"
ABI_VERSION = 2
SOURCE = Path(__file__).with_name("adder_kernels.cpp")
_FLAGS = ["-O3", "-std=gnu++17", "-shared", "-fPIC", "-pthread"]
# gnu++17 (not c++17) keeps GCC's default -ffp-contract=fast, so products fuse into FMAs.

_lock = threading.Lock()
_state: dict = {"lib": None, "failed": False, "reason": "", "build_seconds": None, "path": None}


def disabled() -> bool:
    """True when the environment forces the pure-torch path (``SHIFTADDAUG_NO_EXT=1``)."""
    return os.environ.get(ENV_DISABLE, "").strip().lower() not in ("", "0", "false", "no")


def load() -> ctypes.CDLL | None:
    """The kernel library (a ``ctypes.CDLL``), built on first call; ``None`` when unavailable."""
    if disabled():
        return None
    if _state["lib"] is None and not _state["failed"]:
        with _lock:
            if _state["lib"] is None and not _state["failed"]:
                try:
                    _state["lib"] = _build_and_load()
                except Exception as exc:  # any failure means: use the torch path, say so once
                    _state["failed"] = True
                    _state["reason"] = f"{type(exc).__name__}: {exc}"
                    warnings.warn(
                        "nas.ops: the C++ adder kernels could not be built or loaded "
                        f"({_state['reason']}); using the slower pure-torch adder path. "
                        f"Set {ENV_DISABLE}=1 to silence this.",
                        RuntimeWarning,
                        stacklevel=3,
                    )
    return _state["lib"]


def info() -> dict:
    """Where the library is, how long its build took (None when it came from the cache), or why it failed."""
    return {k: _state[k] for k in ("path", "build_seconds", "failed", "reason")} | {"disabled": disabled()}


def _cache_dir() -> Path:
    """The first private, writable cache folder (``private``), else a fresh per-process one."""
    xdg = os.environ.get("XDG_CACHE_HOME")
    default = Path(xdg) / "shiftaddaug" if xdg else Path.home() / ".cache" / "shiftaddaug"
    candidates = [Path(os.environ[ENV_DIR])] if os.environ.get(ENV_DIR) else []
    for path in candidates + [default]:
        try:
            path.mkdir(mode=0o700, parents=True, exist_ok=True)
            st = os.stat(path)
            if path == default and hasattr(os, "getuid") and st.st_uid == os.getuid() and st.st_mode & 0o022:
                os.chmod(path, st.st_mode & ~0o022)  # our own cache, made under a lax umask: tighten it
            if private(path) and os.access(path, os.W_OK):
                return path
        except OSError:
            continue
        if path != default:
            warnings.warn(f"nas.ops: {ENV_DIR}={path} is not private (owned by this user, not writable by group or "
                          "others); not loading compiled kernels from it", RuntimeWarning, stacklevel=4)
    return _process_dir()


def private(path: Path) -> bool:
    """Owned by the current user and not writable by group or others (then nobody else can plant a
    library there); on systems without uids (Windows) only existence is checked."""
    try:
        st = os.stat(path)
    except OSError:
        return False
    if not hasattr(os, "getuid"):
        return True
    return st.st_uid == os.getuid() and not st.st_mode & 0o022


def _process_dir() -> Path:
    """A fresh folder only this process knows (mkdtemp: mode 0700, random name), removed at exit."""
    if _state.get("tmpdir") is None:
        import atexit

        _state["tmpdir"] = Path(tempfile.mkdtemp(prefix="shiftaddaug-ext-"))
        atexit.register(shutil.rmtree, _state["tmpdir"], True)
    return _state["tmpdir"]


def _cpu_signature() -> str:
    """CPU feature flags (what -march=native depends on); falls back to the platform string."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.startswith(("flags", "Features")):
                    return line
    except OSError:
        pass
    return platform.processor() + platform.machine()


def _compiler() -> str:
    for name in (os.environ.get("CXX"), "c++", "g++", "clang++"):
        path = shutil.which(name) if name else None
        if path:
            return path
    raise FileNotFoundError("no C++ compiler found (set CXX or install g++)")


def _compile(cxx: str, out: Path) -> None:
    # -march=native first; some toolchains (e.g. old Apple clang on arm64) reject it.
    errors = []
    for arch in (["-march=native"], []):
        cmd = [cxx, *_FLAGS, *arch, str(SOURCE), "-o", str(out)]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        if proc.returncode == 0:
            return
        errors.append(proc.stderr.strip()[-400:])
    raise RuntimeError("compiler failed: " + " | ".join(errors))


def _build_and_load():
    import time

    cxx = _compiler()
    key = hashlib.sha256(
        SOURCE.read_bytes() + repr((_FLAGS, ABI_VERSION, platform.machine(), _cpu_signature(), cxx)).encode()
    ).hexdigest()[:16]
    cache = _cache_dir()
    lib_path = cache / f"adder_kernels_{key}.so"
    if not lib_path.exists():
        lock_file = open(cache / f"adder_kernels_{key}.lock", "w")
        try:
            try:
                import fcntl

                fcntl.flock(lock_file, fcntl.LOCK_EX)
            except ImportError:  # no fcntl (Windows): the atomic rename below still keeps readers safe
                pass
            if not lib_path.exists():  # another process may have built it while we waited
                t0 = time.perf_counter()
                tmp = cache / f".adder_kernels_{key}.{os.getpid()}.so"
                try:
                    _compile(cxx, tmp)
                    os.chmod(tmp, 0o755)  # whatever the umask: a group-writable library would be refused
                    os.replace(tmp, lib_path)
                finally:
                    tmp.unlink(missing_ok=True)
                _state["build_seconds"] = time.perf_counter() - t0
        finally:
            lock_file.close()
    if not private(lib_path) or lib_path.is_symlink():  # planted or tampered with: build our own
        lib_path = _process_dir() / lib_path.name
        if not lib_path.exists():
            _compile(cxx, lib_path)
    lib = ctypes.CDLL(str(lib_path))
    if lib.saa_abi_version() != ABI_VERSION:
        raise RuntimeError(f"stale kernel library {lib_path}")
    vp, i64, geom = ctypes.c_void_p, ctypes.c_int64, ctypes.POINTER(ctypes.c_int64)
    for suffix in ("f32", "f64"):
        getattr(lib, f"saa_adder_fwd_{suffix}").argtypes = [vp, vp, vp, geom, i64]
        getattr(lib, f"saa_adder_gx_{suffix}").argtypes = [vp, vp, vp, vp, geom, i64]
        getattr(lib, f"saa_adder_dw_fwd_{suffix}").argtypes = [vp, vp, vp, geom, i64]
        getattr(lib, f"saa_adder_dw_bwd_{suffix}").argtypes = [vp, vp, vp, vp, vp, geom, i64]
    _state["path"] = str(lib_path)
    _self_test(lib)
    return lib


def _self_test(lib) -> None:
    """Guard against a miscompiled or mismatched library: one tiny forward against plain loops."""
    n_in, n_out, batch = 5, 3, 7
    x = [[((i * 7 + j * 3) % 11) / 4.0 - 1.0 for j in range(batch)] for i in range(n_in)]  # [in, batch]
    w = [[((o * 5 + i * 2) % 9) / 3.0 - 1.5 for i in range(n_in)] for o in range(n_out)]
    xa = (ctypes.c_float * (n_in * batch))(*[v for row in x for v in row])
    wa = (ctypes.c_float * (n_out * n_in))(*[v for row in w for v in row])
    ya = (ctypes.c_float * (n_out * batch))()
    geom = (ctypes.c_int64 * 16)(1, 1, n_in, n_out, 1, batch, 0, 0, 1, 1, 1, 1, 1, 1, 1, batch)
    lib.saa_adder_fwd_f32(ctypes.addressof(xa), ctypes.addressof(wa), ctypes.addressof(ya), geom, 2)
    for o in range(n_out):
        for b in range(batch):
            expect = -sum(abs(x[i][b] - w[o][i]) for i in range(n_in))
            if abs(ya[o * batch + b] - expect) > 1e-4:
                raise RuntimeError("kernel self-test failed")
