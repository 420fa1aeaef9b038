"""Exact operation counts, per layer, from an Arch (analytically) or from a module (with hooks).

The layers are those of ``nas.cost.layers.arch_layers``, the one per-layer decomposition.
Conventions (one forward pass, batch 1 unless given):

* ``macs``: multiply-accumulate *positions* of convs and linears, ``K * outputs`` with
  ``K = in_channels / groups * k * k``. This is the number papers call MACs (OFA calls it FLOPs),
  whatever the operator kind.
* a conv / linear counts with its operator kind's rule (``nas.ops.registry.CountRule``):
  ``mult``: ``K`` multiplications and ``K - 1`` additions per output; ``shift``: ``K`` shifts
  (sign flips are free) and ``K - 1`` additions; ``add``: ``K`` subtractions plus ``K - 1``
  accumulations = ``2K - 1`` additions (the absolute value only clears a sign bit).
* a bias adds one addition per output.
* SE: its two 1x1 convs count as above (on a 1x1 map); its average pool counts ``HW - 1``
  additions and 1 multiplication per channel, and the channel gating ``C*H*W`` multiplications.
  The final global average pool counts the same way; a residual shortcut ``C*H*W`` additions.
* Segmentation head: its convs count as convs; its gate's pool and product as the SE's; the sum
  of its two branches as a residual; a bilinear upsampling 4 multiplications and 3 additions per
  output element (the weighted sum of the four neighbours: the interpolation weights are not
  powers of two in general, so they are counted as multiplications even in an MF network).
* Not counted: BatchNorm (folded into the preceding conv at deployment) and activations
  (comparisons / clamps).
* ``params``: trainable parameters, BN affine included, so the total equals
  ``sum(p.numel() for p in build_model(arch).parameters())`` for every operator kind.
* ``act_in`` / ``act_out``: activation elements read and written by the layer.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterable

from nas.arch import Arch
from nas.cost.layers import KINDS, Layer, arch_layers
from nas.ops.registry import MULT, OPS, op_counts

if TYPE_CHECKING:  # pragma: no cover
    import torch.nn as nn

__all__ = ["KINDS", "COUNT_KEYS", "Layer", "LayerCost", "CostReport", "arch_layers", "layer_cost", "count_ops", "count_module_ops"]

COUNT_KEYS = ("macs", "mults", "adds", "shifts", "params")


@dataclass(frozen=True)
class LayerCost:
    """Operation counts, parameters and activation sizes of one layer (see the module docstring)."""

    layer: Layer
    macs: int
    mults: int
    adds: int
    shifts: int
    params: int
    act_in: int
    act_out: int

    def as_row(self) -> dict:
        row = dataclasses.asdict(self.layer)
        row.update({k: getattr(self, k) for k in ("macs", "mults", "adds", "shifts", "params", "act_in", "act_out")})
        return row


def layer_cost(layer: Layer, batch: int = 1) -> LayerCost:
    """Counts of one layer for ``batch`` inputs."""
    L = layer
    act_in = batch * L.in_channels * L.in_hw * L.in_hw
    act_out = batch * L.out_channels * L.out_hw * L.out_hw
    macs = mults = adds = shifts = params = 0
    if L.has_weights:
        k_terms = (L.in_channels // L.groups) * L.kernel_size * L.kernel_size
        c = op_counts(L.op, k_terms, act_out, L.bias)
        macs, mults, adds, shifts = c["macs"], c["mults"], c["adds"], c["shifts"]
        params = L.out_channels * k_terms + (L.out_channels if L.bias else 0) + (2 * L.out_channels if L.bn else 0)
    elif L.kind == "pool" or L.table_part == "pool":
        hw = L.in_hw * L.in_hw
        adds = batch * L.in_channels * (hw - 1)
        mults = batch * L.in_channels
    elif L.table_part == "gate":  # x * hardsigmoid(...)
        mults = act_out
    elif L.kind == "residual":
        adds = act_out
    elif L.kind == "upsample":  # bilinear: a weighted sum of 4 neighbours per output
        mults, adds = 4 * act_out, 3 * act_out
    else:
        raise ValueError(f"layer {L.name}: no counting rule for kind {L.kind!r}, part {L.part!r}")
    return LayerCost(L, macs, mults, adds, shifts, params, act_in, act_out)


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
            if r.layer.has_weights:
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
        """Per-layer text table (layers without MACs or parameters left out, except upsamplings:
        their multiplications, in the ``mults`` column, grow with the output resolution) and a totals line; ``extra`` appends
        a column block to every layer row (one string per row of ``self.rows``) under ``extra_head``."""
        w = max([16] + [len(r.layer.name) for r in self.rows])
        head = f"{'layer':<{w}} {'kind':<9} {'op':<5} {'in':>5} {'out':>5} {'k':>2} {'s':>2} {'hw':>8} {'MACs':>12} {'mults':>10} {'params':>9}" + extra_head
        lines = [head, "-" * len(head)]
        for i, r in enumerate(self.rows):
            L = r.layer
            if r.macs == 0 and r.params == 0 and L.kind != "upsample":
                continue
            lines.append(
                f"{L.name:<{w}} {L.kind:<9} {L.op:<5} {L.in_channels:>5} {L.out_channels:>5} {L.kernel_size:>2} {L.stride:>2} "
                f"{f'{L.in_hw}->{L.out_hw}':>8} {r.macs:>12,} {r.mults:>10,} {r.params:>9,}" + (extra[i] if extra else "")
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


def count_module_ops(model: nn.Module, input_shape: Iterable[int]) -> list[dict]:
    """Counts of every conv / linear leaf of ``model`` from one real forward pass.

    Leaves that define ``count_ops(out_shape)`` (the toolkit's shift and add ops) report their
    own counts; other conv / linear modules of a registered kind (``nn.Conv2d`` / ``nn.Linear``:
    ``mult``) are counted with the kind's rule. Returns one dict per call in execution order with
    ``name``, ``macs``, ``mults``, ``adds``, ``shifts``.
    """
    import torch
    import torch.nn as nn

    rows: list[dict] = []
    handles = []

    def hook(name):
        def fn(mod, inp, out):
            if hasattr(mod, "count_ops"):
                c = dict(mod.count_ops(tuple(out.shape)))
            else:
                kind, linear = OPS.kind_of_module(mod) or (OPS.get(MULT), isinstance(mod, nn.Linear))
                k_terms = mod.in_features if linear else mod.in_channels // mod.groups * mod.kernel_size[0] * mod.kernel_size[1]
                c = kind.counting.counts(k_terms, out.numel(), mod.bias is not None)
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
