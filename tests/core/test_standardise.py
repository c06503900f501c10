"""Standardisation by group-invariant moments: the projected moments commute with the group, converge to
the true ones, keep invariance exact, and the standardised density is still normalised."""

from __future__ import annotations

import math

import pytest
import torch
from symmetry_zoo import groups

from lightning_ehf.core import make_ehf, no_symmetry, particle_rotations, so2
from lightning_ehf.core.frames import CentreOfMassFrame
from lightning_ehf.core.standardise import (
    MAX_STANDARDISE_DIM,
    commutant_projection,
    fixed_projection,
    invariant_moments,
)

F64 = torch.float64

GROUPS = groups("so2_plane01_in_3d", "so3", "planes4", "particles3x2", "particles2x3")


def skewed_data(d: int, n: int = 4000, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    mix = torch.randn(d, d, generator=gen, dtype=F64)
    return torch.randn(n, d, generator=gen, dtype=F64) @ mix + torch.randn(d, generator=gen, dtype=F64)


@pytest.mark.parametrize("name", list(GROUPS))
def test_projected_moments_commute_with_the_group(name):
    sym = GROUPS[name]
    a = sym.matrices
    mean, cov = invariant_moments(skewed_data(sym.dim), a)
    assert torch.einsum("kij,j->ki", a, mean).abs().max() < 1e-10
    assert (a @ cov - cov @ a).abs().max() < 1e-10
    assert torch.allclose(cov, cov.T) and torch.linalg.eigvalsh(cov).min() > 0
    # not vacuous: the raw moments do not commute
    raw = torch.cov(skewed_data(sym.dim).T)
    assert (a @ raw - raw @ a).abs().max() > 1e-2


@pytest.mark.parametrize("name", list(GROUPS))
def test_projections_are_orthogonal_projections(name):
    """Idempotent, and the residual is orthogonal to the commutant (checked against a random element of it)."""
    a = GROUPS[name].matrices
    d = a.shape[-1]
    x = torch.randn(d, d, dtype=F64)
    px = commutant_projection(a, x)
    torch.testing.assert_close(commutant_projection(a, px), px, rtol=0, atol=1e-10)
    other = commutant_projection(a, torch.randn(d, d, dtype=F64))
    assert abs(float(((x - px) * other).sum())) < 1e-9
    fp = fixed_projection(a)
    torch.testing.assert_close(fp @ fp, fp, rtol=0, atol=1e-10)


def test_projection_converges_to_the_true_covariance_of_an_invariant_density():
    """Particles rotated together, N(0, C ⊗ I₂) (invariant): the projected estimate is closer to C ⊗ I
    than the raw sample covariance."""
    sym = particle_rotations(3, 2)
    c = torch.tensor([[2.0, 0.8, -0.3], [0.8, 1.0, 0.2], [-0.3, 0.2, 0.5]], dtype=F64)
    true = torch.kron(c, torch.eye(2, dtype=F64))
    x = torch.randn(3000, 6, generator=torch.Generator().manual_seed(1), dtype=F64) @ torch.linalg.cholesky(true).T
    _, cov = invariant_moments(x, sym.matrices)
    raw = torch.cov(x.T)
    assert (cov - true).norm() < 0.75 * (raw - true).norm()
    assert (cov - true).abs().max() < 0.1


def test_relabelling_average_makes_identical_particles_interchangeable():
    sym = particle_rotations(4, 2)
    mean, cov = invariant_moments(skewed_data(8), sym.matrices, n_particles=4)
    perm = torch.tensor([2, 0, 3, 1])
    p = torch.kron(torch.eye(4, dtype=F64)[perm], torch.eye(2, dtype=F64))
    torch.testing.assert_close(p @ cov @ p.T, cov, rtol=0, atol=1e-12)
    torch.testing.assert_close(p @ mean, mean, rtol=0, atol=1e-12)


def test_relabelling_average_in_centre_of_mass_coordinates():
    frame = CentreOfMassFrame(4, 2)
    sym = frame.restrict(particle_rotations(4, 2))
    z = skewed_data(6)
    mean, cov = invariant_moments(z, sym.matrices, n_particles=4, basis=frame.basis)
    # relabelling acts on z as Bᵀ P B; with 4 interchangeable particles and rotations the covariance is a scalar
    perm = torch.tensor([1, 3, 0, 2])
    pz = frame.basis.T @ torch.kron(torch.eye(4, dtype=F64)[perm], torch.eye(2, dtype=F64)) @ frame.basis
    torch.testing.assert_close(pz @ cov @ pz.T, cov, rtol=0, atol=1e-12)
    torch.testing.assert_close(cov, cov.diagonal().mean() * torch.eye(6, dtype=F64), rtol=0, atol=1e-12)
    assert mean.abs().max() < 1e-12


def test_no_group_keeps_the_sample_moments_at_any_dimension():
    d = MAX_STANDARDISE_DIM + 2
    x = skewed_data(d, n=500)
    mean, cov = invariant_moments(x, no_symmetry(d).matrices)
    torch.testing.assert_close(cov, torch.cov(x.T), rtol=0, atol=1e-12)
    torch.testing.assert_close(mean, x.mean(0), rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match=f"dimension ≤ {MAX_STANDARDISE_DIM}"):
        invariant_moments(skewed_data(d, n=200), so2(d).matrices)


# -- the standardised model -----------------------------------------------------------------------


def standardised(build, sym, **kwargs):
    model = build(sym, **kwargs)
    mean, cov = invariant_moments(skewed_data(sym.dim), sym.matrices)
    return model.standardise(mean, cov), mean, cov


def test_standardised_joint_density_is_normalised(randomize):
    """d = 1, no group: ∫∫ p(q, p) dq dp = 1 on a grid, with W = 2.5 and μ = 1.3 (a wrong log-det or a
    missing shift would move the mass or the total)."""
    model = randomize(make_ehf(no_symmetry(1), blocks=2, leapfrog_steps=3, step_size=0.15, hidden=16), 0.3).double()
    model.standardise(torch.tensor([1.3], dtype=F64), torch.tensor([[2.5**2]], dtype=F64))
    q = torch.linspace(1.3 - 25, 1.3 + 25, 801, dtype=F64)
    p = torch.linspace(-10, 10, 401, dtype=F64)
    qq, pp = torch.meshgrid(q, p, indexing="ij")
    with torch.no_grad():
        dens = model.log_joint(qq.reshape(-1, 1), pp.reshape(-1, 1)).exp().reshape(qq.shape)
    mass = dens.sum() * (q[1] - q[0]) * (p[1] - p[0])
    assert abs(float(mass) - 1.0) < 1e-3
    mean_q = (dens.sum(1) * q).sum() / dens.sum()
    # samples and density agree about where the mass is
    with torch.no_grad():
        samples = model.sample(20000, torch.Generator().manual_seed(0))
    assert abs(float(samples.mean() - mean_q)) < 0.1


@pytest.mark.parametrize("name", ["so2_plane01_in_3d", "particles3x2"])
def test_standardised_invariant_model_stays_exactly_invariant(build, name):
    sym = GROUPS[name]
    model, _, _ = standardised(build, sym, invariant=True, kinetic="mlp")
    q = skewed_data(sym.dim, n=64, seed=3)
    # the joint density at matched momenta (IWAE estimates would add their own noise)
    g = sym.sample(64, torch.Generator().manual_seed(2), dtype=F64)
    p = torch.randn(64, sym.dim, dtype=F64)
    with torch.no_grad():
        lj, lj_rot = model.log_joint(q, p), model.log_joint(*g.act(q, p))
    assert (lj - lj_rot).abs().max() < 1e-9
    # not vacuous: a whitening that does not commute with the group breaks it
    w = torch.eye(sym.dim, dtype=F64)
    w[0, 0] = 2.0
    model.data_map.scale_inv.copy_(torch.linalg.inv(w))
    with torch.no_grad():
        assert (model.log_joint(q, p) - model.log_joint(*g.act(q, p))).abs().max() > 1e-3


def test_standardise_refuses_moments_that_break_the_symmetry(build):
    sym = so2(3)
    model = build(sym)
    cov = torch.eye(3, dtype=F64)
    cov[0, 0] = 2.0  # the rotated plane is not isotropic
    with pytest.raises(ValueError, match="does not commute"):
        model.standardise(torch.zeros(3, dtype=F64), cov)
    with pytest.raises(ValueError, match="moved by the group"):
        model.standardise(torch.tensor([1.0, 0.0, 0.0], dtype=F64), torch.eye(3, dtype=F64))
    with pytest.raises(ValueError, match="singular"):
        model.standardise(torch.zeros(3, dtype=F64), torch.diag(torch.tensor([1.0, 1.0, 0.0], dtype=F64)))
    # the free axis may have any mean and scale
    ok = torch.diag(torch.tensor([1.0, 1.0, 9.0], dtype=F64))
    model.standardise(torch.tensor([0.0, 0.0, 4.0], dtype=F64), ok)
    assert math.isclose(float(model.data_map.log_det), 0.5 * math.log(9.0), rel_tol=1e-12)


def test_state_dict_without_standardisation_loads_as_identity(build):
    """Checkpoints written before standardisation existed still load."""
    model, _, _ = standardised(build, so2(3))
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("data_")}
    fresh = build(so2(3))
    fresh.load_state_dict(state)
    torch.testing.assert_close(fresh.data_map.scale, torch.eye(3, dtype=F64))
    assert float(fresh.data_map.log_det) == 0.0
    # and a standardised one round-trips its buffers
    again = build(so2(3))
    again.load_state_dict(model.state_dict())
    torch.testing.assert_close(again.data_map.scale, model.data_map.scale, rtol=0, atol=0)


def test_state_dict_with_the_standardisation_on_the_model_loads_into_its_data_map(build):
    """Checkpoints written while the model held the standardisation itself (``data_loc``, ``data_scale``,
    ``data_scale_inv``, ``data_log_det``) load into the data map and give the same density."""
    model, _, _ = standardised(build, so2(3))
    old_names = {
        "data_map.loc": "data_loc",
        "data_map.scale": "data_scale",
        "data_map.scale_inv": "data_scale_inv",
        "data_map.log_det": "data_log_det",
    }
    old = {old_names.get(k, k): v for k, v in model.state_dict().items()}
    assert "data_scale" in old and not any(k.startswith("data_map.") for k in old)
    fresh = build(so2(3))
    fresh.load_state_dict(old)  # strict: every old key is placed, none is missing
    for name in ("loc", "scale", "scale_inv", "log_det"):
        torch.testing.assert_close(getattr(fresh.data_map, name), getattr(model.data_map, name), rtol=0, atol=0)
    assert float(fresh.data_map.log_det) != 0.0
    q, p = skewed_data(3, n=16, seed=4), torch.randn(16, 3, dtype=F64)
    with torch.no_grad():
        torch.testing.assert_close(fresh.log_joint(q, p), model.log_joint(q, p), rtol=0, atol=0)
