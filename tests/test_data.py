"""nas.data: readers on tiny files in the official formats, splits, transforms, loaders, errors."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from nas.data import (
    DATASETS,
    BatchTransform,
    FileSplit,
    TrainBatches,
    build_loaders,
    calibration_batches,
    channel_stats,
    load_dataset,
    resize_uint8,
)
from nas.data.bundled import load_mnist5k
from nas.errors import ConfigError

# ---------------------------------------------------------------- fixtures in the official formats


def _images(start: int, n: int) -> np.ndarray:
    """(n, 3072) uint8 rows: random pixels, with the image's id written into its first 2 bytes."""
    rng = np.random.default_rng(start)
    data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
    ids = np.arange(start, start + n)
    data[:, 0], data[:, 1] = ids % 256, ids // 256
    return data


def _ids(images: torch.Tensor) -> set[int]:
    flat = images.reshape(images.shape[0], -1)
    return set((flat[:, 0].long() + 256 * flat[:, 1].long()).tolist())


def _dump(path: Path, obj: object) -> None:
    path.write_bytes(pickle.dumps(obj, protocol=2))


def make_cifar10(root: Path, per_batch: int = 20, n_test: int = 20) -> Path:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for i in range(5):
        labels = [(j + i) % 10 for j in range(per_batch)]
        _dump(folder / f"data_batch_{i + 1}", {b"batch_label": b"x", b"data": _images(i * per_batch, per_batch), b"labels": labels})
    _dump(folder / "test_batch", {b"data": _images(1000, n_test), b"labels": [j % 10 for j in range(n_test)]})
    _dump(folder / "batches.meta", {b"label_names": [f"c{k}".encode() for k in range(10)], b"num_vis": 3072})
    return folder


def make_cifar100(root: Path, n_train: int = 400, n_test: int = 100) -> Path:
    root.mkdir(parents=True, exist_ok=True)  # files directly in root (no cifar-100-python/)

    def d(start: int, n: int) -> dict:
        fine = [j % 100 for j in range(n)]
        return {b"data": _images(start, n), b"fine_labels": fine, b"coarse_labels": [f // 5 for f in fine]}

    _dump(root / "train", d(0, n_train))
    _dump(root / "test", d(5000, n_test))
    _dump(root / "meta", {b"fine_label_names": [f"f{k}".encode() for k in range(100)],
                          b"coarse_label_names": [f"g{k}".encode() for k in range(20)]})
    return root


def make_folder(root: Path, classes=("cat", "ant", "bee"), per_class: int = 6, size=(24, 18)) -> Path:
    rng = np.random.default_rng(0)
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(per_class):
            arr = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
            ext = "jpg" if i == 0 else "png"
            mode = "L" if i == 1 else "RGB"  # grayscale files are converted to RGB
            Image.fromarray(arr).convert(mode).save(root / c / f"{i}.{ext}")
        (root / c / "notes.txt").write_text("not an image")
    return root


@pytest.fixture
def cifar10(tmp_path):
    make_cifar10(tmp_path)
    return tmp_path


def _all(batches):
    xs, ys = zip(*list(batches))
    return torch.cat(xs), torch.cat(ys)


# ---------------------------------------------------------------- mnist5k (bundled)


def test_datasets_listed():
    assert list(DATASETS) == ["mnist5k", "cifar10", "cifar100", "folder", "mnistseg", "voc", "segfolder"]
    assert all(isinstance(v, str) and "\n" not in v for v in DATASETS.values())


def test_mnist5k_split_sizes_balance_and_determinism():
    d = load_dataset("mnist5k")
    assert (len(d.train), len(d.val), len(d.test)) == (4000, 500, 500)
    for split, n in ((d.train, 400), (d.val, 50), (d.test, 50)):
        assert torch.bincount(split.labels, minlength=10).tolist() == [n] * 10
        assert split.images.dtype == torch.uint8 and split.images.shape[1:] == (1, 28, 28)
    rows = lambda s: {bytes(r) for r in s.images.flatten(1).numpy()}  # noqa: E731
    assert not (rows(d.train) & rows(d.val)) and not (rows(d.train) & rows(d.test)) and not (rows(d.val) & rows(d.test))
    again = load_mnist5k.__wrapped__()  # a fresh read, not the cached object
    assert torch.equal(again.val.images, d.val.images) and torch.equal(again.train.labels, d.train.labels)
    assert d.flip is False and d.class_names == [str(k) for k in range(10)]


def test_mnist5k_batches():
    L = build_loaders(resolution=20, batch_size=50)
    assert (L.num_classes, L.in_channels, L.resolution, L.name) == (10, 3, 20, "mnist5k")
    assert len(L.train) == 80 and len(L.val) == 10 and len(L.test) == 10
    x, y = next(iter(L.train))
    assert x.shape == (50, 3, 20, 20) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert torch.equal(x[:, 0], x[:, 1]) and torch.equal(x[:, 0], x[:, 2])  # grey repeated to RGB
    xv, yv = _all(L.val)
    assert xv.shape == (500, 3, 20, 20) and yv.unique().tolist() == list(range(10))  # every digit, nothing else


def test_mnist5k_epoch_drops_the_last_partial_batch():
    L = build_loaders(resolution=32, batch_size=64)
    n = sum(len(y) for _, y in L.train)
    assert n == 4000 - 4000 % 64 == len(L.train) * 64


def test_mnist5k_eval_normalisation_at_native_resolution():
    L = build_loaders(resolution=28)
    x, _ = _all(TrainBatches(L.train.split, L.transform, 28, 4000, augment=False))
    assert abs(x.mean().item()) < 1e-4 and abs(x.std().item() - 1) < 1e-3


# ---------------------------------------------------------------- CIFAR


@pytest.mark.parametrize("use_parent", [True, False])
def test_cifar10_reads_folder_or_parent(cifar10, use_parent):
    root = cifar10 if use_parent else cifar10 / "cifar-10-batches-py"
    d = load_dataset("cifar10", root, val_size=20)
    assert (len(d.train), len(d.val), len(d.test)) == (80, 20, 20)
    assert d.class_names == [f"c{k}" for k in range(10)] and d.num_classes == 10
    assert d.train.images.shape[1:] == (3, 32, 32) and d.train.images.dtype == torch.uint8
    assert torch.bincount(d.val.labels, minlength=10).tolist() == [2] * 10  # stratified
    train, val, test = _ids(d.train.images), _ids(d.val.images), _ids(d.test.images)
    assert not train & val and train | val == set(range(100)) and test == set(range(1000, 1020))
    # Same split on a second read, whatever the user seed.
    again = load_dataset("cifar10", root, val_size=20)
    assert torch.equal(again.val.images, d.val.images)
    # Pixel layout: row-major (3, 32, 32), so byte 1 of the row is pixel (0, 0, 1).
    assert d.test.images[0, 0, 0, 1] == 1000 // 256


def test_cifar10_val_fraction_and_default(cifar10):
    assert len(load_dataset("cifar10", cifar10, val_size=0.1).val) == 10
    with pytest.raises(ConfigError, match="val_size: got 5000"):
        load_dataset("cifar10", cifar10)  # default 5,000 is more than this tiny copy holds


def test_cifar100_fine_and_coarse(tmp_path):
    make_cifar100(tmp_path / "c100")
    fine = load_dataset("cifar100", tmp_path / "c100", val_size=100)
    assert fine.num_classes == 100 and fine.class_names[:2] == ["f0", "f1"]
    assert (len(fine.train), len(fine.val), len(fine.test)) == (300, 100, 100)
    assert torch.bincount(fine.val.labels, minlength=100).tolist() == [1] * 100
    coarse = load_dataset("cifar100", tmp_path / "c100", val_size=100, labels="coarse")
    assert coarse.num_classes == 20 and int(coarse.train.labels.max()) == 19 and coarse.name == "cifar100-coarse"
    L = build_loaders(fine, resolution=16, batch_size=32)
    x, y = next(iter(L.train))
    assert x.shape == (32, 3, 16, 16) and set(y.tolist()) <= set(fine.train.labels.tolist())


def test_cifar_normalisation_stats(cifar10):
    d = load_dataset("cifar10", cifar10, val_size=20)
    mean, std = channel_stats(d.train.images)
    assert np.allclose(mean, d.mean) and np.allclose(std, d.std)
    L = build_loaders(d, batch_size=16, augment=False, drop_last=False)
    x, _ = _all(L.train)
    assert x.shape[0] == 80
    assert torch.allclose(x.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-4)
    assert torch.allclose(x.std(dim=(0, 2, 3), unbiased=False), torch.ones(3), atol=1e-3)
    assert len(L.mean) == 3 and L.mean == d.mean


def test_resize_to_requested_resolution(cifar10, monkeypatch):
    d = load_dataset("cifar10", cifar10, val_size=20)
    for r in (8, 20, 48):
        L = build_loaders(d, resolution=r, batch_size=16)
        assert next(iter(L.train))[0].shape == (16, 3, r, r)
        assert next(iter(L.test))[0].shape == (16, 3, r, r)
    assert d.train.at_resolution(20) is d.train.at_resolution(20)  # resized once, cached
    # Too big to cache: the same pixels, resized batch by batch.
    cached = _all(build_loaders(d, resolution=20).val)[0]
    monkeypatch.setattr("nas.data.base.CACHE_LIMIT_BYTES", 0)
    fresh = load_dataset("cifar10", cifar10, val_size=20)
    assert fresh.val.at_resolution(20) is None
    assert torch.equal(_all(build_loaders(fresh, resolution=20).val)[0], cached)
    flat = torch.full((2, 3, 10, 10), 77, dtype=torch.uint8)
    out = resize_uint8(flat, 23)
    assert out.dtype == torch.uint8 and out.shape == (2, 3, 23, 23) and bool((out == 77).all())


def test_augmentation_changes_train_not_eval(cifar10):
    d = load_dataset("cifar10", cifar10, val_size=20)
    aug = build_loaders(d, batch_size=16, seed=3)
    plain = build_loaders(d, batch_size=16, seed=3, augment=False)
    (xa, ya), (xp, yp) = next(iter(aug.train)), next(iter(plain.train))
    assert torch.equal(ya, yp)  # the order does not depend on augmentation
    assert not torch.equal(xa, xp)
    v1, v2 = _all(aug.val), _all(aug.val)
    assert torch.equal(v1[0], v2[0]) and torch.equal(v1[0], _all(plain.val)[0])
    # Eval transform at native resolution is exactly the normalised stored image.
    expected = (d.val.images.float() / 255 - torch.tensor(d.mean)[:, None, None]) / torch.tensor(d.std)[:, None, None]
    assert torch.allclose(v1[0], expected, atol=1e-5)


def test_transform_flip_and_crop_semantics():
    images = torch.arange(2 * 1 * 4 * 4, dtype=torch.uint8).reshape(2, 1, 4, 4)
    t = BatchTransform(mean=(0.0,), std=(1 / 255,), augment="none", flip=True, out_channels=1)
    seen = set()
    for s in range(20):
        out = t(images, torch.Generator().manual_seed(s))
        for i in range(2):
            ok = torch.equal(out[i], images[i].float()) or torch.equal(out[i], images[i].flip(-1).float())
            assert ok
            seen.add(torch.equal(out[i], images[i].float()))
    assert seen == {True, False}
    crop = BatchTransform(mean=(0.0,), std=(1 / 255,), augment="crop", flip=False, padding=1, out_channels=1)
    out = crop(images, torch.Generator().manual_seed(0))
    assert out.shape == images.shape
    # Each crop is a shifted window of the zero-padded image.
    padded = torch.nn.functional.pad(images.float(), (1, 1, 1, 1))
    for i in range(2):
        assert any(torch.equal(out[i, 0], padded[i, 0, a : a + 4, b : b + 4]) for a in range(3) for b in range(3))


def test_state_dict_round_trip_reproduces_next_batches(cifar10):
    d = load_dataset("cifar10", cifar10, val_size=20)
    L = build_loaders(d, batch_size=16, seed=7)  # 5 batches per epoch
    it = iter(L.train)
    next(it), next(it)
    state = L.train.state_dict()
    assert state["epoch"] == 0 and state["batch"] == 2
    rest = list(it) + list(L.train)  # 3 batches of epoch 0, then all 5 of epoch 1
    assert len(rest) == 8 and L.train.epoch == 2

    resumed = build_loaders(d, batch_size=16, seed=0)
    resumed.train.load_state_dict(state)
    again = list(resumed.train) + list(resumed.train)
    assert len(again) == 8
    for (xa, ya), (xb, yb) in zip(rest, again):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)

    # A loop broken after the last batch resumes at the next epoch, not an empty one.
    L2 = build_loaders(d, batch_size=16, seed=7)
    for i, _ in enumerate(L2.train):
        if i == len(L2.train) - 1:
            break
    assert L2.train.state_dict()["epoch"] == 1 and len(list(L2.train)) == 5
    # Epochs reshuffle; seeds differ.
    assert not torch.equal(L.train.epoch_order(0), L.train.epoch_order(1))
    other = build_loaders(d, batch_size=16, seed=8)
    assert not torch.equal(other.train.epoch_order(0), L.train.epoch_order(0))
    with pytest.raises(ConfigError, match="loader_state.batch_size"):
        build_loaders(d, batch_size=8).train.load_state_dict(state)


def test_drop_last_and_max_train_images(cifar10):
    d = load_dataset("cifar10", cifar10, val_size=20)
    assert len(build_loaders(d, batch_size=30).train) == 2
    L = build_loaders(d, batch_size=30, drop_last=False)
    assert len(L.train) == 3 and sum(len(y) for _, y in L.train) == 80
    small = build_loaders(d, batch_size=10, max_train_images=40)
    assert small.train.num_images == 40
    assert torch.bincount(small.train.split.labels, minlength=10).tolist() == [4] * 10
    with pytest.raises(ConfigError, match="batch_size"):
        build_loaders(d, batch_size=81)


def test_calibration_batches_deterministic(cifar10):
    d = load_dataset("cifar10", cifar10, val_size=20)
    L = build_loaders(d, resolution=24, batch_size=16)
    a = calibration_batches(L, n_images=50, batch_size=20, seed=1)
    b = calibration_batches(L, n_images=50, batch_size=20, seed=1)
    c = calibration_batches(L, n_images=50, batch_size=20, seed=2)
    assert [x.shape[0] for x, _ in a] == [20, 20, 10] and a[0][0].shape[1:] == (3, 24, 24)
    assert all(torch.equal(x1, x2) and torch.equal(y1, y2) for (x1, y1), (x2, y2) in zip(a, b))
    assert not torch.equal(a[0][0], c[0][0])
    plain = calibration_batches(L, n_images=50, batch_size=20, seed=1, augment=False)
    assert torch.equal(plain[0][1], a[0][1]) and not torch.equal(plain[0][0], a[0][0])
    by_data = calibration_batches(d, n_images=10, batch_size=5, seed=1, resolution=24)
    assert len(by_data) == 2 and by_data[0][0].shape == (5, 3, 24, 24)


# ---------------------------------------------------------------- image folders


def test_folder_auto_split(tmp_path):
    make_folder(tmp_path / "imgs")
    d = load_dataset("folder", tmp_path / "imgs")
    assert d.class_names == ["ant", "bee", "cat"]  # sorted
    assert (len(d.train), len(d.val), len(d.test)) == (12, 3, 3)
    for s in (d.val, d.test):
        assert torch.bincount(s.labels, minlength=3).tolist() == [1, 1, 1]
    assert not set(d.train.paths) & set(d.val.paths) and not set(d.val.paths) & set(d.test.paths)
    assert d.val.paths == load_dataset("folder", tmp_path / "imgs").val.paths  # deterministic
    L = build_loaders(d, resolution=16, batch_size=4, num_workers=0)
    x, y = next(iter(L.train))
    assert x.shape == (4, 3, 16, 16) and x.dtype == torch.float32 and y.dtype == torch.int64
    xv, yv = _all(L.val)
    assert xv.shape == (3, 3, 16, 16) and torch.equal(xv, _all(L.val)[0])
    again = build_loaders(d, resolution=16, batch_size=4)
    assert torch.equal(next(iter(again.train))[0], x)  # same seed, same rrc/flip draws


def test_folder_with_split_dirs_and_workers(tmp_path):
    make_folder(tmp_path / "ds" / "train", per_class=4)
    make_folder(tmp_path / "ds" / "val", classes=("bee", "ant"), per_class=2)
    d = load_dataset("folder", tmp_path / "ds")
    assert d.class_names == ["ant", "bee", "cat"] and len(d.train) == 12 and len(d.val) == 4
    assert d.test is d.val and d.notes  # no test/: test reads val
    assert set(d.val.labels.tolist()) == {0, 1}  # val's classes map to train's indices
    L = build_loaders(d, resolution=12, batch_size=4, num_workers=2)
    xs, ys = _all(L.train)
    assert xs.shape == (12, 3, 12, 12) and sorted(ys.tolist()) == sorted(d.train.labels.tolist())
    make_folder(tmp_path / "ds" / "test", per_class=1)
    assert len(load_dataset("folder", tmp_path / "ds").test) == 3


# ---------------------------------------------------------------- every bad path


def _error(fn, *args, **kw) -> str:
    with pytest.raises(ConfigError) as e:
        fn(*args, **kw)
    msg = str(e.value)
    assert "\n" not in msg  # CLIs print it as one line
    return msg


def test_unknown_dataset():
    msg = _error(build_loaders, "imagenet")
    assert "dataset: got 'imagenet'" in msg and all(n in msg for n in DATASETS)


def test_bad_arguments():
    assert "resolution" in _error(build_loaders, resolution=0)
    assert "batch_size" in _error(build_loaders, batch_size=0)
    assert "bundled" in _error(load_dataset, "mnist5k", "/x")
    assert "labels" in _error(load_dataset, "folder", "/tmp", labels="coarse")
    assert "augment_kind" in _error(build_loaders, augment_kind="mixup")
    assert "already loaded" in _error(build_loaders, load_dataset("mnist5k"), val_size=10)


def test_cifar_missing_root(tmp_path):
    msg = _error(load_dataset, "cifar10", tmp_path / "nope")
    assert str(tmp_path / "nope") in msg and "no such directory" in msg and "data_batch_1" in msg
    assert "--data-root" in _error(load_dataset, "cifar100", None)


def test_cifar_missing_file_names_path_and_layout(cifar10):
    (cifar10 / "cifar-10-batches-py" / "data_batch_3").unlink()
    msg = _error(load_dataset, "cifar10", cifar10, val_size=10)
    assert str(cifar10 / "cifar-10-batches-py" / "data_batch_3") in msg
    assert "cifar-10-batches-py/" in msg and "test_batch" in msg and "batches.meta" in msg


def test_cifar_empty_dir_names_layout(tmp_path):
    msg = _error(load_dataset, "cifar100", tmp_path)
    assert str(tmp_path / "train") in msg and "cifar-100-python/" in msg


def test_cifar_corrupt_and_malicious_pickles(cifar10, tmp_path):
    bad = cifar10 / "cifar-10-batches-py" / "data_batch_2"
    bad.write_bytes(b"\x80\x02 definitely not a pickle")
    msg = _error(load_dataset, "cifar10", cifar10, val_size=10)
    assert str(bad) in msg and "not a readable CIFAR pickle" in msg

    bad.write_bytes(pickle.dumps({b"data": np.zeros((2, 10), np.uint8), b"labels": [0, 1]}, protocol=2))
    assert "expected uint8 (N, 3072)" in _error(load_dataset, "cifar10", cifar10, val_size=10)

    bad.write_bytes(pickle.dumps({b"data": _images(0, 2), b"labels": [0, 10]}, protocol=2))
    assert "labels outside 0..9" in _error(load_dataset, "cifar10", cifar10, val_size=10)

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    bad.write_bytes(pickle.dumps({b"data": Evil()}, protocol=2))
    assert "refusing to load __builtin__.print" in _error(load_dataset, "cifar10", cifar10, val_size=10)


def test_folder_errors(tmp_path):
    assert "no such directory" in _error(load_dataset, "folder", tmp_path / "nope")
    assert "--data-root" in _error(load_dataset, "folder", None)
    empty = tmp_path / "empty"
    empty.mkdir()
    msg = _error(load_dataset, "folder", empty)
    assert str(empty) in msg and "no class subfolders" in msg and "ROOT/<class>" in msg
    flat = tmp_path / "flat"
    flat.mkdir()
    Image.new("RGB", (4, 4)).save(flat / "a.png")
    assert "no class subfolders" in _error(load_dataset, "folder", flat)
    (flat / "cls").mkdir()
    (flat / "cls" / "readme.txt").write_text("x")
    assert str(flat / "cls") in _error(load_dataset, "folder", flat)
    few = make_folder(tmp_path / "few", per_class=2)
    assert "at least 3" in _error(load_dataset, "folder", few)
    make_folder(tmp_path / "split" / "train", per_class=3)
    make_folder(tmp_path / "split" / "val", classes=("dog",), per_class=1)
    assert "not in train/" in _error(load_dataset, "folder", tmp_path / "split")
    corrupt = make_folder(tmp_path / "corrupt", classes=("a",), per_class=3)
    (corrupt / "a" / "9.png").write_bytes(b"not a png")


    def read_everything():
        L = build_loaders("folder", corrupt, batch_size=1)
        return _all(L.train), _all(L.val), _all(L.test)

    msg = _error(read_everything)
    assert str(corrupt / "a" / "9.png") in msg and "not a readable image" in msg
    # Decoded in a worker process, the error still reaches the caller as a ConfigError.
    split = FileSplit([str(corrupt / "a" / "0.jpg"), str(corrupt / "a" / "9.png")], torch.tensor([0, 0]))
    msg = _error(lambda: list(split.batches([torch.tensor([0]), torch.tensor([1])], 8, num_workers=2)))
    assert str(corrupt / "a" / "9.png") in msg
