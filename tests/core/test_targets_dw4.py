"""dw4: the double-well pair energy, the sample pools, normalisation of log_prob on the centre-of-mass-free
subspace, the split sampler and the entropy."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

import lightning_ehf
from lightning_ehf.core.targets import DoubleWellParticles, Target, double_well_pair_energy, make_target

F64 = torch.float64
SPLITS = {"train": 10_000, "val": 2_000, "test": 5_000}
ASSET = Path(lightning_ehf.__file__).resolve().parent / "assets" / "dw4.npz"
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def pair_energy(d: float) -> float:
    """f(d) = 0.9 (d − 4)⁴ − 4 (d − 4)², written independently of the module."""
    return 0.9 * (d - 4.0) ** 4 - 4.0 * (d - 4.0) ** 2


def centre(x: torch.Tensor) -> torch.Tensor:
    """Remove the centroid of the 4 particles of x (..., 8): the orthogonal projection onto Σ_i x_i = 0."""
    xs = x.reshape(*x.shape[:-1], 4, 2)
    return (xs - xs.mean(dim=-2, keepdim=True)).reshape(x.shape)


def rotate_particles(x: torch.Tensor, theta: float | torch.Tensor) -> torch.Tensor:
    """Rotate every particle of x (..., 8) by θ (a float or a tensor of shape x.shape[:-1])."""
    theta = torch.as_tensor(theta, dtype=x.dtype)
    c, s = torch.cos(theta)[..., None], torch.sin(theta)[..., None]
    xs = x.reshape(*x.shape[:-1], 4, 2)
    return torch.stack([c * xs[..., 0] - s * xs[..., 1], s * xs[..., 0] + c * xs[..., 1]], dim=-1).reshape(x.shape)


@pytest.fixture(scope="module")
def dw4() -> DoubleWellParticles:
    return make_target("dw4")


@pytest.fixture(scope="module")
def pools() -> dict[str, np.ndarray]:
    with np.load(ASSET) as data:
        return {s: data[s] for s in SPLITS}


# ------------------------------------------------------------------------------------------------ energy


@pytest.mark.parametrize("side", [1.0, 2.5, 3.88, 5.0])
def test_energy_of_a_square(side: float) -> None:
    x = torch.tensor([[0.0, 0.0], [side, 0.0], [side, side], [0.0, side]], dtype=F64).reshape(8)
    expected = 4 * pair_energy(side) + 2 * pair_energy(side * math.sqrt(2))
    assert float(double_well_pair_energy(x, 4, 2)) == pytest.approx(expected, rel=1e-12, abs=1e-12)


def test_energy_wells_and_barrier() -> None:
    """Two particles on a line: minima at d₀ ± √(−b/(2a)), barrier b²/(4a) above them at d₀."""
    a, b, d0 = 0.9, -4.0, 4.0
    d = torch.tensor([d0 - math.sqrt(-b / (2 * a)), d0, d0 + math.sqrt(-b / (2 * a))], dtype=F64)
    x = torch.stack([torch.zeros_like(d), d], dim=-1).requires_grad_(True)
    e = double_well_pair_energy(x, 2, 1, a, b, d0)
    (grad,) = torch.autograd.grad(e.sum(), x)
    e = e.detach()
    assert grad.abs().max() < 1e-12
    assert float(e[1] - e[0]) == pytest.approx(b * b / (4 * a)) and float(e[2]) == pytest.approx(float(e[0]))
    assert float(e[0]) == pytest.approx(-b * b / (4 * a))


def test_energy_invariances() -> None:
    g = gen(0)
    x = 2.0 * torch.randn(3, 7, 8, generator=g, dtype=F64)
    e = double_well_pair_energy(x, 4, 2)
    assert e.shape == (3, 7)
    translated = x + torch.randn(3, 7, 1, 2, generator=g, dtype=F64).expand(3, 7, 4, 2).reshape(3, 7, 8)
    rotated = rotate_particles(x, 2 * math.pi * torch.rand(3, 7, generator=g, dtype=F64))
    reflected = (x.reshape(3, 7, 4, 2) * torch.tensor([1.0, -1.0], dtype=F64)).reshape(3, 7, 8)
    permuted = x.reshape(3, 7, 4, 2)[..., torch.tensor([2, 0, 3, 1]), :].reshape(3, 7, 8)
    for y in (translated, rotated, reflected, permuted):
        assert torch.allclose(double_well_pair_energy(y, 4, 2), e, rtol=1e-12, atol=1e-9)


def test_energy_gradient_finite_at_coincident_particles() -> None:
    x = torch.tensor([0.0, 0.0, 0.0, 0.0, 1.0, 2.0, -3.0, 0.5], dtype=F64, requires_grad=True)
    e = double_well_pair_energy(x, 4, 2)
    e.backward()
    assert torch.isfinite(e) and torch.isfinite(x.grad).all()


# ------------------------------------------------------------------------------------- registry and pools


def test_registry_attributes(dw4: DoubleWellParticles) -> None:
    assert (dw4.name, dw4.dim, dw4.n_particles, dw4.particle_dim, dw4.kT) == ("dw4", 8, 4, 2, 1.0)
    assert dw4.finite_pool and not Target.finite_pool and not make_target("ring2d").finite_pool
    assert dw4.identical and dw4.translation_invariant and dw4.symmetry.particles == (4, 2)
    assert math.isfinite(dw4.log_z) and 0 < dw4.log_z_se <= 0.01


def test_analytic_target_sample_split_is_sample() -> None:
    t = make_target("ring2d")
    assert torch.equal(t.sample_split("train", 16, gen(3)), t.sample(16, gen(3)))


def test_pools_shapes_centred_disjoint(pools: dict[str, np.ndarray]) -> None:
    for split, n in SPLITS.items():
        pool = pools[split]
        assert pool.shape == (n, 8) and pool.dtype == np.float32 and np.isfinite(pool).all()
        assert np.abs(pool.reshape(n, 4, 2).mean(axis=1)).max() < 1e-5
    rows = np.concatenate(list(pools.values()))
    assert len(np.unique(rows, axis=0)) == len(rows)  # no row shared within or between splits
    with np.load(ASSET) as data:
        assert "seed" in json.loads(str(data["metadata"]))


def test_missing_asset_names_the_script(tmp_path: Path) -> None:
    t = DoubleWellParticles(path=tmp_path / "dw4.npz")  # lazy: constructing reads nothing
    with pytest.raises(FileNotFoundError, match="scripts/make_dw4.py"):
        t.sample(3, gen(0))
    with pytest.raises(FileNotFoundError, match="scripts/make_dw4.py"):
        _ = t.log_z


def test_asset_for_another_energy_is_refused() -> None:
    with pytest.raises(ValueError, match="holds samples for"):
        _ = DoubleWellParticles(a=1.0).log_z


# --------------------------------------------------------------------------------------------- sampling


def test_sample_split_rows_and_reproducibility(dw4: DoubleWellParticles, pools: dict[str, np.ndarray]) -> None:
    torch.manual_seed(0)
    rng_state = torch.get_rng_state()
    x = dw4.sample_split("train", 100, gen(1))
    assert torch.equal(torch.get_rng_state(), rng_state)  # all randomness from the given generator
    assert x.shape == (100, 8) and x.dtype == torch.float32
    assert torch.equal(x, dw4.sample_split("train", 100, gen(1)))
    assert not torch.equal(x, dw4.sample_split("train", 100, gen(2)))
    assert torch.equal(dw4.sample_split("train", 40, gen(1)), x[:40])  # a smaller n: a subset for that seed
    train = {tuple(r) for r in pools["train"].tolist()}
    assert len({tuple(r) for r in x.tolist()}) == 100 and all(tuple(r) in train for r in x.tolist())
    everything = dw4.sample_split("val", 2000, gen(3))
    assert sorted(map(tuple, everything.tolist())) == sorted(map(tuple, pools["val"].tolist()))
    test = {tuple(r) for r in pools["test"].tolist()}
    assert all(tuple(r) in test for r in dw4.sample(50, gen(4)).tolist())  # sample draws from the test pool
    assert torch.equal(dw4.sample(50, gen(4)), dw4.sample_split("test", 50, gen(4)))


def test_sample_split_errors(dw4: DoubleWellParticles) -> None:
    with pytest.raises(ValueError, match=r"dw4 has 10000 'train' samples; asked for 20000"):
        dw4.sample_split("train", 20_000, gen(0))
    with pytest.raises(ValueError, match=r"dw4 has 5000 'test' samples; asked for 5001"):
        dw4.sample(5001, gen(0))
    with pytest.raises(ValueError, match="unknown split 'validation'"):
        dw4.sample_split("validation", 10, gen(0))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dtype_device_and_gradient(dw4: DoubleWellParticles, dtype: torch.dtype, device: str) -> None:
    x = dw4.sample_split("val", 64, gen(5), dtype=dtype, device=device)
    assert x.dtype == dtype and x.device.type == device
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64 if dtype == torch.float32 else torch.float32)
    try:  # constants must follow x, not the defaults
        xb = x.reshape(4, 16, 8).clone().requires_grad_(True)
        lp = dw4.log_prob(xb)
    finally:
        torch.set_default_dtype(default)
    assert lp.shape == (4, 16) and lp.dtype == dtype and lp.device.type == device and torch.isfinite(lp).all()
    lp.sum().backward()
    assert torch.isfinite(xb.grad).all() and xb.grad.abs().sum() > 0
    x64 = x.detach().to("cpu", F64)
    lp64 = dw4.log_prob(x64)
    tol = 1e-3 if dtype == torch.float32 else 1e-12
    assert (lp.detach().reshape(-1).to("cpu", F64) - lp64).abs().max() <= tol
    assert torch.allclose(lp64, -double_well_pair_energy(x64, 4, 2) - dw4.log_z, rtol=0, atol=1e-12)
    shifted = x64 + torch.tensor([0.7, -1.3], dtype=F64).repeat(4)  # E is translation invariant
    assert torch.allclose(dw4.log_prob(shifted), lp64, rtol=0, atol=1e-9)


# ------------------------------------------------------------------------------- normalisation, entropy


def test_log_prob_normalised_on_the_com_free_subspace(dw4: DoubleWellParticles, pools: dict[str, np.ndarray]) -> None:
    """∫_S p = 1 by importance sampling, independently of the generation script: proposal q = 0.95 × mixture
    of rotation-averaged Gaussian kernels on 1000 val samples + 0.05 × N(0, 2² I_S), all in the 8-D
    coordinates of S (a CoM-free N(0, I₈) draw, centred, is N(0, I) on S; |x − c| is the distance in S):

        (1/2π) ∫ N_S(x; R_θ c, h²) dθ = (2πh²)^{−3} exp(−(|x|² + |c|² − 2ρ)/(2h²)) I₀(ρ/h²),
        ρ = √((x·c)² + (x·Jc)²),  J c_k = (−c_k,y, c_k,x).

    log mean(p/q) must be 0 within 4 standard errors (its own and log Z's); the self-normalised mean
    energy must match the test pool's within 4 standard errors (the pools sample p)."""
    g, h, broad, w_broad, n = gen(7), 0.25, 2.0, 0.05, 30_000
    centers = torch.from_numpy(pools["val"][:1000]).to(F64)
    centers = centre(centers)
    m = torch.randint(len(centers), (n,), generator=g)
    x = rotate_particles(centers[m], 2 * math.pi * torch.rand(n, generator=g, dtype=F64))
    x = x + h * centre(torch.randn(n, 8, generator=g, dtype=F64))
    from_broad = torch.rand(n, generator=g, dtype=F64) < w_broad
    x[from_broad] = broad * centre(torch.randn(int(from_broad.sum()), 8, generator=g, dtype=F64))

    c_rot = torch.stack([-centers.reshape(-1, 4, 2)[..., 1], centers.reshape(-1, 4, 2)[..., 0]], -1).reshape(-1, 8)
    a, b = x @ centers.T, x @ c_rot.T
    rho = torch.sqrt(a * a + b * b)
    dist_sq = x.square().sum(-1, keepdim=True) + centers.square().sum(-1) - 2 * rho
    log_mix = (
        torch.logsumexp(-dist_sq / (2 * h * h) + torch.log(torch.special.i0e(rho / (h * h))), dim=-1)
        - math.log(len(centers))
        - 3 * math.log(2 * math.pi * h * h)
    )
    log_broad = -x.square().sum(-1) / (2 * broad**2) - 3 * math.log(2 * math.pi * broad**2)
    log_q = torch.logaddexp(math.log1p(-w_broad) + log_mix, math.log(w_broad) + log_broad)

    log_w = dw4.log_prob(x) - log_q
    w = torch.exp(log_w - log_w.max())
    log_integral = float(log_w.max() + w.mean().log())
    se = float(w.std() / (w.mean() * math.sqrt(n)))
    assert se < 0.05, se  # the check must be able to see an error of a few hundredths of a nat
    assert abs(log_integral) <= 4 * math.hypot(se, dw4.log_z_se), (log_integral, se)

    energy = double_well_pair_energy(x, 4, 2)
    mean_is = float((w * energy).sum() / w.sum())
    se_is = float(torch.sqrt((w.square() * (energy - mean_is).square()).sum()) / w.sum())
    pool_energy = double_well_pair_energy(torch.from_numpy(pools["test"]).to(F64), 4, 2)
    mean_pool, se_pool = float(pool_energy.mean()), float(pool_energy.std() / math.sqrt(len(pool_energy)))
    assert abs(mean_is - mean_pool) <= 4 * math.hypot(se_is, se_pool), (mean_is, se_is, mean_pool, se_pool)


def test_entropy(dw4: DoubleWellParticles, pools: dict[str, np.ndarray]) -> None:
    h, se = dw4.entropy()
    assert isinstance(h, float) and isinstance(se, float) and math.isfinite(h) and 0 < se < 0.1
    lp = dw4.log_prob(torch.from_numpy(pools["test"]).to(F64))
    assert h == pytest.approx(float(-lp.mean()), abs=1e-10)
    assert se == pytest.approx(math.hypot(float(lp.std()) / math.sqrt(len(lp)), dw4.log_z_se), rel=1e-9)
    h_sub, se_sub = dw4.entropy(1000, generator=gen(8))
    assert se_sub > se and abs(h_sub - h) <= 5 * se_sub
    assert dw4.entropy(1000, generator=gen(8)) == (h_sub, se_sub)
