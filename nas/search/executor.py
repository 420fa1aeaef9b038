"""Where the search's heavy steps run: one small interface, a local and a Ray implementation.

``SearchRun`` (``nas.search.pipeline``) decides *what* to compute and keeps the run directory;
an ``Executor`` decides *where*. It has four methods, one per heavy step:

* ``train_supernet(job)``: train the hybrid supernet described by a ``SupernetJob`` (space,
  operator, data, trainer options, checkpoint and log paths), resuming from its checkpoint;
* ``evaluate(evaluator, candidates)``: the accuracies of a batch of SubNets, in order, exactly as
  ``evaluator.accuracy`` computes them (stage one's fitness); results land in the evaluator's
  cache and count in its ``calls`` whichever executor computed them;
* ``run_stage_two(evaluator, job)``: the Optuna study that cuts the TargetNet out of the SubNet
  (``StageTwoJob``), returning ``(TargetResult, study)``;
* ``train_target(job)``: ShiftAddAug training of the TargetNet (``TargetJob``: a ``TrainConfig``,
  or None to resume the run directory), returning the trainer's summary.

Every input is explicit and picklable (no run object is handed over), so a worker process on
another machine can rebuild what it needs from the job alone. ``LocalExecutor`` computes in this
process; ``nas.search.ray_executor.RayExecutor`` (the only module that imports ray) sends each step
to a Ray cluster. ``release()`` frees workers an executor holds between steps (Ray's evaluation
actors) and may be called any time.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

if TYPE_CHECKING:  # annotations only
    import torch

    from nas.arch import Arch
    from nas.data import Loaders
    from nas.search.evaluator import Evaluator
    from nas.search.target_search import TargetResult
    from nas.space import SearchSpace
    from nas.supernet.train import SupernetTrainer
    from nas.train.distributed import Distributed
    from nas.train.trainer import TrainConfig


@dataclass(frozen=True)
class DataSpec:
    """How to build the training data (``nas.data.build_loaders``): every worker builds the same."""

    dataset: str
    root: str | None
    resolution: int
    batch_size: int
    seed: int
    max_train_images: int | None = None
    workers: int = 0

    def build(self, device: "str | torch.device | None" = None) -> "Loaders":
        from nas.data import build_loaders

        return build_loaders(self.dataset, self.root, resolution=self.resolution, batch_size=self.batch_size,
                             seed=self.seed, max_train_images=self.max_train_images, num_workers=self.workers,
                             device=device)


@dataclass
class SupernetJob:
    """Supernet training: ``SupernetTrainer(space, op, loaders, **options)`` fitted to ``checkpoint``."""

    space: "SearchSpace"
    op: str
    data: DataSpec
    options: dict[str, Any]  # SupernetTrainer keyword arguments: epochs, lr, seed, remap, op_options, ...
    checkpoint: Path
    log: Path

    def trainer(self, loaders: "Loaders | None" = None, device: "str | torch.device | None" = "cpu",
                dist: "Distributed | None" = None, progress: bool = False) -> "SupernetTrainer":
        """The job's trainer (untrained; ``fit`` resumes from the checkpoint). ``loaders``: built
        from ``data`` already in this process (else built here)."""
        from nas.supernet.train import SupernetTrainer

        loaders = loaders if loaders is not None else self.data.build(device)
        return SupernetTrainer(self.space, self.op, loaders, self.checkpoint.parent, progress=progress, device=device,
                               dist=dist, **self.options)


@dataclass
class StageTwoJob:
    """Stage two: ``trials`` Optuna trials over the TargetNets of ``subnet``, priced by ``cost``."""

    space: "SearchSpace"
    subnet: "Arch"
    op: str  # the TargetNet's MF operator (applied before evaluating)
    cost: Callable[["Arch"], float]  # price of a TargetNet in the budget's unit (picklable: a Pricer's method)
    budget: float
    trials: int
    journal: Path  # the study's JournalStorage file
    seed: int = 0


@dataclass
class TargetJob:
    """ShiftAddAug training of one TargetNet into ``train_dir``, exported to ``export_dir``."""

    config: "TrainConfig | None"  # None: resume ``train_dir``
    train_dir: Path
    export_dir: Path | None = None  # default: train_dir/target
    device: str | None = None  # with config=None: move the resumed run there (None: its own)


class Executor(ABC):
    """Runs the heavy steps of a search (see the module docstring). ``progress``: draw bars."""

    progress: bool = True

    @abstractmethod
    def train_supernet(self, job: SupernetJob, loaders: "Loaders | None" = None) -> None:
        """Train (or finish training) the supernet into ``job.checkpoint`` and ``job.log``.
        ``loaders``: ``job.data`` already built in this process, for executors that compute here."""

    @abstractmethod
    def evaluate(self, evaluator: "Evaluator", candidates: Sequence["Arch"]) -> list[float]:
        """``[evaluator.accuracy(a) for a in candidates]``, wherever it is computed."""

    @abstractmethod
    def run_stage_two(self, evaluator: "Evaluator", job: StageTwoJob) -> tuple["TargetResult", Any]:
        """Run or resume the study in ``job.journal``; ``(best TargetNet, study)``."""

    @abstractmethod
    def train_target(self, job: TargetJob) -> dict:
        """Train (or resume) the TargetNet; the trainer's summary (``Trainer.fit``)."""

    def release(self) -> None:  # noqa: B027 (a hook with a default: most executors hold nothing)
        """Free workers held between steps (nothing to do here)."""


def stage_two_accuracy(evaluator: "Evaluator", op: str) -> Callable:
    """Stage two's objective: a TargetNet's accuracy in the supernet with its MF operator."""
    return lambda target, blocks: evaluator.accuracy(target.with_ops(op), blocks)


@dataclass
class LocalExecutor(Executor):
    """Every step in this process, on ``device``."""

    device: "str | torch.device" = "cpu"
    progress: bool = True

    def train_supernet(self, job: SupernetJob, loaders: "Loaders | None" = None) -> None:
        job.trainer(loaders, self.device, progress=self.progress).fit(job.checkpoint, job.log)

    def evaluate(self, evaluator: "Evaluator", candidates: Sequence["Arch"]) -> list[float]:
        return [evaluator.accuracy(a) for a in candidates]

    def run_stage_two(self, evaluator: "Evaluator", job: StageTwoJob) -> tuple["TargetResult", Any]:
        from nas.search.target_search import run_stage_two

        try:
            return run_stage_two(job.space, job.subnet, stage_two_accuracy(evaluator, job.op), job.cost, job.budget,
                                 job.trials, job.journal, seed=job.seed, progress=self.progress)
        except OSError as e:  # Optuna's journal writes name no file: name it for the one-line message
            raise e if e.filename else OSError(e.errno, e.strerror, str(job.journal)) from e

    def train_target(self, job: TargetJob) -> dict:
        from nas.train.trainer import Trainer, resume_trainer

        if job.config is None:
            trainer = resume_trainer(job.train_dir, progress=self.progress, export_dir=job.export_dir,
                                     device=job.device)
        else:
            trainer = Trainer(job.config, job.train_dir, progress=self.progress, export_dir=job.export_dir)
        return trainer.fit()
