"""Equivariant flow matching (core.flow_matching): the ODE likelihood against a closed form, equivariance of
every vector field and invariance of the density, the sampling ↔ likelihood round trip, the flow-matching
loss at its exact minimiser, and the pairing over group orbits. Float64 where precision is the point."""

from __future__ import annotations

import math

import pytest
import torch
from symmetry_zoo import ZOO
from torch import Tensor, nn

from lightning_ehf.core import symmetries as S
from lightning_ehf.core.flow_matching import (
    BlockRotationAligner,
    BlockRotationVelocity,
    EquivariantFlowMatching,
    MLPVelocity,
    ParticleAligner,
    ParticleVelocity,
    divergence,
    flow_matching_loss,
    make_efm,
    ode_log_prob,
    ode_sample,
    ot_pair,
)
from lightning_ehf.core.frames import CentreOfMassFrame
from lightning_ehf.core.invariants import PairDistanceFeatures

TIGHT = dict(atol=1e-8, rtol=1e-8)


class LinearVelocity(nn.Module):
    """v(x, t) = A x: the flow is x_1 = exp(A) x_0."""

    def __init__(self, a: Tensor) -> None:
        super().__init__()
        self.a = nn.Parameter(a.clone())
        self.dim = a.shape[0]

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        return x @ self.a.T


def _perturbed(model: nn.Module, seed: int = 0, scale: float = 0.1) -> nn.Module:
    """Random weights of a visible size (the EGNN starts near the identity map)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return model


def _dw4_like() -> tuple[EquivariantFlowMatching, S.Symmetry, CentreOfMassFrame]:
    """4 identical particles in 2-D, centre-of-mass-free coordinates (as dw4)."""
    frame = CentreOfMassFrame(4, 2)
    full = S.particle_rotations(4, 2)
    from dataclasses import replace

    symmetry = frame.restrict(replace(full, invariants=PairDistanceFeatures(4, 2)))
    model = make_efm(symmetry, particles=(4, 2), identical=True, basis=frame.basis, hidden=16, layers=2, **TIGHT)
    return _perturbed(model.double()), symmetry, frame


def _relabel(x: Tensor, perm: list[int], n: int) -> Tensor:
    return x.reshape(x.shape[0], n, -1)[:, perm].reshape(x.shape)


def test_linear_field_likelihood_equals_the_gaussian_closed_form():
    g = torch.Generator().manual_seed(0)
    a = 0.5 * torch.randn(3, 3, generator=g, dtype=torch.float64)
    field = LinearVelocity(a)
    x = torch.randn(16, 3, generator=g, dtype=torch.float64)
    base = lambda z: -0.5 * z.square().sum(-1) - 1.5 * math.log(2 * math.pi)  # noqa: E731
    logp, nfe = ode_log_prob(field, x, base, atol=1e-10, rtol=1e-10)
    m = torch.linalg.matrix_exp(a)
    closed = torch.distributions.MultivariateNormal(torch.zeros(3, dtype=torch.float64), m @ m.T).log_prob(x)
    assert float((logp - closed).abs().max()) < 1e-4
    assert nfe > 6  # an adaptive solve, counted


def test_divergence_is_exact_and_hutchinson_is_unbiased():
    g = torch.Generator().manual_seed(1)
    a = torch.randn(5, 5, generator=g, dtype=torch.float64)
    x = torch.randn(4000, 5, generator=g, dtype=torch.float64, requires_grad=True)
    field = lambda y: torch.tanh(y @ a.T)  # noqa: E731
    v = field(x).detach()
    jac = (1 - v.square())[:, :, None] * a  # ∂v_i/∂x_j
    exact = torch.diagonal(jac, dim1=1, dim2=2).sum(-1)
    assert float((divergence(field(x), x) - exact).abs().max()) < 1e-12
    noise = torch.randint(0, 2, x.shape, generator=g).double() * 2 - 1
    estimate = divergence(field(x), x, noise)
    assert float((estimate - exact).abs().max()) > 1e-3  # noisy per row ...
    assert abs(float((estimate - exact).mean())) < 4 * float((estimate - exact).std()) / math.sqrt(
        x.shape[0]
    )  # ... unbiased


def test_large_dimension_uses_hutchinson_and_says_so():
    small = make_efm(S.no_symmetry(8), hidden=8)
    large = make_efm(S.no_symmetry(65), hidden=8)
    assert small.exact_divergence and not large.exact_divergence


def _check_field_equivariance(field: nn.Module, symmetry: S.Symmetry, seed: int = 0) -> float:
    g = torch.Generator().manual_seed(seed)
    x = 2 * torch.randn(32, symmetry.dim, generator=g, dtype=torch.float64)
    t = torch.rand(32, generator=g, dtype=torch.float64)
    elem = symmetry.sample(32, g, dtype=torch.float64)
    rotated = field(elem.act_q(x), t)
    expected = torch.einsum("nij,nj->ni", elem.matrix, field(x, t))
    assert float(field(x, t).detach().abs().mean()) > 1e-2  # the field is not trivially zero
    return float((rotated - expected).detach().abs().max())


@pytest.mark.parametrize("case", ["so2_plane02_in_3d", "so3", "planes4"])
def test_block_rotation_field_is_equivariant(case):
    symmetry = ZOO[case]
    field = _perturbed(
        BlockRotationVelocity(symmetry.dim, symmetry.rotation_blocks, symmetry.invariants, 16, 2).double()
    )
    assert _check_field_equivariance(field, symmetry) < 1e-5


def test_particle_field_is_equivariant_under_rotation_and_relabelling_in_the_com_frame():
    model, symmetry, frame = _dw4_like()
    assert _check_field_equivariance(model.field, symmetry) < 1e-5
    g = torch.Generator().manual_seed(3)
    x = 2 * torch.randn(16, 8, generator=g, dtype=torch.float64)
    t = torch.rand(16, generator=g, dtype=torch.float64)
    z, zp = frame.to_subspace(x), frame.to_subspace(_relabel(x, [2, 0, 3, 1], 4))
    v = frame.from_subspace(model.field(z, t)).detach()
    vp = frame.from_subspace(model.field(zp, t)).detach()
    assert float((vp - _relabel(v, [2, 0, 3, 1], 4)).abs().max()) < 1e-5
    assert float(v.reshape(16, 4, 2).sum(1).abs().max()) < 1e-12  # no drift of the centre of mass


def test_labelled_particle_field_is_rotation_equivariant_but_tells_particles_apart():
    symmetry = S.particle_rotations(3, 2)
    field = _perturbed(ParticleVelocity(3, 2, 16, 2, identical=False).double())
    assert _check_field_equivariance(field, symmetry) < 1e-5
    g = torch.Generator().manual_seed(4)
    x = 2 * torch.randn(16, 6, generator=g, dtype=torch.float64)
    t = torch.rand(16, generator=g, dtype=torch.float64)
    swapped = field(_relabel(x, [1, 0, 2], 3), t).detach()
    assert float((swapped - _relabel(field(x, t).detach(), [1, 0, 2], 3)).abs().max()) > 1e-3
    # the group is SO(2), not O(2): a mirror image is not mapped like a rotation
    mirror = torch.tensor([1.0, -1.0], dtype=torch.float64).repeat(3)
    assert float((field(x * mirror, t) - field(x, t) * mirror).detach().abs().max()) > 1e-3


def test_density_is_invariant_under_rotations_relabelling_and_translation():
    model, symmetry, frame = _dw4_like()
    g = torch.Generator().manual_seed(5)
    x = 2 * torch.randn(12, 8, generator=g, dtype=torch.float64)
    logp = model.log_prob(frame.to_subspace(x))
    rot = S.particle_rotations(4, 2).sample(12, g, dtype=torch.float64)
    moved = _relabel(rot.act_q(x), [3, 1, 0, 2], 4) + torch.tensor([0.7, -1.3], dtype=torch.float64).repeat(4)
    logp_moved = model.log_prob(frame.to_subspace(moved))
    assert float(logp.std()) > 0.1  # a density that varies
    assert float((logp - logp_moved).abs().max()) < 1e-6


def test_density_is_invariant_under_plane_rotations():
    symmetry = S.so2(3, (0, 1))
    model = _perturbed(make_efm(symmetry, hidden=16, **TIGHT).double())
    g = torch.Generator().manual_seed(6)
    x = torch.randn(12, 3, generator=g, dtype=torch.float64)
    elem = symmetry.sample(12, g, dtype=torch.float64)
    assert float((model.log_prob(x) - model.log_prob(elem.act_q(x))).abs().max()) < 1e-6


def test_sampling_and_likelihood_round_trip():
    """x_1 = Φ(x_0) by the sampling ODE; the likelihood ODE run back from x_1 must give
    log p_0(x_0) − ∫_0^1 ∇·v dt along the same path (computed forwards here)."""
    from torchdiffeq import odeint

    model, _, _ = _dw4_like()
    g = torch.Generator().manual_seed(7)
    x0 = torch.randn(10, 6, generator=g, dtype=torch.float64)
    x1, _ = ode_sample(model.field, x0, **TIGHT)

    def forward(t, state):
        with torch.enable_grad():
            x = state[0].detach().requires_grad_(True)
            v = model.field(x, t)
            return v.detach(), -divergence(v, x).detach()

    times = torch.tensor([0.0, 1.0], dtype=torch.float64)
    with torch.no_grad():
        xs, ls = odeint(forward, (x0, torch.zeros(10, dtype=torch.float64)), times, method="dopri5", **TIGHT)
    assert float((xs[-1] - x1).abs().max()) < 1e-7
    expected = model.base_log_prob(x0) + ls[-1]
    assert float((model.log_prob(x1) - expected).abs().max()) < 1e-6
    assert float((x1 - x0).abs().max()) > 0.1  # the flow moves the points


def test_flow_matching_loss_of_the_exact_field_on_a_known_pair_is_zero():
    g = torch.Generator().manual_seed(8)
    x0, x1 = torch.randn(1, 4, generator=g, dtype=torch.float64), torch.randn(1, 4, generator=g, dtype=torch.float64)
    t = torch.rand(1, generator=g, dtype=torch.float64)
    exact = lambda x, s: (x1 - x0).expand_as(x)  # noqa: E731  the straight path's velocity
    assert float(flow_matching_loss(exact, x0, x1, t)) == 0.0
    assert float(flow_matching_loss(lambda x, s: torch.zeros_like(x), x0, x1, t)) == pytest.approx(
        float((x1 - x0).square().sum())
    )


def test_ot_pairing_recovers_a_shuffled_shift():
    g = torch.Generator().manual_seed(9)
    x0 = 5 * torch.randn(32, 3, generator=g, dtype=torch.float64)
    perm = torch.randperm(32, generator=g)
    x1 = x0[perm] + 0.01
    assert torch.equal(ot_pair(x0, x1), x0[perm])


def test_particle_alignment_undoes_rotation_and_relabelling():
    frame = CentreOfMassFrame(4, 2)
    g = torch.Generator().manual_seed(10)
    x = frame.from_subspace(2 * torch.randn(6, 6, generator=g, dtype=torch.float64))
    rot = S.particle_rotations(4, 2).sample(6, g, dtype=torch.float64)
    y = _relabel(rot.act_q(x), [1, 3, 0, 2], 4)  # base points: the data moved along their orbits
    aligner = ParticleAligner(4, 2, identical=True, basis=frame.basis)
    cost, aligned = aligner(frame.to_subspace(y), frame.to_subspace(x))
    diagonal = torch.arange(6)
    assert float(cost[diagonal, diagonal].max()) < 1e-12
    assert float((aligned[diagonal, diagonal] - frame.to_subspace(x)).abs().max()) < 1e-9
    paired = ot_pair(frame.to_subspace(y), frame.to_subspace(x), aligner)
    assert float((paired - frame.to_subspace(x)).abs().max()) < 1e-9


def test_block_rotation_alignment_keeps_norms_and_takes_the_data_direction():
    aligner = BlockRotationAligner(3, [[0, 1]])
    x0 = torch.tensor([[3.0, 4.0, 1.0]], dtype=torch.float64)
    x1 = torch.tensor([[0.0, 2.0, -1.0]], dtype=torch.float64)
    cost, aligned = aligner(x0, x1)
    assert torch.allclose(aligned[0, 0], torch.tensor([0.0, 5.0, 1.0], dtype=torch.float64))
    assert float(cost[0, 0]) == pytest.approx((5 - 2) ** 2 + 2**2)


def test_training_lowers_the_loss_and_fits_a_gaussian():
    """Two hundred Adam steps of flow matching on N(μ, diag) data come within 0.1 nat of its entropy."""
    torch.manual_seed(0)
    model = make_efm(S.no_symmetry(2), hidden=32, depth=2, atol=1e-5, rtol=1e-5)
    assert isinstance(model.field, MLPVelocity)
    scale, shift = torch.tensor([0.5, 1.5]), torch.tensor([1.0, -2.0])
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(200):
        loss = model.flow_matching_loss(torch.randn(128, 2) * scale + shift)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    x = torch.randn(1000, 2) * scale + shift
    nll = float(-model.log_prob(x).mean())
    entropy = float(torch.log(scale).sum() + math.log(2 * math.pi * math.e))
    assert sum(losses[-50:]) / 50 < 0.5 * sum(losses[:10]) / 10
    assert nll - entropy < 0.1, (nll, entropy)  # the untrained flow (about N(0, I)) is 2.4 nats off
    assert model.last_nfe > 0


def test_unsupported_group_is_refused():
    with pytest.raises(ValueError, match="no equivariant vector field"):
        make_efm(S.from_matrices([[[0.0, 1.0], [-1.0, 0.0]]]))
