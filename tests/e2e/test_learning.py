"""Training learns: a short seeded CPU run lowers validation NLL by a clear margin from its first
validation, for the EHF on a target, the NSF baseline, and the EHF on a data file; and the final test
KL is far below that of the best isotropic Gaussian (≈ 1 nat on ring2d).

The EHF here is invariant by construction: it learns ring2d in 150 steps. (The plain MLP model first
sits for several hundred steps near the best isotropic Gaussian, too long for a test.)"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ehf_testing import csv_rows, tiny
from lightning_ehf import cli
from lightning_ehf.core.targets import make_target

LEARN = ("trainer.max_steps=150", "trainer.val_check_interval=25", "data.batch_size=128", "data.n_val=256",
         "eval.iw_samples=16", "model.hidden=32", "model.blocks=3", "model.leapfrog_steps=2", "optim.warmup_steps=10",
         "optim.lr=1e-2", "model.invariant=true")  # fmt: skip


def _val_nll(run_dir: Path) -> list[float]:
    """Validation NLL (IWAE, the run's K) at every validation, in order."""
    key = f"val/nll_iw{json.loads((run_dir / 'metrics.json').read_text())['iw_samples']}"
    return [float(r[key]) for r in csv_rows(run_dir) if key in r]


def _learns(tmp_path: Path, *overrides: str, margin: float) -> tuple[list[float], dict]:
    run_dir = tmp_path / "run"
    assert cli.main(["train", *tiny(*LEARN, *overrides), f"run.dir={run_dir}"]) == 0
    nll = _val_nll(run_dir)
    assert len(nll) >= 5, nll
    assert nll[-1] < nll[0] - margin, f"validation NLL did not fall by {margin} nats: {nll}"
    return nll, json.loads((run_dir / "metrics.json").read_text())


@pytest.mark.slow
def test_ehf_lowers_validation_nll_on_ring2d(tmp_path, ehf_clean_env):
    _, metrics = _learns(tmp_path, margin=0.5)
    assert metrics["test/kl"] < 0.3, metrics["test/kl"]


@pytest.mark.slow
def test_nsf_baseline_lowers_validation_nll_on_ring2d(tmp_path, ehf_clean_env):
    _, metrics = _learns(
        tmp_path,
        "model.kind=nsf",
        "model.invariant=false",
        "model.nsf_transforms=2",
        "trainer.max_steps=60",
        "trainer.val_check_interval=10",
        margin=0.5,
    )
    assert metrics["test/kl"] < 0.3, metrics["test/kl"]


@pytest.mark.slow
def test_ehf_lowers_validation_nll_on_a_data_file(tmp_path, ehf_clean_env):
    import torch

    x = make_target("ring2d").sample(1500, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    path = tmp_path / "ring.npy"
    np.save(path, x.numpy())
    _learns(
        tmp_path,
        "data.target=null",
        f"data.path={path}",
        "data.regime=finite",
        "data.n_test=256",
        "symmetry.group=so2",
        margin=0.5,
    )
