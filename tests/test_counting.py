"""Exact op counts: hand-computed layers, agreement with the built model, published figures."""

from pathlib import Path

import pytest
import torch

from nas.arch import Arch
from nas.cost.counting import count_module_ops, count_ops, layer_cost
from nas.cost.layers import PARTS, Layer, arch_layers
from nas.models import build_model, zoo_arch

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "net-configs"  # real MCUNet / OFA files


def test_dense_conv_hand_computed():
    # 3 -> 2 channels, 3x3, 224 -> 222 (no padding), bias: the NNI profiler's example
    L = Layer("c", "dense", "mult", 3, 2, 3, 1, 1, 224, 222, bias=True)
    c = layer_cost(L)
    outputs = 2 * 222 * 222
    assert c.macs == 27 * outputs == 2_661_336
    assert c.mults == 2_661_336 and c.shifts == 0
    assert c.adds == 26 * outputs + outputs == 2_661_336  # accumulations + bias
    assert c.macs + outputs == 2_759_904  # NNI counts bias as one more op per output
    assert c.params == 3 * 2 * 9 + 2
    assert c.act_in == 3 * 224 * 224 and c.act_out == outputs


def test_shift_and_add_conv_hand_computed():
    s = layer_cost(Layer("c", "dense", "shift", 3, 2, 3, 1, 1, 224, 222, bias=True))
    assert (s.mults, s.shifts, s.adds) == (0, 2_661_336, 2_661_336)
    a = layer_cost(Layer("c", "dense", "add", 3, 2, 3, 1, 1, 224, 222, bias=True))
    assert (a.mults, a.shifts) == (0, 0)
    assert a.adds == (2 * 27 - 1) * 98_568 + 98_568 == 5_322_672
    assert a.macs == s.macs == 2_661_336


def test_depthwise_pointwise_linear_se_pool_residual():
    dw = layer_cost(Layer("dw", "depthwise", "mult", 16, 16, 3, 2, 16, 8, 4, bn=True))
    assert dw.macs == 9 * 16 * 4 * 4 == 2304 and dw.params == 16 * 9 + 32
    pw = layer_cost(Layer("pw", "pointwise", "add", 16, 24, 1, 1, 1, 4, 4, bn=True))
    assert pw.macs == 16 * 24 * 16 and pw.adds == (2 * 16 - 1) * 24 * 16 and pw.params == 16 * 24 + 48
    fc = layer_cost(Layer("fc", "linear", "mult", 448, 10, bias=True))
    assert (fc.macs, fc.mults, fc.adds, fc.params) == (4480, 4480, 4480, 4490)
    pool = layer_cost(Layer("se.pool", "se", "mult", 16, 16, 1, 1, 1, 4, 1, part="se_pool"))
    assert (pool.adds, pool.mults, pool.macs) == (16 * 15, 16, 0)
    gate = layer_cost(Layer("se.gate", "se", "mult", 16, 16, 1, 1, 1, 4, 4, part="se_gate"))
    assert (gate.mults, gate.adds) == (256, 0)
    res = layer_cost(Layer("b.residual", "residual", "mult", 16, 16, 1, 1, 1, 4, 4))
    assert (res.adds, res.mults) == (256, 0)


def test_se_block_in_add_model_hand_computed():
    """One SE block of an Add model (the paper's convention: the SE convs are AddConv, 1x1 convs on
    the pooled 1x1 map; only the depthwise conv and the classifier multiply)."""
    arch = Arch.from_dict({
        "name": "se-add", "resolution": 16, "num_classes": 10,
        "stem": {"out_channels": 8, "kernel_size": 3, "stride": 2},  # 16 -> 8
        "stages": [{"blocks": [{"kernel_size": 3, "expand_ratio": 2, "out_channels": 8, "se_channels": 8}]}],
    }).with_ops("add")
    rows = {r.layer.name: r for r in count_ops(arch).rows}
    got = {n: (r.layer.op, r.macs, r.mults, r.adds, r.shifts, r.params) for n, r in rows.items()}
    assert got == {
        "stem": ("add", 27 * 512, 0, (2 * 27 - 1) * 512, 0, 3 * 8 * 9 + 16),
        "s0.b0.expand": ("add", 8 * 1024, 0, (2 * 8 - 1) * 1024, 0, 8 * 16 + 32),
        "s0.b0.dw": ("mult", 9 * 1024, 9 * 1024, 8 * 1024, 0, 16 * 9 + 32),
        "s0.b0.se.pool": ("mult", 0, 16, 16 * 63, 0, 0),
        # 16 -> 8 with bias: 8 outputs of 16 subtractions + 15 accumulations + 1 bias add
        "s0.b0.se.reduce": ("add", 128, 0, 8 * (2 * 16 - 1) + 8, 0, 16 * 8 + 8),
        "s0.b0.se.expand": ("add", 128, 0, 16 * (2 * 8 - 1) + 16, 0, 8 * 16 + 16),
        "s0.b0.se.gate": ("mult", 0, 16 * 64, 0, 0, 0),
        "s0.b0.project": ("add", 16 * 512, 0, (2 * 16 - 1) * 512, 0, 16 * 8 + 16),
        "s0.b0.residual": ("mult", 0, 0, 512, 0, 0),
        "pool": ("mult", 0, 8, 8 * 63, 0, 0),
        "classifier": ("mult", 80, 80, 7 * 10 + 10, 0, 90),
    }
    t = count_ops(arch).totals
    assert (t["macs"], t["mults"], t["adds"], t["shifts"]) == (39760, 10344, 69176, 0)
    # the built model has AdderConv2d SE convs and the same counts, layer by layer
    from nas.ops.adder import AdderConv2d

    model = build_model(arch)
    se = model.stages[0][0].se
    assert isinstance(se.reduce, AdderConv2d) and isinstance(se.expand, AdderConv2d)
    hooked = {h["name"]: (h["macs"], h["mults"], h["adds"], h["shifts"]) for h in count_module_ops(model, (1, 3, 16, 16))}
    assert hooked["stages.0.0.se.reduce"] == got["s0.b0.se.reduce"][1:5]
    assert hooked["stages.0.0.se.expand"] == got["s0.b0.se.expand"][1:5]
    assert t["params"] == sum(p.numel() for p in model.parameters())


def test_batch_scales_linearly():
    a = zoo_arch("mcunet", "shift", 64, 10)
    one, four = count_ops(a).totals, count_ops(a, batch=4).totals
    for k in ("macs", "mults", "adds", "shifts"):
        assert four[k] == 4 * one[k]
    assert four["params"] == one["params"]


@pytest.mark.parametrize("op", ["mult", "shift", "add"])
@pytest.mark.parametrize("name", ["mbv2-w0.35", "mbv3-w0.35", "proxyless-w0.35", "mcunet", "mbv2-tiny"])
def test_counts_equal_built_model(name, op):
    arch = zoo_arch(name, op, 64, 10)
    model = build_model(arch)
    report = count_ops(arch)
    assert report.totals["params"] == sum(p.numel() for p in model.parameters())
    hooked = count_module_ops(model, (1, 3, 64, 64))
    convs = [r for r in report.rows if r.layer.has_weights]
    assert len(hooked) == len(convs)
    for h, r in zip(hooked, convs):
        assert h["name"] == r.layer.path
        assert (h["macs"], h["mults"], h["adds"], h["shifts"]) == (r.macs, r.mults, r.adds, r.shifts), r.layer.name


def test_layer_records_match_module_paths():
    arch = zoo_arch("mbv3-w0.35", "mult", 64, 10)
    model = build_model(arch)
    modules = dict(model.named_modules())
    layers = arch_layers(arch)
    seg = {p for p in PARTS if p.startswith("seg_")}  # the segmentation head's (tests/test_segmentation.py)
    assert {L.part for L in layers} == set(PARTS) - seg  # MobileNetV3 has every other part
    for L in layers:
        assert L.path in modules, L.name  # the module computing it ('' is the network itself)
        assert L.kind == PARTS[L.part].kind
        assert (L.stage is None) == (L.block is None) == (not PARTS[L.part].in_block)
    by = {L.name: L for L in layers}
    se = by["s2.b1.se.reduce"]
    assert (se.path, se.part, se.stage, se.block, se.act, se.table_part) == ("stages.2.1.se.reduce", "se_reduce", 2, 1, "none", "reduce")
    assert by["s0.b0.dw"].path == "stages.0.0.dw.conv" and by["s1.b0.expand"].path == "stages.1.0.expand.conv"
    assert by["s1.b0.expand"].act == arch.stages[1].blocks[0].act and by["s1.b0.project"].act == "none"
    assert by["stem"].act == arch.stem.act and by["post_pool"].act == arch.post_pool.act


def test_op_totals_by_kind():
    report = count_ops(zoo_arch("mbv2-w0.35", "add", 160, 100))
    kinds = report.by_kind()
    assert kinds["op:add"]["mults"] == 0 and kinds["op:add"]["macs"] > 0
    assert kinds["depthwise"]["adds"] < kinds["depthwise"]["macs"]  # depthwise stays mult in Add models
    shift = count_ops(zoo_arch("mbv2-w0.35", "shift", 160, 100)).totals
    mult = count_ops(zoo_arch("mbv2-w0.35", "mult", 160, 100)).totals
    assert shift["macs"] == mult["macs"]
    # in a Shift model only the classifier (1280 -> 100) and the final pool's 1/HW scaling multiply
    assert shift["shifts"] == shift["macs"] - 1280 * 100
    assert shift["mults"] == 1280 * 100 + 1280


# Published figures (NetAug / MCUNet READMEs): (model, resolution, MACs, params), 1000 classes.
PUBLISHED = [
    ("mbv2-w1.0", 224, 300e6, 3.47e6),  # 300M MACs, 3.4-3.5M params
    ("mbv2-tiny", 144, 23.5e6, 0.75e6),
    ("mcunet", 176, 81.8e6, 0.74e6),
    ("proxyless-w0.35", 160, 35.7e6, 1.8e6),
]


@pytest.mark.parametrize("name, res, macs, params", PUBLISHED)
def test_zoo_meets_published_figures(name, res, macs, params):
    t = count_ops(zoo_arch(name, "mult", res, 1000)).totals
    assert abs(t["macs"] / macs - 1) < 0.01
    tol = 0.015 if name == "mbv2-w1.0" else 0.011  # 3.4-3.5M range; 0.74M / 1.8M are rounded
    assert abs(t["params"] / params - 1) < tol


# MCUNet README model tables: net.config file -> (MACs, params)
MCUNET_README = {
    "mbv2-w0.3-r80_imagenet": (7.3e6, 0.63e6),
    "mbv2-w0.35-r144_imagenet": (23.5e6, 0.75e6),
    "proxyless-w0.25-r112_imagenet": (10.7e6, 0.57e6),
    "proxyless-w0.3-r176_imagenet": (38.3e6, 0.75e6),
    "mcunet-10fps_imagenet": (6.4e6, 0.75e6),
    "mcunet-5fps_imagenet": (12.8e6, 0.64e6),
    "mcunet-256kb-1mb_imagenet": (67.3e6, 0.73e6),
    "mcunet-320kb-1mb_imagenet": (81.8e6, 0.74e6),
    "mcunet-512kb-2mb_imagenet": (125.9e6, 1.73e6),
    "mcunet-256kb-1mb-int4_imagenet": (134.5e6, 1.4e6),
    "mcunet-320kb-1mb-int4_imagenet": (170.0e6, 1.4e6),
    "mcunet-512kb-2mb-int4_imagenet": (466.8e6, 3.3e6),
}


@pytest.mark.parametrize("stem, figures", sorted(MCUNET_README.items()))
def test_net_configs_meet_mcunet_readme(stem, figures):
    t = count_ops(Arch.load(FIXTURES / f"{stem}.json")).totals
    macs, params = figures
    assert abs(t["macs"] / macs - 1) < 0.01
    # the README rounds params to 2 significant digits (0.57M, 1.4M): allow that rounding
    assert abs(t["params"] - params) <= max(0.01 * params, 0.005e6 if params < 1e6 else 0.05e6)


def test_counts_match_real_forward_for_ofa_config():
    arch = Arch.load(FIXTURES / "mcunet-5fps_imagenet.json")
    model = build_model(arch)
    hooked = count_module_ops(model, (1, 3, arch.resolution, arch.resolution))
    assert sum(h["macs"] for h in hooked) == count_ops(arch).totals["macs"]
    out = model.eval()(torch.zeros(2, 3, arch.resolution, arch.resolution))
    assert out.shape == (2, 1000)
