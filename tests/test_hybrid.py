"""Hybrid layers and the DynamicNet: MF prefix semantics, weight sharing, export equality."""

import json
import random

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from nas.models import zoo_arch
from nas.ops.adder import AdderConv2d, adder_conv2d
from nas.ops.hybrid import HybridConv2d
from nas.ops.shift import ShiftConv2d, shift_weight_q
from nas.space import SearchSpace
from nas.supernet.net import DynamicBatchNorm2d, DynamicNet, sort_channels
from nas.train.augment import Augmenter, subnet_for
from nas.train.bn import reset_bn


def _mf(op, x, w, stride, pad, groups):
    if op == "shift":
        return F.conv2d(x, shift_weight_q(w), None, stride, pad, 1, groups)
    return adder_conv2d(x, w, None, stride, pad, 1, groups, eta=None)


@pytest.mark.parametrize("op", ["shift", "add"])
@pytest.mark.parametrize("remap", ["none", "cdf", "cdf-fc"])
def test_dense_hybrid_matches_formula(op, remap):
    torch.manual_seed(0)
    conv = HybridConv2d(12, 10, 5, stride=2, remap=remap, op_options={"add": {"eta": None}})
    conv.configure(out=8, kernel=3, mf_op=op, mf_out=5, mf_in=4)
    x = torch.randn(2, 9, 11, 11)
    w = conv.weight[:8, :9, 1:4, 1:4]
    wt = conv.remap(w[:5, :4])
    yt = _mf(op, x[:, :4], wt, 2, 1, 1) + F.conv2d(x[:, 4:], w[:5, 4:], None, 2, 1)
    ya = F.conv2d(x, w[5:], None, 2, 1)
    assert torch.allclose(conv(x), torch.cat([yt, ya], 1), atol=1e-5)


@pytest.mark.parametrize("op", ["shift", "add"])
def test_depthwise_hybrid_matches_formula(op):
    torch.manual_seed(1)
    conv = HybridConv2d(16, 16, 7, depthwise=True, op_options={"add": {"eta": None}})
    conv.configure(out=12, kernel=5, mf_op=op, mf_out=6, mf_in=6)
    x = torch.randn(2, 12, 9, 9)
    w = conv.weight[:12, :, 1:6, 1:6]
    yt = _mf(op, x[:, :6], conv.remap(w[:6]), 1, 2, 6)
    ya = F.conv2d(x[:, 6:], w[6:], None, 1, 2, 1, 6)
    assert torch.allclose(conv(x), torch.cat([yt, ya], 1), atol=1e-5)


def test_mult_configuration_is_a_sliced_conv():
    conv = HybridConv2d(8, 8, 3)
    conv.configure(out=5)
    x = torch.randn(1, 6, 7, 7)
    assert torch.equal(conv(x), F.conv2d(x, conv.weight[:5, :6], None, 1, 1))


@pytest.mark.parametrize("op", ["shift", "add"])
def test_shared_weight_gets_gradients_from_both_branches(op):
    conv = HybridConv2d(6, 6, 3, remap="cdf-fc")
    conv.configure(out=6, mf_op=op, mf_out=3, mf_in=3)
    conv(torch.randn(2, 6, 5, 5)).square().sum().backward()
    g = conv.weight.grad
    assert g[:3, :3].abs().sum() > 0  # through the remap into the MF prefix
    assert g[:3, 3:].abs().sum() > 0 and g[3:].abs().sum() > 0  # multiplicative parts
    assert conv.remap.fc.grad.abs().sum() > 0
    names = dict(conv.named_parameters())
    assert {"weight", "remap.fc"} <= set(names) and {"weight", "remap.fc"} <= set(conv.state_dict())


def test_branch_norm_rescales_only_the_mult_partial_sum():
    torch.manual_seed(3)
    conv = HybridConv2d(8, 4, 1, branch_norm=True, op_options={"add": {"eta": None}})
    conv.configure(out=4, mf_op="add", mf_out=4, mf_in=4)
    x = torch.randn(16, 8, 4, 4)
    y = conv(x)
    mf = adder_conv2d(x[:, :4], conv.remap(conv.weight[:, :4]), eta=None)
    part = F.conv2d(x[:, 4:], conv.weight[:, 4:])
    scale = mf.std(dim=(0, 2, 3), keepdim=True) / part.std(dim=(0, 2, 3), keepdim=True)
    assert torch.allclose(y, mf + part * scale, rtol=1e-4, atol=1e-3)
    # the target pass (no augmented inputs) is untouched by branch_norm
    assert torch.equal(conv(x[:, :4]), mf)


def test_dynamic_bn_updates_only_active_channels():
    bn = DynamicBatchNorm2d(8)
    bn(torch.randn(4, 5, 3, 3) + 3)
    assert (bn.running_mean[:5] > 0.1).all() and (bn.running_mean[5:] == 0).all()


@pytest.fixture(scope="module")
def tiny_space():
    return SearchSpace.load("tiny")


def test_subnets_of_the_space_export_exactly(tiny_space):
    torch.manual_seed(0)
    net = DynamicNet(tiny_space.max_arch())
    x = torch.randn(4, 3, 32, 32)
    net.train()
    net(x)
    rng = random.Random(0)
    for _ in range(6):
        for op in ("mult", "shift", "add"):
            arch = tiny_space.sample(rng).with_ops(op)
            net.set_active_subnet(arch)
            reset_bn(net, [(x, None)])
            net.eval()
            static = net.get_active_subnet().eval()
            assert torch.allclose(net(x), static(x), atol=1e-5)
            net.train()


def _trained_target(name: str, op: str):
    """A DynamicNet after two real ShiftAddAug steps (target pass, then hybrid augmented pass),
    left in target mode with BN re-estimated; returns (net, target, x)."""
    torch.manual_seed(0)
    target = zoo_arch(name, op, 32, 10)
    sub, tb = subnet_for(target, 1)
    aug = Augmenter(target, tb, sub)
    net = DynamicNet(aug.max_arch)
    opt = torch.optim.SGD(net.parameters(), lr=0.05)
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
    rng = random.Random(0)
    for step in range(2):  # a couple of real two-pass steps so weights and BN move
        net.set_active_subnet(target, tb)
        F.cross_entropy(net(x), y).backward()
        a, b = aug.sample(rng, step / 2)
        net.set_active_subnet(a, b, target=target, target_blocks=tb)
        F.cross_entropy(net(x), y).backward()
        opt.step()
        opt.zero_grad()
    net.set_active_subnet(target, tb)
    reset_bn(net, [(x, None)])
    return net.eval(), target, x


@pytest.mark.parametrize("op", ["shift", "add"])
@pytest.mark.parametrize("name", ["mbv2-w0.35", "mbv3-w0.35"])
def test_trained_hybrid_target_exports_exactly_and_mf_only(name, op):
    net, target, x = _trained_target(name, op)
    static = net.get_active_subnet().eval()
    assert torch.allclose(net(x), static(x), atol=1e-5)
    plain = [n for n, m in static.named_modules() if type(m) in (nn.Conv2d, nn.Linear)]
    if op == "shift":
        assert plain == ["classifier"]
    else:  # Add models keep depthwise convs and the classifier multiplicative; SE convs add
        assert all(n == "classifier" or n.endswith("dw.conv") for n in plain), plain
        assert any(isinstance(m, AdderConv2d) for m in static.modules())
        se = [m for n, m in static.named_modules() if n.endswith((".se.reduce", ".se.expand"))]
        assert len(se) == (16 if name == "mbv3-w0.35" else 0)
        assert all(isinstance(m, AdderConv2d) for m in se)
    if op == "shift":
        w = static.stem.conv.weight.abs()
        nz = w[w > 0]
        assert torch.equal(torch.log2(nz), torch.log2(nz).round())  # stored as powers of two
        assert isinstance(static.stem.conv, ShiftConv2d)


def test_se_convs_of_an_add_target_are_hybrid():
    """In the augmented pass, the SE convs of an Add TargetNet compute the target's channels with
    AddConv on remapped weights and the augmented channels multiplicatively."""
    torch.manual_seed(0)
    target = zoo_arch("mbv3-w0.35", "add", 32, 10)
    sub, tb = subnet_for(target, 0)
    aug = Augmenter(target, tb, sub)
    net = DynamicNet(aug.max_arch, op_options={"add": {"eta": None}})
    a, b = aug.sample(random.Random(0), 0.0)
    net.set_active_subnet(a, b, target=target, target_blocks=tb)
    checked = 0
    for (i, j, tblk), ablk in zip(target.blocks(), (blk for _, _, blk in a.blocks())):
        if not tblk.se_channels:
            continue
        se = net.stages[i][j].se
        assert (se.reduce.mf_op, se.reduce.mf_out, se.reduce.mf_in) == ("add", tblk.se_channels, tblk.mid_channels)
        assert (se.expand.mf_op, se.expand.mf_out, se.expand.mf_in) == ("add", tblk.mid_channels, tblk.se_channels)
        assert se.reduce.active_out == ablk.se_channels and se.expand.active_out == ablk.mid_channels
        checked += 1
    assert checked == 8 and any(x.se_channels > y.se_channels for x, y in zip((k for _, _, k in a.blocks()), (k for _, _, k in target.blocks())))
    # one SE reduce conv against the formula: Y_t = Add(X_t; R(W_tt)) + bias, Y_a = MConv(X; W_a)
    i, j, tblk = next((i, j, blk) for i, j, blk in target.blocks() if blk.se_channels)
    conv = net.stages[i][j].se.reduce
    ablk = a.stages[i].blocks[j]
    x = torch.randn(2, ablk.mid_channels, 1, 1)
    n, m = tblk.se_channels, tblk.mid_channels
    w = conv.weight[: ablk.se_channels, : ablk.mid_channels]
    yt = _mf("add", x[:, :m], conv.remap(w[:n, :m]), 1, 0, 1) + F.conv2d(x[:, m:], w[:n, m:])
    ya = F.conv2d(x, w[n:])
    want = torch.cat([yt, ya], 1) + conv.bias[: ablk.se_channels].view(1, -1, 1, 1)
    assert torch.allclose(conv(x), want, atol=1e-5)


def test_exported_se_add_target_files_and_onnx(tmp_path):
    """An Add TargetNet with SE blocks through the export files: arch.json names add SE convs,
    the rebuilt network's logits equal the trained target's, and its ONNX file (adders as
    standard operators) matches onnxruntime."""
    from nas.export import export_target, load_exported

    net, target, x = _trained_target("mbv3-w0.35", "add")
    info = export_target(net, tmp_path, x, op_options={})
    saved = json.loads((tmp_path / "arch.json").read_text())
    se_ops = [b["se_op"] for s in saved["stages"] for b in s["blocks"] if b["se_channels"]]
    assert saved["schema_version"] == 2 and se_ops == ["add"] * 8
    meta = json.loads((tmp_path / "meta.json").read_text())
    assert meta["op"] == "add" and all(n == "classifier" or n.endswith("dw.conv") for n in meta["multiplicative_layers"])
    model = load_exported(tmp_path)
    with torch.no_grad():
        assert torch.allclose(model(x), net(x), atol=1e-5) and info["max_abs_logit_diff"] < 1e-5
    pytest.importorskip("onnxruntime")
    from nas.onnx_export import export_onnx

    r = export_onnx(model, tmp_path / "model.onnx", 32)  # raises when onnxruntime disagrees
    assert {"Abs", "ReduceSum", "Sub"} <= set(r["ops"]) and r["max_abs_diff_fp64"] <= r["tolerance"]


def test_target_block_subset_skips_augmented_depth():
    target = zoo_arch("mcunet", "shift", 32, 10)
    sub, tb = subnet_for(target, 2)
    net = DynamicNet(sub)
    net.set_active_subnet(target, tb)
    net.eval()
    x = torch.randn(2, 3, 32, 32)
    static = net.get_active_subnet().eval()
    assert torch.allclose(net(x), static(x), atol=1e-5)
    assert sum(target.depths) + 2 * len(target.stages) == sum(sub.depths)
    with pytest.raises(ValueError, match="must start at 0"):
        net.set_active_subnet(target, [[1]] + tb[1:])


def test_sort_channels_keeps_the_function_and_orders_importance(tiny_space):
    torch.manual_seed(0)
    net = DynamicNet(tiny_space.max_arch()).eval()
    x = torch.randn(2, 3, 32, 32)
    before = net(x)
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    net.train()
    net(x).sum().backward()
    opt.step()
    net.eval()
    before = net(x)
    mom = opt.state[net.stages[1][0].project.conv.weight]["momentum_buffer"].clone()
    sort_channels(net, opt)
    assert torch.allclose(net(x), before, atol=1e-5)
    imp = net.stages[1][0].project.conv.weight.abs().sum(dim=(0, 2, 3))
    assert (imp.diff() <= 1e-6).all()
    after = opt.state[net.stages[1][0].project.conv.weight]["momentum_buffer"]
    assert torch.allclose(after.abs().sum(), mom.abs().sum())  # permuted, not reset


def test_sort_channels_with_se_blocks():
    torch.manual_seed(0)
    net = DynamicNet(zoo_arch("mbv3-w0.35", "mult", 32, 10)).double().eval()
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    before = net(x)
    sort_channels(net)
    assert torch.allclose(net(x), before, atol=1e-10)


@pytest.mark.parametrize("op", ["shift", "add"])
def test_remap_affine_is_folded_at_export_and_follows_sorted_channels(op):
    """Eq. 5's per-channel affine on 1x1 convs and linears: trained (here: perturbed) values are
    folded into the exported weights (exported logits = target-mode logits), and channel sorting
    permutes them with the channels (the function is unchanged)."""
    torch.manual_seed(0)
    arch = zoo_arch("mbv3-w0.35", op, 32, 10)
    net = DynamicNet(arch.with_ops("mult"), remap="cdf-fc", remap_affine=True)
    affine = [m for n, m in net.named_modules() if n.endswith("remap") and m.affine]
    assert len(affine) == sum(1 for n, m in net.named_modules() if isinstance(m, HybridConv2d) and m.max_kernel == 1) + 1
    with torch.no_grad():
        for m in affine:
            m.scale.uniform_(0.7, 1.3)
            m.shift.normal_(0, 0.2)
    x = torch.randn(4, 3, 32, 32)
    net.set_active_subnet(arch)
    net.train()
    net(x)
    reset_bn(net, [(x, None)])
    net.eval()
    before = net(x)
    static = net.get_active_subnet().eval()
    assert torch.allclose(before, static(x), atol=1e-5, rtol=1e-5)
    sort_channels(net)
    assert torch.allclose(net(x), before, atol=1e-4, rtol=1e-4)
