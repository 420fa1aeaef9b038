"""ShiftConv2d / ShiftLinear (DeepShift Q and PS): quantisers against the reference formulas,
straight-through and PS gradients, fixed-point activations, save/reload, counting, validation and
the operator factory."""

from __future__ import annotations

import io
import itertools
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from nas.errors import ConfigError
from nas.ops import create_conv, create_linear, op_counts
from nas.ops import reference as R
from nas.ops.adder import AdderConv2d, AdderLinear
from nas.ops.shift import (
    ShiftConv2d,
    ShiftLinear,
    fixed_point,
    shift_and_sign_q,
    shift_range,
    shift_weight_ps,
    shift_weight_q,
)


def _weights(seed=0, n=4000, dtype=torch.float32):
    """Log-uniform magnitudes across and beyond the shift range, random signs, some exact zeros
    and exact powers of two."""
    gen = torch.Generator().manual_seed(seed)
    mag = torch.exp2(torch.empty(n, dtype=torch.float64).uniform_(-22, 4, generator=gen))
    sign = torch.where(torch.rand(n, generator=gen) < 0.5, -1.0, 1.0).double()
    w = sign * mag
    w[:20] = 0.0
    w[20:60] = torch.exp2(torch.arange(-20, 20, dtype=torch.float64))
    return w.to(dtype)


def test_shift_range():
    assert shift_range(5, "Q") == (-15, 0)
    assert shift_range(5, "PS") == (-14, 0)
    assert shift_range(3, "Q", max_shift=2) == (-1, 2)
    assert shift_range(2, "PS") == (0, 0)


@pytest.mark.parametrize("weight_bits,max_shift", [(5, 0), (3, 0), (2, 0), (4, 2), (8, 0)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_q_deterministic_matches_reference(weight_bits, max_shift, dtype):
    w = _weights(dtype=dtype)
    got = shift_weight_q(w, weight_bits, max_shift=max_shift)
    want = R.shift_weight_q_reference(w, weight_bits, max_shift=max_shift)
    assert torch.equal(got, want)
    lo, hi = shift_range(weight_bits, "Q", max_shift)
    nz = got[got != 0].abs()
    assert nz.min() >= 2.0**lo and nz.max() == 2.0**hi
    assert torch.equal(torch.log2(nz), torch.log2(nz).round())  # exact powers of two
    assert ((got == 0) == (w == 0)).all()  # binary sign: only exact zeros stay zero
    if lo >= -20:  # the test weights cover the whole range: every code is used, none beyond
        assert nz.min() == 2.0**lo and len(torch.unique(nz)) == 2 ** (weight_bits - 1)
    tiny = torch.tensor([2.0**-140, -(2.0**-130)], dtype=torch.float64).to(dtype)
    assert torch.equal(
        shift_weight_q(tiny, weight_bits, max_shift=max_shift), torch.tensor([1.0, -1.0], dtype=dtype) * 2.0**lo
    )


def test_q_rounds_in_log_domain():
    w = torch.tensor([0.70, 0.71, 0.36, 0.34, -3.0, 1e-9, -1e-9, 0.0])
    assert shift_weight_q(w).tolist() == [0.5, 1.0, 0.5, 0.25, -1.0, 2.0**-15, -(2.0**-15), 0.0]


def test_q_stochastic_is_reproducible_and_matches_reference():
    w = _weights(1)
    q1 = shift_weight_q(w, rounding="stochastic", generator=torch.Generator().manual_seed(7))
    q2 = shift_weight_q(w, rounding="stochastic", generator=torch.Generator().manual_seed(7))
    assert torch.equal(q1, q2)
    u = torch.rand(w.shape, generator=torch.Generator().manual_seed(7))
    assert torch.equal(q1, R.shift_weight_q_reference(w, rounding="stochastic", u=u))
    # each value rounds to one of its two neighbouring powers of two
    lo, hi = shift_range(5, "Q")
    a = w.abs().double().clamp(2.0**lo, 2.0**hi)
    nz = w != 0
    p = torch.log2(q1.abs().double()[nz])
    assert ((p == torch.floor(torch.log2(a[nz]))) | (p == torch.ceil(torch.log2(a[nz])))).all()


def test_q_stochastic_probability_is_the_log_fraction():
    w = torch.full((20000,), 2.0**-3.25)  # frac(log2 |w|) = 0.75 -> rounds up with probability 0.75
    q = shift_weight_q(w, rounding="stochastic", generator=torch.Generator().manual_seed(0))
    assert (q == 2.0**-3).float().mean().item() == pytest.approx(0.75, abs=0.02)
    assert ((q == 2.0**-3) | (q == 2.0**-4)).all()


def test_q_gradient_is_straight_through():
    w = _weights(2, n=100).requires_grad_()
    g = torch.randn(100)
    (grad,) = torch.autograd.grad(shift_weight_q(w), w, g)
    assert torch.equal(grad, g)


@pytest.mark.parametrize("rounding", ["deterministic", "stochastic"])
def test_ps_matches_reference_and_gradients(rounding):
    gen = torch.Generator().manual_seed(0)
    shift = torch.empty(500).uniform_(-18, 3, generator=gen).requires_grad_()
    sign = torch.empty(500).uniform_(-1.5, 1.5, generator=gen).requires_grad_()
    g = torch.randn(500, generator=gen)
    w = shift_weight_ps(shift, sign, rounding=rounding, generator=torch.Generator().manual_seed(3))
    u = torch.rand(2, 500, generator=torch.Generator().manual_seed(3)) if rounding == "stochastic" else None
    assert torch.equal(w, R.shift_weight_ps_reference(shift, sign, rounding=rounding, u=u))
    assert set(torch.unique(torch.sign(w)).tolist()) == {-1.0, 0.0, 1.0}  # ternary sign
    lo, hi = shift_range(5, "PS")
    assert w[w != 0].abs().min() >= 2.0**lo and w.abs().max() <= 2.0**hi
    gs, gsign = torch.autograd.grad(w, (shift, sign), g)
    assert torch.allclose(gs, g * w.detach() * math.log(2.0))  # dL/dP = dL/dW * W * ln2
    assert torch.equal(gsign, g)  # dL/dS = dL/dW


def test_fixed_point_matches_reference_and_is_straight_through():
    x = (torch.randn(1000) * 6).requires_grad_()
    for i, f in [(4, 4), (3, 5), (1, 0), (8, 8), (16, 16)]:
        q = fixed_point(x, i, f)
        assert torch.equal(q, R.fixed_point_reference(x, i, f))
        assert q.max() <= 2 ** (i - 1) - 2.0**-f and q.min() >= -(2 ** (i - 1))
    (grad,) = torch.autograd.grad(fixed_point(x, 4, 4), x, torch.ones(1000))
    assert torch.equal(grad, torch.ones(1000))


CONV_OPTIONS = [
    dict(),
    dict(shift_type="PS"),
    dict(weight_bits=3, max_shift=1),
    dict(act_integer_bits=4, act_fraction_bits=6),
    dict(shift_type="PS", act_integer_bits=3, act_fraction_bits=5, weight_bits=4),
    dict(rounding="stochastic"),
    dict(shift_type="PS", rounding="stochastic"),
]


def _ref_weight(m):
    if m.shift_type == "Q":
        return R.shift_weight_q_reference(m.weight, m.weight_bits, max_shift=m.max_shift)
    return R.shift_weight_ps_reference(m.shift, m.sign, m.weight_bits, max_shift=m.max_shift)


@pytest.mark.parametrize(
    "options", CONV_OPTIONS, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()) or "defaults"
)
@pytest.mark.parametrize(
    "geometry", [dict(stride=1, padding=1, groups=1), dict(stride=2, padding=0, groups=2, dilation=2)]
)
def test_shift_conv_forward_is_conv_of_rounded_weights(options, geometry):
    torch.manual_seed(0)
    m = ShiftConv2d(4, 6, 3, bias=True, **geometry, **options).eval()
    x = torch.randn(2, 4, 9, 8) * 3
    xq, bq = x, m.bias
    if "act_fraction_bits" in options:
        xq = R.fixed_point_reference(x, options["act_integer_bits"], options["act_fraction_bits"])
        bq = R.fixed_point_reference(m.bias, options["act_integer_bits"], options["act_fraction_bits"])
    want = F.conv2d(xq, _ref_weight(m), bq, m.stride, m.padding, m.dilation, m.groups)
    assert torch.equal(m(x), want)


@pytest.mark.parametrize("options", CONV_OPTIONS[:5], ids=str)
def test_shift_linear_forward_and_grads(options):
    torch.manual_seed(0)
    m = ShiftLinear(7, 3, **options)
    x = torch.randn(5, 7, requires_grad=True)
    y = m(x)
    xq = (
        x
        if "act_fraction_bits" not in options
        else R.fixed_point_reference(x, options["act_integer_bits"], options["act_fraction_bits"])
    )
    bq = (
        m.bias
        if "act_fraction_bits" not in options
        else R.fixed_point_reference(m.bias, options["act_integer_bits"], options["act_fraction_bits"])
    )
    assert torch.equal(y, F.linear(xq, _ref_weight(m), bq))
    y.square().sum().backward()
    assert x.grad is not None and all(p.grad is not None and p.grad.abs().sum() > 0 for p in m.parameters())


def test_stochastic_rounding_only_in_training_and_seeded():
    m = ShiftConv2d(3, 4, 3, rounding="stochastic", generator=torch.Generator().manual_seed(0))
    m.weight.data = torch.full_like(m.weight, 2.0**-3.4)
    assert len(torch.unique(m.effective_weight())) == 2  # both neighbours drawn in training
    m.eval()
    assert torch.equal(m.effective_weight(), torch.full_like(m.weight, 2.0**-3))  # eval: deterministic
    a = ShiftLinear(50, 50, rounding="stochastic", generator=torch.Generator().manual_seed(5))
    b = ShiftLinear(50, 50, rounding="stochastic", generator=torch.Generator().manual_seed(5))
    b.load_state_dict(a.state_dict())
    assert torch.equal(a.effective_weight(), b.effective_weight())


def test_forward_does_not_modify_parameters():
    """clampabs is out of place (DeepShift clamps the stored weights in place)."""
    m = ShiftConv2d(2, 2, 1)
    m.weight.data = torch.tensor([3.0, -5.0, 1e-9, 0.3]).view(2, 2, 1, 1)
    before = m.weight.detach().clone()
    m(torch.randn(1, 2, 3, 3))
    assert torch.equal(m.weight, before)


ALL_OPTIONS = [
    dict(zip(("shift_type", "rounding", "act"), combo, strict=True))
    for combo in itertools.product(("Q", "PS"), ("deterministic", "stochastic"), (None, (4, 8)))
]


@pytest.mark.parametrize("opt", ALL_OPTIONS, ids=lambda o: f"{o['shift_type']}-{o['rounding']}-act{o['act']}")
@pytest.mark.parametrize("kind", ["conv", "linear"])
def test_save_reload_is_bit_identical(opt, kind):
    act = opt["act"] or (None, None)
    kwargs = dict(
        shift_type=opt["shift_type"], rounding=opt["rounding"], act_integer_bits=act[0], act_fraction_bits=act[1]
    )

    def make():
        if kind == "conv":
            return ShiftConv2d(4, 6, 3, padding=1, groups=2, **kwargs)
        return ShiftLinear(8, 5, **kwargs)

    torch.manual_seed(0)
    m = make()
    x = torch.randn(3, 4, 6, 6) if kind == "conv" else torch.randn(3, 8)
    opt_ = torch.optim.SGD(m.parameters(), lr=0.5)
    for _ in range(2):  # trained weights, some pushed beyond the clamp
        opt_.zero_grad()
        m(x).square().mean().backward()
        opt_.step()
    m.eval()
    buf = io.BytesIO()
    torch.save(m.state_dict(), buf)
    buf.seek(0)
    torch.manual_seed(123)
    m2 = make().eval()
    m2.load_state_dict(torch.load(buf, weights_only=True))
    assert torch.equal(m(x), m2(x))
    assert torch.equal(m.effective_weight(), m2.effective_weight())


def test_count_ops_exact():
    conv = ShiftConv2d(4, 6, 3, padding=1, bias=False)
    assert conv.count_ops((2, 6, 5, 5)) == {"macs": 10800, "mults": 0, "adds": 35 * 300, "shifts": 10800}
    conv_b = ShiftConv2d(4, 6, 3, padding=1, groups=2, bias=True)  # K = 2*9 = 18
    assert conv_b.count_ops((1, 6, 2, 2)) == {"macs": 18 * 24, "mults": 0, "adds": 17 * 24 + 24, "shifts": 18 * 24}
    lin = ShiftLinear(10, 3, bias=True)
    assert lin.count_ops((4, 3)) == {"macs": 120, "mults": 0, "adds": 9 * 12 + 12, "shifts": 120}
    assert op_counts("mult", 10, 12, True) == {"macs": 120, "mults": 120, "adds": 120, "shifts": 0}


@pytest.mark.parametrize(
    "kwargs,field,allowed",
    [
        ({"rounding": "determinstic"}, "rounding", "deterministic, stochastic"),
        ({"shift_type": "q"}, "shift_type", "Q, PS"),
        ({"weight_bits": 1}, "weight_bits", "[2, 8]"),
        ({"weight_bits": 9}, "weight_bits", "[2, 8]"),
        ({"weight_bits": 5.0}, "weight_bits", "[2, 8]"),
        ({"act_integer_bits": 4}, "act_fraction_bits", "together"),
        ({"act_fraction_bits": 4}, "act_integer_bits", "together"),
        ({"act_integer_bits": 0, "act_fraction_bits": 4}, "act_integer_bits", "[1, 32]"),
        ({"act_integer_bits": 20, "act_fraction_bits": 20}, "act_fraction_bits", "<= 32"),
        ({"max_shift": 40}, "max_shift", "[-16, 16]"),
        ({"generator": 42}, "generator", "torch.Generator"),
        ({"groups": 3}, "groups", "divisor"),
        ({"padding_mode": "circular"}, "padding_mode", "zeros"),
    ],
)
def test_validation_at_construction(kwargs, field, allowed):
    with pytest.raises(ConfigError) as err:
        ShiftConv2d(4, 6, 3, **kwargs)
    assert err.value.field == field and allowed in str(err.value)
    if field not in ("groups", "padding_mode"):
        with pytest.raises(ConfigError):
            ShiftLinear(4, 6, **kwargs)


def test_functional_validation():
    with pytest.raises(ConfigError, match="rounding"):
        shift_weight_q(torch.ones(3), rounding="determinstic")
    with pytest.raises(ConfigError, match="weight_bits"):
        shift_weight_ps(torch.ones(3), torch.ones(3), weight_bits=0)
    with pytest.raises(ConfigError, match="act_integer_bits"):
        fixed_point(torch.ones(3), 0, 3)


def test_shift_and_sign_encodes_the_weight():
    w = _weights(4, n=300)
    shift, sign = shift_and_sign_q(w)
    assert shift.dtype == sign.dtype == torch.int64
    assert torch.equal(sign.double() * torch.exp2(shift.double()), shift_weight_q(w).double() * (w != 0))


# ---- factory ----


@pytest.mark.parametrize("op,cls", [("mult", nn.Conv2d), ("shift", ShiftConv2d), ("add", AdderConv2d)])
def test_factory_builds_each_kind_with_defaults(op, cls):
    m = create_conv(op, 4, 8, 3, stride=2)
    assert type(m) is cls
    assert m.padding == (1, 1) and m.stride == (2, 2) and m.bias is None
    y = m(torch.randn(2, 4, 7, 7))
    assert y.shape == (2, 8, 4, 4)
    if op != "mult":
        assert set(m.count_ops(y.shape)) == {"macs", "mults", "adds", "shifts"}


@pytest.mark.parametrize("op,cls", [("mult", nn.Linear), ("shift", ShiftLinear), ("add", AdderLinear)])
def test_factory_linear(op, cls):
    m = create_linear(op, 6, 3)
    assert type(m) is cls and m.bias is not None
    assert m(torch.randn(2, 6)).shape == (2, 3)


def test_factory_passes_options_and_validates():
    m = create_conv("shift", 4, 4, 3, groups=2, weight_bits=3, shift_type="PS", eta=0.5)  # eta: add-only, ignored
    assert m.weight_bits == 3 and m.shift_type == "PS" and m.groups == 2
    a = create_conv("add", 4, 4, 1, eta=None, weight_bits=3)
    assert a.eta is None
    with pytest.raises(ConfigError, match="rounding"):
        create_conv("shift", 4, 4, 3, rounding="determinstic")
    with pytest.raises(ConfigError, match="options"):
        create_conv("add", 4, 4, 3, etta=0.1)
    with pytest.raises(ConfigError, match="op"):
        create_linear("mul", 4, 4)
