"""The Python integer reference of an ``IntNet``: what the generated C must equal bit for bit.

Everything runs on int64 tensors. The shift and adder convolutions are ``nas.ops.deploy``'s
(``shift_conv2d_int`` / ``adder_conv2d_int`` and their linear forms, called with
``return_int=True`` on the layer's input grid); multiplicative layers (int8 weights) use a
float64 convolution, exact because every partial sum is an integer below 2**53. Requantisation,
activations, pooling, residual adds and SE gating follow the formulas of ``nas.codegen.intnet``
with arithmetic (floor) right shifts, as the C code does.
"""

from __future__ import annotations

from typing import Literal, overload

import torch
import torch.nn.functional as F

from nas.codegen.intnet import AddNode, ConvNode, GateNode, InputNode, IntNet, Node, PoolNode, Requant
from nas.ops import deploy

_EXACT = 1 << 53

_DEPLOY_FNS = {
    ("shift", False): deploy.shift_conv2d_int,
    ("shift", True): deploy.shift_linear_int,
    ("add", False): deploy.adder_conv2d_int,
    ("add", True): deploy.adder_linear_int,
}


def _per_channel(values: list[int], ndim: int) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.int64).view(1, -1, *([1] * (ndim - 2)))


def requantise(rq: Requant, acc: torch.Tensor) -> torch.Tensor:
    """``clamp(act((acc * M + B) >> S))`` per channel (dim 1)."""
    d = acc.dim()
    z = (acc * _per_channel(rq.M, d) + _per_channel(rq.B, d)) >> _per_channel(rq.S, d)
    if rq.hswish is not None:
        three, m, b, s = rq.hswish
        z = z.clamp(-three, max(rq.hi, three))
        t = (z + three).clamp(0, 2 * three)
        z = (z * t * m + b) >> s
    return z.clamp(rq.lo, rq.hi)


def _rshift_round(v: torch.Tensor, s: int) -> torch.Tensor:
    """Rounding right shift by ``s`` (ties up); a left shift when ``s < 0``."""
    if s > 0:
        return (v + (1 << (s - 1))) >> s
    return v << -s


def conv_acc(n: ConvNode, x: torch.Tensor) -> torch.Tensor:
    """The exact integer accumulator of a conv / linear layer (bias included)."""
    xf = n.inputs[0].fmt
    if (n.op, n.linear) in _DEPLOY_FNS:  # shift and add layers: nas.ops.deploy's exact integer sums
        xr = x.double() * 2.0**-xf.frac  # exact: the layer input on its grid
        if n.linear:
            xr = xr.flatten(1)
        acc, frac = _DEPLOY_FNS[(n.op, n.linear)](n.module, xr, n.grid_integer_bits, xf.frac, return_int=True)
        if frac != n.acc_frac[0]:
            raise AssertionError(f"{n.name}: nas.ops.deploy accumulates on 2^-{frac}, the IntNet on 2^-{n.acc_frac[0]}")
        acc = acc.view(acc.shape[0], -1, 1, 1) if n.linear else acc
        return acc if n.acc_offset is None else acc + n.acc_offset.view(1, -1, 1, 1)
    bias = None if n.bias is None else n.bias.double()
    y = F.conv2d(x.double(), n.weights.double(), bias, n.stride, n.pad, 1, n.groups)
    if n.acc_bound >= _EXACT:
        raise AssertionError(f"{n.name}: accumulator bound 2^{n.acc_bound.bit_length()} is not exact in float64")
    return y.long()


def _run_node(n: Node, *xs: torch.Tensor) -> torch.Tensor:
    if isinstance(n, InputNode):
        (raw,) = xs
        raw = raw.long()
        return torch.stack([n.lut[c][raw[:, s]] for c, s in enumerate(n.src)], dim=1)
    if isinstance(n, ConvNode):
        return requantise(n.requant, conv_acc(n, xs[0]))
    if isinstance(n, PoolNode):
        return requantise(n.requant, xs[0].sum(dim=(2, 3), keepdim=True))
    f = n.out.fmt
    if isinstance(n, AddNode):
        a, b = (_rshift_round(v, src.fmt.frac - f.frac) for v, src in zip(xs, n.inputs))
        return (a + b).clamp(f.lo, f.hi)
    if isinstance(n, GateNode):
        x, g = xs
        return _rshift_round(x * g, n.shift).clamp(f.lo, f.hi)
    raise TypeError(type(n).__name__)


@torch.no_grad()
@overload
def run_int(net: IntNet, raw: torch.Tensor, keep: Literal[False] = ...) -> torch.Tensor: ...
@overload
def run_int(net: IntNet, raw: torch.Tensor, keep: Literal[True]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]: ...
def run_int(net: IntNet, raw: torch.Tensor, keep: bool = False) -> torch.Tensor | tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Run the integer network on uint8 images ``(N, Cs, H, W)``; int64 logits ``(N, classes)``
    (real value = logit * 2**-net.logit_frac). ``keep=True`` also returns every tensor by name."""
    if raw.dtype != torch.uint8 or tuple(raw.shape[1:]) != tuple(net.input.raw_shape):
        raise ValueError(f"expected uint8 images of shape (N, {', '.join(map(str, net.input.raw_shape))}), got {raw.dtype} {tuple(raw.shape)}")
    vals: dict[int, torch.Tensor] = {}
    named: dict[str, torch.Tensor] = {}
    for n in net.nodes:
        ins = [vals[id(b)] for b in n.inputs] if n.inputs else [raw]
        y = _run_node(n, *ins)
        vals[id(n.out)] = y
        if keep:
            named[n.out.name] = y
    logits = vals[id(net.logits)].flatten(1)
    return (logits, named) if keep else logits
