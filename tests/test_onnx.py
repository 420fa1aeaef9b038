"""ONNX export (nas.onnx_export): zoo TargetNets with mult / shift / add layers run in onnxruntime
with standard operators only and match PyTorch; the adder replacement matches AdderConv2d /
AdderLinear for every geometry the toolkit uses; dynamic batch; fixed-point shift activations."""

from __future__ import annotations

import copy
import sys

import pytest
import torch
import torch.nn as nn

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from onnx import numpy_helper  # noqa: E402

from nas.errors import ConfigError  # noqa: E402
from nas.models import build_model, zoo_arch  # noqa: E402
from nas.onnx_export import OnnxAdderConv2d, OnnxAdderLinear, export_onnx, to_onnx_friendly  # noqa: E402
from nas.ops.adder import AdderConv2d, AdderLinear  # noqa: E402
from nas.ops.shift import ShiftConv2d, ShiftLinear  # noqa: E402

RES, CLASSES = 32, 10


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny layers: with two threads on a shared 2-core box, barrier waits dominate (100x slower)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def run_ort(path, x: torch.Tensor) -> torch.Tensor:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    return torch.from_numpy(sess.run(["logits"], {"input": x.numpy()})[0])


@torch.no_grad()
def calibrated(name: str, op: str, seed: int = 0) -> nn.Module:
    """A random-weight zoo model in eval mode with BN running stats estimated on random data.

    Adder layers without BN (the post-pool conv) get their bias set to centre their output, and
    tiny running variances are floored: otherwise ReLU6-dead channels and -sum|x - w| offsets in
    the hundreds make the random network saturate or amplify float32 rounding without bound.
    """
    torch.manual_seed(seed)
    net = build_model(zoo_arch(name, op, RES, CLASSES))
    hooks = []
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = None  # cumulative average over the calibration pass

        if isinstance(m, AdderConv2d) and m.bias is not None:

            def centre(mod, inp, out):
                mu = out.mean(dim=(0, 2, 3))
                mod.bias -= mu
                return out - mu.view(1, -1, 1, 1)

            hooks.append(m.register_forward_hook(centre))
    net.train()
    net(torch.randn(16, 3, RES, RES))
    for h in hooks:
        h.remove()
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_var.clamp_(min=0.1 * m.running_var.median().item())
            m.weight.uniform_(0.5, 1.5)  # non-trivial affine too
            m.bias.uniform_(-0.2, 0.2)
    return net.eval()


@torch.no_grad()
def fp64(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return copy.deepcopy(model).double()(x.double())


@pytest.mark.parametrize("op", ["mult", "shift", "add"])
@pytest.mark.parametrize("name", ["mbv2-w0.35", "mbv3-w0.35", "mcunet"])
def test_zoo_model_matches_pytorch(tmp_path, name, op):
    net = calibrated(name, op)
    path = tmp_path / f"{name}-{op}.onnx"
    info = export_onnx(net, path, RES)
    assert info["path"] == str(path) and info["opset"] == 17
    assert info["max_abs_diff"] is not None and info["max_abs_diff_fp64"] <= info["tolerance"]

    proto = onnx.load(str(path))
    # Standard operators only: no custom domain anywhere, no PythonOp / ATen fallbacks.
    assert {n.domain for n in proto.graph.node} <= {"", "ai.onnx"}
    assert {o.domain for o in proto.opset_import} <= {"", "ai.onnx"}
    assert set(info["ops"]) == {n.op_type for n in proto.graph.node}
    assert not {"PythonOp", "ATen"} & set(info["ops"])
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta["arch_id"] == net.arch.arch_id and meta["op"] == op
    if op == "add":
        assert {"Abs", "ReduceSum", "Sub"} <= set(info["ops"])
        # SE convs of an Add model are adders too (MobileNetV3: 16 of them, on a 1x1 map)
        se = [m for n, m in net.named_modules() if n.endswith((".se.reduce", ".se.expand"))]
        assert len(se) == (16 if name == "mbv3-w0.35" else 0) and all(isinstance(m, AdderConv2d) for m in se)
    if op == "shift":
        # BatchNorm is not folded into the convolutions: shift weights stay signed powers of two.
        inits = {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer}
        for node in proto.graph.node:
            if node.op_type == "Conv":
                w = torch.from_numpy(inits[node.input[1]].copy()).abs()
                w = w[w > 0]
                assert torch.equal(torch.exp2(torch.log2(w).round()), w), node.name

    # Dynamic batch, against PyTorch float32 and float64. Random adder nets are ill-conditioned in
    # float32 (each BN rescales -sum|x - w| sums whose spread is small next to their size, so
    # rounding grows layer by layer; PyTorch's own float32 output can be off by a large fraction of
    # the logits), so the bound is PyTorch float32's error against float64, times 8 (4 x measured
    # worst case). test_small_adder_net checks a shallow, well-conditioned adder net tightly.
    for batch in (1, 3):
        x = torch.randn(batch, 3, RES, RES)
        got = run_ort(path, x)
        with torch.no_grad():
            ref = net(x)
        ref64 = fp64(net, x)
        assert got.shape == (batch, CLASSES)
        scale = max(1.0, ref64.abs().max().item())
        fp32_err = (ref.double() - ref64).abs().max().item()
        assert (got.double() - ref64).abs().max().item() <= 1e-4 * scale + 8 * fp32_err
        if op != "add":
            assert (got - ref).abs().max().item() <= 1e-4 * scale


def test_small_adder_net(tmp_path):
    """Adder conv (dense, depthwise, pointwise) + BN + adder linear: few layers, so float32 is exact enough
    for a tight bound on the whole network."""
    torch.manual_seed(5)
    net = nn.Sequential(
        AdderConv2d(3, 8, 3, 2, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU6(),
        AdderConv2d(8, 8, 3, 1, 1, groups=8, bias=False), nn.BatchNorm2d(8), nn.Hardswish(),
        AdderConv2d(8, 16, 1, bias=True), nn.BatchNorm2d(16), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), AdderLinear(16, 10),
    )  # fmt: skip
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = None
    with torch.no_grad():
        net.train()(torch.randn(16, 3, 16, 16))
    net.eval()
    info = export_onnx(net, tmp_path / "small.onnx", 16)
    for batch in (1, 3):
        x = torch.randn(batch, 3, 16, 16)
        with torch.no_grad():
            want = net(x)
        got = run_ort(info["path"], x)
        assert got.shape == (batch, 10)
        assert (got - want).abs().max().item() <= 1e-5 * want.abs().max().item()


# (in, out, kernel, stride, padding, dilation, groups, bias, resolution)
ADDER_CASES = [
    pytest.param(4, 6, 3, 1, 1, 1, 1, True, 7, id="dense-bias"),
    pytest.param(4, 6, 3, 2, 1, 1, 1, False, 8, id="dense-stride2"),
    pytest.param(6, 8, 3, 1, 1, 1, 2, True, 6, id="groups2-bias"),
    pytest.param(6, 6, 3, 1, 1, 1, 6, False, 7, id="depthwise"),
    pytest.param(6, 6, 5, 2, 2, 1, 6, True, 9, id="depthwise-5x5-stride2-bias"),
    pytest.param(4, 8, 3, 2, 1, 1, 4, False, 8, id="depthwise-mult2-stride2"),
    pytest.param(4, 4, 3, 1, 2, 2, 2, False, 7, id="dilation2-groups2"),
    pytest.param(8, 5, 1, 1, 0, 1, 1, True, 5, id="pointwise-bias"),
    pytest.param(8, 6, 1, 2, 0, 1, 2, False, 6, id="pointwise-stride2-groups2"),
    pytest.param(3, 4, 3, 2, 0, 1, 1, False, 7, id="no-padding-stride2"),
]


@pytest.mark.parametrize("cin, cout, k, s, p, d, g, bias, res", ADDER_CASES)
def test_adder_conv_export_matches_module(tmp_path, cin, cout, k, s, p, d, g, bias, res):
    torch.manual_seed(1)
    layer = AdderConv2d(cin, cout, k, s, p, d, g, bias=bias)
    with torch.no_grad():
        if bias:
            layer.bias.normal_()
    model = nn.Sequential(layer).eval()

    # The replacement is the same function: exact up to summation order (checked in float64).
    x64 = torch.randn(2, cin, res, res, dtype=torch.float64)
    with torch.no_grad():
        want = copy.deepcopy(model).double()(x64)
        got = to_onnx_friendly(model).double()(x64)
    assert isinstance(to_onnx_friendly(model)[0], OnnxAdderConv2d)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)

    info = export_onnx(model, tmp_path / "adder.onnx", res)
    x = torch.randn(3, cin, res, res)
    with torch.no_grad():
        want = model(x)
    out = run_ort(info["path"], x)
    assert out.shape == want.shape
    assert (out - want).abs().max().item() <= 1e-5 * want.abs().max().item()
    assert {"Abs", "ReduceSum"} <= set(info["ops"]) and ("Pad" in info["ops"]) == (p > 0)


def test_adder_conv_rectangular_input_and_chunking(monkeypatch):
    """Non-square inputs and rectangular kernels, and input-channel chunking of the temporary."""
    import nas.onnx_export as E

    torch.manual_seed(2)
    layer = AdderConv2d(6, 4, (3, 2), (1, 2), (1, 0), (2, 1), groups=2, bias=True).double()
    x = torch.randn(2, 6, 9, 6, dtype=torch.float64)
    with torch.no_grad():
        want = layer(x)
        torch.testing.assert_close(OnnxAdderConv2d(layer)(x), want, rtol=1e-12, atol=1e-12)
        monkeypatch.setattr(E, "_MAX_TEMP_ELEMS", 1)  # one input channel per chunk
        torch.testing.assert_close(OnnxAdderConv2d(layer)(x), want, rtol=1e-12, atol=1e-12)
        lin = AdderLinear(7, 3).double()
        xl = torch.randn(4, 7, dtype=torch.float64)
        torch.testing.assert_close(OnnxAdderLinear(lin)(xl), lin(xl), rtol=1e-12, atol=1e-12)


def test_adder_linear_export(tmp_path):
    torch.manual_seed(3)
    lin = AdderLinear(3 * 4 * 4, 5, bias=True)
    with torch.no_grad():
        lin.bias.normal_()
    model = nn.Sequential(nn.Flatten(), lin).eval()
    info = export_onnx(model, tmp_path / "lin.onnx", 4)
    x = torch.randn(3, 3, 4, 4)
    with torch.no_grad():
        want = model(x)
    assert (run_ort(info["path"], x) - want).abs().max().item() <= 1e-5 * want.abs().max().item()


@pytest.mark.parametrize("shift_type", ["Q", "PS"])
def test_shift_fixed_point_activations(tmp_path, shift_type):
    """Fixed-point inputs stay in the graph (Floor / Clip), the bias is stored already rounded."""
    torch.manual_seed(4)
    opts = {"shift_type": shift_type, "act_integer_bits": 3, "act_fraction_bits": 4}
    conv = ShiftConv2d(3, 8, 3, 2, 1, bias=True, **opts)
    model = nn.Sequential(conv, nn.BatchNorm2d(8)).eval()
    info = export_onnx(model, tmp_path / "fp.onnx", 9)
    assert {"Floor", "Clip"} <= set(info["ops"])
    x = 3 * torch.randn(3, 3, 9, 9)  # some inputs beyond the +-4 range: exercises the clamp
    with torch.no_grad():
        want = model(x)
    assert (run_ort(info["path"], x) - want).abs().max().item() <= 1e-5 * want.abs().max().item()

    lin = ShiftLinear(3 * 2 * 2, 4, **opts)
    model = nn.Sequential(nn.Flatten(), lin).eval()
    info = export_onnx(model, tmp_path / "fpl.onnx", 2)
    x = 3 * torch.randn(3, 3, 2, 2)
    with torch.no_grad():
        want = model(x)
    assert (run_ort(info["path"], x) - want).abs().max().item() <= 1e-5 * want.abs().max().item()


def test_export_leaves_model_alone(tmp_path):
    net = calibrated("mbv2-tiny", "add")
    net.train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    export_onnx(net, tmp_path / "m.onnx", RES, check=True)
    assert net.training
    after = net.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert any(isinstance(m, AdderConv2d) for m in net.modules())


def test_rejects_training_time_modules(tmp_path):
    from nas.ops.hybrid import HybridConv2d

    with pytest.raises(ConfigError, match="TargetNet"):
        export_onnx(nn.Sequential(HybridConv2d(3, 8, 3)), tmp_path / "h.onnx", 8)


def test_missing_onnx_is_a_config_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import now raises ImportError
    with pytest.raises(ConfigError, match=r"pip install -e '\.\[onnx\]'"):
        export_onnx(nn.Sequential(nn.Conv2d(3, 4, 3)), tmp_path / "x.onnx", 8)
