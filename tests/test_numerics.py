"""Numerical edge cases that would hide a failure: NaN through shift rounding, fixed-point saturation
above float32's mantissa, DeepShift-PS stochastic sign rounding, and training that stops with one
line naming the layer when a loss or a weight turns non-finite."""

import math

import pytest
import torch
import torch.nn as nn

from nas.errors import ConfigError, TrainingDivergedError
from nas.finite import check_losses, check_weights, first_nonfinite_output
from nas.ops import reference as R
from nas.ops.deploy import fixed_point_int
from nas.ops.shift import ShiftConv2d, ShiftLinear, fixed_point, shift_and_sign_q, shift_range, shift_weight_ps, shift_weight_q

NAN, INF = float("nan"), float("inf")


# ------------------------------------------------------------------------------------------ NaN


def test_nan_weight_stays_nan_through_q_rounding():
    w = torch.tensor([NAN, 0.3, -0.3, 0.0, INF, -INF, 1e-30])
    lo, hi = shift_range(5, "Q")
    for rounding in ("deterministic", "stochastic"):
        q = shift_weight_q(w, rounding=rounding, generator=torch.Generator().manual_seed(0))
        assert math.isnan(q[0])  # was 0: sign(nan) = 0 made a diverged weight look like a pruned one
        assert q[3] == 0 and q[4] == 2.0**hi and q[5] == -(2.0**hi) and q[6] == 2.0**lo  # zero stays zero, clampabs
    # as DeepShift's own formula (2 ** round(log2 |w|) * sign(w)) on the same input
    assert torch.equal(torch.isnan(shift_weight_q(w)), torch.isnan(R.shift_weight_q_reference(w)))


def test_nan_sign_or_shift_stays_nan_through_ps_rounding():
    shift = torch.tensor([NAN, -3.0, -3.0, -3.0])
    sign = torch.tensor([0.7, NAN, 0.2, -0.9])
    w = shift_weight_ps(shift, sign)
    assert math.isnan(w[0]) and math.isnan(w[1]) and w[2] == 0 and w[3] == -(2.0**-3)
    assert torch.equal(w.isnan(), R.shift_weight_ps_reference(shift, sign).isnan())


def test_a_layer_with_a_nan_weight_outputs_nan():
    for m in (ShiftConv2d(2, 3, 3, padding=1), ShiftLinear(4, 3), ShiftConv2d(2, 3, 1, shift_type="PS")):
        with torch.no_grad():
            (m.weight if m.shift_type == "Q" else m.sign).view(-1)[0] = NAN
        x = torch.randn(2, *((2, 5, 5) if isinstance(m, ShiftConv2d) else (4,)))
        assert torch.isnan(m(x)).any()


def test_integer_encoding_refuses_nan_weights():
    with pytest.raises(ConfigError, match="weight: got '<1 NaN entries>'"):
        shift_and_sign_q(torch.tensor([0.5, NAN]))


# ------------------------------------------------------------------------------------------ fixed point


@pytest.mark.parametrize("i, f", [(16, 16), (12, 13), (20, 12), (1, 31), (31, 1), (8, 8), (4, 4)])
def test_fixed_point_saturates_inside_the_signed_format(i, f):
    top = 2 ** (i + f - 1)
    x = torch.tensor([1e30, -1e30, INF, -INF, 2.0 ** (i - 1), -(2.0 ** (i - 1))])
    q = fixed_point(x, i, f)
    largest = (top - 1) * 2.0**-f  # the format's largest value (exact in float64)
    assert q[0].item() <= largest and q[2].item() <= largest  # was 32768.0 = 2**15 for 16/16: outside
    assert q[1].item() == q[3].item() == q[5].item() == -(2.0 ** (i - 1))
    nearest = torch.tensor(largest, dtype=torch.float32)  # rounds to nearest: may lie above the format
    below = nearest if nearest.item() <= largest else torch.nextafter(nearest, torch.tensor(0.0))
    assert q[0].item() == below.item()  # the largest float32 inside the format (exactly ``largest`` when float32 holds it)
    assert (below.item() == largest) == (i + f <= 25)  # 2**24 - 1 is the largest odd code float32 holds
    n = fixed_point_int(x, i, f)
    assert n.tolist()[:4] == [top - 1, -top, top - 1, -top]  # 16/16: 2147483647, was 2147483648
    assert n.dtype == torch.int64


def test_fixed_point_int_is_exact_in_wide_formats():
    x = torch.tensor([1.5, -2.25, 32767.99, 123.456789], dtype=torch.float32)
    n = fixed_point_int(x, 16, 16)
    assert n.tolist() == [math.floor(v * 2**16) for v in x.double().tolist()]
    # float64 emulation agrees everywhere, float32 wherever it can represent the code
    assert torch.equal(fixed_point(x.double(), 16, 16), n.double() * 2.0**-16)


# ------------------------------------------------------------------------------------------ PS stochastic sign


def test_ps_stochastic_rounding_rounds_the_sign_too():
    """DeepShift's Conv2dShift: sign(round(S, rounding)) — an unbiased ternary sign."""
    n = 20000
    gen = torch.Generator().manual_seed(0)
    shift = torch.full((n,), -2.0)
    for s_val in (0.3, -0.3, 0.8):
        w = shift_weight_ps(shift, torch.full((n,), s_val), rounding="stochastic", generator=gen)
        signs = torch.sign(w)
        frac = (signs == math.copysign(1.0, s_val)).float().mean().item()
        assert abs(frac - abs(s_val)) < 0.02  # P(±1) = |S|, else 0
        assert set(signs.unique().tolist()) == {0.0, math.copysign(1.0, s_val)}
        assert abs(signs.mean().item() - s_val) < 0.02  # E[sign] = S
    # deterministic rounding is unchanged: round(0.3) = 0
    assert torch.equal(shift_weight_ps(shift[:4], torch.full((4,), 0.3)), torch.zeros(4))


def test_ps_stochastic_matches_the_reference_draw_for_draw():
    gen = torch.Generator().manual_seed(1)
    shift = torch.empty(300).uniform_(-16, 2, generator=gen)
    sign = torch.empty(300).uniform_(-1.4, 1.4, generator=gen)
    w = shift_weight_ps(shift, sign, rounding="stochastic", generator=torch.Generator().manual_seed(9))
    u = torch.rand(2, 300, generator=torch.Generator().manual_seed(9))
    assert torch.equal(w, R.shift_weight_ps_reference(shift, sign, rounding="stochastic", u=u))


# ------------------------------------------------------------------------------------------ divergence


class _Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))

    def forward(self, x):
        return self.body(x)


def test_nonfinite_loss_names_the_first_nonfinite_weight():
    net = _Tiny()
    check_losses(net, {"loss": 0.5, "lr": 0.1})  # finite: nothing happens
    with torch.no_grad():
        net.body[2].weight[0, 0] = NAN
    with pytest.raises(TrainingDivergedError, match=r"at epoch 3, step 7: loss is nan \(first non-finite weight: body\.2\.weight\)"):
        check_losses(net, {"loss": NAN}, torch.randn(2, 4), "epoch 3, step 7")


def test_nonfinite_loss_with_finite_weights_names_the_layer_whose_output_overflows():
    net = _Tiny()
    with torch.no_grad():
        net.body[0].weight.fill_(3e38)  # finite, but x @ w overflows float32
    assert first_nonfinite_output(net, torch.ones(2, 4)) == "body.0"
    with pytest.raises(TrainingDivergedError, match="weights finite, first non-finite output: layer body.0"):
        check_losses(net, {"loss": INF}, torch.ones(2, 4))


def test_nonfinite_weight_stops_before_a_checkpoint():
    net = _Tiny()
    check_weights(net)
    with torch.no_grad():
        net.body[0].bias[1] = -INF
    with pytest.raises(TrainingDivergedError, match="weight body.0.bias is not finite"):
        check_weights(net, "epoch 2")


def test_training_stops_with_one_line_naming_the_layer(tmp_path, capsys):
    """A learning rate of 1e30 diverges at the first step: exit 1, one line, no checkpoint written."""
    from nas.cli import train_main

    rc = train_main(["--model", "mbv2-tiny", "--op", "shift", "--aug", "none", "--epochs", "1", "--lr", "1e30",
                     "--max-train-images", "128", "--batch-size", "64", "--out", str(tmp_path / "r"), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 1 and err.count("\n") == 1, err
    assert err.startswith("error: training diverged at epoch 1, step ") and "first non-finite" in err
    assert not (tmp_path / "r" / "checkpoint.pt").exists()
