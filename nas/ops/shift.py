"""Shift operators (DeepShift, Elhoushi et al. CVPRW'21): ``ShiftConv2d`` and ``ShiftLinear``.

Every weight is a signed power of two ``s * 2**p``, so a product becomes a bit shift of a
fixed-point activation plus a sign flip. Training runs ``F.conv2d`` / ``F.linear`` on the rounded
weights (full convolution speed); ``nas.ops.deploy`` runs the same layer with integer shifts.

``shift_type="Q"`` (DeepShift-Q, default): a real weight ``W`` is stored. In the forward
  ``|W|`` is clamped to ``[2**lo, 2**hi]`` ("clampabs") and rounded in the log domain,
  ``W_q = sign(W) * 2**round(log2|W|)`` (``rounding="deterministic"``) or
  ``2**(floor(log2|W|) + Bernoulli(frac(log2|W|)))`` (``"stochastic"``); the backward is straight
  through (``dL/dW := dL/dW_q``). Shift range ``[hi - (2**(b-1) - 1), hi]`` for ``weight_bits=b``
  (``[-15, 0]`` for the default b = 5); the sign is binary (an exactly-zero weight stays zero).
``shift_type="PS"`` (DeepShift-PS): shift ``P`` and sign ``S`` parameters;
  ``W = sign(round(S)) * 2**round(clamp(P, lo, hi))`` with a ternary sign, so one code fewer:
  range ``[hi - (2**(b-1) - 2), hi]`` (``[-14, 0]`` for b = 5). Backward as DeepShift:
  ``dL/dS = dL/dW`` and ``dL/dP = dL/dW * W * ln 2``. With ``rounding="stochastic"`` both ``P``
  and ``S`` are rounded stochastically (``floor + Bernoulli(frac)``, independent draws), as in
  DeepShift's ``Conv2dShift``/``LinearShift``: ``E[round(S)] = S``, so a sign parameter near 0.3
  gives +1 three times in ten and 0 otherwise, an unbiased ternary sign.

A NaN weight stays NaN (``sign(nan)`` is 0 in PyTorch, which would quantise a diverged weight to 0
and make the layer look healthy; DeepShift-Q keeps the NaN through ``2**round(log2|w|)``). For PS
the same holds for a NaN sign parameter, where DeepShift itself would give 0. An infinite Q weight
is clamped like any large one (clampabs). ``shift_and_sign`` refuses non-finite weights: an
integer encoding cannot carry them.
``max_shift`` (``hi``, default 0, as DeepShift) moves the range up for weights above 1
(DeepShift issue #17).

Clampabs is out of place. DeepShift clamps the stored parameter in place at every forward, so the
saved weights depend on whether a forward ran, and a reload without re-quantising loses accuracy
(DeepShift issue #19). Here the parameters are only ever changed by the optimiser and the forward
is a pure function of them: a state_dict saved at any time reloads to bit-identical outputs. The
price: the straight-through gradient still moves a weight that lies beyond the clamp, which has no
effect on the output until it comes back inside (weight decay pulls it back).

Stochastic rounding is used in training mode only (eval is deterministic) and draws
``torch.rand(weight.shape, generator=generator)`` once per forward, so a seeded
``torch.Generator`` (on the weight's device) makes it reproducible.

Fixed-point activations (off by default; set both ``act_integer_bits`` I and
``act_fraction_bits`` F): ``x_q = clamp(floor(x * 2**F), -2**(I+F-1), 2**(I+F-1) - 1) * 2**-F``,
i.e. two's complement with I integer bits (sign included) and F fraction bits, truncating like
DeepShift's ``round_to_fixed`` (whose upper bound ``2**(I-1) - 1`` we replace by the largest
representable value). Straight-through backward. The bias is put in the same format, as in
DeepShift, so that an integer accumulator can add it. In float32 the emulation is exact for
I + F <= 24. Above that, float32 cannot hold the largest code ``2**(I+F-1) - 1``: values that
saturate at the top become the largest float32 inside the format instead (for 16/16 bits:
32767.998046875, not 32768.0, which would lie one step outside it); every other value is exact
(the floor of a float is a float). ``nas.ops.deploy.fixed_point_int`` computes in float64 and
gives the exact integer code.

Counting (``count_ops``): K = (in_channels / groups) * kh * kw terms per output (in_features for the
linear); ``macs = shifts = K * out_numel``, ``adds = (K - 1) * out_numel`` (+ ``out_numel`` with a
bias), no multiplications: sign flips are free.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from nas.errors import ConfigError
from nas.ops._common import ConvGeometry, check_choice, check_int, conv_config, conv_repr, conv_terms, numel
from nas.ops.precision import full_precision, to_float32
from nas.ops.registry import (
    ROUNDINGS,
    SHIFT_TYPES,
    ShiftOptions,
    check_act_bits,
    check_max_shift,
    check_weight_bits,
    get_kind,
)

__all__ = [
    "SHIFT_TYPES",
    "ROUNDINGS",
    "ShiftConv2d",
    "ShiftLinear",
    "shift_range",
    "shift_weight_q",
    "shift_weight_ps",
    "shift_conv2d",
    "shift_linear",
    "shift_and_sign_q",
    "shift_and_sign_ps",
    "fixed_point",
]

_DEFAULT = ShiftOptions()  # the modules' keyword defaults
_SQRT_HALF = 2.0**-0.5
_THRESHOLDS: dict = {}


def _sqrt_half_threshold(dtype: torch.dtype) -> float:
    """The smallest value of ``dtype`` above the irrational 2**-0.5, so that ``m < t`` in ``dtype``
    decides ``m < 2**-0.5`` exactly for every mantissa ``m`` of that dtype."""
    if dtype not in _THRESHOLDS:
        t = torch.tensor(_SQRT_HALF, dtype=dtype)
        if t.double().item() < _SQRT_HALF:  # rounded down (float32): step to the next value up
            t = torch.nextafter(t, torch.tensor(1.0, dtype=dtype))
        _THRESHOLDS[dtype] = t.item()
    return _THRESHOLDS[dtype]


# ------------------------------------------------------------------------------------------------
# Option validation (the options themselves: nas.ops.registry.ShiftOptions)


def _check_generator(generator):
    if generator is not None and not isinstance(generator, torch.Generator):
        raise ConfigError("generator", generator, "allowed: a torch.Generator or None")
    return generator


def shift_range(weight_bits: int = 5, shift_type: str = "Q", max_shift: int = 0) -> tuple[int, int]:
    """The allowed shifts ``(lo, hi)``: 2**(b-1) values for Q (binary sign), one fewer for PS (ternary)."""
    check_weight_bits(weight_bits)
    check_choice("shift_type", shift_type, SHIFT_TYPES)
    check_max_shift(max_shift)
    levels = 2 ** (weight_bits - 1) - (1 if shift_type == "Q" else 2)
    return max_shift - levels, max_shift


def _uniform(t: torch.Tensor, rounding: str, generator, draws: int | None = None) -> torch.Tensor | None:
    """Uniforms for stochastic rounding: t's shape, or [draws, *t.shape] (None when deterministic)."""
    if rounding == "deterministic":
        return None
    shape = t.shape if draws is None else (draws, *t.shape)
    return torch.rand(shape, generator=generator, device=t.device, dtype=t.dtype)


# ------------------------------------------------------------------------------------------------
# Quantisers (autograd Functions compute the rounded value inside forward so that the output is
# exactly the rounded tensor; ``w + (q - w).detach()`` would not be bit-exact)


def _q_shift(weight: torch.Tensor, lo: int, hi: int, u: torch.Tensor | None) -> torch.Tensor:
    """Integer shifts p of DeepShift-Q (clampabs, then log-domain rounding) as an int32 tensor.

    Few temporaries on purpose: this runs at every training forward of every shift layer.
    """
    a = weight.abs().clamp_(2.0**lo, 2.0**hi)  # clampabs on a copy: the parameter is untouched
    m, e = torch.frexp(a)  # a = m * 2**e with m in [0.5, 1): log2 a = e + log2 m
    if u is None:
        # round(log2 a) = e - 1 when log2 m < -1/2, i.e. m < 2**-0.5, else e (exact comparison).
        e -= (m < _sqrt_half_threshold(m.dtype)).to(e.dtype)
    else:
        # floor(log2 a) = e - 1, plus one with probability frac(log2 a) = log2(m) + 1 (0 for powers of two)
        e -= (u >= torch.log2_(m).add_(1)).to(e.dtype)
    return e.clamp_(lo, hi)


def _round(t: torch.Tensor, u: torch.Tensor | None) -> torch.Tensor:
    """Round to nearest, or stochastically with uniforms ``u``: floor + Bernoulli(frac)."""
    return torch.round(t) if u is None else torch.floor(t) + (u < t - torch.floor(t)).to(t.dtype)


def _nan_sign(t: torch.Tensor) -> torch.Tensor:
    """``sign(t)`` that keeps NaN (``torch.sign(nan)`` is 0, which would hide a diverged weight)."""
    return torch.sign(t).masked_fill_(torch.isnan(t), float("nan"))


def _ps_shift_sign(shift, sign, lo: int, hi: int, u: torch.Tensor | None):
    """Rounded shift and ternary sign of DeepShift-PS; ``u`` (stochastic): uniforms [2, *shape]."""
    p = _round(shift.clamp(lo, hi), None if u is None else u[0])
    return p.clamp_(lo, hi), _nan_sign(_round(sign, None if u is None else u[1]))


class _PowerOfTwoQ(torch.autograd.Function):
    @staticmethod
    def forward(ctx, weight, lo, hi, u):
        out = torch.exp2_(_q_shift(weight, lo, hi, u).to(weight.dtype))  # exact for integer exponents
        return out.mul_(_nan_sign(weight))  # sign(0) = 0: an exactly-zero weight stays zero; NaN stays NaN

    @staticmethod
    def backward(ctx, grad):
        return grad, None, None, None  # straight through


class _PowerOfTwoPS(torch.autograd.Function):
    @staticmethod
    def forward(ctx, shift, sign, lo, hi, u):
        p, s = _ps_shift_sign(shift, sign, lo, hi, u)
        w = s * torch.exp2(p)
        ctx.save_for_backward(w)
        return w

    @staticmethod
    def backward(ctx, grad):
        (w,) = ctx.saved_tensors
        return grad * w * math.log(2.0), grad, None, None, None


class _FixedPoint(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, integer_bits, fraction_bits):
        return _fixed_point_grid(x, integer_bits, fraction_bits) * 2.0**-fraction_bits

    @staticmethod
    def backward(ctx, grad):
        return grad, None, None  # straight through


def _fixed_point_grid(x: torch.Tensor, integer_bits: int, fraction_bits: int) -> torch.Tensor:
    """``x`` in units of 2**-F: integer-valued, in x's dtype (exactly representable, see module doc)."""
    top = 2 ** (integer_bits + fraction_bits - 1)
    return torch.floor(x * 2.0**fraction_bits).clamp_(-top, _largest_code(top - 1, x.dtype))


@functools.cache
def _largest_code(code: int, dtype: torch.dtype) -> float:
    """The largest value of ``dtype`` that is <= ``code`` (``code`` itself when representable).

    ``float(2**31 - 1)`` rounds *up* to 2**31 in float32, a clamp bound one step outside the
    signed format; stepping down to the next float keeps saturated values inside it.
    """
    t = torch.tensor(code, dtype=torch.float64).to(dtype)
    if t.double().item() > code:
        t = torch.nextafter(t, torch.zeros((), dtype=dtype))
    return t.item()


def shift_weight_q(
    weight: torch.Tensor,
    weight_bits: int = 5,
    rounding: str = "deterministic",
    generator: torch.Generator | None = None,
    max_shift: int = 0,
) -> torch.Tensor:
    """DeepShift-Q: ``weight`` rounded to ``sign * 2**p`` (p in ``shift_range``), straight-through gradient.

    Usable with ``F.conv2d`` / ``F.linear``; the gradient flows unchanged into whatever ``weight``
    was computed from (e.g. a remapped slice of a shared tensor).
    """
    lo, hi = shift_range(weight_bits, "Q", max_shift)
    check_choice("rounding", rounding, ROUNDINGS)
    return _PowerOfTwoQ.apply(weight, lo, hi, _uniform(weight, rounding, _check_generator(generator)))


def shift_weight_ps(
    shift: torch.Tensor,
    sign: torch.Tensor,
    weight_bits: int = 5,
    rounding: str = "deterministic",
    generator: torch.Generator | None = None,
    max_shift: int = 0,
) -> torch.Tensor:
    """DeepShift-PS weight ``sign(round(sign)) * 2**round(clamp(shift))`` with DeepShift's gradients."""
    lo, hi = shift_range(weight_bits, "PS", max_shift)
    check_choice("rounding", rounding, ROUNDINGS)
    u = _uniform(shift, rounding, _check_generator(generator), draws=2)  # one draw for the shift, one for the sign
    return _PowerOfTwoPS.apply(shift, sign, lo, hi, u)


def shift_conv2d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, stride: int | tuple[int, int] = 1,
                 padding: int | tuple[int, int] = 0, dilation: int | tuple[int, int] = 1, groups: int = 1, **options: Any) -> torch.Tensor:
    """``F.conv2d`` with ``weight`` rounded to powers of two (``shift_weight_q(weight, **options)``):
    the functional shift convolution of hybrid layers (``OpKind.apply_conv``)."""
    return F.conv2d(x, shift_weight_q(weight, **options), bias, stride, padding, dilation, groups)


def shift_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, **options: Any) -> torch.Tensor:
    """``F.linear`` with ``weight`` rounded to powers of two (the functional shift linear layer)."""
    return F.linear(x, shift_weight_q(weight, **options), bias)


def fixed_point(x: torch.Tensor, integer_bits: int, fraction_bits: int) -> torch.Tensor:
    """``x`` truncated to two's complement fixed point (I integer bits incl. sign, F fraction bits), STE."""
    check_act_bits(integer_bits, fraction_bits)
    return _FixedPoint.apply(x, integer_bits, fraction_bits)


@torch.no_grad()
def shift_and_sign_q(weight: torch.Tensor, weight_bits: int = 5, max_shift: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Deterministic DeepShift-Q encoding of ``weight``: (shift int64, sign int64 in {-1, 0, 1})."""
    lo, hi = shift_range(weight_bits, "Q", max_shift)
    _check_finite_weights(weight)
    return _q_shift(weight, lo, hi, None).long(), torch.sign(weight).long()


@torch.no_grad()
def shift_and_sign_ps(shift: torch.Tensor, sign: torch.Tensor, weight_bits: int = 5, max_shift: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Deterministic DeepShift-PS encoding: (shift int64, sign int64 in {-1, 0, 1})."""
    lo, hi = shift_range(weight_bits, "PS", max_shift)
    _check_finite_weights(shift, sign)
    p, s = _ps_shift_sign(shift, sign, lo, hi, None)
    return p.long(), s.long()


def _check_finite_weights(*tensors: torch.Tensor) -> None:
    for t in tensors:
        if torch.isnan(t).any():
            raise ConfigError("weight", f"<{int(torch.isnan(t).sum())} NaN entries>", "weights without NaN (the layer diverged in training)")


# ------------------------------------------------------------------------------------------------
# Modules


class _ShiftMixin:
    """Options, parameters and quantisation shared by ShiftConv2d and ShiftLinear."""

    _weight_shape: tuple[int, ...]  # set by the module's __init__
    training: bool  # nn.Module's

    def _init_shift(
        self, shape, bias, factory, *, shift_type, weight_bits, rounding, act_integer_bits, act_fraction_bits,
        max_shift, generator,
    ) -> None:  # fmt: skip
        o = ShiftOptions(shift_type, weight_bits, rounding, act_integer_bits, act_fraction_bits, max_shift)  # validates
        self.shift_type, self.weight_bits, self.rounding, self.max_shift = o.shift_type, o.weight_bits, o.rounding, o.max_shift
        self.act_integer_bits, self.act_fraction_bits = o.act_integer_bits, o.act_fraction_bits
        self.generator = _check_generator(generator)  # not state: a Generator is not saved
        self.shift_bounds = shift_range(self.weight_bits, self.shift_type, self.max_shift)
        if self.shift_type == "Q":
            self.weight = nn.Parameter(torch.empty(shape, **factory))
        else:
            self.shift = nn.Parameter(torch.empty(shape, **factory))
            self.sign = nn.Parameter(torch.empty(shape, **factory))
        self.bias = nn.Parameter(torch.empty(shape[0], **factory)) if bias else None

    def reset_parameters(self) -> None:
        fan_in = numel(self._weight_shape[1:])
        if self.shift_type == "Q":
            nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))  # nn.Conv2d / nn.Linear init
        else:
            # DeepShift-PS: shifts ~ U(-10, -1) (relative to max_shift, inside the range), signs ~ U(-1, 1).
            lo, hi = self.shift_bounds
            a = max(lo, hi - 10)
            nn.init.uniform_(self.shift, a, max(a, hi - 1))
            nn.init.uniform_(self.sign, -1.0, 1.0)
        if self.bias is not None:
            bound = 1 / math.sqrt(fan_in)
            nn.init.uniform_(self.bias, -bound, bound)

    @property
    def fixed_point_activations(self) -> bool:
        return self.act_fraction_bits is not None

    def effective_weight(self) -> torch.Tensor:
        """The power-of-two weight used by the forward (differentiable; stochastic only in training)."""
        rounding = self.rounding if self.training else "deterministic"
        if self.shift_type == "Q":
            return shift_weight_q(self.weight, self.weight_bits, rounding, self.generator, self.max_shift)
        return shift_weight_ps(self.shift, self.sign, self.weight_bits, rounding, self.generator, self.max_shift)

    def shift_and_sign(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Deterministic (shift, sign) int64 tensors, what a shift accelerator stores."""
        if self.shift_type == "Q":
            return shift_and_sign_q(self.weight, self.weight_bits, self.max_shift)
        return shift_and_sign_ps(self.shift, self.sign, self.weight_bits, self.max_shift)

    def _quantise_io(self, x):
        if not self.fixed_point_activations:
            return x, self.bias
        i, f = self.act_integer_bits, self.act_fraction_bits
        bias = None if self.bias is None else fixed_point(self.bias, i, f)
        return fixed_point(x, i, f), bias

    def _shift_repr(self) -> str:
        s = f", shift_type={self.shift_type}, weight_bits={self.weight_bits}, rounding={self.rounding}"
        if self.max_shift:
            s += f", max_shift={self.max_shift}"
        if self.fixed_point_activations:
            s += f", act_bits=({self.act_integer_bits}, {self.act_fraction_bits})"
        return s


class ShiftConv2d(_ShiftMixin, ConvGeometry, nn.Module):
    """Shift convolution with the ``nn.Conv2d`` signature plus DeepShift options (module docstring)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] = 0,
        dilation: int | tuple[int, int] = 1,
        groups: int = 1,
        bias: bool = True,
        padding_mode: str = "zeros",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        *,
        shift_type: str = _DEFAULT.shift_type,
        weight_bits: int = _DEFAULT.weight_bits,
        rounding: str = _DEFAULT.rounding,
        act_integer_bits: int | None = _DEFAULT.act_integer_bits,
        act_fraction_bits: int | None = _DEFAULT.act_fraction_bits,
        max_shift: int = _DEFAULT.max_shift,
        generator: torch.Generator | None = None,
    ):
        nn.Module.__init__(self)
        self._weight_shape = conv_config(self, in_channels, out_channels, kernel_size, stride, padding, dilation, groups, padding_mode)
        self._init_shift(
            self._weight_shape, bias, {"device": device, "dtype": dtype}, shift_type=shift_type,
            weight_bits=weight_bits, rounding=rounding, act_integer_bits=act_integer_bits,
            act_fraction_bits=act_fraction_bits, max_shift=max_shift, generator=generator,
        )  # fmt: skip
        self.reset_parameters()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with full_precision(x):  # float32 under autocast too (nas.ops.precision)
            x, bias = self._quantise_io(to_float32(x))
            return F.conv2d(x, self.effective_weight(), bias, self.stride, self.padding, self.dilation, self.groups)

    def count_ops(self, out_shape: tuple[int, ...] | torch.Size) -> dict[str, int]:
        k = conv_terms(self.in_channels, self.groups, self.kernel_size)
        return get_kind("shift").counting.counts(k, numel(out_shape), self.bias is not None)

    def extra_repr(self) -> str:
        return conv_repr(self) + self._shift_repr()


class ShiftLinear(_ShiftMixin, nn.Module):
    """Shift fully connected layer with the ``nn.Linear`` signature plus DeepShift options."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        *,
        shift_type: str = _DEFAULT.shift_type,
        weight_bits: int = _DEFAULT.weight_bits,
        rounding: str = _DEFAULT.rounding,
        act_integer_bits: int | None = _DEFAULT.act_integer_bits,
        act_fraction_bits: int | None = _DEFAULT.act_fraction_bits,
        max_shift: int = _DEFAULT.max_shift,
        generator: torch.Generator | None = None,
    ):
        nn.Module.__init__(self)
        self.in_features = check_int("in_features", in_features, 1)
        self.out_features = check_int("out_features", out_features, 1)
        self._weight_shape = (out_features, in_features)
        self._init_shift(
            self._weight_shape, bias, {"device": device, "dtype": dtype}, shift_type=shift_type,
            weight_bits=weight_bits, rounding=rounding, act_integer_bits=act_integer_bits,
            act_fraction_bits=act_fraction_bits, max_shift=max_shift, generator=generator,
        )  # fmt: skip
        self.reset_parameters()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with full_precision(x):  # float32 under autocast too (nas.ops.precision)
            x, bias = self._quantise_io(to_float32(x))
            return F.linear(x, self.effective_weight(), bias)

    def count_ops(self, out_shape: tuple[int, ...] | torch.Size) -> dict[str, int]:
        return get_kind("shift").counting.counts(self.in_features, numel(out_shape), self.bias is not None)

    def extra_repr(self) -> str:
        s = f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"
        return s + self._shift_repr()
