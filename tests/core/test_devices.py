"""The core never allocates on the default device: with the default device set to ``meta`` every
result must still live where its inputs live (a stray ``torch.zeros(...)`` would land on meta and
fail or leak through)."""

import pytest
import torch
from symmetry_zoo import ZOO

from lightning_ehf.core import make_ehf
from lightning_ehf.core.metrics import equivariance_error, invariance_error
from lightning_ehf.core.targets import make_target


@pytest.mark.parametrize(
    "symmetry, encoder",
    [(ZOO["so2"], "equivariant"), (ZOO["so3"], "gaussian"), (ZOO["particles3x2"], "gaussian")],
    ids=["so2", "so3", "particles3x2"],
)
def test_model_methods_stay_on_the_input_device(symmetry, encoder, randomize):
    model = randomize(make_ehf(symmetry, blocks=2, leapfrog_steps=2, hidden=8, encoder=encoder).double())
    d = symmetry.dim
    q = torch.randn(5, d, dtype=torch.float64)
    p = torch.randn(5, d, dtype=torch.float64)
    gen = torch.Generator().manual_seed(0)
    with torch.device("meta"):
        elbo, constraint = model.elbo_and_constraints(q, 2)
        (-elbo.mean() + constraint.sum()).backward()
        outputs = [
            elbo,
            constraint,
            model.iwae(q, 8, 3),
            model.bracket_residuals(q, p),
            model.sample(4, gen),
            symmetry.sample(3, gen, dtype=torch.float64, device="cpu").matrix,
        ]
        err, noise = invariance_error(model, q, symmetry, n_group=1, k=4, chunk=4, generator=gen)
        eq = equivariance_error(model, 4, symmetry, generator=gen)
    for out in outputs:
        assert out.device.type == "cpu" and torch.isfinite(out).all()
    assert all(p_.grad is None or p_.grad.device.type == "cpu" for p_ in model.parameters())
    assert all(map(lambda x: x == x, (err, noise, eq)))  # finite Python floats, not meta tensors


@pytest.mark.parametrize("name", ["ring2d", "rings2d", "shell3d", "particles2d", "gmm8"])
def test_targets_stay_on_the_requested_device(name):
    target = make_target(name)
    gen = torch.Generator().manual_seed(0)
    with torch.device("meta"):
        x = target.sample(6, generator=gen, dtype=torch.float64, device="cpu")
        lp = target.log_prob(x)
    assert x.device.type == "cpu" and lp.device.type == "cpu" and torch.isfinite(lp).all()
