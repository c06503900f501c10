"""Centre-of-mass-free coordinates and identical particles (core/frames.py), against closed forms."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from lightning_ehf.core import particle_rotations, so2
from lightning_ehf.core.frames import CentreOfMassFrame, permute_particles
from lightning_ehf.core.invariants import PairDistanceFeatures

F64 = torch.float64


@pytest.mark.parametrize("n, dim", [(2, 2), (3, 2), (4, 2), (5, 3)])
def test_frame_is_an_orthonormal_basis_of_the_centre_of_mass_free_subspace(n, dim):
    frame = CentreOfMassFrame(n, dim)
    basis = frame.basis
    assert basis.shape == (n * dim, (n - 1) * dim)
    assert torch.allclose(basis.T @ basis, torch.eye((n - 1) * dim, dtype=F64), atol=1e-12)
    x = torch.randn(7, n * dim, dtype=F64)
    shift = torch.randn(7, dim, dtype=F64).repeat(1, n)  # the same translation for every particle
    z = frame.to_subspace(x)
    assert torch.allclose(frame.to_subspace(x + shift), z, atol=1e-12)  # translations vanish
    centred = (x.reshape(7, n, dim) - x.reshape(7, n, dim).mean(1, keepdim=True)).reshape(7, n * dim)
    assert torch.allclose(frame.from_subspace(z), centred, atol=1e-12)  # B Bᵀ = centring
    assert torch.allclose(frame.to_subspace(frame.from_subspace(z)), z, atol=1e-12)


def test_restricted_rotations_act_on_subspace_coordinates_as_on_the_particles():
    frame = CentreOfMassFrame(4, 2)
    full = particle_rotations(4, 2)
    sym = frame.restrict(full)
    assert sym.dim == 6 and sym.num_generators == 1
    a = sym.matrices[0]
    assert torch.allclose(a, -a.T, atol=1e-12)  # still a rotation generator: the Gaussian base stays invariant
    assert torch.allclose(torch.linalg.matrix_exp(2 * torch.pi * a), torch.eye(6, dtype=F64), atol=1e-9)
    x = torch.randn(5, 8, dtype=F64)
    g = full.sample(5, torch.Generator().manual_seed(0), F64)
    g_sub = sym.sample(5, torch.Generator().manual_seed(0), F64)
    # the same draw: acting then projecting equals projecting then acting
    assert torch.allclose(frame.to_subspace(g.act_q(x)), g_sub.act_q(frame.to_subspace(x)), atol=1e-12)
    assert torch.allclose(
        g_sub.matrix @ g_sub.matrix.transpose(-1, -2), torch.eye(6, dtype=F64).expand(5, 6, 6), atol=1e-12
    )
    # generator: d/dt of the action equals the restricted vector field
    q = torch.randn(3, 6, dtype=F64)
    t = 1e-6
    moved = frame.to_subspace(frame.from_subspace(q) @ torch.linalg.matrix_exp(t * full.matrices[0]).T)
    assert torch.allclose((moved - q) / t, sym.vector_field_q(q)[:, 0], atol=1e-5)


def test_restrict_refuses_a_group_that_moves_one_particle_only():
    frame = CentreOfMassFrame(3, 2)
    with pytest.raises(ValueError, match="does not preserve the centre-of-mass-free subspace"):
        frame.restrict(so2(6, (0, 1)))


def test_restricted_invariants_are_the_particles_features_with_their_pullback():
    frame = CentreOfMassFrame(3, 2)
    sym = frame.restrict(particle_rotations(3, 2))
    z = torch.randn(4, 4, dtype=F64, requires_grad=True)
    feats = sym.invariants(z)
    gram = frame.from_subspace(z).reshape(4, 3, 2) @ frame.from_subspace(z).reshape(4, 3, 2).transpose(-1, -2)
    rows, cols = torch.triu_indices(3, 3)
    assert torch.allclose(feats, gram[:, rows, cols])
    weights = torch.randn_like(feats)
    (auto,) = torch.autograd.grad((feats * weights).sum(), z)
    assert torch.allclose(sym.invariants.pullback(z.detach(), weights), auto, atol=1e-12)


@pytest.mark.parametrize("n, dim", [(3, 2), (4, 2), (4, 3)])
def test_pair_distance_features_are_invariant_and_their_pullback_is_exact(n, dim):
    feats = PairDistanceFeatures(n, dim, n_bins=12, max_distance=4.0)
    x = 1.5 * torch.randn(6, n * dim, dtype=F64, requires_grad=True)
    f = feats(x)
    assert f.shape == (6, 24)
    rot = particle_rotations(n, dim).sample(6, torch.Generator().manual_seed(1), F64)
    relabelled = permute_particles(x.detach(), n, torch.Generator().manual_seed(2))
    assert not torch.allclose(relabelled, x.detach())
    assert torch.allclose(feats(rot.act_q(x.detach())), f.detach(), atol=1e-10)
    assert torch.allclose(feats(relabelled), f.detach(), atol=1e-10)
    weights = torch.randn_like(f)
    (auto,) = torch.autograd.grad((f * weights).sum(), x)
    assert torch.allclose(feats.pullback(x.detach(), weights), auto, atol=1e-10)
    # the pair part alone is translation invariant (the norms are not)
    shifted = x.detach() + torch.randn(6, dim, dtype=F64).repeat(1, n)
    assert torch.allclose(feats(shifted)[:, :12], f.detach()[:, :12], atol=1e-10)
    assert not torch.allclose(feats(shifted)[:, 12:], f.detach()[:, 12:], atol=1e-3)


def test_permutation_invariant_hamiltonians_give_a_relabelling_equivariant_flow(build):
    """Lemma 1 for the relabelling of identical particles: H(Πq, Πp) = H(q, p) makes the flow
    commute with Π, in centre-of-mass-free coordinates too. Gram features (not relabelling invariant)
    break it, so the check can fail."""
    n, dim = 4, 2
    frame = CentreOfMassFrame(n, dim)
    base = particle_rotations(n, dim)
    perm_sym = frame.restrict(replace(base, invariants=PairDistanceFeatures(n, dim)))
    gram_sym = frame.restrict(base)
    q = frame.to_subspace(2.0 * torch.randn(8, n * dim, dtype=F64))
    p = frame.to_subspace(torch.randn(8, n * dim, dtype=F64))

    def relabel(z: torch.Tensor) -> torch.Tensor:
        x = frame.from_subspace(z).reshape(8, n, dim)
        return frame.to_subspace(x[:, [2, 0, 3, 1]].reshape(8, n * dim))

    errors = {}
    for name, sym in (("pairs", perm_sym), ("gram", gram_sym)):
        torch.manual_seed(0)
        model = build(sym, blocks=3, leapfrog_steps=4, kinetic="mlp", invariant=True)
        with torch.no_grad():
            fq, fp = model.flow(relabel(q), relabel(p))
            gq, gp = model.flow(q, p)
            errors[name] = max((fq - relabel(gq)).abs().max().item(), (fp - relabel(gp)).abs().max().item())
            moved = (gq - q).abs().max().item()
        assert moved > 0.1
    assert errors["pairs"] <= 1e-10, errors
    assert errors["gram"] > 1e-4, errors


def test_permute_particles_moves_whole_particles():
    x = torch.arange(12.0).reshape(2, 6)  # 2 rows of 3 particles in 2-D
    out = permute_particles(x, 3, torch.Generator().manual_seed(0))
    for row_in, row_out in zip(x.reshape(2, 3, 2), out.reshape(2, 3, 2)):
        assert sorted(map(tuple, row_in.tolist())) == sorted(map(tuple, row_out.tolist()))
