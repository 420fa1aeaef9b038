"""Measured latency on the machine the toolkit runs on: per layer shape and end to end.

Every layer of ``nas.cost.layers.arch_layers`` is timed as the real PyTorch code that runs it
inside ``nas.models.static.Network`` (eval mode, ``torch.no_grad``, batch 1 by default), chosen by
its record's fields (kind, part, operator, activation), never by its name:

=================  ===========================================================================
layer              what is timed
=================  ===========================================================================
dense, pointwise,  ``ConvBNAct`` (conv of the layer's operator kind -> BN -> the layer's ``act``;
depthwise          the post-pool conv has a bias and no BN)
se.pool            ``F.adaptive_avg_pool2d(x, 1)`` (the segmentation head's gate pool too)
se.reduce          the SE reduce conv followed by its ReLU
se.expand          the SE expand conv
se.gate            ``x * F.hardsigmoid(g)`` (the segmentation head's gate too)
residual           ``x + y`` (the segmentation head's sum too)
upsample           ``nas.models.static.upsample`` (bilinear) to ``in_hw * stride``
pool               ``F.adaptive_avg_pool2d(x, 1)`` and the flatten of ``forward_features``
linear             the classifier (``create_linear``)
=================  ===========================================================================

Layers are timed in turn, in groups (``measure_layers``): in a network a layer runs between other
layers, and a tight loop over one op underestimates it (warm caches and branch predictors). Tables
of a search space time every shape inside an arch of the space that contains it
(``LatencyTable.build_space`` with ``nas.cost.shapes.space_cover_archs``), i.e. in the company of a
real network, which is what end-to-end latency sees.
Each call is timed on its own (``time.perf_counter_ns``; CUDA: ``torch.cuda.synchronize`` before
reading the clock) after a warm-up; a table keeps the median, mean, standard deviation and number
of repeats per shape, and its header the device, thread count, warm-up and repeats.

What no layer accounts for is in the table's header as ``overhead_ms`` and added by
``LatencyTable.price``: the python cost of the containers (``Network.forward``, ``MBConv.forward``;
``measure_overhead``, per network and per block) and a per-layer in-network overhead per operator
kind (``calibrate_layer_overhead``). A network's predicted latency is the sum of its layers'
entries plus these overheads.
"""

from __future__ import annotations

import contextlib
import platform
import re
import statistics
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Iterator

from nas.cost.layers import Layer, arch_layers
from nas.errors import ConfigError
from nas.ops.registry import MULT, op_kinds

if TYPE_CHECKING:  # pragma: no cover
    import torch.nn as nn

    from nas.arch import Arch

DEVICES = ("cpu", "cuda")


@dataclass(frozen=True)
class Timing:
    """Latency statistics of repeated calls, in ms."""

    median_ms: float
    mean_ms: float
    std_ms: float
    repeats: int
    warmup: int

    def as_row(self) -> dict:
        return {"latency_ms": self.median_ms, "mean_ms": self.mean_ms, "std_ms": self.std_ms, "repeats": self.repeats}


# --------------------------------------------------------------------------------------------
# device and threads


def check_device(device: str) -> str:
    import torch

    if device not in DEVICES:
        raise ConfigError("device", device, f"allowed: {', '.join(DEVICES)}")
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device", device, "CUDA is not available on this machine; use cpu")
    return device


def device_name(device: str = "cpu") -> str:
    """A file-name-friendly name of the device: ``cpu-<model>`` or ``cuda-<gpu name>``."""
    import torch

    if device == "cuda":
        raw = torch.cuda.get_device_name(0)
    else:
        raw = ""
        try:
            with open("/proc/cpuinfo") as f:
                for line in f:
                    if line.lower().startswith("model name"):
                        raw = line.split(":", 1)[1]
                        break
        except OSError:
            pass
        raw = raw or platform.processor() or platform.machine() or "unknown"
    slug = re.sub(r"\((r|tm)\)|cpu @.*|@.*", "", raw.lower())
    slug = re.sub(r"[^a-z0-9]+", "-", slug).strip("-")
    return f"{device}-{slug[:48] or 'unknown'}"


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[int]:
    """Run the block with ``torch.set_num_threads(n)`` (``None``: leave as is); restores after."""
    import torch

    old = torch.get_num_threads()
    if n is not None:
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise ConfigError("threads", n, "expected a positive integer")
        torch.set_num_threads(n)
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(old)


def time_calls(fn: Callable[[], object], warmup: int = 10, repeats: int = 50, device: str = "cpu") -> Timing:
    """Time ``fn()`` ``repeats`` times after ``warmup`` untimed calls."""
    return _round_robin([fn], warmup, repeats, device)[0]


# --------------------------------------------------------------------------------------------
# the real code of one layer


def layer_callable(layer: Layer, batch: int = 1, device: str = "cpu", op_options: dict | None = None, seed: int = 0) -> Callable[[], object]:
    """A zero-argument function running the real PyTorch code of ``layer`` on a random input."""
    import torch
    import torch.nn.functional as F

    from nas.models.static import ConvBNAct
    from nas.ops.registry import create_conv, create_linear, options_for

    g = torch.Generator().manual_seed(seed)
    L = layer

    def rand(*shape):
        return torch.randn(*shape, generator=g).to(device)

    if L.kind in ("dense", "pointwise", "depthwise"):
        m = ConvBNAct(L.op, L.in_channels, L.out_channels, L.kernel_size, L.stride, L.groups, act=L.act, bn=L.bn, op_options=op_options)
        m = m.to(device).eval()
        x = rand(batch, L.in_channels, L.in_hw, L.in_hw)
        return lambda: m(x)
    if L.part in ("se_reduce", "se_expand"):
        conv = create_conv(L.op, L.in_channels, L.out_channels, 1, bias=True, **options_for(L.op, op_options)).to(device).eval()
        x = rand(batch, L.in_channels, 1, 1)
        if L.part == "se_reduce":  # SqueezeExcite: expand(relu(reduce(pooled)))
            return lambda: F.relu(conv(x))
        return lambda: conv(x)
    if L.table_part == "pool":
        x = rand(batch, L.in_channels, L.in_hw, L.in_hw)
        return lambda: F.adaptive_avg_pool2d(x, 1)
    if L.table_part == "gate":
        x = rand(batch, L.in_channels, L.in_hw, L.in_hw)
        s = rand(batch, L.in_channels, 1, 1)
        return lambda: x * F.hardsigmoid(s)
    if L.kind == "residual":
        x = rand(batch, L.in_channels, L.in_hw, L.in_hw)
        y = rand(batch, L.in_channels, L.in_hw, L.in_hw)
        return lambda: x + y
    if L.kind == "pool":
        x = rand(batch, L.in_channels, L.in_hw, L.in_hw)
        return lambda: torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
    if L.kind == "upsample":
        from nas.models.static import upsample

        x = rand(batch, L.in_channels, L.in_hw, L.in_hw)
        return lambda: upsample(x, (L.out_hw, L.out_hw))
    if L.kind == "linear":
        fc = create_linear(L.op, L.in_channels, L.out_channels, bias=L.bias, **options_for(L.op, op_options)).to(device).eval()
        x = rand(batch, L.in_channels)
        return lambda: fc(x)
    raise ConfigError(f"layer {L.name}.kind", L.kind, "no latency measurement for this layer kind")


def measure_layer(
    layer: Layer,
    *,
    device: str = "cpu",
    batch: int = 1,
    warmup: int = 10,
    repeats: int = 50,
    threads: int | None = 1,
    op_options: dict | None = None,
) -> Timing:
    """Median latency (ms) of one layer shape run as the real PyTorch module."""
    import torch

    check_device(device)
    with torch_threads(threads), torch.no_grad():
        fn = layer_callable(layer, batch, device, op_options)
        return time_calls(fn, warmup, repeats, device)


def _round_robin(fns: list[Callable[..., object]], warmup: int, repeats: int, device: str, inner: int = 1) -> list[Timing]:
    """Time every function ``repeats`` times, one call of each in turn per round.

    In a network every layer runs between other layers, not in a tight loop of itself; timing a
    group of about a network's size in turn reproduces that (caches, branch predictors and the
    allocator see a mix of work), and spreads each layer's samples over the whole measurement, so
    a burst of load from another process moves all medians alike instead of a few.
    """
    if not isinstance(repeats, int) or repeats < 1:
        raise ConfigError("repeats", repeats, "expected a positive integer")
    if not isinstance(warmup, int) or warmup < 0:
        raise ConfigError("warmup", warmup, "expected a non-negative integer")
    sync: Callable[[], None] = lambda: None  # noqa: E731
    if device == "cuda":
        import torch

        sync = torch.cuda.synchronize
    for _ in range(warmup):
        for f in fns:
            f()
    sync()
    clock = time.perf_counter_ns
    samples: list[list[int]] = [[] for _ in fns]
    for _ in range(repeats):
        for f, acc in zip(fns, samples):
            for _ in range(inner - 1):  # back-to-back untimed calls: time the function warm
                f()
            sync()
            t0 = clock()
            f()
            sync()
            acc.append(clock() - t0)
    out = []
    for acc in samples:
        ms = [t / 1e6 for t in acc]
        out.append(Timing(statistics.median(ms), statistics.fmean(ms), statistics.pstdev(ms), repeats, warmup))
    return out


def measure_layers(
    layers: list[Layer],
    *,
    device: str = "cpu",
    batch: int = 1,
    warmup: int = 10,
    repeats: int = 50,
    threads: int | None = 1,
    op_options: dict | None = None,
) -> list[Timing]:
    """Latency of several layer shapes, timed in turn (see ``_round_robin``); one Timing per layer."""
    import torch

    check_device(device)
    with torch_threads(threads), torch.no_grad():
        fns = [layer_callable(L, batch, device, op_options) for L in layers]
        return _round_robin(fns, warmup, repeats, device)


def measure_archs(
    archs: list,
    *,
    device: str = "cpu",
    batch: int = 1,
    warmup: int = 10,
    repeats: int = 50,
    threads: int | None = 1,
    op_options: dict | None = None,
) -> list[Timing]:
    """End-to-end latency of several networks: in each round every network runs twice back to
    back and the second call is timed, so each sample is a warm call (as in a loop over one
    network) while the samples of all networks are spread over the same time window."""
    import torch

    from nas.models.static import build_model

    check_device(device)
    with torch_threads(threads), torch.no_grad():
        g = torch.Generator().manual_seed(0)
        fns = []
        for a in archs:
            m = build_model(a, op_options).to(device).eval()
            x = torch.randn(batch, a.in_channels, a.resolution, a.resolution, generator=g).to(device)
            fns.append(lambda m=m, x=x: m(x))
        return _round_robin(fns, warmup, repeats, device, inner=2)


def measure_arch(
    arch: Arch,
    *,
    device: str = "cpu",
    batch: int = 1,
    warmup: int = 10,
    repeats: int = 50,
    threads: int | None = 1,
    op_options: dict | None = None,
    model: nn.Module | None = None,
) -> Timing:
    """End-to-end latency of ``build_model(arch)`` (eval, no_grad), same settings as the layers."""
    import torch

    from nas.models.static import build_model

    check_device(device)
    with torch_threads(threads), torch.no_grad():
        m = (model if model is not None else build_model(arch, op_options)).to(device).eval()
        g = torch.Generator().manual_seed(0)
        x = torch.randn(batch, arch.in_channels, arch.resolution, arch.resolution, generator=g).to(device)
        return time_calls(lambda: m(x), warmup, repeats, device)


def calibrate_layer_overhead(
    archs: list,
    *,
    device: str = "cpu",
    batch: int = 1,
    warmup: int = 10,
    repeats: int = 50,
    threads: int | None = 1,
    container_ms: dict | None = None,
    op_options: dict | None = None,
) -> dict:
    """Per-layer in-network overhead (ms) per operator kind: what a layer costs inside a network
    beyond its timing in a table (python between layers, fresh output buffers, caches holding
    other tensors; larger for operators with more python around their kernel).

    Times each arch end to end (``measure_archs``) and right after its layers in turn as one group
    (``measure_layers``, as a table build does), so both see the same load from other processes;
    ``gap = end_to_end - sum(layers) - network - blocks * block``. Medians keep it robust to a
    burst of load: ``mult`` is the median gap per layer over the archs with multiplicative layers
    only (all archs when there are none); every other operator kind's is the median, over the
    archs that have layers of it, of ``(gap - mult * mult_layers) / its_layers``. All clipped at 0.
    Returns ``{"layer": {op: ms}, "archs": n, "spread": [min, max] gap per layer}``.
    """
    container_ms = container_ms or {"network": 0.0, "block": 0.0}
    kw: dict = dict(device=device, batch=batch, warmup=warmup, repeats=repeats, threads=threads, op_options=op_options)
    rows = []  # (gap, {op: layers})
    for a in archs:
        layers = arch_layers(a)
        t = measure_archs([a], **kw)[0]
        parts = measure_layers(layers, **kw)
        blocks = sum(len(s.blocks) for s in a.stages)
        gap = t.median_ms - sum(p.median_ms for p in parts) - container_ms["network"] - blocks * container_ms["block"]
        counts = {op: sum(1 for L in layers if L.op == op) for op in op_kinds()}
        rows.append((gap, counts))
    per_layer = [g / sum(c.values()) for g, c in rows]
    pure = [g / c[MULT] for g, c in rows if sum(c.values()) == c[MULT]]
    mult = max(statistics.median(pure if pure else per_layer), 0.0)
    coef = {MULT: mult}
    for op in op_kinds():
        if op != MULT:
            vals = [(g - mult * c[MULT]) / c[op] for g, c in rows if c[op]]
            coef[op] = max(statistics.median(vals), 0.0) if vals else mult
    return {"layer": coef, "archs": len(archs), "spread": [min(per_layer), max(per_layer)]}


def measure_overhead(*, device: str = "cpu", warmup: int = 50, repeats: int = 500, threads: int | None = 1) -> dict[str, float]:
    """Python cost of the containers no layer accounts for, in ms.

    ``block``: calling an ``nn.Module`` whose forward runs one python statement (``MBConv.__call__``
    around its layers); ``network``: ``Network.__call__`` + ``forward_features`` + dropout call.
    Measured with empty modules so that no layer time is counted twice.
    """
    import torch
    import torch.nn as nn

    check_device(device)

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.shortcut = False

        def forward(self, x):
            y = x
            return x + y if self.shortcut else y

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.dropout = nn.Identity()

        def forward_features(self, x):
            return x

        def forward(self, x):
            return self.dropout(self.forward_features(x))

    with torch_threads(threads), torch.no_grad():
        x = torch.zeros(1, device=device)
        b, n = Block(), Net()
        block = time_calls(lambda: b(x), warmup, repeats, device).median_ms
        net = time_calls(lambda: n(x), warmup, repeats, device).median_ms
        bare = time_calls(lambda: x, warmup, repeats, device).median_ms
    return {"block": max(block - bare, 0.0), "network": max(net - bare, 0.0)}
