"""AdderNet operators: ``AdderConv2d`` and ``AdderLinear``, output ``-sum |x - w|``.

Semantics (Chen et al., CVPR'20, huawei-noah/AdderNet), for a convolution with zero padding:

* forward ``y[n, o, i, j] = -sum_{c, a, b} |xpad[n, c, i*s + a*d, j*s + b*d] - w[o, c, a, b]|``
  (plus bias). Padded positions contribute ``|0 - w|``, as AdderNet's unfold-based code does.
* backward (AdderNet's, not the true gradient of ``-|x - w|``):
  ``dL/dw = sum g * (x - w)`` (full precision instead of ``sign(x - w)``) and
  ``dL/dx = sum g * HardTanh(w - x)`` (clipped to [-1, 1] instead of ``sign(w - x)``).
* adaptive gradient scaling: ``dL/dw`` is rescaled to the L2 norm ``eta * sqrt(numel(w))``
  (``eta = 0.2`` as in AdderNet's code; ``eta=None`` turns it off). It applies to the ``weight``
  tensor handed to the functional form, so a slice of a shared tensor is scaled by its own norm and
  the gradient flows back into whatever ``weight`` was computed from.

Counting (``count_ops``): K = (in_channels / groups) * kh * kw terms per output (K = in_features for
the linear); ``macs = K * out_numel``, ``adds = (2K - 1) * out_numel`` (K subtractions + K - 1
accumulations; the absolute value is free, it clears a sign bit) plus ``out_numel`` with a bias;
no multiplications, no shifts.

Backends. ``adder_conv2d`` / ``adder_linear`` are one operator: under ``torch.compile`` the
``torch.library`` custom ops ``shiftaddaug::adder_conv2d`` / ``shiftaddaug::adder_conv2d_backward``
(fake implementations, registered autograd formula), so the compiler sees one opaque op; in eager
mode an ``autograd.Function`` with the same formula over the same implementation (less Python per
call). The linear layer is that convolution on a ``[1, in_features, 1, batch]`` view of its input
with a 1x1 kernel. Inside, one backend per call (``backend_for`` tells which):

* ``triton`` (CUDA tensors, when ``triton`` is installed: ``pip install shiftaddaug[gpu]``):
  the kernels of ``nas.ops.adder_triton`` (forward, input gradient and weight gradient, any groups,
  strided views, no column buffer). ``SHIFTADDAUG_ADDER_BACKEND=triton`` forces them on CPU tensors
  too, which works under Triton's interpreter (``TRITON_INTERPRET=1`` set before the process starts):
  how the test suite checks the GPU kernels without a GPU.
* ``ext`` (CPU, float32/float64): C++ kernels from ``nas/ops/_ext`` built on first use (about 3 s,
  cached per user). Forward and input gradient are register-tiled kernels over panels of output
  positions: a panel whose vectors each lie inside one output row (stride 1, row length a multiple
  of the vector width) is read in place from the zero-padded image, others are gathered into a
  small packed panel, and the input gradient is scattered straight back (no ``[K, L]`` column
  buffer). The forward reads a padded copy of the input (none without padding); the input
  gradient pads one (sample, group) block at a time in a per-thread buffer and writes the unpadded
  gradient. The input gradient uses ``clamp(w, x-1, x+1) - x`` where |x| <= 32 (3 vector ops
  instead of 4) and the direct form elsewhere. Depthwise layers use a direct sliding-window
  kernel. The weight gradient uses the identity
  ``sum_p g[o,p] (x[k,p] - w[o,k]) = (g X^T)[o,k] - w[o,k] sum_p g[o,p]``: torch's own convolution
  weight gradient plus a row sum. Forward outputs and input gradients do not depend on the thread
  count.
* ``torch`` (any device or dtype, also when the kernels cannot be built, or with
  ``SHIFTADDAUG_NO_EXT=1``): unfold in batch chunks, ``torch.cdist(p=1)`` for the forward and an
  output-channel-chunked loop for the input gradient, keeping extra memory near one im2col buffer
  and never an ``out_channels x K x L`` intermediate. Slower (tens of times a convolution) but exact
  to the same semantics; half precision is computed in float32. A CUDA tensor takes this path only
  when triton is missing (with a one-time warning).

The adaptive gradient scale (eta) is applied in the autograd formula, after whichever backend
computed the raw weight gradient: the same code on every device.
"""

from __future__ import annotations

import contextlib
import ctypes
import math
import os
import warnings
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from nas.errors import ConfigError
from nas.ops import _ext
from nas.ops._common import ConvGeometry, check_int, conv_config, conv_repr, conv_terms, numel, pair
from nas.ops.registry import DEFAULT_ETA, check_eta, get_kind

__all__ = [
    "AdderConv2d",
    "AdderLinear",
    "adder_conv2d",
    "adder_linear",
    "adaptive_grad_scale",
    "backend_for",
    "ENV_BACKEND",
]

ENV_BACKEND = "SHIFTADDAUG_ADDER_BACKEND"  # "auto" (default) or "triton" (see the module docstring)
# torch fallback: each temporary holds at most max(this many elements, a quarter of the im2col buffer).
_FALLBACK_MIN_ELEMS = 1 << 20


def adaptive_grad_scale(grad: torch.Tensor, eta: float | None) -> torch.Tensor:
    """AdderNet's adaptive learning rate: rescale ``grad`` to L2 norm ``eta * sqrt(numel)`` (None: unchanged)."""
    if eta is None:
        return grad
    norm = torch.linalg.vector_norm(grad).clamp_min(1e-12)
    return grad * (eta * math.sqrt(grad.numel()) / norm)


def _kernels(*tensors: torch.Tensor):
    """The C++ library when every tensor suits it (CPU, one float32/float64 dtype), else None."""
    t0 = tensors[0]
    if t0.device.type != "cpu" or t0.dtype not in (torch.float32, torch.float64):
        return None
    if any(t.device.type != "cpu" or t.dtype != t0.dtype for t in tensors[1:]):
        return None
    return _ext.load()


_triton_state: dict = {"module": None, "failed": False, "warned_missing": False}


def _forced_backend() -> str:
    value = os.environ.get(ENV_BACKEND, "").strip().lower() or "auto"
    if value not in ("auto", "triton"):
        raise ConfigError(ENV_BACKEND, value, "allowed: auto, triton")
    return value


def _triton_kernels():
    """``nas.ops.adder_triton`` when triton imports, else None (imported on first use only)."""
    if _triton_state["module"] is None and not _triton_state["failed"]:
        try:
            from nas.ops import adder_triton

            _triton_state["module"] = adder_triton
        except ImportError:
            _triton_state["failed"] = True
    return _triton_state["module"]


def _use_triton(t: torch.Tensor) -> bool:
    if _forced_backend() == "triton":
        if _triton_kernels() is None:
            raise ConfigError(ENV_BACKEND, "triton", "needs the triton package (pip install shiftaddaug[gpu])")
        if t.device.type == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
            raise ConfigError(
                ENV_BACKEND, "triton", "on CPU tensors only under TRITON_INTERPRET=1 set before Python starts"
            )
        return True
    if t.device.type != "cuda":
        return False
    if _triton_kernels() is not None:
        return True
    if not _triton_state["warned_missing"]:
        _triton_state["warned_missing"] = True
        warnings.warn(
            "nas.ops: triton is not installed, so the adder runs its slow pure-torch path on the GPU; "
            "pip install 'shiftaddaug[gpu]' for the Triton kernels.",
            RuntimeWarning,
            stacklevel=4,
        )
    return False


def backend_for(x: torch.Tensor, weight: torch.Tensor | None = None) -> str:
    """Which backend ``adder_conv2d`` / ``adder_linear`` would use for these tensors:
    ``triton``, ``ext`` or ``torch``."""
    if _use_triton(x):
        return "triton"
    return "ext" if _kernels(x, x if weight is None else weight) is not None else "torch"


def _check_same(x: torch.Tensor, weight: torch.Tensor, name: str) -> None:
    if x.dtype != weight.dtype or x.device != weight.device:
        raise TypeError(f"{name}: input ({x.dtype}, {x.device}) and weight ({weight.dtype}, {weight.device}) differ")


def _threads(pairs: int) -> int:
    """Threads for a kernel call of ``pairs`` |x - w| terms: torch's setting, but one per ~256k terms
    at most, since starting a thread costs tens of microseconds."""
    return max(1, min(torch.get_num_threads(), pairs >> 18))


def _ptr(t: torch.Tensor | None):
    return ctypes.c_void_p(t.data_ptr() if t is not None else 0)


def _suffix(t: torch.Tensor) -> str:
    return "f32" if t.dtype == torch.float32 else "f64"


def _geom(*values: int):
    return (ctypes.c_int64 * len(values))(*[int(v) for v in values])


def _out_size(size: int, k: int, s: int, p: int, d: int) -> int:
    return (size + 2 * p - d * (k - 1) - 1) // s + 1


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    # Sums of K absolute differences in half precision lose too much; the torch path upcasts.
    return dtype if dtype in (torch.float32, torch.float64) else torch.float32


# ------------------------------------------------------------------------------------------------
# Convolution


class _Conv:
    """Static geometry of one adder convolution call."""

    def __init__(self, x: torch.Tensor, weight: torch.Tensor, stride, padding, dilation, groups: int):
        self.N, self.C, self.H, self.W = x.shape
        self.O, self.Cg, self.KH, self.KW = weight.shape
        self.G = groups
        self.sh, self.sw = stride
        self.ph, self.pw = padding
        self.dh, self.dw = dilation
        self.Ho = _out_size(self.H, self.KH, self.sh, self.ph, self.dh)
        self.Wo = _out_size(self.W, self.KW, self.sw, self.pw, self.dw)
        self.K = self.Cg * self.KH * self.KW
        self.L = self.Ho * self.Wo
        if self.Ho < 1 or self.Wo < 1:
            raise ValueError(f"adder_conv2d: input {tuple(x.shape)} is smaller than the kernel")

    @property
    def depthwise(self) -> bool:
        return self.Cg == 1

    def dense_geom(self, padded_input: bool):
        """Geometry for the dense kernels (ConvGeom of adder_kernels.cpp). The forward reads an input
        the caller padded (``padded_input``: padded sizes, no padding left); the input gradient
        kernel pads internally."""
        og = self.O // self.G
        if padded_input:
            sizes = (self.H + 2 * self.ph, self.W + 2 * self.pw, 0, 0)
        else:
            sizes = (self.H, self.W, self.ph, self.pw)
        return _geom(self.N, self.G, self.Cg, og, *sizes, self.KH, self.KW, self.sh, self.sw, self.dh, self.dw, self.Ho, self.Wo)

    def dw_geom(self):
        """Geometry for the depthwise kernels (DwGeom of adder_kernels.cpp)."""
        m = self.O // self.C
        sizes = (self.N, self.C, self.H, self.W, m, self.KH, self.KW)
        return _geom(*sizes, self.sh, self.sw, self.ph, self.pw, self.dh, self.dw, self.Ho, self.Wo)

    def pad(self, x: torch.Tensor) -> torch.Tensor:
        return F.pad(x, (self.pw, self.pw, self.ph, self.ph)) if self.ph or self.pw else x

    def unfold(self, x: torch.Tensor) -> torch.Tensor:
        cols = F.unfold(x, (self.KH, self.KW), (self.dh, self.dw), (self.ph, self.pw), (self.sh, self.sw))
        return cols.view(x.shape[0], self.G, self.K, self.L)

    def batch_chunks(self):
        """Batch ranges whose im2col columns stay near a quarter of the full im2col buffer."""
        per_sample = self.G * self.K * self.L
        n = max(1, min(self.N, max(_FALLBACK_MIN_ELEMS, self.N * per_sample // 4) // per_sample))
        return [(i, min(self.N, i + n)) for i in range(0, self.N, n)]


def _conv_forward(x: torch.Tensor, weight: torch.Tensor, c: _Conv) -> torch.Tensor:
    if _use_triton(x):
        y = x.new_empty(c.N, c.O, c.Ho, c.Wo)
        if y.numel():
            _triton_kernels().conv_forward(x, weight, y, c)
        return y
    lib = _kernels(x, weight)
    if lib is not None:
        x, weight = x.contiguous(), weight.contiguous()
        y = x.new_empty(c.N, c.O, c.Ho, c.Wo)
        if y.numel() == 0:
            return y
        sfx, nt = _suffix(x), _threads(c.N * c.O * c.K * c.L)
        if c.depthwise:
            getattr(lib, f"saa_adder_dw_fwd_{sfx}")(_ptr(x), _ptr(weight), _ptr(y), c.dw_geom(), nt)
        else:
            xpad = c.pad(x)
            getattr(lib, f"saa_adder_fwd_{sfx}")(_ptr(xpad), _ptr(weight), _ptr(y), c.dense_geom(True), nt)
        return y
    return _torch_conv_forward(x, weight, c)


def _torch_conv_forward(x: torch.Tensor, weight: torch.Tensor, c: _Conv) -> torch.Tensor:
    ct = _compute_dtype(x.dtype)
    x, w = x.to(ct), weight.to(ct).reshape(c.G, c.O // c.G, c.K)
    y = x.new_empty(c.N, c.G, c.O // c.G, c.L)
    for n0, n1 in c.batch_chunks():
        n = n1 - n0
        cols = c.unfold(x[n0:n1]).transpose(2, 3).reshape(n * c.G, c.L, c.K)
        dist = torch.cdist(cols, w.expand(n, -1, -1, -1).reshape(n * c.G, c.O // c.G, c.K), p=1)
        y[n0:n1] = -dist.view(n, c.G, c.L, c.O // c.G).transpose(2, 3)
    return y.view(c.N, c.O, c.Ho, c.Wo).to(weight.dtype)


def _conv_weight_stats(gy: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, c: _Conv) -> torch.Tensor:
    """AdderNet weight gradient sum g*(x - w) = conv_weight_grad(x, g) - w * sum g (any device)."""
    cudnn = torch.backends.cudnn
    # On a GPU without triton this runs on cuDNN, whose default TF32 would cost ~3 decimal digits.
    exact = (
        cudnn.flags(enabled=cudnn.enabled, benchmark=cudnn.benchmark, deterministic=cudnn.deterministic, allow_tf32=False)
        if x.is_cuda
        else contextlib.nullcontext()
    )
    with exact:
        s = torch.ops.aten.convolution_backward(
            gy, x, weight, None, [c.sh, c.sw], [c.ph, c.pw], [c.dh, c.dw], False, [0, 0], c.G, [False, True, False]
        )[1]
    return s - weight * gy.sum(dim=(0, 2, 3)).view(-1, 1, 1, 1)


def _conv_backward(gy: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, c: _Conv, need_x: bool, need_w: bool):
    gx = gw = None
    if _use_triton(x):
        tk = _triton_kernels()
        if need_x:
            gx = x.new_empty(x.shape)
            if gx.numel() and gy.numel():
                tk.conv_input_grad(gy, x, weight, gx, c)
            else:
                gx.zero_()
        if need_w:
            gw = tk.conv_weight_grad(gy, x, weight, c).to(weight.dtype)
        return gx, gw
    lib = _kernels(gy, x, weight)
    if lib is not None:
        gy, x, weight = gy.contiguous(), x.contiguous(), weight.contiguous()
        sfx, nt = _suffix(x), _threads(c.N * c.O * c.K * c.L)
        if c.depthwise:
            gx = torch.empty_like(x) if need_x else None
            kk = c.KH * c.KW
            stats = torch.empty(c.O, kk + 1, dtype=torch.float64)
            getattr(lib, f"saa_adder_dw_bwd_{sfx}")(
                _ptr(x), _ptr(weight), _ptr(gy), _ptr(gx), _ptr(stats), c.dw_geom(), nt
            )
            if need_w:
                w2 = weight.reshape(c.O, kk).to(torch.float64)
                gw = (stats[:, :kk] - w2 * stats[:, kk:]).to(weight.dtype).view_as(weight)
            return gx, gw
        if need_x:
            gx = torch.empty_like(x)
            getattr(lib, f"saa_adder_gx_{sfx}")(_ptr(gy), _ptr(weight), _ptr(x), _ptr(gx), c.dense_geom(False), nt)
        if need_w:
            gw = _conv_weight_stats(gy, x, weight, c)
        return gx, gw
    if need_x:
        gx = _torch_conv_input_grad(gy, x, weight, c)
    if need_w:
        gw = _conv_weight_stats(gy, x, weight, c)
    return gx, gw


def _torch_conv_input_grad(gy: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, c: _Conv) -> torch.Tensor:
    ct = _compute_dtype(x.dtype)
    og = c.O // c.G
    w = weight.to(ct).reshape(1, c.G, og, c.K, 1)
    gy = gy.to(ct).reshape(c.N, c.G, og, 1, c.L)
    gx = torch.empty(x.shape, dtype=ct, device=x.device)
    for n0, n1 in c.batch_chunks():
        n = n1 - n0
        cols = c.unfold(x[n0:n1].to(ct)).unsqueeze(2)  # [n, G, 1, K, L]
        gcols = torch.zeros(n, c.G, c.K, c.L, dtype=ct, device=x.device)
        # Output channels in chunks so the [n, G, oc, K, L] temporary stays near the column buffer.
        oc = max(1, min(og, max(_FALLBACK_MIN_ELEMS, cols.numel()) // cols.numel()))
        for o0 in range(0, og, oc):
            t = (w[:, :, o0 : o0 + oc] - cols).clamp_(-1, 1).mul_(gy[n0:n1, :, o0 : o0 + oc])
            gcols += t[:, :, 0] if t.shape[2] == 1 else t.sum(dim=2)
        gx[n0:n1] = F.fold(
            gcols.view(n, c.G * c.K, c.L), (c.H, c.W), (c.KH, c.KW), (c.dh, c.dw), (c.ph, c.pw), (c.sh, c.sw)
        )
    return gx.to(x.dtype)


# One operator, two thin entry points over the same two implementation functions:
# * the ``torch.library`` custom ops ``shiftaddaug::adder_conv2d`` (+ ``_backward``), with fake
#   implementations and a registered autograd formula: what torch.compile / torch.export trace;
# * an ``autograd.Function`` with the same formula for eager mode, where the custom-op dispatch
#   would add ~0.15 ms of Python per layer call (measured), a lot for small layers and GPUs.
# ``need_input`` / ``need_weight`` say which gradients to compute; one that is not needed comes
# back as an empty tensor (an op cannot return None). The depthwise C++ kernel computes both in
# one pass, hence one backward op.


def _forward_impl(x, weight, stride, padding, dilation, groups):
    return _conv_forward(x, weight, _Conv(x, weight, stride, padding, dilation, groups))


def _backward_impl(gy, x, weight, stride, padding, dilation, groups, need_input, need_weight):
    """(dL/dx, raw dL/dw before the eta scaling), AdderNet's definitions (module docstring)."""
    c = _Conv(x, weight, stride, padding, dilation, groups)
    gx, gw = _conv_backward(gy, x, weight, c, need_input, need_weight)
    return (x.new_empty(0) if gx is None else gx), (weight.new_empty(0) if gw is None else gw)


def _save(ctx, x, weight, stride, padding, dilation, groups, eta):
    ctx.save_for_backward(x, weight)
    ctx.geometry = (stride, padding, dilation, groups)
    ctx.eta = eta


def _gradients(ctx, gy, backward):
    """The autograd formula: AdderNet's gradients, the weight's rescaled by eta (any backend)."""
    x, weight = ctx.saved_tensors
    need_x, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
    gx, gw = backward(gy, x, weight, *ctx.geometry, need_x, need_w)
    return (gx if need_x else None, adaptive_grad_scale(gw, ctx.eta) if need_w else None) + (None,) * 5


# Explicit schemas: nothing depends on how a torch version infers one from (postponed) annotations.
_GEOMETRY_SCHEMA = "SymInt[] stride, SymInt[] padding, SymInt[] dilation, SymInt groups"


@torch.library.custom_op(
    "shiftaddaug::adder_conv2d",
    mutates_args=(),
    schema=f"(Tensor x, Tensor weight, {_GEOMETRY_SCHEMA}, float? eta) -> Tensor",
)
def _adder_conv2d_op(x, weight, stride, padding, dilation, groups, eta):
    # eta only matters to the backward; it is an input so that the autograd formula can read it.
    return _forward_impl(x, weight, stride, padding, dilation, groups)


@_adder_conv2d_op.register_fake
def _adder_conv2d_fake(x, weight, stride, padding, dilation, groups, eta):
    ho = _out_size(x.shape[2], weight.shape[2], stride[0], padding[0], dilation[0])
    wo = _out_size(x.shape[3], weight.shape[3], stride[1], padding[1], dilation[1])
    return x.new_empty(x.shape[0], weight.shape[0], ho, wo)


@torch.library.custom_op(
    "shiftaddaug::adder_conv2d_backward",
    mutates_args=(),
    schema=f"(Tensor gy, Tensor x, Tensor weight, {_GEOMETRY_SCHEMA}, bool need_input, bool need_weight)"
    " -> (Tensor, Tensor)",
)
def _adder_conv2d_backward_op(gy, x, weight, stride, padding, dilation, groups, need_input, need_weight):
    return _backward_impl(gy, x, weight, stride, padding, dilation, groups, need_input, need_weight)


@_adder_conv2d_backward_op.register_fake
def _adder_conv2d_backward_fake(gy, x, weight, stride, padding, dilation, groups, need_input, need_weight):
    gx = x.new_empty(x.shape) if need_input else x.new_empty(0)
    return gx, (weight.new_empty(weight.shape) if need_weight else weight.new_empty(0))


_adder_conv2d_op.register_autograd(
    lambda ctx, gy: _gradients(ctx, gy, torch.ops.shiftaddaug.adder_conv2d_backward),
    setup_context=lambda ctx, inputs, output: _save(ctx, *inputs),
)


class _AdderConv2dFunction(torch.autograd.Function):
    """Eager-mode entry point of the same operator (see above)."""

    @staticmethod
    def forward(ctx, x, weight, stride, padding, dilation, groups, eta):
        _save(ctx, x, weight, stride, padding, dilation, groups, eta)
        return _forward_impl(x, weight, stride, padding, dilation, groups)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, gy):
        return _gradients(ctx, gy, _backward_impl)


def _adder_op(x, weight, stride, padding, dilation, groups, eta):
    if torch.compiler.is_compiling():
        return torch.ops.shiftaddaug.adder_conv2d(x, weight, stride, padding, dilation, groups, eta)
    return _AdderConv2dFunction.apply(x, weight, stride, padding, dilation, groups, eta)


def adder_conv2d(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    stride: int | tuple[int, int] = 1,
    padding: int | tuple[int, int] = 0,
    dilation: int | tuple[int, int] = 1,
    groups: int = 1,
    eta: float | None = DEFAULT_ETA,
) -> torch.Tensor:
    """Adder convolution ``-sum |x - w|`` with AdderNet's backward (see the module docstring).

    ``x`` [N, C, H, W], ``weight`` [O, C / groups, kh, kw] (any tensor, e.g. a slice of a shared
    weight: its gradient flows back through it), ``bias`` [O] or None. ``stride``, ``padding``
    (zeros) and ``dilation`` are ints or pairs; ``eta`` scales the weight gradient (None: off).
    """
    if x.dim() != 4 or weight.dim() != 4:
        raise ValueError(f"adder_conv2d: expected 4-d input and weight, got {tuple(x.shape)} and {tuple(weight.shape)}")
    if x.shape[1] != weight.shape[1] * groups or weight.shape[0] % groups:
        raise ValueError(
            f"adder_conv2d: input channels {x.shape[1]} and weight {tuple(weight.shape)} do not match groups={groups}"
        )
    _check_same(x, weight, "adder_conv2d")
    stride, padding, dilation = pair("stride", stride, 1), pair("padding", padding, 0), pair("dilation", dilation, 1)
    eta = check_eta(eta)
    y = _adder_op(x, weight, list(stride), list(padding), list(dilation), groups, eta)
    return y if bias is None else y + bias.view(1, -1, 1, 1)


# ------------------------------------------------------------------------------------------------
# Linear: the convolution op on a [1, in_features, 1, batch] view of x (a 1 x batch "image" of
# in_features channels) with a 1x1 kernel, so every backend, the custom op and its gradient serve it.


def adder_linear(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, eta: float | None = DEFAULT_ETA
) -> torch.Tensor:
    """Adder linear ``y[..., o] = -sum_k |x[..., k] - w[o, k]|`` (+ bias) with AdderNet's backward."""
    if weight.dim() != 2 or x.shape[-1] != weight.shape[1]:
        raise ValueError(f"adder_linear: input {tuple(x.shape)} does not match weight {tuple(weight.shape)}")
    _check_same(x, weight, "adder_linear")
    lead = x.shape[:-1]
    x4 = x.reshape(-1, x.shape[-1]).t()[None, :, None, :]
    y4 = _adder_op(x4, weight[:, :, None, None], [1, 1], [0, 0], [1, 1], 1, check_eta(eta))
    y = y4[0, :, 0, :].t().reshape(*lead, weight.shape[0])
    return y if bias is None else y + bias


# ------------------------------------------------------------------------------------------------
# Modules


class AdderConv2d(ConvGeometry, nn.Module):
    """Adder convolution with the ``nn.Conv2d`` signature plus ``eta`` (gradient scaling, None: off).

    Weights are initialised N(0, 1) as in AdderNet (an adder layer needs BatchNorm after it); the
    optional bias starts at zero. Only zero padding is supported.
    """

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
        eta: float | None = DEFAULT_ETA,
    ):
        super().__init__()
        shape = conv_config(self, in_channels, out_channels, kernel_size, stride, padding, dilation, groups, padding_mode)
        self.eta = check_eta(eta)
        factory: dict[str, Any] = {"device": device, "dtype": dtype}
        self.weight = nn.Parameter(torch.empty(shape, **factory))
        self.bias = nn.Parameter(torch.empty(out_channels, **factory)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.normal_(self.weight)
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return adder_conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups, self.eta)

    def count_ops(self, out_shape: tuple[int, ...] | torch.Size) -> dict[str, int]:
        k = conv_terms(self.in_channels, self.groups, self.kernel_size)
        return get_kind("add").counting.counts(k, numel(out_shape), self.bias is not None)

    def extra_repr(self) -> str:
        return conv_repr(self) + f", eta={self.eta}"


class AdderLinear(nn.Module):
    """Adder fully connected layer with the ``nn.Linear`` signature plus ``eta``."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        *,
        eta: float | None = DEFAULT_ETA,
    ):
        super().__init__()
        self.in_features = check_int("in_features", in_features, 1)
        self.out_features = check_int("out_features", out_features, 1)
        self.eta = check_eta(eta)
        factory: dict[str, Any] = {"device": device, "dtype": dtype}
        self.weight = nn.Parameter(torch.empty(out_features, in_features, **factory))
        self.bias = nn.Parameter(torch.empty(out_features, **factory)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.normal_(self.weight)
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return adder_linear(x, self.weight, self.bias, self.eta)

    def count_ops(self, out_shape: tuple[int, ...] | torch.Size) -> dict[str, int]:
        return get_kind("add").counting.counts(self.in_features, numel(out_shape), self.bias is not None)

    def extra_repr(self) -> str:
        bias = self.bias is not None
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={bias}, eta={self.eta}"
