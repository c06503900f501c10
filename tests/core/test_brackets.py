"""Poisson brackets: canonical relations, conservation laws, and the cached-force residuals the
flow reports against the autograd bracket at the very states it visits."""

from __future__ import annotations

import pytest
import torch
from symmetry_zoo import groups

from lightning_ehf.core import (
    from_matrices,
    momentum_map_bracket,
    particle_rotations,
    poisson_bracket,
    rotation_plane,
    so3,
    translation,
)

F64 = torch.float64


def coord(i: int, which: str):
    return (lambda q, p: q[..., i]) if which == "q" else (lambda q, p: p[..., i])


def test_canonical_brackets():
    d = 3
    q, p = torch.randn(7, d, dtype=F64), torch.randn(7, d, dtype=F64)
    for i in range(d):
        for j in range(d):
            qp = poisson_bracket(coord(i, "q"), coord(j, "p"), q, p)
            pq = poisson_bracket(coord(i, "p"), coord(j, "q"), q, p)
            qq = poisson_bracket(coord(i, "q"), coord(j, "q"), q, p)
            pp = poisson_bracket(coord(i, "p"), coord(j, "p"), q, p)
            torch.testing.assert_close(qp, torch.full_like(qp, float(i == j)), rtol=0, atol=0)
            torch.testing.assert_close(pq, torch.full_like(pq, -float(i == j)), rtol=0, atol=0)
            assert qq.abs().max() == 0 and pp.abs().max() == 0
    # a constant has zero bracket with everything
    const = lambda q, p: torch.full(q.shape[:-1], 3.0, dtype=q.dtype)  # noqa: E731
    assert poisson_bracket(const, coord(0, "p"), q, p).abs().max() == 0


def test_bracket_is_antisymmetric_and_satisfies_jacobi_and_leibniz():
    q, p = torch.randn(5, 2, dtype=F64), torch.randn(5, 2, dtype=F64)
    f = lambda q, p: torch.sin(q[..., 0]) * p[..., 1] + q[..., 1] ** 2  # noqa: E731
    g = lambda q, p: p[..., 0] ** 3 + q[..., 0] * q[..., 1] * p[..., 0]  # noqa: E731
    h = lambda q, p: torch.exp(0.3 * p[..., 1]) + q[..., 0] * p[..., 1]  # noqa: E731
    torch.testing.assert_close(poisson_bracket(f, g, q, p), -poisson_bracket(g, f, q, p), rtol=0, atol=1e-12)

    def br(a, b):
        return lambda q, p: poisson_bracket(a, b, q, p, create_graph=True)

    terms = [poisson_bracket(f, br(g, h), q, p), poisson_bracket(g, br(h, f), q, p), poisson_bracket(h, br(f, g), q, p)]
    # nested brackets are genuinely computed (a bracket that lost its dependence on (q, p) would
    # make every term, hence the identity, vacuously zero)
    assert min(t.abs().max().item() for t in terms) > 1e-2
    assert (terms[0] + terms[1] + terms[2]).abs().max() < 1e-10
    fg = lambda q, p: f(q, p) * g(q, p)  # noqa: E731
    leibniz = poisson_bracket(fg, h, q, p) - (
        f(q, p) * poisson_bracket(g, h, q, p) + g(q, p) * poisson_bracket(f, h, q, p)
    )
    assert leibniz.abs().max() < 1e-10
    # and it is not identically zero (the identities above are not vacuous)
    assert poisson_bracket(f, g, q, p).abs().max() > 1e-2


def test_angular_momentum_is_conserved_by_isotropic_oscillator_and_not_by_anisotropic():
    q, p = torch.randn(9, 3, dtype=F64), torch.randn(9, 3, dtype=F64)
    sym = so3(3)
    iso = lambda q, p: 0.5 * q.square().sum(-1) + 0.5 * p.square().sum(-1)  # noqa: E731
    aniso = lambda q, p: (
        0.5 * (q * torch.tensor([1.0, 2.0, 3.0], dtype=F64)).square().sum(-1) + 0.5 * p.square().sum(-1)
    )  # noqa: E731
    for k in range(sym.num_generators):
        lk = lambda q, p, k=k: sym.momentum_maps(q, p)[..., k]  # noqa: E731
        assert poisson_bracket(lk, iso, q, p).abs().max() < 1e-12
        assert poisson_bracket(lk, aniso, q, p).abs().max() > 1e-2
    # explicit L_z = q_x p_y − q_y p_x as well
    lz = lambda q, p: q[..., 0] * p[..., 1] - q[..., 1] * p[..., 0]  # noqa: E731
    assert poisson_bracket(lz, iso, q, p).abs().max() < 1e-12


def test_angular_momenta_close_the_so3_algebra():
    """{L_01, L_02} = ±L_12 etc.: the momentum maps represent the Lie algebra (brackets of
    generators are generators), a non-trivial check of the sign conventions."""
    sym = so3(3)
    q, p = torch.randn(6, 3, dtype=F64), torch.randn(6, 3, dtype=F64)
    maps = [lambda q, p, k=k: sym.momentum_maps(q, p)[..., k] for k in range(3)]
    values = sym.momentum_maps(q, p)
    for a, b, c in [(0, 1, 2), (0, 2, 1), (1, 2, 0)]:
        bracket = poisson_bracket(maps[a], maps[b], q, p)
        # matches the matrix commutator: {g_A, g_B} = pᵀ(AB − BA)q = g_[A, B]  for g_A = pᵀ A q
        comm = sym.matrices[a] @ sym.matrices[b] - sym.matrices[b] @ sym.matrices[a]
        expected = torch.einsum("ni,ij,nj->n", p, comm, q)
        torch.testing.assert_close(bracket, expected, rtol=0, atol=1e-12)
        assert torch.allclose(bracket.abs(), values[:, c].abs(), atol=1e-12)


def test_momentum_maps_match_explicit_formula():
    d, i, j = 4, 1, 3
    q, p = torch.randn(10, d, dtype=F64), torch.randn(10, d, dtype=F64)
    g = rotation_plane(d, i, j).momentum_maps(q, p)
    assert g.shape == (10, 1)
    torch.testing.assert_close(g[:, 0], q[:, i] * p[:, j] - q[:, j] * p[:, i], rtol=0, atol=1e-14)
    # particle rotations: total angular momentum Σ_a (x_a p_{a,y} − y_a p_{a,x})
    gp = particle_rotations(2, 2).momentum_maps(q, p)[:, 0]
    torch.testing.assert_close(
        gp, q[:, 0] * p[:, 1] - q[:, 1] * p[:, 0] + q[:, 2] * p[:, 3] - q[:, 3] * p[:, 2], rtol=0, atol=1e-14
    )
    # translation: g = p · v
    gt = translation(d, [1.0, 0.0, -2.0, 0.5]).momentum_maps(q, p)[:, 0]
    torch.testing.assert_close(gt, p @ torch.tensor([1.0, 0.0, -2.0, 0.5], dtype=F64), rtol=0, atol=1e-14)


@pytest.mark.parametrize(
    "sym",
    [so3(3), translation(3, [0.5, -1.0, 2.0]), from_matrices([[[1.0, 2.0, 0.0], [0.0, -1.0, 3.0], [1.0, 0.0, 0.5]]])],
    ids=["so3", "translation", "general"],
)
def test_hamiltonian_vector_field_of_momentum_map_is_the_generator(sym):
    """(∂g/∂p, −∂g/∂q) = (A q + b, −Aᵀ p): the lifted action's vector field."""
    q, p = torch.randn(4, 3, dtype=F64), torch.randn(4, 3, dtype=F64)
    for k in range(sym.num_generators):
        q_, p_ = q.clone().requires_grad_(True), p.clone().requires_grad_(True)
        dq, dp = torch.autograd.grad(sym.momentum_maps(q_, p_)[..., k].sum(), (q_, p_))
        torch.testing.assert_close(dp, sym.vector_field_q(q)[:, k], rtol=0, atol=1e-13)
        torch.testing.assert_close(-dq, sym.vector_field_p(p)[:, k], rtol=0, atol=1e-13)


@pytest.mark.parametrize(
    "sym",
    [so3(3), translation(3, [0.5, -1.0, 2.0]), from_matrices([[[1.0, 2.0, 0.0], [0.0, -1.0, 3.0], [1.0, 0.0, 0.5]]])],
    ids=["so3", "translation", "general"],
)
def test_closed_form_bracket_matches_autograd_for_analytic_hamiltonian(sym):
    """momentum_map_bracket (and Symmetry.bracket_with_separable) vs autograd {g_k, K + U}."""
    w = torch.tensor([0.3, -1.2, 0.7], dtype=F64)
    U = lambda q: torch.sin(q @ w) + 0.25 * q.pow(4).sum(-1)  # noqa: E731
    K = lambda p: 0.5 * p.square().sum(-1) + torch.cosh(p[..., 0] - 0.5 * p[..., 2])  # noqa: E731
    H = lambda q, p: K(p) + U(q)  # noqa: E731
    q, p = torch.randn(6, 3, dtype=F64), torch.randn(6, 3, dtype=F64)
    q_, p_ = q.clone().requires_grad_(True), p.clone().requires_grad_(True)
    (grad_u,) = torch.autograd.grad(U(q_).sum(), q_)
    (grad_k,) = torch.autograd.grad(K(p_).sum(), p_)
    closed = momentum_map_bracket(sym.matrices, sym.offsets, q, p, grad_u, grad_k)
    torch.testing.assert_close(closed, sym.bracket_with_separable(q, p, grad_u, grad_k), rtol=0, atol=0)
    for k in range(sym.num_generators):
        auto = poisson_bracket(lambda q, p, k=k: sym.momentum_maps(q, p)[..., k], H, q, p)
        torch.testing.assert_close(closed[:, k], auto, rtol=0, atol=1e-12)
        assert auto.abs().max() > 1e-2


SYMMETRIES = groups("so2", "so3", "particles3x2", "planes4")


@pytest.mark.parametrize("kinetic", ["quadratic", "mlp"])
@pytest.mark.parametrize("name", list(SYMMETRIES))
def test_cached_residuals_equal_autograd_bracket_at_visited_states(build, name, kinetic):
    sym = SYMMETRIES[name]
    d, k = sym.dim, sym.num_generators
    model = build(sym, blocks=3, leapfrog_steps=3, kinetic=kinetic)
    q, p = torch.randn(5, d, dtype=F64), torch.randn(5, d, dtype=F64)
    with torch.no_grad():
        cached = model.bracket_residuals(q, p)  # (S, 5, k)
    n_blocks, n_steps = len(model.flow.blocks), model.flow.blocks[0].n_steps
    assert cached.shape == (2 * n_blocks * n_steps, 5, k)

    visited, autograd, closed = [], [], []

    class Recorder:  # duck-types ConstraintStats for one block: sees every visited state
        record = None

        def __init__(self, t):
            self.ham = model.flow.blocks[t].hamiltonian

        def on_state(self, qs, ps, grad_u, grad_k):
            visited.append((qs.clone(), ps.clone()))
            closed.append(momentum_map_bracket(sym.matrices.to(qs), sym.offsets.to(qs), qs, ps, grad_u, grad_k))
            autograd.append(
                torch.stack(
                    [
                        poisson_bracket(lambda a, b, j=j: sym.momentum_maps(a, b)[..., j], self.ham, qs, ps)
                        for j in range(k)
                    ],
                    -1,
                )
            )

    with torch.no_grad():
        qs, ps = q, p
        for t in reversed(range(n_blocks)):  # the density direction, as log_joint integrates
            qs, ps = model.flow.blocks[t].integrate(qs, ps, reverse=True, create_graph=False, stats=Recorder(t))
    autograd, closed = torch.stack(autograd), torch.stack(closed)
    assert len(visited) == cached.shape[0]
    # the visited states are distinct (the callback sees the trajectory, not one point repeated)
    assert (visited[0][0] - visited[-1][0]).abs().max() > 0.1
    err = (cached - autograd).abs().max().item()
    assert err <= 1e-10, f"cached residuals differ from the autograd bracket by {err:.3e}"
    torch.testing.assert_close(closed, cached, rtol=0, atol=1e-12)
    # the random Hamiltonian is not symmetric: residuals are far from zero
    assert autograd.abs().max() > 1e-2

    # the mean squared residual the Lagrangian uses is exactly the mean over those states
    stats = model._stats()
    with torch.no_grad():
        model.log_joint(q, p, stats)
    torch.testing.assert_close(stats.mean_square(), autograd.square().mean((0, 1)), rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("name", list(SYMMETRIES))
def test_invariant_hamiltonians_have_zero_residuals(build, name):
    sym = SYMMETRIES[name]
    model = build(sym, blocks=2, leapfrog_steps=3, kinetic="mlp", invariant=True)
    q, p = torch.randn(5, sym.dim, dtype=F64), torch.randn(5, sym.dim, dtype=F64)
    with torch.no_grad():
        res = model.bracket_residuals(q, p)
    assert res.abs().max().item() <= 1e-10
    # while the Hamiltonian itself is non-trivial (forces are large)
    pot = model.flow.blocks[0].hamiltonian.potential
    assert pot.grad(q, False).abs().max() > 1e-2
