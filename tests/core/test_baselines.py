"""The NSF baseline behind the model contract: its exact log-likelihood is its bound and its IWAE at any K,
it has no constraints, and its density is normalised."""

from __future__ import annotations

import math

import torch

from lightning_ehf.baselines import NSFModel
from lightning_ehf.core import so2


def test_nsf_bounds_are_its_exact_log_likelihood_and_it_is_normalised():
    torch.manual_seed(0)
    model = NSFModel(so2(2), transforms=2, hidden=16).double()
    with torch.no_grad():
        for prm in model.parameters():
            prm.add_(0.1 * torch.randn_like(prm))
        q = torch.randn(32, 2, dtype=torch.float64)
        log_p = model.log_prob(q)
        bound, constraint = model.elbo_and_constraints(q, 4)
        assert model.exact_likelihood
        assert torch.equal(bound, log_p) and constraint.numel() == 0 and model.generator_names == []
        assert torch.equal(model.iwae(q, 64, 16), log_p)
        assert model.sample(5).shape == (5, 2)
        # ∫ p(q) dq = 1 on a grid wide enough for a density near N(0, I)
        xs = torch.linspace(-8, 8, 321, dtype=torch.float64)
        grid = torch.stack(torch.meshgrid(xs, xs, indexing="ij"), -1).reshape(-1, 2)
        mass = float(model.log_prob(grid).exp().sum()) * float(xs[1] - xs[0]) ** 2
        assert math.isclose(mass, 1.0, abs_tol=0.02), mass
