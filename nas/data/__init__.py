"""Datasets for shiftaddaug: the bundled default (mnist5k), CIFAR-10/100 and image folders.

``build_loaders`` is the entry point; ``DATASETS`` maps each ``--dataset`` name to a one-line
description. Batches are normalised float tensors ``(B, 3, R, R)`` with int64 labels.
"""

from .base import DatasetSplits, TensorSplit
from .folder import FileSplit
from .loader import (
    DATASETS,
    EvalBatches,
    Loaders,
    TrainBatches,
    build_loaders,
    calibration_batches,
    load_dataset,
)
from .transforms import BatchTransform, channel_stats, resize_uint8

__all__ = [
    "DATASETS",
    "BatchTransform",
    "DatasetSplits",
    "EvalBatches",
    "FileSplit",
    "Loaders",
    "TensorSplit",
    "TrainBatches",
    "build_loaders",
    "calibration_batches",
    "channel_stats",
    "load_dataset",
    "resize_uint8",
]
