"""What every dataset reader returns: three splits, class names and normalisation constants.

A split is anything with ``labels`` (int64, one per image), ``__len__``, ``subset(indices)`` and
``batches(index_batches, resolution, num_workers)`` yielding ``(uint8 images (B, C, R, R), labels)``.
Two kinds exist: ``TensorSplit`` (images held in memory) and ``folder.FileSplit`` (decoded lazily).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

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
        self, index_batches: Sequence[Tensor], resolution: int, num_workers: int = 0
    ) -> Iterator[tuple[Tensor, Tensor]]:
        # num_workers is ignored: indexing an in-memory tensor needs no worker processes.
        images = self.at_resolution(resolution)
        for idx in index_batches:
            if images is None:
                yield resize_uint8(self.images[idx], resolution), self.labels[idx]
            else:
                yield images[idx], self.labels[idx]


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
