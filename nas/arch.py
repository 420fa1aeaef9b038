"""Arch: the one architecture schema of the toolkit.

An ``Arch`` describes one static MobileNet-family network: input resolution, a stem conv, stages of
inverted-residual (MBConv) blocks, an optional pre-pool 1x1 ``feature_mix`` conv, an optional
post-pool 1x1 ``post_pool`` conv (MobileNetV3) and a linear classifier. Every conv names its
operator kind: ``mult``, ``shift`` or ``add`` (any kind of the operator registry,
``nas.ops.registry``).

Three views of the same object:

* the dataclasses below (frozen, hashable);
* canonical JSON (``to_json``): sorted keys, ``schema_version``, so ``arch_id`` is stable;
* flat labels (``to_flat``) such as ``s2_b1_ks`` for search algorithms (NNI style).

Everything a user can hand in goes through ``Arch.from_dict`` which raises one ``ConfigError``
naming the field path, the value and what is allowed. OFA / MCUNet ``net.config`` files are read
by ``from_ofa_config``.

This module is longer than 600 lines because it is the schema: the specs, their checked reader
(every field with its path) and their JSON / flat-label writers change together whenever a field
is added, and keeping them in one file keeps the three views of an ``Arch`` in step.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from nas.errors import ConfigError, check_keys
from nas.ops.registry import get_kind, op_kinds

# 2: blocks name the operator of their SE convs (``se_op``); version-1 files load with their old
# meaning (SE convs computed with ``dw_op``).
# 3: ``task`` and ``seg_head`` (segmentation networks). A file is written with the lowest version
# that holds its content: classification networks still write 2 (readable by older releases, same
# ``arch_id`` as before), segmentation networks write 3.
SCHEMA_VERSION = 3
CLASSIFICATION_SCHEMA_VERSION = 2
READS_SCHEMA_VERSIONS = (1, 2, 3)
TASKS = ("classification", "segmentation")
ACTS = ("relu", "relu6", "hswish", "none")
KERNEL_SIZES = (1, 3, 5, 7)
STRIDES = (1, 2)
# Names used by OFA / NetAug / MCUNet files for the same activations.
_ACT_ALIASES = {"h_swish": "hswish", "hard_swish": "hswish", None: "none", "": "none"}
# Bounds on what an architecture or search-space file may ask for: far above any network these
# tools are for, low enough that a mistyped or hostile file is refused at once (one ConfigError)
# instead of running for minutes and exhausting memory.
MAX_FILE_BYTES = 1 << 20  # architecture / search-space files are a few kB
MAX_STAGES = 16
MAX_BLOCKS = 32  # blocks per stage
MAX_CHANNELS = 16384
MAX_RESOLUTION = 4096
MAX_CLASSES = 100_000
MAX_EXPAND = 32
MAX_NAME = 200


def make_divisible(v: float, divisor: int = 8, min_value: int | None = None) -> int:
    """Round ``v`` to the nearest multiple of ``divisor`` without losing more than 10%.

    The rule of the MobileNet / OFA / NetAug code bases, so that width multipliers give the same
    channel counts as there.
    """
    min_value = divisor if min_value is None else min_value
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


def op_convention(op: str) -> dict[str, str]:
    """The operator of every conv role in a ``mult``, ``shift`` or ``add`` model.

    Roles: ``dense`` (stem, 1x1 expand / project convs, feature mix, post-pool), ``dw`` (depthwise),
    ``se`` (the two SE convs, 1x1 convs on a 1x1 map), ``classifier``. Shift models shift every
    conv; Add models add in the stem and every 1x1 conv, SE included, and multiply in depthwise
    convs; the classifier always multiplies. This convention reproduces the paper's published
    energies (README, "The paper's energy model"). It is a property of the kind, declared with it
    in the operator registry (``OpKind.roles``).
    """
    return get_kind(op).convention


def total_stride(arch: "Arch") -> int:
    """Product of the strides of the stem and every block (the output stride of the backbone)."""
    s = arch.stem.stride
    for _, _, b in arch.blocks():
        s *= b.stride
    return s


def stage_sizes(arch: "Arch") -> list[int]:
    """Spatial size of every stage's output, in forward order."""
    size = conv_out_size(arch.resolution, arch.stem.kernel_size, arch.stem.stride)
    out = []
    for st in arch.stages:
        for b in st.blocks:
            size = conv_out_size(size, b.kernel_size, b.stride)
        out.append(size)
    return out


def conv_out_size(size: int, kernel_size: int, stride: int) -> int:
    """Output size of a conv with 'same' padding (kernel_size // 2)."""
    pad = kernel_size // 2
    return (size + 2 * pad - kernel_size) // stride + 1


# --------------------------------------------------------------------------------------------
# schema


@dataclass(frozen=True)
class ConvSpec:
    """A conv + BN + activation layer (the stem, the feature mix, the post-pool conv)."""

    out_channels: int
    kernel_size: int = 1
    stride: int = 1
    act: str = "relu6"
    op: str = "mult"


@dataclass(frozen=True)
class BlockSpec:
    """An inverted residual block: [1x1 expand] -> kxk depthwise -> [SE] -> 1x1 project.

    ``mid_channels`` is explicit (OFA files carry it; rounding rules differ between code bases).
    ``expand_ratio == 1`` means no expand conv and ``mid_channels == in_channels``. Every conv names
    its operator: ``op`` the 1x1 expand and project convs, ``dw_op`` the depthwise conv, ``se_op``
    the two SE convs (1x1 convs on the pooled 1x1 map). A block without SE has no SE convs; its
    ``se_op`` is kept equal to ``op`` so that it never tells two equal networks apart.
    ``shortcut``: identity shortcut; only possible with stride 1 and equal in/out channels. When a
    file leaves it out it is true exactly then (ProxylessNAS files switch it off for the first block).
    """

    kernel_size: int
    expand_ratio: float
    mid_channels: int
    out_channels: int
    stride: int = 1
    act: str = "relu6"
    se_channels: int = 0
    op: str = "mult"
    dw_op: str = "mult"
    se_op: str = "mult"
    shortcut: bool = False

    def __post_init__(self) -> None:
        if not self.se_channels and self.se_op != self.op:
            object.__setattr__(self, "se_op", self.op)


@dataclass(frozen=True)
class StageSpec:
    """A stage: its blocks in order (the first may change resolution and width)."""

    blocks: tuple[BlockSpec, ...]


@dataclass(frozen=True)
class ClassifierSpec:
    """The final linear layer: its operator (the conventions keep it ``mult``) and dropout before it."""

    op: str = "mult"
    dropout: float = 0.0


@dataclass(frozen=True)
class SegHeadSpec:
    """An LR-ASPP-style segmentation head (MobileNetV3's "Lite Reduced ASPP"), see docs/segmentation.md.

    Low-resolution branch on the backbone's last features ``x`` (after the feature mix, if any):
    ``cbr(x) * hardsigmoid(scale(avgpool(x)))`` with ``cbr`` a 1x1 conv + BN + ``act`` to ``channels``
    hidden channels (operator ``op``) and ``scale`` a 1x1 conv + BN on the pooled map (operator
    ``gate_op``); a 1x1 classifier (the Arch's ``classifier.op``, with bias) turns it into class
    logits, which are upsampled bilinearly to the skip's size and added to a 1x1 classifier of the
    high-resolution skip (the output of stage ``skip_stage``); the sum is upsampled bilinearly to
    the input size.
    """

    skip_stage: int
    channels: int = 128
    act: str = "relu"
    op: str = "mult"
    gate_op: str = "mult"


@dataclass(frozen=True)
class Arch:
    """The one architecture schema: stem, stages of blocks, optional head convs, classifier.

    Frozen and hashable; ``to_dict`` / ``from_dict`` are the canonical JSON (sorted keys,
    ``schema_version``), ``arch_id`` hashes it without the name, ``with_ops`` applies an operator
    convention and ``to_flat`` gives NNI-style labels. See docs/architecture.md.
    """

    name: str
    resolution: int
    num_classes: int
    stem: ConvSpec
    stages: tuple[StageSpec, ...]
    feature_mix: ConvSpec | None = None
    post_pool: ConvSpec | None = None
    classifier: ClassifierSpec = field(default_factory=ClassifierSpec)
    in_channels: int = 3
    # "segmentation": dense per-pixel logits from ``seg_head`` (then ``classifier`` names the
    # operator of the head's two 1x1 classifiers); "classification": pooled logits
    task: str = "classification"
    seg_head: SegHeadSpec | None = None

    # ---------------------------------------------------------------- construction / views
    def __post_init__(self) -> None:
        _validate_structure(self)

    @staticmethod
    def from_dict(d: Any, where: str = "arch") -> "Arch":
        return _arch_from_dict(d, where)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["stages"] = [{"blocks": [dict(b) for b in s["blocks"]]} for s in d["stages"]]
        if self.task == "classification":  # written as before: version 2, same arch_id
            del d["task"], d["seg_head"]
            d["schema_version"] = CLASSIFICATION_SCHEMA_VERSION
        else:
            d["schema_version"] = SCHEMA_VERSION
        return d

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, indent=indent)

    @staticmethod
    def from_json(text: str, where: str = "arch") -> "Arch":
        return Arch.from_dict(parse_json(text, where), where)

    def save(self, path: str | Path) -> None:
        from nas.io import atomic_write_text

        atomic_write_text(path, self.to_json() + "\n")

    @staticmethod
    def load(path: str | Path) -> "Arch":
        """Read an Arch JSON file, or an OFA / MCUNet ``net.config`` (detected by its keys)."""
        p = Path(path)
        if not p.is_file():
            raise ConfigError("arch file", str(p), "expected an existing Arch JSON or OFA/MCUNet net.config file")
        d = parse_json(read_bounded(p), str(p))
        if isinstance(d, dict) and "first_conv" in d and "blocks" in d:
            return from_ofa_config(d, name=p.stem)
        return Arch.from_dict(d, where=str(p.name))

    @property
    def arch_id(self) -> str:
        """Short stable id of the architecture (hash of the canonical JSON, name excluded)."""
        d = self.to_dict()
        d.pop("name")
        return hashlib.sha1(json.dumps(d, sort_keys=True).encode()).hexdigest()[:12]

    # ---------------------------------------------------------------- convenience
    def blocks(self) -> Iterator[tuple[int, int, BlockSpec]]:
        """(stage index, block index, block) in forward order."""
        for i, s in enumerate(self.stages):
            for j, b in enumerate(s.blocks):
                yield i, j, b

    @property
    def depths(self) -> tuple[int, ...]:
        return tuple(len(s.blocks) for s in self.stages)

    @property
    def is_segmentation(self) -> bool:
        return self.task == "segmentation"

    @property
    def head_channels(self) -> int:
        """Channels fed to the classifier (segmentation: to the head's low-resolution branch)."""
        if self.post_pool is not None:
            return self.post_pool.out_channels
        if self.feature_mix is not None:
            return self.feature_mix.out_channels
        return self.stages[-1].blocks[-1].out_channels if self.stages else self.stem.out_channels

    def replace(self, **kw: Any) -> "Arch":
        return dataclasses.replace(self, **kw)

    def with_ops(self, op: str) -> "Arch":
        """This arch with the paper's operator convention for a ``mult``, ``shift`` or ``add`` model.

        Shift models: every conv (stem, 1x1, depthwise, SE, feature mix, post-pool) is ShiftConv;
        the classifier stays multiplicative. Add models: the stem and every 1x1 conv (expand,
        project, the SE convs, feature mix, post-pool) are AddConv; depthwise convs and the
        classifier stay multiplicative (``op_convention``).
        """
        ops = op_convention(op)
        dense = ops["dense"]
        stages = tuple(
            StageSpec(tuple(dataclasses.replace(b, op=dense, dw_op=ops["dw"], se_op=ops["se"]) for b in s.blocks)) for s in self.stages
        )
        # segmentation head: its 1x1 conv follows the 1x1 convs, its gate conv (a 1x1 conv on a
        # pooled map) the SE convs, its classifiers the classifier
        head = None if self.seg_head is None else dataclasses.replace(self.seg_head, op=dense, gate_op=ops["se"])
        return dataclasses.replace(
            self,
            stem=dataclasses.replace(self.stem, op=dense),
            stages=stages,
            feature_mix=None if self.feature_mix is None else dataclasses.replace(self.feature_mix, op=dense),
            post_pool=None if self.post_pool is None else dataclasses.replace(self.post_pool, op=dense),
            classifier=dataclasses.replace(self.classifier, op=ops["classifier"]),
            seg_head=head,
        )

    @property
    def op_kind(self) -> str:
        """'mult', 'shift' or 'add' when the arch follows that convention exactly, else 'mixed'."""
        for op in op_kinds():
            if self.with_ops(op) == self:
                return op
        return "mixed"

    def to_flat(self) -> dict[str, Any]:
        """Flat labelled form: ``res``, ``stem_out``, ``s{i}_depth``, ``s{i}_b{j}_ks`` ..."""
        f: dict[str, Any] = {
            "name": self.name,
            "res": self.resolution,
            "classes": self.num_classes,
            "in_ch": self.in_channels,
            "stem_out": self.stem.out_channels,
            "stem_ks": self.stem.kernel_size,
            "stem_stride": self.stem.stride,
            "stem_act": self.stem.act,
            "stem_op": self.stem.op,
            "n_stages": len(self.stages),
        }
        for i, s in enumerate(self.stages):
            f[f"s{i}_depth"] = len(s.blocks)
            for j, b in enumerate(s.blocks):
                for key, attr in _FLAT_BLOCK_KEYS.items():
                    f[f"s{i}_b{j}_{key}"] = getattr(b, attr)
        for head in ("feature_mix", "post_pool"):
            c = getattr(self, head)
            f[f"{head}_out"] = 0 if c is None else c.out_channels
            if c is not None:
                f[f"{head}_act"] = c.act
                f[f"{head}_op"] = c.op
        f["cls_op"] = self.classifier.op
        f["cls_dropout"] = self.classifier.dropout
        if self.seg_head is not None:
            f["task"] = self.task
            for key, attr in _FLAT_HEAD_KEYS.items():
                f[f"seg_{key}"] = getattr(self.seg_head, attr)
        return f

    @staticmethod
    def from_flat(f: dict[str, Any]) -> "Arch":
        try:
            stages = []
            for i in range(int(f["n_stages"])):
                blocks = []
                for j in range(int(f[f"s{i}_depth"])):
                    blocks.append({attr: f[f"s{i}_b{j}_{key}"] for key, attr in _FLAT_BLOCK_KEYS.items()})
                stages.append({"blocks": blocks})
            heads = {}
            for head in ("feature_mix", "post_pool"):
                out = int(f[f"{head}_out"])
                heads[head] = None if out == 0 else {"out_channels": out, "act": f[f"{head}_act"], "op": f[f"{head}_op"]}
            d = {
                "name": f["name"],
                "resolution": f["res"],
                "num_classes": f["classes"],
                "in_channels": f["in_ch"],
                "stem": {
                    "out_channels": f["stem_out"],
                    "kernel_size": f["stem_ks"],
                    "stride": f["stem_stride"],
                    "act": f["stem_act"],
                    "op": f["stem_op"],
                },
                "stages": stages,
                **heads,
                "classifier": {"op": f["cls_op"], "dropout": f["cls_dropout"]},
            }
            if f.get("task", "classification") != "classification":
                d.update(task=f["task"], seg_head={attr: f[f"seg_{key}"] for key, attr in _FLAT_HEAD_KEYS.items()},
                         schema_version=SCHEMA_VERSION)
        except KeyError as e:
            raise ConfigError("flat arch", f"<missing key {e.args[0]}>", "all labels written by Arch.to_flat") from None
        return Arch.from_dict(d, "flat arch")

    def summary(self) -> str:
        """A one-line-per-stage human description."""
        lines = [f"{self.name}: {self.resolution}px, {self.num_classes} classes, stem {self.stem.out_channels}"]
        for i, s in enumerate(self.stages):
            desc = " ".join(
                f"k{b.kernel_size}e{b.expand_ratio:g}c{b.out_channels}" + ("s2" if b.stride == 2 else "") + ("se" if b.se_channels else "")
                for b in s.blocks
            )
            lines.append(f"  s{i}: {desc}")
        if self.seg_head is not None:
            h = self.seg_head
            lines.append(f"  head: LR-ASPP, skip from s{h.skip_stage}, {h.channels} hidden channels ({h.op}, gate {h.gate_op}), "
                         f"classifiers {self.classifier.op}, bilinear x{self.resolution // stage_sizes(self)[h.skip_stage]} to {self.resolution}px")
        return "\n".join(lines)


_FLAT_BLOCK_KEYS = {
    "ks": "kernel_size",
    "e": "expand_ratio",
    "mid": "mid_channels",
    "out": "out_channels",
    "stride": "stride",
    "act": "act",
    "se": "se_channels",
    "op": "op",
    "dwop": "dw_op",
    "seop": "se_op",
    "res": "shortcut",
}


_FLAT_HEAD_KEYS = {"skip": "skip_stage", "ch": "channels", "act": "act", "op": "op", "gateop": "gate_op"}


def default_seg_head(arch: Arch, channels: int = 128) -> SegHeadSpec:
    """LR-ASPP's choice for a backbone: the skip from the last stage at output stride <= 8 that
    is not the last stage (stage 0 when none is), ``channels`` hidden channels."""
    strides, s = [], arch.stem.stride
    for st in arch.stages:
        for b in st.blocks:
            s *= b.stride
        strides.append(s)
    early = [i for i, st in enumerate(strides[:-1]) if st <= 8]
    return SegHeadSpec(skip_stage=early[-1] if early else 0, channels=channels)


def to_segmentation(arch: Arch, head: SegHeadSpec | None = None) -> Arch:
    """``arch`` as a segmentation network: its backbone (stem, stages, feature mix), no post-pool
    conv and no dropout, ``head`` (default: ``default_seg_head``) with ``arch``'s operator
    convention when it follows one. A segmentation arch comes back unchanged."""
    if arch.is_segmentation:
        return arch
    head = head or default_seg_head(arch)
    d = arch.replace(post_pool=None, classifier=dataclasses.replace(arch.classifier, dropout=0.0)).to_dict()
    d.update(task="segmentation", seg_head=dataclasses.asdict(head), schema_version=SCHEMA_VERSION)
    out = Arch.from_dict(d)
    kind = arch.op_kind
    return out.with_ops(kind) if kind != "mixed" else out


def block_in_channels(arch: Arch) -> list[int]:
    """Input channels of every block in forward order."""
    c = arch.stem.out_channels
    out = []
    for _, _, b in arch.blocks():
        out.append(c)
        c = b.out_channels
    return out


def has_shortcut(in_channels: int, block: BlockSpec) -> bool:
    """Whether the block adds its input (``in_channels`` kept for call sites that check shapes)."""
    return block.shortcut


# --------------------------------------------------------------------------------------------
# parsing and validation


def read_bounded(path: Path, limit: int = MAX_FILE_BYTES) -> str:
    """The text of a user's input file, refused (one ConfigError) above ``limit`` bytes or when not UTF-8."""
    size = path.stat().st_size
    if size > limit:
        raise ConfigError(str(path), f"<{size} bytes>", f"a file of at most {limit} bytes (architectures and search spaces are a few kB)")
    try:
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(str(path), f"<not UTF-8 text: {e.reason} at byte {e.start}>", "a UTF-8 text file") from None


def parse_json(text: str, where: str) -> Any:
    """``json.loads`` with one ConfigError for invalid or too deeply nested text."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(where, f"<invalid JSON: {e.msg} at line {e.lineno}>", "a JSON object") from None
    except RecursionError:
        raise ConfigError(where, "<JSON nested too deeply>", "an architecture: a JSON object a few levels deep") from None


def _int(d: dict, key: str, where: str, lo: int = 1, default: Any = None, hi: int | None = None) -> int:
    v = d.get(key, default)
    allowed = f"expected an integer >= {lo}" + ("" if hi is None else f" and <= {hi}")
    if isinstance(v, bool) or not isinstance(v, (int, float)) or (isinstance(v, float) and not v.is_integer()):
        raise ConfigError(f"{where}.{key}", v, allowed)
    v = int(v)
    if v < lo or (hi is not None and v > hi):
        raise ConfigError(f"{where}.{key}", v, allowed)
    return v


def _choice(d: dict, key: str, where: str, choices: tuple, default: Any = None, aliases: dict | None = None) -> Any:
    v = d.get(key, default)
    if aliases and (v is None or isinstance(v, str)) and v in aliases:
        v = aliases[v]
    if v not in choices:
        raise ConfigError(f"{where}.{key}", v, f"allowed: {', '.join(map(str, choices))}")
    return v


def _conv_from_dict(d: Any, where: str, default_k: int, default_s: int) -> ConvSpec:
    keys = {f.name: () for f in dataclasses.fields(ConvSpec)}
    check_keys(d, where, keys, ("out_channels",))
    return ConvSpec(
        out_channels=_int(d, "out_channels", where, hi=MAX_CHANNELS),
        kernel_size=_choice(d, "kernel_size", where, KERNEL_SIZES, default_k),
        stride=_choice(d, "stride", where, STRIDES, default_s),
        act=_choice(d, "act", where, ACTS, "relu6", _ACT_ALIASES),
        op=_choice(d, "op", where, op_kinds(), "mult"),
    )


def _block_from_dict(d: Any, where: str, in_channels: int, schema_version: int = SCHEMA_VERSION) -> BlockSpec:
    keys = {f.name: () for f in dataclasses.fields(BlockSpec) if schema_version > 1 or f.name != "se_op"}
    check_keys(d, where, keys, ("kernel_size", "expand_ratio", "out_channels"))
    e = d["expand_ratio"]
    if isinstance(e, bool) or not isinstance(e, (int, float)) or not 0 < e <= MAX_EXPAND:  # (NaN fails too)
        raise ConfigError(f"{where}.expand_ratio", e, f"expected a positive number <= {MAX_EXPAND}")
    ks = _choice(d, "kernel_size", where, (3, 5, 7))
    if "mid_channels" in d and d["mid_channels"] is not None:
        mid = _int(d, "mid_channels", where, hi=MAX_CHANNELS)
    else:
        mid = in_channels if e == 1 else make_divisible(round(in_channels * e), 8)
        if mid > MAX_CHANNELS:
            raise ConfigError(f"{where}.expand_ratio", e, f"mid channels {mid} (from {in_channels} input channels) exceed {MAX_CHANNELS}")
    if e == 1 and mid != in_channels:
        raise ConfigError(f"{where}.mid_channels", mid, f"a block with expand_ratio 1 has no expand conv, so mid_channels must equal its input channels ({in_channels})")
    out = _int(d, "out_channels", where, hi=MAX_CHANNELS)
    stride = _choice(d, "stride", where, STRIDES, 1)
    fits = stride == 1 and out == in_channels
    shortcut = d.get("shortcut", fits)
    if not isinstance(shortcut, bool):
        raise ConfigError(f"{where}.shortcut", shortcut, "expected true or false")
    if shortcut and not fits:
        raise ConfigError(f"{where}.shortcut", shortcut, f"an identity shortcut needs stride 1 and out_channels == in_channels ({in_channels})")
    kinds = op_kinds()
    op = _choice(d, "op", where, kinds, "mult")
    dw_op = _choice(d, "dw_op", where, kinds, "mult")
    # Version 1 computed the SE convs with dw_op; a missing se_op follows the 1x1 convs (the
    # convention of every MF model, Arch.with_ops).
    se_op = dw_op if schema_version == 1 else _choice(d, "se_op", where, kinds, op)
    return BlockSpec(
        kernel_size=ks,
        expand_ratio=float(e),
        mid_channels=mid,
        out_channels=out,
        stride=stride,
        shortcut=shortcut,
        act=_choice(d, "act", where, ACTS, "relu6", _ACT_ALIASES),
        se_channels=_int(d, "se_channels", where, lo=0, default=0, hi=MAX_CHANNELS),
        op=op,
        dw_op=dw_op,
        se_op=se_op,
    )


_ARCH_KEYS = {f.name: () for f in dataclasses.fields(Arch)} | {"schema_version": ()}
_TASK_KEYS = ("task", "seg_head")  # schema 3


def _seg_head_from_dict(d: Any, where: str, n_stages: int) -> SegHeadSpec:
    check_keys(d, where, {f.name: () for f in dataclasses.fields(SegHeadSpec)}, ("skip_stage",))
    return SegHeadSpec(
        skip_stage=_int(d, "skip_stage", where, lo=0, hi=n_stages - 1),
        channels=_int(d, "channels", where, default=128, hi=MAX_CHANNELS),
        act=_choice(d, "act", where, ACTS, "relu", _ACT_ALIASES),
        op=_choice(d, "op", where, op_kinds(), "mult"),
        gate_op=_choice(d, "gate_op", where, op_kinds(), "mult"),
    )


def _arch_from_dict(d: Any, where: str) -> Arch:
    check_keys(d, where, _ARCH_KEYS, ("resolution", "num_classes", "stem", "stages"))
    sv = d.get("schema_version", SCHEMA_VERSION)
    if isinstance(sv, bool) or sv not in READS_SCHEMA_VERSIONS:
        raise ConfigError(f"{where}.schema_version", sv, f"this version of shiftaddaug reads schema_version {', '.join(map(str, READS_SCHEMA_VERSIONS))}")
    if sv < 3:
        for k in _TASK_KEYS:
            if k in d:
                raise ConfigError(f"{where}.{k}", d[k], f"needs schema_version 3 (the file says {sv})")
    name = d.get("name", "arch")
    if not isinstance(name, str) or not name or len(name) > MAX_NAME:
        raise ConfigError(f"{where}.name", name, f"expected a non-empty string of at most {MAX_NAME} characters")
    stem = _conv_from_dict(d["stem"], f"{where}.stem", 3, 2)
    stages_in = d["stages"]
    if not isinstance(stages_in, list) or not 1 <= len(stages_in) <= MAX_STAGES:
        raise ConfigError(f"{where}.stages", stages_in, f"expected a non-empty list of at most {MAX_STAGES} stages")
    stages = []
    c = stem.out_channels
    for i, s in enumerate(stages_in):
        sw = f"{where}.stages[{i}]"
        check_keys(s, sw, {"blocks": ()}, ("blocks",))
        if not isinstance(s["blocks"], list) or not 1 <= len(s["blocks"]) <= MAX_BLOCKS:
            raise ConfigError(f"{sw}.blocks", s["blocks"], f"expected a non-empty list of at most {MAX_BLOCKS} blocks")
        blocks = []
        for j, b in enumerate(s["blocks"]):
            blk = _block_from_dict(b, f"{sw}.blocks[{j}]", c, sv)
            blocks.append(blk)
            c = blk.out_channels
        stages.append(StageSpec(tuple(blocks)))
    heads = {}
    for head, kernel in (("feature_mix", 1), ("post_pool", 1)):
        v = d.get(head)
        heads[head] = None if v is None else _conv_from_dict(v, f"{where}.{head}", kernel, 1)
        if heads[head] is not None and (heads[head].kernel_size != 1 or heads[head].stride != 1):
            raise ConfigError(f"{where}.{head}", v, "the head convs are 1x1 with stride 1")
    cls = d.get("classifier", {})
    check_keys(cls, f"{where}.classifier", {"op": (), "dropout": ()}, ())
    dropout = cls.get("dropout", 0.0)
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
        raise ConfigError(f"{where}.classifier.dropout", dropout, "expected a number in [0, 1)")
    classifier = ClassifierSpec(op=_choice(cls, "op", f"{where}.classifier", op_kinds(), "mult"), dropout=float(dropout))
    task = _choice(d, "task", where, TASKS, "classification")
    seg_head = None
    if task == "segmentation":
        if d.get("seg_head") is None:
            raise ConfigError(f"{where}.seg_head", "<missing>", "a segmentation network needs a seg_head (skip_stage, channels, act, op, gate_op)")
        seg_head = _seg_head_from_dict(d["seg_head"], f"{where}.seg_head", len(stages))
        if heads["post_pool"] is not None:
            raise ConfigError(f"{where}.post_pool", d["post_pool"], "a segmentation network has no post-pool conv (null)")
        if classifier.dropout:
            raise ConfigError(f"{where}.classifier.dropout", classifier.dropout, "a segmentation network has no dropout (0)")
    elif d.get("seg_head") is not None:
        raise ConfigError(f"{where}.seg_head", d["seg_head"], "only with task: segmentation")
    return Arch(
        name=name,
        resolution=_int(d, "resolution", where, lo=8, hi=MAX_RESOLUTION),
        num_classes=_int(d, "num_classes", where, hi=MAX_CLASSES),
        stem=stem,
        stages=tuple(stages),
        feature_mix=heads["feature_mix"],
        post_pool=heads["post_pool"],
        classifier=classifier,
        in_channels=_int(d, "in_channels", where, default=3, hi=MAX_CHANNELS),
        task=task,
        seg_head=seg_head,
    )


def _validate_structure(a: Arch) -> None:
    """Checks that need the whole network: the spatial size must allow every stride."""
    size = conv_out_size(a.resolution, a.stem.kernel_size, a.stem.stride)
    if size < 1 or (a.stem.stride == 2 and a.resolution < 2):
        raise ConfigError("arch.stem.stride", a.stem.stride, f"input resolution {a.resolution} is too small")
    for i, j, b in a.blocks():
        if b.stride == 2 and size < 2:
            raise ConfigError(
                f"arch.stages[{i}].blocks[{j}].stride",
                b.stride,
                f"the feature map is already {size}x{size} at resolution {a.resolution}; "
                "use stride 1 here or a larger resolution",
            )
        size = conv_out_size(size, b.kernel_size, b.stride)
    if a.task not in TASKS:
        raise ConfigError("arch.task", a.task, f"allowed: {', '.join(TASKS)}")
    if (a.seg_head is not None) != (a.task == "segmentation"):
        raise ConfigError("arch.seg_head", a.seg_head, "present exactly when task is segmentation")
    if a.seg_head is not None:
        if not 0 <= a.seg_head.skip_stage < len(a.stages):
            raise ConfigError("arch.seg_head.skip_stage", a.seg_head.skip_stage, f"a stage index in 0..{len(a.stages) - 1}")
        # whole upsampling factors: every feature map is then exactly resolution / stride, and the
        # head's two bilinear upsamplings line the logits up with the input pixels
        ts = total_stride(a)
        if a.resolution % ts:
            raise ConfigError("arch.resolution", a.resolution,
                              f"a segmentation network needs a multiple of its total stride {ts}, so that its logits upsample by whole factors")


# --------------------------------------------------------------------------------------------
# OFA / MCUNet net.config


def from_ofa_config(cfg: dict, name: str = "ofa", resolution: int | None = None, num_classes: int | None = None) -> Arch:
    """Read an OFA / ProxylessNAS / MCUNet ``net.config`` into an Arch.

    Blocks whose conv is a ``ZeroLayer`` (with an identity shortcut) are skipped, as in OFA.
    A stage starts at every stride-2 block and wherever the output channels change. ``resolution`` falls back to the
    file's ``resolution`` key (MCUNet) or 224 (plain OFA files keep it in run.config).
    """
    where = f"{name}"
    if isinstance(cfg.get("blocks"), list) and len(cfg["blocks"]) > MAX_STAGES * MAX_BLOCKS:
        raise ConfigError(f"{where}.blocks", cfg["blocks"], f"at most {MAX_STAGES * MAX_BLOCKS} blocks")
    try:
        fc = cfg["first_conv"]
        stem = {
            "out_channels": fc["out_channels"],
            "kernel_size": fc.get("kernel_size", 3),
            "stride": fc.get("stride", 2),
            "act": fc.get("act_func", "relu6"),
        }
        in_channels = fc.get("in_channels", 3)
        stages: list[dict] = []
        prev_out = None
        c = fc["out_channels"]
        for k, blk in enumerate(cfg["blocks"]):
            conv = blk.get("mobile_inverted_conv") or blk.get("conv")
            if conv is None or conv.get("name") == "ZeroLayer":
                continue
            if conv.get("name") not in ("MBInvertedConvLayer", "MBConvLayer"):
                raise ConfigError(f"{where}.blocks[{k}].name", conv.get("name"), "supported: MBInvertedConvLayer, MBConvLayer, ZeroLayer")
            e = conv.get("expand_ratio", 1)
            mid = conv.get("mid_channels")
            if mid is None:
                mid = c if e == 1 else make_divisible(round(c * e), 8)
            se = 0
            if conv.get("use_se"):
                se = make_divisible(mid // 4, 8)
            b = {
                "kernel_size": conv["kernel_size"],
                "expand_ratio": e,
                "mid_channels": mid,
                "out_channels": conv["out_channels"],
                "stride": conv.get("stride", 1),
                "act": conv.get("act_func", "relu6"),
                "se_channels": se,
            }
            if conv["in_channels"] != c:
                raise ConfigError(f"{where}.blocks[{k}].in_channels", conv["in_channels"], f"expected {c} (the previous layer's output)")
            b["shortcut"] = bool(blk.get("shortcut"))
            if prev_out != conv["out_channels"] or conv.get("stride", 1) == 2:
                stages.append({"blocks": []})
            stages[-1]["blocks"].append(b)
            prev_out = c = conv["out_channels"]
        fm = cfg.get("feature_mix_layer")
        feature_mix = None
        if fm:
            feature_mix = {"out_channels": fm["out_channels"], "act": fm.get("act_func", "relu6")}
            c = fm["out_channels"]
        post_pool = None
        if cfg.get("final_expand_layer"):  # OFA MobileNetV3: pre-pool conv named final_expand_layer
            fe = cfg["final_expand_layer"]
            post_pool = feature_mix
            feature_mix = {"out_channels": fe["out_channels"], "act": fe.get("act_func", "h_swish")}
        cls = cfg["classifier"]
        d = {
            "name": name,
            "resolution": resolution or cfg.get("resolution", 224),
            "num_classes": num_classes or cls["out_features"],
            "in_channels": in_channels,
            "stem": stem,
            "stages": stages,
            "feature_mix": feature_mix,
            "post_pool": post_pool,
            "classifier": {"dropout": float(cls.get("dropout_rate", 0) or 0)},
        }
    except (KeyError, TypeError, AttributeError, IndexError, ValueError, OverflowError) as e:
        if isinstance(e, ConfigError):
            raise
        raise ConfigError(where, f"<malformed net.config: {e!r}>", "an OFA/MCUNet net.config with first_conv, blocks, classifier") from None
    return Arch.from_dict(d, where)
