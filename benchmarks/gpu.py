"""GPU checks and timings: operator parity against the CPU, the adder against cuDNN, training speed.

    python benchmarks/gpu.py                    # on a CUDA machine (< 8 min on one GPU); writes
                                                # benchmarks/results/gpu.md
    python benchmarks/gpu.py --device cpu       # dry run: every code path on the CPU with tiny
                                                # shapes and a few steps (under a minute), prints only
    python benchmarks/gpu.py --skip-training    # parity and operator timings only

Sections (each a function, run in this order):

1. ``check_parity``: every operator (ShiftConv2d/ShiftLinear Q and PS, AdderConv2d dense / grouped /
   depthwise / strided with and without eta, AdderLinear), the hybrid layers (shift and add
   prefixes, dense and depthwise, branch_norm) and every remap kind, built once on the CPU and
   copied to the device; outputs and all gradients on the device against the CPU. TF32 is
   switched off here so that both sides compute in float32. Shift layers must also produce
   bit-identical power-of-two weights. Any failure makes the script exit with status 1.
2. ``time_operators``: AdderConv2d and ShiftConv2d fwd+bwd and inference against ``F.conv2d``
   (cuDNN, torch's default precision settings) at the shapes of ``benchmarks/ops.py``: CUDA
   events, warm-up, medians of interleaved repeats, and the peak memory of one fwd+bwd step.
3. ``measure_training_throughput``: images/s and peak memory of one training step of
   mbv2-w0.35 at 160 px (100 classes, synthetic data in device memory, so the data loader is not
   measured): direct training (mult / shift / add) and ShiftAddAug (shift / add), in fp32 and
   bf16, through ``nas.train.trainer.Trainer(...).train_step``. Needs ``TrainConfig`` fields
   ``device`` and ``precision``; without them it prints a note and measures what it can (on the
   CPU the default, fp32, path).
4. ``measure_ddp_step``: one DistributedDataParallel step of the static mbv2-w0.35 add network on
   two GPUs (NCCL, loopback rendezvous); the dry run uses two CPU processes with gloo. Checks
   that both ranks hold identical weights afterwards.

Nothing is downloaded. Results: a markdown table on stdout and, on a GPU (or with ``--out``),
written atomically to ``benchmarks/results/gpu.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import importlib.util
import os
import platform
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from nas.ops.adder import AdderConv2d, AdderLinear, adder_conv2d, backend_for  # noqa: E402
from nas.ops.hybrid import HybridConv2d, HybridLinear  # noqa: E402
from nas.ops.remap import REMAP_KINDS, Remap  # noqa: E402
from nas.ops.shift import ShiftConv2d, ShiftLinear  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "gpu.md"
# Parity tolerances (relative to the largest reference value): float32 on both sides, different
# summation orders; gradients pass through reductions (BatchNorm-like statistics, eta's norm).
TOL_OUT, TOL_GRAD = 1e-4, 1e-3


def _bench_ops():
    """benchmarks/ops.py as a module: its shapes and step functions serve both benchmarks."""
    spec = importlib.util.spec_from_file_location("_bench_ops", ROOT / "benchmarks" / "ops.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item() if b.numel() else 0.0


@contextlib.contextmanager
def exact_float32():
    """TF32 off for cuDNN and matmuls (torch's default allows it in convolutions)."""
    old = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


# ------------------------------------------------------------------------------------------------
# 1. parity


class _Functional(nn.Module):
    """Wraps a function of (input, *parameters) so that parity treats it like a module."""

    def __init__(self, fn, *params: torch.Tensor):
        super().__init__()
        self.fn = fn
        self.params = nn.ParameterList(nn.Parameter(p) for p in params)

    def forward(self, x):
        return self.fn(x, *self.params)


class _RemapCase(nn.Module):
    """A remap applied to a stored weight (the input of parity is that weight)."""

    def __init__(self, kind: str):
        super().__init__()
        self.remap = Remap(kind, kernel_size=3)
        if kind == "cdf-fc":  # move the FC away from the identity so that it matters
            with torch.no_grad():
                self.remap.fc.add_(0.1 * torch.randn_like(self.remap.fc))

    def forward(self, w):
        out = self.remap(w)
        reg = self.remap.regularizer()
        return out if reg is None else out + reg  # the pwl-kl regulariser's gradient is checked too


def _hybrid_conv(depthwise: bool, mf_op: str, branch_norm: bool = False) -> nn.Module:
    c = 8 if depthwise else 12
    layer = HybridConv2d(8, c, max_kernel=5, stride=1, depthwise=depthwise, remap="cdf-fc", branch_norm=branch_norm)
    if depthwise:
        layer.configure(8, kernel=3, mf_op=mf_op, mf_out=5)
    else:
        layer.configure(10, kernel=3, mf_op=mf_op, mf_out=6, mf_in=5)
    return layer


def _hybrid_linear(mf_op: str) -> nn.Module:
    layer = HybridLinear(16, 7, remap="cdf")
    layer.configure(mf_op=mf_op, mf_in=12)
    return layer


def parity_cases(small: bool) -> dict:
    """name -> (module factory, input shape). Factories run under a fixed seed on the CPU."""
    n = 2 if small else 8
    s = 7 if small else 15
    cases = {
        "ShiftConv2d Q 3x3": (lambda: ShiftConv2d(8, 12, 3, padding=1), (n, 8, s, s)),
        "ShiftConv2d Q depthwise s2": (lambda: ShiftConv2d(8, 8, 3, stride=2, padding=1, groups=8), (n, 8, s, s)),
        "ShiftConv2d PS 3x3": (lambda: ShiftConv2d(8, 12, 3, padding=1, shift_type="PS"), (n, 8, s, s)),
        "ShiftLinear Q": (lambda: ShiftLinear(24, 10), (n, 24)),
        "ShiftLinear PS": (lambda: ShiftLinear(24, 10, shift_type="PS"), (n, 24)),
        "AdderConv2d dense 3x3": (lambda: AdderConv2d(8, 12, 3, padding=1), (n, 8, s, s)),
        "AdderConv2d dense eta=None": (lambda: AdderConv2d(8, 12, 3, padding=1, eta=None), (n, 8, s, s)),
        "AdderConv2d groups 4 s2 d2": (
            lambda: AdderConv2d(8, 12, 3, stride=2, padding=2, dilation=2, groups=4),
            (n, 8, s, s),
        ),
        "AdderConv2d depthwise": (lambda: AdderConv2d(8, 8, 3, padding=1, groups=8), (n, 8, s, s)),
        "AdderConv2d depthwise x2 s2": (lambda: AdderConv2d(8, 16, 3, stride=2, padding=1, groups=8), (n, 8, s, s)),
        "AdderConv2d pointwise": (lambda: AdderConv2d(16, 8, 1), (n, 16, s, s)),
        "AdderLinear": (lambda: AdderLinear(24, 10), (n, 24)),
        "adder_conv2d on a weight slice": (
            lambda: _Functional(lambda x, w: adder_conv2d(x, w[2:8, :4] * 0.5, padding=1), torch.randn(12, 8, 3, 3)),
            (n, 4, s, s),
        ),
        "HybridConv2d dense shift": (lambda: _hybrid_conv(False, "shift"), (n, 8, s, s)),
        "HybridConv2d dense add": (lambda: _hybrid_conv(False, "add"), (n, 8, s, s)),
        "HybridConv2d dense add branch_norm": (lambda: _hybrid_conv(False, "add", True), (n, 8, s, s)),
        "HybridConv2d depthwise shift": (lambda: _hybrid_conv(True, "shift"), (n, 8, s, s)),
        "HybridConv2d depthwise add": (lambda: _hybrid_conv(True, "add"), (n, 8, s, s)),
        "HybridConv2d mult": (lambda: _hybrid_conv(False, "mult"), (n, 8, s, s)),
        "HybridLinear shift": (lambda: _hybrid_linear("shift"), (n, 16)),
        "HybridLinear add": (lambda: _hybrid_linear("add"), (n, 16)),
    }
    for kind in REMAP_KINDS:
        cases[f"Remap {kind}"] = (lambda kind=kind: _RemapCase(kind), (6, 4, 3, 3))
    return cases


def _run_case(module: nn.Module, x: torch.Tensor, g: torch.Tensor) -> dict:
    x = x.clone().requires_grad_()
    y = module(x)
    (y * g).sum().backward()
    out = {"output": y.detach(), "input grad": x.grad}
    for name, p in module.named_parameters():
        out[f"grad {name}"] = p.grad if p.grad is not None else torch.zeros_like(p)
    for name, m in module.named_modules():
        if isinstance(m, (ShiftConv2d, ShiftLinear)):
            out[f"pow2 weight {name or 'layer'}"] = m.effective_weight().detach()
    return out


def check_parity(device: torch.device, small: bool) -> list[dict]:
    """CPU vs ``device`` for every case: the largest relative error of outputs and of gradients."""
    rows = []
    for name, (factory, shape) in parity_cases(small).items():
        torch.manual_seed(0)
        cpu_module = factory()
        gen = torch.Generator().manual_seed(1)
        x = torch.randn(shape, generator=gen)
        with torch.no_grad():
            g = torch.randn(cpu_module(x).shape, generator=gen)
        dev_module = copy.deepcopy(cpu_module).to(device)
        with exact_float32():
            want = _run_case(cpu_module, x, g)
            got = _run_case(dev_module, x.to(device), g.to(device))
        out_err = rel_err(got["output"], want["output"])
        grad_err = max(rel_err(got[k], want[k]) for k in want if "grad" in k)
        pow2_same = all(torch.equal(got[k].cpu(), want[k]) for k in want if k.startswith("pow2"))
        ok = out_err <= TOL_OUT and grad_err <= TOL_GRAD and pow2_same
        rows.append({"name": name, "out": out_err, "grad": grad_err, "pow2": pow2_same, "ok": ok})
    return rows


# ------------------------------------------------------------------------------------------------
# 2. operator timings


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_times(fns: dict, device: torch.device, warmup: int, repeats: int) -> dict:
    """Median seconds per callable: CUDA events on a GPU (perf_counter on the CPU), repeats
    interleaved round-robin so that clock and thermal drift hit every op alike."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    _sync(device)
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            if device.type == "cuda":
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                fn()
                end.record()
                end.synchronize()
                times[name].append(start.elapsed_time(end) / 1e3)
            else:
                t0 = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(ts) for name, ts in times.items()}


def _peak_bytes(fn, device: torch.device) -> int | None:
    """Peak memory allocated by one call beyond what was allocated before it (GPU only)."""
    if device.type != "cuda":
        return None
    _sync(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    fn()
    _sync(device)
    return torch.cuda.max_memory_allocated(device) - base


def time_operators(device: torch.device, small: bool) -> list[dict]:
    rows = []
    warmup, repeats = (1, 3) if small else (10, 50)
    bench = _bench_ops()
    for shape_name, (n, cin, cout, k, groups, size) in bench.SHAPES.items():
        if small:
            n, size = 2, 8
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(n, cin, size, size, generator=gen).to(device).requires_grad_()
        gy = torch.randn(n, cout, size, size, generator=gen).to(device)
        w = (0.1 * torch.randn(cout, cin // groups, k, k, generator=gen)).to(device).requires_grad_()
        wa = torch.randn(cout, cin // groups, k, k, generator=gen).to(device).requires_grad_()
        shift = ShiftConv2d(cin, cout, k, padding=k // 2, groups=groups, bias=False).to(device)
        ops = {
            "conv2d": lambda x: F.conv2d(x, w, None, 1, k // 2, 1, groups),  # noqa: B023 (timed in this iteration)
            "add": lambda x: adder_conv2d(x, wa, None, 1, k // 2, 1, groups),  # noqa: B023 (timed in this iteration)
            "shift": shift,
        }

        fns = bench.step_fns(ops, x, gy)
        med = median_times(fns, device, warmup, repeats)
        for o in ops:
            rows.append(
                {
                    "shape": shape_name,
                    "op": o,
                    "train": med[(o, "train")],
                    "infer": med[(o, "infer")],
                    "train_ratio": med[(o, "train")] / med[("conv2d", "train")],
                    "infer_ratio": med[(o, "infer")] / med[("conv2d", "infer")],
                    "peak": _peak_bytes(fns[(o, "train")], device),
                }
            )
    return rows


# ------------------------------------------------------------------------------------------------
# 3. training throughput


def _synthetic_loaders(num_images: int, resolution: int, num_classes: int, batch_size: int):
    """Random uint8 images in memory, shaped like a dataset (nothing is read or downloaded)."""
    from nas.data import DatasetSplits, TensorSplit, build_loaders

    gen = torch.Generator().manual_seed(0)
    labels = torch.arange(num_images) % num_classes

    def split():
        return TensorSplit(torch.randint(0, 256, (num_images, 3, resolution, resolution), generator=gen, dtype=torch.uint8), labels)

    data = DatasetSplits(
        name="synthetic", train=split(), val=split(), test=split(),
        class_names=[str(i) for i in range(num_classes)], mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25),
    )  # fmt: skip
    return build_loaders(data, resolution=resolution, batch_size=batch_size, augment=False)


# (label, op, aug): a direct step per operator and the ShiftAddAug step of each MF operator
TRAINING_RUNS = [
    ("direct", "mult", "none"),
    ("direct", "shift", "none"),
    ("direct", "add", "none"),
    ("ShiftAddAug", "shift", "shiftaddaug"),
    ("ShiftAddAug", "add", "shiftaddaug"),
]


def measure_training_throughput(device: torch.device, small: bool, batch_size: int, budget_s: float) -> tuple[list[dict], list[str]]:
    """Images/s and peak memory of ``Trainer.train_step`` for mbv2-w0.35 at 160 px (see module doc).

    Returns (rows, notes). Written against ``TrainConfig(..., device=..., precision=...)``; when
    those fields do not exist yet it says so and runs only the CPU fp32 path (dry run)."""
    from nas.train.trainer import Trainer, TrainConfig

    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    has_device = {"device", "precision"} <= fields
    notes = []
    if not has_device:
        notes.append("TrainConfig has no `device`/`precision` fields yet: training throughput "
                     + ("measured on the CPU default path (fp32) only" if device.type == "cpu" else "skipped"))
        if device.type != "cpu":
            return [], notes
    resolution, steps, warmup = (32, 1, 1) if small else (160, 20, 5)
    precisions = ("fp32", "bf16") if has_device else ("fp32",)
    rows = []
    t_start = time.perf_counter()
    for precision in precisions:
        for label, op, aug in TRAINING_RUNS:
            if time.perf_counter() - t_start > budget_s:
                notes.append(f"time budget of {budget_s:.0f} s reached: {label} {op} {precision} and later runs skipped")
                return rows, notes
            loaders = _synthetic_loaders(2 * batch_size, resolution, 100, batch_size)
            extra = {"device": str(device), "precision": precision} if has_device else {}
            cfg = TrainConfig(model="mbv2-w0.35", op=op, aug=aug, resolution=resolution, epochs=1, bn_images=batch_size, **extra)
            with tempfile.TemporaryDirectory() as out:
                trainer = Trainer(cfg, out, loaders=loaders, progress=False)
                gen = torch.Generator().manual_seed(0)
                x = torch.randn(batch_size, 3, resolution, resolution, generator=gen).to(device)
                y = torch.randint(0, 100, (batch_size,), generator=gen).to(device)
                for _ in range(warmup):  # also compiles the Triton kernels of every layer shape
                    trainer.train_step(x, y)
                _sync(device)
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(device)
                t0 = time.perf_counter()
                for _ in range(steps):
                    trainer.train_step(x, y)
                _sync(device)
                dt = (time.perf_counter() - t0) / steps
                peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
            rows.append({"run": label, "op": op, "precision": precision, "batch": batch_size, "resolution": resolution,
                         "step_s": dt, "images_s": batch_size / dt, "peak": peak})  # fmt: skip
    return rows, notes


# ------------------------------------------------------------------------------------------------
# 4. one DDP step


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world: int, port: int, device_type: str, resolution: int, batch: int, result_dir: str) -> None:
    import torch.distributed as dist

    from nas.models import build_model, zoo_arch

    backend = "nccl" if device_type == "cuda" else "gloo"
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        device = torch.device(device_type, rank) if device_type == "cuda" else torch.device("cpu")
        if device_type == "cuda":
            torch.cuda.set_device(device)
        torch.manual_seed(0)  # same initial weights on every rank (DDP also broadcasts rank 0's)
        model = build_model(zoo_arch("mbv2-w0.35", "add", resolution, 100)).to(device)
        ddp = nn.parallel.DistributedDataParallel(model, device_ids=[rank] if device_type == "cuda" else None)
        opt = torch.optim.SGD(ddp.parameters(), lr=0.05, momentum=0.9)
        gen = torch.Generator().manual_seed(100 + rank)  # each rank its own shard of the batch
        x = torch.randn(batch, 3, resolution, resolution, generator=gen).to(device)
        y = torch.randint(0, 100, (batch,), generator=gen).to(device)

        def step():
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(ddp(x), y).backward()
            opt.step()

        step()  # warm-up (kernel compilation, NCCL setup)
        _sync(device)
        t0 = time.perf_counter()
        step()
        _sync(device)
        dt = time.perf_counter() - t0
        flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()]).cpu()
        torch.save({"step_s": dt, "weights": flat}, Path(result_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def measure_ddp_step(device: torch.device, small: bool, batch_size: int) -> tuple[dict | None, str | None]:
    """One DDP step of the static mbv2-w0.35 add network on two ranks (see module doc)."""
    if device.type == "cuda" and torch.cuda.device_count() < 2:
        return None, "one GPU: the DDP step needs two (skipped)"
    import torch.multiprocessing as mp

    resolution, batch = (32, 2) if small else (160, batch_size)
    # children: one thread each on the CPU; spawned (not forked) so that CUDA initialises cleanly
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(_ddp_worker, args=(2, _free_port(), device.type, resolution, batch, tmp), nprocs=2, join=True)
        results = [torch.load(Path(tmp) / f"rank{r}.pt", weights_only=True) for r in range(2)]
    same = torch.equal(results[0]["weights"], results[1]["weights"])
    step = max(r["step_s"] for r in results)
    return {"ranks": 2, "batch_per_rank": batch, "resolution": resolution, "step_s": step,
            "images_s": 2 * batch / step, "weights_equal": same}, None  # fmt: skip


# ------------------------------------------------------------------------------------------------
# report


def _mib(b) -> str:
    return "n/a" if b is None else f"{b / 2**20:.1f} MiB"


def device_description(device: torch.device) -> str:
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        return f"{p.name} ({p.total_memory / 2**30:.0f} GiB), CUDA {torch.version.cuda}"
    return f"CPU ({platform.processor() or platform.machine()}), dry run"


def render(device, parity, op_rows, train_rows, train_notes, ddp, ddp_note, elapsed, small) -> str:
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = "not installed"
    probe = torch.zeros(1, device=device)
    lines = [
        f"Device: {device_description(device)}; torch {torch.__version__}, triton {triton_version}, "
        f"adder backend `{backend_for(probe)}`; total time {elapsed:.0f} s",
        "",
    ]
    if small:
        lines += ["Dry run (--device cpu): tiny shapes and few steps; it exercises the code paths, its numbers mean nothing.", ""]
    lines += [f"### Parity: {device.type} against the CPU (float32, TF32 off; tolerance {TOL_OUT:g} outputs, {TOL_GRAD:g} gradients)", ""]
    lines += ["| case | output rel. err | gradient rel. err | power-of-two weights identical | ok |", "|---|---|---|---|---|"]
    for r in parity:
        lines.append(f"| {r['name']} | {r['out']:.1e} | {r['grad']:.1e} | {'yes' if r['pow2'] else 'NO'} | {'ok' if r['ok'] else 'FAIL'} |")
    lines += ["", "### AdderConv2d and ShiftConv2d against cuDNN conv2d (fwd+bwd and inference; median)", ""]
    lines += ["| shape | op | fwd+bwd ms | ratio | inference ms | ratio | peak memory fwd+bwd |", "|---|---|---|---|---|---|---|"]
    for r in op_rows:
        lines.append(
            f"| {r['shape']} | {r['op']} | {r['train'] * 1e3:.3f} | {r['train_ratio']:.2f}x | "
            f"{r['infer'] * 1e3:.3f} | {r['infer_ratio']:.2f}x | {_mib(r['peak'])} |"
        )
    shapes = _bench_ops().SHAPES
    lines.append("")
    lines.append("Shapes (benchmarks/ops.py): " + "; ".join(
        f"{k}: batch {v[0]}, {v[1]}->{v[2]} ch, {v[3]}x{v[3]}, groups {v[4]}, {v[5]}x{v[5]}" for k, v in shapes.items()
    ) + (" (dry run: batch 2, 8x8)" if small else "") + ". conv2d runs with torch's default cuDNN settings.")  # fmt: skip
    lines += ["", "### Training step, mbv2-w0.35, 100 classes (synthetic batches in device memory)", ""]
    if train_rows:
        lines += ["| run | op | precision | batch | resolution | step ms | images/s | peak memory |", "|---|---|---|---|---|---|---|---|"]
        for r in train_rows:
            lines.append(
                f"| {r['run']} | {r['op']} | {r['precision']} | {r['batch']} | {r['resolution']} | "
                f"{r['step_s'] * 1e3:.1f} | {r['images_s']:.1f} | {_mib(r['peak'])} |"
            )
    lines += [f"- {n}" for n in train_notes]
    lines += ["", "### DistributedDataParallel step (static mbv2-w0.35, add)", ""]
    if ddp is not None:
        lines.append(
            f"{ddp['ranks']} ranks x batch {ddp['batch_per_rank']} at {ddp['resolution']} px: "
            f"{ddp['step_s'] * 1e3:.1f} ms per step, {ddp['images_s']:.1f} images/s; "
            f"weights identical on both ranks after the step: {'yes' if ddp['weights_equal'] else 'NO'}"
        )
    if ddp_note:
        lines.append(f"- {ddp_note}")
    failed = [r["name"] for r in parity if not r["ok"]]
    if ddp is not None and not ddp["weights_equal"]:
        failed.append("DDP weights differ between ranks")
    lines += ["", "Verdict: " + ("all parity checks passed" if not failed else "FAILED: " + ", ".join(failed))]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="\n".join(__doc__.splitlines()[1:8]))  # fmt: skip
    ap.add_argument("--device", default="cuda", help="cuda, cuda:N, or cpu for the dry run (default cuda)")
    ap.add_argument("--out", type=Path, default=None, help=f"results file (default {RESULTS.relative_to(ROOT)} on a GPU, none on the CPU)")
    ap.add_argument("--batch-size", type=int, default=128, help="training batch per GPU (default 128; the dry run uses 4)")
    ap.add_argument("--skip-training", action="store_true", help="parity and operator timings only")
    ap.add_argument("--budget-s", type=float, default=300.0, help="time allowed for the training section (default 300)")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda but no CUDA device is visible; use --device cpu for the dry run", file=sys.stderr)
        return 2
    small = device.type == "cpu"
    batch = 4 if small else args.batch_size
    if small:  # shared CPU machines: more threads than free cores make every op crawl
        torch.set_num_threads(1)
    t0 = time.perf_counter()

    def section(title):
        print(f"[{time.perf_counter() - t0:6.1f} s] {title}", flush=True)

    section("parity")
    parity = check_parity(device, small)
    section("operator timings")
    op_rows = time_operators(device, small)
    train_rows, train_notes, ddp, ddp_note = [], [], None, None
    if args.skip_training:
        train_notes, ddp_note = ["skipped (--skip-training)"], "skipped (--skip-training)"
    else:
        section("training throughput")
        train_rows, train_notes = measure_training_throughput(device, small, batch, args.budget_s)
        section("DDP step")
        ddp, ddp_note = measure_ddp_step(device, small, batch)
    text = render(device, parity, op_rows, train_rows, train_notes, ddp, ddp_note, time.perf_counter() - t0, small)
    print()
    print(text)
    out = args.out if args.out is not None else (None if small else RESULTS)
    if out is not None:
        from nas.io import atomic_write_text

        atomic_write_text(out, f"# GPU benchmark (`python benchmarks/gpu.py`)\n\n{text}\n")
        print(f"\nwrote {out}")
    ok = all(r["ok"] for r in parity) and (ddp is None or ddp["weights_equal"])
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
