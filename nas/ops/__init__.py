"""Operators: multiplicative, shift (DeepShift) and add (AdderNet) convolutions and linears.

``create_conv`` / ``create_linear`` are the one place where an operator kind string
(``"mult"``, ``"shift"``, ``"add"``) becomes a module. This package imports nothing from
``nas.search`` or ``nas.cost``.

Modules: ``ShiftConv2d``, ``ShiftLinear`` (``nas.ops.shift``), ``AdderConv2d``, ``AdderLinear``
(``nas.ops.adder``). Functional forms for weights that are not a module's own parameter (hybrid
weight sharing): ``shift_weight_q``, ``shift_weight_ps``, ``fixed_point``, ``adder_conv2d``,
``adder_linear``. Integer deployment emulation: ``nas.ops.deploy``. Slow reference versions kept
for tests: ``nas.ops.reference``.

Counting contract: every operator module other than ``nn.Conv2d`` / ``nn.Linear`` defines
``count_ops(out_shape) -> dict`` with integer ``macs``, ``mults``, ``adds`` and ``shifts`` for one
forward call producing a tensor of ``out_shape`` (batch included). ``nas.cost.counting`` uses it.
Conventions (``op_counts`` below computes them): each output element sums K terms, with
K = (in_channels / groups) * kh * kw for a convolution and K = in_features for a linear;
``macs = K * out_numel`` for every kind; per output element

* mult:  K multiplications, K - 1 additions;
* shift: K shifts, K - 1 additions (sign flips are free);
* add:   2K - 1 additions (K subtractions + K - 1 accumulations; the absolute value is free, it
  clears a sign bit);

plus one addition per output element when there is a bias.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch.nn as nn

from nas.errors import ConfigError

OP_KINDS = ("mult", "shift", "add")

# Options each kind accepts. An option that belongs to another kind is ignored, so one options
# dict can serve a whole network; a name that belongs to no kind is an error (typo guard).
SHIFT_OPTIONS = (
    "shift_type",
    "weight_bits",
    "rounding",
    "act_integer_bits",
    "act_fraction_bits",
    "max_shift",
    "generator",
)
ADD_OPTIONS = ("eta",)
_KIND_OPTIONS = {"mult": (), "shift": SHIFT_OPTIONS, "add": ADD_OPTIONS}

__all__ = [
    "OP_KINDS",
    "create_conv",
    "create_linear",
    "op_counts",
    "ShiftConv2d",
    "ShiftLinear",
    "AdderConv2d",
    "AdderLinear",
    "shift_weight_q",
    "shift_weight_ps",
    "fixed_point",
    "adder_conv2d",
    "adder_linear",
]

_LAZY = {
    "ShiftConv2d": "shift",
    "ShiftLinear": "shift",
    "shift_weight_q": "shift",
    "shift_weight_ps": "shift",
    "fixed_point": "shift",
    "AdderConv2d": "adder",
    "AdderLinear": "adder",
    "adder_conv2d": "adder",
    "adder_linear": "adder",
}

if TYPE_CHECKING:  # pragma: no cover
    from nas.ops.adder import AdderConv2d, AdderLinear, adder_conv2d, adder_linear
    from nas.ops.shift import ShiftConv2d, ShiftLinear, fixed_point, shift_weight_ps, shift_weight_q


def __getattr__(name: str) -> Any:
    # Submodules import the validation helpers below from this package, so they are loaded
    # lazily here rather than imported at the top (which would be circular).
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"nas.ops.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'nas.ops' has no attribute {name!r}")


def _check_kind(op: str) -> None:
    if op not in OP_KINDS:
        raise ConfigError("op", op, f"allowed: {', '.join(OP_KINDS)}")


def _select_options(op: str, options: dict) -> dict:
    known = set(SHIFT_OPTIONS) | set(ADD_OPTIONS)
    for name in options:
        if name not in known:
            raise ConfigError("options", name, f"allowed: {', '.join(sorted(known))}")
    return {k: v for k, v in options.items() if k in _KIND_OPTIONS[op]}


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
    """A 2-d convolution of kind ``op`` with 'same' padding (kernel_size // 2).

    ``options`` go to the operator (shift: ``shift_type``, ``weight_bits``, ``rounding``,
    ``act_integer_bits``, ``act_fraction_bits``, ``max_shift``, ``generator``; add: ``eta``) and are
    validated there. Options of the other kinds are ignored, so one dict can serve a whole network;
    a name no kind knows is a ConfigError.
    """
    _check_kind(op)
    opts = _select_options(op, options)
    padding = kernel_size // 2
    if op == "mult":
        return nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, groups=groups, bias=bias)
    if op == "shift":
        from nas.ops.shift import ShiftConv2d

        return ShiftConv2d(in_channels, out_channels, kernel_size, stride, padding, groups=groups, bias=bias, **opts)
    from nas.ops.adder import AdderConv2d

    return AdderConv2d(in_channels, out_channels, kernel_size, stride, padding, groups=groups, bias=bias, **opts)


def create_linear(op: str, in_features: int, out_features: int, bias: bool = True, **options) -> nn.Module:
    """A fully connected layer of kind ``op`` (options as for ``create_conv``)."""
    _check_kind(op)
    opts = _select_options(op, options)
    if op == "mult":
        return nn.Linear(in_features, out_features, bias=bias)
    if op == "shift":
        from nas.ops.shift import ShiftLinear

        return ShiftLinear(in_features, out_features, bias=bias, **opts)
    from nas.ops.adder import AdderLinear

    return AdderLinear(in_features, out_features, bias=bias, **opts)


def op_counts(op: str, terms: int, out_numel: int, bias: bool) -> dict[str, int]:
    """Operation counts of one layer of kind ``op`` whose ``out_numel`` outputs each sum ``terms`` (K) terms."""
    _check_kind(op)
    k, n = int(terms), int(out_numel)
    extra = n if bias else 0
    if op == "mult":
        return {"macs": k * n, "mults": k * n, "adds": (k - 1) * n + extra, "shifts": 0}
    if op == "shift":
        return {"macs": k * n, "mults": 0, "adds": (k - 1) * n + extra, "shifts": k * n}
    return {"macs": k * n, "mults": 0, "adds": (2 * k - 1) * n + extra, "shifts": 0}


# ---- validation helpers shared by nas.ops.shift and nas.ops.adder (ConfigError at construction) ----


def _check_int(field: str, value: Any, low: int, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
        rng = f"an integer >= {low}" if high is None else f"an integer in [{low}, {high}]"
        raise ConfigError(field, value, f"allowed: {rng}")
    return value


def _check_choice(field: str, value: Any, allowed: tuple) -> Any:
    if not isinstance(value, str) or value not in allowed:
        raise ConfigError(field, value, f"allowed: {', '.join(allowed)}")
    return value


def _pair(field: str, value: Any, low: int) -> tuple[int, int]:
    items = (value, value) if isinstance(value, int) and not isinstance(value, bool) else value
    try:
        a, b = items
        return _check_int(field, a, low), _check_int(field, b, low)
    except (TypeError, ValueError, ConfigError):
        raise ConfigError(field, value, f"allowed: an integer >= {low} or a pair of them") from None


def _conv_config(
    module: Any,
    in_channels: Any,
    out_channels: Any,
    kernel_size: Any,
    stride: Any,
    padding: Any,
    dilation: Any,
    groups: Any,
    padding_mode: Any,
) -> tuple:
    """Validate the ``nn.Conv2d`` geometry (ConfigError instead of nn.Conv2d's errors), set it on
    ``module`` as nn.Conv2d names it (pairs for kernel_size, stride, padding, dilation) and return
    the weight shape (out, in / groups, kh, kw)."""
    _check_int("in_channels", in_channels, 1)
    _check_int("out_channels", out_channels, 1)
    _check_int("groups", groups, 1)
    if in_channels % groups or out_channels % groups:
        raise ConfigError(
            "groups", groups, f"allowed: a divisor of in_channels={in_channels} and out_channels={out_channels}"
        )
    if padding_mode != "zeros":
        raise ConfigError("padding_mode", padding_mode, "allowed: zeros")
    module.in_channels, module.out_channels, module.groups, module.padding_mode = in_channels, out_channels, groups, padding_mode
    module.kernel_size = _pair("kernel_size", kernel_size, 1)
    module.stride = _pair("stride", stride, 1)
    module.padding = _pair("padding", padding, 0)
    module.dilation = _pair("dilation", dilation, 1)
    return (out_channels, in_channels // groups, *module.kernel_size)


def _conv_terms(in_channels: int, groups: int, kernel_size: tuple[int, int]) -> int:
    return (in_channels // groups) * kernel_size[0] * kernel_size[1]


def _numel(shape: Any) -> int:
    return int(math.prod(int(s) for s in shape))


def _conv_repr(m: Any) -> str:
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
