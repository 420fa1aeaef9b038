"""Hybrid layers: one stored weight, an MF prefix of channels and a multiplicative remainder.

A ``HybridConv2d`` owns one maximum-size weight ``W[out_max, in_max, k_max, k_max]`` kept in the
multiplicative (Gaussian) domain. Its active configuration (set by the network that owns it) is:

* ``active_out`` output channels and ``active_kernel`` (a centred crop of the stored kernel, OFA
  style); the input channels are read from the input tensor, so widths propagate;
* an MF prefix ``mf_out`` x ``mf_in`` computed by ``mf_op`` (a multiplication-free kind of the
  operator registry, ``nas.ops.registry``: "shift" or "add") with its functional form on the remapped
  slice ``R(W[:mf_out, :mf_in])`` (docs/method-notes.md, section 3):

      Y_t = MF(X_t; R(W_tt)) + MConv(X_a; W_ta)        # target output channels
      Y_a = MConv(X; W[mf_out:])                       # augmented output channels

  For a depthwise conv channels never mix: ``Y_t = MF(X_t; R(W_t))``, ``Y_a = MConv(X_a; W_a)``.
  With ``mf_op == "mult"`` or an empty prefix the layer is an ordinary (sliced) convolution.

In the target pass the prefix covers the whole layer, so the layer *is* the deployed MF layer;
``export()`` returns that static layer with the remap folded in. ``branch_norm`` rescales the
multiplicative partial sum ``MConv(X_a; W_ta)`` of the target channels to the per-channel batch
standard deviation of the MF partial sum (statistics detached), because AddConv partial sums are
orders of magnitude larger than multiplicative ones (the paper is silent; docs/method-notes.md, section 3).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from nas.errors import ConfigError
from nas.ops.precision import full_precision, to_float32
from nas.ops.registry import create_conv, create_linear, get_kind, op_kinds, options_for
from nas.ops.remap import Remap


def _check_options(op: str, options: dict) -> dict:
    """Options of the MF op used inside hybrid layers (validated once, at construction, by the
    kind's option dataclass): only those its functional form takes (``OpKind.hybrid_options``)."""
    kind = get_kind(op)
    for k in options:
        if k not in kind.hybrid_options:
            raise ConfigError(f"op_options.{op}.{k}", options[k], f"hybrid layers accept: {', '.join(sorted(kind.hybrid_options))}")
    kind.options.from_dict(dict(options), f"op_options.{op}")
    return dict(options)


def _mf_options(op_options: dict | None) -> dict[str, dict]:
    """Validated hybrid options of every kind (``{"shift": {...}, "add": {...}}``)."""
    return {op: _check_options(op, options_for(op, op_options)) for op in op_kinds()}


def mf_conv2d(op: str, x: torch.Tensor, w: torch.Tensor, stride: int, padding: int, groups: int, options: dict) -> torch.Tensor:
    """Functional MF convolution of ``x`` with (already remapped) weight ``w`` (the kind's ``apply_conv``)."""
    return get_kind(op).apply_conv(x, w, None, stride, padding, 1, groups, **options)


def mf_linear(op: str, x: torch.Tensor, w: torch.Tensor, options: dict) -> torch.Tensor:
    """Functional MF linear layer (the kind's ``apply_linear``)."""
    return get_kind(op).apply_linear(x, w, None, **options)


def _crop(w: torch.Tensor, k: int) -> torch.Tensor:
    kmax = w.shape[-1]
    if k == kmax:
        return w
    s = (kmax - k) // 2
    return w[..., s : s + k, s : s + k]


def _match_scale(mult_part: torch.Tensor, mf_part: torch.Tensor) -> torch.Tensor:
    dims = [0] + list(range(2, mult_part.dim()))
    s_mf = mf_part.detach().std(dim=dims, keepdim=True)
    s_mult = mult_part.detach().std(dim=dims, keepdim=True).clamp_min(1e-8)
    return mult_part * (s_mf / s_mult)


class HybridConv2d(nn.Module):
    """Elastic conv (dense, pointwise or depthwise) with an MF channel prefix; see module docstring."""

    def __init__(
        self,
        max_in: int,
        max_out: int,
        max_kernel: int = 1,
        stride: int = 1,
        depthwise: bool = False,
        bias: bool = False,
        remap: str = "cdf-fc",
        op_options: dict | None = None,
        branch_norm: bool = False,
        remap_affine: bool = False,
    ):
        super().__init__()
        if depthwise and max_in != max_out:
            raise ValueError("a depthwise conv has as many outputs as inputs")
        self.max_in, self.max_out, self.max_kernel = max_in, max_out, max_kernel
        self.stride, self.depthwise, self.branch_norm = stride, depthwise, branch_norm
        self.weight = nn.Parameter(torch.empty(max_out, 1 if depthwise else max_in, max_kernel, max_kernel))
        self.bias = nn.Parameter(torch.zeros(max_out)) if bias else None
        # NetAug's advice: kaiming_uniform, fan from the max shape (expand ratios get large)
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        self.remap = Remap(remap, max_kernel, affine=remap_affine, channels=max_out)
        self.op_options = _mf_options(op_options)
        self.active_out = max_out
        self.active_kernel = max_kernel
        self.mf_op = "mult"
        self.mf_out = 0
        self.mf_in = 0

    def extra_repr(self) -> str:
        kind = "depthwise" if self.depthwise else "dense"
        return f"{kind}, max {self.max_in}->{self.max_out}, k<={self.max_kernel}, stride={self.stride}"

    def configure(self, out: int, kernel: int | None = None, mf_op: str = "mult", mf_out: int = 0, mf_in: int = 0) -> None:
        if not 0 < out <= self.max_out:
            raise ValueError(f"out channels {out} outside 1..{self.max_out}")
        kernel = self.max_kernel if kernel is None else kernel
        if kernel > self.max_kernel or kernel % 2 == 0:
            raise ValueError(f"kernel {kernel} does not fit the stored {self.max_kernel}")
        self.active_out, self.active_kernel = out, kernel
        self.mf_op = mf_op if mf_out > 0 else "mult"
        self.mf_out = min(mf_out, out) if self.mf_op != "mult" else 0
        self.mf_in = mf_in if self.mf_op != "mult" else 0

    def active_weight(self, cin: int) -> torch.Tensor:
        w = self.weight[: self.active_out] if self.depthwise else self.weight[: self.active_out, :cin]
        return _crop(w, self.active_kernel)

    def mf_weight(self) -> torch.Tensor:
        """``R(W_tt)``: the weight the MF prefix consumes (before power-of-two rounding)."""
        if self.depthwise:
            return self.remap(_crop(self.weight[: self.mf_out], self.active_kernel))
        return self.remap(_crop(self.weight[: self.mf_out, : self.mf_in], self.active_kernel))

    def _mf_forward(self, x: torch.Tensor, pad: int, groups: int) -> torch.Tensor:
        # the MF prefix, remap included, in float32 under any autocast precision (nas.ops.precision says why)
        with full_precision(x):
            return mf_conv2d(self.mf_op, to_float32(x), self.mf_weight(), self.stride, pad, groups, self.op_options[self.mf_op])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cin = x.shape[1]
        k = self.active_kernel
        pad = k // 2
        w = self.active_weight(cin)
        if self.mf_out == 0:
            y = F.conv2d(x, w, None, self.stride, pad, 1, cin if self.depthwise else 1)
        elif self.depthwise:
            n = self.mf_out
            y = self._mf_forward(x[:, :n], pad, n)
            if self.active_out > n:
                ya = F.conv2d(x[:, n : self.active_out], w[n:], None, self.stride, pad, 1, self.active_out - n)
                y = torch.cat([y, ya], 1)
        else:
            n, m = self.mf_out, self.mf_in
            if m > cin:
                raise ValueError(f"MF prefix of {m} input channels but the input has {cin}")
            y = self._mf_forward(x[:, :m], pad, 1)
            if cin > m:  # target outputs also see the augmented inputs, multiplicatively
                part = F.conv2d(x[:, m:], w[:n, m:], None, self.stride, pad)
                y = y + (_match_scale(part, y) if self.branch_norm else part)
            if self.active_out > n:
                y = torch.cat([y, F.conv2d(x, w[n:], None, self.stride, pad)], 1)
        if self.bias is not None:
            y = y + self.bias[: self.active_out].reshape(1, -1, 1, 1)
        return y

    @torch.no_grad()
    def export(self, cin: int) -> nn.Module:
        """The static layer of the active configuration (whole layer MF, or whole layer mult)."""
        groups = cin if self.depthwise else 1
        op = self.mf_op
        if op != "mult" and (self.mf_out != self.active_out or (not self.depthwise and self.mf_in != cin)):
            raise ValueError("export needs the target configuration: the MF prefix must cover the whole layer")
        layer = create_conv(op, cin, self.active_out, self.active_kernel, self.stride, groups, bias=self.bias is not None, **self.op_options.get(op, {}))
        w = self.active_weight(cin) if op == "mult" else self.mf_weight()
        if op != "mult":
            w = get_kind(op).stored_weight(w, **self.op_options[op])  # shift: stored as powers of two
        layer.weight.copy_(w)
        if self.bias is not None:
            layer.bias.copy_(self.bias[: self.active_out])
        return layer


class HybridLinear(nn.Module):
    """Elastic linear layer (the classifier); MF only when configured over the whole layer."""

    def __init__(self, max_in: int, max_out: int, bias: bool = True, remap: str = "cdf-fc", op_options: dict | None = None,
                 remap_affine: bool = False):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(max_out, max_in))
        self.bias = nn.Parameter(torch.zeros(max_out)) if bias else None
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        bound = 1 / math.sqrt(max_in)
        if self.bias is not None:
            nn.init.uniform_(self.bias, -bound, bound)
        self.remap = Remap(remap, 1, affine=remap_affine, channels=max_out)
        self.op_options = _mf_options(op_options)
        self.mf_op = "mult"
        self.mf_in = 0

    def configure(self, mf_op: str = "mult", mf_in: int = 0) -> None:
        """MF over the first ``mf_in`` input features (all outputs), multiplicative over the rest."""
        self.mf_op = mf_op if mf_in > 0 else "mult"
        self.mf_in = mf_in if self.mf_op != "mult" else 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cin = x.shape[1]
        w = self.weight[:, :cin]
        m = self.mf_in
        if m == 0:
            y = F.linear(x, w)
        else:
            with full_precision(x):  # in float32, as HybridConv2d's MF prefix
                y = mf_linear(self.mf_op, to_float32(x[:, :m]), self.remap(w[:, :m]), self.op_options[self.mf_op])
            if cin > m:
                y = y + F.linear(x[:, m:], w[:, m:])
        return y if self.bias is None else y + self.bias

    @torch.no_grad()
    def export(self, cin: int) -> nn.Module:
        op = self.mf_op
        if op != "mult" and self.mf_in != cin:
            raise ValueError("export needs the target configuration: the MF prefix must cover the whole layer")
        layer = create_linear(op, cin, self.weight.shape[0], bias=self.bias is not None, **self.op_options.get(op, {}))
        w = self.weight[:, :cin]
        if op != "mult":
            w = get_kind(op).stored_weight(self.remap(w), **self.op_options[op])
        layer.weight.copy_(w)
        if self.bias is not None:
            layer.bias.copy_(self.bias)
        return layer
