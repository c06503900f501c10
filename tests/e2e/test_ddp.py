"""Two-process CPU DDP through the ``ehf`` command (docs/design.md §6: run as a subprocess, never inside
pytest; λ must stay identical on every rank; the DDP children join rank 0's run folder)."""

from __future__ import annotations

import csv
import json
import math

import pytest


@pytest.mark.slow
def test_cpu_ddp_two_ranks_keep_identical_multipliers(tmp_path, ehf_cli, ehf_tiny):
    root = tmp_path / "runs"
    args = [
        "train",
        *ehf_tiny,
        "trainer.accelerator=cpu",
        "trainer.devices=2",
        "trainer.strategy=ddp",
        "trainer.max_steps=8",
        "trainer.val_check_interval=4",
        "trainer.ddp_timeout_s=60",
        # tolerance 0 and a large step: λ grows from the first update
        "constraint.mode=dual",
        "constraint.lr=10",
        "constraint.tolerance=0",
        "logger.wandb.mode=disabled",
        "experiment=ddp",
        f"run.root={root}",
    ]
    proc = ehf_cli(args, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, f"rc={proc.returncode}\n{proc.stdout[-2000:]}\n{proc.stderr[-5000:]}"
    assert "global batch: 128 = 64 per device × 2 devices × 1 node" in proc.stdout  # printed once, by rank 0
    assert proc.stdout.count("global batch:") == 1, proc.stdout[-2000:]

    folders = list((root / "ddp").iterdir())
    assert len(folders) == 1, folders  # rank 1 wrote into rank 0's folder, not a second one
    run_dir = folders[0]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["steps"] == 8
    assert math.isfinite(metrics["test/nll"])
    assert metrics["test/lambda_rank_spread"] == 0.0
    assert metrics["test/lambda/L01"] > 0.0

    with (run_dir / "metrics.csv").open(newline="") as f:
        val = [r for r in csv.DictReader(f) if r.get("val/lambda_rank_spread")]
    assert len(val) == 2, val  # validation after steps 4 and 8
    assert all(float(r["val/lambda_rank_spread"]) == 0.0 for r in val)
    lam = [float(r["val/lambda/L01"]) for r in val]
    assert 0.0 < lam[0] <= lam[1], lam  # dual ascent with C > tolerance = 0 only increases λ
    assert (run_dir / "checkpoints" / "last.ckpt").is_file() and (run_dir / "checkpoints" / "best.ckpt").is_file()
