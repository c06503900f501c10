"""How a run stops and what it tests, through ``ehf train`` in-process (``cli.main``):

* early stopping (``trainer.patience``) stops a run whose validation NLL rises, and not one whose NLL falls;
* the final test runs on the weights of the best validation's checkpoint, the step (and validation NLL)
  metrics.json names;
* ``data.val_fraction``: the validation and training rows a run uses are the counts it prints;
* a SIGTERM that arrives during the last training step still exits 75 with ``last.ckpt`` at that step.

Validation NLLs are scripted (the module's ``validation_step`` is replaced) so the best step is known."""

from __future__ import annotations

import json
import math
import os
import re
import signal

import pytest
import torch

from ehf_testing import tiny
from lightning_ehf import cli
from lightning_ehf.lit.module import EHFModule

STEPS, EVERY = 20, 5


def _scripted_validation(monkeypatch, nll_of_step) -> None:
    def validation_step(self, batch, batch_idx):
        self.log(
            f"val/{self.nll_key}", float(nll_of_step(self.global_step)), on_epoch=True, batch_size=float(batch.shape[0])
        )

    monkeypatch.setattr(EHFModule, "validation_step", validation_step)


def _scripted_feasibility(monkeypatch, ratio_of_step) -> None:
    """Validations whose NLL falls with the step (−step) and whose bracket RMS is ``ratio_of_step(step)`` × √ε."""

    def validation_step(self, batch, batch_idx):
        rows, step = batch.shape[0], self.global_step
        self._log_mean(f"val/nll_iw{self.stage_iw['val']}", torch.tensor(-float(step)), rows)
        rms = ratio_of_step(step) * math.sqrt(self.multipliers.tolerance)
        for name in self.multipliers.names:
            self._log_mean(f"val/bracket_rms/{name}", torch.tensor(rms), rows)

    monkeypatch.setattr(EHFModule, "validation_step", validation_step)


def _train(run, *changes: str) -> int:
    return cli.main(
        [
            "train",
            *tiny(f"trainer.max_steps={STEPS}", f"trainer.val_check_interval={EVERY}", *changes),
            f"run.dir={run}",
        ]
    )


def _step(path) -> int:
    return int(torch.load(path, map_location="cpu", weights_only=True)["global_step"])


def _metrics(run) -> dict:
    return json.loads((run / "metrics.json").read_text())


def test_a_time_budget_ends_training_and_says_so(tmp_path, ehf_clean_env, monkeypatch):
    """``trainer.max_time_s``: a run with a step cap it cannot reach stops when its time is spent, tests its best
    checkpoint, and metrics.json says it stopped by time, not by early stopping."""
    import time

    step = EHFModule.training_step

    def slow_step(self, batch, batch_idx):
        time.sleep(0.05)
        return step(self, batch, batch_idx)

    monkeypatch.setattr(EHFModule, "training_step", slow_step)
    run = tmp_path / "run"
    assert _train(run, "trainer.max_steps=100000", "trainer.max_time_s=1.5") == 0
    m = _metrics(run)
    assert m["stopped_by_time"] is True and m["stopped_early"] is False, m
    assert EVERY <= m["steps"] <= 1.5 / 0.05, m
    assert "test/nll" in m and (run / "checkpoints" / "best.ckpt").is_file()


@pytest.mark.parametrize("direction", ["rising", "falling"])
def test_early_stopping_stops_a_rising_validation_nll_only(direction, tmp_path, ehf_clean_env, monkeypatch):
    sign = 1.0 if direction == "rising" else -1.0
    _scripted_validation(monkeypatch, lambda step: sign * step)
    run = tmp_path / "run"
    assert _train(run, "trainer.patience=1") == 0
    m = _metrics(run)
    if direction == "rising":  # best at the first validation; the second is worse: stop there
        assert (m["steps"], m["best_step"], m["stopped_early"]) == (2 * EVERY, EVERY, True), m
    else:  # every validation improves: the run goes to its step cap
        assert (m["steps"], m["best_step"], m["stopped_early"]) == (STEPS, STEPS, False), m
    assert m["stopped_by_time"] is False
    assert m["best_val_nll"] == pytest.approx(sign * m["best_step"])  # the scripted NLL of the best step


def test_the_test_runs_on_the_best_checkpoints_weights(tmp_path, ehf_clean_env, monkeypatch):
    _scripted_validation(monkeypatch, lambda step: abs(step - 10))  # best at step 10 of 20
    tested: list[dict[str, torch.Tensor]] = []
    on_test_start = EHFModule.on_test_start

    def recording(self):
        tested.append({k: v.detach().clone() for k, v in self.model.state_dict().items()})
        on_test_start(self)

    monkeypatch.setattr(EHFModule, "on_test_start", recording)
    run = tmp_path / "run"
    assert _train(run) == 0
    assert _metrics(run)["best_step"] == 10 and _step(run / "checkpoints" / "best.ckpt") == 10
    assert _step(run / "checkpoints" / "last.ckpt") == STEPS
    states = {
        name: torch.load(run / "checkpoints" / f"{name}.ckpt", map_location="cpu", weights_only=True)["state_dict"]
        for name in ("best", "last")
    }
    (weights,) = tested
    for name, state in states.items():
        same = all(torch.equal(weights[k], state[f"model.{k}"]) for k in weights)
        assert same == (name == "best"), name  # the best step's weights, which the last step's are not


@pytest.mark.parametrize("n_train, fraction", [(30, 0.25), (30, 0.21), (50, 0.27)])
def test_val_fraction_rows_are_what_the_run_prints(n_train, fraction, tmp_path, ehf_clean_env, monkeypatch, capsys):
    """7.5, 6.3 and 13.5 validation rows asked for: rounding, flooring and ceiling disagree on two of them.
    The batch holds the whole training set (batch_size > n_train), so a training batch counts its rows."""
    seen = {"train": set(), "val": 0}
    training_step, validation_step = EHFModule.training_step, EHFModule.validation_step

    def count_train(self, batch, batch_idx):
        seen["train"].add(int(batch.shape[0]))
        return training_step(self, batch, batch_idx)

    def count_val(self, batch, batch_idx):
        seen["val"] += int(batch.shape[0])
        return validation_step(self, batch, batch_idx)

    monkeypatch.setattr(EHFModule, "training_step", count_train)
    monkeypatch.setattr(EHFModule, "validation_step", count_val)
    run = tmp_path / "run"
    assert (
        cli.main(
            [
                "train",
                *tiny(
                    "trainer.max_steps=2",
                    "trainer.val_check_interval=2",
                    "data.regime=finite",
                    f"data.n_train={n_train}",
                    f"data.val_fraction={fraction}",
                    "data.batch_size=64",
                ),
                f"run.dir={run}",
            ]
        )
        == 0
    )
    printed = re.search(r"of n_train=(\d+) samples, (\d+) train and (\d+) validate", capsys.readouterr().out)
    assert printed, "the run does not print its split"
    total, n_fit, n_val = map(int, printed.groups())
    assert total == n_train and n_fit + n_val == n_train
    assert seen == {"train": {n_fit}, "val": n_val}, (seen, printed.group(0))


def test_sigterm_during_the_last_step_exits_75_with_last_ckpt_at_that_step(
    tmp_path, ehf_clean_env, monkeypatch, capsys
):
    """The last step (12) falls between validations (5, 10), so only the end of training saves it."""
    last = 12
    training_step = EHFModule.training_step

    def signalled_in_the_last_step(self, batch, batch_idx):
        loss = training_step(self, batch, batch_idx)
        if self.global_step == last - 1:
            os.kill(os.getpid(), signal.SIGTERM)
        return loss

    monkeypatch.setattr(EHFModule, "training_step", signalled_in_the_last_step)
    previous = signal.signal(signal.SIGTERM, lambda *_: None)  # pytest survives even if no handler is installed
    try:
        rc = _train(tmp_path / "run", f"trainer.max_steps={last}")
    finally:
        signal.signal(signal.SIGTERM, previous)
    err = capsys.readouterr().err
    assert rc == 75, err[-2000:]
    assert f"stopped by SIGTERM at step {last}" in err
    assert _step(tmp_path / "run" / "checkpoints" / "last.ckpt") == last
    assert not (tmp_path / "run" / "metrics.json").exists()  # not tested: --resume does that


@pytest.mark.parametrize("selection,best", [("feasible", 2 * EVERY), ("nll", STEPS)])
def test_feasible_selection_tests_the_best_checkpoint_that_meets_the_constraint(
    selection, best, tmp_path, ehf_clean_env, monkeypatch
):
    """The validation NLL falls at every validation, but the constraint holds (bracket RMS 0.5 √ε) only up to step
    10 and is broken (3 √ε) after: ``constraint.selection=feasible`` tests step 10's checkpoint, the default the
    last one. Early stopping follows the same score: with a patience of 1 the run stops at step 15."""
    _scripted_feasibility(monkeypatch, lambda step: 0.5 if step <= 2 * EVERY else 3.0)
    run = tmp_path / "run"
    assert _train(run, f"constraint.selection={selection}", "trainer.patience=1") == 0
    m = _metrics(run)
    assert m["best_step"] == best and _step(run / "checkpoints" / "best.ckpt") == best, m
    if selection == "feasible":
        assert m["stopped_early"] and m["steps"] == 3 * EVERY, m
        assert m["val/feasibility"] == pytest.approx(3.0) and m["val/selection"] == pytest.approx(1.0e4 - 15.0)


@pytest.mark.parametrize("feasible_from", [3 * EVERY, None])
def test_feasible_selection_does_not_stop_before_the_constraint_is_first_met(
    feasible_from, tmp_path, ehf_clean_env, monkeypatch
):
    """The bracket RMS is 2 √ε at step 5 and 3 √ε at step 10: with a patience of 1, counting from the least infeasible
    validation would stop at step 10. Early stopping waits instead: a run that meets the constraint from step 15
    goes on while its NLL falls and tests step 20; one that never meets it runs to the cap and tests its lowest NLL
    (step 20 too), not the least infeasible checkpoint (step 5, a barely trained flow in real runs)."""

    def ratio(step: int) -> float:
        feasible = feasible_from is not None and step >= feasible_from
        return 0.5 if feasible else (2.0 if step <= EVERY else 3.0)

    _scripted_feasibility(monkeypatch, ratio)
    run = tmp_path / "run"
    assert _train(run, "constraint.selection=feasible", "trainer.patience=1") == 0
    m = _metrics(run)
    assert (m["steps"], m["stopped_early"]) == (STEPS, False), m
    assert m["best_step"] == STEPS and _step(run / "checkpoints" / "best.ckpt") == STEPS, m
    assert (m["best_val_nll"] is None) == (feasible_from is None), m


def test_selection_score_ranks_every_feasible_checkpoint_first():
    from lightning_ehf.core.constraints import FEASIBLE_RATIO, feasibility_ratio, is_infeasible_score, selection_score

    assert feasibility_ratio(torch.tensor([0.01, 0.05]), 1e-4) == pytest.approx(5.0)  # the worst generator
    assert feasibility_ratio(torch.tensor([]), 1e-3) == 0.0
    feasible, barely, infeasible = (
        selection_score(50.0, 0.2),
        selection_score(50.0, FEASIBLE_RATIO),
        selection_score(-50.0, 1.2),
    )
    assert feasible == barely == 50.0 and infeasible > feasible  # a worse NLL that meets the constraint wins
    # while nothing is feasible: the lowest NLL, however infeasible
    assert is_infeasible_score(infeasible) and not is_infeasible_score(feasible)
    assert is_infeasible_score(1.0e4 + 2.0)  # a best score saved under the earlier rule (offset + ratio) when resumed
    assert selection_score(-100.0, 3.0) < selection_score(0.0, 1.2) and is_infeasible_score(
        selection_score(-100.0, 3.0)
    )
