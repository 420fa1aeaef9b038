"""Gaussian -> Laplace weight remapping: exact formula, gradients, stability, learnable parts."""

import math

import pytest
import torch
from scipy import stats

from nas.errors import ConfigError
from nas.ops.remap import Remap, gaussian_to_laplace


def test_matches_equal_probability_definition():
    w = torch.randn(2000, dtype=torch.float64) * 0.3 + 0.1
    mu, sigma = w.mean(), w.std(unbiased=False)
    ours = gaussian_to_laplace(w, mu, sigma)
    ref = stats.laplace.ppf(stats.norm.cdf(w.numpy(), mu.item(), sigma.item()), mu.item(), sigma.item() / math.sqrt(2))
    assert torch.allclose(ours, torch.from_numpy(ref), rtol=1e-9, atol=1e-12)


def test_monotone_variance_preserving_and_laplacian():
    torch.manual_seed(0)
    w = torch.randn(200_000, dtype=torch.float64)
    out = Remap("cdf")(w)
    order = torch.argsort(w)
    assert (out[order].diff() >= 0).all()  # rank order kept
    assert abs(out.var().item() / w.var().item() - 1) < 0.02  # b = sigma / sqrt 2 matches variance
    assert abs(stats.kurtosis(out.numpy()) - 3.0) < 0.15  # Laplace excess kurtosis is 3 (Gaussian 0)


def test_gradient_is_pdf_ratio():
    # d w_L / d w = phi(w) / f_L(w_L) with the statistics held fixed (they are detached)
    w = torch.linspace(-3, 3, 41, dtype=torch.float64, requires_grad=True)
    mu, sigma = torch.tensor(0.2, dtype=torch.float64), torch.tensor(0.9, dtype=torch.float64)
    out = gaussian_to_laplace(w, mu, sigma)
    (g,) = torch.autograd.grad(out.sum(), w)
    b = sigma / math.sqrt(2)
    phi = torch.exp(-0.5 * ((w - mu) / sigma) ** 2) / (sigma * math.sqrt(2 * math.pi))
    f_l = torch.exp(-(out - mu).abs() / b) / (2 * b)
    assert torch.allclose(g, (phi / f_l).detach(), rtol=1e-8)
    assert torch.autograd.gradcheck(lambda t: gaussian_to_laplace(t, mu, sigma), (w,))


def test_extreme_weights_stay_finite():
    w = torch.tensor([-1e3, -50.0, 0.0, 1e-30, 50.0, 1e3], requires_grad=True)
    out = gaussian_to_laplace(w, torch.tensor(0.0), torch.tensor(1.0))
    out.sum().backward()
    assert torch.isfinite(out).all() and torch.isfinite(w.grad).all()
    # far tail of the Laplace: |w_L| ~ b * z^2 grows quadratically, never inf
    assert out[-1] > out[-2] > 0 and out[0] < out[1] < 0


def test_stats_are_detached_and_per_filter():
    w = torch.randn(4, 3, 3, 3, requires_grad=True)
    r = Remap("cdf", 3, per_filter=True)
    out = r(w)
    for k in range(4):
        ref = gaussian_to_laplace(w[k], w[k].mean().detach(), w[k].std(unbiased=False).detach())
        assert torch.allclose(out[k], ref, atol=1e-6)
    out.sum().backward()
    assert w.grad is not None


def test_cdf_fc_starts_as_cdf_and_learns():
    torch.manual_seed(1)
    w = torch.randn(8, 4, 5, 5, requires_grad=True)
    fc = Remap("cdf-fc", 5)
    assert torch.allclose(fc(w), Remap("cdf", 5)(w), atol=1e-6)
    (fc(w) * torch.randn(8, 4, 5, 5)).sum().backward()
    assert fc.fc.grad is not None and fc.fc.grad.abs().sum() > 0
    assert torch.allclose(fc(w).norm(), Remap("cdf", 5)(w).norm())  # the FC reshapes, never rescales
    # a cropped 3x3 kernel uses the centre block of the 25x25 map
    with torch.no_grad():
        fc.fc.add_(torch.randn(25, 25) * 0.01)
    crop = w[..., 1:4, 1:4]
    idx = torch.tensor([6, 7, 8, 11, 12, 13, 16, 17, 18])
    base = Remap("cdf", 5)(crop)
    ref = (base.reshape(8, 4, 9) @ fc.fc[idx][:, idx].t()).reshape(8, 4, 3, 3)
    ref = ref * base.norm() / ref.norm()
    assert torch.allclose(fc(crop), ref, atol=1e-6)
    assert "fc" in dict(fc.named_parameters()) and "fc" in fc.state_dict()
    assert not list(Remap("cdf-fc", 1).parameters())  # 1x1 kernels: nothing to learn but a scale


def test_pwl_kl_identity_at_start_with_regulariser():
    torch.manual_seed(2)
    w = torch.randn(16, 8, requires_grad=True)
    r = Remap("pwl-kl")
    out = r(w)
    assert torch.equal(out, w)
    reg = r.regularizer()
    assert reg is not None and reg.item() >= 0
    assert r.regularizer() is None  # read once
    (out.sum() + reg).backward()
    assert r.slopes.grad is not None and w.grad is not None


def test_none_is_identity_and_bad_kind():
    w = torch.randn(3, 3)
    assert Remap("none")(w) is w
    with pytest.raises(ConfigError, match="remap: got 'gauss'; allowed: none, cdf, cdf-fc, pwl-kl"):
        Remap("gauss")


def test_affine_starts_as_cdf_keeps_the_norm_and_learns():
    torch.manual_seed(3)
    w = torch.randn(8, 6, 1, 1, requires_grad=True)
    r = Remap("cdf-fc", 1, affine=True, channels=12)
    base = Remap("cdf", 1)(w)
    assert torch.equal(r(w), base)  # identity at the start, bit for bit
    (r(w) * torch.randn(8, 6, 1, 1)).sum().backward()
    assert r.scale.grad[:8].abs().sum() > 0 and r.shift.grad[:8].abs().sum() > 0
    assert r.scale.grad[8:].abs().sum() == 0  # an elastic layer uses the prefix of its channels
    with torch.no_grad():
        r.scale.uniform_(0.5, 1.5)
        r.shift.normal_(0, 0.3)
    out = r(w)
    assert torch.allclose(out.norm(), base.norm())  # variance-preserving: no global scale to learn
    s = base.std(unbiased=False)
    y = r.scale[:8].reshape(8, 1, 1, 1) * base + r.shift[:8].reshape(8, 1, 1, 1) * s
    assert torch.allclose(out, y * base.norm() / y.norm(), atol=1e-6)
    # a linear layer's (out, in) weight, per output row
    lin = Remap("cdf-fc", 1, affine=True, channels=5)
    with torch.no_grad():
        lin.scale.copy_(torch.tensor([1.0, 2.0, 1.0, 1.0, 0.5]))
    wl = torch.randn(5, 7)
    zl = Remap("cdf", 1)(wl)
    yl = zl * lin.scale[:, None]
    assert torch.allclose(lin(wl), yl * zl.norm() / yl.norm(), atol=1e-6)
    # only cdf-fc on 1x1 kernels / linears gets it; kxk kernels keep their FC
    assert not Remap("cdf", 1, affine=True, channels=4).affine
    assert not Remap("cdf-fc", 3, affine=True, channels=4).affine
    assert set(dict(r.named_parameters())) == {"scale", "shift"}
