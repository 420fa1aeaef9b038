"""Semantic segmentation: the Arch's task and LR-ASPP head (schema, validation, round trips), the
head's shapes and exact op counts (hand-computed), mIoU against a hand-computed confusion matrix,
the VOC / folder readers on tiny generated fixtures, the supernet's dense forward, lookup-table
coverage of the seg64 space, the C generator's refusal, and the CLI end to end."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from nas.arch import Arch, to_segmentation
from nas.cost.counting import count_module_ops, count_ops
from nas.cost.layers import arch_layers
from nas.errors import ConfigError
from nas.models import build_model, zoo_arch
from nas.train.tasks import ConfusionMatrix, task_of


@pytest.fixture(autouse=True)
def one_thread():
    torch.set_num_threads(1)  # tiny layers on a shared box; tests/conftest.py restores the count


def tiny_seg(op: str = "mult") -> Arch:
    """16 px, stem 3->4 (s2: 8x8), stage 0 one block to 8 channels (s2: 4x4, the skip), stage 1
    one block to 8 channels (s2: 2x2); head with 6 hidden channels; 3 classes."""
    d = {
        "name": "tinyseg", "resolution": 16, "num_classes": 3, "in_channels": 3,
        "stem": {"out_channels": 4, "kernel_size": 3, "stride": 2, "act": "relu6", "op": "mult"},
        "stages": [
            {"blocks": [{"kernel_size": 3, "expand_ratio": 1, "mid_channels": 4, "out_channels": 8, "stride": 2, "act": "relu6",
                         "se_channels": 0, "op": "mult", "dw_op": "mult", "se_op": "mult"}]},
            {"blocks": [{"kernel_size": 3, "expand_ratio": 1, "mid_channels": 8, "out_channels": 8, "stride": 2, "act": "relu6",
                         "se_channels": 0, "op": "mult", "dw_op": "mult", "se_op": "mult"}]},
        ],
        "feature_mix": None, "post_pool": None, "classifier": {"op": "mult", "dropout": 0.0},
        "task": "segmentation", "seg_head": {"skip_stage": 0, "channels": 6, "act": "relu", "op": "mult", "gate_op": "mult"},
        "schema_version": 3,
    }
    a = Arch.from_dict(d)
    return a if op == "mult" else a.with_ops(op)


# ------------------------------------------------------------------------------------ schema
def test_schema_versions_and_round_trip():
    seg = tiny_seg("add")
    d = json.loads(seg.to_json())
    assert d["schema_version"] == 3 and d["task"] == "segmentation"
    assert d["seg_head"] == {"skip_stage": 0, "channels": 6, "act": "relu", "op": "add", "gate_op": "add"}
    back = Arch.from_json(seg.to_json())
    assert back == seg and back.arch_id == seg.arch_id
    cls = zoo_arch("mbv2-tiny", "shift", 32, 10)
    dc = json.loads(cls.to_json())
    assert dc["schema_version"] == 2 and "task" not in dc and "seg_head" not in dc  # classification written as before
    assert Arch.from_json(cls.to_json()) == cls


def test_with_ops_follows_the_convention_in_the_head():
    h = tiny_seg("add").seg_head
    assert (h.op, h.gate_op) == ("add", "add")
    a = tiny_seg("shift")
    assert (a.seg_head.op, a.seg_head.gate_op, a.classifier.op) == ("shift", "shift", "mult")


@pytest.mark.parametrize("edit, field, text", [
    (lambda d: d.pop("seg_head"), "seg_head", "needs a seg_head"),
    (lambda d: d.update(task="classification"), "seg_head", "only with task: segmentation"),
    (lambda d: d.update(task="detection"), "task", "allowed: classification, segmentation"),
    (lambda d: d["seg_head"].update(skip_stage=2), "skip_stage", None),
    (lambda d: d.update(resolution=18), "resolution", "multiple of its total stride 8"),
    (lambda d: d.update(post_pool={"out_channels": 8, "act": "relu", "op": "mult"}), "post_pool", "no post-pool"),
    (lambda d: d["seg_head"].update(op="div"), "seg_head.op", None),
])
def test_validation_one_line(edit, field, text):
    d = json.loads(tiny_seg().to_json())
    edit(d)
    with pytest.raises(ConfigError) as e:
        Arch.from_dict(d)
    msg = str(e.value)
    assert field in msg and "\n" not in msg
    if text:
        assert text in msg


def test_to_segmentation_default_head():
    a = to_segmentation(zoo_arch("mbv2-tiny", "add", 64, 11))
    assert a.is_segmentation and a.post_pool is None and a.classifier.dropout == 0
    assert a.seg_head.skip_stage == 2 and a.seg_head.op == "add" and a.classifier.op == "mult"
    assert to_segmentation(a) is a


# ------------------------------------------------------------------------------------ model
@pytest.mark.parametrize("op", ["mult", "shift", "add"])
def test_head_shapes(op):
    a = tiny_seg(op)
    net = build_model(a).eval()
    with torch.no_grad():
        y = net(torch.randn(2, 3, 16, 16))
    assert y.shape == (2, 3, 16, 16)
    big = build_model(to_segmentation(zoo_arch("mbv2-tiny", op, 64, 11))).eval()
    with torch.no_grad():
        assert big(torch.randn(1, 3, 64, 64)).shape == (1, 11, 64, 64)


# ------------------------------------------------------------------------------------ counting
def test_head_counts_hand_computed_mult():
    rows = {r.layer.name: r for r in count_ops(tiny_seg()).rows}
    head = [n for n in rows if n.startswith("head.")]
    assert head == ["head.pool", "head.scale", "head.cbr", "head.gate", "head.high_classifier", "head.up_skip",
                    "head.low_classifier", "head.merge", "head.up_out"]
    want = {  # name: (macs, mults, adds, params)
        "head.pool": (0, 8, 8 * 3, 0),  # 8 channels, 2x2 -> 1: 3 additions and 1 multiplication each
        "head.scale": (48, 48, 6 * 7, 6 * 8 + 2 * 6),  # 8 -> 6 on 1x1, BN (no bias)
        "head.cbr": (192, 192, 24 * 7, 6 * 8 + 2 * 6),  # 8 -> 6 on 2x2 = 24 outputs
        "head.gate": (0, 24, 0, 0),  # 6 x 2 x 2 products
        "head.high_classifier": (72, 72, 12 * 6, 6 * 3 + 3),  # 6 -> 3 on 2x2 with bias: 12 outputs, 5 + 1 adds each
        "head.up_skip": (0, 4 * 48, 3 * 48, 0),  # 3 maps 2x2 -> 4x4: 48 outputs, 4 mults + 3 adds each
        "head.low_classifier": (384, 384, 48 * 8, 8 * 3 + 3),  # skip 8 -> 3 on 4x4 with bias
        "head.merge": (0, 0, 48, 0),
        "head.up_out": (0, 4 * 768, 3 * 768, 0),  # 3 maps 4x4 -> 16x16
    }
    for name, (macs, mults, adds, params) in want.items():
        r = rows[name]
        assert (r.macs, r.mults, r.adds, r.shifts, r.params) == (macs, mults, adds, 0, params), name
    up = rows["head.up_out"].layer
    assert (up.kind, up.stride, up.in_hw, up.out_hw) == ("upsample", 4, 4, 16)


def test_head_counts_hand_computed_add():
    rows = {r.layer.name: r for r in count_ops(tiny_seg("add")).rows}
    # AddConv: 2K - 1 additions per output, no multiplications; the classifiers stay multiplicative
    assert (rows["head.scale"].mults, rows["head.scale"].adds) == (0, 6 * 15)
    assert (rows["head.cbr"].mults, rows["head.cbr"].adds) == (0, 24 * 15)
    assert rows["head.high_classifier"].mults == 72 and rows["head.low_classifier"].mults == 384


@pytest.mark.parametrize("op", ["mult", "shift", "add"])
def test_counts_match_the_model(op):
    a = to_segmentation(zoo_arch("mbv2-tiny", op, 64, 11))
    net = build_model(a)
    rep = count_ops(a)
    assert rep.total("params") == sum(p.numel() for p in net.parameters())
    hooked = count_module_ops(net, (1, 3, 64, 64))
    convs = [r for r in rep.rows if r.layer.has_weights]
    assert [r.layer.path for r in convs] == [h["name"] for h in hooked]
    for r, h in zip(convs, hooked):
        assert (r.macs, r.mults, r.adds, r.shifts) == (h["macs"], h["mults"], h["adds"], h["shifts"]), r.layer.name
    for L in arch_layers(a):
        net.get_submodule(L.path)  # every layer names a real module


def test_output_resolution_is_part_of_the_price():
    from nas.cost.energy import price_arch

    base = to_segmentation(zoo_arch("mbv2-tiny", "add", 64, 11))
    big = to_segmentation(zoo_arch("mbv2-tiny", "add", 128, 11))
    def up(a):
        return next(r for r in count_ops(a).rows if r.layer.name == "head.up_out")

    assert up(big).mults == 4 * up(base).mults
    e = {L.name: en.energy_mJ for L, en in price_arch(base).rows}
    assert e["head.cbr"] > 0 and e["head.low_classifier"] > 0 and e["head.up_out"] == 0  # upsampling not charged


# ------------------------------------------------------------------------------------ tables
def test_seg64_tables_cover_every_arch_of_the_space():
    import random

    from nas.cost.shapes import space_cover_archs, space_layers
    from nas.cost.tablefile import RowKey, read_table, write_table
    from nas.space import SearchSpace

    sp = SearchSpace.load("seg64")
    ops = ("mult", "shift", "add")
    keys = {RowKey.of(L, True) for L in space_layers(sp, ops)}
    rng = random.Random(0)
    for _ in range(50):
        g = sp.sample_genome(rng)
        for op in ops:
            for L in arch_layers(sp.decode(g).with_ops(op)):
                assert RowKey.of(L, True) in keys, L
    covered = set()
    for a in space_cover_archs(sp, ("add",)):
        covered |= {RowKey.of(L, True) for L in arch_layers(a)}
    assert {RowKey.of(L, True) for L in space_layers(sp, ("add",))} <= covered
    # upsample rows survive the table file format
    ups = {RowKey.of(L, False): {"energy_mJ": 0.0, "latency_ms": 0.0, "compute_mJ": 0.0, "dram_mJ": 0.0, "gb_mJ": 0.0,
                                 "noc_mJ": 0.0, "rf_mJ": 0.0, "tiling": ""}
           for L in space_layers(sp, ("add",)) if L.kind == "upsample"}
    assert len(ups) == 2
    _, _, back = read_table(write_table("energy", {"schema_version": 1, "kind": "energy"}, ups))
    assert set(back) == set(ups)


def test_latency_callable_runs_head_layers():
    from nas.cost.latency import layer_callable

    for L in arch_layers(tiny_seg("shift")):
        if L.name.startswith("head."):
            out = layer_callable(L)()
            if L.kind == "upsample":
                assert out.shape == (1, L.out_channels, L.out_hw, L.out_hw)


# ------------------------------------------------------------------------------------ mIoU
def test_miou_against_hand_computed_confusion():
    cm = ConfusionMatrix(3)
    target = torch.tensor([[0, 0, 1, 1], [2, 2, 255, 0]])
    pred = torch.tensor([[0, 1, 1, 1], [2, 0, 2, 0]])
    cm.update(pred, target)
    # rows true, columns predicted; the 255 pixel is left out
    assert cm.counts.tolist() == [[2, 1, 0], [0, 2, 0], [1, 0, 1]]
    # IoU: class 0: 2 / (3 + 3 - 2) = 1/2; class 1: 2 / (2 + 3 - 2) = 2/3; class 2: 1 / (2 + 1 - 1) = 1/2
    assert cm.iou() == pytest.approx([0.5, 2 / 3, 0.5])
    assert cm.miou() == pytest.approx(100 * (0.5 + 2 / 3 + 0.5) / 3)
    assert cm.pixel_acc() == pytest.approx(100 * 5 / 7)


def test_miou_absent_classes_and_bad_labels():
    cm = ConfusionMatrix(4)
    cm.update(torch.tensor([0, 0, 1]), torch.tensor([0, 0, 1]))
    assert math.isnan(cm.iou()[2]) and cm.miou() == 100.0  # classes 2 and 3 nowhere: not averaged
    with pytest.raises(ConfigError, match="mask value: got 7"):
        cm.update(torch.tensor([0]), torch.tensor([7]))


def test_segmentation_meter_and_loss_ignore():
    seg = task_of("segmentation")
    logits = torch.zeros(1, 2, 1, 2)
    logits[0, 1, 0, 0] = 5.0  # predicts 1 at pixel 0, 0 at pixel 1
    y = torch.tensor([[[1, 255]]])
    assert seg.batch_acc(logits, y) == 1.0
    assert seg.loss(logits, y).item() == pytest.approx(torch.nn.functional.cross_entropy(logits[..., :1], y[..., :1]).item())
    m = seg.meter(2)
    m.update(logits, y)
    r = m.result("val")
    assert r["val_miou"] == 100.0 and r["val_pixel_acc"] == 100.0


def test_background_weight_loss_hand_computed():
    """Background pixels weigh ``background_weight``: the mean over weights of per-pixel NLLs
    (ignored pixels nowhere), against a float64 hand computation; 1.0 is the plain loss."""
    seg = task_of("segmentation")
    logits = torch.tensor([[[[2.0, -1.0, 0.5, 3.0]], [[0.0, 1.0, 2.0, 0.0]], [[1.0, 0.5, -2.0, 0.0]]]])  # (1, 3, 1, 4)
    y = torch.tensor([[[0, 2, 1, 255]]])
    lp = torch.log_softmax(logits.double(), 1)[0, :, 0]
    nll = [-lp[0, 0].item(), -lp[2, 1].item(), -lp[1, 2].item()]  # pixels 0..2; pixel 3 ignored
    w = 0.25
    expect = (w * nll[0] + nll[1] + nll[2]) / (w + 2)
    assert seg.loss(logits, y, background_weight=w).item() == pytest.approx(expect, rel=1e-6)
    assert seg.loss(logits, y, background_weight=1.0).item() == pytest.approx(sum(nll) / 3, rel=1e-6)
    assert seg.loss(logits, y, 0.0, 1.0).item() == seg.loss(logits, y).item()


def test_background_weight_config():
    from nas.rundir import config_hash
    from nas.train.trainer import TrainConfig

    base = dict(task="segmentation", dataset="mnistseg")
    for bad in (0.0, -1.0, math.inf, math.nan):
        with pytest.raises(ConfigError, match="background_weight"):
            TrainConfig(**base, background_weight=bad).validate()
    with pytest.raises(ConfigError, match="background_weight.*--task segmentation"):
        TrainConfig(background_weight=0.5).validate()  # classification
    d = TrainConfig(**base).validate().to_dict()
    assert "background_weight" not in d  # runs from before the field keep their config hash (resume)
    w = TrainConfig(**base, background_weight=0.1).validate()
    assert w.to_dict()["background_weight"] == 0.1 and TrainConfig.from_dict(w.to_dict()) == w
    assert config_hash(w.to_dict()) != config_hash(d)


def test_background_weight_reaches_the_search():
    """The search takes the weight too (MethodConfig): its supernet's loss and final training."""
    from nas.search.pipeline import SearchConfig

    with pytest.raises(ConfigError, match="background_weight"):
        SearchConfig(background_weight=0.5).resolved()  # classification
    assert "background_weight" not in SearchConfig(task="segmentation").resolved().to_dict()  # old runs keep their hash
    c = SearchConfig(task="segmentation", background_weight=0.1).resolved()
    assert c.to_dict()["background_weight"] == 0.1 and c.method_dict()["background_weight"] == 0.1


@pytest.mark.parametrize("argv, msg", [
    (["--model", "mbv2-tiny", "--background-weight", "0.5"], "error: background_weight: got 0.5"),
    (["--task", "segmentation", "--model", "mbv2-tiny", "--background-weight", "-1"], "error: background_weight: got -1.0"),
    (["--task", "segmentation", "--model", "mbv2-tiny", "--label-smoothing", "1.5"], "error: label_smoothing: got 1.5"),
])
def test_background_weight_cli_errors_are_one_line(argv, msg, capsys):
    from nas.cli import train_main

    assert train_main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(msg) and err.count("\n") == 1


# ------------------------------------------------------------------------------------ readers
def _png(path, array, palette: bool = False):
    from PIL import Image

    im = Image.fromarray(np.asarray(array, dtype=np.uint8), mode="L")
    if palette:
        im = im.convert("P")
        im.putpalette([v for i in range(256) for v in (i, 255 - i, (7 * i) % 256)])
    im.save(path)


def _jpg(path, h, w, seed):
    from PIL import Image

    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)


def test_voc_reader(tmp_path):
    from nas.data import load_dataset

    root = tmp_path / "VOCdevkit" / "VOC2012"
    for d in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (root / d).mkdir(parents=True)
    ids = [f"2007_{i:06d}" for i in range(5)]
    for k, i in enumerate(ids):
        _jpg(root / "JPEGImages" / f"{i}.jpg", 24, 32, k)
        m = np.zeros((24, 32), np.uint8)
        m[4:12, 8:20] = 15  # person
        m[3, :] = 255  # boundary
        _png(root / "SegmentationClass" / f"{i}.png", m, palette=True)
    (root / "ImageSets/Segmentation/train.txt").write_text("\n".join(ids[:3]) + "\n")
    (root / "ImageSets/Segmentation/val.txt").write_text("\n".join(ids[3:]) + "\n")
    data = load_dataset("voc", str(tmp_path))
    assert data.task == "segmentation" and len(data.class_names) == 21 and (len(data.train), len(data.val)) == (3, 2)
    images, masks = next(data.train.batches([torch.tensor([0, 1])], 16, 0))
    assert images.shape == (2, 3, 16, 16) and masks.shape == (2, 16, 16)
    assert set(masks.unique().tolist()) <= {0, 15, 255} and (masks == 15).any() and (masks == 255).any()
    # a corrupt mask: one line naming the file
    (root / "SegmentationClass" / f"{ids[4]}.png").write_bytes(b"not a png")
    with pytest.raises(ConfigError, match=f"mask: got '.*{ids[4]}.png'; not a readable image"):
        list(load_dataset("voc", str(tmp_path)).val.batches([torch.tensor([0, 1])], 16, 0))


def test_voc_missing_files(tmp_path):
    from nas.data import load_dataset

    (tmp_path / "ImageSets" / "Segmentation").mkdir(parents=True)
    (tmp_path / "ImageSets/Segmentation/train.txt").write_text("a\n")
    (tmp_path / "ImageSets/Segmentation/val.txt").write_text("a\n")
    with pytest.raises(ConfigError, match="image: got .*a.jpg'; missing"):
        load_dataset("voc", str(tmp_path))


def test_folder_reader(tmp_path):
    from nas.data import load_dataset

    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    for k in range(6):
        _jpg(tmp_path / "images" / f"im{k}.jpg", 20, 20, k)
        m = np.zeros((20, 20), np.uint8)
        m[5:15, 5:15] = 1 + k % 2
        _png(tmp_path / "masks" / f"im{k}.png", m)
    data = load_dataset("segfolder", str(tmp_path))
    assert data.class_names == ["0", "1", "2"] and len(data.train) + len(data.val) + len(data.test) == 6
    images, masks = next(data.train.batches([torch.arange(len(data.train))], 16, 0))
    assert images.shape == (len(data.train), 3, 16, 16) and masks.max() <= 2
    # a mask of another size than its image
    _png(tmp_path / "masks" / "im0.png", np.zeros((10, 10), np.uint8))
    full = load_dataset("segfolder", str(tmp_path))
    with pytest.raises(ConfigError, match="the size of its image"):
        for split in (full.train, full.val, full.test):
            list(split.batches([torch.arange(len(split))], 16, 0))
    # an image without a mask
    _jpg(tmp_path / "images" / "lonely.jpg", 20, 20, 9)
    with pytest.raises(ConfigError, match="lonely.jpg'; has no mask"):
        load_dataset("segfolder", str(tmp_path))


def test_mnistseg_splits_deterministic():
    from nas.data import load_dataset

    d = load_dataset("mnistseg")
    assert d.task == "segmentation" and d.class_names[0] == "background" and len(d.class_names) == 11
    assert (len(d.train), len(d.val), len(d.test)) == (4000, 500, 500)
    images, masks = next(d.test.batches([torch.arange(8)], 64, 0))
    assert images.shape[-2:] == (64, 64) and masks.shape == (8, 64, 64) and int(masks.max()) <= 10
    assert torch.equal(masks, next(load_dataset("mnistseg").test.batches([torch.arange(8)], 64, 0))[1])  # deterministic


# ------------------------------------------------------------------------------------ supernet
def test_supernet_dense_forward_and_extracted_subnet_agree():
    from nas.space import SearchSpace
    from nas.supernet.net import DynamicNet

    sp = SearchSpace.load("seg64")
    big = sp.max_arch()
    net = DynamicNet(big).eval()
    a = sp.min_arch()
    net.set_active_subnet(a)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        y = net(x)
        z = net.get_active_subnet().eval()(x)
    assert y.shape == (2, 11, 64, 64)
    assert torch.allclose(y, z, atol=1e-5)


# ------------------------------------------------------------------------------------ C export
def test_codegen_refuses_segmentation():
    from nas.codegen.check import deploy_counts

    with pytest.raises(ConfigError, match="task: got 'segmentation'; the C code generator .* handles classification networks only"):
        deploy_counts(tiny_seg("shift"))


def test_cost_cli_deploy_refuses_before_output(tmp_path, capsys):
    from nas.cli import cost_main

    p = tmp_path / "seg.json"
    tiny_seg("add").save(p)
    assert cost_main(["--arch", str(p), "--deploy"]) == 2
    cap = capsys.readouterr()
    assert cap.out == "" and cap.err.count("\n") == 1 and "C code generator" in cap.err
    assert cost_main(["--arch", str(p), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    names = [r["name"] for r in out["layers"]]
    assert "head.cbr" in names and "head.up_out" in names and "classifier" not in names
    assert out["params"] == sum(p.numel() for p in build_model(tiny_seg("add")).parameters())


# ------------------------------------------------------------------------------------ CLI end to end
@pytest.mark.slow
def test_train_cost_export_end_to_end(tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    from nas.cli import cost_main, export_main, train_main

    out = tmp_path / "run"
    assert train_main(["--task", "segmentation", "--dataset", "mnistseg", "--model", "mbv2-tiny", "--op", "add", "--aug",
                       "shiftaddaug", "--epochs", "1", "--max-train-images", "64", "--background-weight", "0.1",
                       "--label-smoothing", "0", "--out", str(out)]) == 0
    cfg = json.loads((out / "config.json").read_text())["train"]
    assert cfg["background_weight"] == 0.1 and cfg["label_smoothing"] == 0.0
    s = json.loads((out / "summary.json").read_text())
    assert s["task"] == "segmentation" and 0 <= s["test_miou"] <= 100 and 0 <= s["test_pixel_acc"] <= 100
    assert s["export"]["max_abs_logit_diff"] < 1e-4  # exported TargetNet == the trained model in target mode
    head = (out / "metrics.csv").read_text().splitlines()[0].split(",")
    assert "val_miou" in head and "val_pixel_acc" in head
    capsys.readouterr()
    assert cost_main(["--arch", str(out / "target" / "arch.json"), "--json"]) == 0
    c = json.loads(capsys.readouterr().out)
    kinds = {r["kind"] for r in c["layers"]}
    assert {"dense", "pointwise", "depthwise", "upsample"} <= kinds and c["energy_mJ"] > 0
    assert export_main([str(out), "--format", "onnx"]) == 0
    assert (out / "target" / "model.onnx").is_file()
    assert export_main([str(out), "--format", "c"]) == 2


# ------------------------------------------------------------------------------------ ONNX
@pytest.mark.parametrize("op", ["shift", "add"])
def test_onnx_round_trip(tmp_path, op):
    pytest.importorskip("onnxruntime")
    from nas.onnx_export import export_onnx

    torch.manual_seed(0)
    net = build_model(tiny_seg(op)).eval()
    info = export_onnx(net, tmp_path / "seg.onnx", 16)  # checks onnxruntime against PyTorch
    assert "Resize" in info["ops"] and info["max_abs_diff"] <= info["tolerance"]
    import onnxruntime as ort

    sess = ort.InferenceSession(str(tmp_path / "seg.onnx"), providers=["CPUExecutionProvider"])
    x = torch.randn(3, 3, 16, 16)
    y = torch.from_numpy(sess.run(["logits"], {"input": x.numpy()})[0])
    with torch.no_grad():
        ref = net(x)
    assert y.shape == (3, 3, 16, 16)
    assert torch.allclose(y, ref, atol=1e-4 * float(ref.abs().max().clamp_min(1)))


def test_shipped_seg64_energy_table_is_complete_and_exact():
    import random

    from nas.cost.energy import price_arch
    from nas.cost.tables import shipped_energy_table
    from nas.space import SearchSpace

    sp = SearchSpace.load("seg64")
    t = shipped_energy_table(sp)
    assert t is not None
    rng = random.Random(1)
    for _ in range(5):
        a = sp.sample(rng)
        for op in ("mult", "shift", "add"):
            v = a.with_ops(op)
            assert t.price(v).total("energy_mJ") == pytest.approx(price_arch(v).energy_mJ, rel=1e-9)  # no missing row


# ------------------------------------------------------------------------------------ training
def test_augmentation_widens_the_head_and_keeps_the_target():
    import random

    from nas.train.augment import Augmenter, AugSpec, subnet_for

    t = tiny_seg("add").replace(resolution=64)
    sub, tb = subnet_for(t, 1)
    aug = Augmenter(t, tb, sub, AugSpec(width_mults=(1.0, 2.0), stop_width=0.5))
    widths = {aug.sample(random.Random(s), 0.1)[0].seg_head.channels for s in range(8)}
    assert min(widths) >= 6 and max(widths) > 6  # the head's hidden channels are augmented, never below the target's
    a, _ = aug.sample(random.Random(0), 0.9)
    assert a.seg_head.skip_stage == t.seg_head.skip_stage and a.is_segmentation


@pytest.mark.parametrize("aug, op", [("shiftaddaug", "add"), pytest.param("shiftaddaug", "shift", marks=pytest.mark.slow)])
def test_hybrid_training_exports_the_target(tmp_path, aug, op):
    from nas.export import load_exported
    from nas.train.trainer import TrainConfig, Trainer

    p = tmp_path / "tiny.json"
    tiny_seg().replace(resolution=64).save(p)
    cfg = TrainConfig(task="segmentation", dataset="mnistseg", model=None, arch=str(p), op=op, aug=aug, epochs=1,
                      batch_size=16, max_train_images=32, bn_images=32, width_mults=(1.0, 1.5), expand_mults=(1.0, 1.5))
    tr = Trainer(cfg, tmp_path / "run", progress=False)
    s = tr.fit()
    assert s["export"]["max_abs_logit_diff"] < 1e-4
    model = load_exported(tmp_path / "run" / "target")
    meta = json.loads((tmp_path / "run" / "target" / "meta.json").read_text())
    dw = ["stages.0.0.dw.conv", "stages.1.0.dw.conv"] if op == "add" else []  # Add networks multiply in depthwise convs
    assert meta["multiplicative_layers"] == dw + ["head.high_classifier", "head.low_classifier"]
    x = torch.randn(2, 3, 64, 64)
    tr.net.set_active_subnet(tr.target, tr.target_blocks)
    tr.net.eval()
    with torch.no_grad():
        assert torch.allclose(model(x), tr.net(x), atol=1e-5)
