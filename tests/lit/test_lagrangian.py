"""The Lagrangian ``−ELBO + Σ_k λ_k (C_k − ε_k)`` inside the LightningModule, end to end.

* The module's loss grows with C at rate λ (a stub model with a controllable constraint value).
* A short run with a large fixed penalty ends with a smaller bracket RMS than the same run without
  the constraint.
* Inside the Lightning loop, every logged multiplier follows the projected dual step
  ``λ_{t+1} = max(0, λ_t + η (C_t − ε))`` from the ``C_t`` logged at the same step: λ rises while
  C > ε and falls (to 0 at most) while C < ε.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from ehf_testing import csv_rows, tiny
from lightning_ehf import cli
from lightning_ehf.config.load import load_config
from lightning_ehf.core import so2
from lightning_ehf.lit.module import EHFModule


class _ControlledConstraint(nn.Module):
    """A stand-in model whose ELBO is fixed and whose constraint value is a parameter ``c``."""

    generator_names = ["L01"]

    def __init__(self) -> None:
        super().__init__()
        self.symmetry = so2(2)
        self.c = nn.Parameter(torch.tensor([0.5]))

    def elbo_and_constraints(self, q: torch.Tensor, n: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        return -q.square().sum(-1), self.c


def _module(*overrides: str) -> EHFModule:
    cfg = load_config([], list(overrides))
    return EHFModule(cfg, _ControlledConstraint())


@pytest.mark.filterwarnings("ignore:You are trying to `self.log\\(\\)`")
@pytest.mark.parametrize("mode,lam", [("penalty", 3.0), ("dual", 0.7)])
def test_module_loss_grows_with_the_constraint_at_rate_lambda(mode, lam):
    module = _module(f"constraint.mode={mode}", f"constraint.init={lam}", "constraint.tolerance=0.01")
    q = torch.randn(16, 2)
    losses = []
    for c in (0.5, 2.0):  # both above the tolerance
        with torch.no_grad():
            module.model.c.fill_(c)
        module.model.zero_grad()
        loss = module.training_step(q, 0)
        loss.backward()
        losses.append(float(loss.detach()))
        assert float(module.model.c.grad) == pytest.approx(lam), "∂loss/∂C must be +λ"
    expected_at_half = float(q.square().sum(-1).mean()) + lam * (0.5 - 0.01)
    assert losses[0] == pytest.approx(expected_at_half, rel=1e-6)
    assert losses[1] - losses[0] == pytest.approx(lam * 1.5, rel=1e-6)


@pytest.mark.filterwarnings("ignore:You are trying to `self.log\\(\\)`")
def test_module_loss_ignores_the_constraint_when_mode_is_none():
    module = _module("constraint.mode=none", "constraint.init=5.0")
    loss = module.training_step(torch.randn(8, 2), 0)
    loss.backward()
    assert float(module.model.c.grad) == 0.0


def _train(tmp_path: Path, name: str, *overrides: str) -> Path:
    run_dir = tmp_path / name
    rc = cli.main(["train", *tiny(*overrides), f"run.dir={run_dir}"])
    assert rc == 0, f"training run {name} failed (rc={rc})"
    return run_dir


def _lambda_recurrence(run_dir: Path, lr: float, tolerance: float) -> list[float]:
    """Checks λ_{t+1} = max(0, λ_t + η (C_t − ε)) at every logged step; returns the λ sequence."""
    rows = [r for r in csv_rows(run_dir) if "train/lambda/L01" in r]
    steps = [int(r["step"]) for r in rows]
    assert steps == list(range(len(rows))), f"expected a training row at every step, got steps {steps}"
    lam = [float(r["train/lambda/L01"]) for r in rows]
    c = [float(r["train/bracket_rms/L01"]) ** 2 for r in rows]
    for t in range(len(rows) - 1):
        expected = max(0.0, lam[t] + lr * (c[t] - tolerance))
        # λ is a float32 buffer: allow its rounding, nothing more
        assert lam[t + 1] == pytest.approx(expected, rel=1e-4, abs=1e-7 * (1 + lam[t])), (t, lam[t], c[t], lam[t + 1])
    return lam


@pytest.mark.slow
def test_dual_ascent_in_the_training_loop_raises_lambda_while_violated(tmp_path, ehf_clean_env):
    run = _train(
        tmp_path,
        "up",
        "constraint.mode=dual",
        "constraint.tolerance=0",
        "constraint.lr=50",
        "trainer.log_every_n_steps=1",
        "trainer.max_steps=10",
        "trainer.val_check_interval=5",
    )
    lam = _lambda_recurrence(run, lr=50.0, tolerance=0.0)
    assert all(b >= a for a, b in zip(lam, lam[1:])), lam
    assert lam[-1] > lam[2] > 0, lam  # C > 0 once the zero-initialised last layers move


@pytest.mark.slow
def test_dual_ascent_in_the_training_loop_lowers_lambda_to_zero_when_satisfied(tmp_path, ehf_clean_env):
    run = _train(
        tmp_path,
        "down",
        "constraint.mode=dual",
        "constraint.init=2.0",
        "constraint.tolerance=0.5",
        "constraint.lr=1.0",
        "trainer.log_every_n_steps=1",
        "trainer.max_steps=10",
        "trainer.val_check_interval=5",
    )
    lam = _lambda_recurrence(run, lr=1.0, tolerance=0.5)
    assert lam[0] == 2.0 and lam[1] < 1.6, lam
    assert all(b <= a for a, b in zip(lam, lam[1:])), lam
    assert lam[-1] == 0.0, lam


@pytest.mark.slow
def test_large_fixed_penalty_ends_with_smaller_brackets_than_no_constraint(tmp_path, ehf_clean_env):
    common = (
        "trainer.max_steps=60",
        "trainer.val_check_interval=30",
        "data.batch_size=128",
        "model.blocks=2",
        "model.encoder=gaussian",
        "seed=3",
    )
    free = json.loads((_train(tmp_path, "none", "constraint.mode=none", *common) / "metrics.json").read_text())
    held = json.loads(
        (
            _train(tmp_path, "penalty", "constraint.mode=penalty", "constraint.init=1000", *common) / "metrics.json"
        ).read_text()
    )
    rms_free, rms_held = free["test/bracket_rms/L01"], held["test/bracket_rms/L01"]
    assert held["test/lambda/L01"] == 1000.0 and free["test/lambda/L01"] == 0.0
    assert rms_held < 0.3 * rms_free, (rms_held, rms_free)
