"""Operators: multiplicative, shift (DeepShift) and add (AdderNet) convolutions and linears.

``create_conv`` / ``create_linear`` are the one place where an operator kind string
(``"mult"``, ``"shift"``, ``"add"``) becomes a module. This package imports nothing from
``nas.search`` or ``nas.cost``.

Counting contract: every operator module other than ``nn.Conv2d`` / ``nn.Linear`` defines
``count_ops(out_shape) -> dict`` with integer ``macs``, ``mults``, ``adds`` and ``shifts`` for one
forward call producing a tensor of ``out_shape`` (batch included). ``nas.cost.counting`` uses it.
"""

from __future__ import annotations

import torch.nn as nn

OP_KINDS = ("mult", "shift", "add")


def _check_kind(op: str) -> None:
    if op not in OP_KINDS:
        from nas.errors import ConfigError

        raise ConfigError("op", op, f"allowed: {', '.join(OP_KINDS)}")


def create_conv(
    op: str,
    in_channels: int,
    out_channels: int,
    kernel_size: int,
    stride: int = 1,
    groups: int = 1,
    bias: bool = False,
    **options,
) -> nn.Module:
    """A 2-d convolution of kind ``op`` with 'same' padding (kernel_size // 2)."""
    _check_kind(op)
    padding = kernel_size // 2
    if op == "mult":
        return nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, groups=groups, bias=bias)
    raise NotImplementedError(f"operator {op!r} is not implemented yet (nas.ops)")


def create_linear(op: str, in_features: int, out_features: int, bias: bool = True, **options) -> nn.Module:
    """A fully connected layer of kind ``op``."""
    _check_kind(op)
    if op == "mult":
        return nn.Linear(in_features, out_features, bias=bias)
    raise NotImplementedError(f"operator {op!r} is not implemented yet (nas.ops)")
