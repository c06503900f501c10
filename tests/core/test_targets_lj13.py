"""lj13: the Lennard-Jones cluster energy with its harmonic confinement, the sample pools, the split
sampler and the entropy (the target machinery is dw4's, tested in tests/core/test_targets_dw4.py)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

import lightning_ehf
from lightning_ehf.core.targets import LennardJonesCluster, lennard_jones_energy, make_target

F64 = torch.float64
SPLITS = {"train": 3_000, "val": 500, "test": 1_500}
ASSET = Path(lightning_ehf.__file__).resolve().parent / "assets" / "lj13.npz"


def pair_energy(d: float) -> float:
    """(1/d)¹² − 2 (1/d)⁶, written independently of the module."""
    return d**-12 - 2.0 * d**-6


@pytest.fixture(scope="module")
def lj13() -> LennardJonesCluster:
    return make_target("lj13")


def test_energy_of_a_pair_and_of_a_triangle() -> None:
    """Two particles at distance d: ε((1/d)¹² − 2(1/d)⁶) + ½·2·(d/2)² (each is d/2 from the centroid); the
    pair minimum is −1 at d = 1. An equilateral triangle of side s: 3 pairs + ½·3·(s/√3)²."""
    for d in (0.9, 1.0, 1.5):
        x = torch.tensor([0.0, 0.0, 0.0, d, 0.0, 0.0], dtype=F64)
        assert float(lennard_jones_energy(x, 2, 3)) == pytest.approx(pair_energy(d) + 0.25 * d * d, rel=1e-12)
    x = torch.tensor([[0.0, 0.0], [1.0, 0.0]], dtype=F64).reshape(4).requires_grad_(True)
    e = lennard_jones_energy(x, 2, 2, confinement=0.0)
    (grad,) = torch.autograd.grad(e, x)
    assert float(e.detach()) == pytest.approx(-1.0) and grad.abs().max() < 1e-12
    s = 1.3
    tri = torch.tensor([[0.0, 0.0, 0.0], [s, 0.0, 0.0], [s / 2, s * math.sqrt(3) / 2, 0.0]], dtype=F64).reshape(9)
    expected = 3 * pair_energy(s) + 0.5 * 3 * s * s / 3
    assert float(lennard_jones_energy(tri, 3, 3)) == pytest.approx(expected, rel=1e-12)


def test_energy_invariances_and_coincident_particles() -> None:
    g = torch.Generator().manual_seed(0)
    x = 1.5 * torch.randn(5, 39, generator=g, dtype=F64)
    e = lennard_jones_energy(x, 13, 3)
    q, _ = torch.linalg.qr(torch.randn(3, 3, generator=g, dtype=F64))  # a rotation or a reflection
    xs = x.reshape(5, 13, 3)
    moved = [
        (xs + torch.randn(5, 1, 3, generator=g, dtype=F64)).reshape(5, 39),
        (xs @ q.T).reshape(5, 39),
        xs[:, torch.randperm(13, generator=g)].reshape(5, 39),
    ]
    for y in moved:
        assert torch.allclose(lennard_jones_energy(y, 13, 3), e, rtol=1e-10, atol=1e-9)
    same = torch.zeros(6, dtype=F64)
    assert torch.isfinite(lennard_jones_energy(same, 2, 3)) and float(lennard_jones_energy(same, 2, 3)) > 1e100


def test_registry_attributes(lj13: LennardJonesCluster) -> None:
    assert (lj13.name, lj13.dim, lj13.n_particles, lj13.particle_dim, lj13.kT) == ("lj13", 39, 13, 3, 1.0)
    assert lj13.finite_pool and lj13.identical and lj13.translation_invariant and lj13.symmetry.particles == (13, 3)
    assert math.isfinite(lj13.log_z) and 0 < lj13.log_z_se <= 0.05


def test_pools_shapes_centred_disjoint_and_small() -> None:
    assert ASSET.stat().st_size < 3 * 2**20  # shipped with the package: a few MB at most
    with np.load(ASSET) as data:
        pools = {s: data[s] for s in SPLITS}
        assert json.loads(str(data["metadata"]))["seed"]
    for split, n in SPLITS.items():
        pool = pools[split]
        assert pool.shape == (n, 39) and pool.dtype == np.float32 and np.isfinite(pool).all()
        assert np.abs(pool.reshape(n, 13, 3).mean(axis=1)).max() < 1e-5
    rows = np.concatenate(list(pools.values()))
    assert len(np.unique(rows, axis=0)) == len(rows)


def test_pool_samples_look_like_a_bound_cluster(lj13: LennardJonesCluster) -> None:
    """No overlapping particles (pair energy below the wall), every particle within a few units of the
    centroid, and the mean energy where a Lennard-Jones liquid drop at kT = 1 sits (a few kT per particle)."""
    x = lj13.sample_split("train", 3000, torch.Generator().manual_seed(0), dtype=F64).reshape(3000, 13, 3)
    i, j = torch.triu_indices(13, 13, 1)
    d = (x[:, i] - x[:, j]).norm(dim=-1)
    assert d.min() > 0.7 and x.norm(dim=-1).max() < 6.0
    e = lennard_jones_energy(x.reshape(3000, 39), 13, 3)
    assert -40 < float(e.mean()) < 20


def test_missing_asset_names_the_script(tmp_path: Path) -> None:
    t = LennardJonesCluster(path=tmp_path / "lj13.npz")
    with pytest.raises(FileNotFoundError, match="scripts/make_lj13.py"):
        _ = t.log_z


def test_asset_for_another_energy_is_refused() -> None:
    with pytest.raises(ValueError, match="holds samples for"):
        _ = LennardJonesCluster(confinement=2.0).log_z


def test_entropy_is_mean_energy_plus_log_z(lj13: LennardJonesCluster) -> None:
    h, se = lj13.entropy()
    pool = lj13.sample_split("test", 1500, torch.Generator().manual_seed(0), dtype=F64)
    assert h == pytest.approx(float(lennard_jones_energy(pool, 13, 3).mean()) + lj13.log_z, rel=1e-9)
    assert se >= lj13.log_z_se
