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

import random
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from nas.errors import ConfigError
from nas.finite import check_losses, check_weights
from nas.io import atomic_write_json, load_checkpoint, save_checkpoint
from nas.space import SearchSpace, TargetSpace
from nas.supernet.net import DynamicNet
from nas.train.trainer import _py_state, _py_unstate, cosine_lr, param_groups

SUPERNET_VERSION = 1


def distill_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Soft cross-entropy towards the largest network's predictions (OFA's in-place KD)."""
    return -(F.softmax(teacher, 1) * F.log_softmax(student, 1)).sum(1).mean()


class SupernetTrainer:
    def __init__(self, space: SearchSpace, op: str, loaders, out: str | Path, epochs: int = 4, lr: float = 0.05,
                 seed: int = 0, remap: str = "cdf-fc", op_options: dict | None = None, weight_decay: float = 4e-5,
                 label_smoothing: float = 0.1, progress: bool = True):
        if op not in ("shift", "add", "mult"):
            raise ConfigError("op", op, "allowed: shift, add, mult")
        self.space, self.op, self.loaders, self.out = space, op, loaders, Path(out)
        self.epochs, self.lr, self.seed, self.progress = epochs, lr, seed, progress
        self.label_smoothing = label_smoothing
        torch.manual_seed(seed)
        self.net = DynamicNet(space.max_arch(), remap=remap, op_options=op_options)
        self.optimizer = torch.optim.SGD(param_groups(self.net, weight_decay), lr=lr, momentum=0.9, nesterov=True)
        self.rng = random.Random(seed + 2)
        self.steps_per_epoch = len(loaders.train)
        self.total_steps = epochs * self.steps_per_epoch
        self.warmup = min(self.steps_per_epoch, self.total_steps // 4)
        self.epoch = 0
        self.global_step = 0
        self.largest = space.max_arch()
        smallest = space.min_arch()
        t, tb = TargetSpace(space, smallest).decode(TargetSpace(space, smallest).extreme_genome(False), "smallest")
        self.smallest = (t.with_ops(op), tb)
        # data-parallel hooks, set only by nas.search.ray_adapter (Ray Train); None / True is the local path
        self.shard = None  # (x, y) -> this rank's part of the batch
        self.grad_sync = None  # net -> None: gradients (and BN statistics) made equal on every rank
        self.is_writer = True  # only rank 0 writes the checkpoint and the log
        self.on_epoch = None  # row -> None, after each epoch (ray.train.report)

    # ------------------------------------------------------------------------------ steps
    def sample_pair(self):
        """A random SubNet and a random TargetNet (with the search's MF operator) cut from it."""
        sub = self.space.sample(self.rng, "subnet")
        ts = TargetSpace(self.space, sub)
        target, blocks = ts.decode(ts.sample_genome(self.rng))
        return sub, target.with_ops(self.op), blocks

    def train_step(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        if self.shard is not None:  # distributed: this rank's samples of the batch
            x, y = self.shard(x, y)
        net = self.net
        lr = cosine_lr(self.global_step, self.total_steps, self.warmup, self.lr)
        for g in self.optimizer.param_groups:
            g["lr"] = lr * g["lr_scale"]
        self.optimizer.zero_grad(set_to_none=True)
        net.set_active_subnet(self.largest)
        logits = net(x)
        F.cross_entropy(logits, y, label_smoothing=self.label_smoothing).backward()
        soft = logits.detach()
        sub, target, blocks = self.sample_pair()
        net.set_active_subnet(sub, target=target, target_blocks=blocks)
        distill_loss(net(x), soft).backward()
        net.set_active_subnet(target, blocks)
        t_logits = net(x)
        loss_t = distill_loss(t_logits, soft)
        loss_t.backward()
        net.set_active_subnet(*self.smallest)
        distill_loss(net(x), soft).backward()
        check_losses(net, {"loss_largest": F.cross_entropy(logits.detach(), y).item(), "loss_target": loss_t.item()}, x,
                     f"supernet epoch {self.epoch + 1}, step {self.global_step + 1}")
        if self.grad_sync is not None:  # distributed: average gradients across ranks
            self.grad_sync(net)
        self.optimizer.step()
        self.global_step += 1
        return {"loss_largest": F.cross_entropy(logits.detach(), y).item(), "loss_target": loss_t.item(),
                "acc_largest": (logits.argmax(1) == y).float().mean().item()}

    # ------------------------------------------------------------------------------ state
    def state_dict(self) -> dict:
        return {
            "version": SUPERNET_VERSION,
            "space": self.space.to_dict(),
            "op": self.op,
            "model": self.net.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "epoch": self.epoch,
            "global_step": self.global_step,
            "rng": {"torch": torch.get_rng_state(), "sampler": _py_state(self.rng), "loader": self.loaders.train.state_dict()},
        }

    def load_state_dict(self, sd: dict) -> None:
        if sd.get("version") != SUPERNET_VERSION or sd.get("op") != self.op:
            raise ConfigError("supernet checkpoint", f"version {sd.get('version')}, op {sd.get('op')}", f"version {SUPERNET_VERSION}, op {self.op}")
        self.net.load_state_dict(sd["model"])
        self.optimizer.load_state_dict(sd["optimizer"])
        self.epoch, self.global_step = sd["epoch"], sd["global_step"]
        torch.set_rng_state(sd["rng"]["torch"])
        self.rng.setstate(_py_unstate(sd["rng"]["sampler"]))
        self.loaders.train.load_state_dict(sd["rng"]["loader"])

    def fit(self, checkpoint: Path, log: Path | None = None) -> None:
        from tqdm import tqdm

        if checkpoint.is_file():
            load_checkpoint(checkpoint, apply=self.load_state_dict)  # falls back to the previous checkpoint
        rows = []
        if log is not None and log.is_file():
            import json

            rows = [r for r in json.loads(log.read_text())["epochs"] if r["epoch"] <= self.epoch]
        for epoch in range(self.epoch, self.epochs):
            self.loaders.train.set_epoch(epoch)
            self.net.train()
            t0 = time.time()
            sums: dict[str, float] = {}
            bar = tqdm(self.loaders.train, total=self.steps_per_epoch, desc=f"supernet {epoch + 1}/{self.epochs}",
                       disable=not self.progress, leave=False, dynamic_ncols=True)
            for x, y in bar:
                stats = self.train_step(x, y)
                for k, v in stats.items():
                    sums[k] = sums.get(k, 0.0) + v
                bar.set_postfix(largest=f"{100 * stats['acc_largest']:.0f}%", target=f"{stats['loss_target']:.2f}")
            bar.close()
            self.epoch = epoch + 1
            if self.is_writer:
                check_weights(self.net, f"supernet epoch {self.epoch}")  # never checkpoint a diverged network
                save_checkpoint(self.state_dict(), checkpoint)  # keeps the previous one too
            rows.append({"epoch": self.epoch, "time_s": round(time.time() - t0, 1), **{k: round(v / self.steps_per_epoch, 4) for k, v in sums.items()}})
            if log is not None and self.is_writer:
                atomic_write_json(log, {"epochs": rows})
            if self.on_epoch is not None:
                self.on_epoch(rows[-1])
