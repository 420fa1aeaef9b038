"""ShiftAddAug training: a TargetNet trained inside an augmented multiplicative network.

One ``Trainer`` runs all the recipes the paper's ablations need, chosen by ``TrainConfig.aug``:

* ``none``: direct training of the TargetNet (MF training, or plain training for ``op=mult``);
* ``netaug``: NetAug; the augmented part computes with the TargetNet's own operator
  ("NetAug with MF augmentation");
* ``shiftaddaug``: the augmented part computes with multiplication (hybrid computation), plus
  block mutation and, with ``aug_depth`` or a NAS SubNet, augmented depth.

Each step is NetAug's two-pass step (method.md section 4.1): the target pass and one sampled
augmented pass each run forward and backward, then one optimizer step (alpha = 1). ``remap`` and
``aug`` are independent flags, so the 2x2 grid reviewers asked for is two command lines.

A run directory holds ``config.json`` (the resolved config), ``checkpoint.pt`` (model, optimizer,
schedule position, RNG and loader states; written atomically every epoch), ``metrics.csv``,
``curves.png``, ``summary.json`` and the exported TargetNet under ``target/``. ``resume`` continues
the same run: the schedule is a pure function of the global step, and every random stream
(weights init, data order and augmentation, augmented-network sampling) is restored.
"""

from __future__ import annotations

import csv
import dataclasses
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from nas.arch import Arch
from nas.errors import ConfigError
from nas.finite import check_losses, check_weights
from nas.io import atomic_savefig, atomic_write_json, atomic_write_text, save_checkpoint
from nas.rundir import check_config_hash, config_hash, heal_csv, read_run_config
from nas.supernet.net import DynamicNet, sort_channels
from nas.train.augment import Augmenter, AugSpec, MutationSchedule, subnet_for
from nas.train.bn import reset_bn

AUG_KINDS = ("none", "netaug", "shiftaddaug")
CHECKPOINT_VERSION = 1


@dataclass
class TrainConfig:
    """Everything that defines a training run (saved as ``config.json``)."""

    # the network
    model: str | None = "mbv2-tiny"
    arch: str | None = None  # path to an Arch JSON / net.config, instead of model
    op: str = "shift"
    resolution: int | None = None  # default: the dataset's native size (32 for mnist5k / CIFAR)
    # the method
    aug: str = "shiftaddaug"
    remap: str = "cdf-fc"
    hybrid: str = "mf"  # method.md A1: target channels of the augmented pass with MF ("mf") or mult
    # rescale the multiplicative partial sums of target channels to the MF ones in the augmented
    # pass (method.md A2): AddConv partial sums are orders of magnitude larger; measured on
    # mbv2-tiny add, 3 epochs: 41.6% test accuracy without, 53.0% with (no change for shift)
    branch_norm: bool = True
    aug_depth: int = 0
    width_mults: tuple[float, ...] = (1.0, 1.8, 2.6)
    expand_mults: tuple[float, ...] = (1.0, 1.6, 2.2, 2.8)
    stop_width: float = 0.5
    depth_decay: bool = True
    mutation: float | None = None  # fraction of training for block mutation; None: 1/3 for shiftaddaug
    sort_channels: bool = True
    kl_weight: float = 10.0  # pwl-kl regulariser weight (ShiftAddNAS)
    remap_lr_scale: float = 0.01  # learning rate of the remap's learnable part, relative to lr
    weight_bits: int = 5
    # AdderNet's adaptive gradient scale for add layers; None turns it off. AdderNet uses 0.2 with
    # 400-epoch CIFAR schedules; on short schedules 0.2 barely moves deep adder layers (an Add
    # MobileNetV2-Tiny stays at chance for 3 epochs on mnist5k), 1.0 trains them.
    eta: float | None = 1.0
    # data
    dataset: str = "mnist5k"
    data_root: str | None = None
    batch_size: int = 64
    workers: int = 0
    max_train_images: int | None = None
    bn_images: int = 2000
    # optimisation
    epochs: int = 10
    warmup_epochs: float = 1.0
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 4e-5
    label_smoothing: float = 0.1
    seed: int = 0
    # set by the search: the SubNet of stage one, the TargetNet of stage two (multiplicative Arch
    # dicts; ``op`` is applied) with its block indices in the SubNet, and a supernet checkpoint
    # whose weights the run starts from
    subnet: dict | None = None
    target_arch: dict | None = None
    target_blocks: list[list[int]] | None = None
    inherit: str | None = None

    def validate(self) -> "TrainConfig":
        from nas.ops.remap import REMAP_KINDS

        def check(name, ok, allowed):
            if not ok:
                raise ConfigError(name, getattr(self, name), allowed)

        check("op", self.op in ("mult", "shift", "add"), "allowed: mult, shift, add")
        check("aug", self.aug in AUG_KINDS, f"allowed: {', '.join(AUG_KINDS)}")
        check("remap", self.remap in REMAP_KINDS, f"allowed: {', '.join(REMAP_KINDS)}")
        check("hybrid", self.hybrid in ("mf", "mult"), "allowed: mf, mult")
        check("epochs", isinstance(self.epochs, int) and self.epochs >= 1, "an integer >= 1")
        check("batch_size", isinstance(self.batch_size, int) and self.batch_size >= 2, "an integer >= 2")
        check("lr", self.lr > 0 and math.isfinite(self.lr), "a positive number")
        check("warmup_epochs", 0 <= self.warmup_epochs <= self.epochs, f"between 0 and epochs ({self.epochs})")
        check("weight_decay", self.weight_decay >= 0, "a number >= 0")
        check("label_smoothing", 0 <= self.label_smoothing < 1, "a number in [0, 1)")
        check("aug_depth", isinstance(self.aug_depth, int) and self.aug_depth >= 0, "an integer >= 0")
        check("bn_images", self.bn_images >= 1, "an integer >= 1")
        check("mutation", self.mutation is None or 0 <= self.mutation < 1, "a fraction of training in [0, 1)")
        if (self.model is None) == (self.arch is None) and self.subnet is None:
            raise ConfigError("model", self.model, "give exactly one of --model and --arch")
        AugSpec(tuple(self.width_mults), tuple(self.expand_mults), self.stop_width, self.depth_decay)
        return self

    @property
    def mutation_fraction(self) -> float:
        if self.mutation is not None:
            return self.mutation if self.op != "mult" else 0.0
        return 1 / 3 if (self.aug == "shiftaddaug" and self.op != "mult") else 0.0

    @property
    def op_options(self) -> dict:
        return {"shift": {"weight_bits": self.weight_bits}, "add": {"eta": self.eta}}

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["width_mults"], d["expand_mults"] = list(self.width_mults), list(self.expand_mults)
        return d

    @staticmethod
    def from_dict(d: dict) -> "TrainConfig":
        known = {f.name for f in dataclasses.fields(TrainConfig)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"config.{unknown[0]}", d[unknown[0]], "unknown key")
        d = dict(d)
        for k in ("width_mults", "expand_mults"):
            if k in d:
                d[k] = tuple(d[k])
        return TrainConfig(**d).validate()


def cosine_lr(step: int, total: int, warmup: int, base: float) -> float:
    """Linear warm-up then cosine decay, per iteration (NetAug's schedule)."""
    if step < warmup:
        return base * (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return 0.5 * base * (1 + math.cos(math.pi * min(1.0, t)))


def param_groups(model: nn.Module, weight_decay: float, remap_lr_scale: float = 0.01) -> list[dict]:
    """Weight decay on conv / linear weights only; remap parameters on a smaller learning rate.

    The remap's learnable part (identity-initialised FC) sees gradients that AdderNet's adaptive
    scaling has already normalised to ``eta * sqrt(numel)`` over a whole weight tensor, so summed
    into a handful of FC entries they are thousands of times larger than a weight's own; at the
    base learning rate the FC leaves the identity within a few steps and the MF layer diverges.
    """
    decay, no_decay, remap = [], [], []
    for name, p in model.named_parameters():
        if ".remap." in name:
            remap.append(p)
        elif name.endswith("weight") and p.dim() > 1:
            decay.append(p)
        else:
            no_decay.append(p)
    return [
        {"params": decay, "weight_decay": weight_decay, "lr_scale": 1.0},
        {"params": no_decay, "weight_decay": 0.0, "lr_scale": 1.0},
        {"params": remap, "weight_decay": 0.0, "lr_scale": remap_lr_scale},
    ]


def resolve_target(cfg: TrainConfig, num_classes: int, resolution: int) -> tuple[Arch, Arch, list[list[int]]]:
    """(TargetNet with its MF convention, multiplicative SubNet, target block indices in it)."""
    from nas.models.zoo import resize, zoo_arch

    if cfg.subnet is not None:
        sub = Arch.from_dict(cfg.subnet)
        tb = cfg.target_blocks or [list(range(len(s.blocks))) for s in sub.stages]
        if cfg.target_arch is not None:
            target = Arch.from_dict(cfg.target_arch).with_ops(cfg.op)
            return resize(target, resolution, num_classes), resize(sub, resolution, num_classes), tb
        target_d = sub.to_dict()
        target_d["stages"] = [{"blocks": [st["blocks"][j] for j in idx]} for st, idx in zip(target_d["stages"], tb)]
        for st in target_d["stages"]:
            for b in st["blocks"]:
                b.pop("shortcut")
        target = Arch.from_dict(target_d).with_ops(cfg.op)
        return resize(target, resolution, num_classes), resize(sub, resolution, num_classes), tb
    if cfg.model is not None:
        target = zoo_arch(cfg.model, cfg.op, resolution, num_classes)
    else:
        target = resize(Arch.load(cfg.arch).with_ops(cfg.op), resolution, num_classes)
    sub, tb = subnet_for(target, cfg.aug_depth)
    return target, sub, tb


class Trainer:
    def __init__(self, cfg: TrainConfig, out: str | Path, loaders=None, progress: bool = True, export_dir: str | Path | None = None):
        from nas.data import build_loaders, calibration_batches

        self.cfg = cfg.validate()
        self.out = Path(out)
        self.export_dir = Path(export_dir) if export_dir is not None else self.out / "target"
        self.progress = progress
        if loaders is None:
            res = cfg.resolution or 32
            loaders = build_loaders(cfg.dataset, cfg.data_root, resolution=res, batch_size=cfg.batch_size,
                                    num_workers=cfg.workers, seed=cfg.seed, max_train_images=cfg.max_train_images)
        self.loaders = loaders
        self.calib = calibration_batches(loaders, n_images=min(cfg.bn_images, loaders.train.num_images), batch_size=100, seed=cfg.seed)
        torch.manual_seed(cfg.seed)
        self.target, self.subnet, self.target_blocks = resolve_target(cfg, loaders.num_classes, loaders.resolution)
        self.spec = AugSpec(tuple(cfg.width_mults), tuple(cfg.expand_mults), cfg.stop_width, cfg.depth_decay)
        if cfg.aug == "none":
            self.augmenter = None
            max_arch = self.subnet
        else:
            self.augmenter = Augmenter(self.target, self.target_blocks, self.subnet, self.spec)
            max_arch = self.augmenter.max_arch
        self.net = DynamicNet(max_arch, remap=cfg.remap, op_options=cfg.op_options, branch_norm=cfg.branch_norm)
        if cfg.inherit:
            from nas.supernet.net import inherit_weights

            inherit_weights(self.net, load_checkpoint(Path(cfg.inherit))["model"])
        self.mutation = MutationSchedule(self.target, cfg.mutation_fraction)
        self.optimizer = torch.optim.SGD(param_groups(self.net, cfg.weight_decay, cfg.remap_lr_scale), lr=cfg.lr, momentum=cfg.momentum, nesterov=True)
        self.steps_per_epoch = len(loaders.train)
        self.total_steps = self.steps_per_epoch * cfg.epochs
        self.warmup_steps = int(round(cfg.warmup_epochs * self.steps_per_epoch))
        self.aug_rng = random.Random(cfg.seed + 1)
        self.epoch = 0
        self.global_step = 0
        self.best_val = 0.0
        # data-parallel hooks, set only by nas.search.ray_adapter (Ray Train); None / True is the local path
        self.shard = None  # (x, y) -> this rank's part of the batch
        self.grad_sync = None  # net -> None: gradients (and BN statistics) made equal on every rank
        self.is_writer = True  # only rank 0 writes files (config, metrics, checkpoint, summary, export)
        self.on_epoch = None  # row -> None, after each epoch (ray.train.report)

    # ------------------------------------------------------------------------------ state
    def state_dict(self) -> dict:
        return {
            "version": CHECKPOINT_VERSION,
            "config": self.cfg.to_dict(),
            "model": self.net.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "schedule": {"global_step": self.global_step, "total_steps": self.total_steps, "epoch": self.epoch},
            "best_val": self.best_val,
            "rng": {
                "torch": torch.get_rng_state(),
                "aug": _py_state(self.aug_rng),
                "loader": self.loaders.train.state_dict(),
            },
        }

    def load_state_dict(self, sd: dict) -> None:
        if sd.get("version") != CHECKPOINT_VERSION:
            raise ConfigError("checkpoint.version", sd.get("version"), f"this version reads {CHECKPOINT_VERSION}")
        check_config_hash(config_hash(sd["config"]) if "config" in sd else None, self.cfg.to_dict(), "checkpoint")
        self.net.load_state_dict(sd["model"])
        self.optimizer.load_state_dict(sd["optimizer"])
        self.global_step = sd["schedule"]["global_step"]
        self.epoch = sd["schedule"]["epoch"]
        self.best_val = sd["best_val"]
        torch.set_rng_state(sd["rng"]["torch"])
        self.aug_rng.setstate(_py_unstate(sd["rng"]["aug"]))
        self.loaders.train.load_state_dict(sd["rng"]["loader"])

    def save_checkpoint(self) -> None:
        check_weights(self.net, f"epoch {self.epoch}")  # never checkpoint a diverged network
        save_checkpoint(self.state_dict(), self.out / "checkpoint.pt")  # keeps the previous one too

    # ------------------------------------------------------------------------------ one step
    def target_now(self) -> Arch:
        return self.mutation.target_at(self.global_step / max(1, self.total_steps))

    def _loss(self, logits, y):
        loss = F.cross_entropy(logits, y, label_smoothing=self.cfg.label_smoothing)
        reg = self.net.regularizer()
        return loss if reg is None else loss + self.cfg.kl_weight * reg

    def train_step(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        if self.shard is not None:  # distributed: this rank's samples of the batch
            x, y = self.shard(x, y)
        cfg, net = self.cfg, self.net
        progress = self.global_step / max(1, self.total_steps)
        lr = cosine_lr(self.global_step, self.total_steps, self.warmup_steps, cfg.lr)
        for g in self.optimizer.param_groups:
            g["lr"] = lr * g["lr_scale"]
        self.optimizer.zero_grad(set_to_none=True)
        target = self.target_now()
        net.set_active_subnet(target, self.target_blocks)
        logits = net(x)
        loss_t = self._loss(logits, y)
        loss_t.backward()
        out = {"lr": lr, "loss": loss_t.item(), "acc": (logits.argmax(1) == y).float().mean().item()}
        if self.augmenter is not None:
            aug_arch, aug_blocks = self.augmenter.sample(self.aug_rng, progress)
            if cfg.aug == "netaug":  # the augmented part uses the target's own operator
                net.set_active_subnet(aug_arch.with_ops(cfg.op), aug_blocks)
            elif cfg.hybrid == "mf":
                net.set_active_subnet(aug_arch, aug_blocks, target=target, target_blocks=self.target_blocks)
            else:  # method.md REC-B: the augmented pass is entirely multiplicative
                net.set_active_subnet(aug_arch, aug_blocks)
            loss_a = self._loss(net(x), y)
            loss_a.backward()
            out["loss_aug"] = loss_a.item()
        check_losses(net, out, x, f"epoch {self.epoch + 1}, step {self.global_step + 1}")
        if self.grad_sync is not None:  # distributed: average gradients across ranks
            self.grad_sync(net)
        self.optimizer.step()
        self.global_step += 1
        return out

    # ------------------------------------------------------------------------------ evaluation / export
    @torch.no_grad()
    def evaluate(self, split: str = "val", target: Arch | None = None) -> dict[str, float]:
        target = target or self.target_now()
        self.net.set_active_subnet(target, self.target_blocks)
        reset_bn(self.net, self.calib)
        self.net.eval()
        correct = total = 0
        loss = 0.0
        for x, y in getattr(self.loaders, split):
            logits = self.net(x)
            loss += F.cross_entropy(logits, y, reduction="sum").item()
            correct += (logits.argmax(1) == y).sum().item()
            total += y.numel()
        self.net.train()
        return {f"{split}_acc": 100.0 * correct / total, f"{split}_loss": loss / total}

    def export(self) -> dict:
        from nas.export import export_target

        self.net.set_active_subnet(self.target, self.target_blocks)
        reset_bn(self.net, self.calib)
        return export_target(self.net, self.export_dir, self.calib[0][0], self.cfg.op_options, meta={"config": self.cfg.to_dict()})

    # ------------------------------------------------------------------------------ the run
    def fit(self, until_epoch: int | None = None) -> dict[str, Any]:
        """Train to the end (evaluate, export, summarise), or only up to ``until_epoch``."""
        from tqdm import tqdm

        metrics_path = self.out / "metrics.csv"
        if self.is_writer:
            self.out.mkdir(parents=True, exist_ok=True)
            atomic_write_json(self.out / "config.json", {"schema_version": 1, "train": self.cfg.to_dict()})
            _truncate_metrics(metrics_path, self.epoch)
        t_run = time.time()
        for epoch in range(self.epoch, min(self.cfg.epochs, until_epoch or self.cfg.epochs)):
            if self.cfg.sort_channels and self.augmenter is not None:
                sort_channels(self.net, self.optimizer)
            self.loaders.train.set_epoch(epoch)
            self.net.train()
            t0 = time.time()
            sums: dict[str, float] = {}
            n = 0
            bar = tqdm(self.loaders.train, total=self.steps_per_epoch, desc=f"epoch {epoch + 1}/{self.cfg.epochs}",
                       disable=not self.progress, leave=False, dynamic_ncols=True)
            for x, y in bar:
                stats = self.train_step(x, y)
                n += 1
                for k, v in stats.items():
                    sums[k] = sums.get(k, 0.0) + v
                bar.set_postfix(loss=f"{stats['loss']:.3f}", acc=f"{100 * stats['acc']:.1f}")
            bar.close()
            self.epoch = epoch + 1
            row = {"epoch": self.epoch, "time_s": round(time.time() - t0, 2)}
            row.update({f"train_{k}": round(v / max(1, n), 5) for k, v in sums.items()})
            row["mf_units"] = f"{self.mutation.converted(self.global_step / self.total_steps)}/{len(self.mutation.units)}"
            row.update({k: round(v, 4) for k, v in self.evaluate("val").items()})
            self.best_val = max(self.best_val, row["val_acc"])
            if self.is_writer:
                _append_metrics(metrics_path, row)
                self.save_checkpoint()
            if self.on_epoch is not None:
                self.on_epoch(row)
            if self.progress:
                print(f"epoch {self.epoch}/{self.cfg.epochs}: loss {row['train_loss']:.3f}  val acc {row['val_acc']:.2f}%  ({row['time_s']:.1f}s)", flush=True)
        if self.epoch < self.cfg.epochs:
            return {"epoch": self.epoch, "best_val_acc": self.best_val}
        final = self.evaluate("test", self.target)
        val = self.evaluate("val", self.target)
        exported = self.export() if self.is_writer else None
        summary = {
            "schema_version": 1,
            "target": self.target.name,
            "op": self.cfg.op,
            "aug": self.cfg.aug,
            "remap": self.cfg.remap,
            "epochs": self.cfg.epochs,
            "val_acc": round(val["val_acc"], 3),
            "test_acc": round(final["test_acc"], 3),
            "best_val_acc": round(self.best_val, 3),
            "train_time_s": round(time.time() - t_run, 1),
            "export": exported,
        }
        if self.is_writer:
            atomic_write_json(self.out / "summary.json", summary)
            _plot_curves(metrics_path, self.out / "curves.png")
        return summary


def load_checkpoint(path: Path) -> dict:
    """The newest copy of a checkpoint that loads (``nas.io.load_checkpoint``)."""
    from nas import io as nio

    return nio.load_checkpoint(path)[0]


def resume_trainer(run_dir: str | Path, progress: bool = True, export_dir: str | Path | None = None) -> Trainer:
    run_dir = Path(run_dir)
    cfg = TrainConfig.from_dict(read_run_config(run_dir, "train"))
    trainer = Trainer(cfg, run_dir, progress=progress, export_dir=export_dir)
    ckpt = run_dir / "checkpoint.pt"
    if ckpt.is_file():
        from nas import io as nio

        nio.load_checkpoint(ckpt, apply=trainer.load_state_dict)  # falls back to the previous checkpoint
    return trainer


def _py_state(rng: random.Random) -> dict:
    v, state, gauss = rng.getstate()
    return {"version": v, "state": torch.tensor(state, dtype=torch.int64), "gauss": gauss}


def _py_unstate(d: dict) -> tuple:
    return (d["version"], tuple(int(x) for x in d["state"].tolist()), d["gauss"])


def _truncate_metrics(path: Path, epoch: int) -> None:
    """Drop rows after the checkpoint's epoch (a run killed after writing metrics, before saving),
    after cutting a torn last row (``heal_csv``)."""
    heal_csv(path)
    if not path.is_file():
        return
    with path.open() as f:
        rows = list(csv.DictReader(f))
    keep = [r for r in rows if (r.get("epoch") or "").isdigit() and int(r["epoch"]) <= epoch]
    if len(keep) != len(rows) and keep:
        _write_rows(path, keep)
    elif not keep:
        path.unlink()


def _write_rows(path: Path, rows: list[dict]) -> None:
    import io

    buf = io.StringIO()
    fields = list(dict.fromkeys(k for r in rows for k in r))
    w = csv.DictWriter(buf, fieldnames=fields)
    w.writeheader()
    w.writerows(rows)
    atomic_write_text(path, buf.getvalue())


def _append_metrics(path: Path, row: dict) -> None:
    rows = []
    if path.is_file():
        with path.open() as f:
            rows = list(csv.DictReader(f))
    _write_rows(path, rows + [row])


def _plot_curves(metrics: Path, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    if not metrics.is_file():  # nothing to plot (a history moved aside by heal_csv)
        return
    df = pd.read_csv(metrics)
    fig, ax = plt.subplots(1, 2, figsize=(9, 3.2))
    ax[0].plot(df["epoch"], df["train_loss"], label="target")
    if "train_loss_aug" in df:
        ax[0].plot(df["epoch"], df["train_loss_aug"], label="augmented")
    ax[0].set_xlabel("epoch"), ax[0].set_ylabel("train loss"), ax[0].legend()
    ax[1].plot(df["epoch"], df["val_acc"], marker="o")
    ax[1].set_xlabel("epoch"), ax[1].set_ylabel("val accuracy (%)")
    fig.tight_layout()
    atomic_savefig(fig, png, dpi=110)
    plt.close(fig)
