"""AdderConv2d / AdderLinear: fast paths against the reference, AdderNet gradients, groups, memory-free
reload, counting and validation. Every fast-path test runs on both backends (C++ kernels and the
pure-torch fallback)."""

from __future__ import annotations

import io
import warnings

import pytest
import torch
import torch.nn.functional as F

from nas.errors import ConfigError
from nas.ops import _ext
from nas.ops import reference as R
from nas.ops.adder import AdderConv2d, AdderLinear, adaptive_grad_scale, adder_conv2d, adder_linear, backend_for


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()


# (batch, in, out, (h, w), kernel, stride, padding, dilation, groups, bias)
CONV_CASES = [
    pytest.param(2, 8, 12, (7, 9), 3, 1, 1, 1, 1, True, id="dense-nonsquare-bias"),
    pytest.param(1, 8, 8, (6, 5), 3, 2, 1, 2, 4, False, id="batch1-stride2-dil2-groups4"),
    pytest.param(2, 8, 12, (8, 8), 3, 1, 1, 1, 2, True, id="groups2"),
    pytest.param(2, 6, 12, (7, 7), 3, 1, 1, 1, 6, True, id="depthwise-mult2"),
    pytest.param(3, 8, 8, (5, 6), 3, 2, 0, 1, 8, False, id="depthwise-stride2-nopad"),
    pytest.param(2, 4, 4, (6, 7), 3, 1, 2, 2, 4, False, id="depthwise-dil2"),
    pytest.param(2, 4, 6, (5, 5), 1, 1, 0, 1, 2, True, id="pointwise-groups2"),
    pytest.param(2, 16, 8, (4, 4), 1, 2, 0, 1, 1, False, id="pointwise-stride2"),
    pytest.param(1, 3, 5, (9, 8), 5, 2, 2, 1, 1, True, id="5x5-stride2"),
    pytest.param(2, 10, 13, (11, 13), 3, 1, 1, 1, 1, False, id="ragged-tiles"),
    pytest.param(2, 6, 4, (9, 6), (3, 2), (1, 2), (1, 0), (2, 1), 2, True, id="rect-kernel"),
    pytest.param(2, 1, 5, (6, 6), 3, 1, 1, 1, 1, False, id="single-input-channel"),
    # rows a multiple of the vector width: the C++ kernels read the image in place ("direct" panels),
    # with a packed tail panel (3 x 16 positions) and a strided/dilated variant
    pytest.param(2, 5, 7, (3, 16), 3, 1, 1, 1, 1, True, id="aligned-rows-tail"),
    pytest.param(1, 4, 6, (5, 32), 3, (2, 1), 2, 2, 2, False, id="aligned-rows-dil2-groups2"),
    pytest.param(2, 6, 3, (4, 16), 1, 1, 0, 1, 1, False, id="aligned-rows-pointwise"),
]


def _conv_inputs(n, cin, cout, hw, k, groups, bias, dtype=torch.float32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    kh, kw = (k, k) if isinstance(k, int) else k
    x = torch.randn(n, cin, *hw, generator=gen, dtype=dtype)
    w = torch.randn(cout, cin // groups, kh, kw, generator=gen, dtype=dtype)
    b = torch.randn(cout, generator=gen, dtype=dtype) if bias else None
    return x, w, b


def _run(fn, x, w, b, gy, **kw):
    x = x.clone().requires_grad_()
    w = w.clone().requires_grad_()
    b = None if b is None else b.clone().requires_grad_()
    y = fn(x, w, b, **kw)
    y.backward(gy)
    return y.detach(), x.grad, w.grad, None if b is None else b.grad


@pytest.mark.parametrize("n,cin,cout,hw,k,stride,padding,dilation,groups,bias", CONV_CASES)
@pytest.mark.parametrize("eta", [0.2, None])
def test_conv_matches_reference(backend, n, cin, cout, hw, k, stride, padding, dilation, groups, bias, eta):
    x, w, b = _conv_inputs(n, cin, cout, hw, k, groups, bias)
    opts = dict(stride=stride, padding=padding, dilation=dilation, groups=groups, eta=eta)
    y_ref = R.adder_conv2d_reference(x, w, b, **opts)
    gy = torch.randn(y_ref.shape, generator=torch.Generator().manual_seed(1))
    fast = _run(adder_conv2d, x, w, b, gy, **opts)
    ref = _run(R.adder_conv2d_reference, x, w, b, gy, **opts)
    assert fast[0].shape == ref[0].shape
    assert rel_err(fast[0], ref[0]) < 1e-5
    for got, want in zip(fast[1:], ref[1:], strict=True):
        if want is not None:
            assert rel_err(got, want) < 1e-4


@pytest.mark.parametrize("n,cin,cout,hw,k,stride,padding,dilation,groups,bias", CONV_CASES[:6])
def test_conv_float64_matches_reference(backend, n, cin, cout, hw, k, stride, padding, dilation, groups, bias):
    x, w, b = _conv_inputs(n, cin, cout, hw, k, groups, bias, dtype=torch.float64)
    opts = dict(stride=stride, padding=padding, dilation=dilation, groups=groups)
    y_ref = R.adder_conv2d_reference(x, w, b, **opts)
    gy = torch.randn(y_ref.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    for got, want in zip(
        _run(adder_conv2d, x, w, b, gy, **opts), _run(R.adder_conv2d_reference, x, w, b, gy, **opts), strict=True
    ):
        if want is not None:
            assert got.dtype == torch.float64
            assert rel_err(got, want) < 1e-12


@pytest.mark.parametrize("shape", [(5, 37), (1, 8), (2, 3, 20)])
@pytest.mark.parametrize("bias", [True, False])
def test_linear_matches_reference(backend, shape, bias):
    gen = torch.Generator().manual_seed(0)
    out_features = 11
    x = torch.randn(*shape, generator=gen)
    w = torch.randn(out_features, shape[-1], generator=gen)
    b = torch.randn(out_features, generator=gen) if bias else None
    gy = torch.randn(*shape[:-1], out_features, generator=gen)
    fast = _run(adder_linear, x, w, b, gy)
    ref = _run(R.adder_linear_reference, x, w, b, gy)
    assert fast[0].shape == ref[0].shape == (*shape[:-1], out_features)
    assert rel_err(fast[0], ref[0]) < 1e-5
    for got, want in zip(fast[1:], ref[1:], strict=True):
        if want is not None:
            assert rel_err(got, want) < 1e-4


def test_reference_forward_is_the_definition():
    x, w, b = _conv_inputs(2, 4, 6, (5, 6), 3, 2, True, dtype=torch.float64)
    opts = dict(stride=(2, 1), padding=1, dilation=(1, 2), groups=2)
    assert torch.allclose(
        R.adder_conv2d_reference(x, w, b, **opts), R.adder_conv2d_loops(x, w, b, **opts), rtol=0, atol=1e-12
    )


def test_reference_backward_against_gradcheck_of_smooth_surrogates():
    """AdderNet's backward is not the gradient of -|x - w|; it is the true gradient of two smooth
    surrogates (one per argument). gradcheck those in float64, then require the reference backward to
    equal their autograd gradients."""
    gen = torch.Generator().manual_seed(0)
    opts = dict(stride=2, padding=1, dilation=1, groups=2)
    x = torch.randn(1, 4, 4, 5, generator=gen, dtype=torch.float64, requires_grad=True)
    w = (0.7 * torch.randn(4, 2, 3, 3, generator=gen, dtype=torch.float64)).requires_grad_()
    assert torch.autograd.gradcheck(lambda w_: R.adder_surrogates(x.detach(), w_, **opts)[0], (w,), fast_mode=True)
    assert torch.autograd.gradcheck(lambda x_: R.adder_surrogates(x_, w.detach(), **opts)[1], (x,), fast_mode=True)

    gy = torch.randn(1, 4, 2, 3, generator=gen, dtype=torch.float64)
    s_w, s_x = R.adder_surrogates(x, w, **opts)
    want_w = torch.autograd.grad(s_w, w, gy)[0]
    want_x = torch.autograd.grad(s_x, x, gy)[0]
    got_x, got_w = torch.autograd.grad(R.adder_conv2d_reference(x, w, eta=None, **opts), (x, w), gy)
    assert torch.allclose(got_w, want_w, rtol=0, atol=1e-12)
    assert torch.allclose(got_x, want_x, rtol=0, atol=1e-12)
    # and the forward is -sum|x - w| (value of the true function)
    assert torch.allclose(R.adder_conv2d_reference(x, w, **opts), R.adder_conv2d_loops(x, w, **opts), atol=1e-12)


def test_fast_backward_is_adder_net_gradient_in_float64(backend):
    """The fast path's gradients equal the surrogates' autograd gradients (not the sign gradient)."""
    gen = torch.Generator().manual_seed(3)
    opts = dict(stride=1, padding=1, dilation=1, groups=1)
    x = torch.randn(2, 3, 6, 5, generator=gen, dtype=torch.float64, requires_grad=True)
    w = torch.randn(4, 3, 3, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    gy = torch.randn(2, 4, 6, 5, generator=gen, dtype=torch.float64)
    s_w, s_x = R.adder_surrogates(x, w, **opts)
    want_w = torch.autograd.grad(s_w, w, gy)[0]
    want_x = torch.autograd.grad(s_x, x, gy)[0]
    got_x, got_w = torch.autograd.grad(adder_conv2d(x, w, eta=None, **opts), (x, w), gy)
    assert rel_err(got_w, want_w) < 1e-12 and rel_err(got_x, want_x) < 1e-12


@pytest.mark.parametrize("scale", [0.01, 1.0, 30.0, 1000.0])
def test_input_gradient_accuracy_for_any_activation_scale(backend, scale):
    """The kernel's cheaper clip form is only taken where |x| is small; large activations stay exact."""
    x, w, _ = _conv_inputs(2, 8, 8, (6, 6), 3, 1, False)
    x, w = x * scale + scale / 3, w * scale  # mixed signs and magnitudes within and across tiles
    gy = torch.randn(2, 8, 6, 6, generator=torch.Generator().manual_seed(5))
    got = _run(adder_conv2d, x, w, None, gy, padding=1)
    want = _run(R.adder_conv2d_reference, x.double(), w.double(), None, gy.double(), padding=1)
    assert rel_err(got[0].double(), want[0]) < 1e-6
    assert rel_err(got[1].double(), want[1]) < 2e-5 and rel_err(got[2].double(), want[2]) < 2e-5


def test_groups_4_is_not_zero_and_equals_split_groups(backend):
    """torchshiftadd returned zeros for groups outside {1, 2, C}: each group must equal its own conv."""
    x, w, _ = _conv_inputs(2, 8, 8, (6, 6), 3, 4, False)
    y = adder_conv2d(x, w, padding=1, groups=4)
    assert (y.abs().amax(dim=(0, 2, 3)) > 0).all()
    parts = [adder_conv2d(x[:, 2 * g : 2 * g + 2], w[2 * g : 2 * g + 2], padding=1) for g in range(4)]
    assert rel_err(y, torch.cat(parts, dim=1)) < 1e-6


def test_weight_gradient_flows_into_shared_tensor(backend):
    """Hybrid weight sharing: the op runs on a remapped slice of a bigger tensor."""
    gen = torch.Generator().manual_seed(0)
    shared = torch.randn(12, 8, 3, 3, generator=gen, requires_grad=True)
    x = torch.randn(2, 4, 5, 5, generator=gen)
    w = shared[:6, :4] * 2.0 - 0.5  # any differentiable remap
    y = adder_conv2d(x, w, padding=1, eta=0.2)
    gy = torch.randn(y.shape, generator=gen)
    y.backward(gy)
    # expected: d/dshared of the remap applied to the scaled AdderNet weight gradient of w
    w_ref = w.detach().clone().requires_grad_()
    R.adder_conv2d_reference(x, w_ref, padding=1, eta=0.2).backward(gy)
    expect = torch.zeros_like(shared)
    expect[:6, :4] = 2.0 * w_ref.grad
    assert rel_err(shared.grad, expect) < 1e-4
    assert (shared.grad[6:] == 0).all() and (shared.grad[:, 4:] == 0).all()


@pytest.mark.parametrize("eta", [0.2, 1.5])
def test_adaptive_gradient_scaling_sets_norm(backend, eta):
    x, w, _ = _conv_inputs(2, 4, 6, (5, 5), 3, 1, False)
    w.requires_grad_()
    adder_conv2d(x, w, padding=1, eta=eta).sum().backward()
    assert torch.linalg.vector_norm(w.grad).item() == pytest.approx(eta * w.numel() ** 0.5, rel=1e-5)
    g = torch.zeros(3, 3)
    assert torch.equal(adaptive_grad_scale(g, 0.2), g)  # zero gradient stays zero (no NaN)


def test_eta_none_is_the_raw_gradient(backend):
    x, w, _ = _conv_inputs(2, 4, 6, (5, 5), 3, 1, False)
    w.requires_grad_()
    adder_conv2d(x, w, padding=1, eta=None).sum().backward()
    cols = F.unfold(x, 3, padding=1)  # [N, K, L]
    raw = (cols[:, None] - w.detach().view(6, -1)[None, :, :, None]).sum(dim=(0, 3)).view_as(w)
    assert rel_err(w.grad, raw) < 1e-5


def test_only_input_or_only_weight_gradient(backend):
    x, w, _ = _conv_inputs(2, 4, 6, (5, 5), 3, 2, False)
    xg = x.clone().requires_grad_()
    (gx,) = torch.autograd.grad(adder_conv2d(xg, w, padding=1, groups=2).sum(), xg)
    wg = w.clone().requires_grad_()
    (gw,) = torch.autograd.grad(adder_conv2d(x, wg, padding=1, groups=2).sum(), wg)
    _, gx_ref, gw_ref, _ = _run(R.adder_conv2d_reference, x, w, None, torch.ones(2, 6, 5, 5), padding=1, groups=2)
    assert rel_err(gx, gx_ref) < 1e-4 and rel_err(gw, gw_ref) < 1e-4


def test_non_contiguous_and_channels_last_inputs(backend):
    x, w, _ = _conv_inputs(2, 8, 6, (7, 7), 3, 1, False)
    ref = R.adder_conv2d_reference(x, w, padding=1)
    assert rel_err(adder_conv2d(x.to(memory_format=torch.channels_last), w, padding=1), ref) < 1e-5
    wide = torch.cat([x, x], dim=3)[..., ::2]  # strided view
    assert rel_err(adder_conv2d(wide, w, padding=1), R.adder_conv2d_reference(wide.contiguous(), w, padding=1)) < 1e-5


@pytest.mark.parametrize("groups", [1, 16])
def test_result_does_not_depend_on_thread_count(backend, groups):
    x, w, _ = _conv_inputs(16, 16, 16, (16, 16), 3, groups, False)  # large enough for several threads
    gy = torch.randn(16, 16, 16, 16, generator=torch.Generator().manual_seed(2))
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        y1, gx1, gw1, _ = _run(adder_conv2d, x, w, None, gy, padding=1, groups=groups)
        torch.set_num_threads(2)
        y2, gx2, gw2, _ = _run(adder_conv2d, x, w, None, gy, padding=1, groups=groups)
    finally:
        torch.set_num_threads(old)
    assert torch.equal(y1, y2) and torch.equal(gx1, gx2)
    assert rel_err(gw1, gw2) < 1e-5  # torch's own weight-gradient reduction varies with threads


def test_half_precision_on_torch_path(monkeypatch):
    monkeypatch.setenv(_ext.ENV_DISABLE, "1")
    x, w, _ = _conv_inputs(2, 4, 4, (5, 5), 3, 1, False)
    y = adder_conv2d(x.bfloat16(), w.bfloat16(), padding=1)
    assert y.dtype == torch.bfloat16
    ref = R.adder_conv2d_reference(x.bfloat16().float(), w.bfloat16().float(), padding=1)
    assert rel_err(y.float(), ref) < 1e-2


@pytest.mark.parametrize("make", [lambda: AdderConv2d(6, 8, 3, padding=1, groups=2), lambda: AdderLinear(12, 5)])
def test_save_reload_is_bit_identical(backend, make):
    torch.manual_seed(0)
    m = make()
    x = torch.randn(3, 6, 5, 5) if isinstance(m, AdderConv2d) else torch.randn(3, 12)
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    m(x).square().mean().backward()
    opt.step()
    buf = io.BytesIO()
    torch.save(m.state_dict(), buf)
    buf.seek(0)
    torch.manual_seed(1)
    m2 = make()
    m2.load_state_dict(torch.load(buf, weights_only=True))
    assert torch.equal(m(x), m2(x))


def test_count_ops_exact():
    conv = AdderConv2d(4, 6, 3, padding=1, bias=True)
    k, n = 4 * 9, 2 * 6 * 5 * 5  # 36 terms, 300 outputs
    assert conv.count_ops((2, 6, 5, 5)) == {"macs": k * n, "mults": 0, "adds": (2 * k - 1) * n + n, "shifts": 0}
    assert conv.count_ops((2, 6, 5, 5)) == {"macs": 10800, "mults": 0, "adds": 21600, "shifts": 0}
    dw = AdderConv2d(8, 8, 3, padding=1, groups=8, bias=False)
    assert dw.count_ops((1, 8, 4, 4)) == {"macs": 9 * 128, "mults": 0, "adds": 17 * 128, "shifts": 0}
    lin = AdderLinear(10, 3)
    assert lin.count_ops((4, 3)) == {"macs": 120, "mults": 0, "adds": 19 * 12 + 12, "shifts": 0}


@pytest.mark.parametrize(
    "kwargs,field",
    [
        ({"eta": -1.0}, "eta"),
        ({"eta": "0.2"}, "eta"),
        ({"eta": float("nan")}, "eta"),
        ({"groups": 3}, "groups"),
        ({"padding_mode": "reflect"}, "padding_mode"),
        ({"kernel_size": 0}, "kernel_size"),
        ({"stride": (1, 0)}, "stride"),
        ({"padding": -1}, "padding"),
    ],
)
def test_conv_validation(kwargs, field):
    args = {"in_channels": 8, "out_channels": 8, "kernel_size": 3} | kwargs
    with pytest.raises(ConfigError) as err:
        AdderConv2d(**args)
    assert err.value.field == field
    assert str(err.value).startswith(f"{field}: got ")


def test_linear_validation():
    with pytest.raises(ConfigError, match="in_features"):
        AdderLinear(0, 3)
    with pytest.raises(ConfigError, match="eta"):
        AdderLinear(3, 3, eta=0)


def test_defaults_and_eta_off():
    m = AdderConv2d(3, 4, 3)
    assert m.eta == 0.2 and m.bias is not None and m.padding == (0, 0)
    assert AdderConv2d(3, 4, 3, eta=None).eta is None
    assert "eta=0.2" in repr(m)


def test_build_failure_warns_once_and_falls_back(monkeypatch):
    monkeypatch.delenv(_ext.ENV_DISABLE, raising=False)
    for key, value in {"lib": None, "failed": False, "reason": ""}.items():
        monkeypatch.setitem(_ext._state, key, value)

    def broken():
        raise RuntimeError("no compiler here")

    monkeypatch.setattr(_ext, "_build_and_load", broken)
    x, w, _ = _conv_inputs(1, 2, 2, (4, 4), 3, 1, False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        y1 = adder_conv2d(x, w, padding=1)
        y2 = adder_conv2d(x, w, padding=1)
    messages = [str(c.message) for c in caught if issubclass(c.category, RuntimeWarning)]
    assert len(messages) == 1 and "no compiler here" in messages[0]
    assert backend_for(x) == "torch"
    assert torch.equal(y1, y2) and rel_err(y1, R.adder_conv2d_reference(x, w, padding=1)) < 1e-5


def test_no_ext_env_disables_without_warning(monkeypatch):
    monkeypatch.setenv(_ext.ENV_DISABLE, "1")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _ext.load() is None
        adder_conv2d(torch.randn(1, 2, 4, 4), torch.randn(2, 2, 3, 3))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("groups", [1, 2, 4, 8])
def test_cuda_matches_cpu_reference(groups):
    x, w, b = _conv_inputs(2, 8, 8, (7, 6), 3, groups, True)
    gy = torch.randn(2, 8, 7, 6)
    dev = [t.cuda() for t in (x, w, b, gy)]
    got = _run(adder_conv2d, *dev, padding=1, groups=groups)
    want = _run(R.adder_conv2d_reference, x, w, b, gy, padding=1, groups=groups)
    assert rel_err(got[0].cpu(), want[0]) < 1e-5
    for g, r in zip(got[1:], want[1:], strict=True):
        assert rel_err(g.cpu(), r) < 1e-4
