"""Validation and geometry helpers shared by the operator modules (``nas.ops.shift``,
``nas.ops.adder``) and the operator registry (``nas.ops.registry``).

They live here, not in ``nas/ops/__init__.py``, so that no submodule imports its own package's
``__init__``; this module imports no torch, so the registry (and through it the Arch schema and the
command line) stays light. Bad values raise ``nas.errors.ConfigError`` naming the field.
"""

from __future__ import annotations

import math
from typing import Any

from nas.errors import ConfigError


def check_int(field: str, value: Any, low: int, high: int | None = None) -> int:
    """``value`` if it is an integer in ``[low, high]`` (no upper bound when ``high`` is None)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
        rng = f"an integer >= {low}" if high is None else f"an integer in [{low}, {high}]"
        raise ConfigError(field, value, f"allowed: {rng}")
    return value


def check_choice(field: str, value: Any, allowed: tuple) -> Any:
    """``value`` if it is one of the strings ``allowed``."""
    if not isinstance(value, str) or value not in allowed:
        raise ConfigError(field, value, f"allowed: {', '.join(allowed)}")
    return value


def pair(field: str, value: Any, low: int) -> tuple[int, int]:
    """An int or a pair of ints (each >= ``low``) as a pair, as ``nn.Conv2d`` takes them."""
    items = (value, value) if isinstance(value, int) and not isinstance(value, bool) else value
    try:
        a, b = items
        return check_int(field, a, low), check_int(field, b, low)
    except (TypeError, ValueError, ConfigError):
        raise ConfigError(field, value, f"allowed: an integer >= {low} or a pair of them") from None


class ConvGeometry:
    """The ``nn.Conv2d`` geometry attributes ``conv_config`` sets on a conv module (declared here
    so that type checkers know them; a base of the shift and adder convs, no behaviour)."""

    in_channels: int
    out_channels: int
    kernel_size: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    groups: int
    padding_mode: str


def conv_config(
    module: Any,
    in_channels: Any,
    out_channels: Any,
    kernel_size: Any,
    stride: Any,
    padding: Any,
    dilation: Any,
    groups: Any,
    padding_mode: Any,
) -> tuple[int, int, int, int]:
    """Validate the ``nn.Conv2d`` geometry (ConfigError instead of nn.Conv2d's errors), set it on
    ``module`` as nn.Conv2d names it (pairs for kernel_size, stride, padding, dilation) and return
    the weight shape (out, in / groups, kh, kw)."""
    check_int("in_channels", in_channels, 1)
    check_int("out_channels", out_channels, 1)
    check_int("groups", groups, 1)
    if in_channels % groups or out_channels % groups:
        raise ConfigError(
            "groups", groups, f"allowed: a divisor of in_channels={in_channels} and out_channels={out_channels}"
        )
    if padding_mode != "zeros":
        raise ConfigError("padding_mode", padding_mode, "allowed: zeros")
    module.in_channels, module.out_channels, module.groups, module.padding_mode = in_channels, out_channels, groups, padding_mode
    module.kernel_size = pair("kernel_size", kernel_size, 1)
    module.stride = pair("stride", stride, 1)
    module.padding = pair("padding", padding, 0)
    module.dilation = pair("dilation", dilation, 1)
    return (out_channels, in_channels // groups, *module.kernel_size)


def conv_terms(in_channels: int, groups: int, kernel_size: tuple[int, int]) -> int:
    """K: the terms each output of a convolution sums."""
    return (in_channels // groups) * kernel_size[0] * kernel_size[1]


def numel(shape: Any) -> int:
    """Elements of a tensor of ``shape``."""
    return int(math.prod(int(s) for s in shape))


def conv_repr(m: Any) -> str:
    """``nn.Conv2d``-style repr of a conv-like operator (shared by the shift and add convs)."""
    s = f"{m.in_channels}, {m.out_channels}, kernel_size={m.kernel_size}, stride={m.stride}"
    if m.padding != (0, 0):
        s += f", padding={m.padding}"
    if m.dilation != (1, 1):
        s += f", dilation={m.dilation}"
    if m.groups != 1:
        s += f", groups={m.groups}"
    if m.bias is None:
        s += ", bias=False"
    return s
