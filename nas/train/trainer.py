"""ShiftAddAug training: a TargetNet trained inside an augmented multiplicative network.

One ``Trainer`` runs all the recipes the paper's ablations need, chosen by ``TrainConfig.aug``:

* ``none``: direct training of the TargetNet (MF training, or plain training for ``op=mult``);
* ``netaug``: NetAug; the augmented part computes with the TargetNet's own operator
  ("NetAug with MF augmentation");
* ``shiftaddaug``: the augmented part computes with multiplication (hybrid computation), plus
  block mutation and, with ``aug_depth`` or a NAS SubNet, augmented depth.

Each step is NetAug's two-pass step (docs/method-notes.md, section 5.1): the target pass and one sampled
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
import json
import logging
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from nas.arch import TASKS, Arch
from nas.config import from_mapping, knob, normalise
from nas.errors import ConfigError
from nas.io import atomic_savefig, atomic_write_json, atomic_write_text
from nas.ops.registry import get_kind, op_kinds
from nas.ops.remap import REMAP_KINDS
from nas.rundir import check_config_hash, config_hash, heal_csv, read_run_config
from nas.supernet.net import DynamicNet, sort_channels
from nas.train.augment import Augmenter, AugSpec, MutationSchedule, subnet_for
from nas.train.bn import reset_bn
from nas.train.distributed import Distributed
from nas.train.loop import (  # noqa: F401 (cosine_lr, param_groups: public here too)
    DEVICE_HELP,
    PRECISIONS,
    TrainLoop,
    cosine_lr,
    param_groups,
    resolve_device,
)

log = logging.getLogger(__name__)
AUG_KINDS = ("none", "netaug", "shiftaddaug")
CHECKPOINT_VERSION = 1


def off_or_float(text: str) -> float | None:
    """A number, or 0 / off / none for "off" (``--eta 0``)."""
    if text.strip().lower() in ("0", "0.0", "off", "none"):
        return None
    return float(text)


def _datasets() -> tuple[str, ...]:
    from nas.data import DATASETS

    return tuple(sorted(DATASETS))


def _zoo_help() -> str:
    from nas.models.zoo import list_zoo

    return f"a zoo model: {', '.join(list_zoo())}"


METHOD = "the method (ShiftAddAug)"
DATA = "data"
OPTIM = "optimisation"
WHERE = "where it computes"


@dataclass
class MethodConfig:
    """The method's knobs, shared by ``TrainConfig`` (one training run) and ``SearchConfig`` (the
    search's supernet and its final training): augmentation, remap, operator options, optimiser."""

    aug: str = knob("shiftaddaug", choices=AUG_KINDS, group=METHOD,
                    help="none: direct training; netaug: augmented part with the target's operator; "
                    "shiftaddaug: multiplicative augmented part + block mutation")
    remap: str = knob("cdf-fc", choices=lambda: REMAP_KINDS, group=METHOD,
                      help="weight remapping from the multiplicative into the MF domain")
    # docs/method-notes.md, section 3: target channels of the augmented pass with MF ("mf") or mult
    hybrid: str = knob("mf", choices=("mf", "mult"), group=METHOD,
                       help="target channels of the augmented pass computed with MF (hybrid) or multiplication")
    # rescale the multiplicative partial sums of target channels to the MF ones in the augmented
    # pass (docs/method-notes.md, section 3): AddConv partial sums are orders of magnitude larger; measured on
    # mbv2-tiny add, 3 epochs: 41.6% test accuracy without, 53.0% with (no change for shift)
    branch_norm: bool = knob(True, group=METHOD,
                             help="rescale the multiplicative partial sums of target channels to the MF ones "
                             "(augmented passes of training and of the search's supernet)")
    width_mults: tuple[float, ...] = knob((1.0, 1.8, 2.6), metavar="A,B,..", group=METHOD,
                                          help="width augmentation factors (NetAug: 1.0,1.8,2.6)")
    expand_mults: tuple[float, ...] = knob((1.0, 1.6, 2.2, 2.8), metavar="A,B,..", group=METHOD,
                                           help="expand augmentation factors (NetAug: 1.0,1.6,2.2,2.8)")
    stop_width: float = knob(0.5, metavar="F", group=METHOD,
                             help="fraction of training after which width augmentation stops (NetAug's min-width phase)")
    depth_decay: bool = knob(True, group=METHOD,
                             help="drop augmented blocks with probability = training progress")
    mutation: float | None = knob(None, metavar="F", group=METHOD,
                                  help="fraction of training over which target layers turn MF "
                                  "(default: 1/3 with shiftaddaug, else 0)")
    sort_channels: bool = knob(True, group=METHOD, help="reorder mid channels by importance every epoch (NetAug)")
    # activation checkpointing of the blocks in the augmented pass: only block inputs are kept,
    # activations are recomputed in backward (less memory, one more block forward; results equal
    # within float rounding). benchmarks/train_overhead.py measures both.
    aug_checkpoint: bool = knob(False, group=METHOD,
                                help="recompute the augmented pass's block activations in backward instead of storing them "
                                "(less memory, more time)")
    kl_weight: float = knob(10.0, metavar="W", group=METHOD, help="weight of the pwl-kl remap's regulariser (ShiftAddNAS)")
    remap_lr_scale: float = knob(0.01, metavar="S", group=METHOD,
                                 help="learning rate of the remap's learnable part, relative to --lr")
    # cdf-fc on 1x1 convs and linear layers: a learnable per-output-channel affine after the CDF
    # remap (Eq. 5's learnable part where a kernel FC has nothing to mix; identity at the start,
    # variance-preserving, folded into the weights at export). No effect with other remaps.
    remap_affine: bool = knob(False, group=METHOD,
                              help="with cdf-fc: a learnable per-output-channel affine after the remap of 1x1 convs and "
                              "linear layers (folded at export)")
    weight_bits: int = knob(5, metavar="B", group=METHOD, help="shift weight bits")
    # AdderNet's adaptive gradient scale for add layers; None turns it off. AdderNet uses 0.2 with
    # 400-epoch CIFAR schedules; on short schedules 0.2 barely moves deep adder layers (an Add
    # MobileNetV2-Tiny stays at chance for 3 epochs on mnist5k), 1.0 trains them.
    eta: float | None = knob(1.0, metavar="ETA", parse=off_or_float, group=METHOD,
                             help="AdderNet adaptive gradient scale for add layers, 0 = off")
    momentum: float = knob(0.9, metavar="M", group=OPTIM, help="SGD Nesterov momentum")
    weight_decay: float = knob(4e-5, metavar="WD", group=OPTIM, help="weight decay (not on BN and biases)")
    label_smoothing: float = knob(0.1, metavar="E", group=OPTIM, help="label smoothing of the cross-entropy")
    # segmentation: loss weight of a background (class 0) pixel relative to the others. Background
    # is 92% of mnistseg's pixels: with equal weights seg64-min's multiplicative network reached
    # 17.9% test mIoU in 256 SGD steps, with 0.1 32.9% (benchmarks/segmentation.py, docs/segmentation.md)
    background_weight: float = knob(1.0, metavar="W", group=OPTIM,
                                    help="segmentation: loss weight of background (class 0) pixels relative to the "
                                    "others; below 1 when background dominates the masks, e.g. 0.1 on mnistseg")

    def __post_init__(self):
        normalise(self)
        if self.eta == 0:  # AdderNet's gradient scale: 0 means off (the flag's "--eta 0"), recorded as null
            self.eta = None

    def check_method(self) -> None:
        """One ConfigError naming the first method field with a value outside what it allows."""
        def check(name, ok, allowed):
            if not ok:
                raise ConfigError(name, getattr(self, name), allowed)

        check("aug", self.aug in AUG_KINDS, f"allowed: {', '.join(AUG_KINDS)}")
        check("remap", self.remap in REMAP_KINDS, f"allowed: {', '.join(REMAP_KINDS)}")
        check("hybrid", self.hybrid in ("mf", "mult"), "allowed: mf, mult")
        check("mutation", self.mutation is None or 0 <= self.mutation < 1, "a fraction of training in [0, 1)")
        check("eta", self.eta is None or (self.eta > 0 and math.isfinite(self.eta)), "a positive number, or 0 / null for off")
        check("weight_decay", self.weight_decay >= 0, "a number >= 0")
        check("label_smoothing", 0 <= self.label_smoothing < 1, "a number in [0, 1)")
        check("background_weight", self.background_weight > 0 and math.isfinite(self.background_weight), "a positive number")
        check("background_weight", self.background_weight == 1.0 or getattr(self, "task", None) == "segmentation",
              "1.0 unless --task segmentation (it weighs the loss of background pixels)")
        check("momentum", 0 <= self.momentum < 1, "a number in [0, 1)")
        check("kl_weight", self.kl_weight >= 0, "a number >= 0")
        check("remap_lr_scale", self.remap_lr_scale >= 0, "a number >= 0")
        AugSpec(tuple(self.width_mults), tuple(self.expand_mults), self.stop_width, self.depth_decay)

    @property
    def op_options(self) -> dict:
        return {"shift": {"weight_bits": self.weight_bits}, "add": {"eta": self.eta}}

    def method_dict(self) -> dict:
        """The method's fields and their values (to hand them from a search to its training)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(MethodConfig)}


@dataclass
class TrainConfig(MethodConfig):
    """Everything that defines a training run (saved as ``config.json``)."""

    # the network
    model: str | None = knob("mbv2-tiny", metavar="NAME", group="the network", help=_zoo_help)
    arch: str | None = knob(None, metavar="FILE", group="the network", help="an Arch JSON file or OFA / MCUNet net.config, instead of --model")
    op: str = knob("shift", choices=op_kinds, group="the network", help="operator of the TargetNet")
    resolution: int | None = knob(None, metavar="R", group="the network",
                                  help="input resolution (default: the dataset's native size, 32 for mnist5k / CIFAR; segmentation 64)")
    aug_depth: int = knob(0, metavar="N", group=METHOD, help="extra blocks per stage that only the augmented pass runs")
    # data
    dataset: str | None = knob(None, choices=_datasets, group=DATA,
                               help="the dataset (README, Data; default mnist5k, for segmentation mnistseg)")
    data_root: str | None = knob(None, metavar="PATH", group=DATA, help="dataset location (CIFAR python folder or image folder)")
    batch_size: int = knob(64, metavar="N", group=DATA, help="global batch size")
    workers: int = knob(0, metavar="N", group=DATA,
                        help="data loader worker processes: decode image folders, gather / resize in-memory images")
    max_train_images: int | None = knob(None, metavar="N", group=DATA, help="train on the first N images of the training split")
    bn_images: int = knob(2000, metavar="N", group=DATA, help="training images that re-estimate BatchNorm statistics")
    # optimisation
    epochs: int = knob(10, metavar="N", group=OPTIM, help="training epochs")
    warmup_epochs: float = knob(1.0, metavar="E", group=OPTIM, help="epochs of linear learning-rate warm-up before the cosine decay")
    lr: float = knob(0.05, metavar="LR", group=OPTIM, help="peak learning rate, cosine schedule with warm-up")
    seed: int = knob(0, metavar="S", group=OPTIM, help="seed of every random stream (weights, data order, augmentation)")
    # where: "auto" (CUDA when available, else CPU), "cpu", "cuda", "cuda:N"; the precision of the
    # multiplicative layers ("bf16" / "fp16": autocast; MF layers always compute in float32)
    device: str = knob("auto", metavar="DEV", group=WHERE,
                       help=f"where to compute: {DEVICE_HELP}; under torchrun cuda / auto put each rank on its LOCAL_RANK GPU")
    precision: str = knob("fp32", choices=tuple(PRECISIONS), group=WHERE,
                          help="fp32, or bf16 / fp16 autocast of the multiplicative layers (faster on GPUs); "
                          "multiplication-free layers always compute in fp32; fp16 adds loss scaling")
    # set by the search: the SubNet of stage one, the TargetNet of stage two (multiplicative Arch
    # dicts; ``op`` is applied) with its block indices in the SubNet, and a supernet checkpoint
    # whose weights the run starts from
    subnet: dict | None = knob(None, help="the SubNet the TargetNet trains inside (an Arch mapping; set by the search)")
    target_arch: dict | None = knob(None, help="the TargetNet cut from the SubNet (an Arch mapping; set by the search)")
    target_blocks: list[list[int]] | None = knob(None, help="the TargetNet's block indices in the SubNet (set by the search)")
    inherit: str | None = knob(None, metavar="FILE", group="the network",
                               help="a supernet checkpoint (supernet.pt) whose weights the run starts from")
    # a segmentation dataset; zoo models get an LR-ASPP head (docs/segmentation.md)
    task: str = knob("classification", choices=lambda: TASKS, group="the network",
                     help="classification, or segmentation: per-pixel classes from a segmentation dataset (mnistseg, voc, "
                     "segfolder); a zoo model gets an LR-ASPP head; metric mIoU")

    def __post_init__(self):
        super().__post_init__()
        if self.dataset is None:  # the task's bundled dataset
            self.dataset = "mnistseg" if self.task == "segmentation" else "mnist5k"

    @classmethod
    def from_layers(cls, layers: list[dict[str, Any]]) -> "TrainConfig":
        """Defaults, then each mapping of ``layers`` in turn (``nas.config.config_layers``: a config
        file, then flags or keyword arguments), validated. ``model`` and ``arch`` are one choice:
        the last layer that names either sets both (``--arch`` on the command line replaces a
        file's ``model``)."""
        values: dict[str, Any] = {}
        network = None
        for layer in layers:
            values.update(layer)
            if "model" in layer or "arch" in layer:
                network = {"model": layer.get("model"), "arch": layer.get("arch")}
        if network is None:
            if values.get("subnet") is None:
                raise ConfigError("--model", None, "give --model NAME, --arch FILE, --config FILE or --resume DIR "
                                  "(Python: model= or arch=)")
            network = {"model": None, "arch": None}  # the network is the search's SubNet / TargetNet
        return cls(**{**values, **network}).validate()

    def validate(self) -> "TrainConfig":
        def check(name, ok, allowed):
            if not ok:
                raise ConfigError(name, getattr(self, name), allowed)

        from nas.data.loader import check_dataset_task

        check("op", self.op in op_kinds(), f"allowed: {', '.join(op_kinds())}")
        check("task", self.task in TASKS, f"allowed: {', '.join(TASKS)}")
        check_dataset_task(self.dataset, self.task)
        self.check_method()
        check("epochs", isinstance(self.epochs, int) and self.epochs >= 1, "an integer >= 1")
        check("batch_size", isinstance(self.batch_size, int) and self.batch_size >= 2, "an integer >= 2")
        check("lr", self.lr > 0 and math.isfinite(self.lr), "a positive number")
        check("warmup_epochs", 0 <= self.warmup_epochs <= self.epochs, f"between 0 and epochs ({self.epochs})")
        check("aug_depth", isinstance(self.aug_depth, int) and self.aug_depth >= 0, "an integer >= 0")
        check("bn_images", self.bn_images >= 1, "an integer >= 1")
        check("workers", isinstance(self.workers, int) and self.workers >= 0, "an integer >= 0")
        check("precision", self.precision in PRECISIONS, f"allowed: {', '.join(PRECISIONS)}")
        # fp16 needs loss scaling; AdderNet's adaptive gradient scale renormalises an add layer's
        # weight gradient to a fixed norm, so the GradScaler's unscale would shrink it by the scale
        check("precision", not (self.precision == "fp16" and self.op == "add" and self.eta is not None),
              "fp16 loss scaling cancels AdderNet's adaptive gradient scale of add layers: use bf16, or --eta 0")
        if (self.model is None) == (self.arch is None) and self.subnet is None:
            raise ConfigError("model", self.model, "give exactly one of --model and --arch")
        return self

    @property
    def mutation_fraction(self) -> float:
        mf = get_kind(self.op).multiplication_free  # mutation turns multiplicative units into the target's MF ones
        if self.mutation is not None:
            return self.mutation if mf else 0.0
        return 1 / 3 if (self.aug == "shiftaddaug" and mf) else 0.0

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["width_mults"], d["expand_mults"] = list(self.width_mults), list(self.expand_mults)
        if d["task"] == "classification":  # as before the field existed: runs from then still resume (config hash)
            del d["task"]
        if d["background_weight"] == 1.0:  # likewise
            del d["background_weight"]
        return d

    @staticmethod
    def from_dict(d: dict, where: str = "config") -> "TrainConfig":
        """A configuration from a mapping (a run's ``config.json``); unknown keys and values of the
        wrong type -> one ConfigError naming the key (``nas.config.from_mapping``)."""
        return TrainConfig(**from_mapping(TrainConfig, d, where)).validate()


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
            net = DynamicNet(max_arch, remap=cfg.remap, op_options=cfg.op_options, branch_norm=cfg.branch_norm,
                             remap_affine=cfg.remap_affine)
            if cfg.inherit:
                from nas.supernet.net import inherit_weights

                inherit_weights(net, load_checkpoint(Path(cfg.inherit))["model"])
            return net

        self.setup_model(build)
        self.mutation = MutationSchedule(self.target, cfg.mutation_fraction)
        log.debug(f"training {self.target.name} ({cfg.op}, aug {cfg.aug}) in {self.out} on {self.device}, {cfg.precision}: "
                  f"{loaders.train.num_images} training images, {steps} steps per epoch, largest network {max_arch.name}, "
                  f"mutation over {cfg.mutation_fraction:.3g} of training")
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
        loss = self.task.loss(logits, y, self.cfg.label_smoothing, self.cfg.background_weight)
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
            else:  # --hybrid mult (docs/method-notes.md, section 3): the augmented pass is entirely multiplicative
                net.set_active_subnet(aug_arch, aug_blocks)
            _, loss_a = self._augmented_pass(x, y)
            out["loss_aug"] = loss_a.item()
        return out

    def _augmented_pass(self, x: torch.Tensor, y: torch.Tensor):
        """The augmented pass's forward and backward, its blocks checkpointed with ``aug_checkpoint``."""
        self.net.checkpoint_blocks = self.cfg.aug_checkpoint
        try:
            return self.forward_backward(x, lambda out: self._loss(out, y))
        finally:
            self.net.checkpoint_blocks = False

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
        if self.dist.is_writer:
            log.info(f"epoch {self.epoch}/{self.cfg.epochs}: loss {row['train_loss']:.3f}  val {self.task.metric_label} "
                     f"{row[f'val_{metric}']:.2f}%  ({row['time_s']:.1f}s)")
        return row

    def write_logs(self, row: dict) -> None:
        if self.dist.is_writer:
            _write_rows(self.out / "metrics.csv", self.history)

    def fit(self, until_epoch: int | None = None) -> dict[str, Any]:
        """Train to the end (evaluate, export, summarise), or only up to ``until_epoch``."""
        metrics_path = self.out / "metrics.csv"
        if self.epoch >= self.cfg.epochs and until_epoch is None:  # a finished run: resuming it redoes nothing
            done = self.dist.broadcast_object(_finished_summary(self.out) if self.dist.is_writer else None)
            if done is not None:
                return done
        if self.dist.is_writer:
            self.out.mkdir(parents=True, exist_ok=True)
            atomic_write_json(self.out / "config.json", {"schema_version": 1, "train": self.cfg.to_dict(),
                                                          "runtime": self.runtime()})
            _truncate_metrics(metrics_path, self.epoch)
            if self.epoch and not self.history and metrics_path.is_file():  # a checkpoint from before "history"
                with metrics_path.open() as f:
                    self.history = list(csv.DictReader(f))
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


def _finished_summary(out: Path) -> dict | None:
    """The summary of a run that finished (None if it has none yet, or a damaged one: then the
    final evaluation and export run again and rewrite it)."""
    try:
        s = json.loads((out / "summary.json").read_bytes())
    except (OSError, ValueError, RecursionError):
        return None
    return s if isinstance(s, dict) and s.get("schema_version") == 1 and "test_acc" in s else None


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


def _plot_curves(metrics: Path, png: Path, column: str = "val_acc", label: str = "accuracy") -> None:
    import pandas as pd

    from nas.io import new_figure

    if not metrics.is_file():  # nothing to plot (a history moved aside by heal_csv)
        return
    df = pd.read_csv(metrics)
    fig = new_figure(figsize=(9, 3.2))
    ax = fig.subplots(1, 2)
    ax[0].plot(df["epoch"], df["train_loss"], label="target")
    if "train_loss_aug" in df:
        ax[0].plot(df["epoch"], df["train_loss_aug"], label="augmented")
    ax[0].set_xlabel("epoch"), ax[0].set_ylabel("train loss"), ax[0].legend()
    ax[1].plot(df["epoch"], df[column], marker="o")
    ax[1].set_xlabel("epoch"), ax[1].set_ylabel(f"val {label} (%)")
    fig.tight_layout()
    atomic_savefig(fig, png, dpi=110)
