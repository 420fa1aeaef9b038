"""Deployment exactness: integer shift/add emulation equals the float emulation bit for bit."""

from __future__ import annotations

import pytest
import torch

from nas.errors import ConfigError
from nas.ops.adder import AdderConv2d, AdderLinear
from nas.ops.deploy import (
    accumulator_bits,
    adder_conv2d_int,
    adder_linear_int,
    fixed_point_int,
    shift_conv2d_int,
    shift_layer_params,
    shift_linear_int,
)
from nas.ops.shift import ShiftConv2d, ShiftLinear, fixed_point


def _train(module, x, steps=3):
    """A few SGD steps so the weights are 'trained', not fresh from init."""
    opt = torch.optim.SGD(module.parameters(), lr=0.05)
    for _ in range(steps):
        opt.zero_grad()
        module(x).square().mean().backward()
        opt.step()
    return module.eval()


SHIFT_CASES = [
    dict(shift_type="Q", groups=1, stride=1, padding=1, dilation=1, bias=True),
    dict(shift_type="PS", groups=2, stride=2, padding=1, dilation=1, bias=True),
    dict(shift_type="Q", groups=4, stride=1, padding=2, dilation=2, bias=False),
    dict(shift_type="PS", groups=8, stride=1, padding=1, dilation=1, bias=True),  # depthwise
    dict(shift_type="Q", groups=1, stride=1, padding=0, dilation=1, bias=True, kernel_size=1, max_shift=2),
]


@pytest.mark.parametrize("case", SHIFT_CASES, ids=lambda c: "-".join(f"{k}{v}" for k, v in c.items()))
def test_shift_conv_integer_equals_float_emulation_float64(case):
    case = dict(case)
    ks = case.pop("kernel_size", 3)
    torch.manual_seed(0)
    m = ShiftConv2d(8, 8, ks, act_integer_bits=4, act_fraction_bits=8, dtype=torch.float64, **case)
    _train(m, torch.randn(4, 8, 9, 7, dtype=torch.float64))
    for seed in range(3):
        x = torch.randn(3, 8, 9, 7, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 4
        p = shift_layer_params(m)
        assert p["accumulator_bits"] <= 53  # so the float64 emulation is exact and comparable
        assert torch.equal(shift_conv2d_int(m, x), m(x))


def test_shift_conv_integer_equals_float_emulation_float32():
    """float32 is exact too when the accumulator fits its 24-bit mantissa."""
    torch.manual_seed(1)
    m = ShiftConv2d(4, 6, 3, padding=1, weight_bits=3, act_integer_bits=3, act_fraction_bits=3)
    _train(m, torch.randn(2, 4, 6, 6))
    assert accumulator_bits(3, 3, m.shift_bounds, 36) <= 24
    x = torch.randn(2, 4, 6, 6) * 3
    assert torch.equal(shift_conv2d_int(m, x), m(x))


@pytest.mark.parametrize("shift_type", ["Q", "PS"])
def test_shift_linear_integer_equals_float_emulation(shift_type):
    torch.manual_seed(2)
    m = ShiftLinear(20, 7, shift_type=shift_type, act_integer_bits=5, act_fraction_bits=10, dtype=torch.float64)
    _train(m, torch.randn(6, 20, dtype=torch.float64))
    x = torch.randn(2, 3, 20, dtype=torch.float64) * 8  # some activations clip at the fixed-point range
    assert torch.equal(shift_linear_int(m, x), m(x))


def test_shift_integer_path_uses_shifts_on_integers():
    torch.manual_seed(3)
    m = ShiftLinear(3, 1, bias=False, act_integer_bits=4, act_fraction_bits=2)
    m.weight.data = torch.tensor([[0.5, -0.25, 1.0]])
    x = torch.tensor([[1.25, -2.0, 0.5]])  # x_int = [5, -8, 2], shifts [-1, -2, 0], guard 15
    acc, frac = shift_linear_int(m, x, return_int=True)
    assert acc.dtype == torch.int64 and frac == 2 + 15
    assert acc.item() == (5 << 14) - (-8 << 13) + (2 << 15)
    assert shift_linear_int(m, x).item() == 1.25 * 0.5 + 2.0 * 0.25 + 0.5


def test_shift_deployment_needs_fixed_point_activations():
    m = ShiftConv2d(2, 2, 1)
    with pytest.raises(ConfigError, match="act_fraction_bits"):
        shift_conv2d_int(m, torch.randn(1, 2, 2, 2))
    # explicit formats are accepted for a layer trained without them
    assert shift_conv2d_int(m, torch.randn(1, 2, 2, 2), integer_bits=4, fraction_bits=4).shape == (1, 2, 2, 2)


def test_fixed_point_int_matches_float_fixed_point():
    x = torch.randn(1000) * 10
    assert torch.equal(fixed_point_int(x, 4, 6).double() * 2.0**-6, fixed_point(x, 4, 6).double())


def _on_grid(shape, integer_bits, fraction_bits, gen):
    top = 2 ** (integer_bits + fraction_bits - 1)
    return torch.randint(-top, top, shape, generator=gen).float() * 2.0**-fraction_bits


@pytest.mark.parametrize(
    "geometry",
    [
        dict(stride=1, padding=1, dilation=1, groups=1),
        dict(stride=2, padding=1, dilation=2, groups=4),
        dict(stride=1, padding=1, dilation=1, groups=8),  # depthwise kernel
        dict(stride=1, padding=0, dilation=1, groups=2, kernel_size=1),
    ],
    ids=["dense", "groups4", "depthwise", "pointwise"],
)
def test_adder_conv_integer_equals_float32(backend, geometry):
    geometry = dict(geometry)
    ks = geometry.pop("kernel_size", 3)
    gen = torch.Generator().manual_seed(0)
    m = AdderConv2d(8, 8, ks, bias=True, **geometry).eval()
    i, f = 4, 6  # (I + 1) + F + log2(K) = 5 + 6 + 7 < 24: float32 sums are exact
    with torch.no_grad():
        m.weight.copy_(_on_grid(m.weight.shape, i, f, gen))
        m.bias.copy_(_on_grid(m.bias.shape, i, f, gen))
    for _ in range(3):
        x = _on_grid((2, 8, 9, 7), i, f, gen)
        assert torch.equal(adder_conv2d_int(m, x, i, f), m(x))


def test_adder_linear_integer_equals_float32(backend):
    gen = torch.Generator().manual_seed(1)
    m = AdderLinear(30, 9).eval()
    with torch.no_grad():
        m.weight.copy_(_on_grid(m.weight.shape, 5, 5, gen))
        m.bias.copy_(_on_grid(m.bias.shape, 5, 5, gen))
    x = _on_grid((4, 30), 5, 5, gen)
    acc, frac = adder_linear_int(m, x, 5, 5, return_int=True)
    assert acc.dtype == torch.int64 and frac == 5
    assert torch.equal(adder_linear_int(m, x, 5, 5), m(x))


def test_accumulator_width_is_checked():
    m = ShiftConv2d(64, 4, 3, weight_bits=8, act_integer_bits=16, act_fraction_bits=16)
    with pytest.raises(ConfigError, match="int64"):
        shift_layer_params(m)
