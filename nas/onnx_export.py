"""ONNX export of a static TargetNet (``nas.models.Network``) with shift and adder layers.

``export_onnx(model, path, resolution)`` writes a file that onnxruntime runs with standard
``ai.onnx`` operators only, so no custom kernels are needed where the model is deployed:

* ``ShiftConv2d`` / ``ShiftLinear`` become plain ``Conv`` / ``Gemm`` holding ``effective_weight()``
  (signed powers of two: in float the shift layer *is* that convolution). Fixed-point activations,
  when configured, stay in the graph as ``Mul -> Floor -> Clip -> Mul`` in front of the layer, and
  the bias is stored already rounded to that format, exactly as the PyTorch forward does.
* ``AdderConv2d`` / ``AdderLinear`` (whose fast path is a C++ kernel behind ctypes, invisible to
  a tracer) become ``Pad``, then per kernel offset a strided ``Slice``, a broadcast ``Sub``,
  ``Abs`` and ``ReduceSum`` over the input channels of a group, accumulated with ``Add``.
  Input channels are chunked so one temporary stays near ``_MAX_TEMP_ELEMS`` per sample; there
  is never a K x L x O buffer.

Exporter: the TorchScript-based ``torch.onnx.export(..., dynamo=False)``. The dynamo exporter
(torch's default since 2.9) needs ``onnxscript``, which is not part of the ``[onnx]`` extra; the
legacy path needs only ``onnx`` + ``onnxruntime`` (the latter for the check). It is exported with
``training=PRESERVE`` on an eval-mode copy: same inference graph as ``EVAL``, but without the
Conv+BatchNorm folding pass, so shift weights stay exact powers of two in the file (onnxruntime
folds BN itself at session load).
"""

from __future__ import annotations

import copy
import warnings
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from nas.errors import ConfigError

__all__ = ["export_onnx", "to_onnx_friendly", "OnnxAdderConv2d", "OnnxAdderLinear", "FixedPointQuant"]

# Largest |x - w| temporary of an adder layer, in elements per sample (4 MiB of float32).
_MAX_TEMP_ELEMS = 1 << 20
# Allowed max |onnxruntime - torch| relative to the logit scale max(1, max |logits|).
RTOL = 1e-4
# Allowed error of onnxruntime against float64 PyTorch, in units of float32 PyTorch's own error.
_FP32_FACTOR = 8.0
_CHECK_BATCH = 3  # differs from the traced batch (2), so a batch size baked into the graph fails the check


def _require_onnx():
    try:
        import onnx
        import onnxruntime
    except ImportError:
        raise ConfigError("--format", "onnx", "needs the onnx extra: pip install -e '.[onnx]'") from None
    return onnx, onnxruntime


# ------------------------------------------------------------------------------------------------
# Traceable replacements


class FixedPointQuant(nn.Module):
    """``clamp(floor(x * 2**F), -2**(I+F-1), 2**(I+F-1) - 1) * 2**-F`` (nas.ops.shift.fixed_point, forward only)."""

    def __init__(self, integer_bits: int, fraction_bits: int):
        super().__init__()
        self.integer_bits, self.fraction_bits = integer_bits, fraction_bits

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        top = 2 ** (self.integer_bits + self.fraction_bits - 1)
        # Same op order and constants as nas.ops.shift._fixed_point_grid: bit-identical results.
        return torch.floor(x * 2.0**self.fraction_bits).clamp(-top, top - 1) * 2.0**-self.fraction_bits


class OnnxAdderConv2d(nn.Module):
    """``AdderConv2d`` forward (``-sum |xpad - w|`` + bias) from standard ops only (see module doc)."""

    def __init__(self, src: nn.Module):
        super().__init__()
        self.groups = src.groups
        self.kernel_size, self.stride = src.kernel_size, src.stride
        self.padding, self.dilation = src.padding, src.dilation
        o, cg, kh, kw = src.weight.shape
        g = src.groups
        # [kh*kw, G, O/G, Cg, 1, 1]: one constant per kernel offset, shaped to broadcast against a
        # [N, G, 1, Cg, Ho, Wo] input slice (no Gather/Reshape of the weight left in the graph).
        w = src.weight.detach().reshape(g, o // g, cg, kh * kw).permute(3, 0, 1, 2)
        self.register_buffer("weight", w.reshape(kh * kw, g, o // g, cg, 1, 1).contiguous())
        bias = None if src.bias is None else src.bias.detach().clone()
        self.register_buffer("bias", bias)
        self.out_channels = o

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Spatial sizes become constants when traced (the resolution is fixed); the batch stays -1.
        h, w = int(x.shape[2]), int(x.shape[3])
        (kh, kw), (sh, sw), (ph, pw), (dh, dw) = self.kernel_size, self.stride, self.padding, self.dilation
        ho = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
        wo = (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
        _, g, og, cg = self.weight.shape[:4]
        if ph or pw:
            x = F.pad(x, (pw, pw, ph, ph))  # zeros: padded taps contribute |0 - w|, like AdderNet
        x = x.reshape(-1, g, 1, cg, h + 2 * ph, w + 2 * pw)
        chunk = max(1, min(cg, _MAX_TEMP_ELEMS // max(1, g * og * ho * wo)))
        acc = None
        for c0 in range(0, cg, chunk):
            c1 = min(cg, c0 + chunk)
            for a in range(kh):
                rows = slice(a * dh, a * dh + (ho - 1) * sh + 1, sh)  # the taps of kernel row a
                for b in range(kw):
                    cols = slice(b * dw, b * dw + (wo - 1) * sw + 1, sw)
                    xs = x[:, :, :, c0:c1, rows, cols]  # [N, G, 1, chunk, Ho, Wo]
                    t = (xs - self.weight[a * kw + b, :, :, c0:c1]).abs().sum(dim=3)  # [N, G, O/G, Ho, Wo]
                    acc = t if acc is None else acc + t
        y = -acc.reshape(-1, self.out_channels, ho, wo)
        return y if self.bias is None else y + self.bias.view(1, -1, 1, 1)


class OnnxAdderLinear(nn.Module):
    """``AdderLinear`` forward ``-sum_k |x[..., k] - w[o, k]|`` (+ bias) from standard ops only."""

    def __init__(self, src: nn.Module):
        super().__init__()
        self.register_buffer("weight", src.weight.detach().clone())
        self.register_buffer("bias", None if src.bias is None else src.bias.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        o, k = self.weight.shape
        chunk = max(1, min(k, _MAX_TEMP_ELEMS // o))
        acc = None
        for k0 in range(0, k, chunk):
            t = (x[..., None, k0 : k0 + chunk] - self.weight[:, k0 : k0 + chunk]).abs().sum(dim=-1)
            acc = t if acc is None else acc + t
        y = -acc
        return y if self.bias is None else y + self.bias


@torch.no_grad()
def _replace_shift(m: nn.Module) -> nn.Module:
    from nas.ops.shift import ShiftConv2d, fixed_point

    w = m.effective_weight().detach().clone()  # eval mode: deterministic rounding
    bias = None
    if m.bias is not None:
        bias = m.bias.detach().clone()
    if m.fixed_point_activations and bias is not None:
        bias = fixed_point(bias, m.act_integer_bits, m.act_fraction_bits)  # as the forward rounds it
    if isinstance(m, ShiftConv2d):
        plain = nn.Conv2d(m.in_channels, m.out_channels, m.kernel_size, m.stride, m.padding, m.dilation, m.groups,
                          bias=bias is not None)  # fmt: skip
    else:
        plain = nn.Linear(m.in_features, m.out_features, bias=bias is not None)
    plain.weight.copy_(w)
    if bias is not None:
        plain.bias.copy_(bias)
    if m.fixed_point_activations:
        return nn.Sequential(FixedPointQuant(m.act_integer_bits, m.act_fraction_bits), plain)
    return plain


def to_onnx_friendly(model: nn.Module) -> nn.Module:
    """An eval-mode copy of ``model`` with every shift / adder module replaced by a traceable equivalent."""
    from nas.ops.adder import AdderConv2d, AdderLinear
    from nas.ops.shift import ShiftConv2d, ShiftLinear

    # A torch.Generator (stochastic rounding, unused in eval) is shared rather than deep-copied.
    memo = {id(m.generator): m.generator for m in model.modules() if getattr(m, "generator", None) is not None}
    net = copy.deepcopy(model, memo).eval()
    for name, m in list(net.named_modules()):
        if isinstance(m, (ShiftConv2d, ShiftLinear)):
            new = _replace_shift(m)
        elif isinstance(m, AdderConv2d):
            new = OnnxAdderConv2d(m)
        elif isinstance(m, AdderLinear):
            new = OnnxAdderLinear(m)
        else:
            continue
        parent, _, child = name.rpartition(".")
        setattr(net.get_submodule(parent) if parent else net, child, new)
    for name, m in net.named_modules():
        # Anything else from the toolkit's operator / supernet packages (hybrid layers, remaps,
        # dynamic blocks) is training-time machinery that a TargetNet never contains.
        if type(m).__module__.startswith(("nas.ops.", "nas.supernet.")):
            raise ConfigError(
                "model", f"{name or 'model'}: {type(m).__name__}",
                "a static TargetNet (nas.export.load_exported); export the target network first",
            )  # fmt: skip
    return net.eval()


# ------------------------------------------------------------------------------------------------
# Export


def _in_channels(model: nn.Module) -> int:
    arch = getattr(model, "arch", None)
    if arch is not None and hasattr(arch, "in_channels"):
        return int(arch.in_channels)
    for m in model.modules():
        if hasattr(m, "in_channels") and hasattr(m, "kernel_size"):
            return int(m.in_channels)
    return 3


def _metadata(model: nn.Module, resolution: int) -> dict[str, str]:
    from nas._version import __version__

    props = {"producer": "shiftaddaug", "toolkit_version": __version__, "torch_version": torch.__version__,
             "resolution": str(resolution), "input_layout": "NCHW float32"}  # fmt: skip
    arch = getattr(model, "arch", None)
    if arch is not None:
        labels = (("arch_id", "arch_id"), ("op", "op_kind"), ("arch_name", "name"), ("num_classes", "num_classes"))
        for key, attr in labels:
            try:
                value = getattr(arch, attr)
            except Exception:  # a best-effort label: never fail the export over it
                continue
            if value is not None:
                props[key] = str(value)
    return props


@torch.no_grad()
def _reference(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eval-mode logits of ``model`` on ``x`` in float32 and (from a float64 copy) in float64."""
    was_training = model.training
    try:
        ref = model.eval()(x).float()
    finally:
        model.train(was_training)
    memo = {id(m.generator): m.generator for m in model.modules() if getattr(m, "generator", None) is not None}
    ref64 = copy.deepcopy(model, memo).double().eval()(x.double())
    return ref, ref64


def export_onnx(model: nn.Module, path: str | Path, resolution: int, opset: int = 17, check: bool = True) -> dict:
    """Write ``model`` (a static TargetNet) as ONNX to ``path``; returns a summary dict.

    Input ``input`` [batch, C, resolution, resolution] float32 with a dynamic batch axis, output
    ``logits``; metadata props carry the arch id / op kind when ``model.arch`` exists. With
    ``check``: ``onnx.checker`` (full check), then onnxruntime on a random batch of 3 against the
    PyTorch model in eval mode; RuntimeError when onnxruntime's error against a float64 PyTorch
    forward exceeds ``RTOL`` x logit scale + ``_FP32_FACTOR`` x PyTorch float32's own error.

    Returns ``{"path", "opset", "ops" (sorted ONNX op types), "max_abs_diff"}`` where
    ``max_abs_diff`` is max |onnxruntime - PyTorch float32| (None without check); with check also
    ``max_abs_diff_fp64``, ``torch_fp32_error`` and ``tolerance``.
    """
    onnx, ort = _require_onnx()
    if isinstance(resolution, bool) or not isinstance(resolution, int) or resolution < 1:
        raise ConfigError("resolution", resolution, "allowed: a positive integer")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    net = to_onnx_friendly(model)
    c = _in_channels(model)
    gen = torch.Generator().manual_seed(0)
    sample = torch.randn(2, c, resolution, resolution, generator=gen)

    with warnings.catch_warnings():
        # The TorchScript exporter is deprecated (DeprecationWarning) and the adder modules turn
        # traced spatial sizes into constants on purpose (TracerWarning).
        warnings.simplefilter("ignore")
        torch.onnx.export(
            net, (sample,), str(path), dynamo=False, opset_version=opset,
            input_names=["input"], output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
            training=torch.onnx.TrainingMode.PRESERVE, do_constant_folding=True,
        )  # fmt: skip

    proto = onnx.load(str(path))
    for key, value in _metadata(model, resolution).items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(proto, str(path))

    ops = sorted({n.op_type for n in proto.graph.node})
    foreign = sorted({n.domain for n in proto.graph.node if n.domain not in ("", "ai.onnx")})
    if foreign:
        raise RuntimeError(f"ONNX export of {path} uses non-standard operator domains {foreign}")
    out = {"path": str(path), "opset": opset, "ops": ops, "max_abs_diff": None}
    if not check:
        return out

    onnx.checker.check_model(proto, full_check=True)
    x = torch.randn(_CHECK_BATCH, c, resolution, resolution, generator=gen)
    ref, ref64 = _reference(model, x)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1  # a batch of 3 on a tiny net: spinning worker threads only cost time
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    got = torch.from_numpy(sess.run(["logits"], {"input": x.numpy()})[0])
    if got.shape != ref.shape:
        raise RuntimeError(f"ONNX export of {path}: onnxruntime output shape {tuple(got.shape)} != {tuple(ref.shape)}")
    diff = (got - ref).abs().max().item()
    diff64 = (got.double() - ref64).abs().max().item()
    fp32_error = (ref.double() - ref64).abs().max().item()
    # Judged against float64 PyTorch: onnxruntime must be as accurate as PyTorch's own float32
    # forward, up to a factor for a different summation order. Adder layers followed by BatchNorm
    # subtract large, nearly equal sums, so a float32 forward can be off by far more than RTOL.
    tol = RTOL * max(1.0, ref64.abs().max().item()) + _FP32_FACTOR * fp32_error
    if not diff64 <= tol:  # also catches NaN
        raise RuntimeError(
            f"ONNX export of {path}: max |onnxruntime - torch float64| = {diff64:.3g} exceeds {tol:.3g} "
            f"(torch float32 is off by {fp32_error:.3g})"
        )
    out.update(max_abs_diff_fp64=diff64, torch_fp32_error=fp32_error, tolerance=tol)
    out["max_abs_diff"] = diff
    return out
