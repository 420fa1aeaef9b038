"""Segmentation datasets: images with per-pixel class masks, and their joint augmentation.

Three readers, all offline, all returning a ``DatasetSplits`` with ``task="segmentation"`` whose
splits yield ``(uint8 images (B, C, R, R), uint8 masks (B, R, R))``:

* ``mnistseg`` (bundled): 64x64 canvases composed deterministically from the real MNIST digits of
  ``mnist5k`` (1 to 3 digits each, at 28, 36 or 44 px, at random places). A pixel's class is
  ``1 + digit`` where that digit's stroke is brighter than ``STROKE_THRESHOLD``, else 0
  (background): 11 classes. Train canvases use only mnist5k's training digits, val canvases only
  its validation digits and test canvases only its test digits, so no evaluated digit was seen in
  training.
* ``voc``: Pascal VOC's layout: ``JPEGImages/<id>.jpg``, ``SegmentationClass/<id>.png`` (palette
  PNGs whose indices are the classes, 255 = boundary / void, ignored),
  ``ImageSets/Segmentation/{train,val}.txt``; 21 classes. The test loader reads val (VOC's test
  masks are not public).
* ``segfolder``: ``ROOT/images/<stem>.{jpg,png,...}`` + ``ROOT/masks/<stem>.png`` (single-channel
  PNG of class indices, 255 ignored), or ``ROOT/train/{images,masks}`` + ``ROOT/val/...``
  (+ optional ``ROOT/test/``). Class names from ``ROOT/classes.txt`` (one per line), else the
  masks are scanned once for the largest index.

Files are decoded at the run's resolution (shorter side resized to R, centre square; the image
bilinear, the mask nearest-neighbour) by DataLoader workers when asked; a file that is corrupt, a
mask of another size than its image, a mask that is not single-channel or holds an unknown class
stops the run with one ``ConfigError`` line naming the file. Training augmentation
(``SegTransform``) happens afterwards on the batch, from the loader's seeded generators: one
random scale, crop and (photos) horizontal flip per image, applied identically to the image
(bilinear) and its mask (nearest-neighbour; pixels from outside the image are ignored).
"""

from __future__ import annotations

import functools
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from ..errors import ConfigError
from .base import SPLIT_SEED, DatasetSplits, WorkerLoader, pin_for
from .folder import IMAGE_EXTENSIONS, _collate
from .transforms import _draw, _n, channel_stats, resize_uint8

IGNORE_INDEX = 255
# mnistseg
CANVAS = 64
STROKE_THRESHOLD = 128  # a digit's pixel belongs to the digit above this intensity (of 255)
DIGIT_SIZES = (28, 36, 44)
CANVASES = {"train": 4000, "val": 500, "test": 500}
VOC_CLASSES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)
STATS_IMAGES = 128
MASK_MODES = ("L", "P", "1", "I", "I;16")

VOC_LAYOUT = "expected Pascal VOC's JPEGImages/, SegmentationClass/ and ImageSets/Segmentation/{train,val}.txt (ROOT or ROOT/VOC2012 or ROOT/VOCdevkit/VOC2012)"
FOLDER_LAYOUT = ("expected ROOT/images/ + ROOT/masks/ (same file stems; masks: single-channel PNGs of class indices), "
                 "or ROOT/train/{images,masks} + ROOT/val/{images,masks} (optional ROOT/test/); optional ROOT/classes.txt")


# ---------------------------------------------------------------------------------- in-memory splits
class SegTensorSplit:
    """Images ``(N, C, H, W)`` and masks ``(N, H, W)`` (uint8) in memory; resized copies cached."""

    def __init__(self, images: Tensor, masks: Tensor):
        assert images.dtype == torch.uint8 and masks.dtype == torch.uint8
        assert images.shape[0] == masks.shape[0] and images.shape[-2:] == masks.shape[-2:]
        self.images, self.masks = images, masks
        self._resized: dict[int, tuple[Tensor, Tensor]] = {}
        self._loaders: dict[tuple, WorkerLoader] = {}

    def __len__(self) -> int:
        return self.images.shape[0]

    def subset(self, indices: Tensor) -> SegTensorSplit:
        return SegTensorSplit(self.images[indices], self.masks[indices])

    def at_resolution(self, resolution: int) -> tuple[Tensor, Tensor]:
        if self.images.shape[-1] == resolution and self.images.shape[-2] == resolution:
            return self.images, self.masks
        if resolution not in self._resized:
            self._resized[resolution] = (resize_uint8(self.images, resolution), resize_mask(self.masks, resolution))
        return self._resized[resolution]

    def batches(self, index_batches, resolution: int, num_workers: int = 0, device=None):
        images, masks = self.at_resolution(resolution)
        if num_workers > 0:
            key = (resolution, num_workers, pin_for(device))
            if key not in self._loaders:
                self._loaders[key] = WorkerLoader(_Pairs(images, masks), num_workers, key[2], per_image=False)
            yield from self._loaders[key](index_batches)
            return
        for idx in index_batches:
            yield images[idx], masks[idx]


class _Pairs:
    def __init__(self, images: Tensor, masks: Tensor):
        self.images, self.masks = images, masks

    def __getitem__(self, idx: Tensor) -> tuple[Tensor, Tensor]:
        return self.images[idx], self.masks[idx]


def resize_mask(masks: Tensor, size: int) -> Tensor:
    """Nearest-neighbour resize of uint8 masks ``(N, H, W)`` (class indices stay class indices)."""
    if masks.shape[-2:] == (size, size):
        return masks
    return F.interpolate(masks[:, None].float(), size=(size, size), mode="nearest-exact")[:, 0].to(torch.uint8)


# ---------------------------------------------------------------------------------- mnistseg
def _compose(digits: Tensor, labels: Tensor, n: int, gen: torch.Generator) -> tuple[Tensor, Tensor]:
    """``n`` canvases from a pool of 28x28 digits: 1-3 digits each, sizes ``DIGIT_SIZES``, places
    drawn from ``gen`` (positions retried a few times to limit overlap: a bounded loop)."""
    pools = {s: resize_uint8(digits, s) for s in DIGIT_SIZES}
    images = torch.zeros(n, 1, CANVAS, CANVAS, dtype=torch.uint8)
    masks = torch.zeros(n, CANVAS, CANVAS, dtype=torch.uint8)
    count = torch.randint(1, 4, (n,), generator=gen)
    for i in range(n):
        boxes: list[tuple[int, int, int]] = []
        for _ in range(int(count[i])):
            k = int(torch.randint(len(digits), (1,), generator=gen))
            s = DIGIT_SIZES[int(torch.randint(len(DIGIT_SIZES), (1,), generator=gen))]
            best = None
            for _try in range(8):
                y, x = (int(v) for v in torch.randint(0, CANVAS - s + 1, (2,), generator=gen))
                overlap = sum(max(0, min(y + s, by + bs) - max(y, by)) * max(0, min(x + s, bx + bs) - max(x, bx)) for by, bx, bs in boxes)
                if best is None or overlap < best[0]:
                    best = (overlap, y, x)
                if overlap == 0:
                    break
            assert best is not None  # the loop above ran
            _, y, x = best
            boxes.append((y, x, s))
            d = pools[s][k, 0]
            region = images[i, 0, y : y + s, x : x + s]
            torch.maximum(region, d, out=region)
            masks[i, y : y + s, x : x + s][d > STROKE_THRESHOLD] = 1 + int(labels[k])
    return images, masks


@functools.lru_cache(maxsize=1)
def load_mnistseg() -> DatasetSplits:
    """The bundled segmentation dataset (built once per process, in about a second)."""
    from .bundled import load_mnist5k

    digits = load_mnist5k()
    splits = {}
    for k, (name, n) in enumerate(CANVASES.items()):
        part = getattr(digits, name)
        gen = torch.Generator().manual_seed(SPLIT_SEED + 101 * (k + 1))
        splits[name] = SegTensorSplit(*_compose(part.images, part.labels, n, gen))
    mean, std = channel_stats(splits["train"].images)
    return DatasetSplits(
        name="mnistseg", train=splits["train"], val=splits["val"], test=splits["test"],
        class_names=["background"] + [str(d) for d in range(10)], mean=mean, std=std,
        augment="scale", flip=False,  # mirrored digits are other (or no) digits
        source=f"composed from {digits.source}", task="segmentation", seg_scale=(0.75, 1.25),
    )


# ---------------------------------------------------------------------------------- files
def decode_pair(image_path: str, mask_path: str, resolution: int, num_classes: int) -> tuple[Tensor, Tensor]:
    """One image (uint8 (3, R, R)) and its mask (uint8 (R, R)): shorter side resized to R (image
    bilinear, antialiased; mask nearest-neighbour), centre square. One ConfigError naming the file
    for anything wrong with either."""
    try:
        with Image.open(mask_path) as m:
            m.load()
            mask = m
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise ConfigError("mask", mask_path, f"not a readable image ({e})") from None
    if mask.mode not in MASK_MODES:
        raise ConfigError("mask", mask_path, f"a single-channel PNG of class indices (mode L or P), got mode {mask.mode}")
    w, h = mask.size
    s = resolution / min(w, h)
    nw, nh = max(resolution, round(w * s)), max(resolution, round(h * s))
    try:
        with Image.open(image_path) as im:
            if im.size != (w, h):
                raise ConfigError("mask", mask_path, f"the size of its image {image_path} ({im.size[0]}x{im.size[1]}), got {w}x{h}")
            im.draft("RGB", (nw, nh))  # JPEG: decode at reduced size when that is still >= the target
            im = im.convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise ConfigError("image", image_path, f"not a readable image ({e})") from None
    if im.size != (nw, nh):
        im = im.resize((nw, nh), Image.BILINEAR)
    if (nw, nh) != (w, h):
        mask = mask.resize((nw, nh), Image.NEAREST)
    left, top = (nw - resolution) // 2, (nh - resolution) // 2
    box = (left, top, left + resolution, top + resolution)
    img = torch.from_numpy(np.asarray(im.crop(box), dtype=np.uint8).copy()).permute(2, 0, 1).contiguous()
    mk = np.asarray(mask.crop(box))
    bad = mk[(mk != IGNORE_INDEX) & ((mk < 0) | (mk >= num_classes))]
    if bad.size:
        raise ConfigError("mask", mask_path, f"class indices 0..{num_classes - 1} or {IGNORE_INDEX} (ignored); it holds {int(bad[0])}")
    return img, torch.from_numpy(mk.astype(np.uint8))


class _DecodedPairs(Dataset):
    def __init__(self, images: list[str], masks: list[str], resolution: int, num_classes: int):
        self.images, self.masks, self.resolution, self.num_classes = images, masks, resolution, num_classes

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        try:
            return decode_pair(self.images[i], self.masks[i], self.resolution, self.num_classes)
        except ConfigError as e:  # travels back as data (see folder._Decoded)
            return (e.field, e.value, e.allowed), torch.zeros(1)


class SegFileSplit:
    """Image / mask path pairs, decoded lazily (DataLoader workers when asked)."""

    def __init__(self, images: list[str], masks: list[str], num_classes: int):
        self.images, self.masks, self.num_classes = images, masks, num_classes
        self._loaders: dict[tuple, WorkerLoader] = {}

    def __len__(self) -> int:
        return len(self.images)

    def subset(self, indices: Tensor) -> SegFileSplit:
        idx = indices.tolist()
        return SegFileSplit([self.images[i] for i in idx], [self.masks[i] for i in idx], self.num_classes)

    def batches(self, index_batches, resolution: int, num_workers: int = 0, device=None):
        key = (resolution, num_workers, pin_for(device))
        if key not in self._loaders:
            self._loaders[key] = WorkerLoader(_DecodedPairs(self.images, self.masks, resolution, self.num_classes),
                                              num_workers, key[2], per_image=True, collate_fn=_collate)
        for images, masks in self._loaders[key](index_batches):
            if images is None:
                raise ConfigError(*masks)
            yield images, masks


def _image_stats(split: SegFileSplit) -> tuple[tuple[float, ...], tuple[float, ...]]:
    n = min(len(split), STATS_IMAGES)
    picks = torch.linspace(0, len(split) - 1, n).round().long().unique().tolist()
    images = torch.stack([decode_pair(split.images[i], split.masks[i], 32, split.num_classes)[0] for i in picks])
    return channel_stats(images)


def _file_splits(name: str, train: SegFileSplit, val: SegFileSplit, test: SegFileSplit, class_names: list[str],
                 source: str, notes: list[str]) -> DatasetSplits:
    mean, std = _image_stats(train)
    return DatasetSplits(name=name, train=train, val=val, test=test, class_names=class_names, mean=mean, std=std,
                         augment="scale", flip=True, source=source, notes=notes, task="segmentation")


def _voc_root(root: Path) -> Path:
    for cand in (root, root / "VOC2012", root / "VOCdevkit" / "VOC2012"):
        if (cand / "ImageSets" / "Segmentation").is_dir():
            return cand
    raise ConfigError("data_root", str(root), VOC_LAYOUT)


def _voc_split(root: Path, split: str) -> SegFileSplit:
    listing = root / "ImageSets" / "Segmentation" / f"{split}.txt"
    if not listing.is_file():
        raise ConfigError("data_root", str(listing), f"missing; {VOC_LAYOUT}")
    ids = [line.strip() for line in listing.read_text(errors="replace").splitlines() if line.strip()]
    if not ids:
        raise ConfigError("data_root", str(listing), "lists no images")
    images, masks = [], []
    for i in ids:
        img, mask = root / "JPEGImages" / f"{i}.jpg", root / "SegmentationClass" / f"{i}.png"
        for kind, p in (("image", img), ("mask", mask)):
            if not p.is_file():
                raise ConfigError(kind, str(p), f"missing (listed in {listing})")
        images.append(str(img))
        masks.append(str(mask))
    return SegFileSplit(images, masks, len(VOC_CLASSES))


def load_voc(root: str | Path | None) -> DatasetSplits:
    if root is None:
        raise ConfigError("data_root", None, f"voc needs --data-root; {VOC_LAYOUT}")
    root = _voc_root(Path(root).expanduser())
    train, val = _voc_split(root, "train"), _voc_split(root, "val")
    return _file_splits("voc", train, val, val, list(VOC_CLASSES), str(root),
                        ["VOC's test masks are not public: the test loader reads val"])


def _pairs_in(folder: Path) -> tuple[list[str], list[str]]:
    """(image paths, mask paths) of ``folder/images`` + ``folder/masks``, matched by file stem."""
    img_dir, mask_dir = folder / "images", folder / "masks"
    if not img_dir.is_dir() or not mask_dir.is_dir():
        raise ConfigError("data_root", str(folder), FOLDER_LAYOUT)

    def files(d: Path) -> dict[str, str]:
        out: dict[str, str] = {}
        for f in sorted(os.listdir(d)):
            if f.startswith(".") or not f.lower().endswith(IMAGE_EXTENSIONS):
                continue
            stem = os.path.splitext(f)[0]
            if stem in out:
                raise ConfigError("data_root", str(d / f), f"two files with the stem {stem!r} ({os.path.basename(out[stem])})")
            out[stem] = str(d / f)
        return out

    imgs, masks = files(img_dir), files(mask_dir)
    if not imgs:
        raise ConfigError("data_root", str(img_dir), f"holds no images; {FOLDER_LAYOUT}")
    for stem in imgs:
        if stem not in masks:
            raise ConfigError("image", imgs[stem], f"has no mask {mask_dir / (stem + '.png')} (masks match images by file stem)")
    for stem in masks:
        if stem not in imgs:
            raise ConfigError("mask", masks[stem], f"has no image in {img_dir} (masks match images by file stem)")
    stems = sorted(imgs)
    return [imgs[s] for s in stems], [masks[s] for s in stems]


def _classes(root: Path, masks: list[str], notes: list[str]) -> list[str]:
    path = root / "classes.txt"
    if path.is_file():
        names = [line.strip() for line in path.read_text(errors="replace").splitlines() if line.strip()]
        if not 1 <= len(names) <= IGNORE_INDEX:
            raise ConfigError("data_root", str(path), f"one class name per line, 1 to {IGNORE_INDEX} of them")
        return names
    top = 0
    for m in masks:  # no classes.txt: the largest index of any mask (each mask read once)
        try:
            with Image.open(m) as im:
                if im.mode not in MASK_MODES:
                    raise ConfigError("mask", m, f"a single-channel PNG of class indices (mode L or P), got mode {im.mode}")
                a = np.asarray(im)
        except (OSError, ValueError, Image.DecompressionBombError) as e:
            raise ConfigError("mask", m, f"not a readable image ({e})") from None
        vals = a[a != IGNORE_INDEX]
        if vals.size:
            top = max(top, int(vals.max()))
    notes.append(f"no classes.txt: {top + 1} classes (0..{top}) from the largest index in the masks")
    return [str(c) for c in range(top + 1)]


def load_segfolder(root: str | Path | None, val_size: float | None = None) -> DatasetSplits:
    if root is None:
        raise ConfigError("data_root", None, f"segfolder needs --data-root; {FOLDER_LAYOUT}")
    root = Path(root).expanduser()
    if not root.is_dir():
        raise ConfigError("data_root", str(root), f"no such directory; {FOLDER_LAYOUT}")
    notes: list[str] = []
    if (root / "train").is_dir() and (root / "val").is_dir():
        parts = {s: _pairs_in(root / s) for s in ("train", "val", "test") if (root / s).is_dir()}
        names = _classes(root, [m for _, ms in parts.values() for m in ms], notes)
        k = len(names)
        train, val = SegFileSplit(*parts["train"], k), SegFileSplit(*parts["val"], k)
        test = SegFileSplit(*parts["test"], k) if "test" in parts else val
        if "test" not in parts:
            notes.append("no test/ folder: the test loader reads val/")
    else:
        frac = 0.1 if val_size is None else val_size
        if not isinstance(frac, float) or not 0.0 < frac < 0.5:
            raise ConfigError("val_size", val_size, "for a folder without train/ val/, a fraction in (0, 0.5)")
        images, masks = _pairs_in(root)
        if len(images) < 3:
            raise ConfigError("data_root", str(root), f"has {len(images)} image/mask pairs; splitting needs at least 3")
        names = _classes(root, masks, notes)
        full = SegFileSplit(images, masks, len(names))
        held = max(1, min(round(len(images) * frac), (len(images) - 1) // 2))
        order = torch.randperm(len(images), generator=torch.Generator().manual_seed(SPLIT_SEED))
        val_idx, test_idx, train_idx = (torch.sort(t).values for t in (order[:held], order[held : 2 * held], order[2 * held :]))
        train, val, test = full.subset(train_idx), full.subset(val_idx), full.subset(test_idx)
    return _file_splits("segfolder", train, val, test, names, str(root), notes)


# ---------------------------------------------------------------------------------- joint augmentation
@dataclass(frozen=True)
class SegTransform:
    """uint8 images + masks (already at the resolution) -> normalised float images + int64 masks.

    Training (``gen`` given): one affine warp per image, the same for the image and its mask: a
    zoom by a factor drawn log-uniformly from ``scale`` (> 1 crops into the image, < 1 shows it
    smaller on an empty canvas), a random shift that keeps the image covering (zoom in) or inside
    (zoom out) the output, and with ``flip`` a horizontal mirror with probability 1/2. The image is
    resampled bilinearly (outside it: 0 after normalising, the mean colour), the mask with the
    nearest neighbour (outside it: ``IGNORE_INDEX``). ``rows``: the batch is a shard (see
    ``nas.data.transforms``).
    """

    mean: tuple[float, ...]
    std: tuple[float, ...]
    scale: tuple[float, float] = (0.5, 2.0)
    flip: bool = True
    out_channels: int = 3
    augment: str = "scale"
    joint = True  # the loaders hand it (images, masks) together

    def pair(self, images: Tensor, masks: Tensor, gen: torch.Generator | None = None, rows=None) -> tuple[Tensor, Tensor]:
        scale = torch.tensor([1.0 / (255.0 * s) for s in self.std], device=images.device)
        shift = torch.tensor([m / s for m, s in zip(self.mean, self.std)], device=images.device)
        x = images.float().mul_(scale[:, None, None]).sub_(shift[:, None, None])
        y = masks.to(torch.int64)
        if gen is not None and self.augment != "none":
            x, y = self._warp(x, y, gen, rows)
        if x.shape[1] != self.out_channels:
            x = x.expand(-1, self.out_channels, -1, -1).contiguous()
        return x, y

    def _warp(self, x: Tensor, y: Tensor, gen: torch.Generator, rows) -> tuple[Tensor, Tensor]:
        n, b = _n(x, rows), x.shape[0]
        lo, hi = math.log(self.scale[0]), math.log(self.scale[1])
        zoom = torch.empty(n).uniform_(lo, hi, generator=gen).exp()
        reach = (1 - 1 / zoom).abs()  # how far the sampled window may move, in [-1, 1] coordinates
        tx = (torch.rand(n, generator=gen) * 2 - 1) * reach
        ty = (torch.rand(n, generator=gen) * 2 - 1) * reach
        mirror = torch.rand(n, generator=gen) < 0.5
        zoom, tx, ty, mirror = (_draw(t, rows) for t in (zoom, tx, ty, mirror))
        theta = torch.zeros(b, 2, 3)
        theta[:, 0, 0] = torch.where(mirror & self.flip, -1.0, 1.0) / zoom
        theta[:, 1, 1] = 1 / zoom
        theta[:, 0, 2], theta[:, 1, 2] = tx, ty
        theta = theta.to(device=x.device, dtype=x.dtype)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        # masks shifted by one so that the zeros padded in from outside mark "ignore"
        m = F.grid_sample((y + 1).to(x.dtype)[:, None], grid, mode="nearest", padding_mode="zeros", align_corners=False)
        m = m[:, 0].round().to(torch.int64) - 1
        return x, torch.where(m < 0, torch.full_like(m, IGNORE_INDEX), m)
