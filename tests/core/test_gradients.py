"""Gradient paths of the training objective.

* The ELBO's gradient with respect to the encoder is the *pathwise* (reparametrised) gradient: it
  matches a central finite difference taken with common random numbers (the same noise at θ ± h v).
  Drawing momenta with ``sample()`` instead of ``rsample()`` keeps only the ``−log h`` score term and
  fails this by a wide margin.
* The learnable step sizes ε_t receive the gradient a finite difference predicts.
* Contract over model options: after one optimiser step (the last layers start at zero, so the first
  backward pass reaches only them), every parameter of the loss ``−ELBO + λ·C`` has a non-zero,
  finite gradient.
"""

from __future__ import annotations

import pytest
import torch

from lightning_ehf.core import make_ehf, particle_rotations, so2, so3

F64 = torch.float64


def _objective(model, q: torch.Tensor, seed: int, n: int = 3) -> torch.Tensor:
    """Mean ELBO with the momentum noise fixed by ``seed`` (common random numbers)."""
    torch.manual_seed(seed)
    return model.elbo(q, n=n).mean()


def _directional_check(
    model, params: list[torch.nn.Parameter], q: torch.Tensor, h: float = 1e-5
) -> tuple[float, float]:
    """(autograd derivative, central finite difference) of the CRN objective along a random direction."""
    gen = torch.Generator().manual_seed(99)
    direction = [torch.randn(p.shape, generator=gen, dtype=p.dtype) for p in params]
    model.zero_grad()
    _objective(model, q, seed=5).backward()
    analytic = sum(float((p.grad * v).sum()) for p, v in zip(params, direction))
    values = []
    with torch.no_grad():
        for sign in (1.0, -1.0):
            for p, v in zip(params, direction):
                p.add_(sign * h * v)
            values.append(float(_objective(model, q, seed=5)))
            for p, v in zip(params, direction):
                p.sub_(sign * h * v)
    return analytic, (values[0] - values[1]) / (2 * h)


def _randomize_all(model, std: float = 0.3) -> None:
    """Random weights everywhere (encoder included), so no gradient vanishes by initialisation."""
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim > 0:
                p.normal_(0.0, std)


@pytest.mark.parametrize("encoder", ["gaussian", "equivariant"])
def test_elbo_encoder_gradient_is_the_pathwise_gradient(encoder):
    torch.manual_seed(0)
    model = make_ehf(so2(2), blocks=2, leapfrog_steps=2, step_size=0.2, hidden=8, encoder=encoder).to(F64)
    _randomize_all(model)
    q = torch.randn(16, 2, dtype=F64) * 1.5
    params = list(model.encoder.parameters())
    analytic, numeric = _directional_check(model, params, q)
    assert abs(numeric) > 1e-3, "the finite difference is ~0: the check would be vacuous"
    assert analytic == pytest.approx(numeric, rel=1e-5, abs=1e-8), (analytic, numeric)


def test_learnable_step_sizes_get_the_finite_difference_gradient():
    torch.manual_seed(1)
    model = make_ehf(so2(2), blocks=3, leapfrog_steps=2, step_size=0.2, hidden=8, kinetic="quadratic").to(F64)
    _randomize_all(model)
    q = torch.randn(16, 2, dtype=F64)
    steps = [block.log_step for block in model.flow.blocks]
    for t, log_step in enumerate(steps):
        analytic, numeric = _directional_check(model, [log_step], q)
        assert log_step.grad is not None and abs(float(log_step.grad)) > 1e-6, f"block {t}: no step-size gradient"
        assert analytic == pytest.approx(numeric, rel=1e-5, abs=1e-8), (t, analytic, numeric)


def test_fixed_step_sizes_are_buffers_not_parameters():
    model = make_ehf(so2(2), blocks=2, leapfrog_steps=2, hidden=8, learn_step_size=False)
    names = {n for n, _ in model.named_parameters()}
    assert not any("log_step" in n for n in names)
    assert all("log_step" in dict(b.named_buffers()) for b in model.flow.blocks)


CASES = {
    "so2-mlp-gaussian": dict(symmetry=so2(2), kinetic="mlp", encoder="gaussian"),
    "so2-quadratic-equivariant": dict(symmetry=so2(2), kinetic="quadratic", encoder="equivariant"),
    "so2-invariant-mlp": dict(symmetry=so2(2), kinetic="mlp", encoder="equivariant", invariant=True),
    "so3-invariant-quadratic": dict(symmetry=so3(3), kinetic="quadratic", encoder="gaussian", invariant=True),
    "so3-mlp-fixed-step": dict(symmetry=so3(3), kinetic="mlp", encoder="gaussian", learn_step_size=False),
    "particles-invariant": dict(symmetry=particle_rotations(3, 2), kinetic="mlp", encoder="gaussian", invariant=True),
    "four-d-two-planes-tanh": dict(symmetry=so2(4, (2, 3)), kinetic="mlp", encoder="equivariant", activation="tanh"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_every_parameter_gets_gradient_after_one_step(case):
    """The contract every EHF passes: ``−ELBO + λ·C`` reaches every parameter (after one Adam step
    moves the zero-initialised last layers off zero)."""
    kwargs = dict(CASES[case])
    symmetry = kwargs.pop("symmetry")
    torch.manual_seed(3)
    model = make_ehf(symmetry, blocks=2, leapfrog_steps=2, step_size=0.2, hidden=8, **kwargs).to(F64)
    q = torch.randn(32, symmetry.dim, dtype=F64)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)

    def loss() -> torch.Tensor:
        elbo, constraint = model.elbo_and_constraints(q, n=2)
        return -elbo.mean() + 10.0 * constraint.sum()

    loss().backward()
    opt.step()
    opt.zero_grad()
    loss().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not bool(p.grad.abs().sum() > 0)]
    bad = [n for n, p in model.named_parameters() if p.grad is not None and not bool(torch.isfinite(p.grad).all())]
    assert not missing, f"no gradient reaches {missing}"
    assert not bad, f"non-finite gradient in {bad}"


def test_constraint_term_alone_reaches_the_hamiltonians():
    """``C = E{g, H}²`` depends on every potential and kinetic energy: its gradient alone must reach
    them (a residual computed from detached forces would not)."""
    torch.manual_seed(4)
    model = make_ehf(so2(2), blocks=2, leapfrog_steps=2, hidden=8, encoder="gaussian").to(F64)
    _randomize_all(model)
    q = torch.randn(32, 2, dtype=F64)
    _, constraint = model.elbo_and_constraints(q, n=2)
    assert float(constraint.detach().sum()) > 0
    constraint.sum().backward()
    for t, block in enumerate(model.flow.blocks):
        for name, p in block.hamiltonian.named_parameters():
            assert p.grad is not None and bool(p.grad.abs().sum() > 0), f"block {t}: {name} gets no constraint gradient"
