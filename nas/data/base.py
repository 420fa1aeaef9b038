"""What every dataset reader returns: three splits, class names and normalisation constants.

A split is anything with ``labels`` (int64, one per image), ``__len__``, ``subset(indices)`` and
``batches(index_batches, resolution, num_workers, device)`` yielding ``(uint8 images (B, C, R, R),
labels)`` in the order of ``index_batches``. Two kinds exist: ``TensorSplit`` (images held in
memory) and ``folder.FileSplit`` (decoded lazily).

With ``num_workers > 0`` both read through one ``torch.utils.data.DataLoader`` per split and
resolution (``WorkerLoader``): worker processes gather / resize (TensorSplit) or decode
(FileSplit) the batches, stay alive from one epoch to the next (persistent workers) and hand
over page-locked (pinned) memory when the batches go to a CUDA device. Workers draw no random
numbers (augmentation happens afterwards, from the loader's seeded generators, on the batch's
device), so the batches are the same with any number of workers.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader

from .transforms import resize_uint8

# Splits are a property of the dataset, not of a run: they use this fixed seed, never the user's,
# so every run (and every engineer) evaluates on the same held-out images.
SPLIT_SEED = 0x5A_A0_65

# A resized copy bigger than this is not cached; batches are resized on the fly instead
# (CIFAR's 50,000 images at 224 px would be 7.5 GB).
CACHE_LIMIT_BYTES = 2 << 30


class TensorSplit:
    """Images held as one uint8 tensor ``(N, C, H, W)``, with one resized copy cached per resolution."""

    def __init__(self, images: Tensor, labels: Tensor):
        assert images.dtype == torch.uint8 and images.dim() == 4, images.shape
        assert labels.shape == (images.shape[0],), (labels.shape, images.shape)
        self.images = images
        self.labels = labels.to(torch.int64)
        self._resized: dict[int, Tensor] = {}
        self._loaders: dict[tuple, WorkerLoader] = {}

    def __len__(self) -> int:
        return self.images.shape[0]

    def subset(self, indices: Tensor) -> TensorSplit:
        return TensorSplit(self.images[indices], self.labels[indices])

    def at_resolution(self, resolution: int) -> Tensor | None:
        """The whole split resized once, or None when that copy would be too big to keep."""
        if self.images.shape[-1] == resolution and self.images.shape[-2] == resolution:
            return self.images
        if resolution not in self._resized:
            n, c = self.images.shape[:2]
            if n * c * resolution * resolution > CACHE_LIMIT_BYTES:
                return None
            self._resized[resolution] = resize_uint8(self.images, resolution)
        return self._resized[resolution]

    def batches(
        self, index_batches: Sequence[Tensor], resolution: int, num_workers: int = 0, device: Any = None
    ) -> Iterator[tuple[Tensor, Tensor]]:
        """Batches on the CPU; without a resized copy (too big to cache) and with ``device``
        given, each batch is resized there (a GPU resizes a batch far faster than a CPU)."""
        images = self.at_resolution(resolution)
        if num_workers > 0:  # workers gather (and resize) batches while the model trains
            key = (resolution, num_workers, pin_for(device))
            if key not in self._loaders:
                self._loaders[key] = WorkerLoader(_TensorBatches(self, images, resolution), num_workers, key[2], per_image=False)
            yield from self._loaders[key](index_batches)
            return
        for idx in index_batches:
            if images is None:
                yield resize_uint8(self.images[idx].to(device), resolution), self.labels[idx]
            else:
                yield images[idx], self.labels[idx]


class _TensorBatches:
    """Whole batches of a TensorSplit as DataLoader items (workers index and resize)."""

    def __init__(self, split: TensorSplit, images: Tensor | None, resolution: int):
        self.images, self.labels, self.resolution = split.images if images is None else images, split.labels, resolution
        self.resize = images is None

    def __getitem__(self, idx: Tensor) -> tuple[Tensor, Tensor]:
        x = self.images[idx]
        return (resize_uint8(x, self.resolution) if self.resize else x), self.labels[idx]


def pin_for(device: Any) -> bool:
    """Whether batches bound for ``device`` should come in pinned memory (CUDA: faster, asynchronous copies)."""
    return device is not None and torch.device(device).type == "cuda"


class _BatchList:
    """A batch sampler whose batches are set before each pass, so that one DataLoader (and its
    persistent workers) serves every epoch. It runs in the main process: workers only see indices."""

    def __init__(self):
        self.batches: list = []

    def __iter__(self):
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


class WorkerLoader:
    """One DataLoader with ``num_workers`` persistent workers over a split's items; call it with
    the index batches of a pass. ``per_image``: the dataset returns one image (DataLoader
    collates) or, otherwise, a whole batch for an index tensor."""

    def __init__(self, dataset: Any, num_workers: int, pin_memory: bool, per_image: bool, collate_fn: Any = None):
        self.sampler = _BatchList()
        self.per_image = per_image
        kw = dict(num_workers=num_workers, pin_memory=pin_memory, persistent_workers=num_workers > 0)
        if per_image:
            self.loader = DataLoader(dataset, batch_sampler=self.sampler, collate_fn=collate_fn, **kw)
        else:
            self.loader = DataLoader(dataset, batch_size=None, sampler=self.sampler, **kw)

    def __call__(self, index_batches: Sequence[Tensor]) -> Iterator:
        self.sampler.batches = [idx.tolist() for idx in index_batches] if self.per_image else list(index_batches)
        yield from self.loader


@dataclass
class DatasetSplits:
    """A loaded dataset: train/val/test splits plus what the transforms need to know.

    ``mean``/``std`` are per stored channel in [0, 1] units (1 channel for MNIST, 3 otherwise),
    ``augment``/``flip`` are the dataset's default training augmentation.
    """

    name: str
    train: Any
    val: Any
    test: Any
    class_names: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    augment: str = "crop"
    flip: bool = True
    source: str = ""
    notes: list[str] = field(default_factory=list)
    # "segmentation": splits yield per-pixel masks (nas.data.segmentation) instead of labels;
    # ``seg_scale``: the zoom range of their joint training augmentation
    task: str = "classification"
    seg_scale: tuple[float, float] = (0.5, 2.0)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def channels(self) -> int:
        return len(self.mean)


def shares(counts: Tensor, total: int) -> Tensor:
    """Split ``total`` over classes in proportion to ``counts`` (largest remainder, ties to the
    lower class index), so a stratified piece has exactly ``total`` images."""
    counts = counts.to(torch.int64)
    exact = counts.double() * total / counts.sum().double()
    out = exact.floor().to(torch.int64)
    rest = total - int(out.sum())
    if rest > 0:
        frac = exact - out.double()
        # Stable sort on -frac: equal remainders go to the lower class index.
        order = torch.sort(-frac, stable=True).indices
        out[order[:rest]] += 1
    return torch.minimum(out, counts)


def stratified_split(labels: Tensor, num_classes: int, pieces: Sequence[Tensor]) -> list[Tensor]:
    """Cut each class (shuffled with the fixed split seed) into ``pieces[k][c]`` images for piece k;
    what is left of each class forms the last returned piece. Index tensors come back sorted."""
    gen = torch.Generator().manual_seed(SPLIT_SEED)
    out: list[list[Tensor]] = [[] for _ in range(len(pieces) + 1)]
    for c in range(num_classes):
        members = torch.nonzero(labels == c).flatten()
        members = members[torch.randperm(len(members), generator=gen)]
        start = 0
        for k, piece in enumerate(pieces):
            n = int(piece[c])
            out[k].append(members[start : start + n])
            start += n
        out[-1].append(members[start:])
    return [torch.sort(torch.cat(p)).values if p else torch.empty(0, dtype=torch.int64) for p in out]


def class_counts(labels: Tensor, num_classes: int) -> Tensor:
    return torch.bincount(labels, minlength=num_classes)
