"""Integer emulation of the operators as a shift/add accelerator would run them.

These functions are for verification and export, not speed: they compute on int64 tensors with
shifts, sign flips and additions only, and return the result scaled back to float so that it can
be compared with the float emulation the modules train with.

Shift layers (``shift_conv2d_int``, ``shift_linear_int``): activations become integers
``x_int = floor(x * 2**F)`` (clamped to I + F bits, exactly ``fixed_point`` of ``nas.ops.shift``),
weights are (shift p, sign s) pairs. A product ``x * s * 2**p`` with p possibly negative is formed
without losing bits: the accumulator carries ``G = max(0, -lo)`` guard bits (lo the smallest shift),
so each term is ``s * (x_int << (p + G))``, a left shift by a non-negative amount. The bias is
``bias_int << G``. The result is ``acc * 2**-(F + G)``. This equals the float emulation
(``F.conv2d`` on fixed-point activations and power-of-two weights) exactly whenever the float
computation is itself exact, i.e. every partial sum fits the float mantissa
(``accumulator_bits(...) <= 24`` for float32, ``<= 53`` for float64); the accumulator width needed is
``accumulator_bits``.

Adder layers (``adder_conv2d_int``, ``adder_linear_int``): inputs, weights and bias are put on the
same fixed-point grid (I integer bits, F fraction bits) and the layer computes
``-sum |x_int - w_int|`` (+ ``bias_int``) in integers; the result is ``acc * 2**-F``. On inputs and
weights already on the grid this equals ``AdderConv2d`` in float32 exactly as long as
``(I + 1) + F + ceil(log2 K) <= 24``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from nas.errors import ConfigError
from nas.ops.adder import AdderConv2d, AdderLinear
from nas.ops.registry import check_act_bits
from nas.ops.shift import ShiftConv2d, ShiftLinear, _fixed_point_grid

__all__ = [
    "fixed_point_int",
    "accumulator_bits",
    "shift_layer_params",
    "shift_conv2d_int",
    "shift_linear_int",
    "adder_conv2d_int",
    "adder_linear_int",
]

_CHUNK = 16  # output channels per step of the integer loops (bounds the int64 temporaries)


def fixed_point_int(x: torch.Tensor, integer_bits: int, fraction_bits: int) -> torch.Tensor:
    """``x`` as two's complement fixed point integers (int64), identical to ``nas.ops.shift.fixed_point``
    except at the top of formats wider than float32's 24 bits: computed in float64, where every code
    up to 2**31 - 1 is exact, a saturated value is the format's largest code (float32 cannot hold it)."""
    check_act_bits(integer_bits, fraction_bits)
    return _fixed_point_grid(x.detach().double(), integer_bits, fraction_bits).long()


def accumulator_bits(integer_bits: int, fraction_bits: int, shift_bounds: tuple[int, int], terms: int) -> int:
    """Bits (sign included) a shift layer's accumulator needs: activation bits + shift span + log2(terms + bias)."""
    lo, hi = shift_bounds
    guard = max(0, -lo)
    return integer_bits + fraction_bits + hi + guard + math.ceil(math.log2(terms + 1))


def _act_bits(module, integer_bits, fraction_bits):
    i = module.act_integer_bits if integer_bits is None else integer_bits
    f = module.act_fraction_bits if fraction_bits is None else fraction_bits
    if i is None or f is None:
        raise ConfigError(
            "act_fraction_bits",
            None,
            "allowed: integer deployment needs fixed-point activations (set act_integer_bits/act_fraction_bits)",
        )
    return check_act_bits(i, f)


def shift_layer_params(
    module: ShiftConv2d | ShiftLinear, integer_bits: int | None = None, fraction_bits: int | None = None
) -> dict:
    """What a shift accelerator stores for ``module``: integer shifts/signs, integer bias, formats."""
    i, f = _act_bits(module, integer_bits, fraction_bits)
    shift, sign = module.shift_and_sign()
    lo, hi = module.shift_bounds
    guard = max(0, -lo)
    bias = None if module.bias is None else fixed_point_int(module.bias, i, f)
    terms = _numel_per_output(module)
    bits = accumulator_bits(i, f, (lo, hi), terms)
    if bits > 63:
        raise ConfigError(
            "weight_bits", module.weight_bits, f"allowed: a layer whose accumulator fits int64 (needs {bits} bits)"
        )
    return {
        "shift": shift,
        "sign": sign,
        "bias": bias,
        "integer_bits": i,
        "fraction_bits": f,
        "guard_bits": guard,
        "accumulator_bits": bits,
    }


def _numel_per_output(module) -> int:
    if isinstance(module, ShiftLinear):
        return module.in_features
    return (module.in_channels // module.groups) * module.kernel_size[0] * module.kernel_size[1]


def _windows(x: torch.Tensor, kernel, stride, padding, dilation):
    """Yield (kh, kw, window [N, C, Ho, Wo]) of the zero-padded integer input, one per kernel tap."""
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = kernel, stride, padding, dilation
    h, w = x.shape[-2:]
    ho = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    wo = (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    xp = F.pad(x, (pw, pw, ph, ph))
    for a in range(kh):
        for b in range(kw):
            yield a, b, xp[:, :, a * dh : a * dh + (ho - 1) * sh + 1 : sh, b * dw : b * dw + (wo - 1) * sw + 1 : sw]


def _int_conv(x, weight_shape, groups, kernel, stride, padding, dilation, term):
    """Integer convolution sum_{c,a,b} term(window[n, c], a, b, o-slice) over groups and channel chunks."""
    n = x.shape[0]
    out_channels, cg = weight_shape[0], weight_shape[1]
    og = out_channels // groups
    acc = None
    for a, b, win in _windows(x, kernel, stride, padding, dilation):
        if acc is None:
            acc = torch.zeros(n, out_channels, *win.shape[-2:], dtype=torch.int64, device=x.device)
        if cg == 1 and og == 1:  # depthwise: channel o meets only weight o, one broadcast per tap
            acc += term(win[:, None], 0, out_channels, a, b).sum(dim=1)
            continue
        for g in range(groups):
            xg = win[:, g * cg : (g + 1) * cg, None]  # [N, Cg, 1, Ho, Wo]
            for o0 in range(g * og, (g + 1) * og, _CHUNK):
                o1 = min(o0 + _CHUNK, (g + 1) * og)
                acc[:, o0:o1] += term(xg, o0, o1, a, b).sum(dim=1)
    return acc


def _shift_terms(shift, sign, guard):
    amount = shift + guard  # non-negative left shifts

    def term(xg, o0, o1, a, b):
        amt = amount[o0:o1, :, a, b].t()[None, :, :, None, None]  # [1, Cg, oc, 1, 1]
        sgn = sign[o0:o1, :, a, b].t()[None, :, :, None, None]
        v = torch.bitwise_left_shift(xg, amt)
        return torch.where(sgn < 0, -v, v) * (sgn != 0)  # sign flip / zero weight, no multiplier needed

    return term


def shift_conv2d_int(
    module: ShiftConv2d,
    x: torch.Tensor,
    integer_bits: int | None = None,
    fraction_bits: int | None = None,
    return_int: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, int]:
    """Run ``module`` with integer shifts and additions; float result ``acc * 2**-(F + guard)``.

    With ``return_int=True`` returns ``(acc int64, total_fraction_bits)`` instead.
    """
    p = shift_layer_params(module, integer_bits, fraction_bits)
    xi = fixed_point_int(x, p["integer_bits"], p["fraction_bits"])
    acc = _int_conv(
        xi,
        p["shift"].shape,
        module.groups,
        module.kernel_size,
        module.stride,
        module.padding,
        module.dilation,
        _shift_terms(p["shift"], p["sign"], p["guard_bits"]),
    )
    if p["bias"] is not None:
        acc += (p["bias"] << p["guard_bits"]).view(1, -1, 1, 1)
    return _finish(acc, p["fraction_bits"] + p["guard_bits"], x.dtype, return_int)


def shift_linear_int(
    module: ShiftLinear,
    x: torch.Tensor,
    integer_bits: int | None = None,
    fraction_bits: int | None = None,
    return_int: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, int]:
    """``shift_conv2d_int`` for a ShiftLinear (a 1x1 convolution on a 1x1 image)."""
    p = shift_layer_params(module, integer_bits, fraction_bits)
    lead = x.shape[:-1]
    xi = fixed_point_int(x.reshape(-1, module.in_features, 1, 1), p["integer_bits"], p["fraction_bits"])
    shift, sign = p["shift"][:, :, None, None], p["sign"][:, :, None, None]
    acc = _int_conv(xi, shift.shape, 1, (1, 1), (1, 1), (0, 0), (1, 1), _shift_terms(shift, sign, p["guard_bits"]))
    acc = acc.view(*lead, module.out_features)
    if p["bias"] is not None:
        acc += p["bias"] << p["guard_bits"]
    return _finish(acc, p["fraction_bits"] + p["guard_bits"], x.dtype, return_int)


def _adder_terms(wi):
    def term(xg, o0, o1, a, b):
        return -(xg - wi[o0:o1, :, a, b].t()[None, :, :, None, None]).abs()

    return term


def adder_conv2d_int(
    module: AdderConv2d, x: torch.Tensor, integer_bits: int, fraction_bits: int, return_int: bool = False
) -> torch.Tensor | tuple[torch.Tensor, int]:
    """Run ``module`` in integers on the fixed-point grid (I, F); float result ``acc * 2**-F``."""
    check_act_bits(integer_bits, fraction_bits)
    xi = fixed_point_int(x, integer_bits, fraction_bits)
    wi = fixed_point_int(module.weight, integer_bits, fraction_bits)
    acc = _int_conv(
        xi,
        wi.shape,
        module.groups,
        module.kernel_size,
        module.stride,
        module.padding,
        module.dilation,
        _adder_terms(wi),
    )
    if module.bias is not None:
        acc += fixed_point_int(module.bias, integer_bits, fraction_bits).view(1, -1, 1, 1)
    return _finish(acc, fraction_bits, x.dtype, return_int)


def adder_linear_int(
    module: AdderLinear, x: torch.Tensor, integer_bits: int, fraction_bits: int, return_int: bool = False
) -> torch.Tensor | tuple[torch.Tensor, int]:
    """``adder_conv2d_int`` for an AdderLinear."""
    check_act_bits(integer_bits, fraction_bits)
    lead = x.shape[:-1]
    xi = fixed_point_int(x.reshape(-1, module.in_features, 1, 1), integer_bits, fraction_bits)
    wi = fixed_point_int(module.weight, integer_bits, fraction_bits)[:, :, None, None]
    acc = _int_conv(xi, wi.shape, 1, (1, 1), (1, 1), (0, 0), (1, 1), _adder_terms(wi)).view(*lead, module.out_features)
    if module.bias is not None:
        acc += fixed_point_int(module.bias, integer_bits, fraction_bits)
    return _finish(acc, fraction_bits, x.dtype, return_int)


def _finish(acc: torch.Tensor, frac_bits: int, dtype: torch.dtype, return_int: bool):
    if return_int:
        return acc, frac_bits
    # int64 -> float64 is exact below 2**53; the power-of-two scale is exact.
    return (acc.to(torch.float64) * 2.0**-frac_bits).to(dtype)
