"""Write ``lightning_ehf/assets/lj13.npz``: seeded MCMC sample pools of the ``lj13`` target and its log Z.

lj13: 13 particles in 3D, E(x) = ε Σ_{i<j} [(r_m/d_ij)¹² − 2 (r_m/d_ij)⁶] + (c/2) Σ_i |x_i − x̄|², ε = r_m = c = 1,
kT = 1, on the centre-of-mass-free subspace S = {Σ_i x_i = 0} ⊂ R³⁹. Everything runs in the orthonormal
coordinates z ∈ R³⁶ of S, x = B z with B = H ⊗ I₃ (H the normalised Helmert contrasts), so every state is
centre-of-mass free by construction, densities in z are densities on S, and the confinement is (c/2)|z|².

1. **Samples.** One independent MALA chain (drift clipped, :func:`drift`) per pool row (5000 chains) on
   exp(−E/kT), its step tuned towards
   an acceptance of 0.6 during the first ``ADAPT_STEPS`` steps, then frozen; the state after ``N_STEPS``
   steps is one sample. Half the chains start compact, half spread out, both relaxed by a few clipped
   gradient steps (overlapping particles have enormous forces). Chains 0–2999 give ``train``, 3000–3499
   ``val``, 3500–4999 ``test`` (disjoint by construction).
2. **Checks on the samples** (asserted): the mean energy half-way through the chains and at their end, the
   mean energy and the mean squared radius |z|² of the compact-start and of the spread-start chains (which
   approach the equilibrium from below and from above), and the mean energy of every two splits agree within
   3 standard errors; both also agree with the annealed importance-sampling estimates (step 3, which uses no
   MCMC sample) within 4 standard errors.
3. **log Z** = log ∫_S exp(−E/kT) by annealed importance sampling (Neal 2001) from the confinement's own
   Gaussian: π_0 = N(0, (kT/c) I₃₆), whose normaliser (2π kT/c)^18 is exact, through
   f_k = π_0 exp(−β_k E_LJ(·; s_k)/kT), β_k = (k/K)^``POWER``, where E_LJ(·; s) is the pair energy of the
   squared distances d² + s, a soft core s_k = ``SOFT_CORE``·(1 − β_k) that is gone at β = 1 (overlapping
   particles of π_0 would otherwise meet forces of 10¹⁰ and more); ``AIS_MOVES`` MALA steps per temperature;
   log w = Σ_k log f_k(z_{k−1}) − log f_{k−1}(z_{k−1}), log Ẑ = log Z_0 + log mean w, standard error
   std(w)/(√N mean w) (delta method). The MALA steps per
   temperature come from a pilot run (then fixed, so the weights are exact). Two runs with different
   schedules (K, POWER) must agree within 3 combined standard errors; the first is stored.

Deterministic: fixed seed, CPU, float64, one thread. Run from the repository root (a few minutes):

    nice -n 19 env OMP_NUM_THREADS=1 .venv/bin/python scripts/make_lj13.py
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
from lightning_ehf.core.targets import lennard_jones_energy

OUT = Path(__file__).resolve().parent.parent / "lightning_ehf" / "assets" / "lj13.npz"
SEED = 20261207
EPSILON, R_MIN, CONFINEMENT, KT = 1.0, 1.0, 1.0, 1.0
N_PARTICLES, PARTICLE_DIM = 13, 3
SPLITS = {"train": 3_000, "val": 500, "test": 1_500}

# MCMC
N_STEPS, ADAPT_STEPS, ADAPT_EVERY = 6000, 1000, 50
TARGET_ACCEPTANCE, INITIAL_STEP, MAX_DRIFT = 0.6, 1e-3, 0.1
RELAX_STEPS, RELAX_RATE = 100, 0.02
# std of the initial z, before relaxation: below and above the equilibrium's (about 0.9), so that the two halves
# of the chains approach it from both sides
COMPACT_SCALE, SPREAD_SCALE = 0.5, 1.5

# annealed importance sampling: (chains, temperatures K, schedule power) of the stored run and the check
AIS_MOVES = 2  # MALA steps per temperature
SOFT_CORE = 1.0  # added to the squared distances at β = 0, fading to 0 at β = 1
AIS_PILOT = (400, 1000, 2.0)
AIS_RUNS = ((2000, 1000, 2.0), (2000, 1500, 3.0))

BASIS = CentreOfMassFrame(N_PARTICLES, PARTICLE_DIM).basis  # B = H ⊗ I₃, float64
_PAIR_I, _PAIR_J = torch.triu_indices(N_PARTICLES, N_PARTICLES, 1)
INCIDENCE = torch.zeros(len(_PAIR_I), N_PARTICLES, dtype=torch.float64)  # (pairs, n): +1 at i, −1 at j
INCIDENCE[torch.arange(len(_PAIR_I)), _PAIR_I] = 1.0
INCIDENCE[torch.arange(len(_PAIR_I)), _PAIR_J] = -1.0


def lj_energy_and_grad(z: Tensor, soft: float = 0.0) -> tuple[Tensor, Tensor]:
    """The pair part E_LJ(Bz) and ∇_z E_LJ = Bᵀ ∇_x E_LJ, with squared distances d² + ``soft`` (a soft core:
    0 for the target itself): with t = (r_m²/(d² + soft))³, e = ε(t² − 2t) and ∂e/∂(d²) = 6ε t (1 − t)/(d² + soft),
    so ∂E/∂x_i = Σ_j 2 ∂e/∂(d_ij²) (x_i − x_j). Pair differences by the pairs' incidence matrix (coordinate-major)."""
    lead = z.shape[:-1]
    x = (z.reshape(-1, z.shape[-1]) @ BASIS.T).reshape(-1, N_PARTICLES, PARTICLE_DIM).transpose(1, 2)  # (N, D, n)
    diff = (x.reshape(-1, N_PARTICLES) @ INCIDENCE.T).reshape(x.shape[0], PARTICLE_DIM, -1)  # (N, D, pairs)
    d2 = diff.square().sum(1).clamp_min(torch.finfo(z.dtype).tiny) + soft
    t = (R_MIN * R_MIN / d2) ** 3
    pair_force = (12.0 * EPSILON * t * (1.0 - t) / d2)[:, None, :] * diff  # (N, D, pairs)
    grad_x = (pair_force.reshape(-1, pair_force.shape[-1]) @ INCIDENCE).reshape(x.shape)  # (N, D, n)
    grad_z = grad_x.transpose(1, 2).reshape(x.shape[0], -1) @ BASIS
    return (EPSILON * t * (t - 2.0)).sum(-1).reshape(lead), grad_z.reshape(z.shape)


def energy_and_grad(z: Tensor) -> tuple[Tensor, Tensor]:
    """E(Bz) = E_LJ + (c/2)|z|² and its gradient in z."""
    e, g = lj_energy_and_grad(z)
    return e + 0.5 * CONFINEMENT * z.square().sum(-1), g + CONFINEMENT * z


def drift(grad: Tensor, step: Tensor) -> Tensor:
    """The Langevin drift ε ∇ log p, its norm clipped at ``MAX_DRIFT``: near-overlapping particles have forces
    of 10¹⁰ and more. The clipped drift is used in both directions of the Metropolis-Hastings ratio, so the
    chain still leaves exp(log p) invariant."""
    d = step[..., None] * grad
    return d * (MAX_DRIFT / d.norm(dim=-1, keepdim=True).clamp(min=MAX_DRIFT))


def mala_step(
    z: Tensor, e: Tensor, grad: Tensor, step: Tensor, log_density, g: torch.Generator
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """One Metropolis-adjusted Langevin step (clipped drift) on exp(log_density) (log_density(z) → (log p,
    ∇ log p)); e, grad are log p and its gradient at z. Returns the new state, its log p and gradient, and
    the acceptances."""
    proposal = (
        z + drift(grad, step) + torch.sqrt(2 * step)[..., None] * torch.randn(z.shape, generator=g, dtype=z.dtype)
    )
    e_new, grad_new = log_density(proposal)
    log_fwd = -(proposal - z - drift(grad, step)).square().sum(-1) / (4 * step)
    log_back = -(z - proposal - drift(grad_new, step)).square().sum(-1) / (4 * step)
    log_alpha = e_new - e + log_back - log_fwd
    accept = torch.log(torch.rand(log_alpha.shape, generator=g, dtype=z.dtype)) < log_alpha
    return (
        torch.where(accept[..., None], proposal, z),
        torch.where(accept, e_new, e),
        torch.where(accept[..., None], grad_new, grad),
        accept,
    )


def log_target(z: Tensor) -> tuple[Tensor, Tensor]:
    e, grad = energy_and_grad(z)
    return -e / KT, -grad / KT


def run_mala(n_chains: int, g: torch.Generator) -> tuple[Tensor, dict]:
    """The final states of ``n_chains`` independent MALA chains after ``N_STEPS`` steps."""
    dim = BASIS.shape[1]
    compact = torch.arange(n_chains) % 2 == 0
    scale = torch.where(compact, COMPACT_SCALE, SPREAD_SCALE).double()[:, None]
    z = scale * torch.randn(n_chains, dim, generator=g, dtype=torch.float64)
    for _ in range(RELAX_STEPS):  # clipped gradient descent: MALA would stall on the huge initial forces
        _, grad = energy_and_grad(z)
        z = z - RELAX_RATE * grad / grad.norm(dim=-1, keepdim=True).clamp(min=1.0)
    lp, grad = log_target(z)
    step = torch.tensor(INITIAL_STEP, dtype=torch.float64)
    window, accepted_prod = 0.0, 0.0
    t0 = time.time()
    halfway = None
    for it in range(1, N_STEPS + 1):
        if it == N_STEPS // 2 + 1:
            halfway = -lp * KT  # the energies half-way, for the stationarity check
        z, lp, grad, accept = mala_step(z, lp, grad, step.expand(n_chains), log_target, g)
        rate = float(accept.double().mean())
        if it <= ADAPT_STEPS:
            window += rate
            if it % ADAPT_EVERY == 0:
                step = step * math.exp(window / ADAPT_EVERY - TARGET_ACCEPTANCE)
                window = 0.0
        else:
            accepted_prod += rate
        if it % 500 == 0:
            e = -lp * KT
            print(
                f"step {it:5d}: acceptance {rate:.3f}, step {float(step):.2e}, mean E compact "
                f"{e[compact].mean():.3f} spread {e[~compact].mean():.3f}  ({time.time() - t0:.0f} s)",
                flush=True,
            )
    settings = {
        "sampler": "MALA, one sample (the final state) per chain",
        "n_chains": n_chains,
        "n_steps": N_STEPS,
        "adapt_steps": ADAPT_STEPS,
        "adapt_every": ADAPT_EVERY,
        "target_acceptance": TARGET_ACCEPTANCE,
        "mala_step": float(step),
        "acceptance": accepted_prod / (N_STEPS - ADAPT_STEPS),
        "init": f"even chains z ~ N(0, {COMPACT_SCALE}²), odd N(0, {SPREAD_SCALE}²), then {RELAX_STEPS} "
        f"clipped gradient steps of rate {RELAX_RATE}",
    }
    settings["energy_halfway"] = halfway
    return z, settings


def ais(n: int, k_temps: int, power: float, g: torch.Generator, steps: Tensor | None = None) -> dict:
    """Annealed importance sampling of Z from π_0 = N(0, kT/c I) (module docstring). ``steps``: the MALA
    step at every temperature (fixed); None: a pilot run that adapts them and returns them."""
    dim = BASIS.shape[1]
    betas = torch.linspace(0.0, 1.0, k_temps + 1, dtype=torch.float64) ** power

    def log_f(y: Tensor, k: int) -> tuple[Tensor, Tensor]:
        """log f_k = −(β_k E_LJ(y; soft core s_k) + (c/2)|y|²)/kT and its gradient."""
        beta = float(betas[k])
        e, grad = lj_energy_and_grad(y, SOFT_CORE * (1.0 - beta))
        return -(beta * e + 0.5 * CONFINEMENT * y.square().sum(-1)) / KT, -(beta * grad + CONFINEMENT * y) / KT

    z = math.sqrt(KT / CONFINEMENT) * torch.randn(n, dim, generator=g, dtype=torch.float64)
    log_w = torch.zeros(n, dtype=torch.float64)
    lp, _ = log_f(z, 0)
    step = torch.tensor(0.05, dtype=torch.float64)
    used = []
    for k in range(1, k_temps + 1):
        lp_k, grad = log_f(z, k)
        log_w += lp_k - lp
        lp = lp_k
        s = step if steps is None else steps[k - 1]
        rate = 0.0
        for _ in range(AIS_MOVES):
            z, lp, grad, accept = mala_step(z, lp, grad, s.expand(n), lambda y, k=k: log_f(y, k), g)
            rate += float(accept.double().mean()) / AIS_MOVES
        if steps is None:  # pilot: steer the step towards the target acceptance
            step = s * math.exp(0.2 * (rate - TARGET_ACCEPTANCE))
        used.append(float(s))
    log_z0 = 0.5 * dim * math.log(2 * math.pi * KT / CONFINEMENT)
    w = torch.exp(log_w - log_w.max())
    log_z = float(log_z0 + log_w.max() + w.mean().log())
    se = float(w.std() / (w.mean() * math.sqrt(n)))
    energy = energy_and_grad(z)[0]

    def weighted(f: Tensor) -> tuple[float, float]:
        mean = float((w * f).sum() / w.sum())
        return mean, float(torch.sqrt((w.square() * (f - mean).square()).sum()) / w.sum())

    return {
        "log_z": log_z,
        "se": se,
        "ess": float(w.sum() ** 2 / w.square().sum()),
        "n": n,
        "temperatures": k_temps,
        "power": power,
        "log_w_std": float(log_w.std()),
        "mean_energy": weighted(energy),
        "mean_sq_radius": weighted(z.square().sum(-1)),
        "steps": torch.tensor(used, dtype=torch.float64),
    }


def main() -> None:
    torch.set_num_threads(1)
    t0 = time.time()
    g = torch.Generator().manual_seed(SEED)

    # the script's closed-form energy and gradient against the target's
    z_check = torch.randn(64, BASIS.shape[1], generator=g, dtype=torch.float64)
    x_check = (z_check @ BASIS.T).requires_grad_(True)
    e_ref = lennard_jones_energy(x_check, N_PARTICLES, PARTICLE_DIM, EPSILON, R_MIN, CONFINEMENT)
    (grad_ref,) = torch.autograd.grad(e_ref.sum(), x_check)
    e_own, grad_own = energy_and_grad(z_check)
    # random configurations overlap, with energies up to 10⁹ and more: compare relative to each row's scale
    assert ((e_own - e_ref.detach()).abs() <= 1e-10 * (1 + e_ref.detach().abs())).all()
    grad_ref = grad_ref @ BASIS
    assert ((grad_own - grad_ref).abs().amax(-1) <= 1e-10 * (1 + grad_ref.abs().amax(-1))).all()
    print("energy and gradient match lightning_ehf.core.targets.lennard_jones_energy")

    n_chains = sum(SPLITS.values())
    z, settings = run_mala(n_chains, g)
    print(
        f"MCMC: {n_chains} chains × {N_STEPS} steps, MALA step {settings['mala_step']:.2e}, acceptance after "
        f"tuning {settings['acceptance']:.3f}  ({time.time() - t0:.0f} s)"
    )

    e, _ = energy_and_grad(z)
    r2 = z.square().sum(-1)
    compact = torch.arange(n_chains) % 2 == 0
    print("mixing checks:")
    agree("mean energy, half-way vs end", *mean_se(settings.pop("energy_halfway")), *mean_se(e), 3.0)
    agree("mean energy, compact vs spread starts", *mean_se(e[compact]), *mean_se(e[~compact]), 3.0)
    agree("mean |z|², compact vs spread starts", *mean_se(r2[compact]), *mean_se(r2[~compact]), 3.0)
    rows, pools = split_pools(z, e, SPLITS, BASIS, N_PARTICLES, PARTICLE_DIM)

    t1 = time.time()
    pilot = ais(*AIS_PILOT, g)
    runs = []
    for n, k_temps, power in AIS_RUNS:
        # the pilot's steps, read off at the same point of the schedule
        at = torch.linspace(0, AIS_PILOT[1] - 1, k_temps).round().long()
        runs.append(ais(n, k_temps, power, g, steps=pilot["steps"][at]))
        r = runs[-1]
        print(
            f"log Z, AIS ({n} chains, {k_temps} temperatures, β = (k/K)^{power}): {r['log_z']:.4f} ± {r['se']:.4f}, "
            f"ESS {r['ess']:.0f}, std log w {r['log_w_std']:.3f}  ({time.time() - t1:.0f} s)",
            flush=True,
        )
    print("importance-sampling checks:")
    agree("log Z, AIS run 1 vs run 2", runs[0]["log_z"], runs[0]["se"], runs[1]["log_z"], runs[1]["se"], 3.0)
    agree("mean energy, MCMC vs AIS", *mean_se(e), *runs[0]["mean_energy"], 4.0)
    agree("mean |z|², MCMC vs AIS", *mean_se(r2), *runs[0]["mean_sq_radius"], 4.0)
    assert runs[0]["se"] <= 0.05

    log_z, log_z_se = runs[0]["log_z"], runs[0]["se"]
    test_e = e[rows["test"]]
    h, se_h = float(test_e.mean() / KT + log_z), math.hypot(float(test_e.std() / math.sqrt(len(test_e))), log_z_se)
    print(f"entropy on the test pool: H = ⟨E⟩/kT + log Z = {h:.4f} ± {se_h:.4f}")

    metadata = {
        "seed": SEED,
        "energy": "eps sum_{i<j} [(r_m/d_ij)^12 - 2 (r_m/d_ij)^6] + c/2 sum_i |x_i - mean x|^2",
        "n_particles": N_PARTICLES,
        "particle_dim": PARTICLE_DIM,
        "splits": {s: f"chains {r.start}-{r.stop - 1}" for s, r in rows.items()},
        "mcmc": settings,
        "log_z_estimate": {
            "method": "annealed importance sampling from N(0, kT/c I) over the 36-D centre-of-mass-free subspace",
            "runs": [{k: v for k, v in r.items() if k != "steps"} for r in runs],
            "stored": "runs[0]",
        },
        "entropy_test_pool": [h, se_h],
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        OUT,
        **pools,
        log_z=np.float64(log_z),
        log_z_se=np.float64(log_z_se),
        epsilon=np.float64(EPSILON),
        r_min=np.float64(R_MIN),
        confinement=np.float64(CONFINEMENT),
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
