"""What ShiftAddAug trains: a TargetNet inside an augmented network, and how that changes over time.

* ``Augmenter`` samples the augmented network of each step (NetAug; docs/method-notes.md, section 5.2): every
  stage's width is the SubNet's times a factor from ``width_mults`` (width augmentation stops at
  ``stop_width`` of training, NetAug's ``min_w`` phase), every block's mid width the SubNet's
  expand ratio times a factor from ``expand_mults`` applied to its (augmented) input width, and
  blocks of the SubNet that the TargetNet skips (augmented depth) run only in this pass; with
  ``depth_decay`` each of them is kept with probability ``1 - progress``, so the extra depth is
  removed progressively (docs/method-notes.md, section 5.3).
* ``MutationSchedule`` is block mutation: the TargetNet's layers start multiplicative and are
  converted to their MF operator one unit at a time (stem, each block, head) over the first
  ``fraction`` of training, from the input side. The stored weight is remapped from the moment
  of conversion on (the remap sits in every MF forward).

The SubNet is the depth-augmented network from NAS stage one; for a zoo model it is the model
itself plus ``aug_depth`` extra stride-1 blocks per stage (``subnet_for``).
"""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass

from nas.arch import Arch, StageSpec, make_divisible
from nas.errors import ConfigError


@dataclass(frozen=True)
class AugSpec:
    """Augmentation settings: width and expand factors, when width augmentation stops, whether extra depth decays."""

    width_mults: tuple[float, ...] = (1.0, 1.8, 2.6)
    expand_mults: tuple[float, ...] = (1.0, 1.6, 2.2, 2.8)
    stop_width: float = 0.5
    depth_decay: bool = True

    def __post_init__(self):
        for name in ("width_mults", "expand_mults"):
            v = getattr(self, name)
            if not v or any((not isinstance(x, (int, float))) or x < 1 for x in v):
                raise ConfigError(f"aug.{name}", list(v), "a non-empty list of factors >= 1")
        if not 0 <= self.stop_width <= 1:
            raise ConfigError("aug.stop_width", self.stop_width, "a fraction of training in [0, 1]")


def subnet_for(target: Arch, aug_depth: int = 0) -> tuple[Arch, list[list[int]]]:
    """A SubNet for a stand-alone TargetNet: the target plus ``aug_depth`` extra blocks per stage.

    Extra blocks copy the stage's last block with stride 1 and an identity shortcut. Returns the
    multiplicative SubNet and the target's block indices inside it.
    """
    if aug_depth < 0:
        raise ConfigError("aug_depth", aug_depth, "expected an integer >= 0")
    stages, tblocks = [], []
    for st in target.stages:
        last = st.blocks[-1]
        extra = dataclasses.replace(last, stride=1, shortcut=True)
        if last.expand_ratio == 1:  # no expand conv: the mid width is the (new) input width
            extra = dataclasses.replace(extra, mid_channels=last.out_channels)
        stages.append(StageSpec(tuple(st.blocks) + (extra,) * aug_depth))
        tblocks.append(list(range(len(st.blocks))))
    sub = target.replace(stages=tuple(stages), name=f"{target.name}-subnet").with_ops("mult")
    return Arch.from_dict(sub.to_dict()), tblocks


class Augmenter:
    """Samples augmented networks around a TargetNet inside a SubNet (see module docstring)."""

    def __init__(self, target: Arch, target_blocks: list[list[int]], subnet: Arch, spec: AugSpec = AugSpec()):
        self.target, self.target_blocks, self.subnet, self.spec = target, target_blocks, subnet, spec
        tset = [set(b) for b in target_blocks]
        self.extra = [[j for j in range(len(st.blocks)) if j not in tset[i]] for i, st in enumerate(subnet.stages)]
        self.max_arch = self._build(max(spec.width_mults), lambda: max(spec.expand_mults), None)

    def _build(self, w: float, e_mult, keep_extra) -> tuple[Arch, list[list[int]]] | Arch:
        s = self.subnet
        d = s.to_dict()
        d["name"] = f"{s.name}-aug"

        def widen(c: int, mult: float) -> int:
            return max(c, make_divisible(c * mult, 8)) if mult != 1 else c

        d["stem"]["out_channels"] = widen(s.stem.out_channels, w)
        c = d["stem"]["out_channels"]
        blocks_idx = []
        stages = []
        for i, st in enumerate(s.stages):
            out = widen(st.blocks[0].out_channels, w)
            kept, idx = [], []
            for j, b in enumerate(st.blocks):
                if keep_extra is not None and j in self.extra[i] and not keep_extra():
                    continue
                bd = dataclasses.asdict(b)
                bd["out_channels"] = out
                if b.expand_ratio == 1:
                    bd["mid_channels"] = c
                else:
                    mid = make_divisible(round(c * (b.mid_channels / _in_channels(s, i, j)) * e_mult()), 8)
                    bd["mid_channels"] = max(mid, b.mid_channels)
                if b.se_channels:
                    bd["se_channels"] = max(b.se_channels, make_divisible(bd["mid_channels"] // 4, 8))
                bd["shortcut"] = b.shortcut and c == out  # widened input and output stay equal or the shortcut goes
                kept.append(bd)
                idx.append(j)
                c = out
            stages.append({"blocks": kept})
            blocks_idx.append(idx)
        d["stages"] = stages
        for head in ("feature_mix", "post_pool"):
            if d[head] is not None:
                d[head]["out_channels"] = widen(d[head]["out_channels"], w)
        if s.seg_head is not None:  # the segmentation head's hidden channels widen with the stages
            d["seg_head"]["channels"] = widen(s.seg_head.channels, w)
        arch = Arch.from_dict(d)
        if keep_extra is None:
            return arch
        return arch, blocks_idx

    def sample(self, rng: random.Random, progress: float) -> tuple[Arch, list[list[int]]]:
        """An augmented network for a step at ``progress`` (fraction of training done)."""
        sp = self.spec
        w = 1.0 if progress >= sp.stop_width else rng.choice(sp.width_mults)
        keep_p = max(0.0, 1.0 - progress) if sp.depth_decay else 1.0
        return self._build(w, lambda: rng.choice(sp.expand_mults), lambda: rng.random() < keep_p)


def _in_channels(arch: Arch, i: int, j: int) -> int:
    if j > 0:
        return arch.stages[i].blocks[j - 1].out_channels
    if i > 0:
        return arch.stages[i - 1].blocks[-1].out_channels
    return arch.stem.out_channels


class MutationSchedule:
    """Block mutation: which TargetNet units compute with their MF operator at a given progress."""

    def __init__(self, target: Arch, fraction: float):
        if not 0 <= fraction < 1:
            raise ConfigError("mutation", fraction, "a fraction of training in [0, 1)")
        self.target, self.fraction = target, fraction
        self.units = ["stem"] + [(i, j) for i, j, _ in target.blocks()] + ["head"]

    def converted(self, progress: float) -> int:
        if self.fraction == 0:
            return len(self.units)
        # unit k converts at progress k / len(units) * fraction: the stem at step 0
        return min(len(self.units), int(progress / self.fraction * len(self.units)) + 1)

    def target_at(self, progress: float) -> Arch:
        n = self.converted(progress)
        if n >= len(self.units):
            return self.target
        done = set(self.units[:n])
        t = self.target
        stem = t.stem if "stem" in done else dataclasses.replace(t.stem, op="mult")
        stages = tuple(
            StageSpec(tuple(b if (i, j) in done else dataclasses.replace(b, op="mult", dw_op="mult", se_op="mult") for j, b in enumerate(st.blocks)))
            for i, st in enumerate(t.stages)
        )
        fm = t.feature_mix if t.feature_mix is None or "head" in done else dataclasses.replace(t.feature_mix, op="mult")
        pp = t.post_pool if t.post_pool is None or "head" in done else dataclasses.replace(t.post_pool, op="mult")
        sh = t.seg_head if t.seg_head is None or "head" in done else dataclasses.replace(t.seg_head, op="mult", gate_op="mult")
        return t.replace(stem=stem, stages=stages, feature_mix=fm, post_pool=pp, seg_head=sh)
