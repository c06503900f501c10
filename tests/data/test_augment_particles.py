"""Relabelling augmentation (``data.augment=true symmetry.permutations=true``): every training row that
reaches the model carries its own random permutation of the particles (besides its own rotation)."""

from __future__ import annotations

import itertools
import math
from types import SimpleNamespace

import pytest
import torch

from lightning_ehf.build import make_datamodule
from lightning_ehf.config.load import load_config, validate

# one configuration of particles with distinct distances to their centroid (at the origin), so a
# rotation keeps each particle's norm and the norms name the particles after any relabelling
CONFIGURATIONS = {
    "dw4": [[1.0, 0.0], [0.0, 2.0], [-3.0, 0.0], [2.0, -2.0]],  # 4 particles, norms 1, 2, 3, 2.83
    "particles2d": [[1.0, 0.0], [0.0, -2.0], [-1.0, 2.0]],  # 3 particles, norms 1, 2, 2.24
}


def _augmented(target: str, rows: int, step: int = 0):
    regime = "finite" if target == "dw4" else "infinite"
    cfg = load_config(
        [],
        [
            f"data.target={target}",
            f"data.regime={regime}",
            "data.augment=true",
            "data.n_train=1000",
            "symmetry.permutations=true",
        ],
    )
    validate(cfg)
    dm = make_datamodule(cfg)
    particles = torch.tensor(CONFIGURATIONS[target])
    x = particles.reshape(1, -1).repeat(rows, 1)
    dm.trainer = SimpleNamespace(training=True, global_rank=0, global_step=step)
    out = dm.on_after_batch_transfer(x, 0)  # rows in the data's own coordinates
    return particles, out.reshape(rows, *particles.shape)


@pytest.mark.parametrize("target", ["dw4", "particles2d"])
def test_augmented_rows_carry_independent_relabellings(target):
    rows = 720
    particles, out = _augmented(target, rows)
    n = particles.shape[0]
    norms = out.norm(dim=-1)  # (rows, n)
    ref = particles.norm(dim=-1)
    match = (norms[:, :, None] - ref[None, None, :]).abs()
    assert float(match.min(-1).values.max()) < 1e-4  # every particle is one of the originals, rotated
    perms = [tuple(r) for r in match.argmin(-1).tolist()]
    assert all(sorted(p) == list(range(n)) for p in perms)
    counts = {p: perms.count(p) for p in itertools.permutations(range(n))}
    expected = rows / math.factorial(n)
    chi2 = sum((c - expected) ** 2 / expected for c in counts.values())
    # every relabelling occurs, about equally often (Pearson χ², p ≈ 1e-6 at these bounds)
    assert min(counts.values()) > 0 and chi2 < {3: 36.0, 4: 65.0}[n], counts
    # and neighbouring rows agree as often as independent draws do, not always (one draw per batch)
    same_as_next = sum(a == b for a, b in zip(perms, perms[1:])) / (rows - 1)
    assert same_as_next < 2.5 / math.factorial(n), same_as_next


def test_relabelling_is_drawn_anew_at_every_step():
    _, first = _augmented("dw4", 64, step=0)
    _, again = _augmented("dw4", 64, step=0)
    _, later = _augmented("dw4", 64, step=1)
    assert torch.equal(first, again)  # indexed by the step: a resumed run sees the same batches
    assert not torch.allclose(first, later)
