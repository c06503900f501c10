"""``estimator='dreg'`` under the ELBO is the sticking-the-landing gradient: ``log h`` held fixed, every sample
weighted 1/n. DReG's importance weights ``w̃_i`` belong to the IWAE bound only."""

from __future__ import annotations

import copy

import pytest
import torch

from lightning_ehf.core import make_ehf, so2

F64 = torch.float64


def _model(encoder: str):
    torch.manual_seed(0)
    model = make_ehf(so2(2), blocks=2, leapfrog_steps=2, hidden=16, encoder=encoder).to(F64)
    with torch.no_grad():  # away from the zeroed output layers: unequal log-weights
        for prm in model.parameters():
            prm.add_(0.2 * torch.randn_like(prm))
    return model


def _encoder_grads(model, loss: torch.Tensor) -> dict[str, torch.Tensor]:
    model.zero_grad()
    loss.backward()
    return {
        name: prm.grad.clone()
        for name, prm in model.named_parameters()
        if name.startswith("encoder.") and prm.grad is not None
    }


@pytest.mark.parametrize("encoder", ["gaussian", "full"])
def test_dreg_under_the_elbo_weights_every_sample_equally(encoder):
    model = _model(encoder)
    q = 1.5 * torch.randn(6, 2, dtype=F64)
    n = 5
    torch.manual_seed(7)
    bound, _ = model.elbo_and_constraints(q, n, constraints=False, estimator="dreg")
    dreg = _encoder_grads(model, -bound.mean())

    # the same samples, log h from a frozen copy of the encoder: the path gradient of the plain mean
    torch.manual_seed(7)
    qs = model.to_standard(q)
    p = model.encoder(qs).rsample((n,))
    frozen = copy.deepcopy(model.encoder).requires_grad_(False)
    log_w = model.log_joint(q.expand_as(p), p) - frozen(qs).log_prob(p)
    assert float(log_w.detach().std(0).min()) > 1e-2  # the weights w̃_i are far from 1/n
    assert torch.allclose(log_w.mean(0), bound.detach(), atol=1e-12)
    stl = _encoder_grads(model, -log_w.mean(0).mean())
    assert dreg.keys() == stl.keys() and dreg
    for name in dreg:
        assert torch.allclose(dreg[name], stl[name], atol=1e-12, rtol=1e-9), name
