"""The Hamiltonian flow: import hygiene, exact invertibility, volume preservation, shape validation,
and the leapfrog integrator itself."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from lightning_ehf.core import (
    GaussianBase,
    QuadraticKinetic,
    ZeroEnergy,
    leapfrog,
    make_ehf,
    no_symmetry,
    so2,
    so3,
)

F64 = torch.float64
HEAVY = ("lightning", "pytorch_lightning", "omegaconf", "wandb")


def test_core_import_loads_no_heavy_framework():
    code = (
        "import sys, lightning_ehf.core\n"
        f"heavy = {HEAVY!r}\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in heavy)\n"
        "print('LOADED:' + ','.join(bad))\n"
        "print('CORE_OK:' + str('lightning_ehf.core.flows' in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = dict(line.split(":", 1) for line in out.stdout.strip().splitlines())
    assert lines["CORE_OK"] == "True"  # the import did happen
    assert lines["LOADED"] == "", f"importing lightning_ehf.core loaded {lines['LOADED']}"


# ---------------------------------------------------------------------------------------------
# round trip Φ⁻¹(Φ(s)) = s


@pytest.mark.parametrize("kinetic", ["quadratic", "mlp"])
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-4)], ids=["float64", "float32"])
def test_round_trip_is_exact(build, device, dtype, tol, kinetic):
    model = build(so3(3), dtype=dtype, device=device, blocks=4, leapfrog_steps=8, step_size=0.1, kinetic=kinetic)
    q = torch.randn(32, 3, dtype=dtype, device=device)
    p = torch.randn(32, 3, dtype=dtype, device=device)
    with torch.no_grad():
        q1, p1 = model.flow(q, p)
        q2, p2 = model.flow.inverse(q1, p1)
        # the other order too: Φ(Φ⁻¹(s)) = s
        q3, p3 = model.flow(*model.flow.inverse(q, p))
    err = max((q2 - q).abs().max().item(), (p2 - p).abs().max().item())
    err_other = max((q3 - q).abs().max().item(), (p3 - p).abs().max().item())
    assert err <= tol, f"round-trip error {err:.3e} > {tol:.0e}"
    assert err_other <= tol, f"reverse round-trip error {err_other:.3e} > {tol:.0e}"
    # the map is far from the identity, so the round trip is not trivially exact
    moved = (q1 - q).abs().max().item()
    assert moved > 0.5, f"flow barely moves points ({moved:.3e}); Hamiltonians are not being exercised"
    assert (p1 - p).abs().max().item() > 0.1


def test_round_trip_with_gradients_enabled_matches_no_grad(build):
    """The training path (create_graph=True) computes the same map as evaluation."""
    model = build(so2(2), blocks=3, leapfrog_steps=4)
    q, p = torch.randn(8, 2, dtype=F64), torch.randn(8, 2, dtype=F64)
    with torch.no_grad():
        ref = model.flow(q, p)
    out = model.flow(q, p)
    assert out[0].requires_grad  # the graph reaches the Hamiltonian parameters
    torch.testing.assert_close(out[0].detach(), ref[0], rtol=0, atol=1e-13)
    torch.testing.assert_close(out[1].detach(), ref[1], rtol=0, atol=1e-13)
    # parameters receive gradients through the forces
    out[0].square().sum().backward()
    grads = [prm.grad for prm in model.flow.blocks[0].hamiltonian.potential.parameters()]
    assert all(g is not None for g in grads) and sum(g.abs().sum() for g in grads) > 0


# ---------------------------------------------------------------------------------------------
# volume preservation


@pytest.mark.parametrize("kinetic", ["quadratic", "mlp"])
def test_log_det_jacobian_is_zero(build, kinetic):
    model = build(so3(3), blocks=4, leapfrog_steps=8, step_size=0.1, kinetic=kinetic)

    def phi(s):
        q, p = model.flow(s[:3], s[3:])
        return torch.cat([q, p])

    for _ in range(3):
        s = torch.randn(6, dtype=F64)
        jac = torch.autograd.functional.jacobian(phi, s)
        sign, logdet = torch.linalg.slogdet(jac)
        assert sign.item() == 1.0
        assert abs(logdet.item()) <= 1e-8, f"log|det J| = {logdet.item():.3e}"
        # a non-trivial Jacobian: far from the identity
        assert (jac - torch.eye(6, dtype=F64)).abs().max() > 0.5


def test_joint_density_is_base_density_of_the_preimage(build):
    """Samples (q, p) = Φ(s₀) have log p_θ(q, p) = log π(s₀) (unit Jacobian, exact inverse)."""
    model = build(so2(2), blocks=3, leapfrog_steps=4)
    gen = torch.Generator().manual_seed(7)
    q0, p0 = model.base.sample(16, gen, dtype=F64)
    with torch.no_grad():
        q, p = model.flow(q0, p0)
        lj = model.log_joint(q, p)
    torch.testing.assert_close(lj, model.base.log_prob(q0, p0), rtol=0, atol=1e-10)


def test_gaussian_base_log_prob_matches_torch_distributions():
    base = GaussianBase(3, sigma_q=0.7, sigma_p=1.8)
    q, p = torch.randn(10, 3, dtype=F64), torch.randn(10, 3, dtype=F64)
    ref = torch.distributions.Normal(0.0, torch.tensor(0.7, dtype=F64)).log_prob(q).sum(
        -1
    ) + torch.distributions.Normal(0.0, torch.tensor(1.8, dtype=F64)).log_prob(p).sum(-1)
    torch.testing.assert_close(base.log_prob(q, p), ref, rtol=0, atol=1e-12)
    qs, ps = base.sample(20000, torch.Generator().manual_seed(0), dtype=F64)
    assert abs(qs.std().item() - 0.7) < 0.02 and abs(ps.std().item() - 1.8) < 0.05
    with pytest.raises(ValueError, match="positive"):
        GaussianBase(2, sigma_q=0.0)


# ---------------------------------------------------------------------------------------------
# the leapfrog integrator on problems with known answers


def test_leapfrog_free_motion_is_exact():
    """U ≡ 0, K = ½|p|²/m: q' = q + L ε p / m, p' = p exactly."""
    q, p = torch.randn(5, 3, dtype=F64), torch.randn(5, 3, dtype=F64)
    kin = QuadraticKinetic(3, mass=2.5).double()
    mass = kin.log_mass.exp().item()  # 2.5 up to the float32 rounding of log(2.5) at construction
    assert abs(mass - 2.5) < 1e-6
    zero = ZeroEnergy(3)
    q1, p1 = leapfrog(q, p, lambda x: zero.grad(x, False), lambda x: kin.grad(x, False), 0.3, 7)
    torch.testing.assert_close(q1, q + 7 * 0.3 * p / mass, rtol=0, atol=1e-13)
    torch.testing.assert_close(p1, p, rtol=0, atol=0)


def test_leapfrog_harmonic_oscillator_matches_closed_form_and_conserves_energy():
    """H = ½p² + ½q²: one leapfrog step is the linear map with known matrix; energy error is O(ε²)
    and bounded (symplectic), and the trajectory converges to the exact rotation as ε → 0."""
    q, p = torch.tensor([[1.0]], dtype=F64), torch.tensor([[0.0]], dtype=F64)
    eps = 0.1
    step = torch.tensor([[1 - eps**2 / 2, eps], [-eps * (1 - eps**2 / 4), 1 - eps**2 / 2]], dtype=F64)
    q1, p1 = leapfrog(q, p, lambda x: x, lambda x: x, eps, 1)
    torch.testing.assert_close(
        torch.cat([q1, p1], -1)[0], step @ torch.tensor([1.0, 0.0], dtype=F64), rtol=0, atol=1e-14
    )

    t_end = 2.0
    errors = []
    for n in (20, 40, 80):
        qn, pn = leapfrog(q, p, lambda x: x, lambda x: x, t_end / n, n)
        errors.append(abs(qn.item() - torch.cos(torch.tensor(t_end, dtype=F64)).item()))
        energy = 0.5 * (qn.square() + pn.square()).item()
        assert abs(energy - 0.5) < (t_end / n) ** 2  # bounded O(ε²) energy error
    # second order: halving ε divides the error by ~4
    assert 3.5 < errors[0] / errors[1] < 4.5 and 3.5 < errors[1] / errors[2] < 4.5


def test_leapfrog_on_state_sees_consistent_forces():
    """Every callback state carries ∇U at its q and ∇K at its p (that is what makes brackets free)."""
    grad_u = lambda x: torch.sin(x) + x  # noqa: E731
    grad_k = lambda x: x**3 + x  # noqa: E731
    seen = []
    q, p = torch.randn(4, 2, dtype=F64), torch.randn(4, 2, dtype=F64)
    for reverse in (False, True):
        leapfrog(q, p, grad_u, grad_k, 0.2, 3, reverse=reverse, on_state=lambda *s: seen.append(s))
    assert len(seen) == 2 * 3 * 2
    for sq, sp, fu, fk in seen:
        torch.testing.assert_close(fu, grad_u(sq), rtol=0, atol=0)
        torch.testing.assert_close(fk, grad_k(sp), rtol=0, atol=0)


# ---------------------------------------------------------------------------------------------
# shape validation


def test_shape_validation_names_expected_shape():
    model = make_ehf(so2(2), blocks=1, leapfrog_steps=1, hidden=8)
    with pytest.raises(ValueError, match=r"\(\.\.\., 2\)"):
        model.elbo(torch.randn(5, 3))
    with pytest.raises(ValueError, match=r"\(\.\.\., 2\)"):
        model.iwae(torch.randn(5, 3), k=2)
    with pytest.raises(ValueError, match=r"p must have shape \(\.\.\., 2\)"):
        model.log_joint(torch.randn(5, 2), torch.randn(5, 3))
    with pytest.raises(ValueError, match="k ≥ 1"):
        model.iwae(torch.randn(5, 2), k=0)


def test_make_ehf_rejects_bad_arguments():
    with pytest.raises(ValueError, match="kinetic"):
        make_ehf(so2(2), kinetic="cubic")
    with pytest.raises(ValueError, match="encoder"):
        make_ehf(so2(2), encoder="maf")
    with pytest.raises(ValueError, match="invariant"):
        make_ehf(no_symmetry(2), invariant=True)
    with pytest.raises(ValueError, match="equivariant encoder"):
        make_ehf(so3(3), encoder="equivariant")
    momenta = so2(2).invariants
    with pytest.raises(ValueError, match="kinetic_features"):
        make_ehf(so2(2), kinetic_features=momenta)  # not invariant: the kinetic MLP sees p itself
    with pytest.raises(ValueError, match="kinetic_features"):
        make_ehf(so2(2), invariant=True, kinetic="quadratic", kinetic_features=momenta)


def test_model_follows_dtype_and_device(build, device, dtype):
    model = build(so2(2), dtype=dtype, device=device)
    x = model.sample(6, torch.Generator(device=device).manual_seed(0))
    assert x.dtype == dtype and x.device.type == device.type and x.shape == (6, 2)
    elbo, cons = model.elbo_and_constraints(x, n=3)
    assert elbo.shape == (6,) and cons.shape == (1,)
    assert elbo.dtype == dtype and cons.dtype == dtype
    assert torch.isfinite(elbo).all() and torch.isfinite(cons).all()
