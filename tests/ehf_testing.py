"""Helpers shared by the tests that run ``ehf`` (``conftest.py`` and tests in every folder). A plain module:
pytest puts ``tests/`` on ``sys.path`` (the folder of the root ``conftest.py``).

* ``TINY`` / ``tiny(...)``: overrides that make a training run take a few seconds (no plots, W&B off);
  ``FRAMEWORK_TINY``: the same run with plots on a coarse grid and the W&B mode left to the test.
* ``clean_env(**extra)``: an environment for ``python -m lightning_ehf`` subprocesses, without the EHF /
  W&B / DDP / launcher (torchrun, srun) / seed variables in ``ENV_DROP``.
* ``ehf(args, cwd)``: runs ``python -m lightning_ehf ARGS`` and captures its output.
* ``csv_rows(run_dir)``: the rows of a run's metrics.csv, empty cells left out.
* ``markdown_table(md, first_column)``: a table of a report's results.md, {first cell: {column: cell}}.
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

_SHORT_RUN = [
    "trainer.max_steps=6", "trainer.val_check_interval=3", "data.n_val=64", "data.n_test=64",
    "data.batch_size=64", "eval.iw_samples=4", "eval.n_eval=32", "eval.n_group_samples=1",
    "eval.invariance_iw=4",
]  # fmt: skip
TINY = [*_SHORT_RUN, "plots.enabled=false", "model.hidden=16", "logger.wandb.mode=disabled"]
FRAMEWORK_TINY = [*_SHORT_RUN, "plots.grid=12", "model.hidden=16"]

ENV_DROP = (
    "EHF_RUN_DIR", "WANDB_MODE", "WANDB_API_KEY", "WANDB_RUN_ID", "WANDB_DIR", "WANDB_SERVICE",
    "LOCAL_RANK", "NODE_RANK", "RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
    "PL_GLOBAL_SEED", "PL_SEED_WORKERS", "TORCHELASTIC_RUN_ID", "SLURM_NTASKS",
)  # fmt: skip


def tiny(*changes: str) -> list[str]:
    """``TINY`` with each ``key=value`` of ``changes`` replacing the entry of that key (in place) or appended."""
    merged = dict(item.split("=", 1) for item in TINY)
    merged.update(item.split("=", 1) for item in changes)
    return [f"{key}={value}" for key, value in merged.items()]


def clean_env(**extra: str) -> dict[str, str]:
    """``os.environ`` without ``ENV_DROP``, W&B silent, one OpenMP thread, then ``extra``."""
    env = {k: v for k, v in os.environ.items() if k not in ENV_DROP}
    env.update(WANDB_SILENT="true", OMP_NUM_THREADS="1")
    env.update(extra)
    return env


def ehf(args, cwd: Path, timeout: float = 120, env: dict | None = None) -> subprocess.CompletedProcess:
    """``python -m lightning_ehf ARGS`` in ``cwd`` (environment ``env``, default ``clean_env()``)."""
    return subprocess.run(
        [sys.executable, "-m", "lightning_ehf", *map(str, args)],
        cwd=cwd,
        env=clean_env() if env is None else env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def csv_rows(run_dir: Path) -> list[dict]:
    with open(run_dir / "metrics.csv", newline="") as f:
        return [{k: v for k, v in r.items() if v != ""} for r in csv.DictReader(f)]


def markdown_table(md: str, first_column: str) -> dict[str, dict[str, str]]:
    """The markdown table whose header starts with ``first_column``: {first cell: {column: cell}}."""
    lines = md.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {first_column} |"))
    head = [c.strip() for c in lines[start].strip("|").split("|")]
    body = {}
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        body[cells[0]] = dict(zip(head, cells))
    return body
