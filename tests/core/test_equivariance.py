"""Lemma 1: Hamiltonians of group invariants give an equivariant flow and an invariant joint density;
an unconstrained random Hamiltonian does not (the check can fail)."""

from __future__ import annotations

import pytest
import torch
from symmetry_zoo import groups

from lightning_ehf.core import so2

F64 = torch.float64

SYMMETRIES = groups("so2", "so2_plane02_in_3d", "so3", "particles3x2", "particles2x3", "planes4")


def equivariance_errors(model, sym, n=16, dtype=F64, device="cpu"):
    q = 1.3 * torch.randn(n, sym.dim, dtype=dtype, device=device)
    p = torch.randn(n, sym.dim, dtype=dtype, device=device)
    g = sym.sample(n, torch.Generator(device=device).manual_seed(3), dtype=dtype, device=device)
    with torch.no_grad():
        fq, fp = model.flow(*g.act(q, p))
        gq, gp = g.act(*model.flow(q, p))
        flow_err = max((fq - gq).abs().max().item(), (fp - gp).abs().max().item())
        inv_err = max(
            (iq - ip).abs().max().item()
            for iq, ip in zip(model.flow.inverse(*g.act(q, p)), g.act(*model.flow.inverse(q, p)))
        )
        dens_err = (model.log_joint(*g.act(q, p)) - model.log_joint(q, p)).abs().max().item()
    moved = (fq - g.act_q(q)).abs().max().item()
    return flow_err, inv_err, dens_err, moved


@pytest.mark.parametrize("kinetic", ["quadratic", "mlp"])
@pytest.mark.parametrize("name", list(SYMMETRIES))
def test_invariant_hamiltonians_give_equivariant_flow(build, device, name, kinetic):
    sym = SYMMETRIES[name]
    model = build(sym, device=device, blocks=3, leapfrog_steps=4, kinetic=kinetic, invariant=True)
    flow_err, inv_err, dens_err, moved = equivariance_errors(model, sym, device=device)
    assert flow_err <= 1e-10, f"‖Φ(g·s) − g·Φ(s)‖ = {flow_err:.3e}"
    assert inv_err <= 1e-10, f"‖Φ⁻¹(g·s) − g·Φ⁻¹(s)‖ = {inv_err:.3e}"
    assert dens_err <= 1e-10, f"|log p(g·s) − log p(s)| = {dens_err:.3e}"
    assert moved > 0.1  # the flow is not (a group element times) the identity


@pytest.mark.parametrize("name", ["so2", "so3", "particles3x2", "planes4"])
def test_unconstrained_hamiltonians_break_equivariance(build, name):
    sym = SYMMETRIES[name]
    model = build(sym, blocks=3, leapfrog_steps=4, kinetic="mlp", invariant=False)
    flow_err, inv_err, dens_err, _ = equivariance_errors(model, sym)
    assert flow_err > 1e-3 and inv_err > 1e-3
    assert dens_err > 1e-3


def test_invariant_model_float32_is_equivariant_to_single_precision(build):
    sym = SYMMETRIES["so3"]
    model = build(sym, dtype=torch.float32, blocks=3, leapfrog_steps=4, kinetic="mlp", invariant=True)
    flow_err, _, dens_err, _ = equivariance_errors(model, sym, dtype=torch.float32)
    assert flow_err <= 1e-4 and dens_err <= 1e-4


def test_invariant_model_samples_are_rotation_invariant_in_distribution(build):
    """A consequence of Lemma 1: the sampled marginal is rotation invariant. For so2 the angle of q
    is uniform, so E[cos θ], E[sin θ], E[cos 2θ], E[sin 2θ] vanish (a non-invariant model fails)."""
    n = 5000
    for invariant, expect_uniform in ((True, True), (False, False)):
        torch.manual_seed(0)
        model = build(so2(2), blocks=2, leapfrog_steps=4, step_size=0.3, kinetic="mlp", invariant=invariant, std=0.8)
        with torch.no_grad():
            x = model.sample(n, torch.Generator().manual_seed(11))
        theta = torch.atan2(x[:, 1], x[:, 0])
        moments = torch.stack(
            [theta.cos().mean(), theta.sin().mean(), (2 * theta).cos().mean(), (2 * theta).sin().mean()]
        )
        worst = moments.abs().max().item()
        if expect_uniform:
            assert worst < 5 / n**0.5, f"angular moments {moments.tolist()}"
        else:
            assert worst > 10 / n**0.5, f"angular moments {moments.tolist()} look uniform for an unconstrained model"
