"""How many particle pairs lie beyond the reach of the pair-distance histogram, in confined Lennard-Jones clusters of
n particles in 3-D (the lj13 energy: ε = r_m = c = kT = 1): the share of the pair work a neighbour list could skip.

A basis φ_m(s) = exp(−(s − c_m)²/(2w²)) of the squared distance s is below e^{−4.5} ≈ 1 % of its peak beyond
s_max + 3w (the last centre c = s_max = cutoff², w = s_max/(bins − 1)): a pair farther than that adds next to
nothing to any feature. For each n, MALA chains (``scripts/make_lj13.py``'s clipped-drift step and step-size rule,
each chain tuned on its own over make_lj13's adaptation steps, then frozen) start from a compact cubic lattice; their final
states give the pair distances. n = 13 is checked against the lj13 training pool.

    OMP_NUM_THREADS=1 python scripts/pair_reach.py [--out FILE.json]
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import torch
from make_lj13 import ADAPT_EVERY, ADAPT_STEPS, INITIAL_STEP, TARGET_ACCEPTANCE, mala_step
from torch import Tensor

from lightning_ehf.core.invariants import PairDistanceFeatures
from lightning_ehf.core.targets import lennard_jones_energy, make_target

PARTICLES = (13, 22, 55, 100, 200)
HISTOGRAMS = [(12, 5.0), (24, 8.0)]  # (bins, cutoff): lj13's experiment, the schema's default
CHAINS, STEPS = 64, 3000


def pair_distances(x: Tensor, n: int) -> Tensor:
    """All pair distances of the rows of x (rows, n·3), flattened."""
    parts = x.reshape(-1, n, 3)
    i, j = torch.triu_indices(n, n, 1)
    return (parts[:, i] - parts[:, j]).norm(dim=-1).flatten()


def reach(bins: int, cutoff: float) -> float:
    """The distance beyond which every basis is below e^{−4.5} of its peak: sqrt(s_max + 3w), s_max the last centre
    and w the width of the histogram the model builds."""
    features = PairDistanceFeatures(2, 3, n_bins=bins, max_distance=cutoff)
    return math.sqrt(float(features.centres[-1]) + 3 * features.width)


def sample_cluster(n: int, generator: torch.Generator) -> Tensor:
    """Final states (CHAINS, n·3) of MALA chains on exp(−E) from a compact lattice of spacing r_m."""
    side = math.ceil(n ** (1 / 3))
    grid = torch.stack(torch.meshgrid(*[torch.arange(side, dtype=torch.float64)] * 3, indexing="ij"), -1)
    start = grid.reshape(-1, 3)[:n] - grid.reshape(-1, 3)[:n].mean(0)
    x = start.flatten().repeat(CHAINS, 1) + 0.05 * torch.randn(CHAINS, 3 * n, generator=generator, dtype=torch.float64)

    def log_density(y: Tensor) -> tuple[Tensor, Tensor]:
        y = y.detach().requires_grad_(True)
        log_p = -lennard_jones_energy(y, n, 3)
        (grad,) = torch.autograd.grad(log_p.sum(), y)
        return log_p.detach(), grad

    step = torch.full((CHAINS,), INITIAL_STEP, dtype=torch.float64)
    log_p, grad = log_density(x)
    accepted = torch.zeros(CHAINS, dtype=torch.float64)
    for t in range(STEPS):
        x, log_p, grad, accept = mala_step(x, log_p, grad, step, log_density, generator)
        accepted += accept.double()
        if t < ADAPT_STEPS and (t + 1) % ADAPT_EVERY == 0:  # make_lj13's rule, per chain
            step *= torch.exp(accepted / ADAPT_EVERY - TARGET_ACCEPTANCE)
            accepted.zero_()
    return x


def quantiles(d: Tensor) -> dict[str, float]:
    q = torch.quantile(
        d[torch.randperm(len(d), generator=torch.Generator().manual_seed(0))[:1_000_000]],
        torch.tensor([0.5, 0.99], dtype=d.dtype),
    )
    return {"median": float(q[0]), "q99": float(q[1]), "max": float(d.max())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    generator = torch.Generator().manual_seed(20261207)
    reaches = {f"bins{b}_cutoff{c:g}": reach(b, c) for b, c in HISTOGRAMS}
    pool = make_target("lj13").sample_split("train", 3000, torch.Generator().manual_seed(0), dtype=torch.float64)
    sets = {"lj13_pool": (13, pair_distances(pool, 13))}
    for n in PARTICLES:
        sets[f"mala_n{n}"] = (n, pair_distances(sample_cluster(n, generator), n))
    result = {"chains": CHAINS, "steps": STEPS, "reach": reaches, "clusters": {}}
    for name, (n, d) in sets.items():
        beyond = {key: float((d > r).double().mean()) for key, r in reaches.items()}
        result["clusters"][name] = {"n": n, "pairs": n * (n - 1) // 2, **quantiles(d), "beyond_reach": beyond}
        shares = ", ".join(f"{key}: {share:.1%}" for key, share in beyond.items())
        print(
            f"{name}: pair distance median {result['clusters'][name]['median']:.2f}, 99% "
            f"{result['clusters'][name]['q99']:.2f}; beyond reach {shares}"
        )
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
