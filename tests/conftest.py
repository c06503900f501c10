"""Fixtures shared by several test folders (each folder's own ``conftest.py`` holds the fixtures only it uses).

The suite mirrors the package: ``core/``, ``config/``, ``data/``, ``lit/``, ``study/``, ``cli/`` and ``e2e/``
(whole runs through ``ehf``, packaging and repository checks); docs/design.md §5 says which folder guards what.

* ``ehf_tiny``: overrides that make a training run take a few seconds (add ``run.dir`` / ``run.root``).
* ``ehf_cli``: ``ehf_cli(args, cwd, timeout=..., env=...)`` runs ``python -m lightning_ehf ARGS`` in a
  subprocess with a clean environment (no EHF_RUN_DIR / WANDB_MODE / DDP variables leaking in, W&B
  silent and its config/cache folders under the test's temporary folder).
* ``ehf_clean_env``: for in-process ``cli.main`` calls; removes (and afterwards restores) the env
  variables that the CLI and W&B set process-wide.
* ``ehf_tiny_run``: one tiny ring2d training run (W&B disabled) shared by the whole session.

The override lists and the environment cleaning live in ``ehf_testing.py`` (a plain module beside this
file, imported by tests of every folder).
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from ehf_testing import ENV_DROP, FRAMEWORK_TINY, clean_env, ehf

# pytest -n N runs N worker processes: give each cores ÷ N torch threads (oversubscribed OpenMP threads
# make every in-process training many times slower)
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])))


@pytest.fixture(scope="session")
def ehf_tiny() -> list[str]:
    return list(FRAMEWORK_TINY)


@pytest.fixture(scope="session")
def ehf_cli(tmp_path_factory) -> Callable[..., subprocess.CompletedProcess]:
    scratch = tmp_path_factory.mktemp("ehf-env")
    wandb_dirs = {
        "WANDB_CONFIG_DIR": str(scratch / "wandb-config"),
        "WANDB_CACHE_DIR": str(scratch / "wandb-cache"),
        "WANDB_DATA_DIR": str(scratch / "wandb-data"),
    }

    def run(args, cwd, timeout: float = 180, env: dict | None = None) -> subprocess.CompletedProcess:
        return ehf(args, cwd, timeout, env=clean_env(**{**wandb_dirs, **(env or {})}))

    return run


@pytest.fixture
def ehf_clean_env(monkeypatch):
    for name in ENV_DROP:
        monkeypatch.setenv(name, "")  # records the old value (or its absence) for the restore ...
        monkeypatch.delenv(name)  # ... then removes it
    monkeypatch.setenv("WANDB_SILENT", "true")
    return monkeypatch


@pytest.fixture(scope="session")
def ehf_tiny_run(tmp_path_factory, ehf_cli) -> Path:
    """Folder of one tiny ring2d run (default experiment, W&B disabled, trained 6 steps)."""
    root = tmp_path_factory.mktemp("ehf-tiny-run")
    run_dir = root / "run"
    proc = ehf_cli(["train", *FRAMEWORK_TINY, "logger.wandb.mode=disabled", f"run.dir={run_dir}"], cwd=root)
    assert proc.returncode == 0, f"tiny run failed (rc={proc.returncode}):\n{proc.stderr[-3000:]}"
    return run_dir
