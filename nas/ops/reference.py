"""Slow, obviously correct reference versions of the operators, kept for tests.

Nothing here is fast or memory-bounded: the adder reference materialises the full
``[N, O, K, L]`` difference tensor. Use the functions in ``nas.ops.adder`` / ``nas.ops.shift``.

* ``adder_conv2d_loops``: the AdderNet forward as explicit Python loops (tiny shapes only).
* ``adder_conv2d_reference`` / ``adder_linear_reference``: unfold + broadcast forward, with the
  AdderNet backward written out term by term in an autograd Function.
* ``adder_surrogates``: two smooth functions whose *true* gradients are AdderNet's defined ones:
  ``-sum (x - w)**2 / 2`` has dL/dw = sum g (x - w), and ``-sum huber_1(x - w)`` has
  dL/dx = sum g clamp(w - x, -1, 1). AdderNet's backward is not the gradient of any single
  function (the mixed partials differ), so tests gradcheck these surrogates in float64 and check
  that the reference backward equals their autograd gradients.
* ``shift_weight_q_reference``, ``shift_weight_ps_reference``, ``fixed_point_reference``: the
  DeepShift formulas written with ``log2`` / ``round`` in float64.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


def _columns(x, weight, stride, padding, dilation, groups):
    """x unfolded to [N, G, K, L] and weight to [G, O/G, K], plus the output size."""
    n, c, h, w = x.shape
    o, cg, kh, kw = weight.shape
    stride, padding, dilation = _pair(stride), _pair(padding), _pair(dilation)
    cols = F.unfold(x, (kh, kw), dilation, padding, stride).view(n, groups, cg * kh * kw, -1)
    ho = (h + 2 * padding[0] - dilation[0] * (kh - 1) - 1) // stride[0] + 1
    wo = (w + 2 * padding[1] - dilation[1] * (kw - 1) - 1) // stride[1] + 1
    return cols, weight.reshape(groups, o // groups, cg * kh * kw), (ho, wo)


def adder_conv2d_loops(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, stride: int | tuple[int, int] = 1, padding: int | tuple[int, int] = 0, dilation: int | tuple[int, int] = 1,
                       groups: int = 1) -> torch.Tensor:
    """AdderNet forward by the definition, one output element at a time (tiny shapes only)."""
    n, c, h, w = x.shape
    o, cg, kh, kw = weight.shape
    (sh, sw), (ph, pw), (dh, dw) = _pair(stride), _pair(padding), _pair(dilation)
    xp = F.pad(x, (pw, pw, ph, ph))
    ho = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    wo = (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    y = x.new_zeros(n, o, ho, wo)
    og = o // groups
    for b in range(n):
        for oc in range(o):
            g = oc // og
            for i in range(ho):
                for j in range(wo):
                    total = x.new_zeros(())
                    for ci in range(cg):
                        for a in range(kh):
                            for bb in range(kw):
                                total = (
                                    total
                                    + (
                                        xp[b, g * cg + ci, i * sh + a * dh, j * sw + bb * dw] - weight[oc, ci, a, bb]
                                    ).abs()
                                )
                    y[b, oc, i, j] = -total
    if bias is not None:
        y = y + bias.view(1, -1, 1, 1)
    return y


def adaptive_grad_scale_reference(grad: torch.Tensor, eta: float | None) -> torch.Tensor:
    if eta is None:
        return grad
    return grad / grad.norm(p=2).clamp(min=1e-12) * math.sqrt(grad.numel()) * eta


class _AdderReference(torch.autograd.Function):
    @staticmethod
    def forward(ctx, cols, wg, eta):
        # cols [N, G, K, L], wg [G, Og, K]: diff [N, G, Og, K, L]
        diff = cols[:, :, None] - wg[None, :, :, :, None]
        ctx.save_for_backward(cols, wg)
        ctx.eta = eta
        return -diff.abs().sum(dim=3)  # [N, G, Og, L]

    @staticmethod
    def backward(ctx, g):
        cols, wg = ctx.saved_tensors
        diff = cols[:, :, None] - wg[None, :, :, :, None]  # x - w
        g5 = g[:, :, :, None, :]
        grad_w = (g5 * diff).sum(dim=(0, 4))  # full precision: d(-|x-w|)/dw := x - w
        grad_cols = (g5 * (-diff).clamp(-1, 1)).sum(dim=2)  # HardTanh(w - x)
        return grad_cols, adaptive_grad_scale_reference(grad_w, ctx.eta), None


def adder_conv2d_reference(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, stride: int | tuple[int, int] = 1, padding: int | tuple[int, int] = 0, dilation: int | tuple[int, int] = 1,
                           groups: int = 1, eta: float | None = 0.2) -> torch.Tensor:
    """AdderNet convolution: unfold, broadcast, explicit backward (memory O(N*O*K*L))."""
    n = x.shape[0]
    cols, wg, (ho, wo) = _columns(x, weight, stride, padding, dilation, groups)
    y = _AdderReference.apply(cols, wg, eta).reshape(n, weight.shape[0], ho, wo)
    return y if bias is None else y + bias.view(1, -1, 1, 1)


def adder_linear_reference(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, eta: float | None = 0.2) -> torch.Tensor:
    """AdderNet linear as a 1x1 reference convolution on [B, in, 1, 1]."""
    lead = x.shape[:-1]
    y = adder_conv2d_reference(x.reshape(-1, x.shape[-1], 1, 1), weight[:, :, None, None], None, eta=eta)
    y = y.view(*lead, weight.shape[0])
    return y if bias is None else y + bias


def adder_surrogates(x: torch.Tensor, weight: torch.Tensor, stride: int | tuple[int, int] = 1, padding: int | tuple[int, int] = 0, dilation: int | tuple[int, int] = 1,
                     groups: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """(s_w, s_x): smooth functions of (x, weight) whose autograd gradients are AdderNet's.

    ``s_w = -sum (x - w)**2 / 2`` per output (true dL/dw = sum g (x - w));
    ``s_x = -sum huber_1(x - w)`` per output (true dL/dx = sum g clamp(w - x, -1, 1)).
    """
    n = x.shape[0]
    cols, wg, (ho, wo) = _columns(x, weight, stride, padding, dilation, groups)
    diff = cols[:, :, None] - wg[None, :, :, :, None]
    s_w = -(diff**2 / 2).sum(dim=3).reshape(n, weight.shape[0], ho, wo)
    hub = F.huber_loss(diff, torch.zeros_like(diff), reduction="none", delta=1.0)
    s_x = -hub.sum(dim=3).reshape(n, weight.shape[0], ho, wo)
    return s_w, s_x


def shift_weight_q_reference(weight: torch.Tensor, weight_bits: int = 5, rounding: str = "deterministic", u: torch.Tensor | None = None,
                             max_shift: int = 0) -> torch.Tensor:
    """DeepShift-Q: clampabs, then sign * 2**round(log2|w|) (or stochastic with uniforms ``u``)."""
    lo, hi = max_shift - (2 ** (weight_bits - 1) - 1), max_shift
    w = weight.detach().double()
    a = w.abs().clamp(2.0**lo, 2.0**hi)
    lg = torch.log2(a)
    if rounding == "deterministic":
        p = torch.round(lg)
    else:
        assert u is not None, "stochastic rounding needs the uniforms u"
        p = torch.floor(lg) + (u.double() < lg - torch.floor(lg)).double()
    p = p.clamp(lo, hi)
    return (torch.sign(w) * 2.0**p).to(weight.dtype)


def shift_weight_ps_reference(shift: torch.Tensor, sign: torch.Tensor, weight_bits: int = 5, rounding: str = "deterministic",
                              u: torch.Tensor | None = None, max_shift: int = 0) -> torch.Tensor:
    """DeepShift-PS: sign(round(S)) * 2**round(clamp(P)); stochastic: P and S both rounded
    floor + Bernoulli(frac) with uniforms ``u[0]`` and ``u[1]`` (DeepShift's ``ste.round(x, rounding)``).
    A NaN sign parameter gives NaN (DeepShift would give 0)."""
    lo, hi = max_shift - (2 ** (weight_bits - 1) - 2), max_shift
    p = shift.detach().double().clamp(lo, hi)
    s = sign.detach().double()
    if rounding == "deterministic":
        p, s = torch.round(p), torch.round(s)
    else:
        assert u is not None, "stochastic rounding needs the uniforms u"
        p = torch.floor(p) + (u[0].double() < p - torch.floor(p)).double()
        s = torch.floor(s) + (u[1].double() < s - torch.floor(s)).double()
    s = torch.where(torch.isnan(s), s, torch.sign(s))
    return (s * 2.0 ** p.clamp(lo, hi)).to(shift.dtype)


def fixed_point_reference(x: torch.Tensor, integer_bits: int, fraction_bits: int) -> torch.Tensor:
    """Two's complement fixed point, truncating: I integer bits (sign included), F fraction bits."""
    step = 2.0**-fraction_bits
    low, high = -(2.0 ** (integer_bits - 1)), 2.0 ** (integer_bits - 1) - step
    return (torch.floor(x.detach().double() / step) * step).clamp(low, high).to(x.dtype)
