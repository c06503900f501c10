"""Shared fixtures for the core tests (``tests/test_core_*.py``).

* ``device``: ``cpu``, plus ``cuda`` when available.
* ``dtype``: float32 and float64 (tests where precision is the point use float64 directly).
* ``randomize``: overwrite every Hamiltonian parameter of a model with N(0, std²) draws, so the
  flow is far from the free motion ``make_ehf`` starts at (its last layers are zero-initialised).
* ``build``: ``make_ehf`` + ``randomize`` + cast to dtype/device, with small, fast defaults.

Core test modules are seeded before every test (an autouse fixture that touches only modules whose
name starts with ``test_core_``), so their Monte Carlo checks are reproducible.
"""

from __future__ import annotations

import os
from typing import Callable

import pytest
import torch

# pytest -n N runs N worker processes: give each cores ÷ N torch threads (oversubscribed OpenMP threads
# make every in-process training many times slower)
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])))

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
DTYPES = [torch.float32, torch.float64]


@pytest.fixture(params=DEVICES)
def device(request) -> torch.device:
    return torch.device(request.param)


@pytest.fixture(params=DTYPES, ids=["float32", "float64"])
def dtype(request) -> torch.dtype:
    return request.param


@pytest.fixture(autouse=True)
def _seed_core_tests(request):
    if request.node.path.name.startswith("test_core_"):
        torch.manual_seed(1234)
    yield


def _randomize(model: torch.nn.Module, std: float = 0.4) -> torch.nn.Module:
    """Normal(0, std²) on all Hamiltonian parameters of every block (weights, biases, log masses)."""
    with torch.no_grad():
        for block in model.flow.blocks:
            params = list(block.hamiltonian.parameters())
            assert params, "a Hamiltonian block without parameters cannot be randomised"
            for prm in params:
                prm.normal_(0.0, std)
    return model


@pytest.fixture
def randomize() -> Callable[..., torch.nn.Module]:
    return _randomize


@pytest.fixture
def build() -> Callable[..., torch.nn.Module]:
    """``build(symmetry, dtype=..., device=..., std=0.4, **make_ehf_kwargs)`` → a randomised EHF."""
    from lightning_ehf.core import make_ehf

    def _build(symmetry, dtype=torch.float64, device="cpu", std=0.4, **kwargs):
        kwargs.setdefault("blocks", 2)
        kwargs.setdefault("leapfrog_steps", 3)
        kwargs.setdefault("step_size", 0.15)
        kwargs.setdefault("hidden", 16)
        model = make_ehf(symmetry, **kwargs)
        _randomize(model, std)
        return model.to(dtype=dtype, device=device)

    return _build


# -- framework (end-to-end) fixtures: tests/test_framework_*.py ----------------------------------
#
# (the override lists and the environment cleaning live in ``ehf_testing.py``, shared with the
# reliability tests)
#
# * ``ehf_tiny``: overrides that make a training run take a few seconds (add ``run.dir`` / ``run.root``).
# * ``ehf_cli``: ``ehf_cli(args, cwd, timeout=..., env=...)`` runs ``python -m lightning_ehf ARGS`` in a
#   subprocess with a clean environment (no EHF_RUN_DIR / WANDB_MODE / DDP variables leaking in, W&B
#   silent and its config/cache folders under the test's temporary folder).
# * ``ehf_clean_env``: for in-process ``cli.main`` calls; removes (and afterwards restores) the env
#   variables that the CLI and W&B set process-wide.
# * ``ehf_tiny_run``: one tiny ring2d training run (W&B disabled) shared by the whole session.

import subprocess
from pathlib import Path

from ehf_testing import ENV_DROP, FRAMEWORK_TINY, clean_env, ehf


@pytest.fixture(scope="session")
def ehf_tiny() -> list[str]:
    return list(FRAMEWORK_TINY)


@pytest.fixture(scope="session")
def ehf_cli(tmp_path_factory) -> Callable[..., subprocess.CompletedProcess]:
    scratch = tmp_path_factory.mktemp("ehf-env")
    wandb_dirs = {"WANDB_CONFIG_DIR": str(scratch / "wandb-config"), "WANDB_CACHE_DIR": str(scratch / "wandb-cache"),
                  "WANDB_DATA_DIR": str(scratch / "wandb-data")}

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
