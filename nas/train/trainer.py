"""ShiftAddAug training: a TargetNet trained inside an augmented multiplicative network.

One ``Trainer`` runs all the recipes the paper's ablations need, chosen by ``TrainConfig.aug``:

* ``none``: direct training of the TargetNet (MF training, or plain training for ``op=mult``);
* ``netaug``: NetAug; the augmented part computes with the TargetNet's own operator
  ("NetAug with MF augmentation");
* ``shiftaddaug``: the augmented part computes with multiplication (hybrid computation), plus
  block mutation and, with ``aug_depth`` or a NAS SubNet, augmented depth.

Each step is NetAug's two-pass step (docs/method.md, section 5.1): the target pass and one sampled
augmented pass each run forward and backward, then one optimizer step (alpha = 1); schedule,
optimizer, random streams, checkpoints, device, precision and DDP are ``nas.train.loop.TrainLoop``'s. ``remap`` and
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from nas.arch import Arch
from nas.errors import ConfigError
from nas.io import atomic_savefig, atomic_write_json, atomic_write_text
from nas.ops.registry import get_kind, op_kinds
from nas.rundir import check_config_hash, config_hash, heal_csv, read_run_config
from nas.supernet.net import DynamicNet, sort_channels
from nas.train.augment import Augmenter, AugSpec, MutationSchedule, subnet_for
from nas.train.bn import reset_bn
from nas.train.distributed import Distributed
from nas.train.loop import (  # noqa: F401 (cosine_lr, param_groups: public here too)
    PRECISIONS,
    TrainLoop,
    cosine_lr,
    param_groups,
    resolve_device,
)

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
    hybrid: str = "mf"  # docs/method.md, section 3: target channels of the augmented pass with MF ("mf") or mult
    # rescale the multiplicative partial sums of target channels to the MF ones in the augmented
    # pass (docs/method.md, section 3): AddConv partial sums are orders of magnitude larger; measured on
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
    # where: "auto" (CUDA when available, else CPU), "cpu", "cuda", "cuda:N"; the precision of the
    # multiplicative layers ("bf16" / "fp16": autocast; MF layers always compute in float32)
    device: str = "auto"
    precision: str = "fp32"
    # set by the search: the SubNet of stage one, the TargetNet of stage two (multiplicative Arch
    # dicts; ``op`` is applied) with its block indices in the SubNet, and a supernet checkpoint
    # whose weights the run starts from
    subnet: dict | None = None
    target_arch: dict | None = None
    target_blocks: list[list[int]] | None = None
    inherit: str | None = None
    # "classification" or "segmentation" (a segmentation dataset; zoo models get an LR-ASPP head)
    task: str = "classification"

    def validate(self) -> "TrainConfig":
        from nas.ops.remap import REMAP_KINDS

        def check(name, ok, allowed):
            if not ok:
                raise ConfigError(name, getattr(self, name), allowed)

        from nas.arch import TASKS
        from nas.data.loader import check_dataset_task

        check("op", self.op in op_kinds(), f"allowed: {', '.join(op_kinds())}")
        check("task", self.task in TASKS, f"allowed: {', '.join(TASKS)}")
        check_dataset_task(self.dataset, self.task)
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
        check("workers", isinstance(self.workers, int) and self.workers >= 0, "an integer >= 0")
        check("precision", self.precision in PRECISIONS, f"allowed: {', '.join(PRECISIONS)}")
        # fp16 needs loss scaling; AdderNet's adaptive gradient scale renormalises an add layer's
        # weight gradient to a fixed norm, so the GradScaler's unscale would shrink it by the scale
        check("precision", not (self.precision == "fp16" and self.op == "add" and self.eta is not None),
              "fp16 loss scaling cancels AdderNet's adaptive gradient scale of add layers: use bf16, or --eta 0")
        if (self.model is None) == (self.arch is None) and self.subnet is None:
            raise ConfigError("model", self.model, "give exactly one of --model and --arch")
        AugSpec(tuple(self.width_mults), tuple(self.expand_mults), self.stop_width, self.depth_decay)
        return self

    @property
    def mutation_fraction(self) -> float:
        mf = get_kind(self.op).multiplication_free  # mutation turns multiplicative units into the target's MF ones
        if self.mutation is not None:
            return self.mutation if mf else 0.0
        return 1 / 3 if (self.aug == "shiftaddaug" and mf) else 0.0

    @property
    def op_options(self) -> dict:
        return {"shift": {"weight_bits": self.weight_bits}, "add": {"eta": self.eta}}

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["width_mults"], d["expand_mults"] = list(self.width_mults), list(self.expand_mults)
        if d["task"] == "classification":  # as before the field existed: runs from then still resume (config hash)
            del d["task"]
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
    target = _for_task(target, cfg.task, cfg.model or cfg.arch)
    sub, tb = subnet_for(target, cfg.aug_depth)
    return target, sub, tb


def _for_task(arch: Arch, task: str, source: str) -> Arch:
    """A zoo model or classification Arch file as a segmentation network (``--task segmentation``:
    its backbone with the default LR-ASPP head); a segmentation file for classification is refused."""
    from nas.arch import to_segmentation

    if task == "segmentation":
        return to_segmentation(arch)
    if arch.is_segmentation:
        raise ConfigError("task", task, f"{source} is a segmentation network: train it with --task segmentation")
    return arch


class Trainer(TrainLoop):
    """ShiftAddAug / NetAug / direct training of one TargetNet on the shared ``TrainLoop``.

    ``device`` / ``dist`` override ``cfg.device`` and the single-process default (torchrun and
    Ray Train set them; see ``nas.train.distributed``).
    """

    checkpoint_version = CHECKPOINT_VERSION

    def __init__(self, cfg: TrainConfig, out: str | Path, loaders=None, progress: bool = True,
                 export_dir: str | Path | None = None, device: str | torch.device | None = None,
                 dist: Distributed | None = None):
        from nas.data import build_loaders, calibration_batches
        from nas.train.tasks import task_of

        self.cfg = cfg.validate()
        self.task = task_of(cfg.task)
        self.out = Path(out)
        self.export_dir = Path(export_dir) if export_dir is not None else self.out / "target"
        device = resolve_device(device if device is not None else cfg.device)
        if loaders is None:
            res = cfg.resolution or self.task.default_resolution
            loaders = build_loaders(cfg.dataset, cfg.data_root, resolution=res, batch_size=cfg.batch_size,
                                    num_workers=cfg.workers, seed=cfg.seed, max_train_images=cfg.max_train_images,
                                    device=device)
        if loaders.task != cfg.task:
            raise ConfigError("task", cfg.task, f"the {loaders.name} data is for {loaders.task}")
        calib = calibration_batches(loaders, n_images=min(cfg.bn_images, loaders.train.num_images), batch_size=100, seed=cfg.seed)
        self.calib = [(x.to(device), y.to(device)) for x, y in calib]  # (a no-op when the loaders are on the device)
        steps = len(loaders.train)
        super().__init__(loaders, epochs=cfg.epochs, lr=cfg.lr, warmup_steps=int(round(cfg.warmup_epochs * steps)),
                         seed=cfg.seed, weight_decay=cfg.weight_decay, momentum=cfg.momentum,
                         remap_lr_scale=cfg.remap_lr_scale, device=device, precision=cfg.precision, dist=dist,
                         progress=progress)
        self.checkpoint_path = self.out / "checkpoint.pt"
        self.target, self.subnet, self.target_blocks = resolve_target(cfg, loaders.num_classes, loaders.resolution)
        self.spec = AugSpec(tuple(cfg.width_mults), tuple(cfg.expand_mults), cfg.stop_width, cfg.depth_decay)
        if cfg.aug == "none":
            self.augmenter = None
            max_arch = self.subnet
        else:
            self.augmenter = Augmenter(self.target, self.target_blocks, self.subnet, self.spec)
            max_arch = self.augmenter.max_arch

        def build() -> DynamicNet:
            net = DynamicNet(max_arch, remap=cfg.remap, op_options=cfg.op_options, branch_norm=cfg.branch_norm)
            if cfg.inherit:
                from nas.supernet.net import inherit_weights

                inherit_weights(net, load_checkpoint(Path(cfg.inherit))["model"])
            return net

        self.setup_model(build)
        self.mutation = MutationSchedule(self.target, cfg.mutation_fraction)
        self.py_rngs["aug"] = random.Random(cfg.seed + 1)
        self.best_val = 0.0

    # ------------------------------------------------------------------------------ state
    def extra_state(self) -> dict:
        return {"config": self.cfg.to_dict(), "best_val": self.best_val}

    def check_state(self, sd: dict) -> dict:
        sd = super().check_state(sd)
        # another configuration's checkpoint (a reused directory) stops here with one line; the
        # device is not part of it (``--resume DIR --device X`` moves a run on purpose)
        recorded = config_hash(sd["config"]) if "config" in sd else None
        check_config_hash(recorded, self.cfg.to_dict(), "checkpoint")
        return sd

    def load_state_dict(self, sd: dict) -> None:
        super().load_state_dict(sd)
        self.best_val = sd["best_val"]

    # ------------------------------------------------------------------------------ one step
    def target_now(self) -> Arch:
        return self.mutation.target_at(self.global_step / max(1, self.total_steps))

    def _loss(self, logits, y):
        loss = self.task.loss(logits, y, self.cfg.label_smoothing)
        reg = self.net.regularizer()
        return loss if reg is None else loss + self.cfg.kl_weight * reg

    def train_step(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        cfg, net = self.cfg, self.net
        progress = self.global_step / max(1, self.total_steps)
        target = self.target_now()
        net.set_active_subnet(target, self.target_blocks)
        logits, loss_t = self.forward_backward(x, lambda out: self._loss(out, y), last=self.augmenter is None)
        out = {"lr": self.lr_now, "loss": loss_t.item(), "acc": self.task.batch_acc(logits, y)}
        if self.augmenter is not None:
            aug_arch, aug_blocks = self.augmenter.sample(self.py_rngs["aug"], progress)
            self.samples.append((aug_arch.arch_id, aug_blocks))
            if cfg.aug == "netaug":  # the augmented part uses the target's own operator
                net.set_active_subnet(aug_arch.with_ops(cfg.op), aug_blocks)
            elif cfg.hybrid == "mf":
                net.set_active_subnet(aug_arch, aug_blocks, target=target, target_blocks=self.target_blocks)
            else:  # --hybrid mult (docs/method.md, section 3): the augmented pass is entirely multiplicative
                net.set_active_subnet(aug_arch, aug_blocks)
            _, loss_a = self.forward_backward(x, lambda out: self._loss(out, y))
            out["loss_aug"] = loss_a.item()
        return out

    def postfix(self, stats: dict[str, float]) -> dict[str, str]:
        return {"loss": f"{stats['loss']:.3f}", "acc": f"{100 * stats['acc']:.1f}"}

    # ------------------------------------------------------------------------------ evaluation / export
    @torch.no_grad()
    def evaluate(self, split: str = "val", target: Arch | None = None) -> dict[str, float]:
        target = target or self.target_now()
        self.net.set_active_subnet(target, self.target_blocks)
        with self.autocast():
            reset_bn(self.net, self.calib)
            self.net.eval()
            meter = self.task.meter(self.loaders.num_classes)  # accuracy, or mIoU and pixel accuracy
            for x, y in getattr(self.loaders, split):
                x, y = x.to(self.device), y.to(self.device)
                meter.update(self.net(x).float(), y)
        self.net.train()
        return meter.result(split)

    def export(self) -> dict:
        """The TargetNet as CPU float32 weights, whatever the training device and precision:
        BatchNorm re-estimated in float32 on the device, then checked and written on the CPU."""
        import copy

        from nas.export import export_target

        self.net.set_active_subnet(self.target, self.target_blocks)
        reset_bn(self.net, self.calib)
        net = self.net if self.device.type == "cpu" else copy.deepcopy(self.net).cpu()
        with torch.random.fork_rng(devices=[]):  # building the static network initialises (then overwrites) weights
            return export_target(net, self.export_dir, self.calib[0][0].cpu(), self.cfg.op_options,
                                 meta={"config": self.cfg.to_dict()})

    # ------------------------------------------------------------------------------ the run
    def on_epoch_start(self, epoch: int) -> None:
        if self.cfg.sort_channels and self.augmenter is not None:
            sort_channels(self.net, self.optimizer)

    def end_epoch(self, means: dict[str, float], seconds: float) -> dict:
        row = {"epoch": self.epoch, "time_s": round(seconds, 2)}
        row.update({f"train_{k}": round(v, 5) for k, v in means.items()})
        row["mf_units"] = f"{self.mutation.converted(self.global_step / self.total_steps)}/{len(self.mutation.units)}"
        row.update({k: round(v, 4) for k, v in self.evaluate("val").items()})
        metric = self.task.metric
        self.best_val = max(self.best_val, row[f"val_{metric}"])
        if self.progress:
            print(f"epoch {self.epoch}/{self.cfg.epochs}: loss {row['train_loss']:.3f}  val {self.task.metric_label} "
                  f"{row[f'val_{metric}']:.2f}%  ({row['time_s']:.1f}s)", flush=True)
        return row

    def write_logs(self, row: dict) -> None:
        if self.dist.is_writer:
            _append_metrics(self.out / "metrics.csv", row)

    def fit(self, until_epoch: int | None = None) -> dict[str, Any]:
        """Train to the end (evaluate, export, summarise), or only up to ``until_epoch``."""
        metrics_path = self.out / "metrics.csv"
        if self.dist.is_writer:
            self.out.mkdir(parents=True, exist_ok=True)
            atomic_write_json(self.out / "config.json", {"schema_version": 1, "train": self.cfg.to_dict(),
                                                          "runtime": self.runtime()})
            _truncate_metrics(metrics_path, self.epoch)
        t_run = time.time()
        self.train_epochs(until_epoch)
        metric = self.task.metric
        if self.epoch < self.cfg.epochs:
            return {"epoch": self.epoch, f"best_val_{metric}": self.best_val}
        final = self.evaluate("test", self.target)
        val = self.evaluate("val", self.target)
        exported = self.export() if self.dist.is_writer else None
        summary = {
            "schema_version": 1,
            "target": self.target.name,
            "op": self.cfg.op,
            "aug": self.cfg.aug,
            "remap": self.cfg.remap,
            "epochs": self.cfg.epochs,
            f"val_{metric}": round(val[f"val_{metric}"], 3),
            f"test_{metric}": round(final[f"test_{metric}"], 3),
            f"best_val_{metric}": round(self.best_val, 3),
            "train_time_s": round(time.time() - t_run, 1),
            "export": exported,
        }
        if self.cfg.task != "classification":  # mIoU above; pixel accuracy beside it
            summary.update(task=self.cfg.task, val_pixel_acc=round(val["val_pixel_acc"], 3),
                           test_pixel_acc=round(final["test_pixel_acc"], 3))
        if self.dist.is_writer:
            atomic_write_json(self.out / "summary.json", summary)
            _plot_curves(metrics_path, self.out / "curves.png", f"val_{metric}", self.task.metric_label)
        return summary

    def runtime(self) -> dict:
        """Where this run computes (``config.json``): the resolved device, precision and ranks."""
        return {"device": str(self.device), "precision": self.precision, "world_size": self.dist.world_size,
                "torch": torch.__version__}


def load_checkpoint(path: Path) -> dict:
    """The newest copy of a checkpoint that loads (``nas.io.load_checkpoint``)."""
    from nas import io as nio

    return nio.load_checkpoint(path)[0]


def resume_trainer(run_dir: str | Path, progress: bool = True, export_dir: str | Path | None = None,
                   device: str | torch.device | None = None, dist: Distributed | None = None) -> Trainer:
    """The trainer of an interrupted (or finished) run, at its last checkpoint. ``device`` moves
    the run to another device (default: the run's own ``--device``; a ``torch.device``, as
    torchrun's per-rank GPU, is used without being recorded); with ``dist`` rank 0 reads the run
    directory and the other ranks receive what it read."""
    run_dir = Path(run_dir)
    dist = dist or Distributed()
    # rank 0 reads (a damaged, foreign or missing config.json: one line there), the others receive it
    cfg = dist.broadcast_object(read_run_config(run_dir, "train") if dist.is_writer else None)
    if isinstance(device, str):  # the run moves there (config.json records it)
        cfg = {**cfg, "device": device}
    trainer = Trainer(TrainConfig.from_dict(cfg), run_dir, progress=progress, export_dir=export_dir, device=device, dist=dist)
    trainer.load_checkpoint()
    return trainer


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


def _plot_curves(metrics: Path, png: Path, column: str = "val_acc", label: str = "accuracy") -> None:
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
    ax[1].plot(df["epoch"], df[column], marker="o")
    ax[1].set_xlabel("epoch"), ax[1].set_ylabel(f"val {label} (%)")
    fig.tight_layout()
    atomic_savefig(fig, png, dpi=110)
    plt.close(fig)
