"""``TrainLoop``: the one training loop of the toolkit; trainers implement their step on it.

``nas.train.trainer.Trainer`` (direct / NetAug / ShiftAddAug training) and
``nas.supernet.train.SupernetTrainer`` (sandwich-rule supernet training) are subclasses: they
build their network (``setup_model``), implement ``train_step`` (the forward/backward passes of
one step, each through ``forward_backward``) and say what an epoch ends with (``end_epoch``).
The loop owns everything else:

* the schedule: epochs of ``len(loaders.train)`` steps, the global step, the learning rate of
  every iteration (linear warm-up then cosine, NetAug's), SGD with Nesterov momentum on
  ``param_groups`` (weight decay on conv / linear weights only);
* randomness: ``generator`` (a ``torch.Generator``: dropout and anything else drawn on the
  device during a step) and ``py_rngs`` (named ``random.Random`` instances: the samplers of
  subnets). Weights are initialised under a fork of torch's global stream seeded with the run's
  seed, so building a model never disturbs the caller's stream, the same seed builds the same
  weights, and ``generator`` starts where that stream stopped (on CPU: exactly the numbers a run
  that seeded the global stream would draw);
* checkpoints: ``state_dict`` / ``load_state_dict`` hold the model, optimizer, schedule, every
  random stream and the loader's position, so a resumed run is bit-for-bit the run that was not
  interrupted (on CPU); ``save_checkpoint`` / ``load_checkpoint`` are the one place that writes
  and reads them (rank 0 reads and hands the state to the other ranks);
* device and precision (``resolve_device``, ``PRECISIONS``): the model and the batches live on
  ``device``; forward passes run under ``torch.autocast`` in bf16 / fp16 (multiplication-free
  layers leave it and compute in float32: ``nas.ops.precision``), fp16 with a ``GradScaler``;
* data parallelism (``nas.train.distributed``): the model wrapped in DDP, gradients averaged in
  the last pass of a step only, rank 0 the only one that writes files;
* progress bars, per-epoch rows and ``epoch_callbacks`` (functions of the row, e.g. Ray's report).
"""

from __future__ import annotations

import contextlib
import math
import random
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import torch
import torch.nn as nn

from nas.errors import ConfigError
from nas.finite import check_losses, check_weights
from nas.io import load_checkpoint as load_checkpoint_copies
from nas.io import save_checkpoint as save_checkpoint_rotating
from nas.train.distributed import Distributed

if TYPE_CHECKING:  # pragma: no cover
    from nas.data.loader import Loaders

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
DEVICE_HELP = "auto (CUDA when available, else CPU), cpu, cuda or cuda:N"


# ---------------------------------------------------------------------------------- devices and precision
def resolve_device(spec: str | torch.device | None = "auto") -> torch.device:
    """``auto`` | ``cpu`` | ``cuda`` | ``cuda:N`` -> a ``torch.device`` that exists on this machine.

    A CUDA device that is not there is one ``ConfigError`` line, not a CUDA traceback later.
    """
    if isinstance(spec, torch.device):
        spec = str(spec)
    spec = "auto" if spec is None else str(spec).strip().lower()
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec == "cpu":
        return torch.device("cpu")
    kind, _, index = spec.partition(":")
    if kind != "cuda" or (index and not index.isdigit()):
        raise ConfigError("device", spec, f"allowed: {DEVICE_HELP}")
    if not torch.cuda.is_available():
        raise ConfigError("device", spec, "no CUDA device is available here (torch.cuda.is_available() is False); "
                          "use --device cpu or auto")
    n = torch.cuda.device_count()
    if index and int(index) >= n:
        raise ConfigError("device", spec, f"this machine has {n} CUDA device(s): cuda:0..cuda:{n - 1}")
    return torch.device(spec)


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise ConfigError("precision", precision, f"allowed: {', '.join(PRECISIONS)}")
    return precision


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """The forward context of ``precision``: autocast to bf16 / fp16, or nothing for fp32."""
    dtype = PRECISIONS[check_precision(precision)]
    return contextlib.nullcontext() if dtype is None else torch.autocast(device.type, dtype=dtype)


# ---------------------------------------------------------------------------------- schedule and optimizer
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


# ---------------------------------------------------------------------------------- random streams in checkpoints
def py_rng_state(rng: random.Random) -> dict:
    """A ``random.Random`` state as tensors (what ``torch.load(weights_only=True)`` reads back)."""
    v, state, gauss = rng.getstate()
    return {"version": v, "state": torch.tensor(state, dtype=torch.int64), "gauss": gauss}


def set_py_rng_state(rng: random.Random, d: dict) -> None:
    rng.setstate((d["version"], tuple(int(x) for x in d["state"].tolist()), d["gauss"]))


def read_checkpoint(path: str | Path) -> dict:
    """A checkpoint's tensors on the CPU (``load_state_dict`` moves them to the run's device)."""
    return torch.load(path, map_location="cpu", weights_only=True)


# ---------------------------------------------------------------------------------- the loop
class TrainLoop:
    """Schedule, optimizer, random streams, checkpoints, device, precision, DDP and progress.

    Subclasses call ``setup_model`` once in their constructor and implement ``train_step``
    (which returns a dict of floats for the epoch means) and ``end_epoch`` (which turns the means
    into the epoch's row, evaluates, writes logs). Hooks: ``on_epoch_start(epoch)``,
    ``postfix(stats)`` (progress bar), ``extra_state()`` / ``check_state(sd)`` (checkpoint keys
    of the subclass), and ``epoch_callbacks`` (called with every row, after the checkpoint).
    """

    checkpoint_version = 1
    desc = "epoch"  # progress bar label

    def __init__(self, loaders: Loaders, *, epochs: int, lr: float, warmup_steps: int, seed: int, weight_decay: float = 4e-5,
                 momentum: float = 0.9, remap_lr_scale: float = 0.01, device: str | torch.device | None = "cpu",
                 precision: str = "fp32", dist: Distributed | None = None, progress: bool = True):
        self.loaders = loaders
        self.epochs, self.lr, self.seed = epochs, lr, seed
        self.weight_decay, self.momentum, self.remap_lr_scale = weight_decay, momentum, remap_lr_scale
        self.device = resolve_device(device)
        self.precision = check_precision(precision)
        self.dist = dist or Distributed()
        self.progress = progress and self.dist.is_writer
        if self.dist.world_size > 1:
            loaders.train.set_shard(self.dist.rank, self.dist.world_size)
        self.steps_per_epoch = len(loaders.train)
        self.total_steps = epochs * self.steps_per_epoch
        self.warmup_steps = warmup_steps
        self.epoch = 0
        self.global_step = 0
        self.lr_now = 0.0
        # one row per finished epoch, kept in the checkpoint: the logs are rewritten from it, so a log
        # write that failed (full disk) after its checkpoint was saved heals on resume
        self.history: list[dict] = []
        self.py_rngs: dict[str, random.Random] = {}
        self.epoch_callbacks: list[Callable[[dict], None]] = []
        # what the step sampled (subnet ids): compared across ranks after every epoch
        self.samples: list = []
        self.sample_digests: list[str] = []
        self.net: nn.Module | None = None
        self.model: nn.Module | None = None  # the net, or its DDP wrapper: what a step's forward calls
        self.optimizer: torch.optim.Optimizer | None = None
        self.generator: torch.Generator | None = None
        self.checkpoint_path: Path | None = None  # set by the subclass
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")

    # ------------------------------------------------------------------------------ building
    def setup_model(self, build: Callable[[], nn.Module]) -> nn.Module:
        """Build the network from the run's seed, move it to the device, make the optimizer and
        (distributed) the DDP wrapper. ``build`` may also load weights (inheritance)."""
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(self.seed)  # the CPU stream only (torch.manual_seed also reseeds CUDA's)
            net = build()  # on the CPU: the same seed builds the same weights for every device
            cpu_state = torch.get_rng_state()
        if self.device.type == "cpu":
            self.generator = torch.Generator()
            self.generator.set_state(cpu_state)
        else:  # a device generator has its own kind of state: seeded from the run's seed
            self.generator = torch.Generator(self.device).manual_seed(self.seed)
        net.generator = self.generator  # DynamicNet draws dropout masks from it
        self.net = net.to(self.device)
        self.optimizer = torch.optim.SGD(param_groups(self.net, self.weight_decay, self.remap_lr_scale), lr=self.lr,
                                         momentum=self.momentum, nesterov=True)
        self.model = self.dist.wrap(self.net, self.device)
        return self.net

    # ------------------------------------------------------------------------------ one step
    def autocast(self) -> contextlib.AbstractContextManager:
        return autocast(self.device, self.precision)

    def forward_backward(self, x: torch.Tensor, loss_fn: Callable[[torch.Tensor], torch.Tensor],
                         last: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """One pass of a step: forward under the run's precision, ``loss_fn(output)``, backward.

        Gradients of the passes of a step accumulate; with DDP they are averaged across ranks
        once, in the ``last`` pass (every other pass runs under ``no_sync``). DDP then averages
        what each parameter accumulated over all passes, also for parameters the last pass does
        not use (they are found unused in its forward and their gradient joins the average).
        """
        sync = contextlib.nullcontext() if last or self.model is self.net else self.model.no_sync()
        with sync:
            with self.autocast():
                out = self.model(x)
                loss = loss_fn(out)
            self.scaler.scale(loss).backward()
        return out, loss

    def train_step(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        raise NotImplementedError

    def step(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        """Learning rate of this iteration, the subclass's passes, one optimizer step."""
        self.lr_now = cosine_lr(self.global_step, self.total_steps, self.warmup_steps, self.lr)
        for g in self.optimizer.param_groups:
            g["lr"] = self.lr_now * g["lr_scale"]
        self.optimizer.zero_grad(set_to_none=True)
        # batches come on the device from the run's loaders; anything else is moved (a no-op otherwise)
        x = x.to(self.device, non_blocking=True)
        stats = self.train_step(x, y.to(self.device, non_blocking=True))
        # before the optimizer step: after it every weight would be NaN and the layer could not be named
        check_losses(self.net, stats, x, f"{self.where()}epoch {self.epoch + 1}, step {self.global_step + 1}")
        self.scaler.step(self.optimizer)  # optimizer.step(), unless fp16 found inf / nan gradients
        self.scaler.update()
        self.global_step += 1
        return stats

    # ------------------------------------------------------------------------------ epochs
    def on_epoch_start(self, epoch: int) -> None:
        """Called before the first step of every epoch."""

    def postfix(self, stats: dict[str, float]) -> dict[str, str]:
        return {}

    def end_epoch(self, means: dict[str, float], seconds: float) -> dict:
        """The row of the epoch just finished (``self.epoch`` already counts it); subclasses
        evaluate and write their logs here, before the checkpoint is written."""
        return {"epoch": self.epoch, "time_s": round(seconds, 2), **means}

    def write_logs(self, row: dict) -> None:
        """Write the run's logs from ``self.history`` (whose last row is ``row``; rank 0 writes); called
        right after the checkpoint, so that a run killed in between redoes the epoch without a
        duplicate row, and a log whose write failed is whole again after the next epoch."""

    def train_epochs(self, until_epoch: int | None = None) -> None:
        """Train from the current epoch to ``until_epoch`` (default: the last), a checkpoint after each."""
        from tqdm import tqdm

        for epoch in range(self.epoch, min(self.epochs, until_epoch or self.epochs)):
            self.on_epoch_start(epoch)
            self.loaders.train.set_epoch(epoch)
            self.net.train()
            t0 = time.time()
            sums: dict[str, float] = {}
            n = 0
            bar = tqdm(self.loaders.train, total=self.steps_per_epoch, desc=f"{self.desc} {epoch + 1}/{self.epochs}",
                       disable=not self.progress, leave=False, dynamic_ncols=True)
            for x, y in bar:
                stats = self.step(x, y)
                n += 1
                for k, v in stats.items():
                    sums[k] = sums.get(k, 0.0) + v
                bar.set_postfix(self.postfix(stats))
            bar.close()
            self.epoch = epoch + 1
            if self.dist.active:  # every rank must have sampled the same subnets and hold the same weights
                self.sample_digests.append(self.dist.check_in_sync(self.net, self.samples))
            self.samples = []
            row = self.end_epoch({k: v / max(1, n) for k, v in sums.items()}, time.time() - t0)
            self.history.append(row)
            self.save_checkpoint()
            self.write_logs(row)  # after the checkpoint: an epoch in a log is a finished epoch
            for fn in self.epoch_callbacks:
                fn(row)

    # ------------------------------------------------------------------------------ state
    def extra_state(self) -> dict:
        """Checkpoint keys of the subclass (its config, ...)."""
        return {}

    def check_state(self, sd: dict) -> dict:
        """Validate (and upgrade) a checkpoint before it is loaded; raise ``ConfigError`` if it does not fit."""
        if sd.get("version") != self.checkpoint_version:
            raise ConfigError("checkpoint.version", sd.get("version"), f"this version reads {self.checkpoint_version}")
        return sd

    def state_dict(self) -> dict:
        sd = {
            "version": self.checkpoint_version,
            **self.extra_state(),
            "model": self.net.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "schedule": {"global_step": self.global_step, "total_steps": self.total_steps, "epoch": self.epoch},
            "history": self.history,
            "rng": {
                "torch": self.generator.get_state(),
                "torch_device": self.device.type,
                **{name: py_rng_state(r) for name, r in self.py_rngs.items()},
                "loader": self.loaders.train.state_dict(),
            },
        }
        if self.scaler.is_enabled():
            sd["scaler"] = self.scaler.state_dict()
        return sd

    def load_state_dict(self, sd: dict) -> None:
        sd = self.check_state(sd)
        self.net.load_state_dict(sd["model"])
        self.optimizer.load_state_dict(sd["optimizer"])  # moves the momentum buffers to the parameters' device
        self.global_step = sd["schedule"]["global_step"]
        self.epoch = sd["schedule"]["epoch"]
        self.history = list(sd.get("history", []))  # checkpoints written before it: the subclass reads its log
        rng = sd["rng"]
        if rng.get("torch_device", "cpu") == self.device.type:
            self.generator.set_state(rng["torch"])
        else:  # resumed on another kind of device: its generator cannot take the other's state
            self.generator.manual_seed(self.seed * 1_000_003 + self.global_step)
        for name, r in self.py_rngs.items():
            set_py_rng_state(r, rng[name])
        self.loaders.train.load_state_dict(rng["loader"])
        if self.scaler.is_enabled() and "scaler" in sd:
            self.scaler.load_state_dict(sd["scaler"])

    def where(self) -> str:
        """The prefix that names this loop in messages ("" for the training run, "supernet ")."""
        return "" if self.desc == "epoch" else f"{self.desc} "

    def save_checkpoint(self) -> None:
        """Write ``state_dict`` to ``checkpoint_path`` atomically (rank 0 only), keeping the previous
        checkpoint as ``<name>.1.pt``; a diverged network is never checkpointed (one line names the layer)."""
        check_weights(self.net, f"{self.where()}epoch {self.epoch}")
        if self.dist.is_writer:
            save_checkpoint_rotating(self.state_dict(), self.checkpoint_path)

    def load_checkpoint(self) -> bool:
        """Continue from ``checkpoint_path`` if it exists: rank 0 reads it, every rank loads it.
        Returns whether a checkpoint was loaded."""
        from nas.io import checkpoint_copies

        sd = None
        if self.dist.is_writer and checkpoint_copies(self.checkpoint_path):
            # the newest copy that loads into this run (else the previous one, with a note)
            sd, _ = load_checkpoint_copies(self.checkpoint_path, apply=self.load_state_dict)
        sd = self.dist.broadcast_object(sd)
        if sd is None:
            return False
        if not self.dist.is_writer:
            self.load_state_dict(sd)
        return True
