"""Speed and memory of the multiplication-free operators against F.conv2d of the same shape.

    python benchmarks/ops.py            # full run (~1 min), writes benchmarks/results/ops.md
    python benchmarks/ops.py --quick    # a few seconds, smaller batch, prints only (unless --out)

Timing: one process, ``torch.set_num_threads(1)`` (these machines are shared; two threads with the
other core busy made conv2d 10x slower), warm-up then the median of repeats of the thread's CPU
time (``time.thread_time``: all work runs on that one thread, and other jobs' time slices are not
counted), repeats interleaved across ops, glibc told to keep freed memory (no op pays for the page
faults of memory another op returned to the OS), every op measured in the same process as its conv2d
baseline, fwd+bwd (``y.backward(g)`` with a fixed random g, input
and weight requiring grad) and inference (``torch.no_grad()`` forward). Ratios are op time /
conv2d time. Targets (issue 3): AdderConv2d fwd+bwd <= 3x, ShiftConv2d training step <= 1.2x;
(issue 11) AdderConv2d fwd+bwd <= 2x at the dense shape.

Memory: each adder/conv2d fwd+bwd runs once more in a child process with glibc's mmap threshold
pinned low (``MALLOC_MMAP_THRESHOLD_``), so every large buffer is returned to the OS when freed and
the resident-set high-water mark (``VmHWM`` after resetting it through ``/proc/self/clear_refs``)
measures the peak of everything the step allocates: output, gradients, padded copies, C++ scratch.
It is compared with one im2col buffer (N*K*L floats) and with the ``O x K x L`` intermediate of
AdderNet's reference code. Linux only; skipped elsewhere.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from nas.ops import _ext  # noqa: E402
from nas.ops.adder import adder_conv2d, backend_for  # noqa: E402
from nas.ops.shift import ShiftConv2d  # noqa: E402

# name: (batch, in_channels, out_channels, kernel, groups, size)
SHAPES = {
    "dense 3x3": (64, 32, 32, 3, 1, 16),
    "pointwise": (64, 96, 32, 1, 1, 16),
    "depthwise 3x3": (64, 96, 96, 3, 96, 16),
}
TARGETS = {"add": 3.0, "shift": 1.2}
# Tighter per-shape targets (issue 11: the adder's dense fwd+bwd at most 2x conv2d).
SHAPE_TARGETS = {("dense 3x3", "add"): 2.0}


def cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo", encoding="utf-8"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


# CPU time of this thread: with one torch thread every op (and the C++ kernels) runs on it, and
# unlike wall-clock time it does not count the slices the scheduler gives to other jobs.
CLOCK = time.thread_time if hasattr(time, "thread_time") else time.perf_counter


def keep_freed_memory() -> bool:
    """Ask glibc to keep freed memory instead of returning it to the OS (mallopt), so that no op is
    charged for page faults caused by what the op timed before it freed. Linux/glibc only."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3
        return bool(libc.mallopt(m_mmap_threshold, 32 << 20) and libc.mallopt(m_trim_threshold, 1 << 30))
    except (OSError, AttributeError):
        return False


def median_times(fns: dict, warmup: int, repeats: int) -> dict:
    """Median seconds of each callable; repeats are interleaved round-robin so that drift in machine
    load (these machines are shared) hits every op alike."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = CLOCK()
            fn()
            times[name].append(CLOCK() - t0)
    return {name: statistics.median(ts) for name, ts in times.items()}


def make_ops(shape, seed=0):
    """conv2d baseline and the operators, each as a callable x -> y sharing one weight shape."""
    n, cin, cout, k, groups, size = shape
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(cout, cin // groups, k, k, generator=gen).mul_(0.1).requires_grad_()
    wa = torch.randn(cout, cin // groups, k, k, generator=gen).requires_grad_()
    shift = ShiftConv2d(cin, cout, k, padding=k // 2, groups=groups, bias=False)
    shift_ps = ShiftConv2d(cin, cout, k, padding=k // 2, groups=groups, bias=False, shift_type="PS")
    pad = k // 2
    return {
        "conv2d": lambda x: F.conv2d(x, w, None, 1, pad, 1, groups),
        "add": lambda x: adder_conv2d(x, wa, None, 1, pad, 1, groups),
        "shift": shift,
        "shift PS": shift_ps,
    }


def step_fns(ops: dict, x: torch.Tensor, g: torch.Tensor) -> dict:
    """(op name, "train" | "infer") -> callable: fwd+bwd of ``op(x)`` with output gradient ``g``
    (x requires grad), or a forward under ``torch.no_grad()``. Shared with benchmarks/gpu.py."""

    def train(op):
        def run():
            x.grad = None
            op(x).backward(g)

        return run

    def infer(op):
        def run():
            with torch.no_grad():
                op(x)

        return run

    return {(name, "train"): train(op) for name, op in ops.items()} | {(name, "infer"): infer(op) for name, op in ops.items()}


def bench_shape(name, shape, warmup, repeats, include_fallback):
    n, cin, cout, k, groups, size = shape
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(n, cin, size, size, generator=gen).requires_grad_()
    g = torch.randn(n, cout, size, size, generator=gen)
    ops = make_ops(shape)
    rows = {}
    fns = step_fns(ops, x, g)
    med = median_times(fns, warmup, repeats)
    for op_name in ops:
        rows[op_name] = (med[(op_name, "train")], med[(op_name, "infer")])
    if include_fallback:  # the pure-torch path, for information (slow: few repeats)
        os.environ[_ext.ENV_DISABLE] = "1"
        try:
            add = step_fns({"add": ops["add"]}, x, g)
            med = median_times({"train": add[("add", "train")], "infer": add[("add", "infer")]}, 1, 3)
            rows["add (torch fallback)"] = (med["train"], med["infer"])
        finally:
            del os.environ[_ext.ENV_DISABLE]
    return rows


# ---- memory (child process) ----


def _rss(key: str) -> int:
    for line in open("/proc/self/status", encoding="utf-8"):
        if line.startswith(key):
            return int(line.split()[1]) * 1024
    raise KeyError(key)


def memory_child(op_name: str, shape_name: str) -> None:
    torch.set_num_threads(1)
    shape = SHAPES[shape_name]
    n, cin, cout, k, groups, size = shape
    x = torch.randn(n, cin, size, size).requires_grad_()
    g = torch.randn(n, cout, size, size)
    op = make_ops(shape)[op_name]
    op(x).backward(g)  # warm-up: kernels loaded, lazy state allocated
    x.grad = None
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")  # reset the high-water mark
    base = _rss("VmRSS")
    op(x).backward(g)
    print(_rss("VmHWM") - base)


def measure_memory(op_name: str, shape_name: str, fallback: bool = False) -> int | None:
    if not sys.platform.startswith("linux"):
        return None
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
    if fallback:
        env[_ext.ENV_DISABLE] = "1"
    proc = subprocess.run(
        [sys.executable, __file__, "--memory-child", op_name, shape_name], capture_output=True, text=True, env=env
    )
    if proc.returncode != 0:
        return None
    return int(proc.stdout.strip().splitlines()[-1])


def mib(b) -> str:
    return "n/a" if b is None else f"{b / 2**20:.1f} MiB"


# ---- report ----


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smoke run: batch 8, few repeats, no memory or fallback rows")
    ap.add_argument(
        "--out", type=Path, default=None, help="results file (default benchmarks/results/ops.md; none with --quick)"
    )
    ap.add_argument("--memory-child", nargs=2, metavar=("OP", "SHAPE"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.memory_child:
        memory_child(*args.memory_child)
        return 0

    torch.set_num_threads(1)
    kept = keep_freed_memory()
    shapes = dict(SHAPES)
    warmup, repeats = 3, 21
    if args.quick:
        shapes = {k: (8,) + v[1:] for k, v in shapes.items()}
        warmup, repeats = 1, 3
    probe = torch.zeros(1)
    backend = backend_for(probe)  # builds the C++ kernels now if needed, outside the timings
    info = _ext.info()

    lines = []
    header = (
        f"Machine: {cpu_model()}, torch {torch.__version__}, {torch.get_num_threads()} thread "
        f"(times: median thread CPU time{', glibc keeps freed memory' if kept else ''}), "
        f"adder backend `{backend}`"
        + (f" (kernel build on first use: {info['build_seconds']:.1f} s)" if info.get("build_seconds") else "")
        + ("" if backend == "ext" else f" (reason: {info.get('reason') or 'disabled'})")
    )
    if hasattr(os, "getloadavg"):  # shared machines: other jobs move absolute times, ratios far less
        header += f"; load average at start {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"
    lines += [header, ""]
    if args.quick:
        lines += ["Smoke run (--quick): batch 8 and 3 repeats, so the ratios are indicative only.", ""]
    lines += [
        "| shape | op | fwd+bwd ms | ratio | target | met | inference ms | ratio |",
        "|---|---|---|---|---|---|---|---|",
    ]
    verdicts = []
    for name, shape in shapes.items():
        rows = bench_shape(name, shape, warmup, repeats, include_fallback=not args.quick)
        base_train, base_inf = rows["conv2d"]
        for op_name, (t_train, t_inf) in rows.items():
            r_train, r_inf = t_train / base_train, t_inf / base_inf
            target = SHAPE_TARGETS.get((name, op_name), TARGETS.get(op_name)) if op_name in ("add", "shift") else None
            met = "" if target is None else ("yes" if r_train <= target else "NO")
            if target is not None:
                verdicts.append((name, op_name, r_train, target, r_train <= target))
            lines.append(
                f"| {name} | {op_name} | {t_train * 1e3:.2f} | {r_train:.2f}x | "
                f"{'' if target is None else f'<= {target}x'} | {met} | {t_inf * 1e3:.2f} | {r_inf:.2f}x |"
            )
    lines.append("")
    shape_desc = "; ".join(
        f"{k}: batch {v[0]}, {v[1]}->{v[2]} ch, {v[3]}x{v[3]}, groups {v[4]}, {v[5]}x{v[5]}" for k, v in shapes.items()
    )
    lines.append(f"Shapes: {shape_desc}. ShiftConv2d is DeepShift-Q with 5-bit weights unless marked PS.")

    if not args.quick:
        lines += ["", "Peak memory of one fwd+bwd step beyond the inputs (output and gradients included):", ""]
        lines += [
            "| shape | conv2d | adder | adder (torch fallback) | output + input grad | one im2col buffer "
            "| O x K x L intermediate |",
            "|---|---|---|---|---|---|---|",
        ]
        for name, (n, cin, cout, k, groups, size) in shapes.items():
            kk = cin // groups * k * k
            im2col = n * cin * k * k * size * size * 4
            naive = n * cout * kk * size * size * 4
            needed = (n * cout + n * cin) * size * size * 4  # what any implementation must hold
            lines.append(
                f"| {name} | {mib(measure_memory('conv2d', name))} | {mib(measure_memory('add', name))} | "
                f"{mib(measure_memory('add', name, fallback=True))} | {mib(needed)} | {mib(im2col)} | {mib(naive)} |"
            )
    lines += ["", "Verdict:"]
    if args.quick:
        lines.append("- not judged in a --quick run (batch 8: fixed per-call costs dominate)")
    for name, op_name, ratio, target, ok in [] if args.quick else verdicts:
        lines.append(f"- {name}, {op_name}: {ratio:.2f}x vs target <= {target}x: {'met' if ok else 'NOT met'}")
    text = "\n".join(lines)
    print(text)
    out = args.out if args.out is not None else (None if args.quick else ROOT / "benchmarks" / "results" / "ops.md")
    if out is not None:
        from nas.io import atomic_write_text

        atomic_write_text(out, f"# Operator benchmark (`python benchmarks/ops.py`)\n\n{text}\n")
        print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
