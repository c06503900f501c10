"""Momentum encoders: the equivariant (polar-frame) encoder is equivariant and is the Gaussian it
claims to be; the diagonal encoder starts at the base momentum density."""

from __future__ import annotations

import math

import pytest
import torch

from lightning_ehf.core import FramedGaussian, make_ehf, product, rotation_plane, so2

F64 = torch.float64

SYMMETRIES = {
    "so2": so2(2),
    "so2_plane02_in_3d": so2(3, (0, 2)),  # a free coordinate between the plane's coordinates
    "planes4": product(rotation_plane(4, 0, 1), rotation_plane(4, 2, 3)),
    "planes_13_02_in_5d": product(rotation_plane(5, 1, 3), rotation_plane(5, 0, 4)),
}


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
    """Freshly built (zero last layer), both encoders are N(0, σ_p² I) for any q."""
    sigma_p = 1.7
    for kind in ("gaussian", "equivariant"):
        model = make_ehf(so2(3), blocks=1, hidden=8, encoder=kind, sigma_p=sigma_p).double()
        q, p = torch.randn(7, 3, dtype=F64), torch.randn(7, 3, dtype=F64)
        ref = torch.distributions.Normal(torch.zeros((), dtype=F64), torch.tensor(sigma_p, dtype=F64)).log_prob(p).sum(-1)
        torch.testing.assert_close(model.encoder(q).log_prob(p), ref, rtol=0, atol=1e-6)


def test_equivariant_encoder_at_origin_is_finite():
    enc = random_encoder(SYMMETRIES["planes4"])
    q = torch.zeros(3, 4, dtype=F64)
    dist = enc(q)
    assert torch.isfinite(dist.log_prob(torch.randn(3, 4, dtype=F64))).all()
