"""Progress output of ``ehf train`` in batch jobs and on terminals (``progress.*``).

* ``ProgressLines`` (driven with a fake clock): a line at least every ``every_n_steps`` steps and at least
  every ``every_s`` seconds, also while a long validation runs; one line per validation.
* Under a non-terminal stdout (a pipe, a log file), ``progress.mode=auto`` prints those lines and no
  redrawn bar; the rich bar (``progress.mode=bar``) is labelled ``Training``, not ``Epoch 0/-2``.
* Invalid ``progress.*`` values exit 2 naming the key.
"""

from __future__ import annotations

import io
import re
from types import SimpleNamespace

import pytest
from lightning.pytorch.trainer.states import TrainerFn

from ehf_testing import ehf, tiny
from lightning_ehf.config.load import load_config, validate
from lightning_ehf.errors import ConfigError
from lightning_ehf.lit import callbacks


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _fake_trainer(max_steps: int) -> SimpleNamespace:
    return SimpleNamespace(
        global_step=0,
        max_steps=max_steps,
        is_global_zero=True,
        sanity_checking=False,
        state=SimpleNamespace(fn=TrainerFn.FITTING),
        num_val_batches=[8],
        callback_metrics={"train/elbo": -2.5, "train/lambda/L01": 0.5, "val/nll_iw4": 2.75},
    )


def _drive(
    monkeypatch,
    every_n_steps: int,
    every_s: float,
    step_s: float,
    steps: int,
    validate_at: tuple[int, ...] = (),
    val_batch_s: float = 0.0,
) -> list[tuple[float, str]]:
    """Run ``steps`` fake training steps of ``step_s`` seconds (validations of 8 batches at ``validate_at``);
    returns (time, line) for every line printed."""
    clock = FakeClock()
    monkeypatch.setattr(callbacks.time, "monotonic", clock)
    out = io.StringIO()
    cb = callbacks.ProgressLines(every_n_steps, every_s, stream=out)
    trainer = _fake_trainer(steps)
    cb.on_train_start(trainer, None)
    printed: list[tuple[float, str]] = []

    def collect() -> None:
        text = out.getvalue()
        out.seek(0)
        out.truncate()
        printed.extend((clock.now, line) for line in text.splitlines())

    for step in range(1, steps + 1):
        clock.now += step_s
        trainer.global_step = step
        cb.on_train_batch_end(trainer, None, None, None, step - 1)
        collect()
        if step in validate_at:
            for b in range(8):
                clock.now += val_batch_s
                cb.on_validation_batch_end(trainer, None, None, None, b)
                collect()
            cb.on_validation_end(trainer, None)
            collect()
    return printed


def test_a_line_every_n_steps(monkeypatch):
    lines = _drive(monkeypatch, every_n_steps=10, every_s=1e9, step_s=0.01, steps=35)
    assert [ln for _, ln in lines][:1] == [
        "step 10/35  train/elbo -2.5  train/lambda/L01 0.5  100 steps/s  elapsed 0s  left 0s"
    ]
    assert [int(re.match(r"step (\d+)/", ln).group(1)) for _, ln in lines] == [10, 20, 30, 35]


def test_a_line_at_least_every_every_s_seconds_also_during_validation(monkeypatch):
    lines = _drive(
        monkeypatch, every_n_steps=10_000, every_s=30.0, step_s=7.0, steps=40, validate_at=(20,), val_batch_s=12.0
    )
    times = [t for t, _ in lines]
    gaps = [b - a for a, b in zip([1000.0, *times], times)]
    assert max(gaps) <= 30.0 + 12.0, gaps  # at most one step or validation batch late
    assert any("validating: batch" in ln for _, ln in lines)
    assert sum("validation: val/nll_iw4 2.75" in ln for _, ln in lines) == 1
    assert lines[-1][1].startswith("step 40/40 ")


def test_lines_not_a_bar_when_stdout_is_not_a_terminal(tmp_path):
    proc = ehf(["train", *tiny("progress.every_n_steps=2"), f"run.dir={tmp_path / 'run'}"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    steps = [int(s) for s in re.findall(r"^step (\d+)/6  train/elbo ", proc.stdout, re.M)]
    assert steps == [2, 4, 6], proc.stdout
    assert len(re.findall(r"^step [36]/6  validation: val/nll_iw4 ", proc.stdout, re.M)) == 2, proc.stdout
    assert "it/s" not in proc.stdout and "Epoch" not in proc.stdout  # no bar (the results table stays)


def test_the_bar_is_labelled_training_not_epoch_0_of_minus_2(tmp_path):
    proc = ehf(["train", *tiny("progress.mode=bar"), f"run.dir={tmp_path / 'run'}"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Training" in proc.stdout and "Epoch" not in proc.stdout, proc.stdout[-2000:]
    assert not re.search(r"^step \d+/", proc.stdout, re.M)


@pytest.mark.parametrize(
    "override, message",
    [
        ("progress.mode=loud", "progress.mode: unknown value 'loud' (choose from auto, bar, lines, none)"),
        ("progress.every_n_steps=0", "progress.every_n_steps: must be > 0, got 0"),
        ("progress.every_s=-1", "progress.every_s: must be > 0, got -1"),
    ],
)
def test_invalid_progress_values_name_the_key(override, message):
    with pytest.raises(ConfigError) as err:
        validate(load_config([], [override]))
    assert str(err.value).startswith(message), str(err.value)
