"""Batched image transforms in plain torch (torchvision does not import beside torch 2.13 here).

Every function takes a whole batch ``(B, C, H, W)`` and draws its random numbers from an explicit
CPU ``torch.Generator``: the draws are a few numbers per image, so they stay on the CPU (the same
images on any device) while the pixel work runs on whatever device the batch lives on.

``rows=(n, keep)`` is a shard of a batch of ``n`` images (data-parallel training): the numbers are
drawn for all ``n`` images and the shard keeps those of its rows ``keep``, so every image is
augmented exactly as in the one-process run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

AUGMENTS = ("crop", "rrc", "none")
Rows = tuple[int, Any] | None  # a shard of a batch: (images in the whole batch, index of the rows kept)


def resize_uint8(images: Tensor, size: int, chunk: int = 512) -> Tensor:
    """Resize a uint8 batch to ``size x size`` (bilinear, antialiased), returning uint8.

    Works in chunks so that resizing a whole dataset never holds more than ``chunk`` float
    images at once.
    """
    if images.shape[-2:] == (size, size):
        return images
    out = torch.empty((*images.shape[:2], size, size), dtype=torch.uint8, device=images.device)
    for i in range(0, images.shape[0], chunk):
        x = images[i : i + chunk].float()
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        out[i : i + chunk] = x.round_().clamp_(0, 255).to(torch.uint8)
    return out


def channel_stats(images: Tensor, chunk: int = 4096) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of a uint8 batch, in [0, 1] units (float64 sums: no drift)."""
    c = images.shape[1]
    s = torch.zeros(c, dtype=torch.float64)
    s2 = torch.zeros(c, dtype=torch.float64)
    for i in range(0, images.shape[0], chunk):
        x = images[i : i + chunk].to(torch.float64).div_(255.0)
        s += x.sum(dim=(0, 2, 3))
        s2 += x.square().sum(dim=(0, 2, 3))
    n = images.shape[0] * images.shape[2] * images.shape[3]
    mean = s / n
    std = (s2 / n - mean.square()).clamp_min(1e-12).sqrt()
    return tuple(float(v) for v in mean), tuple(float(v) for v in std)


def _draw(t: Tensor, rows: Rows) -> Tensor:
    """Per-image draws of a whole batch, cut to a shard's rows."""
    return t if rows is None else t[rows[1]]


def _n(images: Tensor, rows: Rows) -> int:
    return images.shape[0] if rows is None else rows[0]


def random_crop(images: Tensor, padding: int, gen: torch.Generator, rows: Rows = None) -> Tensor:
    """Zero-pad by ``padding`` and cut a random same-size window per image (one gather, no loop)."""
    if padding <= 0:
        return images
    b, c, h, w = images.shape
    padded = F.pad(images, (padding, padding, padding, padding))
    n = _n(images, rows)
    oy = _draw(torch.randint(0, 2 * padding + 1, (n,), generator=gen), rows).to(images.device)
    ox = _draw(torch.randint(0, 2 * padding + 1, (n,), generator=gen), rows).to(images.device)
    yi = (oy[:, None] + torch.arange(h, device=images.device))[:, None, :, None]  # not the shard's rows
    cols = (ox[:, None] + torch.arange(w, device=images.device))[:, None, None, :]
    bi = torch.arange(b, device=images.device)[:, None, None, None]
    ci = torch.arange(c, device=images.device)[None, :, None, None]
    return padded[bi, ci, yi, cols]


def random_resized_crop(
    images: Tensor,
    gen: torch.Generator,
    scale: tuple[float, float] = (0.25, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    rows: Rows = None,
) -> Tensor:
    """Random-resized-crop "lite" on a float batch: one affine grid_sample for the whole batch.

    Lite, because torchvision retries until the box fits; here the box side is clamped to the
    image instead, so the area distribution is slightly skewed towards larger crops.
    """
    n, b = _n(images, rows), images.shape[0]
    area = torch.empty(n).uniform_(scale[0], scale[1], generator=gen)
    log_r = torch.empty(n).uniform_(math.log(ratio[0]), math.log(ratio[1]), generator=gen)
    r = log_r.exp()
    w = (area * r).sqrt().clamp_(max=1.0)  # box width / image width
    h = (area / r).sqrt().clamp_(max=1.0)
    # Box centre in grid_sample's [-1, 1] coordinates, keeping the box inside the image.
    cx = (torch.rand(n, generator=gen) * 2 - 1) * (1 - w)
    cy = (torch.rand(n, generator=gen) * 2 - 1) * (1 - h)
    w, h, cx, cy = (_draw(t, rows) for t in (w, h, cx, cy))
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0], theta[:, 0, 2] = w, cx
    theta[:, 1, 1], theta[:, 1, 2] = h, cy
    theta = theta.to(device=images.device, dtype=images.dtype)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)


def random_hflip(images: Tensor, gen: torch.Generator, rows: Rows = None) -> Tensor:
    """Mirror each image with probability 1/2."""
    flip = _draw(torch.rand(_n(images, rows), generator=gen) < 0.5, rows).to(images.device)
    return torch.where(flip[:, None, None, None], images.flip(-1), images)


@dataclass(frozen=True)
class BatchTransform:
    """uint8 batch (already at the target resolution) -> normalised float batch.

    ``augment`` is "crop" (zero-pad by ``padding`` px and random crop; CIFAR/MNIST style), "rrc"
    (random-resized-crop lite; photo folders) or "none". ``mean``/``std`` are per stored channel
    in [0, 1] units; a 1-channel source is repeated to ``out_channels`` after normalising.
    Called with ``gen=None`` it is the evaluation transform (no augmentation at all); ``rows``:
    the batch is a shard (module docstring).
    """

    mean: tuple[float, ...]
    std: tuple[float, ...]
    augment: str = "crop"
    flip: bool = True
    padding: int = 4
    out_channels: int = 3

    def __call__(self, images: Tensor, gen: torch.Generator | None = None, rows: Rows = None) -> Tensor:
        train = gen is not None
        if train and self.augment == "crop":
            images = random_crop(images, self.padding, gen, rows)
        if train and self.flip:  # on uint8: a quarter of the bytes of the float batch
            images = random_hflip(images, gen, rows)
        # One fused multiply-add does both /255 and (x - mean) / std.
        scale = torch.tensor([1.0 / (255.0 * s) for s in self.std], device=images.device)
        shift = torch.tensor([m / s for m, s in zip(self.mean, self.std)], device=images.device)
        x = images.float().mul_(scale[:, None, None]).sub_(shift[:, None, None])
        if train and self.augment == "rrc":
            x = random_resized_crop(x, gen, rows=rows)
        if x.shape[1] != self.out_channels:
            x = x.expand(-1, self.out_channels, -1, -1).contiguous()
        return x
