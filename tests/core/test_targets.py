"""Analytic targets: normalisation, declared symmetry, sampler/density agreement, dtype/device, registry."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lightning_ehf.core.targets import TARGETS, Particles2D, make_target

F64 = torch.float64
NAMES = ["ring2d", "rings2d", "shell3d", "particles2d", "gmm8", "two_rings4d"]
PLANAR = ["ring2d", "rings2d", "gmm8"]
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def rot2(theta: float | torch.Tensor) -> torch.Tensor:
    c, s = math.cos(theta), math.sin(theta)
    return torch.tensor([[c, -s], [s, c]], dtype=F64)


def haar_so3(g: torch.Generator) -> torch.Tensor:
    q, r = torch.linalg.qr(torch.randn(3, 3, generator=g, dtype=F64))
    q = q * torch.sign(torch.diagonal(r))
    if torch.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


def spec_template() -> torch.Tensor:
    """The particles2d template, written independently of the module: T_k = 1.5(cos, sin)(π/2 + 2πk/3)."""
    ang = math.pi / 2 + 2 * math.pi * torch.arange(3, dtype=F64) / 3
    return 1.5 * torch.stack([torch.cos(ang), torch.sin(ang)], dim=-1)


def rotate_particles(x: torch.Tensor, R: torch.Tensor) -> torch.Tensor:
    """Apply the same 2D rotation R to every particle of x (..., 2m)."""
    return (x.reshape(*x.shape[:-1], -1, 2) @ R.T).reshape(x.shape)


def grid_2d(n: int = 600, half: float = 5.0) -> tuple[torch.Tensor, float]:
    """Midpoint grid on [-half, half]², shape (n, n, 2), and the cell area."""
    h = 2 * half / n
    c = -half + h * (torch.arange(n, dtype=F64) + 0.5)
    return torch.stack(torch.meshgrid(c, c, indexing="ij"), dim=-1), h * h


# ----------------------------------------------------------------------------------------------- registry


def test_make_target_unknown_names_choices() -> None:
    with pytest.raises(ValueError, match="unknown target 'nope'") as err:
        make_target("nope")
    for name in NAMES:
        assert name in str(err.value)


def test_registry_and_specs() -> None:
    assert sorted(TARGETS) == sorted([*NAMES, "dw4", "lj13"])  # pools of MCMC samples (test_targets_dw4.py, _lj13.py)
    # name: (dim, the planes (i, j) its generators rotate, particles (n, D) or None, whether the particles are
    # identical and translation invariant: the pools of MCMC samples are both, no analytic target is either)
    expected = {
        "ring2d": (2, [(0, 1)], None, False),
        "rings2d": (2, [(0, 1)], None, False),
        "shell3d": (3, [(0, 1), (0, 2), (1, 2)], None, False),
        "particles2d": (6, [(0, 1)], (3, 2), False),
        "gmm8": (2, [], None, False),
        "two_rings4d": (4, [(0, 1), (2, 3)], None, False),
        "dw4": (8, [(0, 1)], (4, 2), True),
    }
    for name, (dim, planes, particles, pool) in expected.items():
        t = make_target(name)
        assert (t.name, t.dim, t.identical, t.translation_invariant) == (name, dim, pool, pool)
        assert (None if t.n_particles is None else (t.n_particles, t.particle_dim)) == particles
        sym = t.symmetry
        assert sym.dim == dim and sym.num_generators == len(planes)
        n, d = particles if particles is not None else (1, dim)
        for a, (i, j) in zip(sym.matrices, planes):  # each generator rotates its plane (every particle alike)
            one = torch.zeros(d, d, dtype=a.dtype)
            one[i, j], one[j, i] = -1.0, 1.0
            block = torch.kron(torch.eye(n, dtype=a.dtype), one)
            assert torch.allclose(a, block) or torch.allclose(a, -block), (name, a)
    assert make_target("gmm8").discrete_rotation_order == 8


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_declared_symmetries_leave_the_density_unchanged(name: str) -> None:
    """What a target declares holds for its log-density: its group, relabelling the particles when they are
    ``identical``, moving them all alike when it is ``translation_invariant``."""
    t = make_target(name)
    gen = torch.Generator().manual_seed(0)
    x = t.sample_split("test", 64, gen, dtype=torch.float64)
    ref = t.log_prob(x)
    g = t.symmetry.sample(64, gen, dtype=torch.float64, device=x.device)
    torch.testing.assert_close(t.log_prob(g.act_q(x)), ref, rtol=1e-9, atol=1e-9)
    if t.n_particles is None:
        return
    n, d = t.n_particles, t.particle_dim
    parts = x.reshape(64, n, d)
    swap = [1, 0, *range(2, n)]  # a transposition: it reverses particles2d's template, which no rotation undoes
    relabelled = t.log_prob(parts[:, swap].reshape(64, n * d))
    moved = t.log_prob((parts + torch.randn(64, 1, d, generator=gen, dtype=x.dtype)).reshape(64, n * d))
    assert torch.allclose(relabelled, ref, rtol=1e-9, atol=1e-9) == t.identical
    assert torch.allclose(moved, ref, rtol=1e-9, atol=1e-9) == t.translation_invariant


# ---------------------------------------------------------------------------------------- normalisation


@pytest.mark.parametrize("name", PLANAR)
def test_normalised_2d_grid(name: str) -> None:
    x, area = grid_2d()
    z = float(make_target(name).log_prob(x).exp().sum() * area)
    assert abs(z - 1) <= 1e-3, z


def test_normalised_shell3d_radial() -> None:
    t = make_target("shell3d")
    h = 6.0 / 6000
    r = h * (torch.arange(6000, dtype=F64) + 0.5)
    for e in torch.eye(3, dtype=F64).tolist() + [[0.6, -0.48, 0.64]]:
        e = torch.tensor(e, dtype=F64)
        z = float((4 * math.pi * r**2 * t.log_prob(r[:, None] * e).exp()).sum() * h)
        assert abs(z - 1) <= 1e-3, z


def _two_rings_radial_grid(n: int = 1500, top: float = 5.0) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Midpoint grid of (r₁, r₂) on (0, top]², the points (r₁ e, r₂ e') for fixed unit vectors e, e' of the
    planes (0,1) and (2,3), and the cell area."""
    h = top / n
    r = h * (torch.arange(n, dtype=F64) + 0.5)
    r1, r2 = torch.meshgrid(r, r, indexing="ij")
    e, e2 = torch.tensor([0.6, -0.8], dtype=F64), torch.tensor([-0.28, 0.96], dtype=F64)
    x = torch.cat([r1[..., None] * e, r2[..., None] * e2], dim=-1)
    return torch.stack([r1, r2], dim=-1), x, h * h


def test_normalised_two_rings4d_radial() -> None:
    """∫ p = ∫∫ p(r₁e, r₂e′) (2π r₁)(2π r₂) dr₁ dr₂ (the density is isotropic in each plane: tested below)."""
    t = make_target("two_rings4d")
    r, x, area = _two_rings_radial_grid()
    z = float((t.log_prob(x).exp() * (2 * math.pi) ** 2 * r[..., 0] * r[..., 1]).sum() * area)
    assert abs(z - 1) <= 1e-3, z


def test_normalised_particles2d_importance_sampling() -> None:
    """Ẑ = E_q[p/q] with q = the same ring-blur with σ_q = 0.25 (sampled here, independently of the module)."""
    p, q = make_target("particles2d"), Particles2D(sigma=0.25)
    n, g = 200_000, gen(1)
    theta = 2 * math.pi * torch.rand(n, generator=g, dtype=F64)
    c, s = torch.cos(theta)[:, None], torch.sin(theta)[:, None]
    T = spec_template()
    mean = torch.stack([c * T[:, 0] - s * T[:, 1], s * T[:, 0] + c * T[:, 1]], dim=-1).reshape(n, 6)
    x = mean + 0.25 * torch.randn(n, 6, generator=g, dtype=F64)
    w = (p.log_prob(x) - q.log_prob(x)).exp()
    z, se = float(w.mean()), float(w.std() / math.sqrt(n))
    print(f"particles2d: Z = {z:.5f} ± {se:.5f}")
    assert se < 3e-3  # the check stays sharp
    assert abs(z - 1) <= max(1e-3, 4 * se), (z, se)


# --------------------------------------------------------------------------------------------- symmetry


def _probe_points(name: str, n: int = 500) -> torch.Tensor:
    t = make_target(name)
    g = gen(2)
    return torch.cat([t.sample(n, g, dtype=F64), 2.5 * torch.randn(n, t.dim, generator=g, dtype=F64)])


@pytest.mark.parametrize("name", ["ring2d", "rings2d", "shell3d", "particles2d"])
def test_invariant_under_declared_symmetry(name: str) -> None:
    t, x, g = make_target(name), _probe_points(name), gen(3)
    lp = t.log_prob(x)
    assert torch.isfinite(lp).all()
    for _ in range(5):
        if name == "shell3d":
            xr = x @ haar_so3(g).T
        else:
            R = rot2(float(2 * math.pi * torch.rand((), generator=g, dtype=F64)))
            xr = rotate_particles(x, R)
        assert (xr - x).abs().max() > 0.1  # really moved
        assert (t.log_prob(xr) - lp).abs().max() <= 1e-6


def test_two_rings4d_invariant_under_independent_plane_rotations_only() -> None:
    t, x, g = make_target("two_rings4d"), _probe_points("two_rings4d"), gen(3)
    lp = t.log_prob(x)
    assert torch.isfinite(lp).all()
    for _ in range(5):
        a, b = (float(2 * math.pi * torch.rand((), generator=g, dtype=F64)) for _ in range(2))
        xr = torch.cat([x[:, :2] @ rot2(a).T, x[:, 2:] @ rot2(b).T], dim=-1)
        assert (xr - x).abs().max() > 0.1
        assert (t.log_prob(xr) - lp).abs().max() <= 1e-6
    # a rotation mixing the planes (coordinates 0 and 2) is not a symmetry: the two rings differ
    xm = x.clone()
    xm[:, [0, 2]] = x[:, [0, 2]] @ rot2(0.7).T
    assert (t.log_prob(xm) - lp).abs().max() > 0.1


def test_particles2d_not_invariant_under_single_particle_rotation() -> None:
    t, x = make_target("particles2d"), _probe_points("particles2d")
    xr = x.clone()
    xr[:, :2] = x[:, :2] @ rot2(0.7).T
    assert (t.log_prob(xr) - t.log_prob(x)).abs().max() > 0.1


def test_gmm8_only_discrete_symmetry() -> None:
    t, x = make_target("gmm8"), _probe_points("gmm8")
    lp = t.log_prob(x)
    assert (t.log_prob(x @ rot2(2 * math.pi / 8).T) - lp).abs().max() <= 1e-6
    assert (t.log_prob(x @ rot2(2 * math.pi / 16).T) - lp).abs().max() > 0.1


# ------------------------------------------------------------------------------- particles2d closed form


def test_particles2d_bessel_equals_bruteforce_theta_average() -> None:
    t = make_target("particles2d")
    g = gen(4)
    x = torch.cat([t.sample(4, g, dtype=F64), 1.5 * torch.randn(4, 6, generator=g, dtype=F64)])
    theta = 2 * math.pi * torch.arange(20_000, dtype=F64) / 20_000
    c, s = torch.cos(theta)[:, None], torch.sin(theta)[:, None]
    T = spec_template()
    means = torch.stack([c * T[:, 0] - s * T[:, 1], s * T[:, 0] + c * T[:, 1]], dim=-1).reshape(-1, 6)
    sig2 = 0.2**2
    log_n = -3 * math.log(2 * math.pi * sig2) - (x[:, None, :] - means).square().sum(-1) / (2 * sig2)
    brute = torch.logsumexp(log_n, dim=1) - math.log(len(theta))
    assert (t.log_prob(x) - brute).abs().max() <= 1e-8  # |Δ log p| ≤ 1e-8  <=>  relative error ≤ 1e-8


# ------------------------------------------------------------------------------- sampler vs density


def _chi2_ok(counts: np.ndarray, probs: np.ndarray, n: int) -> tuple[float, float]:
    """Chi-square statistic (bins with expected count < 5 pooled) and its 1 − 1e-6 quantile."""
    exp = probs * n
    keep = exp >= 5
    obs = np.append(counts[keep], counts[~keep].sum() + (n - counts.sum()))
    exp = np.append(exp[keep], n - exp[keep].sum())
    nz = exp > 0
    chi2 = float(((obs[nz] - exp[nz]) ** 2 / exp[nz]).sum())
    df = int(nz.sum()) - 1
    z = 4.753  # standard normal 1 − 1e-6 quantile; Wilson–Hilferty approximation of the chi-square quantile
    return chi2, df * (1 - 2 / (9 * df) + z * math.sqrt(2 / (9 * df))) ** 3


@pytest.mark.parametrize("name", PLANAR)
def test_sampler_matches_density_2d_histogram(name: str) -> None:
    """40×40 histogram of samples on [-5,5]² vs cell probabilities integrated from log_prob (15×15 sub-cells)."""
    t, n = make_target(name), 200_000
    x, area = grid_2d(600)
    probs = (t.log_prob(x).exp() * area).reshape(40, 15, 40, 15).sum(dim=(1, 3)).numpy()
    xs = t.sample(n, gen(5), dtype=F64).numpy()
    counts, _, _ = np.histogram2d(xs[:, 0], xs[:, 1], bins=40, range=[[-5, 5], [-5, 5]])
    chi2, bound = _chi2_ok(counts.ravel(), probs.ravel(), n)
    assert chi2 <= bound, (chi2, bound)


def test_sampler_matches_density_shell3d_histogram() -> None:
    """Joint histogram of (r, z/r, azimuth) vs radial quadrature of log_prob × uniform direction."""
    t, n = make_target("shell3d"), 200_000
    edges = np.linspace(0.0, 4.0, 41)
    h = (edges[1] - edges[0]) / 50
    r = torch.from_numpy(edges[0] + h * (np.arange(40 * 50) + 0.5))
    pr = 4 * math.pi * r**2 * t.log_prob(r[:, None] * torch.tensor([0.0, 0.0, 1.0], dtype=F64)).exp() * h
    probs = np.einsum("i,j,k->ijk", pr.reshape(40, 50).sum(1).numpy(), np.full(6, 1 / 6), np.full(6, 1 / 6))
    xs = t.sample(n, gen(6), dtype=F64).numpy()
    rr = np.linalg.norm(xs, axis=1)
    feats = np.stack([rr, xs[:, 2] / rr, np.arctan2(xs[:, 1], xs[:, 0])], axis=1)
    counts, _ = np.histogramdd(feats, bins=[edges, np.linspace(-1, 1, 7), np.linspace(-np.pi, np.pi, 7)])
    chi2, bound = _chi2_ok(counts.ravel(), probs.ravel(), n)
    assert chi2 <= bound, (chi2, bound)


def test_sampler_matches_density_two_rings4d_histogram() -> None:
    """Joint histogram of the two radii (r₁, r₂) vs quadrature of log_prob, and of the two angles vs uniform
    (independent of the radii: the joint (r₁, φ₁, φ₂) histogram is tested too)."""
    t, n = make_target("two_rings4d"), 200_000
    r, x, area = _two_rings_radial_grid(1500, 5.0)
    dens = t.log_prob(x).exp() * (2 * math.pi) ** 2 * r[..., 0] * r[..., 1] * area
    probs = dens.reshape(30, 50, 30, 50).sum(dim=(1, 3)).numpy()  # 30×30 bins of width 1/6 on (0, 5]²
    xs = t.sample(n, gen(5), dtype=F64).numpy()
    r1, r2 = np.linalg.norm(xs[:, :2], axis=1), np.linalg.norm(xs[:, 2:], axis=1)
    counts, _, _ = np.histogram2d(r1, r2, bins=30, range=[[0, 5], [0, 5]])
    chi2, bound = _chi2_ok(counts.ravel(), probs.ravel(), n)
    assert chi2 <= bound, (chi2, bound)
    p1 = probs.sum(1)
    phi1, phi2 = np.arctan2(xs[:, 1], xs[:, 0]), np.arctan2(xs[:, 3], xs[:, 2])
    counts3, _ = np.histogramdd(
        np.stack([r1, phi1, phi2], 1),
        bins=[np.linspace(0, 5, 31), np.linspace(-np.pi, np.pi, 7), np.linspace(-np.pi, np.pi, 7)],
    )
    chi2, bound = _chi2_ok(
        counts3.ravel(), np.einsum("i,j,k->ijk", p1, np.full(6, 1 / 6), np.full(6, 1 / 6)).ravel(), n
    )
    assert chi2 <= bound, (chi2, bound)


def test_sampler_matches_density_particles2d_importance_identity() -> None:
    """E_p[f] from samples equals the self-normalised importance estimate E_q[w f]/E_q[w], w = p/q, for several
    statistics f (−log p: the entropy by a second route; |x|²; pairwise distances; a coordinate square)."""
    p, q, n = make_target("particles2d"), Particles2D(sigma=0.25), 200_000
    xp = p.sample(n, gen(7), dtype=F64)
    xq = q.sample(n, gen(8), dtype=F64)
    w = (p.log_prob(xq) - q.log_prob(xq)).exp()
    w = w / w.mean()

    def feats(x: torch.Tensor) -> torch.Tensor:
        xs = x.reshape(-1, 3, 2)
        return torch.stack(
            [
                -p.log_prob(x),
                x.square().sum(-1),
                (xs[:, 0] - xs[:, 1]).norm(dim=-1),
                (xs[:, 1] - xs[:, 2]).norm(dim=-1),
                x[:, 0] ** 2,
                x[:, 0] * x[:, 3],
            ],
            dim=1,
        )

    fp, fq = feats(xp), feats(xq)
    mean_p, se_p = fp.mean(0), fp.std(0) / math.sqrt(n)
    mean_q = (w[:, None] * fq).mean(0)
    se_q = (w[:, None] * (fq - mean_q)).std(0) / math.sqrt(n)  # delta-method SE of the ratio estimator
    z = (mean_p - mean_q).abs() / (se_p**2 + se_q**2).sqrt()
    assert (z <= 5).all(), (mean_p, mean_q, z)
    # The statistics above are rotation invariant; the sampler must also spread the rotation uniformly
    # (the density is invariant, tested above), so the first particle's polar angle is uniform.
    phi = torch.atan2(xp[:, 1], xp[:, 0]).numpy()
    counts, _ = np.histogram(phi, bins=36, range=(-np.pi, np.pi))
    chi2, bound = _chi2_ok(counts, np.full(36, 1 / 36), n)
    assert chi2 <= bound, (chi2, bound)


@pytest.mark.parametrize("name", NAMES)
def test_entropy_matches_independent_samples(name: str) -> None:
    t, n = make_target(name), 50_000
    h, se = t.entropy(n, generator=gen(9))
    assert isinstance(h, float) and isinstance(se, float) and 0 < se < 0.05
    lp = t.log_prob(t.sample(n, gen(10), dtype=F64))
    h2, se2 = float(-lp.mean()), float(lp.std() / math.sqrt(n))
    assert abs(se - se2) <= 0.1 * se2
    assert abs(h - h2) <= 5 * math.hypot(se, se2), (h, h2, se, se2)


# ------------------------------------------------------------------------------------- dtype and device


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", NAMES)
def test_dtype_device_grad_and_generator(name: str, dtype: torch.dtype, device: str) -> None:
    t = make_target(name)
    torch.manual_seed(0)
    rng_state = torch.get_rng_state()
    x = t.sample(64, gen(11), dtype=dtype, device=device)
    assert torch.equal(torch.get_rng_state(), rng_state)  # all randomness from the given generator
    assert x.shape == (64, t.dim) and x.dtype == dtype and x.device.type == device
    assert torch.equal(x, t.sample(64, gen(11), dtype=dtype, device=device))
    assert not torch.equal(x, t.sample(64, gen(12), dtype=dtype, device=device))

    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64 if dtype == torch.float32 else torch.float32)
    try:  # constants must follow x, not the defaults
        xb = x.reshape(4, 16, t.dim).clone().requires_grad_(True)
        lp = t.log_prob(xb)
    finally:
        torch.set_default_dtype(default)
    assert lp.shape == (4, 16) and lp.dtype == dtype and lp.device.type == device
    assert torch.isfinite(lp).all()
    lp.sum().backward()
    assert torch.isfinite(xb.grad).all() and xb.grad.abs().sum() > 0

    lp64 = t.log_prob(x.detach().to("cpu", F64))
    tol = 1e-4 if dtype == torch.float32 else 1e-12
    assert (lp.detach().reshape(-1).to("cpu", F64) - lp64).abs().max() <= tol


def test_particles2d_finite_gradient_at_degenerate_point() -> None:
    """At x = 0 (ρ = 0) the density is smooth with zero gradient; the safe sqrt must not give NaN."""
    t = make_target("particles2d")
    x = torch.zeros(2, 6, dtype=F64, requires_grad=True)
    lp = t.log_prob(x)
    lp.sum().backward()
    assert torch.allclose(lp, torch.full_like(lp, -3 * math.log(2 * math.pi * 0.04) - 6.75 / 0.08))
    assert torch.allclose(x.grad, torch.zeros_like(x.grad))
