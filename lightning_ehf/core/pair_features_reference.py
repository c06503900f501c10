"""The pair-distance features as they were before the scalable implementation of
:class:`lightning_ehf.core.invariants.PairDistanceFeatures`: the reference its values and gradients (first and
second order) are tested against, and the baseline ``ehf bench`` measures it against in the same process.

Plain autograd through every intermediate, the bases evaluated again in the pullback, no clamp. A
reference only: nothing but the tests and the benchmark use it (the models use
:class:`~lightning_ehf.core.invariants.PairDistanceFeatures`).
"""

from __future__ import annotations

import torch
from torch import Tensor


class ReferencePairDistanceFeatures:
    """``f_m(x) = Σ_{i<j} φ_m(|x_i − x_j|²)``, ``f'_m(x) = Σ_i φ_m(|x_i|²)``,
    ``φ_m(s) = exp(−(s − c_m)² / (2w²))``, and ``pullback(x, g) = J(x)ᵀ g`` in closed form."""

    def __init__(self, n_particles: int, particle_dim: int, n_bins: int = 24, max_distance: float = 8.0) -> None:
        self.n, self.dim, self.n_bins = n_particles, particle_dim, n_bins
        self.rows, self.cols = torch.triu_indices(n_particles, n_particles, offset=1)
        s_max = float(max_distance) ** 2
        self.centres = torch.linspace(0.0, s_max, n_bins, dtype=torch.float64)
        self.width = s_max / (n_bins - 1)

    def _parts(self, x: Tensor) -> tuple[Tensor, Tensor]:
        parts = x.reshape(*x.shape[:-1], self.n, self.dim)
        diff = parts[..., self.rows, :] - parts[..., self.cols, :]  # (..., P, D)
        return parts, diff

    def _bases(self, s: Tensor) -> tuple[Tensor, Tensor]:
        u = (s[..., None] - self.centres.to(s)) / self.width
        phi = torch.exp(-0.5 * u.square())
        return phi, -u * phi / self.width

    def __call__(self, x: Tensor) -> Tensor:
        parts, diff = self._parts(x)
        pair, _ = self._bases(diff.square().sum(-1))
        norm, _ = self._bases(parts.square().sum(-1))
        return torch.cat([pair.sum(-2), norm.sum(-2)], -1)

    def pullback(self, x: Tensor, g: Tensor) -> Tensor:
        parts, diff = self._parts(x)
        g_pair, g_norm = g[..., : self.n_bins], g[..., self.n_bins :]
        _, pair_slope = self._bases(diff.square().sum(-1))
        _, norm_slope = self._bases(parts.square().sum(-1))
        pair_grad = 2.0 * (pair_slope * g_pair[..., None, :]).sum(-1)[..., None] * diff
        out = 2.0 * (norm_slope * g_norm[..., None, :]).sum(-1)[..., None] * parts
        out = out.index_add(-2, self.rows.to(x.device), pair_grad)
        out = out.index_add(-2, self.cols.to(x.device), -pair_grad)
        return out.reshape(*x.shape[:-1], self.n * self.dim)
