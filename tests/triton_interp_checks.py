"""Parity of the Triton adder kernels with the float64 reference, run on CPU tensors by Triton's
interpreter.

Not collected by a plain ``pytest`` run (the name does not match ``test_*.py``):
``tests/test_ops_triton.py`` runs this file in a child pytest process whose environment has
``TRITON_INTERPRET=1`` from the start. The variable has to be set before the kernels are
decorated (``triton.jit`` reads it then), and it must not leak into the rest of the suite: in the
parent process the same kernels stay compiled-for-GPU objects (CUDA tests, sm_90 compile test).

Tolerances: forward 1e-5 and gradients 1e-4 relative to the largest reference value in float32
(the kernels accumulate in fp32 in a different order than the reference); 1e-12 in float64.
"""

from __future__ import annotations

import os

import pytest
import torch

if os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("run through tests/test_ops_triton.py (needs TRITON_INTERPRET=1 from process start)", allow_module_level=True)
triton = pytest.importorskip("triton", reason="triton is not installed (pip install shiftaddaug[gpu])")

from nas.ops import adder_triton as T  # noqa: E402
from nas.ops import reference as R  # noqa: E402
from nas.ops.adder import ENV_BACKEND, _Conv, adder_conv2d, adder_linear, backend_for  # noqa: E402


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-30)).item()


def _pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


# (batch, in, out, (h, w), kernel, stride, padding, dilation, groups): small, odd sizes so that
# every tile is partly masked.
CASES = [
    pytest.param(2, 6, 10, (7, 9), 3, 1, 1, 1, 1, id="dense-odd"),
    pytest.param(1, 8, 8, (6, 5), 3, 2, 1, 2, 4, id="groups4-stride2-dil2"),
    pytest.param(2, 6, 12, (5, 7), 3, 1, 1, 1, 6, id="depthwise-mult2"),
    pytest.param(2, 8, 8, (9, 9), 3, 2, 0, 1, 8, id="depthwise-stride2-nopad"),
    pytest.param(1, 6, 4, (7, 6), (3, 2), (1, 2), (1, 0), (2, 1), 2, id="rect-kernel-groups2"),
    pytest.param(1, 3, 5, (9, 8), 5, 2, 2, 1, 1, id="5x5-stride2-pad2"),
    pytest.param(2, 12, 5, (4, 4), 1, 1, 0, 1, 1, id="pointwise"),
]


def _inputs(n, cin, cout, hw, k, groups, dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)
    kh, kw = _pair(k)
    x = torch.randn(n, cin, *hw, generator=gen, dtype=torch.float64)
    w = torch.randn(cout, cin // groups, kh, kw, generator=gen, dtype=torch.float64)
    return x.to(dtype), w.to(dtype)


def _reference(x, w, gy, eta, **opts):
    xr = x.double().requires_grad_()
    wr = w.double().requires_grad_()
    y = R.adder_conv2d_reference(xr, wr, eta=eta, **opts)
    y.backward(gy.double())
    return y.detach(), xr.grad, wr.grad


FLOAT64_CASES = [CASES[0], CASES[1], CASES[3]]  # exact parity where the accumulation is exact too


@pytest.mark.parametrize(
    "case,dtype,tol",
    [pytest.param(c.values, torch.float32, (1e-5, 1e-4), id=f"{c.id}-fp32") for c in CASES]
    + [pytest.param(c.values, torch.float64, (1e-12, 1e-12), id=f"{c.id}-fp64") for c in FLOAT64_CASES],
)
def test_kernels_match_float64_reference(case, dtype, tol):
    n, cin, cout, hw, k, stride, padding, dilation, groups = case
    x, w = _inputs(n, cin, cout, hw, k, groups, dtype)
    opts = dict(stride=stride, padding=padding, dilation=dilation, groups=groups)
    c = _Conv(x, w, _pair(stride), _pair(padding), _pair(dilation), groups)
    gy = torch.randn(n, cout, c.Ho, c.Wo, generator=torch.Generator().manual_seed(1), dtype=torch.float64).to(dtype)
    y_ref, gx_ref, gw_ref = _reference(x, w, gy, None, **opts)
    y = x.new_empty(n, cout, c.Ho, c.Wo)
    T.conv_forward(x, w, y, c)
    gx = torch.empty_like(x)
    T.conv_input_grad(gy, x, w, gx, c)
    gw = T.conv_weight_grad(gy, x, w, c)
    assert gw.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    assert rel_err(y, y_ref) < tol[0]
    assert rel_err(gx, gx_ref) < tol[1]
    assert rel_err(gw, gw_ref) < tol[1]


def test_weight_gradient_split_covers_every_position():
    """The weight gradient splits N*Ho*Wo over programs: a shape with several splits and a ragged
    last chunk, against the reference."""
    x, w = _inputs(3, 4, 4, (11, 7), 3, 4, torch.float32)  # depthwise: 64-position chunks
    c = _Conv(x, w, (1, 1), (1, 1), (1, 1), 4)
    m = c.N * c.Ho * c.Wo
    _, bm, _ = T.blocks("weight", 1, m, c.K)
    assert m > 2 * bm and m % bm  # several chunks, the last one partial
    gy = torch.randn(3, 4, 11, 7, generator=torch.Generator().manual_seed(2))
    _, _, gw_ref = _reference(x, w, gy, None, padding=1, groups=4)
    assert rel_err(T.conv_weight_grad(gy, x, w, c), gw_ref) < 1e-4


def test_strided_views_need_no_copies():
    """Channels-last input, a sliced (non-contiguous) weight and a transposed output view."""
    x, w_big = _inputs(2, 4, 8, (5, 6), 3, 1, torch.float32)
    w = w_big[1:7:2, :, :, :]  # every other filter of a bigger tensor
    xc = x.contiguous(memory_format=torch.channels_last)
    c = _Conv(xc, w, (1, 1), (1, 1), (1, 1), 1)
    out = torch.empty(2, 5, 6, 3).permute(0, 3, 1, 2)  # NHWC storage
    T.conv_forward(xc, w, out, c)
    assert rel_err(out, R.adder_conv2d_reference(x.double(), w.double(), padding=1)) < 1e-5


def test_bfloat16_inputs_accumulate_in_float32():
    x, w = _inputs(2, 4, 6, (5, 5), 3, 2, torch.bfloat16)
    c = _Conv(x, w, (1, 1), (1, 1), (1, 1), 2)
    y = torch.empty(2, 6, 5, 5, dtype=torch.bfloat16)
    T.conv_forward(x, w, y, c)
    ref = R.adder_conv2d_reference(x.double(), w.double(), padding=1, groups=2)
    assert rel_err(y, ref) < 1e-2  # bf16 output rounding (8 bits), not accumulation error


# ---- through the public functions and the custom op, with the backend forced to triton ----


@pytest.fixture
def triton_backend(monkeypatch):
    monkeypatch.setenv(ENV_BACKEND, "triton")
    assert backend_for(torch.zeros(1)) == "triton"


@pytest.mark.parametrize("eta", [0.2, None])
@pytest.mark.parametrize("groups", [1, 3])
def test_adder_conv2d_with_eta_matches_reference(triton_backend, eta, groups):
    x, w = _inputs(2, 6, 6, (5, 4), 3, groups, torch.float32, seed=3)
    b = torch.randn(6)
    gy = torch.randn(2, 6, 3, 2, generator=torch.Generator().manual_seed(4))
    opts = dict(stride=(2, 2), padding=1, groups=groups, eta=eta)
    xg, wg, bg = x.clone().requires_grad_(), w.clone().requires_grad_(), b.clone().requires_grad_()
    y = adder_conv2d(xg, wg, bg, **opts)
    y.backward(gy)
    xr, wr, br = x.double().requires_grad_(), w.double().requires_grad_(), b.double().requires_grad_()
    y_ref = R.adder_conv2d_reference(xr, wr, br, **opts)
    y_ref.backward(gy.double())
    assert rel_err(y, y_ref) < 1e-5
    assert rel_err(xg.grad, xr.grad) < 1e-4 and rel_err(bg.grad, br.grad) < 1e-5
    assert rel_err(wg.grad, wr.grad) < 1e-4
    if eta is not None:  # AdderNet's adaptive scale: norm eta * sqrt(numel), as on the CPU path
        assert torch.linalg.vector_norm(wg.grad).item() == pytest.approx(eta * w.numel() ** 0.5, rel=1e-5)


def test_adder_linear_matches_reference(triton_backend):
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(2, 3, 13, generator=gen)
    w = torch.randn(7, 13, generator=gen)
    gy = torch.randn(2, 3, 7, generator=gen)
    xg, wg = x.clone().requires_grad_(), w.clone().requires_grad_()
    adder_linear(xg, wg, eta=0.2).backward(gy)
    xr, wr = x.double().requires_grad_(), w.double().requires_grad_()
    y_ref = R.adder_linear_reference(xr, wr, eta=0.2)
    y_ref.backward(gy.double())
    assert rel_err(adder_linear(x, w), y_ref) < 1e-5
    assert rel_err(xg.grad, xr.grad) < 1e-4 and rel_err(wg.grad, wr.grad) < 1e-4


def test_gradient_flows_into_shared_weight(triton_backend):
    """Hybrid layers hand the op a remapped slice of a bigger tensor."""
    gen = torch.Generator().manual_seed(6)
    shared = torch.randn(8, 6, 3, 3, generator=gen, requires_grad=True)
    x = torch.randn(1, 4, 4, 5, generator=gen)
    w = shared[:5, :4] * 1.5 - 0.25
    y = adder_conv2d(x, w, padding=1, eta=0.2)
    gy = torch.randn(y.shape, generator=gen)
    y.backward(gy)
    w_ref = w.detach().double().requires_grad_()
    R.adder_conv2d_reference(x.double(), w_ref, padding=1, eta=0.2).backward(gy.double())
    assert rel_err(shared.grad[:5, :4], 1.5 * w_ref.grad) < 1e-4
    assert (shared.grad[5:] == 0).all() and (shared.grad[:, 4:] == 0).all()


def test_opcheck_on_triton_backend(triton_backend):
    x = torch.randn(1, 4, 3, 3, requires_grad=True)
    w = torch.randn(4, 2, 3, 3, requires_grad=True)
    torch.library.opcheck(torch.ops.shiftaddaug.adder_conv2d.default, (x, w, [1, 1], [1, 1], [1, 1], 2, 0.2))
