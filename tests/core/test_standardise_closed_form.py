"""``invariant_moments`` on small hand-made sets whose projected moments are known in closed form."""

from __future__ import annotations

import torch

from lightning_ehf.core.standardise import invariant_moments
from lightning_ehf.core.symmetries import no_symmetry, so2

F64 = torch.float64


def test_no_group_gives_the_sample_mean_and_the_n_minus_1_covariance():
    x = torch.tensor([[0.0, 1.0], [2.0, 5.0], [4.0, 0.0]], dtype=F64)
    mean, cov = invariant_moments(x, no_symmetry(2).matrices)
    # means (2, 2); deviations (−2, −1), (0, 3), (2, −2): Σ = [[8, −2], [−2, 14]] / (3 − 1)
    assert torch.allclose(mean, torch.tensor([2.0, 2.0], dtype=F64), atol=1e-12)
    assert torch.allclose(cov, torch.tensor([[4.0, -1.0], [-1.0, 7.0]], dtype=F64), atol=1e-12)


def test_rotations_of_the_plane_give_zero_mean_and_half_the_trace():
    x = torch.tensor([[0.0, 1.0], [2.0, 5.0], [4.0, 0.0]], dtype=F64)
    mean, cov = invariant_moments(x, so2(2).matrices)
    # the only rotation-fixed mean is 0; the commutant of so(2) holds a I + b J, of which a symmetric
    # matrix keeps (tr Σ / 2) I = (4 + 7) / 2 I
    assert torch.allclose(mean, torch.zeros(2, dtype=F64), atol=1e-12)
    assert torch.allclose(cov, 5.5 * torch.eye(2, dtype=F64), atol=1e-12)


def test_identical_particles_average_the_moments_over_relabellings():
    """Two particles on a line (no rotation): x = (a, b). Relabelling averages the particle means, the two
    variances (diagonal) and keeps their covariance (off-diagonal)."""
    x = torch.tensor([[0.0, 1.0], [2.0, 5.0], [4.0, 0.0]], dtype=F64)
    mean, cov = invariant_moments(x, no_symmetry(2).matrices, n_particles=2)
    assert torch.allclose(mean, torch.tensor([2.0, 2.0], dtype=F64), atol=1e-12)
    assert torch.allclose(cov, torch.tensor([[5.5, -1.0], [-1.0, 5.5]], dtype=F64), atol=1e-12)
    # three particles: diagonal = mean variance, every off-diagonal entry = mean covariance of distinct pairs
    y = torch.tensor([[0.0, 1.0, 3.0], [2.0, 5.0, 3.0], [4.0, 0.0, 0.0], [2.0, 2.0, 6.0]], dtype=F64)
    mean, cov = invariant_moments(y, no_symmetry(3).matrices, n_particles=3)
    s = torch.cov(y.T)
    off = (s.sum() - s.trace()) / 6
    assert torch.allclose(mean, y.mean().repeat(3), atol=1e-12)
    expected = torch.full((3, 3), float(off), dtype=F64)
    expected.fill_diagonal_(float(s.trace() / 3))
    assert torch.allclose(cov, expected, atol=1e-12)
