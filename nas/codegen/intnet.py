"""The integer network: a static TargetNet lowered to fixed-point layers (see docs/deploy.md).

``build_intnet(model, transform, calib_images)`` walks a ``nas.models.Network`` into a list of
layers (``Node``), runs the float network on calibration images to choose every activation
tensor's fixed-point format, and lowers each layer to integers:

* every activation tensor (``Buf``) is int8/uint8 or int16/uint16 with a power-of-two scale
  ``2**-frac`` (unsigned where the activation makes it non-negative: ReLU, ReLU6, h-sigmoid),
  the width chosen by ``_calibrate``;
* ShiftConv: (shift, sign) codes and the integer bias of ``nas.ops.deploy.shift_layer_params``,
  the accumulator carries the guard bits of ``nas.ops.deploy`` (exact sums);
* AdderConv: weights and bias on the input's grid (``nas.ops.deploy.fixed_point_int``), exact
  ``-sum |x - w|`` sums; weights stored clamped to the input's range, the constant
  ``|w - clamp(w)|`` moved into the bias (the same sums for every input in range);
* multiplicative convs / linears (depthwise and SE of Add models, the classifier): BatchNorm and
  an h-sigmoid's affine part folded into the float weights, then int8 weights with one
  power-of-two scale per output channel, int32 bias;
* after every conv one per-channel requantisation ``z = (acc * M[c] + B[c]) >> S[c]`` puts the
  accumulator on the output grid. For shift and add layers it carries the BatchNorm (which cannot
  be folded into power-of-two or ``|x - w|`` weights): its mean is an integer added to the
  accumulator's bias (exact), ``M`` the BN scale rounded to ``mult_bits`` significant bits, ``B``
  the rest of the BN shift and the rounding offset. Elsewhere ``M`` is
  1 or a power of two (a pure shift). The C code applies ``M`` either as one multiplication or
  as its canonical signed-digit expansion (shifts and adds only); both give the same integers.

The lowered constants are plain Python ints / int64 tensors; ``nas.codegen.reference`` and
``nas.codegen.emit_c`` both read them (the reference's shift and adder sums come from
``nas.ops.deploy`` itself), and the check compares the two bit for bit.

This module is longer than 600 lines because the node records, the calibration and the lowering
are one algorithm over one set of fixed-point formats (``Fmt``, ``Buf``, ``Requant``): each
lowering rule reads the formats calibration chose and the guard bits the node kinds declare, and
splitting them would put the two halves of every rule in different files.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from nas.cost.layers import Layer, arch_layers
from nas.errors import ConfigError
from nas.ops import deploy
from nas.ops.registry import OPS

ACT_BITS = ("auto", "8", "16")
LOWERED_OPS = ("mult", "shift", "add")  # operator kinds with an integer lowering (_lower_conv) and C code (emit_c)
DEFAULT_AGREE = 99.5  # 'auto': simulated top-1 agreement (%) with the float model on the calibration images
DEFAULT_MULT_BITS = 8  # significant bits of a requantisation multiplier (BN scale, 1/HW, 1/6)
MAX_FRAC = 24  # finest activation grid considered (2**-24)
_ACC_LIMIT = 1 << 62  # |acc * M + B| must stay below this (int64 headroom)


# ------------------------------------------------------------------------------------------------
# formats and tensors


@dataclass(frozen=True)
class Fmt:
    """A fixed-point format: ``bits``-bit two's complement (or unsigned) integers times ``2**-frac``."""

    bits: int
    signed: bool
    frac: int

    @property
    def lo(self) -> int:
        return -(1 << (self.bits - 1)) if self.signed else 0

    @property
    def hi(self) -> int:
        return (1 << (self.bits - 1)) - 1 if self.signed else (1 << self.bits) - 1

    @property
    def ctype(self) -> str:
        return f"{'' if self.signed else 'u'}int{self.bits}_t"

    @property
    def nbytes(self) -> int:
        return self.bits // 8

    def __str__(self) -> str:
        return f"{self.ctype[:-2]} 2^-{self.frac}"

    def quantise(self, x: torch.Tensor) -> torch.Tensor:
        """Round-to-nearest (ties up) onto this grid, saturating (float in, float integer values out)."""
        return torch.floor(x.double() * 2.0**self.frac + 0.5).clamp_(self.lo, self.hi)


def fmt_for(maxabs: float, bits: int, signed: bool) -> Fmt:
    """The finest grid of ``bits`` bits whose range holds ``maxabs`` (frac in [0, MAX_FRAC])."""
    top = (1 << (bits - 1)) - 1 if signed else (1 << bits) - 1
    if maxabs <= 0 or not math.isfinite(maxabs):
        return Fmt(bits, signed, min(MAX_FRAC, bits - 1))
    frac = math.floor(math.log2(top / maxabs))
    return Fmt(bits, signed, max(0, min(MAX_FRAC, frac)))


@dataclass(eq=False)
class Buf:
    """One activation tensor (C, H, W) of the network."""

    name: str
    shape: tuple[int, int, int]
    nonneg: bool  # non-negative by construction (after ReLU / ReLU6 / h-sigmoid)
    fmt: Fmt | None = None

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.numel * self.fmt.nbytes


@dataclass
class Requant:
    """``z[c] = (acc * M[c] + B[c]) >> S[c]`` (arithmetic shift; ``B`` holds the rounding offset),
    then ``clamp(z, lo, hi)`` (activation and output range) and, for h-swish,
    ``(z * clamp(z + 3, 0, 6) * hsw_M + hsw_B) >> hsw_S``."""

    M: list[int]
    B: list[int]
    S: list[int]
    lo: int
    hi: int
    hswish: tuple[int, int, int, int] | None = None  # (three = 3 on the grid, M, B, S)

    @property
    def kind(self) -> str:
        """'one' (M == 1: no multiplier), 'pow2' (every M a power of two: one shift) or 'general'."""
        if all(m == 1 for m in self.M):
            return "one"
        if all(m > 0 and m & (m - 1) == 0 for m in self.M):
            return "pow2"
        return "general"


# ------------------------------------------------------------------------------------------------
# layers


@dataclass(eq=False)
class Node:
    """A layer: reads ``inputs``, writes ``out``. ``name``, ``kind`` and ``part`` are those of its
    record in ``nas.cost.layers.arch_layers`` (the input node: "input")."""

    name: str
    kind: str
    inputs: list[Buf]
    out: Buf
    part: str = ""


@dataclass(eq=False)
class InputNode(Node):
    """Raw uint8 pixels -> the first activation tensor through one 256-entry table per channel."""

    float_lut: torch.Tensor = None  # [C, 256] float32: the normalised value of every pixel value
    src: list[int] = field(default_factory=list)  # stored channel read by each network channel
    raw_shape: tuple[int, int, int] = (0, 0, 0)  # (stored channels, H, W) of the image file
    lut: torch.Tensor | None = None  # [C, 256] int64 after lowering

    def run_float(self, x: torch.Tensor) -> torch.Tensor:
        return x


@dataclass(eq=False)
class ConvNode(Node):
    """Conv (or linear) -> [BatchNorm] -> activation, one operator kind."""

    module: nn.Module = None
    bn: nn.BatchNorm2d | None = None
    act: str = "none"  # relu, relu6, hswish, hsigmoid, none
    op: str = "mult"
    linear: bool = False
    kernel: int = 1
    stride: int = 1
    pad: int = 0
    groups: int = 1
    # lowered
    weights: torch.Tensor | None = None  # shift: uint8 codes; add: int weights on the input grid; mult: int8
    weight_ctype: str = "int8_t"  # C type of `weights`
    bias: torch.Tensor | None = None  # [O] int64 on the accumulator grid (None: no bias)
    acc_frac: list[int] = field(default_factory=list)  # per output channel
    acc_bits: int = 32
    acc_bound: int = 0
    grid_integer_bits: int = 0  # the `integer_bits` handed to nas.ops.deploy (shift / add)
    has_zero_weights: bool = False
    acc_offset: torch.Tensor | None = None  # [O] integer added to nas.ops.deploy's sum (BN mean, see _center)
    requant: Requant | None = None

    @property
    def cin(self) -> int:
        return self.inputs[0].shape[0]

    @property
    def cout(self) -> int:
        return self.out.shape[0]

    @property
    def terms(self) -> int:
        """K: terms summed per output."""
        return self.cin // self.groups * self.kernel * self.kernel

    def run_float(self, x: torch.Tensor) -> torch.Tensor:
        if self.linear:
            y = self.module(torch.flatten(x, 1))[:, :, None, None]
        else:
            y = self.module(x)
        if self.bn is not None:
            y = self.bn(y)
        return _FLOAT_ACTS[self.act](y)


@dataclass(eq=False)
class PoolNode(Node):
    """Global average pool: sum over H*W, then one requantisation (M, B, S shared by channels)."""

    sum_bits: int = 32
    requant: Requant | None = None

    def run_float(self, x: torch.Tensor) -> torch.Tensor:
        return F.adaptive_avg_pool2d(x, 1)


@dataclass(eq=False)
class AddNode(Node):
    """Residual add: both inputs shifted onto the output grid, added, saturated."""

    def run_float(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return a + b


@dataclass(eq=False)
class GateNode(Node):
    """SE channel gating ``x * g[c]``: one multiplication per element, then a rounding shift."""

    shift: int = 0  # right shift of the product onto the output grid (negative: left)
    prod_bits: int = 32

    def run_float(self, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        return x * g


_FLOAT_ACTS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "none": lambda y: y,
    "relu": F.relu,
    "relu6": F.relu6,
    "hswish": F.hardswish,
    "hsigmoid": F.hardsigmoid,
}
_NONNEG_ACTS = ("relu", "relu6", "hsigmoid")


@dataclass(eq=False)
class IntNet:
    """The lowered network: layers in execution order plus what the C code and the check need."""

    name: str
    nodes: list[Node]
    num_classes: int
    mult_bits: int
    act_bits: str
    calib_images: int
    float_check_max_abs: float = 0.0  # traced float graph vs the model's own forward
    calibration: dict = field(default_factory=dict)  # what 'auto' measured (16-bit count, simulated agreement)

    @property
    def input(self) -> InputNode:
        return self.nodes[0]

    @property
    def logits(self) -> Buf:
        return self.nodes[-1].out

    @property
    def logit_frac(self) -> int:
        return self.logits.fmt.frac

    @property
    def bufs(self) -> list[Buf]:
        seen: dict[int, Buf] = {}
        for n in self.nodes:
            for b in (*n.inputs, n.out):
                seen.setdefault(id(b), b)
        return list(seen.values())

    def formats(self) -> dict[str, str]:
        return {b.name: str(b.fmt) for b in self.bufs}


# ------------------------------------------------------------------------------------------------
# tracing a static network


def _op_of(module: nn.Module) -> tuple[str, bool]:
    """(operator kind, is linear) of a conv / linear module, read from its class (operator registry)."""
    found = OPS.kind_of_module(module)
    if found is None or found[0].name not in LOWERED_OPS:
        what = type(module).__name__ if found is None else f"{type(module).__name__} ({found[0].name})"
        raise ConfigError("layer", what, f"C export lowers the conv / linear layers of operator kinds {', '.join(LOWERED_OPS)}")
    return found[0].name, found[1]


_ACT_NAMES = {nn.ReLU: "relu", nn.ReLU6: "relu6", nn.Hardswish: "hswish", nn.Identity: "none"}


def _act_name(module: nn.Module) -> str:
    name = _ACT_NAMES.get(type(module))
    if name is None:
        raise ConfigError("activation", type(module).__name__, f"C export supports {', '.join(c.__name__ for c in _ACT_NAMES)}")
    return name


class _Tracer:
    """Builds the nodes of a network, each named after its layer record (``layer``)."""

    def __init__(self, arch):
        self.nodes: list[Node] = []
        self.records = {(L.part, L.stage, L.block): L for L in arch_layers(arch)}

    def layer(self, part: str, stage: int | None = None, block: int | None = None) -> Layer:
        return self.records[(part, stage, block)]

    def conv(self, L: Layer, module: nn.Module, x: Buf, bn: nn.Module | None, act: str) -> Buf:
        name = L.name
        op, linear = _op_of(module)
        if linear:
            k = s = 1
            p, groups, cout = 0, 1, module.out_features
            if module.in_features != x.numel:
                raise ConfigError(name, module.in_features, f"a linear layer reading {x.numel} features")
        else:
            if module.dilation != (1, 1) or module.kernel_size[0] != module.kernel_size[1] or module.stride[0] != module.stride[1] \
                    or module.padding[0] != module.padding[1]:
                raise ConfigError(name, module, "square kernels, strides and paddings without dilation")
            k, s, p, groups, cout = module.kernel_size[0], module.stride[0], module.padding[0], module.groups, module.out_channels
        c, h, w = x.shape
        ho, wo = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
        out = Buf(name, (cout, ho, wo), act in _NONNEG_ACTS)
        self.nodes.append(ConvNode(name, L.kind, [x], out, L.part, module=module, bn=bn, act=act, op=op, linear=linear,
                                   kernel=k, stride=s, pad=p, groups=groups))
        return out

    def cba(self, L: Layer, m: nn.Module, x: Buf) -> Buf:
        return self.conv(L, m.conv, x, m.bn, _act_name(m.act))

    def pool(self, L: Layer, x: Buf) -> Buf:
        out = Buf(L.name, (x.shape[0], 1, 1), x.nonneg)
        self.nodes.append(PoolNode(L.name, L.kind, [x], out, L.part))
        return out

    def join(self, cls: type[Node], L: Layer, inputs: list[Buf], nonneg: bool) -> Buf:
        """A node of two inputs of one shape (SE gating, residual add)."""
        out = Buf(L.name, inputs[0].shape, nonneg)
        self.nodes.append(cls(L.name, L.kind, inputs, out, L.part))
        return out


def _check_network(model: nn.Module) -> None:
    from nas.models.static import Network

    if not isinstance(model, Network):
        raise ConfigError("model", type(model).__name__, "a static nas.models.Network (shiftaddaug-export loads one)")
    check_task(model.arch)


def check_task(arch) -> None:
    """The generator lowers classification networks only (pooled logits); a segmentation network's
    head (bilinear upsampling to a dense map) has no integer lowering yet."""
    if arch.is_segmentation:
        raise ConfigError("task", arch.task, "the C code generator (--format c, cost --deploy) handles classification "
                          "networks only; export a segmentation network with --format json or onnx")


def trace(model: nn.Module, raw_shape: tuple[int, int, int], float_lut: torch.Tensor, src: list[int]) -> list[Node]:
    """The layers of a ``nas.models.Network`` in execution order, each named after its record in
    ``nas.cost.layers.arch_layers(model.arch)``."""
    _check_network(model)
    t = _Tracer(model.arch)
    cin = model.stem.conv.in_channels
    x = Buf("input", (cin, raw_shape[1], raw_shape[2]), False)
    t.nodes.append(InputNode("input", "input", [], x, float_lut=float_lut, src=src, raw_shape=raw_shape))
    x = t.cba(t.layer("stem"), model.stem, x)
    for i, stage in enumerate(model.stages):
        for j, block in enumerate(stage):
            y = x if block.expand is None else t.cba(t.layer("expand", i, j), block.expand, x)
            y = t.cba(t.layer("dw", i, j), block.dw, y)
            if block.se is not None:
                g = t.pool(t.layer("se_pool", i, j), y)
                g = t.conv(t.layer("se_reduce", i, j), block.se.reduce, g, None, "relu")
                g = t.conv(t.layer("se_expand", i, j), block.se.expand, g, None, "hsigmoid")
                y = t.join(GateNode, t.layer("se_gate", i, j), [y, g], y.nonneg)
            y = t.cba(t.layer("project", i, j), block.project, y)
            if block.shortcut:
                y = t.join(AddNode, t.layer("residual", i, j), [x, y], False)
            x = y
    if model.feature_mix is not None:
        x = t.cba(t.layer("feature_mix"), model.feature_mix, x)
    x = t.pool(t.layer("pool"), x)
    if model.post_pool is not None:
        x = t.cba(t.layer("post_pool"), model.post_pool, x)
    t.conv(t.layer("classifier"), model.classifier, x, None, "none")
    return t.nodes


def run_float(nodes: list[Node], x: torch.Tensor, visit: Callable[[Buf, torch.Tensor], None] | None = None) -> torch.Tensor:
    """Run the traced float network on normalised images; ``visit(buf, value)`` sees every tensor
    and may return a replacement (e.g. the value rounded to the tensor's format)."""
    vals: dict[int, torch.Tensor] = {}
    y = x
    for n in nodes:
        y = n.run_float(*(vals[id(b)] for b in n.inputs)) if n.inputs else n.run_float(x)
        if visit is not None:
            r = visit(n.out, y)
            y = y if r is None else r
        vals[id(n.out)] = y
    return y.flatten(1)


# ------------------------------------------------------------------------------------------------
# calibration


def _calibrate(nodes: list[Node], batches: list[torch.Tensor], act_bits: str, agree: float) -> dict:
    """Choose every tensor's format from the float network's values on the calibration batches.

    Scale: for each width, the finest power of two whose range holds the tensor's largest
    calibration value (no clipping). Width: '8' / '16' fix it everywhere. 'auto' ranks the
    tensors by the signal-to-quantisation-noise ratio (SQNR) of their calibration values rounded to
    their 8-bit grid, then makes the k worst 16-bit for the smallest k whose simulated network
    (float layers, every tensor rounded to its format) predicts the float network's top-1 class on
    at least ``agree`` percent of the calibration images. One SQNR alone does not decide: the
    rounding noise of ~50 tensors adds up along the network, and how much a tensor matters
    depends on what follows it. Returns what was measured.
    """
    bufs = [n.out for n in nodes[:-1]]  # the logits get a 32-bit format in lowering
    maxabs = {id(b): 0.0 for b in bufs}
    energy = {id(b): [0.0, 0.0] for b in bufs}

    def see_max(b, v):
        if id(b) in maxabs:
            maxabs[id(b)] = max(maxabs[id(b)], float(v.detach().abs().max()))

    with torch.no_grad():
        ref = [run_float(nodes, x, see_max).argmax(1) for x in batches]
    inp = nodes[0]
    maxabs[id(inp.out)] = float(inp.float_lut.abs().max())  # every pixel value, not just those seen
    f8 = {id(b): fmt_for(maxabs[id(b)], 8, not b.nonneg) for b in bufs}
    f16 = {id(b): fmt_for(maxabs[id(b)], 16, not b.nonneg) for b in bufs}
    if act_bits != "auto":
        for b in bufs:
            b.fmt = (f8 if act_bits == "8" else f16)[id(b)]
        return {}

    def see_err(b, v):
        if id(b) in energy:
            f, v, e = f8[id(b)], v.detach().double(), energy[id(b)]
            e[0] += float(v.square().sum())
            e[1] += float((v - f.quantise(v) * 2.0**-f.frac).square().sum())

    with torch.no_grad():
        for x in batches:
            run_float(nodes, x, see_err)
    sqnr = {k: math.inf if e == 0 else 10 * math.log10(max(s, 1e-300) / e) for k, (s, e) in energy.items()}
    order = sorted(bufs, key=lambda b: sqnr[id(b)])

    def agreement(wide: set[int]) -> float:
        def rounded(b, v):
            if id(b) in f8:
                f = f16[id(b)] if id(b) in wide else f8[id(b)]
                return (f.quantise(v) * 2.0**-f.frac).to(v.dtype)
            return None

        with torch.no_grad():
            hits = sum(int((run_float(nodes, x, rounded).argmax(1) == r).sum()) for x, r in zip(batches, ref))
        return 100.0 * hits / sum(len(r) for r in ref)

    step = max(1, len(bufs) // 16)
    tried = []
    for k in sorted({0, 1, 2, *range(step, len(bufs), step), len(bufs)}):  # at most ~19 simulations
        tried.append((k, agreement({id(b) for b in order[:k]})))
        if tried[-1][1] >= agree:
            break
    k = tried[-1][0]
    for i, b in enumerate(order):
        b.fmt = (f16 if i < k else f8)[id(b)]
    return {"sixteen_bit": k, "simulated_agreement": tried[-1][1], "tried": tried}


# ------------------------------------------------------------------------------------------------
# lowering


def _pow2_frac(value: float) -> int:
    """floor(log2(|value|)) for value != 0 (exact, via frexp)."""
    return math.frexp(abs(value))[1] - 1


def _requant_params(scale: list[float], offset: list[float] | None, acc_frac: list[int], out_frac: int,
                    mult_bits: int) -> tuple[list[int], list[int], list[int]]:
    """Integers (M, B, S) with ``(acc * M + B) >> S ~= (scale * acc * 2**-acc_frac + offset) * 2**out_frac``.

    Without an affine part (``offset is None`` and scale 1) the rescale is an exact power of two:
    M = 1 and a rounding right shift, or M = 2**d (a left shift) when the grid gets finer.
    Otherwise M carries ``mult_bits`` significant bits of the scale.
    """
    M, B, S = [], [], []
    for c, af in enumerate(acc_frac):
        if offset is None:
            d = out_frac - af
            m, s, b = (1 << d, 0, 0) if d >= 0 else (1, -d, 1 << (-d - 1))
        else:
            sc = scale[c] * 2.0 ** (out_frac - af)
            b_real = offset[c] * 2.0**out_frac
            s = 0 if sc == 0 else min(62, mult_bits - 1 - _pow2_frac(sc))
            m = int(round(sc * 2.0**s))
            if s < 0:  # a scale >= 2**mult_bits: keep mult_bits significant bits, shift left
                m, s = m << -s, 0
            b = math.floor(b_real * 2.0**s + 0.5) + (1 << (s - 1) if s > 0 else 0)
        M.append(m)
        S.append(s)
        B.append(b)
    return M, B, S


def _act_bounds(act: str, out: Fmt) -> tuple[int, int]:
    lo, hi = out.lo, out.hi
    if act in _NONNEG_ACTS:
        lo = max(lo, 0)
    if act == "relu6":
        hi = min(hi, 6 << out.frac)
    if act == "hsigmoid":
        hi = min(hi, 1 << out.frac)
    return lo, hi


def _hswish_params(out: Fmt, mult_bits: int) -> tuple[int, int, int, int]:
    """h-swish on the grid: q = (z * clamp(z + 3, 0, 6) * M + B) >> S, M / 2**S ~= 1 / (6 * 2**frac)."""
    s = out.frac + 2 + mult_bits  # 1/6 lies in [2**-3, 2**-2): M gets mult_bits bits
    m = int(round(2.0**s / (6 * 2.0**out.frac)))
    return 3 << out.frac, m, 1 << (s - 1), s


def _affine(node: ConvNode) -> tuple[list[float], list[float]] | None:
    """Per-channel (scale, offset) after the conv: BatchNorm, then an h-sigmoid's z / 6 + 1/2."""
    if node.bn is None and node.act != "hsigmoid":
        return None
    o = node.cout
    scale, offset = torch.ones(o, dtype=torch.float64), torch.zeros(o, dtype=torch.float64)
    if node.bn is not None:
        bn = node.bn
        inv = (bn.running_var.double() + bn.eps).rsqrt()
        g = bn.weight.double() if bn.weight is not None else torch.ones(o, dtype=torch.float64)
        beta = bn.bias.double() if bn.bias is not None else torch.zeros(o, dtype=torch.float64)
        scale = g * inv
        offset = beta - bn.running_mean.double() * scale
    if node.act == "hsigmoid":
        scale, offset = scale / 6, offset / 6 + 0.5
    return scale.tolist(), offset.tolist()


def grid_integer_bits(fmt: Fmt, extra_abs: int = 0) -> int:
    """``integer_bits`` for ``nas.ops.deploy`` so that its grid (I + F bits) holds every value of
    ``fmt`` (and integers up to ``extra_abs``) without clamping."""
    top = max(abs(fmt.lo), fmt.hi + 1, extra_abs + 1)
    need = top.bit_length() + 1  # sign bit included
    return max(1, min(32 - fmt.frac, need - fmt.frac))


def _lower_conv(n: ConvNode, mult_bits: int) -> None:
    xf, yf = n.inputs[0].fmt, n.out.fmt
    m = n.module
    o = n.cout
    xmax = max(abs(xf.lo), abs(xf.hi))
    affine = _affine(n)
    with torch.no_grad():
        if n.op == "shift":
            # the bias goes on the input's grid (deploy's convention): widen the grid to hold it
            wide = None if m.bias is None else deploy.fixed_point_int(m.bias, 32 - xf.frac, xf.frac)
            n.grid_integer_bits = grid_integer_bits(xf, 0 if wide is None else int(wide.abs().max()))
            p = deploy.shift_layer_params(m, n.grid_integer_bits, xf.frac)
            g = p["guard_bits"]
            shift, sign = p["shift"], p["sign"]
            if n.linear:
                shift, sign = shift[:, :, None, None], sign[:, :, None, None]
            amount = shift + g
            if int(amount.max()) > 62 or int(amount.min()) < 0:
                raise ConfigError(n.name, int(amount.max()), "shift amounts in [0, 62] after the guard bits")
            n.has_zero_weights = bool((sign == 0).any())
            n.weights = amount | ((sign < 0).long() << 7) | ((sign == 0).long() << 6)
            n.weight_ctype = "uint8_t"
            n.bias = None if p["bias"] is None else p["bias"] << g
            n.acc_frac = [xf.frac + g] * o
            per_out = ((sign != 0).long() << amount).flatten(1).sum(1) * xmax
        elif n.op == "add":
            wide = deploy.fixed_point_int(m.weight, 32 - xf.frac, xf.frac)
            bias = None if m.bias is None else deploy.fixed_point_int(m.bias, 32 - xf.frac, xf.frac)
            top = int(wide.abs().max()) if wide.numel() else 0
            if bias is not None:
                top = max(top, int(bias.abs().max()))
            n.grid_integer_bits = grid_integer_bits(xf, top)
            w = deploy.fixed_point_int(m.weight, n.grid_integer_bits, xf.frac)
            if n.linear:
                w = w[:, :, None, None]
            # A weight outside the input's range [lo, hi] only adds a constant: for every x in
            # range |x - w| = |x - clamp(w)| + |w - clamp(w)|. So the weights are stored clamped
            # (in the input's own type) and the constants go into the bias: the same sums exactly.
            wc = w.clamp(xf.lo, xf.hi)
            excess = (w - wc).abs().flatten(1).sum(1)
            n.weights = wc
            n.weight_ctype = xf.ctype
            bias = torch.zeros(o, dtype=torch.int64) if bias is None else bias.clone()
            n.bias = bias - excess
            n.acc_frac = [xf.frac] * o
            per_out = torch.maximum((wc - xf.lo).abs(), (wc - xf.hi).abs()).flatten(1).sum(1)
        else:
            w = m.weight.double()
            if n.linear:
                w = w[:, :, None, None]
            b = m.bias.double() if m.bias is not None else torch.zeros(o, dtype=torch.float64)
            if affine is not None:  # fold BN / h-sigmoid scale into the weights: exact in real arithmetic
                sc, off = (torch.tensor(v, dtype=torch.float64) for v in affine)
                w = w * sc[:, None, None, None]
                b = b * sc + off
                affine = None
            wmax = w.abs().flatten(1).amax(1)
            fw = [min(30, max(-16, math.floor(math.log2(127 / v)))) if v > 0 else 0 for v in wmax.tolist()]
            scale = torch.tensor([2.0**f for f in fw], dtype=torch.float64)
            n.weights = torch.round(w * scale[:, None, None, None]).clamp_(-127, 127).long()
            n.weight_ctype = "int8_t"
            n.acc_frac = [xf.frac + f for f in fw]
            n.bias = torch.round(b * torch.tensor([2.0**f for f in n.acc_frac], dtype=torch.float64)).long()
            per_out = (n.weights.abs() * xmax).flatten(1).sum(1)
        if affine is not None:  # shift / add with BN: its mean goes into the integer bias
            affine = _center(n, affine)
        bias_abs = n.bias.abs() if n.bias is not None else torch.zeros(o, dtype=torch.int64)
        bound = int((per_out + bias_abs).max())
    n.acc_bound = bound
    n.acc_bits = 32 if bound < (1 << 31) else 64
    scale, offset = affine if affine is not None else ([1.0] * o, None)
    M, B, S = _requant_params(scale, offset, n.acc_frac, yf.frac, mult_bits)
    lo, hi = _act_bounds(n.act, yf)
    hsw = _hswish_params(yf, mult_bits) if n.act == "hswish" else None
    n.requant = Requant(M, B, S, lo, hi, hsw)
    _check_range(n.name, bound, n.requant)


def _check_range(name: str, acc_bound: int, rq: Requant) -> None:
    worst = max(acc_bound * abs(m) + abs(b) for m, b in zip(rq.M, rq.B))
    if worst >= _ACC_LIMIT:
        raise ConfigError(name, f"|acc * M + B| up to 2^{math.log2(worst):.1f}", "a requantisation that fits int64 (2^62)")
    if rq.hswish is not None:
        three, m, _, _ = rq.hswish
        z = max(abs(rq.lo), rq.hi, three)
        if z * 2 * three * m >= _ACC_LIMIT:
            raise ConfigError(name, "h-swish product", "a format whose h-swish product fits int64")


def _center(n: ConvNode, affine: tuple[list[float], list[float]]) -> tuple[list[float], list[float]]:
    """Move the affine map's zero point into the accumulator: ``acc' = acc - c`` with the integer
    ``c = round(-offset / scale * 2**acc_frac)``, so that the requantisation multiplies a value
    centred near zero (an adder's sum carries a large per-channel constant: scaling it with an
    8-bit multiplier and then cancelling it with the BN shift would lose most digits). Exact: an
    integer added to the bias. Returns the adjusted (scale, offset)."""
    scale, offset = affine
    c = [round(-b / s * 2.0**af) if s != 0 else 0 for s, b, af in zip(scale, offset, n.acc_frac)]
    n.acc_offset = -torch.tensor(c, dtype=torch.int64)
    n.bias = n.acc_offset if n.bias is None else n.bias + n.acc_offset
    return scale, [b + s * ci * 2.0**-af for s, b, ci, af in zip(scale, offset, c, n.acc_frac)]


def _lower_pool(n: PoolNode, mult_bits: int) -> None:
    xf, yf = n.inputs[0].fmt, n.out.fmt
    c, h, w = n.inputs[0].shape
    hw = h * w
    bound = hw * max(abs(xf.lo), xf.hi)
    n.sum_bits = 32 if bound < (1 << 31) else 64
    if hw & (hw - 1) == 0:  # a power of two: the division is a shift
        M, B, S = _requant_params([1.0] * c, None, [xf.frac + hw.bit_length() - 1] * c, yf.frac, mult_bits)
    else:
        M, B, S = _requant_params([1.0 / hw] * c, [0.0] * c, [xf.frac] * c, yf.frac, mult_bits)
    n.requant = Requant(M, B, S, yf.lo, yf.hi)
    _check_range(n.name, bound, n.requant)


def _lower_gate(n: GateNode) -> None:
    xf, gf = n.inputs[0].fmt, n.inputs[1].fmt
    n.shift = xf.frac + gf.frac - n.out.fmt.frac
    bound = max(abs(xf.lo), xf.hi) * max(abs(gf.lo), gf.hi)
    n.prod_bits = 32 if (bound << max(0, -n.shift)) < (1 << 31) else 64


def _lower_input(n: InputNode) -> None:
    n.lut = n.out.fmt.quantise(n.float_lut).long()


def lower(nodes: list[Node], mult_bits: int) -> None:
    """Integer parameters of every layer (formats must be set)."""
    for n in nodes:
        if isinstance(n, InputNode):
            _lower_input(n)
        elif isinstance(n, ConvNode):
            _lower_conv(n, mult_bits)
        elif isinstance(n, PoolNode):
            _lower_pool(n, mult_bits)
        elif isinstance(n, GateNode):
            _lower_gate(n)


def _logit_format(n: ConvNode) -> Fmt:
    """The logits are int32 on the coarsest accumulator grid of the classifier (no bits dropped
    for that class, rounding shifts for classes on a finer grid)."""
    return Fmt(32, True, min(n.acc_frac) if n.acc_frac else 0)


# ------------------------------------------------------------------------------------------------
# entry point


def input_tables(transform: Callable[[torch.Tensor], torch.Tensor], raw_channels: int, net_channels: int) -> tuple[torch.Tensor, list[int]]:
    """[C, 256] normalised value of each pixel value per network channel, computed by the
    dataset's own evaluation transform (so the tables equal what the float model sees), and the
    stored channel each network channel reads."""
    ramp = torch.arange(256, dtype=torch.uint8).view(1, 1, 1, 256).expand(1, raw_channels, 1, 256).contiguous()
    lut = transform(ramp).reshape(-1, 256)
    if lut.shape[0] != net_channels:
        raise ConfigError("input channels", lut.shape[0], f"the network's {net_channels}")
    src = [0] * net_channels if raw_channels == 1 else list(range(net_channels))
    return lut.float(), src


def build_intnet(
    model: nn.Module,
    transform: Callable[[torch.Tensor], torch.Tensor],
    calib_images: torch.Tensor,
    *,
    act_bits: str = "auto",
    agree: float = DEFAULT_AGREE,
    mult_bits: int = DEFAULT_MULT_BITS,
    batch_size: int = 128,
) -> IntNet:
    """Lower ``model`` (a static Network in eval mode) to an ``IntNet``.

    ``transform`` maps a uint8 batch (N, Cs, R, R) to the normalised float batch the model takes
    (the dataset's evaluation transform); ``calib_images`` are uint8 images (training split) used
    to choose the activation formats.
    """
    if act_bits not in ACT_BITS:
        raise ConfigError("act_bits", act_bits, f"allowed: {', '.join(ACT_BITS)}")
    if not (isinstance(mult_bits, int) and 1 <= mult_bits <= 16):
        raise ConfigError("mult_bits", mult_bits, "an integer in [1, 16]")
    if calib_images.dtype != torch.uint8 or calib_images.dim() != 4 or len(calib_images) == 0:
        raise ConfigError("calibration images", tuple(calib_images.shape), "a non-empty uint8 batch (N, C, H, W)")
    _check_network(model)
    model = model.eval()
    raw_shape = tuple(calib_images.shape[1:])
    lut, src = input_tables(transform, raw_shape[0], model.stem.conv.in_channels)
    nodes = trace(model, raw_shape, lut, src)
    batches = [transform(b) for b in calib_images.split(batch_size)]
    with torch.no_grad():
        ref = model(batches[0])
        diff = float((run_float(nodes, batches[0]) - ref).abs().max())
        scale = float(ref.abs().max().clamp_min(1.0))
    if diff > 1e-5 * scale:  # the traced graph must be the model (catches structural changes)
        raise ConfigError("model", f"traced graph differs from the model's forward by {diff:.3g}",
                          "a network whose structure nas.codegen.intnet.trace understands")
    calibration = _calibrate(nodes, batches, act_bits, agree)
    cls = nodes[-1]
    lower(nodes[:-1], mult_bits)
    cls.out.fmt = Fmt(32, True, 0)  # lowered once to learn its accumulator grids, which decide the logit format
    lower([cls], mult_bits)
    cls.out.fmt = _logit_format(cls)
    lower([cls], mult_bits)
    return IntNet(getattr(getattr(model, "arch", None), "name", "model"), nodes, cls.cout, mult_bits, act_bits,
                  len(calib_images), diff, calibration)
