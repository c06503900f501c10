"""Checks shared by the scripts that write MCMC sample pools of particle targets (make_dw4.py, make_lj13.py)."""

from __future__ import annotations

import math

import numpy as np
from torch import Tensor


def agree(name: str, a: float, se_a: float, b: float, se_b: float, within: float) -> None:
    """Print and assert |a − b| ≤ ``within`` combined standard errors."""
    z = abs(a - b) / math.hypot(se_a, se_b)
    print(f"  check {name}: {a:.4f} ± {se_a:.4f} vs {b:.4f} ± {se_b:.4f}: |Δ| = {z:.2f} SE (≤ {within})")
    assert z <= within, f"{name} disagree by {z:.2f} standard errors"


def mean_se(v: Tensor) -> tuple[float, float]:
    """The mean of v and its standard error."""
    return float(v.mean()), float(v.std() / math.sqrt(len(v)))


def split_pools(
    z: Tensor, energy: Tensor, splits: dict[str, int], basis: Tensor, n_particles: int, particle_dim: int
) -> tuple[dict[str, slice], dict[str, np.ndarray]]:
    """Consecutive chains by split (``splits``: rows per split, in order): their rows, after checking that
    every two splits agree in mean energy within 3 standard errors, and the pools as float32 configurations
    x = B z (asserted centre-of-mass free)."""
    bounds = np.cumsum([0, *splits.values()])
    rows = {s: slice(int(bounds[k]), int(bounds[k + 1])) for k, s in enumerate(splits)}
    for s1, s2 in (("train", "val"), ("train", "test"), ("val", "test")):
        agree(f"mean energy, {s1} vs {s2}", *mean_se(energy[rows[s1]]), *mean_se(energy[rows[s2]]), 3.0)
    pools = {s: (z[r] @ basis.T).float().numpy() for s, r in rows.items()}
    for s, pool in pools.items():
        centroid = np.abs(pool.reshape(-1, n_particles, particle_dim).mean(axis=1)).max()
        assert pool.shape == (splits[s], n_particles * particle_dim) and centroid < 1e-5, (s, centroid)
    return rows, pools
