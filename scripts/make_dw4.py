"""Write ``lightning_ehf/assets/dw4.npz``: seeded MCMC sample pools of the ``dw4`` target and its log Z.

dw4: 4 particles in 2D, E(x) = Σ_{i<j} a(d_ij − d₀)⁴ + b(d_ij − d₀)², a = 0.9, b = −4, d₀ = 4, kT = 1, on the
centre-of-mass-free subspace S = {Σ_i x_i = 0} ⊂ R⁸. Everything runs in the orthonormal coordinates
z ∈ R⁶ of S, x = B z with B = H ⊗ I₂ (H the normalised Helmert contrasts), so every state is centre-of-mass
free by construction and densities in z are densities on S.

1. **Samples.** One independent parallel-tempering chain per pool row (17000 chains): K replicas at
   temperatures T_k = T_max^{k/(K−1)}, each moved by MALA on exp(−E/T_k) with its own step, and a swap
   of neighbouring replicas, accepted with min(1, exp((1/T_k − 1/T_{k+1})(E_k − E_{k+1}))), every
   ``SWAP_EVERY`` steps. Half the chains start from compact configurations (most pairs in the short well),
   half from spread ones, both relaxed by a few clipped gradient steps. The steps are tuned towards an
   acceptance of 0.6 during the first ``ADAPT_STEPS`` steps, then frozen; the T = 1 state of every chain
   after ``N_STEPS`` steps is one sample. Chains 0–9999 give ``train``, 10000–11999 ``val``,
   12000–16999 ``test`` (disjoint by construction).
2. **Checks on the samples** (asserted): the fraction of pair distances in the short well (d < d₀) agrees
   between the compact-start and the spread-start chains, and the mean energy between every two splits,
   within 3 standard errors; both also agree with their importance-sampling estimates (step 3, proposal B,
   which uses no MCMC sample) within 4 standard errors.
3. **log Z** = log ∫_S exp(−E) by importance sampling, log Ẑ = log mean w, w = exp(−E(z)) / q(z), standard
   error std(w) / (√N mean w) (delta method), with two proposals:
   A. a mixture of the rotation-averaged Gaussian kernels N(R_θ c_m, h² I₆), θ ~ U(0, 2π), centred on
      ``N_CENTERS`` train samples c_m, with a ``DEFENSIVE`` share of the broad Gaussian of B (which bounds the
      weights). Every rotation R_θ of all particles acts on z as exp(θ J), J = I₃ ⊗ [[0, −1], [1, 0]], so
      (1/2π) ∫ N(z; R_θ c, h²) dθ = (2πh²)^{−3} exp(−(|z|² + |c|² − 2ρ)/(2h²)) I₀(ρ/h²),
      ρ = √((z·c)² + (z·Jc)²).
   B. one broad Gaussian N(0, s² I₆), s² = E|z|²/6 of the train pool: independent of the MCMC; bounded
      weights, since E grows quartically.
   A gives the stored log Z; B must agree within 3 combined standard errors.

Deterministic: fixed seed, CPU, float64, one thread. Run from the repository root (about two minutes):

    nice -n 19 env OMP_NUM_THREADS=1 .venv/bin/python scripts/make_dw4.py
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import torch
from pool_checks import agree, mean_se, split_pools
from torch import Tensor

from lightning_ehf.core.frames import CentreOfMassFrame
from lightning_ehf.core.targets import double_well_pair_energy

OUT = Path(__file__).resolve().parent.parent / "lightning_ehf" / "assets" / "dw4.npz"
SEED = 20240604
A, B, D0, KT = 0.9, -4.0, 4.0, 1.0
N_PARTICLES, PARTICLE_DIM = 4, 2
SPLITS = {"train": 10_000, "val": 2_000, "test": 5_000}

# MCMC
TEMPERATURES = [5.0 ** (k / 3) for k in range(4)]  # 1, 1.71, 2.92, 5: the barrier 4.4 kT per pair is ≈ 0.9 T_max
N_STEPS, ADAPT_STEPS, ADAPT_EVERY, SWAP_EVERY = 2500, 1000, 50, 5
TARGET_ACCEPTANCE, INITIAL_STEP = 0.6, 0.005
RELAX_STEPS, RELAX_RATE = 300, 0.05
COMPACT_SCALE, SPREAD_SCALE = 1.0, 3.0  # std of the initial z, before relaxation

# importance sampling
N_CENTERS, BANDWIDTH, DEFENSIVE, N_PROPOSAL_A = 4000, 0.2, 0.02, 100_000
N_PROPOSAL_B, CHUNK_B = 32_000_000, 500_000

_PAIR_I, _PAIR_J = torch.triu_indices(N_PARTICLES, N_PARTICLES, 1)
_JZ = torch.kron(
    torch.eye(N_PARTICLES - 1, dtype=torch.float64), torch.tensor([[0.0, -1.0], [1.0, 0.0]], dtype=torch.float64)
)


BASIS = CentreOfMassFrame(N_PARTICLES, PARTICLE_DIM).basis  # B = H ⊗ I₂, float64


def pair_distances(z: Tensor) -> Tensor:
    x = (z @ BASIS.T).reshape(*z.shape[:-1], N_PARTICLES, PARTICLE_DIM)
    return (x[..., _PAIR_I, :] - x[..., _PAIR_J, :]).norm(dim=-1)


def energy(z: Tensor) -> Tensor:
    u = pair_distances(z) - D0
    return (A * u**4 + B * u**2).sum(dim=-1)


def energy_and_grad(z: Tensor) -> tuple[Tensor, Tensor]:
    """E(Bz) and ∇_z E = Bᵀ ∇_x E, ∂E/∂x_i = Σ_j f'(d_ij)(x_i − x_j)/d_ij, f'(d) = 4a(d − d₀)³ + 2b(d − d₀)."""
    x = (z @ BASIS.T).reshape(*z.shape[:-1], N_PARTICLES, PARTICLE_DIM)
    diff = x[..., _PAIR_I, :] - x[..., _PAIR_J, :]
    d = diff.norm(dim=-1)
    u = d - D0
    pair_force = ((4 * A * u**3 + 2 * B * u) / d)[..., None] * diff
    grad_x = torch.zeros_like(x).index_add_(-2, _PAIR_I, pair_force).index_add_(-2, _PAIR_J, -pair_force)
    return (A * u**4 + B * u**2).sum(dim=-1), grad_x.flatten(-2) @ BASIS


def short_well_fraction(z: Tensor) -> Tensor:
    """Per configuration, the fraction of its pair distances below the barrier d₀."""
    return (pair_distances(z) < D0).double().mean(dim=-1)


def run_parallel_tempering(n_chains: int, g: torch.Generator) -> tuple[Tensor, dict]:
    """The T = 1 state of ``n_chains`` independent parallel-tempering chains after ``N_STEPS`` steps."""
    K, dim = len(TEMPERATURES), BASIS.shape[1]
    temps = torch.tensor(TEMPERATURES, dtype=torch.float64)[:, None]  # (K, 1)
    compact = torch.arange(n_chains) % 2 == 0
    scale = torch.where(compact, COMPACT_SCALE, SPREAD_SCALE).double()[None, :, None]
    z = scale * torch.randn(K, n_chains, dim, generator=g, dtype=torch.float64)
    for _ in range(RELAX_STEPS):  # clipped gradient descent: MALA would stall on the huge initial forces
        _, grad = energy_and_grad(z)
        z = z - RELAX_RATE * grad / grad.norm(dim=-1, keepdim=True).clamp(min=1.0)
    sf0 = short_well_fraction(z[0])
    print(
        f"start (after relaxation): short-well fraction compact {sf0[compact].mean():.3f}, "
        f"spread {sf0[~compact].mean():.3f}"
    )

    e, grad = energy_and_grad(z)
    step = INITIAL_STEP * temps.clone()  # (K, 1)
    accepted_window = torch.zeros(K, dtype=torch.float64)
    accepted_prod, swaps_tried, swaps_done = torch.zeros(K, dtype=torch.float64), 0, 0
    t0 = time.time()
    for it in range(1, N_STEPS + 1):
        drift = step[..., None] * grad / temps[..., None]
        proposal = z - drift + torch.sqrt(2 * step)[..., None] * torch.randn(z.shape, generator=g, dtype=z.dtype)
        e_new, grad_new = energy_and_grad(proposal)
        drift_back = step[..., None] * grad_new / temps[..., None]
        log_fwd = -(proposal - z + drift).square().sum(-1) / (4 * step)
        log_back = -(z - proposal + drift_back).square().sum(-1) / (4 * step)
        log_alpha = (e - e_new) / temps + log_back - log_fwd
        accept = torch.log(torch.rand(log_alpha.shape, generator=g, dtype=torch.float64)) < log_alpha
        z = torch.where(accept[..., None], proposal, z)
        e = torch.where(accept, e_new, e)
        grad = torch.where(accept[..., None], grad_new, grad)
        rate = accept.double().mean(dim=1)
        if it <= ADAPT_STEPS:
            accepted_window += rate
            if it % ADAPT_EVERY == 0:
                step = step * torch.exp(accepted_window / ADAPT_EVERY - TARGET_ACCEPTANCE)[:, None]
                accepted_window.zero_()
        else:
            accepted_prod += rate
        if it % SWAP_EVERY == 0:  # alternate the even and the odd neighbour pairs (k, k+1)
            lo = torch.arange((it // SWAP_EVERY) % 2, K - 1, 2)
            hi = lo + 1
            log_alpha = (1 / temps[lo] - 1 / temps[hi]) * (e[lo] - e[hi])
            swap = torch.log(torch.rand(log_alpha.shape, generator=g, dtype=torch.float64)) < log_alpha
            for arr in (z, grad):
                a_lo, a_hi = arr[lo].clone(), arr[hi].clone()
                arr[lo] = torch.where(swap[..., None], a_hi, a_lo)
                arr[hi] = torch.where(swap[..., None], a_lo, a_hi)
            e_lo, e_hi = e[lo].clone(), e[hi].clone()
            e[lo], e[hi] = torch.where(swap, e_hi, e_lo), torch.where(swap, e_lo, e_hi)
            if it > ADAPT_STEPS:
                swaps_tried += swap.numel()
                swaps_done += int(swap.sum())
        if it % 500 == 0:
            sf = short_well_fraction(z[0])
            print(
                f"step {it:5d}: acceptance {[round(v, 3) for v in rate.tolist()]}, T=1 short-well fraction "
                f"compact {sf[compact].mean():.4f} spread {sf[~compact].mean():.4f}, mean E {e[0].mean():.4f}"
                f"  ({time.time() - t0:.0f} s)",
                flush=True,
            )
    n_prod = N_STEPS - ADAPT_STEPS
    settings = {
        "sampler": "parallel-tempering MALA, one sample (the T = 1 replica's final state) per chain",
        "n_chains": n_chains,
        "temperatures": TEMPERATURES,
        "n_steps": N_STEPS,
        "adapt_steps": ADAPT_STEPS,
        "adapt_every": ADAPT_EVERY,
        "target_acceptance": TARGET_ACCEPTANCE,
        "mala_steps": step[:, 0].tolist(),
        "swap_every": SWAP_EVERY,
        "acceptance": (accepted_prod / n_prod).tolist(),
        "swap_acceptance": swaps_done / max(swaps_tried, 1),
        "init": f"even chains z ~ N(0, {COMPACT_SCALE}²), odd N(0, {SPREAD_SCALE}²), then {RELAX_STEPS} "
        f"clipped gradient steps of rate {RELAX_RATE}",
    }
    return z[0], settings


def log_mean_exp(log_w: Tensor) -> tuple[float, float, float]:
    """log mean w, its delta-method standard error std(w)/(√N mean w), and the ESS (Σw)²/Σw²."""
    w = torch.exp(log_w - log_w.max())
    n = len(w)
    return (
        float(log_w.max() + w.mean().log()),
        float(w.std() / (w.mean() * math.sqrt(n))),
        float(w.sum() ** 2 / w.square().sum()),
    )


def log_gaussian(z: Tensor, s: float) -> Tensor:
    return -z.square().sum(-1) / (2 * s * s) - 0.5 * z.shape[-1] * math.log(2 * math.pi * s * s)


def rotation_kernel_mixture_log_q(z: Tensor, centers: Tensor, h: float, chunk: int = 4000) -> Tensor:
    """log (1/M) Σ_m (1/2π) ∫ N(z; R_θ c_m, h² I) dθ, in closed form (module docstring, proposal A)."""
    c_sq, c_rot = centers.square().sum(-1), centers @ _JZ.T
    out = []
    for zc in z.split(chunk):
        a, b = zc @ centers.T, zc @ c_rot.T
        rho = torch.sqrt(a * a + b * b)
        dist_sq = zc.square().sum(-1, keepdim=True) + c_sq - 2 * rho
        out.append(torch.logsumexp(-dist_sq / (2 * h * h) + torch.log(torch.special.i0e(rho / (h * h))), dim=-1))
    return torch.cat(out) - math.log(len(centers)) - 0.5 * z.shape[-1] * math.log(2 * math.pi * h * h)


def importance_log_z_kernels(centers: Tensor, broad: float, g: torch.Generator) -> dict:
    """Proposal A: (1 − DEFENSIVE) rotation-averaged kernel mixture + DEFENSIVE N(0, broad² I)."""
    n, dim = N_PROPOSAL_A, centers.shape[1]
    theta = 2 * math.pi * torch.rand(n, generator=g, dtype=torch.float64)
    m = torch.randint(len(centers), (n,), generator=g)
    z = centers[m] + BANDWIDTH * torch.randn(n, dim, generator=g, dtype=torch.float64)
    z = torch.cos(theta)[:, None] * z + torch.sin(theta)[:, None] * (z @ _JZ.T)  # exp(θJ) z
    defensive = torch.rand(n, generator=g, dtype=torch.float64) < DEFENSIVE
    z[defensive] = broad * torch.randn(int(defensive.sum()), dim, generator=g, dtype=torch.float64)
    log_q = torch.logaddexp(
        math.log1p(-DEFENSIVE) + rotation_kernel_mixture_log_q(z, centers, BANDWIDTH),
        math.log(DEFENSIVE) + log_gaussian(z, broad),
    )
    log_z, se, ess = log_mean_exp(-energy(z) / KT - log_q)
    return {"log_z": log_z, "se": se, "ess": ess, "n": n}


def importance_log_z_broad(broad: float, g: torch.Generator) -> dict:
    """Proposal B: N(0, broad² I). Also the self-normalised estimates of E_p[E] and E_p[short-well fraction],
    with delta-method standard errors √(Σ w²(f − f̄)²)/Σw. Only the draws whose log-weight is within 40 of
    their chunk's largest are kept: the others carry < e⁻⁴⁰ of a kept weight each."""
    kept_log_w, kept_e, kept_sf = [], [], []
    for _ in range(N_PROPOSAL_B // CHUNK_B):
        z = broad * torch.randn(CHUNK_B, BASIS.shape[1], generator=g, dtype=torch.float64)
        e = energy(z)
        log_w = -e / KT - log_gaussian(z, broad)
        keep = log_w > log_w.max() - 40.0
        kept_log_w.append(log_w[keep])
        kept_e.append(e[keep])
        kept_sf.append(short_well_fraction(z[keep]))
    log_w, e, sf = torch.cat(kept_log_w), torch.cat(kept_e), torch.cat(kept_sf)
    w = torch.exp(log_w - log_w.max())
    log_z = float(log_w.max() + torch.log(w.sum() / N_PROPOSAL_B))
    # std(w) over all N draws; the dropped ones are ≈ 0 and enter through N
    mean_w = w.sum() / N_PROPOSAL_B
    var_w = w.square().sum() / N_PROPOSAL_B - mean_w**2
    se = float(torch.sqrt(var_w * N_PROPOSAL_B / (N_PROPOSAL_B - 1)) / (mean_w * math.sqrt(N_PROPOSAL_B)))
    ess = float(w.sum() ** 2 / w.square().sum())

    def weighted(f: Tensor) -> tuple[float, float]:
        mean = float((w * f).sum() / w.sum())
        return mean, float(torch.sqrt((w.square() * (f - mean).square()).sum()) / w.sum())

    return {
        "log_z": log_z,
        "se": se,
        "ess": ess,
        "n": N_PROPOSAL_B,
        "mean_energy": weighted(e),
        "short_well_fraction": weighted(sf),
    }


def main() -> None:
    torch.set_num_threads(1)
    t0 = time.time()
    g = torch.Generator().manual_seed(SEED)

    # the script's closed-form energy and gradient against the target's
    z_check = 2.0 * torch.randn(64, BASIS.shape[1], generator=g, dtype=torch.float64)
    x_check = (z_check @ BASIS.T).requires_grad_(True)
    e_ref = double_well_pair_energy(x_check, N_PARTICLES, PARTICLE_DIM, A, B, D0)
    (grad_ref,) = torch.autograd.grad(e_ref.sum(), x_check)
    e_own, grad_own = energy_and_grad(z_check)
    assert torch.allclose(e_own, e_ref.detach(), rtol=1e-12, atol=1e-9)
    assert torch.allclose(grad_own, grad_ref @ BASIS, rtol=1e-10, atol=1e-9)
    print("energy and gradient match lightning_ehf.core.targets.double_well_pair_energy")

    n_chains = sum(SPLITS.values())
    z, settings = run_parallel_tempering(n_chains, g)
    print(
        f"MCMC: {n_chains} chains × {N_STEPS} steps, temperatures {[round(t, 3) for t in TEMPERATURES]}, "
        f"MALA steps {[round(s, 4) for s in settings['mala_steps']]}, acceptance after tuning "
        f"{[round(a, 3) for a in settings['acceptance']]}, swap acceptance {settings['swap_acceptance']:.3f}"
    )

    e, sf = energy(z), short_well_fraction(z)
    compact = torch.arange(n_chains) % 2 == 0
    print("mixing checks:")
    agree("short-well fraction, compact vs spread starts", *mean_se(sf[compact]), *mean_se(sf[~compact]), 3.0)
    agree("mean energy, compact vs spread starts", *mean_se(e[compact]), *mean_se(e[~compact]), 3.0)
    rows, pools = split_pools(z, e, SPLITS, BASIS, N_PARTICLES, PARTICLE_DIM)

    broad = math.sqrt(float(z[rows["train"]].square().sum(-1).mean()) / z.shape[1])
    centers = z[rows["train"]][:N_CENTERS]
    t1 = time.time()
    is_a = importance_log_z_kernels(centers, broad, g)
    print(
        f"log Z, proposal A (rotation-averaged kernels on {N_CENTERS} train samples, h = {BANDWIDTH}, "
        f"{DEFENSIVE:.0%} N(0, {broad:.3f}²)): {is_a['log_z']:.4f} ± {is_a['se']:.4f}, "
        f"ESS {is_a['ess']:.0f} of {is_a['n']}  ({time.time() - t1:.0f} s)"
    )
    t1 = time.time()
    is_b = importance_log_z_broad(broad, g)
    print(
        f"log Z, proposal B (N(0, {broad:.3f}² I₆)): {is_b['log_z']:.4f} ± {is_b['se']:.4f}, "
        f"ESS {is_b['ess']:.0f} of {is_b['n']}  ({time.time() - t1:.0f} s)"
    )
    print("importance-sampling checks:")
    agree("log Z, proposal A vs B", is_a["log_z"], is_a["se"], is_b["log_z"], is_b["se"], 3.0)
    agree("mean energy, MCMC vs importance sampling (B)", *mean_se(e), *is_b["mean_energy"], 4.0)
    agree("short-well fraction, MCMC vs importance sampling (B)", *mean_se(sf), *is_b["short_well_fraction"], 4.0)
    assert is_a["se"] <= 0.01

    log_z, log_z_se = is_a["log_z"], is_a["se"]
    test_e = e[rows["test"]]
    h, se_h = float(test_e.mean() / KT + log_z), math.hypot(float(test_e.std() / math.sqrt(len(test_e))), log_z_se)
    print(f"entropy on the test pool: H = ⟨E⟩/kT + log Z = {h:.4f} ± {se_h:.4f}")

    metadata = {
        "seed": SEED,
        "energy": "sum_{i<j} a (d_ij - d0)^4 + b (d_ij - d0)^2",
        "n_particles": N_PARTICLES,
        "particle_dim": PARTICLE_DIM,
        "splits": {s: f"chains {r.start}-{r.stop - 1}" for s, r in rows.items()},
        "mcmc": settings,
        "log_z_estimate": {
            "method": "importance sampling over the 6-D centre-of-mass-free subspace",
            "proposal_a": {
                "kind": "rotation-averaged Gaussian kernels on train samples",
                "n_centers": N_CENTERS,
                "bandwidth": BANDWIDTH,
                "defensive_weight": DEFENSIVE,
                "defensive_std": broad,
                **is_a,
            },
            "proposal_b": {
                "kind": "isotropic Gaussian",
                "std": broad,
                **{k: is_b[k] for k in ("log_z", "se", "ess", "n")},
            },
            "stored": "proposal_a",
        },
        "entropy_test_pool": [h, se_h],
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        OUT,
        **pools,
        log_z=np.float64(log_z),
        log_z_se=np.float64(log_z_se),
        a=np.float64(A),
        b=np.float64(B),
        d0=np.float64(D0),
        kT=np.float64(KT),
        metadata=np.array(json.dumps(metadata)),
    )
    print(
        f"wrote {OUT} ({OUT.stat().st_size} bytes): "
        + ", ".join(f"{s} {p.shape}" for s, p in pools.items())
        + f"; log Z = {log_z:.4f} ± {log_z_se:.4f}  (total {time.time() - t0:.0f} s)"
    )


if __name__ == "__main__":
    main()
