"""The scalable pair-distance features (core/invariants.py) against the implementation they replaced
(``lightning_ehf/core/pair_features_reference.py``): the same values, pullbacks and gradients of every order training
uses, in float32 and float64, and the same loss and parameter gradients on the dw4 recipe."""

from __future__ import annotations

import copy
from dataclasses import replace

import pytest
import torch

import lightning_ehf.core.invariants as invariants
from lightning_ehf.core import MLPEnergy, make_ehf, particle_rotations
from lightning_ehf.core.frames import CentreOfMassFrame
from lightning_ehf.core.hamiltonians import set_force_path
from lightning_ehf.core.invariants import FramedFeatures, PairDistanceFeatures
from lightning_ehf.core.pair_features_reference import ReferencePairDistanceFeatures

F64 = torch.float64
#: agreement relative to a tensor's scale. float64: 1e-10 (far inside the 1e-6 promised). float32: 1e-5,
#: because in float32 the reference itself is only accurate to about 3e-6 of the scale (pullbacks of 4
#: particles against float64, worst of 50 draws: reference 2.3e-6, new 3.1e-6), so two float32
#: implementations cannot agree to 1e-6 of it.
TOL = {torch.float32: 1e-5, F64: 1e-10}


def assert_close(new: torch.Tensor, ref: torch.Tensor, tol: float | None = None) -> None:
    """``max |new − ref| ≤ tol · max(1, max |ref|)``, tol from :data:`TOL` by dtype unless given."""
    assert new.shape == ref.shape
    tol = TOL[ref.dtype] if tol is None else tol
    err = (new - ref).abs().max().item()
    scale = max(1.0, ref.abs().max().item())
    assert err <= tol * scale, f"max error {err:.3g} at scale {scale:.3g}"


def _pair(n: int, dim: int, **kwargs) -> tuple[PairDistanceFeatures, ReferencePairDistanceFeatures]:
    return PairDistanceFeatures(n, dim, **kwargs), ReferencePairDistanceFeatures(n, dim, **kwargs)


@pytest.mark.parametrize("n, dim", [(4, 2), (13, 3)])
def test_values_and_pullbacks_match_the_reference(n, dim, dtype):
    new, ref = _pair(n, dim)
    x = 2.0 * torch.randn(3, 5, n * dim, dtype=dtype)
    g = torch.randn(3, 5, 48, dtype=dtype)
    assert_close(new(x), ref(x))
    assert_close(new.pullback(x, g), ref.pullback(x, g))
    feats, pullback = new.with_pullback(x)
    assert_close(feats, ref(x))
    assert_close(pullback(g), ref.pullback(x, g))
    assert_close(new.pullback(x, g[0, 0]), ref.pullback(x, g[0, 0]))  # one weight vector for every row


def test_gradients_of_every_order_training_uses_match_the_reference(dtype):
    """First order (features), second order (the pullback, i.e. forces, differentiated in x and in the
    weights; the features' gradient differentiated again) and, in float64, third order."""
    n, dim = 5, 3
    new, ref = _pair(n, dim, n_bins=12, max_distance=4.0)
    x = (1.5 * torch.randn(7, n * dim, dtype=dtype)).requires_grad_(True)
    g = torch.randn(7, 24, dtype=dtype, requires_grad=True)
    w = torch.randn(7, n * dim, dtype=dtype)
    for impl in ("pullback", "with_pullback"):
        force = new.pullback(x, g) if impl == "pullback" else new.with_pullback(x)[1](g)
        got = torch.autograd.grad((force * w).sum(), (x, g), create_graph=True)
        want = torch.autograd.grad((ref.pullback(x, g) * w).sum(), (x, g), create_graph=True)
        for a, b in zip(got, want):
            assert_close(a, b)
        if dtype == F64:
            assert_close(torch.autograd.grad((got[0] * w).sum(), x)[0], torch.autograd.grad((want[0] * w).sum(), x)[0])
    (got,) = torch.autograd.grad((new(x) * g).sum(), x, create_graph=True)
    (want,) = torch.autograd.grad((ref(x) * g).sum(), x, create_graph=True)
    assert_close(got, want)
    for a, b in zip(torch.autograd.grad((got * w).sum(), (x, g)), torch.autograd.grad((want * w).sum(), (x, g))):
        assert_close(a, b)


@pytest.mark.parametrize("path", ["analytic", "autograd"])
def test_forces_and_their_training_gradients_match_the_reference(path, dtype):
    """An invariant energy's force and the parameter gradients of a loss on it, on both force paths (the
    analytic one shares the bases between features and pullback, forward and backward)."""
    n, dim = 6, 3
    new, ref = _pair(n, dim)
    torch.manual_seed(0)
    energy = MLPEnergy(n * dim, 32, 2, features=new, zero_init=False).to(dtype)
    reference = copy.deepcopy(energy)
    reference.features = ref
    set_force_path(energy, path)
    set_force_path(reference, path)
    x = (2.0 * torch.randn(9, n * dim, dtype=dtype)).requires_grad_(True)
    w = torch.randn(9, n * dim, dtype=dtype)
    grads = []
    for model in (energy, reference):
        force = model.grad(x, create_graph=True)
        loss = (force * w).sum() + model(x).sum()
        grads.append((force.detach(), torch.autograd.grad(loss, [x, *model.parameters()])))
    assert_close(grads[0][0], grads[1][0])
    for a, b in zip(grads[0][1], grads[1][1]):
        assert_close(a, b)


def test_results_do_not_depend_on_the_row_chunks(monkeypatch):
    new = PairDistanceFeatures(5, 3)
    x = (2.0 * torch.randn(11, 15, dtype=F64)).requires_grad_(True)
    g = torch.randn(11, 48, dtype=F64, requires_grad=True)

    def everything() -> list[torch.Tensor]:
        feats, pullback = new.with_pullback(x)
        force = pullback(g * feats)
        return [feats, force, *torch.autograd.grad(force.square().sum(), (x, g))]

    whole = everything()
    monkeypatch.setattr(invariants, "BASIS_ELEMENTS", 720)  # 11 rows in chunks of 3 (10 pairs × 24 bins), 6 (5 norms)
    for a, b in zip(everything(), whole):
        assert torch.allclose(a, b, rtol=1e-12, atol=1e-12)


def test_far_apart_particles_stay_finite_and_exact():
    """Arguments far beyond the last centre (exp's argument clamped) change nothing measurable."""
    new, ref = _pair(4, 3)
    x = torch.randn(6, 12) * torch.tensor([1.0, 30.0, 300.0]).repeat_interleave(2)[:, None]
    g = torch.randn(6, 48)
    assert torch.isfinite(new(x)).all() and torch.isfinite(new.pullback(x, g)).all()
    assert_close(new(x), ref(x))
    assert_close(new.pullback(x, g), ref.pullback(x, g))


def test_dw4_recipe_gives_the_same_loss_and_gradients_as_the_reference():
    """The dw4 training objective (IWAE-16, DReG, centre-of-mass frame, invariant Hamiltonians) with the new
    features and with the reference ones: the same loss and parameter gradients to 1e-6, in float32."""
    n, dim = 4, 2
    frame = CentreOfMassFrame(n, dim)
    symmetry = frame.restrict(replace(particle_rotations(n, dim), invariants=PairDistanceFeatures(n, dim)))
    torch.manual_seed(0)
    model = make_ehf(symmetry, blocks=2, leapfrog_steps=3, hidden=32, kinetic="mlp", invariant=True)
    with torch.no_grad():
        for name, prm in model.named_parameters():
            if prm.ndim > 0 and "encoder" not in name:
                prm.normal_(0.0, 0.1)
    reference = copy.deepcopy(model)
    reference_features = FramedFeatures(ReferencePairDistanceFeatures(n, dim), frame)
    for module in reference.modules():
        if isinstance(module, MLPEnergy):
            module.features = reference_features
    q = frame.to_subspace(2.0 * torch.randn(16, n * dim))
    results = []
    for m in (model, reference):
        torch.manual_seed(1)
        bound, _ = m.elbo_and_constraints(q, 16, constraints=False, iwae=True, estimator="dreg")
        loss = -bound.mean()
        results.append((loss.detach(), torch.autograd.grad(loss, list(m.parameters()))))
    assert_close(results[0][0], results[1][0], 1e-6)
    for a, b in zip(results[0][1], results[1][1]):
        assert_close(a, b)
