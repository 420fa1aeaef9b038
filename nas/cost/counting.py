"""Exact operation counts, per layer, from an Arch (analytically) or from a module (with hooks).

Conventions (one forward pass, batch 1 unless given):

* ``macs``: multiply-accumulate *positions* of convs and linears, ``K * outputs`` with
  ``K = in_channels / groups * k * k``. This is the number papers call MACs (OFA calls it FLOPs),
  whatever the operator kind.
* ``mult`` conv / linear: ``K`` multiplications and ``K - 1`` additions per output.
* ``shift`` conv: ``K`` shifts (sign flips are free) and ``K - 1`` additions per output.
* ``add`` conv: ``K`` subtractions plus ``K - 1`` accumulations = ``2K - 1`` additions per output
  (the absolute value only clears a sign bit).
* a bias adds one addition per output.
* SE: its two 1x1 convs count as above (on a 1x1 map); its average pool counts ``HW - 1``
  additions and 1 multiplication per channel, and the channel gating ``C*H*W`` multiplications.
  The final global average pool counts the same way; a residual shortcut ``C*H*W`` additions.
* Not counted: BatchNorm (folded into the preceding conv at deployment) and activations
  (comparisons / clamps).
* ``params``: trainable parameters, BN affine included, so the total equals
  ``sum(p.numel() for p in build_model(arch).parameters())`` for every operator kind.
* ``act_in`` / ``act_out``: activation elements read and written by the layer.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Iterable

from nas.arch import Arch, block_in_channels, conv_out_size, has_shortcut
from nas.ops import op_counts

KINDS = ("dense", "pointwise", "depthwise", "se", "linear", "pool", "residual")
COUNT_KEYS = ("macs", "mults", "adds", "shifts", "params")


@dataclass(frozen=True)
class Layer:
    """Shape of one layer of a network: what op counting, energy and latency tables price."""

    name: str
    kind: str  # one of KINDS
    op: str  # mult | shift | add (pool / residual / se gate: mult)
    in_channels: int
    out_channels: int
    kernel_size: int = 1
    stride: int = 1
    groups: int = 1
    in_hw: int = 1
    out_hw: int = 1
    bias: bool = False
    bn: bool = False

    @property
    def is_conv(self) -> bool:
        return self.kind in ("dense", "pointwise", "depthwise") or (self.kind == "se" and self.name.endswith(("reduce", "expand")))

    def key(self) -> tuple:
        """Identity of the layer shape for lookup tables (the name is not part of it)."""
        return (self.kind, self.op, self.in_channels, self.out_channels, self.kernel_size, self.stride, self.groups, self.in_hw, self.bias)


@dataclass(frozen=True)
class LayerCost:
    layer: Layer
    macs: int
    mults: int
    adds: int
    shifts: int
    params: int
    act_in: int
    act_out: int

    def as_row(self) -> dict:
        row = {k: v for k, v in dataclasses.asdict(self.layer).items()}
        row.update({k: getattr(self, k) for k in ("macs", "mults", "adds", "shifts", "params", "act_in", "act_out")})
        return row


def layer_cost(layer: Layer, batch: int = 1) -> LayerCost:
    L = layer
    act_in = batch * L.in_channels * L.in_hw * L.in_hw
    act_out = batch * L.out_channels * L.out_hw * L.out_hw
    macs = mults = adds = shifts = params = 0
    if L.is_conv or L.kind == "linear":
        k_terms = (L.in_channels // L.groups) * L.kernel_size * L.kernel_size
        c = op_counts(L.op, k_terms, act_out, L.bias)
        macs, mults, adds, shifts = c["macs"], c["mults"], c["adds"], c["shifts"]
        params = L.out_channels * k_terms + (L.out_channels if L.bias else 0) + (2 * L.out_channels if L.bn else 0)
    elif L.kind == "pool" or (L.kind == "se" and L.name.endswith("pool")):
        hw = L.in_hw * L.in_hw
        adds = batch * L.in_channels * (hw - 1)
        mults = batch * L.in_channels
    elif L.kind == "se":  # gate: x * sigmoid(...)
        mults = act_out
    elif L.kind == "residual":
        adds = act_out
    else:
        raise ValueError(f"unknown layer kind {L.kind!r}")
    return LayerCost(L, macs, mults, adds, shifts, params, act_in, act_out)


def arch_layers(arch: Arch) -> list[Layer]:
    """Every counted layer of ``arch`` in forward order, with its shapes."""
    layers: list[Layer] = []
    hw = arch.resolution
    s = arch.stem
    out = conv_out_size(hw, s.kernel_size, s.stride)
    layers.append(Layer("stem", "dense", s.op, arch.in_channels, s.out_channels, s.kernel_size, s.stride, 1, hw, out, bn=True))
    hw = out
    ins = block_in_channels(arch)
    for (i, j, b), cin in zip(arch.blocks(), ins):
        p = f"s{i}.b{j}"
        mid = b.mid_channels
        if b.expand_ratio != 1:
            layers.append(Layer(f"{p}.expand", "pointwise", b.op, cin, mid, 1, 1, 1, hw, hw, bn=True))
        out = conv_out_size(hw, b.kernel_size, b.stride)
        layers.append(Layer(f"{p}.dw", "depthwise", b.dw_op, mid, mid, b.kernel_size, b.stride, mid, hw, out, bn=True))
        if b.se_channels:
            layers.append(Layer(f"{p}.se.pool", "se", "mult", mid, mid, 1, 1, 1, out, 1))
            layers.append(Layer(f"{p}.se.reduce", "se", b.se_op, mid, b.se_channels, 1, 1, 1, 1, 1, bias=True))
            layers.append(Layer(f"{p}.se.expand", "se", b.se_op, b.se_channels, mid, 1, 1, 1, 1, 1, bias=True))
            layers.append(Layer(f"{p}.se.gate", "se", "mult", mid, mid, 1, 1, 1, out, out))
        layers.append(Layer(f"{p}.project", "pointwise", b.op, mid, b.out_channels, 1, 1, 1, out, out, bn=True))
        if has_shortcut(cin, b):
            layers.append(Layer(f"{p}.residual", "residual", "mult", b.out_channels, b.out_channels, 1, 1, 1, out, out))
        hw = out
    c = arch.stages[-1].blocks[-1].out_channels
    if arch.feature_mix is not None:
        fm = arch.feature_mix
        layers.append(Layer("feature_mix", "pointwise", fm.op, c, fm.out_channels, 1, 1, 1, hw, hw, bn=True))
        c = fm.out_channels
    layers.append(Layer("pool", "pool", "mult", c, c, 1, 1, 1, hw, 1))
    if arch.post_pool is not None:
        pp = arch.post_pool
        layers.append(Layer("post_pool", "pointwise", pp.op, c, pp.out_channels, 1, 1, 1, 1, 1, bias=True))
        c = pp.out_channels
    layers.append(Layer("classifier", "linear", arch.classifier.op, c, arch.num_classes, 1, 1, 1, 1, 1, bias=True))
    return layers


@dataclass
class CostReport:
    """Per-layer costs and totals of one architecture."""

    name: str
    rows: list[LayerCost]
    batch: int = 1

    def total(self, key: str) -> int:
        return sum(getattr(r, key) for r in self.rows)

    @property
    def totals(self) -> dict[str, int]:
        t = {k: self.total(k) for k in COUNT_KEYS}
        t["peak_act"] = max(r.act_in + r.act_out for r in self.rows)
        return t

    def by_kind(self) -> dict[str, dict[str, int]]:
        """Totals grouped by layer kind, and by operator kind of convs / linears (``op:shift``...)."""
        out: dict[str, dict[str, int]] = {}
        for r in self.rows:
            groups = [r.layer.kind]
            if r.layer.is_conv or r.layer.kind == "linear":
                groups.append(f"op:{r.layer.op}")
            for g in groups:
                acc = out.setdefault(g, dict.fromkeys(COUNT_KEYS, 0))
                for k in COUNT_KEYS:
                    acc[k] += getattr(r, k)
        return out

    def to_json_dict(self) -> dict:
        t = self.totals
        return {
            "name": self.name,
            "batch": self.batch,
            **t,
            "by_kind": self.by_kind(),
            "layers": [r.as_row() for r in self.rows],
        }

    def table(self, extra_head: str = "", extra: list[str] | None = None) -> str:
        """Per-layer text table (layers without MACs or parameters left out) and a totals line;
        ``extra`` appends a column block to every layer row (one string per row of ``self.rows``)
        under ``extra_head``."""
        head = f"{'layer':<16} {'kind':<9} {'op':<5} {'in':>5} {'out':>5} {'k':>2} {'s':>2} {'hw':>8} {'MACs':>12} {'params':>9}" + extra_head
        lines = [head, "-" * len(head)]
        for i, r in enumerate(self.rows):
            L = r.layer
            if r.macs == 0 and r.params == 0:
                continue
            lines.append(
                f"{L.name:<16} {L.kind:<9} {L.op:<5} {L.in_channels:>5} {L.out_channels:>5} {L.kernel_size:>2} {L.stride:>2} "
                f"{f'{L.in_hw}->{L.out_hw}':>8} {r.macs:>12,} {r.params:>9,}" + (extra[i] if extra else "")
            )
        t = self.totals
        lines.append("-" * len(head))
        lines.append(
            f"total: {t['macs'] / 1e6:.2f}M MACs, {t['params'] / 1e6:.3f}M params; "
            f"mults {t['mults']:,}, adds {t['adds']:,}, shifts {t['shifts']:,}; peak activation {t['peak_act']:,} elements"
        )
        return "\n".join(lines)


def count_ops(arch: Arch, batch: int = 1) -> CostReport:
    """Exact per-layer counts of ``arch`` (see the module docstring for the conventions)."""
    return CostReport(arch.name, [layer_cost(L, batch) for L in arch_layers(arch)], batch)


def count_module_ops(model, input_shape: Iterable[int]) -> list[dict]:
    """Counts of every conv / linear leaf of ``model`` from one real forward pass.

    Leaves that define ``count_ops(out_shape)`` (the toolkit's shift and add ops) report their
    own counts; ``nn.Conv2d`` / ``nn.Linear`` are counted as multiplicative. Returns one dict per
    call in execution order with ``name``, ``macs``, ``mults``, ``adds``, ``shifts``.
    """
    import torch
    import torch.nn as nn

    rows: list[dict] = []
    handles = []

    def hook(name):
        def fn(mod, inp, out):
            if hasattr(mod, "count_ops"):
                c = dict(mod.count_ops(tuple(out.shape)))
            elif isinstance(mod, nn.Conv2d):
                k_terms = mod.in_channels // mod.groups * mod.kernel_size[0] * mod.kernel_size[1]
                c = op_counts("mult", k_terms, out.numel(), mod.bias is not None)
            else:  # nn.Linear
                c = op_counts("mult", mod.in_features, out.numel(), mod.bias is not None)
            c["name"] = name
            rows.append(c)

        return fn

    for name, mod in model.named_modules():
        if hasattr(mod, "count_ops") or isinstance(mod, (nn.Conv2d, nn.Linear)):
            handles.append(mod.register_forward_hook(hook(name)))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(*input_shape))
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return rows
