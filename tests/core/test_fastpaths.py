"""The fast paths agree with the reference path (float64 unless stated).

* Closed-form forces equal autograd forces for every energy kind (identity and invariant features,
  quadratic part, each activation), and whole models give the same log-likelihoods, bracket residuals
  and parameter gradients (max relative difference ≤ 1e-6).
* The reversible (memory-flat) backward gives the gradients of the stored-state backward, constraint
  term and step sizes included; it stores nothing per leapfrog step (saved-tensor bytes do not grow
  with L), while the stored path does.
* Evaluation builds no autograd graph on the analytic path, and evaluating the rows in cache-sized slices
  gives the log-likelihoods of one pass over all rows.
* A failing ``torch.compile`` falls back to eager evaluation with a warning.
"""

from __future__ import annotations

import pytest
import torch

from lightning_ehf.core import MLPEnergy, make_ehf, particle_rotations, so2, so3
from lightning_ehf.core.hamiltonians import set_force_path

F64 = torch.float64


def _randomized(model: torch.nn.Module, std: float = 0.4, seed: int = 0) -> torch.nn.Module:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for prm in model.parameters():
            if prm.ndim > 0:
                prm.copy_(torch.randn(prm.shape, generator=gen, dtype=prm.dtype) * std)
    return model


ENERGIES = {
    "softplus": dict(dim=3, activation="softplus"),
    "tanh": dict(dim=3, activation="tanh"),
    "silu-quadratic": dict(dim=3, activation="silu", quadratic_part=True),
    "depth3": dict(dim=4, depth=3),
    "block-invariants": dict(dim=3, features=so3(3).invariants),
    "two-planes": dict(dim=5, features=so2(5, (1, 3)).invariants),
    "gram": dict(dim=6, features=particle_rotations(3, 2).invariants, quadratic_part=True),
}


@pytest.mark.parametrize("name", sorted(ENERGIES))
def test_closed_form_force_equals_autograd(name):
    kwargs = dict(ENERGIES[name])
    dim = kwargs.pop("dim")
    energy = _randomized(MLPEnergy(dim, hidden=12, **kwargs).to(F64), std=0.5)
    x = torch.randn(7, 5, dim, dtype=F64)
    analytic = energy.grad(x, create_graph=False)
    energy.force_path = "autograd"
    reference = energy.grad(x, create_graph=False)
    # torch's softplus is exactly linear above its threshold (β·a > 20); the closed form uses sigmoid(a)
    # there, which differs from 1 by < 2e-9: the only difference allowed
    torch.testing.assert_close(analytic, reference, rtol=1e-8, atol=1e-12)
    assert reference.abs().max() > 1e-2


MODELS = {
    "so2-mlp": dict(symmetry=so2(2), kinetic="mlp", encoder="equivariant"),
    "so3-quadratic": dict(symmetry=so3(3), kinetic="quadratic", encoder="gaussian"),
    "particles-invariant": dict(symmetry=particle_rotations(3, 2), kinetic="mlp", invariant=True, encoder="gaussian"),
}


def _model(case: str, **extra) -> torch.nn.Module:
    kwargs = {**MODELS[case], **extra}
    symmetry = kwargs.pop("symmetry")
    torch.manual_seed(0)
    model = make_ehf(symmetry, blocks=2, leapfrog_steps=3, step_size=0.2, hidden=12, **kwargs).to(F64)
    return _randomized(model)


def _loss_and_grads(model, q: torch.Tensor, seed: int = 3):
    model.zero_grad()
    torch.manual_seed(seed)
    elbo, constraint = model.elbo_and_constraints(q, n=2)
    loss = -elbo.mean() + 5.0 * constraint.sum()
    loss.backward()
    return loss.detach(), constraint.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


def _max_relative(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return max(float((a[n] - b[n]).abs().max() / b[n].abs().max().clamp_min(1e-300)) for n in b)


@pytest.mark.parametrize("case", sorted(MODELS))
def test_analytic_model_matches_reference_path(case):
    model = _model(case)
    q = torch.randn(24, model.dim, dtype=F64)
    p = torch.randn(24, model.dim, dtype=F64)
    results = {}
    for path in ("analytic", "autograd"):
        set_force_path(model, path)
        with torch.no_grad():
            torch.manual_seed(1)
            iwae = model.iwae(q, k=16, chunk=8)
            residuals = model.bracket_residuals(q, p)
        results[path] = (iwae, residuals, *_loss_and_grads(model, q))
    fast, ref = results["analytic"], results["autograd"]
    torch.testing.assert_close(fast[0], ref[0], rtol=1e-8, atol=1e-10)  # log-likelihoods
    torch.testing.assert_close(fast[1], ref[1], rtol=1e-8, atol=1e-10)  # bracket residuals
    torch.testing.assert_close(fast[2], ref[2], rtol=1e-8, atol=1e-10)  # the Lagrangian
    assert _max_relative(fast[4], ref[4]) <= 1e-6


@pytest.mark.parametrize("learn_step_size", [True, False])
@pytest.mark.parametrize("case", sorted(MODELS))
def test_reversible_backward_matches_stored_states(case, learn_step_size):
    model = _model(case, learn_step_size=learn_step_size)
    q = torch.randn(24, model.dim, dtype=F64)
    results = {}
    for reversible in (False, True):
        for block in model.flow.blocks:
            block.reversible = reversible
        results[reversible] = _loss_and_grads(model, q)
    stored, rev = results[False], results[True]
    torch.testing.assert_close(rev[0], stored[0], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(rev[1], stored[1], rtol=1e-12, atol=1e-14)
    assert _max_relative(rev[2], stored[2]) <= 1e-6
    if learn_step_size:
        assert all(float(b.log_step.grad.abs()) > 0 for b in model.flow.blocks)


def _saved_bytes(fn) -> int:
    """Bytes of the tensors autograd saves for the backward pass while ``fn`` runs."""
    total = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return total


@pytest.mark.parametrize("reversible", [False, True])
def test_saved_state_grows_with_steps_only_without_the_reversible_backward(reversible):
    q = torch.randn(64, 2)

    def saved(steps: int) -> int:
        torch.manual_seed(0)
        model = make_ehf(so2(2), blocks=2, leapfrog_steps=steps, hidden=16, reversible=reversible)
        return _saved_bytes(lambda: model.elbo_and_constraints(q))

    small, large = saved(4), saved(32)
    if reversible:
        assert large == small, (small, large)
    else:
        assert large > 4 * small, (small, large)


def test_reversible_auto_switches_on_from_the_threshold():
    from lightning_ehf.core.flows import REVERSIBLE_AUTO_STEPS

    below = make_ehf(so2(2), blocks=1, leapfrog_steps=REVERSIBLE_AUTO_STEPS - 1, hidden=4)
    at = make_ehf(so2(2), blocks=1, leapfrog_steps=REVERSIBLE_AUTO_STEPS, hidden=4)
    assert not below.flow.blocks[0].reversible and at.flow.blocks[0].reversible
    with pytest.raises(ValueError, match="reversible"):
        make_ehf(so2(2), reversible="sometimes")


def test_evaluation_builds_no_graph_on_the_analytic_path():
    model = _model("so2-mlp")
    q = torch.randn(16, 2, dtype=F64)
    with torch.no_grad():
        assert _saved_bytes(lambda: model.iwae(q, k=8)) == 0
        set_force_path(model, "autograd")
        assert _saved_bytes(lambda: model.iwae(q, k=8)) > 0  # the reference builds (and drops) graphs


@pytest.mark.parametrize("case", sorted(MODELS))
def test_sliced_evaluation_equals_one_pass(case, monkeypatch):
    import lightning_ehf.core.flows as flows

    model = _model(case)
    q = torch.randn(13, model.dim, dtype=F64)
    results = []
    for rows in (10**9, 7):  # 13 points × 8 momenta = 104 rows a chunk: 14 slices of 7, the last of 6
        monkeypatch.setattr(flows, "EVAL_ROWS", rows)
        with torch.no_grad():
            torch.manual_seed(4)
            results.append(model.iwae(q, k=16, chunk=8))
    torch.testing.assert_close(results[1], results[0], rtol=1e-12, atol=1e-12)
    assert results[0].std() > 1e-3  # the points differ, so a mixed-up slice would show


def test_set_force_path_rejects_unknown_paths():
    with pytest.raises(ValueError, match="force path"):
        set_force_path(_model("so2-mlp"), "symbolic")


def test_failed_compilation_falls_back_to_eager(monkeypatch):
    model = _model("so2-mlp")
    q = torch.randn(8, 2, dtype=F64)
    with torch.no_grad():
        torch.manual_seed(2)
        eager = model.iwae(q, k=4)

    def broken(*args, **kwargs):
        def fail(*a, **k):
            raise RuntimeError("no compiler here")

        return fail

    monkeypatch.setattr(torch, "compile", broken)
    model.compile_density()
    with torch.no_grad(), pytest.warns(UserWarning, match="evaluating eagerly"):
        torch.manual_seed(2)
        fallback = model.iwae(q, k=4)
    torch.testing.assert_close(fallback, eager, rtol=0, atol=0)
    assert model._compiled_log_joint is None
