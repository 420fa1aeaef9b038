"""Operators: multiplicative, shift (DeepShift) and add (AdderNet) convolutions and linears.

Every operator kind is declared once, in the operator registry (``nas.ops.registry``: its modules,
functional forms, counting and energy rules, options and operator convention). ``create_conv`` /
``create_linear`` turn a kind name into a module; ``op_counts`` counts a layer with the kind's
rule. This package imports nothing from ``nas.search`` or ``nas.cost``, and importing it (or the
registry) loads no torch: the modules live in their own submodules, imported where used.

Modules: ``ShiftConv2d``, ``ShiftLinear`` (``nas.ops.shift``), ``AdderConv2d``, ``AdderLinear``
(``nas.ops.adder``). Functional forms for weights that are not a module's own parameter (hybrid
weight sharing): ``shift_weight_q``, ``shift_weight_ps``, ``shift_conv2d``, ``fixed_point``
(``nas.ops.shift``), ``adder_conv2d``, ``adder_linear`` (``nas.ops.adder``). Hybrid layers:
``nas.ops.hybrid``. Integer deployment emulation: ``nas.ops.deploy``. Slow reference versions
kept for tests: ``nas.ops.reference``.

Counting contract: every operator module other than ``nn.Conv2d`` / ``nn.Linear`` defines
``count_ops(out_shape) -> dict`` with integer ``macs``, ``mults``, ``adds`` and ``shifts`` for one
forward call producing a tensor of ``out_shape`` (batch included), computed with its kind's
``CountRule``; ``nas.cost.counting`` uses it. Each output element sums K terms, with
K = (in_channels / groups) * kh * kw for a convolution and K = in_features for a linear;
``macs = K * out_numel`` for every kind; per output element

* mult:  K multiplications, K - 1 additions;
* shift: K shifts, K - 1 additions (sign flips are free);
* add:   2K - 1 additions (K subtractions + K - 1 accumulations; the absolute value is free, it
  clears a sign bit);

plus one addition per output element when there is a bias.
"""

from nas.ops.registry import (
    MULT,
    OPS,
    AddOptions,
    CountRule,
    EnergyRule,
    MultOptions,
    OpKind,
    OpOptions,
    Registry,
    ShiftOptions,
    create_conv,
    create_linear,
    get_kind,
    mf_kinds,
    op_counts,
    op_kinds,
)

__all__ = [
    "MULT",
    "OPS",
    "AddOptions",
    "CountRule",
    "EnergyRule",
    "MultOptions",
    "OpKind",
    "OpOptions",
    "Registry",
    "ShiftOptions",
    "create_conv",
    "create_linear",
    "get_kind",
    "mf_kinds",
    "op_counts",
    "op_kinds",
]
