"""CIFAR-10 / CIFAR-100 from the user's local copy of the official "python version".

Files are pickled dicts: ``b'data'`` uint8 (N, 3072) -> (N, 3, 32, 32), labels under ``b'labels'``
(CIFAR-10) or ``b'fine_labels'`` / ``b'coarse_labels'`` (CIFAR-100), class names in the meta file.
Pickles can run code when loaded, so they are read with an unpickler that only builds plain
containers and numpy arrays.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import ConfigError
from .base import DatasetSplits, TensorSplit, class_counts, shares, stratified_split
from .transforms import channel_stats

LAYOUTS: dict[str, dict[str, Any]] = {
    "cifar10": {
        "folder": "cifar-10-batches-py",
        "train": [f"data_batch_{i}" for i in range(1, 6)],
        "test": ["test_batch"],
        "meta": "batches.meta",
        "labels": {"fine": ("labels", "label_names", 10)},
    },
    "cifar100": {
        "folder": "cifar-100-python",
        "train": ["train"],
        "test": ["test"],
        "meta": "meta",
        "labels": {
            "fine": ("fine_labels", "fine_label_names", 100),
            "coarse": ("coarse_labels", "coarse_label_names", 20),
        },
    },
}

DEFAULT_VAL_SIZE = 5000

# What numpy arrays need to unpickle (numpy 1.x and 2.x module names); nothing else is allowed.
_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),  # how protocol-2 pickles written by Python 3 spell bytes
}


class _SafeUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def layout(name: str) -> str:
    """One line describing the expected files, for error messages."""
    lay = LAYOUTS[name]
    files = ", ".join(lay["train"] + lay["test"] + [lay["meta"]])
    return f"expected the official python-version folder {lay['folder']}/ holding {files} (or its parent)"


def find_folder(name: str, root: str | Path | None) -> Path:
    """The folder holding the CIFAR files: ``root`` itself or ``root/<official folder name>``."""
    lay = LAYOUTS[name]
    if root is None:
        raise ConfigError("data_root", None, f"{name} needs --data-root; {layout(name)}")
    root = Path(root).expanduser()
    if not root.is_dir():
        raise ConfigError("data_root", str(root), f"no such directory; {layout(name)}")
    folder = root / lay["folder"] if (root / lay["folder"]).is_dir() else root
    for f in lay["train"] + lay["test"] + [lay["meta"]]:
        if not (folder / f).is_file():
            raise ConfigError("data_root", str(folder / f), f"file missing; {layout(name)}")
    return folder


def _get(d: dict, key: str) -> Any:
    # Official files have bytes keys (Python 2 pickles); re-pickled copies may have str keys.
    if key.encode() in d:
        return d[key.encode()]
    return d.get(key)


def read_pickle(path: Path, name: str) -> dict:
    try:
        with open(path, "rb") as f:
            obj = _SafeUnpickler(f, encoding="bytes").load()
    except Exception as e:  # any unpickling failure means "not a CIFAR file"
        raise ConfigError("data_root", str(path), f"not a readable CIFAR pickle ({type(e).__name__}: {e}); {layout(name)}") from None
    if not isinstance(obj, dict):
        raise ConfigError("data_root", str(path), f"holds a {type(obj).__name__}, not a dict; {layout(name)}")
    return obj


def read_batch(path: Path, name: str, label_key: str, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    d = read_pickle(path, name)
    data, labels = _get(d, "data"), _get(d, label_key)
    if data is None or labels is None:
        raise ConfigError("data_root", str(path), f"has no 'data' / '{label_key}' entries; {layout(name)}")
    data = np.asarray(data)
    labels = np.asarray(labels, dtype=np.int64)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072 or labels.shape != (data.shape[0],):
        raise ConfigError(
            "data_root", str(path),
            f"'data' is {data.dtype} {data.shape} with {labels.shape[0]} labels, expected uint8 (N, 3072) and N labels",
        )
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ConfigError("data_root", str(path), f"labels outside 0..{num_classes - 1}")
    return torch.from_numpy(data.reshape(-1, 3, 32, 32).copy()), torch.from_numpy(labels)


def load_cifar(
    name: str, root: str | Path | None, val_size: int | float | None = None, labels: str = "fine"
) -> DatasetSplits:
    """Read CIFAR-10/100; val is a stratified held-out part of the official train set (fixed seed)."""
    lay = LAYOUTS[name]
    if labels not in lay["labels"]:
        raise ConfigError("labels", labels, f"{name} has label sets: {', '.join(lay['labels'])}")
    label_key, names_key, num_classes = lay["labels"][labels]
    folder = find_folder(name, root)

    parts = [read_batch(folder / f, name, label_key, num_classes) for f in lay["train"]]
    train_x = torch.cat([p[0] for p in parts])
    train_y = torch.cat([p[1] for p in parts])
    test_x, test_y = read_batch(folder / lay["test"][0], name, label_key, num_classes)

    meta = read_pickle(folder / lay["meta"], name)
    raw_names = _get(meta, names_key)
    if raw_names is None or len(raw_names) != num_classes:
        raise ConfigError("data_root", str(folder / lay["meta"]), f"needs '{names_key}' with {num_classes} names")
    class_names = [n.decode() if isinstance(n, bytes) else str(n) for n in raw_names]

    n_train = train_x.shape[0]
    val_size = DEFAULT_VAL_SIZE if val_size is None else val_size
    n_val = round(val_size * n_train) if isinstance(val_size, float) else int(val_size)
    if not 0 < n_val < n_train:
        raise ConfigError("val_size", val_size, f"must leave images on both sides of the {n_train} official training images in {folder}")
    val_idx, train_idx = stratified_split(train_y, num_classes, [shares(class_counts(train_y, num_classes), n_val)])

    full = TensorSplit(train_x, train_y)
    train = full.subset(train_idx)
    mean, std = channel_stats(train.images)
    return DatasetSplits(
        name=name if labels == "fine" else f"{name}-{labels}",
        train=train,
        val=full.subset(val_idx),
        test=TensorSplit(test_x, test_y),
        class_names=class_names,
        mean=mean,
        std=std,
        augment="crop",
        flip=True,
        source=str(folder),
    )
