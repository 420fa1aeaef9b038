"""DataLoader workers: the same batches with any number of workers, persistent across epochs,
resumable mid-epoch, for in-memory (CIFAR) data and image folders in ImageNet's layout."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from nas.data import build_loaders, load_dataset
from nas.data.base import pin_for

from test_data import _all, make_cifar10  # noqa: E402  (pytest puts tests/ on sys.path)


def make_imagenet_like(root: Path, classes=("n01440764", "n01443537"), per_class=6) -> Path:
    """ImageNet's train/val layout with JPEG files of mixed sizes."""
    rng = np.random.default_rng(1)
    for split, n in (("train", per_class), ("val", 2)):
        for c in classes:
            (root / split / c).mkdir(parents=True)
            for i in range(n):
                w, h = int(rng.integers(30, 60)), int(rng.integers(30, 60))
                arr = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
                Image.fromarray(arr).save(root / split / c / f"{c}_{i}.JPEG", quality=90)
    return root


def _epochs(L, n=2):
    out = []
    for _ in range(n):
        out.append(_all(L.train))
    return out


@pytest.mark.parametrize("kind", ["cifar", "imagenet"])
def test_workers_give_the_same_batches_and_persist_across_epochs(tmp_path, kind):
    if kind == "cifar":
        make_cifar10(tmp_path)
        d = load_dataset("cifar10", tmp_path, val_size=20)
        res = 40  # resized: workers gather and resize
    else:
        d = load_dataset("folder", make_imagenet_like(tmp_path / "imagenet"))
        assert d.class_names == ["n01440764", "n01443537"] and len(d.val) == 4
        res = 24
    ref = build_loaders(d, resolution=res, batch_size=4, seed=2, num_workers=0)
    par = build_loaders(d, resolution=res, batch_size=4, seed=2, num_workers=2)
    for (xa, ya), (xb, yb) in zip(_epochs(ref), _epochs(par)):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert torch.equal(_all(ref.val)[0], _all(par.val)[0])
    loaders = [wl for key, wl in par.train.split._loaders.items() if key[1] == 2]
    assert len(loaders) == 1  # one DataLoader served both epochs ...
    wl = loaders[0]
    assert wl.loader.persistent_workers and wl.loader.num_workers == 2  # ... with the same worker processes
    pids = {w.pid for w in wl.loader._iterator._workers}
    _all(par.train)
    assert {w.pid for w in wl.loader._iterator._workers} == pids


def test_worker_loader_resumes_mid_epoch(tmp_path):
    d = load_dataset("folder", make_imagenet_like(tmp_path / "imagenet", per_class=8))
    L = build_loaders(d, resolution=16, batch_size=4, seed=5, num_workers=2)
    it = iter(L.train)
    next(it)
    state = L.train.state_dict()
    rest = [x for x, _ in it]
    again = build_loaders(d, resolution=16, batch_size=4, seed=0, num_workers=2)
    again.train.load_state_dict(state)
    resumed = [x for x, _ in again.train]
    assert len(rest) == len(resumed) == 3 and all(torch.equal(a, b) for a, b in zip(rest, resumed))


def test_pinned_memory_only_for_cuda():
    assert not pin_for(None) and not pin_for("cpu") and pin_for("cuda") and pin_for(torch.device("cuda", 1))
