"""Momentum encoders: the equivariant (polar-frame) encoder is equivariant and is the Gaussian it
claims to be; the diagonal encoder starts at the base momentum density."""

from __future__ import annotations

import math

import pytest
import torch
from symmetry_zoo import groups

from lightning_ehf.core import FramedGaussian, make_ehf, particle_rotations, so2

F64 = torch.float64

SYMMETRIES = groups("so2", "so2_plane02_in_3d", "planes4", "planes_13_04_in_5d")


def randomize_encoder(encoder, std=0.5, out_std=0.15):
    """Random hidden layers (std 0.5) and a random but smaller last layer, so means are O(1) and
    log-scales stay within about ±1 (extreme scales would make log-densities of order 1e6)."""
    with torch.no_grad():
        *hidden, last = [m for m in encoder.net if isinstance(m, torch.nn.Linear)]
        for layer in hidden:
            layer.weight.normal_(0.0, std)
            layer.bias.normal_(0.0, std)
        last.weight.normal_(0.0, out_std)
        last.bias.add_(torch.randn_like(last.bias), alpha=out_std)
    return encoder


def random_encoder(sym, dtype=F64, device="cpu"):
    model = make_ehf(sym, blocks=1, leapfrog_steps=1, hidden=16, encoder="equivariant")
    randomize_encoder(model.encoder)
    return model.to(dtype=dtype, device=device).encoder


@pytest.mark.parametrize("name", list(SYMMETRIES))
def test_equivariant_encoder_density_is_invariant(name, device, dtype):
    sym = SYMMETRIES[name]
    enc = random_encoder(sym, dtype, device)
    q = torch.randn(32, sym.dim, dtype=dtype, device=device)
    p = torch.randn(32, sym.dim, dtype=dtype, device=device)
    g = sym.sample(32, torch.Generator(device=device).manual_seed(0), dtype=dtype, device=device)
    gq, gp = g.act(q, p)
    lp, lp_rot = enc(q).log_prob(p), enc(gq).log_prob(gp)
    # float64: absolute 1e-10; float32: relative to the log-density's size (random encoders give
    # log-densities of order 1e2–1e4 where a narrow scale meets a far-away p)
    tol = 1e-10 if dtype == F64 else 1e-5 * max(1.0, lp.abs().max().item())
    err = (lp - lp_rot).abs().max().item()
    assert err <= tol, f"|log h(Rp|Rq) − log h(p|q)| = {err:.3e}"
    # means transform as vectors: μ(Rq) = R μ(q)
    torch.testing.assert_close(enc(gq).loc, g.act_p(enc(q).loc), rtol=0, atol=1e-12 if dtype == F64 else 1e-5)
    # not vacuous: the density is far from rotation-invariant in p alone (depends on q's direction)
    assert (enc(q).log_prob(gp) - lp).abs().max() > 1e-2


def test_diagonal_encoder_is_not_equivariant_when_random(build):
    """Control: the plain Gaussian encoder with random weights fails the same check."""
    sym = so2(2)
    model = make_ehf(sym, blocks=1, leapfrog_steps=1, hidden=16, encoder="gaussian")
    randomize_encoder(model.encoder)
    model.double()
    q, p = torch.randn(32, 2, dtype=F64), torch.randn(32, 2, dtype=F64)
    g = sym.sample(32, torch.Generator().manual_seed(0), dtype=F64)
    gq, gp = g.act(q, p)
    assert (model.encoder(q).log_prob(p) - model.encoder(gq).log_prob(gp)).abs().max() > 1e-2


@pytest.mark.parametrize("name", list(SYMMETRIES))
def test_framed_gaussian_log_prob_matches_multivariate_normal(name):
    sym = SYMMETRIES[name]
    enc = random_encoder(sym)
    q = torch.randn(6, sym.dim, dtype=F64)
    dist = enc(q)
    assert isinstance(dist, FramedGaussian)
    # the frame is orthogonal
    eye = torch.eye(sym.dim, dtype=F64)
    torch.testing.assert_close(dist.frame.transpose(-1, -2) @ dist.frame, eye.expand_as(dist.frame), rtol=0, atol=1e-12)
    cov = dist.frame @ torch.diag_embed(dist.scale.square()) @ dist.frame.transpose(-1, -2)
    ref = torch.distributions.MultivariateNormal(dist.loc, covariance_matrix=cov)
    p = dist.rsample((5,))
    assert p.shape == (5, 6, sym.dim)
    torch.testing.assert_close(dist.log_prob(p), ref.log_prob(p), rtol=0, atol=1e-10)
    # scales differ between directions, so the frame orientation matters (not an isotropic Gaussian)
    assert (dist.scale.max(-1).values / dist.scale.min(-1).values).min() > 1.05


def test_framed_gaussian_samples_have_the_stated_moments():
    sym = SYMMETRIES["so2_plane02_in_3d"]
    enc = random_encoder(sym)
    q = torch.randn(2, 3, dtype=F64)
    dist = enc(q)
    n = 40000
    x = dist.rsample((n,))
    cov = dist.frame @ torch.diag_embed(dist.scale.square()) @ dist.frame.transpose(-1, -2)
    for b in range(2):
        xb = x[:, b]
        emp_mean = xb.mean(0)
        emp_cov = torch.cov(xb.T)
        sd = cov[b].diagonal().sqrt()
        assert ((emp_mean - dist.loc[b]).abs() / sd).max() < 5 / math.sqrt(n)
        corr_scale = sd[:, None] * sd[None, :]
        assert ((emp_cov - cov[b]).abs() / corr_scale).max() < 0.04
    # reparametrised: gradients flow from samples to the encoder's parameters
    enc.zero_grad()
    dist = enc(q)
    dist.rsample((4,)).square().sum().backward()
    assert enc.net[-1].weight.grad.abs().sum() > 0


def test_encoders_start_at_the_base_momentum_density():
    """Freshly built (zero last layer), every encoder is N(0, σ_p² I) for any q."""
    sigma_p = 1.7
    for kind in ("gaussian", "full", "flow", "equivariant"):
        model = make_ehf(so2(3), blocks=1, hidden=8, encoder=kind, sigma_p=sigma_p).double()
        q, p = torch.randn(7, 3, dtype=F64), torch.randn(7, 3, dtype=F64)
        ref = (
            torch.distributions.Normal(torch.zeros((), dtype=F64), torch.tensor(sigma_p, dtype=F64)).log_prob(p).sum(-1)
        )
        torch.testing.assert_close(model.encoder(q).log_prob(p), ref, rtol=0, atol=1e-6)


def test_equivariant_encoder_at_origin_is_finite():
    enc = random_encoder(SYMMETRIES["planes4"])
    q = torch.zeros(3, 4, dtype=F64)
    dist = enc(q)
    assert torch.isfinite(dist.log_prob(torch.randn(3, 4, dtype=F64))).all()


# ---------------------------------------------------------------------------------------------------
# the full-covariance and flow encoders: normalised densities that their samples follow


def randomized(kind: str, dim: int = 2, seed: int = 0):
    torch.manual_seed(seed)
    model = make_ehf(so2(dim) if dim == 2 else particle_rotations(dim // 2, 2), blocks=1, hidden=16, encoder=kind)
    enc = model.encoder
    heads = [enc.net[-1]] if kind == "full" else [layer.hyper[-1] for layer in enc.flow.transform.transforms]
    with torch.no_grad():
        for m in enc.modules():
            if isinstance(m, torch.nn.Linear):
                std = 0.15 if any(m is h for h in heads) else 0.4  # keep log-scales O(1)
                m.weight.normal_(0.0, std)
                m.bias.normal_(0.0, std)
    return enc.double()


@pytest.mark.parametrize("kind", ["full", "flow"])
def test_rich_encoder_density_integrates_to_one_and_matches_its_samples(kind):
    """On a 2-D grid, ∫ h(p | q) dp = 1 and the density's mean and covariance equal those of its
    reparametrised samples: ``rsample`` and ``log_prob`` describe the same distribution."""
    enc = randomized(kind)
    q = torch.tensor([[0.7, -1.2]], dtype=F64)
    dist = enc(q)
    n = 200_000
    x = dist.rsample((n,))[:, 0].detach()
    centre, spread = x.mean(0), x.std(0)
    axes = [torch.linspace(float(c - 9 * s), float(c + 9 * s), 801, dtype=F64) for c, s in zip(centre, spread)]
    cell = (axes[0][1] - axes[0][0]) * (axes[1][1] - axes[1][0])
    grid = torch.stack(torch.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 1, 2)
    mass = dist.log_prob(grid).exp()[:, 0] * cell
    assert abs(mass.sum().item() - 1.0) < 2e-3, f"∫ h = {mass.sum().item():.5f}"
    pts = grid[:, 0]
    mean = (mass[:, None] * pts).sum(0)
    cov = (mass[:, None, None] * (pts - mean)[:, :, None] * (pts - mean)[:, None, :]).sum(0)
    sd = cov.diagonal().sqrt()
    assert ((x.mean(0) - mean).abs() / sd).max() < 5 / math.sqrt(n)
    assert ((torch.cov(x.T) - cov).abs() / (sd[:, None] * sd[None, :])).max() < 0.02
    # not vacuous: the posterior is correlated (a diagonal Gaussian could not fit it)
    assert abs(cov[0, 1] / (sd[0] * sd[1])) > 0.05


@pytest.mark.parametrize("kind", ["full", "flow"])
def test_rich_encoder_is_reparametrised_and_batched(kind):
    enc = randomized(kind, dim=6)
    q = torch.randn(5, 6, dtype=F64)
    dist = enc(q)
    p = dist.rsample((3,))
    assert p.shape == (3, 5, 6) and dist.log_prob(p).shape == (3, 5)
    # each point's density depends on its own q only
    single = enc(q[2:3]).log_prob(p[:, 2:3])[:, 0]
    torch.testing.assert_close(dist.log_prob(p)[:, 2], single, rtol=0, atol=1e-10)
    enc.zero_grad()
    (dist.rsample((4,)).square().sum() + dist.log_prob(p.detach()).sum()).backward()
    assert all(prm.grad is not None and prm.grad.abs().sum() > 0 for prm in enc.parameters())


def test_full_encoder_is_the_gaussian_its_cholesky_factor_states():
    enc = randomized("full", dim=6)
    q = torch.randn(4, 6, dtype=F64)
    dist = enc(q)
    tril = dist.scale_tril
    assert torch.equal(tril, torch.tril(tril)) and (tril.diagonal(dim1=-2, dim2=-1) > 0).all()
    assert (tril.tril(-1).abs().sum((-1, -2)) > 1e-2).all()  # off-diagonal terms are used
    ref = torch.distributions.MultivariateNormal(dist.loc, covariance_matrix=tril @ tril.transpose(-1, -2))
    p = torch.randn(3, 4, 6, dtype=F64)
    torch.testing.assert_close(dist.log_prob(p), ref.log_prob(p), rtol=1e-9, atol=1e-9)


def test_unknown_encoder_is_refused():
    with pytest.raises(ValueError, match="unknown encoder 'maf'.*gaussian, full, flow, equivariant"):
        make_ehf(so2(2), encoder="maf")
