"""Hybrid supernet training: once-for-all weights for every SubNet and every TargetNet cut from it.

Every step follows the sandwich rule with in-place distillation (BigNAS / OFA):

1. the largest network of the space, multiplicative, learns from the labels; its logits become
   the soft targets of the step;
2. a random SubNet S runs in the hybrid configuration around a random TargetNet T cut from it
   (``TargetSpace``): T's channels with T's MF operator on remapped weights, the rest
   multiplicative: the ShiftAddAug augmented pass;
3. that TargetNet T runs alone with its MF operator: the ShiftAddAug target pass;
4. the smallest TargetNet of the space (MF) closes the sandwich.

Passes 2-4 distil from pass 1. Gradients of the four passes accumulate, then one optimizer step.
So the stored weights serve the multiplicative SubNets of stage one and the MF TargetNets of
stage two. Checkpoints hold everything needed to resume bit-for-bit (as ``nas.train.trainer``).
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from nas.errors import ConfigError
from nas.io import atomic_write_json
from nas.ops.registry import get_kind
from nas.space import SearchSpace, TargetSpace
from nas.supernet.net import DynamicNet
from nas.train.distributed import Distributed
from nas.train.loop import TrainLoop

if TYPE_CHECKING:  # pragma: no cover
    from nas.arch import Arch
    from nas.data.loader import Loaders

SUPERNET_VERSION = 2


def distill_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Soft cross-entropy towards the largest network's predictions (OFA's in-place KD)."""
    return -(F.softmax(teacher, 1) * F.log_softmax(student, 1)).sum(1).mean()


class SupernetTrainer(TrainLoop):
    """Sandwich-rule training of the hybrid supernet of a space on the shared ``TrainLoop`` (module docstring)."""

    checkpoint_version = SUPERNET_VERSION
    desc = "supernet"

    def __init__(self, space: SearchSpace, op: str, loaders: Loaders, out: str | Path, epochs: int = 4, lr: float = 0.05,
                 seed: int = 0, remap: str = "cdf-fc", op_options: dict | None = None, weight_decay: float = 4e-5,
                 label_smoothing: float = 0.1, progress: bool = True, device: str | torch.device | None = "cpu",
                 precision: str = "fp32", dist: Distributed | None = None, branch_norm: bool = True,
                 momentum: float = 0.9, remap_lr_scale: float = 0.01, kl_weight: float = 10.0,
                 background_weight: float = 1.0):
        get_kind(op)  # a registered operator kind, or a ConfigError naming them
        steps = len(loaders.train)
        super().__init__(loaders, epochs=epochs, lr=lr, warmup_steps=min(steps, epochs * steps // 4), seed=seed,
                         weight_decay=weight_decay, momentum=momentum, remap_lr_scale=remap_lr_scale, device=device,
                         precision=precision, dist=dist, progress=progress)
        from nas.train.tasks import task_of

        self.space, self.op, self.out = space, op, Path(out)
        self.label_smoothing, self.kl_weight = label_smoothing, kl_weight
        self.background_weight = background_weight  # segmentation: the largest network's loss (the others distil from it)
        self.task = task_of(space.task)  # segmentation: per-pixel loss (distillation is per pixel as it is)
        # branch_norm: the hybrid pass (2.) is ShiftAddAug's augmented pass, rescaled as in training
        self.setup_model(lambda: DynamicNet(space.max_arch(), remap=remap, op_options=op_options, branch_norm=branch_norm))
        self.py_rngs["sampler"] = random.Random(seed + 2)
        self.largest = space.max_arch()
        smallest = space.min_arch()
        t, tb = TargetSpace(space, smallest).decode(TargetSpace(space, smallest).extreme_genome(False), "smallest")
        self.smallest = (t.with_ops(op), tb)
        self.log_path: Path | None = None

    @property
    def rng(self) -> random.Random:
        return self.py_rngs["sampler"]

    # ------------------------------------------------------------------------------ steps
    def sample_pair(self) -> tuple[Arch, Arch, list[list[int]]]:
        """A random SubNet and a random TargetNet (with the search's MF operator) cut from it."""
        sub = self.space.sample(self.rng, "subnet")
        ts = TargetSpace(self.space, sub)
        target, blocks = ts.decode(ts.sample_genome(self.rng))
        return sub, target.with_ops(self.op), blocks

    def train_step(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        net = self.net
        net.set_active_subnet(self.largest)
        logits, _ = self.forward_backward(x, lambda out: self.task.loss(out, y, self.label_smoothing, self.background_weight),
                                          last=False)
        soft = logits.detach()
        sub, target, blocks = self.sample_pair()
        self.samples.append((sub.arch_id, target.arch_id, blocks))
        net.set_active_subnet(sub, target=target, target_blocks=blocks)
        self.forward_backward(x, lambda out: self._distill(out, soft), last=False)
        net.set_active_subnet(target, blocks)
        _, loss_t = self.forward_backward(x, lambda out: self._distill(out, soft), last=False)
        net.set_active_subnet(*self.smallest)
        self.forward_backward(x, lambda out: self._distill(out, soft), last=True)
        logits = logits.detach().float()
        return {"loss_largest": self.task.loss(logits, y, 0.0, self.background_weight).item(), "loss_target": loss_t.item(),
                "acc_largest": self.task.batch_acc(logits, y)}

    def _distill(self, out: torch.Tensor, soft: torch.Tensor) -> torch.Tensor:
        """Distillation loss of an MF pass, plus the remap's regulariser (``pwl-kl``) as in training."""
        loss, reg = distill_loss(out, soft), self.net.regularizer()
        return loss if reg is None else loss + self.kl_weight * reg

    def postfix(self, stats: dict[str, float]) -> dict[str, str]:
        return {"largest": f"{100 * stats['acc_largest']:.0f}%", "target": f"{stats['loss_target']:.2f}"}

    # ------------------------------------------------------------------------------ state
    def extra_state(self) -> dict:
        return {"space": self.space.to_dict(), "op": self.op}

    def check_state(self, sd: dict) -> dict:
        if sd.get("version") == 1:  # written before the shared training loop: epoch and step at the top level
            sd = {**sd, "version": 2, "schedule": {"epoch": sd["epoch"], "global_step": sd["global_step"]}}
        if sd.get("version") != SUPERNET_VERSION or sd.get("op") != self.op:
            raise ConfigError("supernet checkpoint", f"version {sd.get('version')}, op {sd.get('op')}", f"version {SUPERNET_VERSION}, op {self.op}")
        return sd

    # ------------------------------------------------------------------------------ the run
    def end_epoch(self, means: dict[str, float], seconds: float) -> dict:
        return {"epoch": self.epoch, "time_s": round(seconds, 1), **{k: round(v, 4) for k, v in means.items()}}

    def write_logs(self, row: dict) -> None:
        if self.log_path is not None and self.dist.is_writer:
            atomic_write_json(self.log_path, {"epochs": self.history})

    def fit(self, checkpoint: Path, log: Path | None = None) -> None:
        """Train to the last epoch, continuing from ``checkpoint`` when it exists; one checkpoint
        and one row of ``log`` per epoch."""
        self.checkpoint_path, self.log_path = Path(checkpoint), log
        self.load_checkpoint()
        if self.epoch and not self.history and log is not None and log.is_file() and self.dist.is_writer:
            # a checkpoint from before the loop kept its history
            self.history = [r for r in json.loads(log.read_text())["epochs"] if r["epoch"] <= self.epoch]
        self.train_epochs()
