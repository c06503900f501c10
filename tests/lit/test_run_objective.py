"""The objective a run trains on: with ``optim.objective=iwae`` the training loss of a step is minus the
log-mean-exp of that step's own log-weights (the IWAE_K bound, K = ``optim.elbo_samples``), and not the
ELBO that the same seed gives with ``optim.objective=elbo``."""

from __future__ import annotations

import math
import warnings

import pytest
import torch

from ehf_testing import tiny
from lightning_ehf.build import make_datamodule, make_module
from lightning_ehf.config.load import load_config, validate

K = 6


def _module(objective: str):
    torch.manual_seed(0)
    cfg = load_config(
        [],
        tiny(
            f"optim.objective={objective}",
            f"optim.elbo_samples={K}",
            "constraint.mode=none",
            "data.regime=finite",
            "data.n_train=64",
        ),
    )
    validate(cfg)
    dm = make_datamodule(cfg)
    dm.setup("fit")
    module = make_module(cfg, dm)
    with torch.no_grad():  # away from the zeroed output layers, so the log-weights differ between samples
        for prm in module.model.parameters():
            prm.add_(0.2 * torch.randn_like(prm))
    return module, dm.train_data[:32]


def _training_loss(module, q: torch.Tensor, seed: int) -> torch.Tensor:
    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # self.log outside a Trainer
        return module.training_step(q, 0).detach()


def _log_weights(model, q: torch.Tensor, seed: int) -> torch.Tensor:
    """``log p(q, p_i) − log h(p_i | q)`` of the K momenta the training step draws with this seed, (K, B)."""
    torch.manual_seed(seed)
    with torch.no_grad():
        posterior = model.encoder(model.to_standard(q))
        p = posterior.rsample((K,))
        return model.log_joint(q.expand_as(p), p) - posterior.log_prob(p)


@pytest.mark.parametrize("seed", [1, 2])
def test_iwae_run_trains_on_the_log_mean_exp_of_its_own_log_weights(seed):
    iwae_module, q = _module("iwae")
    elbo_module, q_elbo = _module("elbo")
    assert torch.equal(q, q_elbo)
    for a, b in zip(iwae_module.model.parameters(), elbo_module.model.parameters()):
        assert torch.equal(a, b)  # the same seed builds the same model: only the objective differs
    log_w = _log_weights(iwae_module.model, q, seed)
    assert float(log_w.std(0).min()) > 1e-3  # unequal weights: the two bounds differ
    iwae_bound = torch.logsumexp(log_w, 0) - math.log(K)
    loss_iwae = _training_loss(iwae_module, q, seed)
    assert torch.allclose(loss_iwae, -iwae_bound.mean(), atol=1e-5, rtol=1e-5)
    loss_elbo = _training_loss(elbo_module, q, seed)
    assert torch.allclose(loss_elbo, -log_w.mean(0).mean(), atol=1e-5, rtol=1e-5)
    assert float(loss_elbo - loss_iwae) > 1e-3  # IWAE_K ≥ ELBO_K of the same samples, strictly here
