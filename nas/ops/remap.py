"""Heterogeneous weight sharing: remap a stored multiplicative weight into the MF domain.

Weights of trained multiplicative convs are roughly Gaussian, those of MF convs roughly Laplacian
("weight tearing", ShiftAddNAS). One stored tensor serves both kinds of operator, so the MF
operator consumes ``R(W)`` where ``R`` maps the Gaussian to the Laplacian with equal cumulative
probability (docs/method-notes.md, section 4.1):

    w_L = F_L^-1(Phi(w)) = mu - b * sgn(w - mu) * ln erfc(|w - mu| / (sigma sqrt 2)),   b = sigma / sqrt 2

``ln erfc(z)`` is evaluated as ``ln 2 + log_ndtr(-z sqrt 2)``, which stays finite and smooth for any
``z`` (no clamping of probabilities needed). ``mu`` and ``sigma`` are the statistics of the slice
being remapped (per layer, or per output filter), detached: they are a normalisation, not a path
for gradients. ``b = sigma / sqrt 2`` matches the Laplacian's variance to the Gaussian's.

Kinds (``Remap(kind=...)``):

* ``none``: ``R(W) = W`` (plain weight sharing).
* ``cdf``: the CDF remap above, no learnable part.
* ``cdf-fc``: the CDF remap followed by a learnable linear map on each kernel's ``k*k`` vector,
  initialised to the identity (the paper's Eq. 5, "a learnable FC layer"; docs/method-notes.md, section 4.2). The result is
  rescaled to the norm of the CDF-remapped tensor: the FC learns the kernel's *shape*, the scale
  stays the variance-matched Laplace scale. Without this the FC is a free global scale of the MF
  weights, which AdderNet layers are not invariant to, and its gradient (a sum over the whole
  tensor of a gradient already normalised by AdderNet's adaptive scaling, with a component along
  the weights themselves) drives it to diverge within a few steps (measured). 1x1 kernels and
  linear layers have nothing left to learn, so they get no FC.
* ``pwl-kl``: ShiftAddNAS's piecewise-linear transform: the range of W cut into ``bins`` equal bins
  with one learnable slope each (initialised to 1, where ShiftAddNAS draws them from randn), plus a
  KL regulariser pulling the sorted remapped weights towards the quantiles of a Laplace(0, b)
  (ShiftAddNAS compares unsorted softmaxes against a fresh random sample; quantiles make the same
  idea deterministic). ``regularizer()`` returns the term of the last forward; the trainer adds
  ``kl_weight`` (10 in ShiftAddNAS) times the sum over layers to the loss.

The per-output-channel affine (``cdf-fc`` on 1x1 convs and linear layers, ``affine=True``): with
``z`` the CDF-remapped slice and ``s`` its standard deviation (detached),

    y_c = a_c * z_c + t_c * s,        R(W) = y * ||z|| / ||y||

``a`` starts at 1 and ``t`` at 0, so it starts as the identity (bit for bit); the rescale to the
norm of ``z`` keeps the variance-matched Laplace scale, for the same reason as the FC's: the
affine learns how output channels differ from each other in scale and offset, not a global scale
(which AddConv is not invariant to and whose gradient diverges). ``t`` is in units of ``s`` so that
one learning rate suits both. The parameters are sized for the layer's max output channels; an
elastic layer uses their prefix (``nas.supernet.net.sort_channels`` permutes them with the weight).

The remap is only ever applied in the mult -> MF direction; the stored tensor stays multiplicative.
At export it is folded into the MF layer's weights.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

REMAP_KINDS = ("none", "cdf", "cdf-fc", "pwl-kl")
_LN2 = math.log(2.0)


def gaussian_to_laplace(w: torch.Tensor, mu: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Equal-probability map from N(mu, sigma^2) to Laplace(mu, sigma / sqrt 2), elementwise."""
    b = sigma / math.sqrt(2.0)
    d = w - mu
    z = d.abs() / (sigma * math.sqrt(2.0))
    log_erfc = _LN2 + torch.special.log_ndtr(-z * math.sqrt(2.0))
    return mu - b * torch.sign(d) * log_erfc


def _centre_index(k: int, kmax: int, device) -> torch.Tensor:
    """Flat indices of the centred k x k window inside a kmax x kmax kernel."""
    s = (kmax - k) // 2
    rows = torch.arange(s, s + k, device=device)
    return (rows[:, None] * kmax + rows[None, :]).reshape(-1)


class Remap(nn.Module):
    """Per-layer remap from the stored (multiplicative) weight to the weight an MF op consumes."""

    def __init__(self, kind: str = "cdf-fc", kernel_size: int = 1, per_filter: bool = False, bins: int = 100,
                 affine: bool = False, channels: int = 0):
        super().__init__()
        if kind not in REMAP_KINDS:
            from nas.errors import ConfigError

            raise ConfigError("remap", kind, f"allowed: {', '.join(REMAP_KINDS)}")
        self.kind = kind
        self.kernel_size = kernel_size
        self.per_filter = per_filter
        self.bins = bins
        if kind == "cdf-fc" and kernel_size > 1:
            self.fc = nn.Parameter(torch.eye(kernel_size * kernel_size))
        if kind == "pwl-kl":
            self.slopes = nn.Parameter(torch.ones(bins))
        self.affine = kind == "cdf-fc" and kernel_size == 1 and affine
        if self.affine:
            if channels < 1:
                raise ValueError("an affine remap needs the layer's (max) output channels")
            self.scale = nn.Parameter(torch.ones(channels))
            self.shift = nn.Parameter(torch.zeros(channels))
        self._reg: torch.Tensor | None = None

    def extra_repr(self) -> str:
        return f"kind={self.kind}, kernel_size={self.kernel_size}, per_filter={self.per_filter}, affine={self.affine}"

    def _stats(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        w = w.detach()
        if self.per_filter and w.dim() > 1 and w.shape[0] > 1:
            flat = w.reshape(w.shape[0], -1)
            shape = (-1,) + (1,) * (w.dim() - 1)
            mu = flat.mean(1).reshape(shape)
            sigma = flat.std(1, unbiased=False).reshape(shape)
        else:
            mu, sigma = w.mean(), w.std(unbiased=False)
        return mu, sigma.clamp_min(1e-8)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        """Remap a weight slice of shape (out, in, k, k) (k <= kernel_size, centred) or (out, in)."""
        if self.kind == "none":
            return w
        if self.kind == "pwl-kl":
            return self._pwl(w)
        if w.numel() < 2:
            return w  # a single weight has no distribution to match
        mu, sigma = self._stats(w)
        out = gaussian_to_laplace(w, mu, sigma)
        if self.kind == "cdf-fc" and self.kernel_size > 1 and w.dim() == 4 and w.shape[-1] > 1:
            k = w.shape[-1]
            fc = self.fc
            if k != self.kernel_size:
                idx = _centre_index(k, self.kernel_size, w.device)
                fc = fc[idx][:, idx]
            mixed = (out.reshape(*out.shape[:2], k * k) @ fc.t()).reshape(out.shape)
            out = mixed * (out.norm() / mixed.norm().clamp_min(1e-12))
        elif self.affine:
            out = self._affine(out)
        return out

    def _affine(self, z: torch.Tensor) -> torch.Tensor:
        n = z.shape[0]  # the active output channels: a prefix of the stored ones
        shape = (n,) + (1,) * (z.dim() - 1)
        s = z.detach().std(unbiased=False)
        y = self.scale[:n].reshape(shape) * z + self.shift[:n].reshape(shape) * s
        return y * (z.norm() / y.norm().clamp_min(1e-12))

    def _pwl(self, w: torch.Tensor) -> torch.Tensor:
        lo, hi = w.detach().min(), w.detach().max()
        width = (hi - lo).clamp_min(1e-12) / self.bins
        idx = ((w.detach() - lo) / width).floor().clamp(0, self.bins - 1).long()  # bin membership is detached
        out = self.slopes[idx] * w
        # regulariser: KL between softmax of sorted remapped weights and of Laplace quantiles
        n = out.numel()
        if n > 1:
            sigma = w.detach().std(unbiased=False).clamp_min(1e-8)
            b = sigma / math.sqrt(2.0)
            p = (torch.arange(n, device=w.device, dtype=w.dtype) + 0.5) / n
            q = -b * torch.sign(p - 0.5) * torch.log1p(-2 * (p - 0.5).abs())
            s = torch.sort(out.reshape(-1)).values
            self._reg = F.kl_div(F.log_softmax(s / b, 0), F.softmax(q / b, 0), reduction="sum")
        return out

    def regularizer(self) -> torch.Tensor | None:
        """The KL term of the last forward (``pwl-kl`` only); cleared once read."""
        r, self._reg = self._reg, None
        return r
