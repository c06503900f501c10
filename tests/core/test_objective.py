"""The training objective: ``elbo_and_constraints(q, n, iwae=True)`` is the IWAE_n bound of the same
reparameterised samples (Burda et al. 2016), and ``optim.objective=iwae`` trains on it end to end."""

from __future__ import annotations

import json
import math

import torch

from ehf_testing import ehf, tiny
from lightning_ehf.core import make_ehf, so2

F64 = torch.float64


def _model(seed: int = 0):
    torch.manual_seed(seed)
    model = make_ehf(so2(2), blocks=2, leapfrog_steps=2, hidden=16).to(F64)
    with torch.no_grad():  # away from the initialisation (zeroed output layers): every parameter matters
        for prm in model.parameters():
            prm.add_(0.1 * torch.randn_like(prm))
    return model


def test_iwae_objective_is_the_log_mean_exp_of_the_same_log_weights():
    model = _model()
    q = torch.randn(7, 2, dtype=F64)
    torch.manual_seed(1)
    elbo, c_elbo = model.elbo_and_constraints(q, 5)
    torch.manual_seed(1)
    iwae, c_iwae = model.elbo_and_constraints(q, 5, iwae=True)
    # the same 5 momenta per point: log-mean-exp ≥ mean (Jensen), strictly for non-constant weights
    assert bool((iwae > elbo + 1e-9).all())
    assert torch.allclose(c_elbo, c_iwae)  # the constraint statistic does not depend on the objective
    # recompute both from the log-weights of those samples
    torch.manual_seed(1)
    posterior = model.encoder(q)
    p = posterior.rsample((5,))
    log_w = model.log_joint(q.expand_as(p), p) - posterior.log_prob(p)
    assert torch.allclose(elbo, log_w.mean(0), atol=1e-12)
    assert torch.allclose(iwae, torch.logsumexp(log_w, 0) - math.log(5), atol=1e-12)
    # one sample: both bounds are the same number
    torch.manual_seed(2)
    one_elbo = model.elbo_and_constraints(q, 1)[0]
    torch.manual_seed(2)
    assert torch.allclose(one_elbo, model.elbo_and_constraints(q, 1, iwae=True)[0], atol=1e-12)


def test_iwae_objective_gradient_reaches_every_parameter():
    model = _model(3)
    q = torch.randn(16, 2, dtype=F64)
    bound, constraint = model.elbo_and_constraints(q, 8, iwae=True)
    (-bound.mean() + constraint.sum()).backward()
    missing = [name for name, prm in model.named_parameters() if prm.grad is None or not bool(prm.grad.abs().sum() > 0)]
    assert not missing, missing


def test_training_on_the_iwae_objective_end_to_end(tmp_path):
    r = ehf(
        ["train", *tiny("optim.objective=iwae", "optim.elbo_samples=4", "trainer.log_every_n_steps=1"), "run.dir=run"],
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    header = (tmp_path / "run" / "metrics.csv").read_text().splitlines()[0].split(",")
    assert "train/iwae" in header and "train/elbo" not in header and "val/elbo" in header
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert math.isfinite(metrics["test/nll"])
    bad = ehf(["train", *tiny("optim.objective=iwea"), "run.dir=bad"], cwd=tmp_path)
    assert bad.returncode == 2 and "optim.objective" in bad.stderr and not (tmp_path / "bad").exists()
