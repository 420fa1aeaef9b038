"""SearchSpace: the choices an architecture search may make, loaded from ``search_spaces/*.yaml``.

A space has a fixed number of stages; per stage it offers depth, kernel size, expand ratio and
width (output channel) choices, plus a stride, activation and SE switch that are fixed. It also
carries the augmentation multiples of ShiftAddAug's stage one (the SubNet is searched under
``budget * multiple``). Example::

    schema_version: 1
    name: tiny
    resolution: 32
    stem: {out_channels: [8, 16], kernel_size: 3, stride: 1, act: relu6}
    stages:
      - {depth: [1], kernel_size: [3], expand_ratio: [1], out_channels: [8], stride: 1}
      - {depth: [1, 2], kernel_size: [3, 5, 7], expand_ratio: [3, 4, 6], out_channels: [16, 24], stride: 2}
    feature_mix: {out_channels: [64, 128], act: relu6}
    aug_multiples: [2.2, 2.4, 2.8, 3.2]

A segmentation space (schema_version 2) adds ``task: segmentation`` and the choices of its
LR-ASPP head: ``seg_head: {skip_stage: 1, channels: [32, 64], act: relu}`` (gene ``head_ch``; the
skip stage and activation are fixed). Its resolution must be a multiple of its total stride.

``width_mult: [0.5, 1.0]`` at the top level is a shorthand: every ``out_channels`` list (stem,
stages, feature mix) becomes ``make_divisible(c * m, 8)`` for each listed channel count ``c`` and
multiplier ``m``.

Sampling, mutation and crossover take an explicit ``random.Random``, so a search is deterministic
for its seed. Architectures come out multiplicative; ``Arch.with_ops`` applies an MF convention.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nas.arch import (ACTS, MAX_BLOCKS, MAX_CHANNELS, MAX_CLASSES, MAX_EXPAND, MAX_NAME, MAX_RESOLUTION, MAX_STAGES, TASKS,
                      Arch, conv_out_size, make_divisible, read_bounded)
from nas.errors import ConfigError, check_keys

# 2: ``task`` and ``seg_head`` (segmentation spaces); classification spaces are still written as 1
SCHEMA_VERSION = 2
READS_SCHEMA_VERSIONS = (1, 2)
MAX_CHOICES = 64  # entries of one choice list (depths, kernels, expand ratios, widths, multipliers)


@dataclass(frozen=True)
class StageChoices:
    """The choices of one stage of a search space: depths, kernels, expand ratios, widths (stride, activation and SE fixed)."""

    depth: tuple[int, ...]
    kernel_size: tuple[int, ...]
    expand_ratio: tuple[float, ...]
    out_channels: tuple[int, ...]
    stride: int = 1
    act: str = "relu6"
    se: bool = False


@dataclass(frozen=True)
class HeadChoices:
    """The width choices of the stem or the feature-mix conv (kernel, stride and activation fixed)."""

    out_channels: tuple[int, ...]
    kernel_size: int = 3
    stride: int = 2
    act: str = "relu6"


@dataclass(frozen=True)
class SegHeadChoices:
    """The LR-ASPP head of a segmentation space: hidden-channel choices, fixed skip stage and act."""

    skip_stage: int
    channels: tuple[int, ...]
    act: str = "relu"


def mid_channels(in_channels: int, expand_ratio: float) -> int:
    """The mid width of a block in a search space (expand ratio 1: no expand conv)."""
    return in_channels if expand_ratio == 1 else make_divisible(round(in_channels * expand_ratio), 8)


def se_channels(mid: int) -> int:
    return make_divisible(mid // 4, 8)


@dataclass(frozen=True)
class SearchSpace:
    """A search space (``search_spaces/*.yaml``): per-stage choices, head choices, augmentation multiples.

    ``genes`` / ``sample_genome`` / ``decode`` / ``encode`` map between flat genomes and Archs;
    ``max_arch`` / ``min_arch`` are its extremes; ``validate`` checks that an Arch belongs to it.
    """

    name: str
    resolution: int
    stem: HeadChoices
    stages: tuple[StageChoices, ...]
    feature_mix: HeadChoices | None
    aug_multiples: tuple[float, ...] = (2.2, 2.4, 2.8, 3.2)
    num_classes: int = 10
    in_channels: int = 3
    task: str = "classification"
    seg_head: SegHeadChoices | None = None

    # ----------------------------------------------------------------------------- loading
    @staticmethod
    def load(path: str | Path) -> "SearchSpace":
        import yaml

        p = Path(path)
        if not p.is_file():
            from nas.paths import SEARCH_SPACES

            alt = SEARCH_SPACES / f"{path}.yaml"
            if alt.is_file():
                p = alt
            else:
                names = sorted(q.stem for q in SEARCH_SPACES.glob("*.yaml"))
                raise ConfigError("space", str(path), f"expected a YAML file or one of: {', '.join(names)}")
        text = read_bounded(p)
        try:
            d = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise ConfigError(p.name, "<invalid YAML>", f"a search space mapping ({str(e).splitlines()[0]})") from None
        except RecursionError:
            raise ConfigError(p.name, "<YAML nested too deeply>", "a search space mapping a few levels deep") from None
        return SearchSpace.from_dict(d, where=p.name)

    @staticmethod
    def from_dict(d: Any, where: str = "space") -> "SearchSpace":
        return _space_from_dict(d, where)

    def to_dict(self) -> dict:
        def head(h: HeadChoices | None) -> dict | None:
            if h is None:
                return None
            return {"out_channels": list(h.out_channels), "kernel_size": h.kernel_size, "stride": h.stride, "act": h.act}

        d = {
            "schema_version": 1,
            "name": self.name,
            "resolution": self.resolution,
            "num_classes": self.num_classes,
            "in_channels": self.in_channels,
            "stem": head(self.stem),
            "stages": [
                {
                    "depth": list(s.depth),
                    "kernel_size": list(s.kernel_size),
                    "expand_ratio": list(s.expand_ratio),
                    "out_channels": list(s.out_channels),
                    "stride": s.stride,
                    "act": s.act,
                    "se": s.se,
                }
                for s in self.stages
            ],
            "feature_mix": None if self.feature_mix is None else {"out_channels": list(self.feature_mix.out_channels), "act": self.feature_mix.act},
            "aug_multiples": list(self.aug_multiples),
        }
        if self.seg_head is not None:
            h = self.seg_head
            d.update(schema_version=SCHEMA_VERSION, task=self.task,
                     seg_head={"skip_stage": h.skip_stage, "channels": list(h.channels), "act": h.act})
        return d

    def with_task(self, num_classes: int | None = None, resolution: int | None = None) -> "SearchSpace":
        d = self.to_dict()
        if num_classes is not None:
            d["num_classes"] = num_classes
        if resolution is not None:
            d["resolution"] = resolution
        return SearchSpace.from_dict(d)

    # ----------------------------------------------------------------------------- genomes
    # A genome is the flat dict of choices (labels ``stem_out``, ``s{i}_depth``, ``s{i}_out``,
    # ``s{i}_b{j}_ks``, ``s{i}_b{j}_e``, ``fm_out``). Block genes exist for every *possible*
    # block, so depth changes never lose the other genes (OFA does the same).
    def genes(self) -> dict[str, tuple]:
        g: dict[str, tuple] = {"stem_out": self.stem.out_channels}
        for i, s in enumerate(self.stages):
            g[f"s{i}_depth"] = s.depth
            g[f"s{i}_out"] = s.out_channels
            for j in range(max(s.depth)):
                g[f"s{i}_b{j}_ks"] = s.kernel_size
                g[f"s{i}_b{j}_e"] = s.expand_ratio
        if self.feature_mix is not None:
            g["fm_out"] = self.feature_mix.out_channels
        if self.seg_head is not None:
            g["head_ch"] = self.seg_head.channels
        return g

    def sample_genome(self, rng: random.Random) -> dict[str, Any]:
        return {k: rng.choice(v) for k, v in self.genes().items()}

    def decode(self, genome: dict[str, Any], name: str = "arch") -> Arch:
        """The multiplicative Arch of a genome (blocks beyond a stage's depth are ignored)."""
        genes = self.genes()
        for k, choices in genes.items():
            if k not in genome:
                raise ConfigError(f"genome.{k}", "<missing>", f"one of {list(choices)}")
            if genome[k] not in choices:
                raise ConfigError(f"genome.{k}", genome[k], f"allowed: {', '.join(map(str, choices))}")
        stages = []
        c = genome["stem_out"]
        for i, s in enumerate(self.stages):
            blocks = []
            for j in range(genome[f"s{i}_depth"]):
                e = genome[f"s{i}_b{j}_e"]
                mid = mid_channels(c, e)
                out = genome[f"s{i}_out"]
                blocks.append(
                    {
                        "kernel_size": genome[f"s{i}_b{j}_ks"],
                        "expand_ratio": e,
                        "mid_channels": mid,
                        "out_channels": out,
                        "stride": s.stride if j == 0 else 1,
                        "act": s.act,
                        "se_channels": se_channels(mid) if s.se else 0,
                    }
                )
                c = out
            stages.append({"blocks": blocks})
        return _arch_from_genes(name, self, genome, stages)

    def encode(self, arch: Arch) -> dict[str, Any]:
        """The genome of an arch of this space (raises ConfigError if it is not in the space)."""
        self.validate(arch)
        g: dict[str, Any] = {"stem_out": arch.stem.out_channels}
        for i, (s, st) in enumerate(zip(self.stages, arch.stages)):
            g[f"s{i}_depth"] = len(st.blocks)
            g[f"s{i}_out"] = st.blocks[0].out_channels
            for j in range(max(s.depth)):
                b = st.blocks[min(j, len(st.blocks) - 1)]  # genes past the depth: copy the last block
                g[f"s{i}_b{j}_ks"] = b.kernel_size
                g[f"s{i}_b{j}_e"] = _match(b.expand_ratio, s.expand_ratio)
        if self.feature_mix is not None:
            g["fm_out"] = arch.feature_mix.out_channels
        if self.seg_head is not None:
            g["head_ch"] = arch.seg_head.channels
        return g

    def sample(self, rng: random.Random, name: str = "sample") -> Arch:
        return self.decode(self.sample_genome(rng), name)

    def mutate_genome(self, genome: dict[str, Any], rng: random.Random, prob: float = 0.1) -> dict[str, Any]:
        out = dict(genome)
        for k, choices in self.genes().items():
            if rng.random() < prob:
                out[k] = rng.choice(choices)
        return out

    def crossover_genome(self, a: dict[str, Any], b: dict[str, Any], rng: random.Random) -> dict[str, Any]:
        return {k: (a[k] if rng.random() < 0.5 else b[k]) for k in self.genes()}

    def extreme_genome(self, largest: bool) -> dict[str, Any]:
        pick = max if largest else min
        return {k: pick(v) for k, v in self.genes().items()}

    def max_arch(self) -> Arch:
        return self.decode(self.extreme_genome(True), f"{self.name}-max")

    def min_arch(self) -> Arch:
        return self.decode(self.extreme_genome(False), f"{self.name}-min")

    @property
    def size(self) -> int:
        """Number of distinct architectures in the space."""
        total = len(self.stem.out_channels) * (len(self.feature_mix.out_channels) if self.feature_mix else 1)
        total *= len(self.seg_head.channels) if self.seg_head else 1
        for s in self.stages:
            per_block = len(s.kernel_size) * len(s.expand_ratio)
            total *= len(s.out_channels) * sum(per_block**d for d in s.depth)
        return total

    # ----------------------------------------------------------------------------- validation
    def validate(self, arch: Arch) -> None:
        """Raise ConfigError naming the first field of ``arch`` that lies outside this space."""
        if arch.resolution != self.resolution:
            raise ConfigError("arch.resolution", arch.resolution, f"the space {self.name!r} uses {self.resolution}")
        if len(arch.stages) != len(self.stages):
            raise ConfigError("arch.stages", f"<{len(arch.stages)} stages>", f"the space {self.name!r} has {len(self.stages)} stages")
        _in(arch.stem.out_channels, self.stem.out_channels, "arch.stem.out_channels")
        for name, want in (("kernel_size", self.stem.kernel_size), ("stride", self.stem.stride), ("act", self.stem.act)):
            if getattr(arch.stem, name) != want:
                raise ConfigError(f"arch.stem.{name}", getattr(arch.stem, name), f"the space fixes it to {want!r}")
        c = arch.stem.out_channels
        for i, (s, st) in enumerate(zip(self.stages, arch.stages)):
            w = f"arch.stages[{i}]"
            _in(len(st.blocks), s.depth, f"{w}.depth")
            for j, b in enumerate(st.blocks):
                bw = f"{w}.blocks[{j}]"
                _in(b.kernel_size, s.kernel_size, f"{bw}.kernel_size")
                e = _match(b.expand_ratio, s.expand_ratio, f"{bw}.expand_ratio")
                _in(b.out_channels, s.out_channels, f"{bw}.out_channels")
                if b.out_channels != st.blocks[0].out_channels:
                    raise ConfigError(f"{bw}.out_channels", b.out_channels, f"all blocks of a stage share its width ({st.blocks[0].out_channels})")
                want_stride = s.stride if j == 0 else 1
                if b.stride != want_stride:
                    raise ConfigError(f"{bw}.stride", b.stride, f"the space fixes it to {want_stride}")
                if b.mid_channels != mid_channels(c, e):
                    raise ConfigError(f"{bw}.mid_channels", b.mid_channels, f"the space derives it from the expand ratio: {mid_channels(c, e)}")
                if b.act != s.act:
                    raise ConfigError(f"{bw}.act", b.act, f"the space fixes it to {s.act!r}")
                want_se = se_channels(b.mid_channels) if s.se else 0
                if b.se_channels != want_se:
                    raise ConfigError(f"{bw}.se_channels", b.se_channels, f"the space gives {want_se}")
                c = b.out_channels
        if (arch.feature_mix is None) != (self.feature_mix is None):
            raise ConfigError("arch.feature_mix", arch.feature_mix, "must match the space (present or absent)")
        if self.feature_mix is not None:
            _in(arch.feature_mix.out_channels, self.feature_mix.out_channels, "arch.feature_mix.out_channels")
        if arch.post_pool is not None:
            raise ConfigError("arch.post_pool", arch.post_pool, "search spaces have no post-pool conv")
        if arch.task != self.task:
            raise ConfigError("arch.task", arch.task, f"the space {self.name!r} is for {self.task}")
        if self.seg_head is not None:
            h, sh = arch.seg_head, self.seg_head
            _in(h.channels, sh.channels, "arch.seg_head.channels")
            for name in ("skip_stage", "act"):
                if getattr(h, name) != getattr(sh, name):
                    raise ConfigError(f"arch.seg_head.{name}", getattr(h, name), f"the space fixes it to {getattr(sh, name)!r}")


def _in(v: Any, choices: tuple, field: str) -> None:
    if v not in choices:
        raise ConfigError(field, v, f"allowed by the space: {', '.join(map(str, choices))}")



def _arch_from_genes(name: str, frame, genome: dict[str, Any], stages: list[dict]) -> Arch:
    """An Arch with ``stages``, the stem / feature-mix widths of ``genome`` and everything else
    (resolution, classes, stem kernel, activations) from ``frame`` (a SearchSpace or an Arch:
    they name these fields alike)."""
    d = {
        "name": name,
        "resolution": frame.resolution,
        "num_classes": frame.num_classes,
        "in_channels": frame.in_channels,
        "stem": {"out_channels": genome["stem_out"], "kernel_size": frame.stem.kernel_size, "stride": frame.stem.stride, "act": frame.stem.act},
        "stages": stages,
        "feature_mix": None if frame.feature_mix is None else {"out_channels": genome["fm_out"], "act": frame.feature_mix.act},
    }
    if frame.seg_head is not None:
        d.update(schema_version=3, task=frame.task,
                 seg_head={"skip_stage": frame.seg_head.skip_stage, "channels": genome["head_ch"], "act": frame.seg_head.act})
    return Arch.from_dict(d, where=name)

def _match(e: float, choices: tuple[float, ...], field: str = "expand_ratio") -> float:
    for c in choices:
        if math.isclose(e, c, rel_tol=1e-6):
            return c
    raise ConfigError(field, e, f"allowed by the space: {', '.join(map(str, choices))}")


# --------------------------------------------------------------------------------------------
# parsing


def _list(d: dict, key: str, where: str, kind: type, allowed: tuple | None = None, lo: float = 1, hi: float = 1e6) -> tuple:
    v = d.get(key)
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        v = [v]
    if not isinstance(v, list) or not 1 <= len(v) <= MAX_CHOICES:
        raise ConfigError(f"{where}.{key}", v, f"expected a non-empty list of at most {MAX_CHOICES} {kind.__name__}s")
    out = []
    for x in v:
        # lo <= x <= hi before any float(): a huge integer would overflow it (NaN fails the comparison)
        ok = isinstance(x, (int, float)) and not isinstance(x, bool) and lo <= x <= hi
        if kind is int:
            ok = ok and float(x).is_integer()
        if not ok or (allowed is not None and x not in allowed):
            allowed_txt = f"allowed: {', '.join(map(str, allowed))}" if allowed else f"each a {kind.__name__} in [{lo:g}, {hi:g}]"
            raise ConfigError(f"{where}.{key}", x, allowed_txt)
        out.append(kind(x))
    if len(set(out)) != len(out):
        raise ConfigError(f"{where}.{key}", v, "choices must be distinct")
    return tuple(sorted(out))


def _scaled(channels: tuple[int, ...], mults: tuple[float, ...] | None, where: str = "out_channels") -> tuple[int, ...]:
    if not mults:
        return channels
    out = tuple(sorted({make_divisible(c * m, 8) for c in channels for m in mults}))
    if out[-1] > MAX_CHANNELS:
        raise ConfigError(where, out[-1], f"width_mult gives more than {MAX_CHANNELS} channels")
    return out


def _space_from_dict(d: Any, where: str) -> SearchSpace:
    check_keys(d, where, {"schema_version", "name", "resolution", "num_classes", "in_channels", "stem", "stages", "feature_mix",
                          "aug_multiples", "width_mult", "task", "seg_head"}, {"resolution", "stem", "stages"})
    sv = d.get("schema_version", SCHEMA_VERSION)
    if isinstance(sv, bool) or sv not in READS_SCHEMA_VERSIONS:
        raise ConfigError(f"{where}.schema_version", sv, f"this version reads {', '.join(map(str, READS_SCHEMA_VERSIONS))}")
    if sv < 2:
        for k in ("task", "seg_head"):
            if k in d:
                raise ConfigError(f"{where}.{k}", d[k], f"needs schema_version 2 (the file says {sv})")
    mults = _list(d, "width_mult", where, float, lo=0.01, hi=16) if "width_mult" in d else None
    res = d["resolution"]
    if isinstance(res, bool) or not isinstance(res, int) or not 8 <= res <= MAX_RESOLUTION:
        raise ConfigError(f"{where}.resolution", res, f"expected an integer in [8, {MAX_RESOLUTION}]")
    name = d.get("name", "space")
    if isinstance(name, (int, float)) and not isinstance(name, bool):
        name = str(name)  # YAML reads "name: 2024" as a number
    if not isinstance(name, str) or not name or len(name) > MAX_NAME:
        raise ConfigError(f"{where}.name", name, f"expected a non-empty string of at most {MAX_NAME} characters")
    in_ch = d.get("in_channels", 3)
    if isinstance(in_ch, bool) or not isinstance(in_ch, int) or not 1 <= in_ch <= MAX_CHANNELS:
        raise ConfigError(f"{where}.in_channels", in_ch, f"expected an integer in [1, {MAX_CHANNELS}]")

    def act(x: dict, w: str, default: str) -> str:
        a = x.get("act", default)
        if a not in ACTS:
            raise ConfigError(f"{w}.act", a, f"allowed: {', '.join(ACTS)}")
        return a

    sw = f"{where}.stem"
    st = check_keys(d["stem"], sw, {"out_channels", "kernel_size", "stride", "act"}, {"out_channels"})
    ks = st.get("kernel_size", 3)
    if ks not in (1, 3, 5, 7):
        raise ConfigError(f"{sw}.kernel_size", ks, "allowed: 1, 3, 5, 7")
    stride = st.get("stride", 2)
    if stride not in (1, 2):
        raise ConfigError(f"{sw}.stride", stride, "allowed: 1, 2")
    stem = HeadChoices(_scaled(_list(st, "out_channels", sw, int, hi=MAX_CHANNELS), mults, f"{sw}.out_channels"), ks, stride,
                       act(st, sw, "relu6"))
    if not isinstance(d["stages"], list) or not 1 <= len(d["stages"]) <= MAX_STAGES:
        raise ConfigError(f"{where}.stages", d["stages"], f"expected a non-empty list of at most {MAX_STAGES} stages")
    stages = []
    for i, s in enumerate(d["stages"]):
        w = f"{where}.stages[{i}]"
        check_keys(s, w, {"depth", "kernel_size", "expand_ratio", "out_channels", "stride", "act", "se"}, {"depth", "kernel_size", "expand_ratio", "out_channels"})
        stride = s.get("stride", 1)
        if stride not in (1, 2):
            raise ConfigError(f"{w}.stride", stride, "allowed: 1, 2")
        se = s.get("se", False)
        if not isinstance(se, bool):
            raise ConfigError(f"{w}.se", se, "expected true or false")
        stages.append(
            StageChoices(
                depth=_list(s, "depth", w, int, hi=MAX_BLOCKS),
                kernel_size=_list(s, "kernel_size", w, int, allowed=(3, 5, 7)),
                expand_ratio=_list(s, "expand_ratio", w, float, lo=1, hi=MAX_EXPAND),
                out_channels=_scaled(_list(s, "out_channels", w, int, hi=MAX_CHANNELS), mults, f"{w}.out_channels"),
                stride=stride,
                act=act(s, w, "relu6"),
                se=se,
            )
        )
    fm = None
    if d.get("feature_mix") is not None:
        fw = f"{where}.feature_mix"
        f = check_keys(d["feature_mix"], fw, {"out_channels", "act"}, {"out_channels"})
        fm = HeadChoices(_scaled(_list(f, "out_channels", fw, int, hi=MAX_CHANNELS), mults, f"{fw}.out_channels"), 1, 1,
                         act(f, fw, "relu6"))
    aug = _list(d, "aug_multiples", where, float, lo=1, hi=100) if "aug_multiples" in d else (2.2, 2.4, 2.8, 3.2)
    ncls = d.get("num_classes", 10)
    if isinstance(ncls, bool) or not isinstance(ncls, int) or not 1 <= ncls <= MAX_CLASSES:
        raise ConfigError(f"{where}.num_classes", ncls, f"expected an integer in [1, {MAX_CLASSES}]")
    task = d.get("task", "classification")
    if task not in TASKS:
        raise ConfigError(f"{where}.task", task, f"allowed: {', '.join(TASKS)}")
    seg_head = None
    if task == "segmentation":
        hw = f"{where}.seg_head"
        h = check_keys(d.get("seg_head"), hw, {"skip_stage", "channels", "act"}, {"skip_stage", "channels"})
        skip = h["skip_stage"]
        if isinstance(skip, bool) or not isinstance(skip, int) or not 0 <= skip < len(stages):
            raise ConfigError(f"{hw}.skip_stage", skip, f"a stage index in 0..{len(stages) - 1}")
        seg_head = SegHeadChoices(skip, _scaled(_list(h, "channels", hw, int, hi=MAX_CHANNELS), mults, f"{hw}.channels"), act(h, hw, "relu"))
        total = stem.stride
        for s in stages:
            total *= s.stride
        if res % total:
            raise ConfigError(f"{where}.resolution", res, f"a segmentation space needs a multiple of its total stride {total}")
    elif d.get("seg_head") is not None:
        raise ConfigError(f"{where}.seg_head", d["seg_head"], "only with task: segmentation")
    space = SearchSpace(
        name=name,
        resolution=res,
        stem=stem,
        stages=tuple(stages),
        feature_mix=fm,
        aug_multiples=aug,
        num_classes=ncls,
        in_channels=in_ch,
        task=task,
        seg_head=seg_head,
    )
    c = max(stem.out_channels)  # the widest block input: the largest mid width must stay in bounds
    for i, s in enumerate(space.stages):
        for c_in in (c, max(s.out_channels)):
            if mid_channels(c_in, max(s.expand_ratio)) > MAX_CHANNELS:
                raise ConfigError(f"{where}.stages[{i}].expand_ratio", max(s.expand_ratio),
                                  f"with {c_in} input channels the mid width exceeds {MAX_CHANNELS} channels")
        c = max(s.out_channels)
    # the largest stride pattern must fit the resolution (Arch validation names the stage)
    size = conv_out_size(res, stem.kernel_size, stem.stride)
    for i, s in enumerate(space.stages):
        if s.stride == 2 and size < 2:
            raise ConfigError(f"{where}.stages[{i}].stride", 2, f"the feature map is already {size}x{size} at resolution {res}")
        size = conv_out_size(size, 3, s.stride)
    return space


class TargetSpace:
    """The TargetNets that can be cut out of a SubNet (NAS stage two, docs/method-notes.md, section 6).

    A TargetNet keeps each stage's first block of the SubNet and any subset of its other blocks
    (the genes ``s{i}_b{j}_keep``), and may narrow every width and expand ratio to a choice of the
    space no larger than the SubNet's. Kernels are the SubNet's, so one stored weight serves both.
    ``decode`` returns the multiplicative TargetNet and its block indices inside the SubNet.
    """

    def __init__(self, space: SearchSpace, subnet: Arch):
        space.validate(subnet)
        self.space, self.subnet = space, subnet
        g: dict[str, tuple] = {"stem_out": tuple(c for c in space.stem.out_channels if c <= subnet.stem.out_channels)}
        for i, (sc, st) in enumerate(zip(space.stages, subnet.stages)):
            g[f"s{i}_out"] = tuple(c for c in sc.out_channels if c <= st.blocks[0].out_channels)
            for j, b in enumerate(st.blocks):
                if j > 0:
                    g[f"s{i}_b{j}_keep"] = (0, 1)
                g[f"s{i}_b{j}_e"] = tuple(e for e in sc.expand_ratio if e <= b.expand_ratio + 1e-9)
        if space.feature_mix is not None:
            g["fm_out"] = tuple(c for c in space.feature_mix.out_channels if c <= subnet.feature_mix.out_channels)
        if space.seg_head is not None:
            g["head_ch"] = tuple(c for c in space.seg_head.channels if c <= subnet.seg_head.channels)
        self._genes = g

    def genes(self) -> dict[str, tuple]:
        return dict(self._genes)

    def sample_genome(self, rng: random.Random) -> dict[str, Any]:
        return {k: rng.choice(v) for k, v in self._genes.items()}

    def extreme_genome(self, largest: bool) -> dict[str, Any]:
        pick = max if largest else min
        return {k: pick(v) for k, v in self._genes.items()}

    def decode(self, genome: dict[str, Any], name: str = "target") -> tuple[Arch, list[list[int]]]:
        for k, choices in self._genes.items():
            if genome.get(k) not in choices:
                raise ConfigError(f"target.{k}", genome.get(k, "<missing>"), f"allowed: {', '.join(map(str, choices))}")
        stages, blocks_idx = [], []
        c = genome["stem_out"]
        for i, st in enumerate(self.subnet.stages):
            out = genome[f"s{i}_out"]
            blocks, idx = [], []
            for j, b in enumerate(st.blocks):
                if j > 0 and not genome[f"s{i}_b{j}_keep"]:
                    continue
                e = genome[f"s{i}_b{j}_e"]
                mid = mid_channels(c, e)
                blocks.append({"kernel_size": b.kernel_size, "expand_ratio": e, "mid_channels": mid, "out_channels": out,
                               "stride": b.stride, "act": b.act, "se_channels": se_channels(mid) if b.se_channels else 0})
                idx.append(j)
                c = out
            stages.append({"blocks": blocks})
            blocks_idx.append(idx)
        return _arch_from_genes(name, self.subnet, genome, stages), blocks_idx

    def encode(self, target: Arch, blocks: list[list[int]]) -> dict[str, Any]:
        """The genome of a TargetNet given with its block indices (inverse of ``decode``)."""
        g: dict[str, Any] = {"stem_out": target.stem.out_channels}
        for i, (st, idx) in enumerate(zip(target.stages, blocks)):
            g[f"s{i}_out"] = st.blocks[0].out_channels
            kept = dict(zip(idx, st.blocks))
            for j in range(len(self.subnet.stages[i].blocks)):
                if j > 0:
                    g[f"s{i}_b{j}_keep"] = int(j in kept)
                g[f"s{i}_b{j}_e"] = _match(kept[j].expand_ratio, self.space.stages[i].expand_ratio) if j in kept else min(self._genes[f"s{i}_b{j}_e"])
        if self.subnet.feature_mix is not None:
            g["fm_out"] = target.feature_mix.out_channels
        if self.subnet.seg_head is not None:
            g["head_ch"] = target.seg_head.channels
        return g
