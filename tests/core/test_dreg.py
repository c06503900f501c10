"""The encoder's gradient estimators (``optim.estimator``): ``dreg`` leaves the bound and the flow's gradient
unchanged, gives the encoder exactly ``Σ_i w̃_i² ∂log w_i/∂p_i ∂p_i/∂φ`` under IWAE (Tucker et al. 2019),
and is zero where the encoder is the exact posterior, where the plain gradient is not."""

from __future__ import annotations

import pytest
import torch

from ehf_testing import ehf, tiny
from lightning_ehf.core import make_ehf, so2

F64 = torch.float64


def _model(encoder: str, seed: int = 0, step_size: float = 0.2):
    torch.manual_seed(seed)
    model = make_ehf(so2(2), blocks=2, leapfrog_steps=2, hidden=16, encoder=encoder, step_size=step_size).to(F64)
    if step_size == 0.2:
        with torch.no_grad():  # away from the zeroed output layers: every parameter matters
            for prm in model.parameters():
                prm.add_(0.1 * torch.randn_like(prm))
    return model


def _grads(model, q, n, iwae, estimator, seed=7):
    model.zero_grad()
    torch.manual_seed(seed)
    bound, _ = model.elbo_and_constraints(q, n, constraints=False, iwae=iwae, estimator=estimator)
    (-bound.mean()).backward()
    return bound.detach(), {name: prm.grad.clone() for name, prm in model.named_parameters()}


@pytest.mark.parametrize("encoder", ["gaussian", "full", "flow"])
def test_dreg_keeps_the_bound_and_the_flow_gradient_and_matches_its_formula(encoder):
    model = _model(encoder)
    q = torch.randn(6, 2, dtype=F64)
    n = 5
    bound_r, grads_r = _grads(model, q, n, True, "reparam")
    bound_d, grads_d = _grads(model, q, n, True, "dreg")
    assert torch.allclose(bound_r, bound_d, atol=1e-12)
    flow_names = [name for name in grads_r if not name.startswith("encoder.")]
    enc_names = [name for name in grads_r if name.startswith("encoder.")]
    assert flow_names and enc_names
    for name in flow_names:
        assert torch.allclose(grads_r[name], grads_d[name], atol=1e-12, rtol=1e-10), name
    # the encoder's part differs from the plain gradient …
    assert max(float((grads_r[k] - grads_d[k]).abs().max()) for k in enc_names) > 1e-6

    # … and equals Σ_i w̃_i² ∂log w_i/∂p_i · ∂p_i/∂φ, computed here on its own
    torch.manual_seed(7)
    qs = model.to_standard(q)
    posterior = model.encoder(qs)
    p = posterior.rsample((n,))
    p_leaf = p.detach().requires_grad_(True)
    twin = _model(encoder)  # a frozen copy of the encoder: log h with no path to φ
    twin.encoder.load_state_dict(model.encoder.state_dict())
    twin.requires_grad_(False)
    log_w = (
        model._log_joint_standard(qs.expand_as(p_leaf), p_leaf)
        - twin.encoder(qs).log_prob(p_leaf)
        - model.data_map.log_det
    )
    (dlogw_dp,) = torch.autograd.grad(log_w.sum(), p_leaf)
    weights = torch.softmax(log_w.detach(), 0).unsqueeze(-1)
    surrogate = (weights.square() * dlogw_dp * p).sum() / q.shape[0]
    expected = torch.autograd.grad(surrogate, [dict(model.named_parameters())[k] for k in enc_names], allow_unused=True)
    for name, exp in zip(enc_names, expected):
        exp = torch.zeros_like(grads_d[name]) if exp is None else exp
        assert torch.allclose(-grads_d[name], exp, atol=1e-10, rtol=1e-8), name


@pytest.mark.parametrize("iwae", [False, True])
def test_dreg_encoder_gradient_vanishes_at_the_exact_posterior(iwae):
    # a step of 1e-30 makes the flow the identity in float64; the encoder starts at N(0, σ_p² I), which is then
    # the exact posterior: every log-weight equals log π(q), whatever the momentum
    model = _model("gaussian", step_size=1e-30)
    q = torch.randn(8, 2, dtype=F64)
    _, grads_r = _grads(model, q, 4, iwae, "reparam")
    _, grads_d = _grads(model, q, 4, iwae, "dreg")
    enc = [k for k in grads_r if k.startswith("encoder.")]
    assert max(float(grads_r[k].abs().max()) for k in enc) > 1e-3  # the plain gradient carries the score's noise
    assert max(float(grads_d[k].abs().max()) for k in enc) < 1e-12


def test_dreg_trains_end_to_end_and_a_bad_value_exits_2(tmp_path):
    r = ehf(
        ["train", *tiny("optim.objective=iwae", "optim.elbo_samples=4", "optim.estimator=dreg"), "run.dir=run"],
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    bad = ehf(["train", *tiny("optim.estimator=dregg"), "run.dir=bad"], cwd=tmp_path)
    assert bad.returncode == 2 and "optim.estimator" in bad.stderr and "dreg" in bad.stderr
    assert not (tmp_path / "bad").exists()
