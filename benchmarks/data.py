"""Loader throughput: images/s of the training batches (read, resize / decode, augment, normalise).

For in-memory images (CIFAR's case: a uint8 tensor) and for folders of generated JPEG and PNG
files in ImageNet's layout (``root/train/<class>/*``), with 0 and 2 DataLoader worker processes.
Each configuration runs two epochs through ``build_loaders(...).train``; the second is timed
(workers are persistent, so it is the steady state; the first includes starting them). The main
process uses one torch thread; workers use one each (DataLoader's default).

    python benchmarks/data.py [--images 512] [--resolution 160] [--batch 64]

Writes benchmarks/results/data.md. On a 2-core machine two workers can at best double the rate of
the work they take over (decoding), and only while the main process leaves them the cores.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def in_memory(n: int, size: int, cache: bool = True):
    import torch

    from nas.data import DatasetSplits, TensorSplit

    g = torch.Generator().manual_seed(0)
    split = (TensorSplit if cache else _uncached())(torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g), torch.arange(n) % 10)
    return DatasetSplits("memory", split, split, split, [str(i) for i in range(10)], (0.5,) * 3, (0.25,) * 3)


def _uncached():
    from nas.data import TensorSplit

    class Uncached(TensorSplit):
        """No resized copy kept: each batch is resized as it is read (CIFAR at 160 px, 3.5 GB resized, is too big to cache)."""

        def at_resolution(self, resolution):
            return self.images if self.images.shape[-1] == resolution else None

    return Uncached


def folder(root: Path, n: int, ext: str, size: int):
    import numpy as np
    from PIL import Image

    from nas.data import load_dataset

    rng = np.random.default_rng(0)
    for split, count in (("train", n), ("val", 20)):
        for i in range(count):
            d = root / split / f"n{i % 10:08d}"
            d.mkdir(parents=True, exist_ok=True)
            # a smooth image (compresses like a photo) with noise, a little larger than the target
            base = np.linspace(0, 255, size * 2, dtype=np.float32)
            img = (base[None, :, None] * 0.5 + base[:, None, None] * 0.3 + rng.normal(0, 20, (size * 2, size * 2, 3))).clip(0, 255)
            Image.fromarray(img.astype(np.uint8)).save(d / f"{i}.{ext}", **({"quality": 90} if ext == "JPEG" else {}))
    return load_dataset("folder", root)


def images_per_second(data, resolution: int, batch: int, workers: int) -> tuple[float, float]:
    from nas.data import build_loaders

    L = build_loaders(data, resolution=resolution, batch_size=batch, num_workers=workers, seed=0)
    rates = []
    for _ in range(2):
        t0 = time.perf_counter()
        n = sum(x.shape[0] for x, _ in L.train)
        rates.append(n / (time.perf_counter() - t0))
    return rates[0], rates[1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=512, help="training images per dataset (default 512)")
    p.add_argument("--resolution", type=int, default=160, help="model input resolution (default 160, the paper preset's)")
    p.add_argument("--batch", type=int, default=64)
    args = p.parse_args()
    sys.path.insert(0, str(ROOT))
    import torch

    torch.set_num_threads(1)
    from nas.io import atomic_write_text

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        sets = {
            f"in memory, {args.resolution} px (no resize)": (in_memory(args.images, args.resolution), args.resolution),
            f"in memory, 32 px resized to {args.resolution} px per batch": (in_memory(args.images, 32, cache=False), args.resolution),
            "folder of JPEG files": (folder(Path(tmp) / "jpeg", args.images, "JPEG", args.resolution), args.resolution),
            "folder of PNG files": (folder(Path(tmp) / "png", args.images, "png", args.resolution), args.resolution),
        }
        for name, (data, res) in sets.items():
            for workers in (0, 2):
                first, steady = images_per_second(data, res, args.batch, workers)
                rows.append((name, workers, first, steady))
                print(f"{name:<36} workers {workers}: {steady:8.0f} images/s (first epoch {first:.0f})", flush=True)
    lines = [
        f"Training-loader throughput, {args.images} images per dataset, batch {args.batch}, {args.resolution} px, "
        "augmentation (crop or random-resized-crop, flip) and normalisation included; main process one torch thread. "
        "Images/s of the second epoch (persistent workers: steady state); the first epoch includes starting the workers.",
        "",
        "| data | workers | images/s | first epoch images/s | vs 0 workers |",
        "|---|---|---|---|---|",
    ]
    base = {}
    for name, workers, first, steady in rows:
        base.setdefault(name, steady)
        lines.append(f"| {name} | {workers} | {steady:.0f} | {first:.0f} | {steady / base[name]:.2f}x |")
    lines += ["", f"Command: `python benchmarks/data.py --images {args.images} --resolution {args.resolution} --batch {args.batch}`; "
              f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores.", ""]
    text = "\n".join(lines)
    atomic_write_text(ROOT / "benchmarks" / "results" / "data.md", text)
    print(text)


if __name__ == "__main__":
    main()
