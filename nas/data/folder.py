"""``folder``: any image folder, one subfolder per class, decoded lazily by DataLoader workers.

ImageNet's layout (``ROOT/train/<wnid>/*.JPEG``, ``ROOT/val/<wnid>/*.JPEG``) is the second layout
below; JPEGs are decoded at reduced size (PIL's draft mode) when the target resolution allows.

Layouts: ``ROOT/<class>/*.png`` (split here: a fixed stratified 80/10/10 per class), or
``ROOT/train/<class>/...`` + ``ROOT/val/<class>/...`` (+ optional ``ROOT/test/``; without it the
test loader reads val). Class names are the sorted subfolder names of the training part.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from ..errors import ConfigError
from .base import DatasetSplits, WorkerLoader, pin_for, stratified_split
from .transforms import channel_stats

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
DEFAULT_SPLIT_FRACTION = 0.1  # of each class, for val and again for test, when there are no split folders
STATS_IMAGES = 128  # normalisation stats come from this many training images (decoding all is too slow)
STATS_RESOLUTION = 32

LAYOUT = (
    "expected ROOT/<class>/<images> (png/jpg/jpeg/bmp/webp), "
    "or ROOT/train/<class>/... and ROOT/val/<class>/... (optional ROOT/test/)"
)


def _visible_dirs(path: Path) -> list[str]:
    return sorted(d.name for d in path.iterdir() if d.is_dir() and not d.name.startswith("."))


def _images_under(path: Path) -> list[str]:
    """Image files anywhere below ``path``, in a fixed (sorted) order."""
    found = []
    for dirpath, dirnames, filenames in os.walk(path):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found += [
            os.path.join(dirpath, f)
            for f in sorted(filenames)
            if not f.startswith(".") and f.lower().endswith(IMAGE_EXTENSIONS)
        ]
    return found


def scan(path: Path, class_names: list[str] | None = None) -> tuple[list[str], list[str], Tensor]:
    """(class names, image paths, labels) of one ``<class>/<images>`` tree.

    With ``class_names`` given (val/test next to train) the folder's classes must be among them.
    """
    classes = _visible_dirs(path)
    if not classes:
        raise ConfigError("data_root", str(path), f"no class subfolders; {LAYOUT}")
    if class_names is not None:
        unknown = sorted(set(classes) - set(class_names))
        if unknown:
            raise ConfigError("data_root", str(path), f"class folders {unknown} are not in train/; {LAYOUT}")
    names = class_names if class_names is not None else classes
    index = {c: i for i, c in enumerate(names)}
    paths: list[str] = []
    labels: list[int] = []
    for c in classes:
        files = _images_under(path / c)
        if not files:
            raise ConfigError("data_root", str(path / c), f"class folder holds no images; {LAYOUT}")
        paths += files
        labels += [index[c]] * len(files)
    return names, paths, torch.tensor(labels, dtype=torch.int64)


def decode(path: str, resolution: int) -> Tensor:
    """One image as uint8 (3, R, R): RGB, shorter side resized to R (antialiased), centre crop."""
    try:
        with Image.open(path) as im:
            im.draft("RGB", (resolution, resolution))  # JPEG: decode at reduced size, much faster
            im = im.convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise ConfigError("data_root", path, f"not a readable image ({e})") from None
    w, h = im.size
    s = resolution / min(w, h)
    nw, nh = max(resolution, round(w * s)), max(resolution, round(h * s))
    if (nw, nh) != (w, h):
        im = im.resize((nw, nh), Image.BILINEAR)  # PIL widens the filter when shrinking: antialiased
    left, top = (nw - resolution) // 2, (nh - resolution) // 2
    im = im.crop((left, top, left + resolution, top + resolution))
    return torch.from_numpy(np.asarray(im, dtype=np.uint8).copy()).permute(2, 0, 1).contiguous()


class _Decoded(Dataset):
    def __init__(self, paths: list[str], labels: Tensor, resolution: int):
        self.paths, self.labels, self.resolution = paths, labels, resolution

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[Tensor | tuple, Tensor]:
        try:
            return decode(self.paths[i], self.resolution), self.labels[i]
        except ConfigError as e:
            # DataLoader re-raises worker exceptions as RuntimeError (ConfigError's constructor
            # takes three arguments), so the error travels back as data and is raised in the
            # main process, where the CLI can print its one line.
            return (e.field, e.value, e.allowed), self.labels[i]


def _collate(items: list[tuple[Tensor | tuple, Tensor]]) -> tuple[Tensor | None, Tensor | tuple]:
    for x, _ in items:
        if isinstance(x, tuple):
            return None, x
    return torch.stack([x for x, _ in items]), torch.stack([y for _, y in items])


class FileSplit:
    """Image paths + labels; ``batches`` decodes the requested batches with DataLoader workers."""

    def __init__(self, paths: list[str], labels: Tensor):
        self.paths = paths
        self.labels = labels
        self._loaders: dict[tuple, WorkerLoader] = {}

    def __len__(self) -> int:
        return len(self.paths)

    def subset(self, indices: Tensor) -> FileSplit:
        return FileSplit([self.paths[i] for i in indices.tolist()], self.labels[indices])

    def batches(self, index_batches: Sequence[Tensor], resolution: int, num_workers: int = 0,
                device: torch.device | str | None = None) -> Iterator[tuple[Tensor, Tensor]]:
        # The batch order is fixed by the caller; workers only decode, and DataLoader keeps order.
        key = (resolution, num_workers, pin_for(device))
        if key not in self._loaders:
            self._loaders[key] = WorkerLoader(_Decoded(self.paths, self.labels, resolution), num_workers, key[2],
                                              per_image=True, collate_fn=_collate)
        for images, labels in self._loaders[key](index_batches):
            if images is None:
                raise ConfigError(*labels)
            yield images, labels


def _stats(split: FileSplit) -> tuple[tuple[float, ...], tuple[float, ...]]:
    n = min(len(split), STATS_IMAGES)
    picks = torch.linspace(0, len(split) - 1, n).round().long().unique()
    images = torch.stack([decode(split.paths[i], STATS_RESOLUTION) for i in picks.tolist()])
    return channel_stats(images)


def load_folder(root: str | Path | None, val_size: float | None = None) -> DatasetSplits:
    """Read an image folder; ``val_size`` is the per-class fraction held out for val (and again
    for test) when the folder has no train/ val/ subfolders."""
    if root is None:
        raise ConfigError("data_root", None, f"folder needs --data-root; {LAYOUT}")
    root = Path(root).expanduser()
    if not root.is_dir():
        raise ConfigError("data_root", str(root), f"no such directory; {LAYOUT}")
    notes: list[str] = []

    if (root / "train").is_dir() and (root / "val").is_dir():
        names, paths, labels = scan(root / "train")
        train = FileSplit(paths, labels)
        val = FileSplit(*scan(root / "val", names)[1:])
        if (root / "test").is_dir():
            test = FileSplit(*scan(root / "test", names)[1:])
        else:
            test = val
            notes.append("no test/ folder: the test loader reads val/")
    else:
        frac = DEFAULT_SPLIT_FRACTION if val_size is None else val_size
        if not isinstance(frac, float) or not 0.0 < frac < 0.5:
            raise ConfigError("val_size", val_size, "for a folder without train/ val/, a fraction in (0, 0.5)")
        names, paths, labels = scan(root)
        counts = torch.bincount(labels, minlength=len(names))
        for c, n in enumerate(counts.tolist()):
            if n < 3:
                raise ConfigError("data_root", str(root / names[c]), f"has {n} images; splitting needs at least 3 per class")
        # At least one image per class in val and in test, the rest (at least one) in train.
        held = (counts.double() * frac).round().long().clamp(min=1)
        held = torch.minimum(held, (counts - 1) // 2)
        full = FileSplit(paths, labels)
        val_idx, test_idx, train_idx = stratified_split(labels, len(names), [held, held])
        train, val, test = full.subset(train_idx), full.subset(val_idx), full.subset(test_idx)

    mean, std = _stats(train)
    return DatasetSplits(
        name="folder",
        train=train,
        val=val,
        test=test,
        class_names=names,
        mean=mean,
        std=std,
        augment="rrc",
        flip=True,
        source=str(root),
        notes=notes,
    )
