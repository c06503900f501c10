"""One contract every model variant the config can build honours (:class:`DensityModel`): EHF over encoders,
kinetic energies, invariant Hamiltonians and particle frames, and the NSF baseline. Each variant is built
from config keys exactly as a run builds it, then checked for shapes, finite values, a gradient that
reaches every parameter, a save/load round trip that gives the same log-density, and samples."""

from __future__ import annotations

import pytest
import torch

from lightning_ehf.build import make_data_symmetry, make_model
from lightning_ehf.config.load import load_config
from lightning_ehf.core.density import DensityModel
from lightning_ehf.core.objectives import Objective
from lightning_ehf.core.targets import make_target

SMALL = ["model.blocks=2", "model.leapfrog_steps=2", "model.hidden=16", "model.depth=1"]
DW4 = ["data.target=dw4", "symmetry.permutations=true"]
VARIANTS = {
    "ehf-gaussian-mlp": ["model.encoder=gaussian"],
    "ehf-gaussian-quadratic": ["model.encoder=gaussian", "model.kinetic=quadratic"],
    "ehf-full": ["model.encoder=full"],
    "ehf-flow": ["model.encoder=flow"],
    "ehf-equivariant": ["model.encoder=equivariant"],
    "ehf-invariant": ["model.invariant=true"],
    "ehf-invariant-quadratic": ["model.invariant=true", "model.kinetic=quadratic"],
    "ehf-autograd-forces": ["model.forces=autograd"],
    "ehf-reversible": ["model.reversible=always"],
    "ehf-rotations-planes": ["data.target=two_rings4d"],
    "ehf-particles-com": [*DW4],
    "ehf-particles-com-invariant": [*DW4, "model.invariant=true"],
    "ehf-particles-com-invariant-kinetic-histogram": [*DW4, "model.invariant=true", "model.kinetic_pair_bins=4"],
    "ehf-particles-com-full": [*DW4, "model.encoder=full"],
    "nsf": ["model.kind=nsf"],
    "efm-rotations": ["model.kind=efm"],
    "efm-particles-com": [*DW4, "model.kind=efm"],
    "nsf-particles-com": [*DW4, "model.kind=nsf"],
}


def _build(overrides: list[str], seed: int):
    cfg = load_config(overrides=[*SMALL, *overrides])
    target = make_target(cfg.data.target)
    symmetry = make_data_symmetry(cfg, target.dim, target)
    torch.manual_seed(seed)
    model = make_model(cfg, symmetry)
    with torch.no_grad():  # away from the initialisation (zeroed output layers): every parameter matters
        for prm in model.parameters():
            prm.add_(0.05 * torch.randn_like(prm))
    return model


@pytest.fixture(params=list(VARIANTS), ids=list(VARIANTS))
def variant(request):
    return request.param, VARIANTS[request.param]


def test_every_variant_honours_the_density_model_contract(variant):
    name, overrides = variant
    model = _build(overrides, seed=0)
    assert isinstance(model, DensityModel)
    d, k = model.data_map.data_dim, len(model.generator_names)  # the model takes the data's coordinates
    q = torch.randn(6, d)

    objective = Objective() if model.exact_likelihood else Objective("iwae", 3, "dreg")
    regression = hasattr(model, "flow_matching_loss")  # trained by flow matching, not on its likelihood
    with torch.set_grad_enabled(not regression):
        bound, constraint = objective(model, q)
    assert bound.shape == (6,) and constraint.shape == (k,), (bound.shape, constraint.shape)
    assert torch.isfinite(bound).all() and torch.isfinite(constraint).all()
    loss = model.flow_matching_loss(q) if regression else -bound.mean() + constraint.sum()
    loss.backward()
    silent = [
        n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.abs().sum() > 0)
    ]
    assert not silent, f"{name}: no gradient reaches {silent}"
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)

    with torch.no_grad():
        torch.manual_seed(3)
        log_p = model.iwae(q, 8, 4)
        assert log_p.shape == (6,) and torch.isfinite(log_p).all()
        x = model.sample(5)
        assert x.shape == (5, d) and x.dtype == torch.float32 and torch.isfinite(x).all()

    rebuilt = _build(overrides, seed=1)  # other initial weights, then the saved ones
    rebuilt.load_state_dict(model.state_dict())
    with torch.no_grad():
        torch.manual_seed(3)
        again = rebuilt.iwae(q, 8, 4)
    torch.testing.assert_close(again, log_p, rtol=0, atol=1e-6)


@pytest.mark.parametrize("name", [n for n in VARIANTS if "particles-com" in n])
def test_a_centre_of_mass_model_takes_and_returns_particles(name):
    """With a centre-of-mass frame the model owns the map from the particles to its coordinates: its
    log-density of the particles is unchanged by translating all of them (the frame drops the centroid and
    adds no Jacobian), and its samples are particles with their centre of mass at the origin."""
    model = _build(VARIANTS[name], seed=0).double()
    frame = model.data_map.frame
    assert frame is not None and model.data_map.data_dim == frame.full_dim == model.symmetry.dim + frame.particle_dim
    n, dim = frame.n_particles, frame.particle_dim
    x = 1.5 * torch.randn(5, n * dim, dtype=torch.float64)
    shift = 3.0 * torch.randn(5, 1, dim, dtype=torch.float64).expand(5, n, dim).reshape(5, n * dim)
    with torch.no_grad():
        torch.manual_seed(3)
        log_p = model.iwae(x, 4, 4)
        torch.manual_seed(3)
        moved = model.iwae(x + shift, 4, 4)
        samples = model.sample(7)
    assert (log_p - moved).abs().max() < 1e-9 * max(1.0, float(log_p.abs().max())), (log_p, moved)
    assert samples.shape == (7, n * dim)
    assert samples.reshape(7, n, dim).mean(1).abs().max() < 1e-9 * max(1.0, float(samples.abs().max()))


def test_an_exact_model_takes_no_bound_options():
    """The NSF has an exact likelihood: it declares so instead of accepting and ignoring IWAE / DReG."""
    model = _build(["model.kind=nsf"], seed=0)
    assert model.exact_likelihood
    with pytest.raises(TypeError):
        model.elbo_and_constraints(torch.randn(3, model.data_map.data_dim), 4, iwae=True)
