"""Lightning's ``accumulate_grad_batches`` and ``limit_val_batches`` pass through (``trainer.*``), and a resume
that raises ``trainer.max_steps`` says what happens to the learning-rate schedule."""

from __future__ import annotations

import re

import pytest

from ehf_testing import tiny
from lightning_ehf.config.load import load_config, validate
from lightning_ehf.errors import ConfigError
from lightning_ehf.lit.module import lr_factor


def test_trainer_keys_reach_lightning(tmp_path):
    from lightning_ehf.build import make_trainer

    cfg = load_config(overrides=tiny("trainer.accumulate_grad_batches=3", "trainer.limit_val_batches=2"))
    validate(cfg)
    trainer = make_trainer(cfg, tmp_path, "abcd1234")
    assert trainer.accumulate_grad_batches == 3 and trainer.limit_val_batches == 2
    assert (
        make_trainer(load_config(overrides=tiny("trainer.limit_val_batches=0.25")), tmp_path, "x").limit_val_batches
        == 0.25
    )
    for bad in ("trainer.limit_val_batches=0", "trainer.limit_val_batches=1.5", "trainer.accumulate_grad_batches=0"):
        with pytest.raises(ConfigError, match=bad.split("=")[0]):
            validate(load_config(overrides=[bad]))


@pytest.mark.slow
def test_accumulated_run_and_schedule_note_on_resume(tmp_path, ehf_cli):
    run = tmp_path / "run"
    proc = ehf_cli(
        ["train", *tiny("trainer.accumulate_grad_batches=2", "trainer.limit_val_batches=1"), f"run.dir={run}"],
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    # batch 64 (tiny), 1 device, 1 node, 2 batches per optimiser step
    assert (
        "global batch: 128 = 64 per device × 1 device × 1 node × 2 accumulated batches per optimiser step"
        in proc.stdout
    )
    import json

    assert json.loads((run / "metrics.json").read_text())["steps"] == 6  # optimiser steps, 12 batches

    proc = ehf_cli(["train", "--resume", str(run), "trainer.max_steps=12"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    cfg = load_config([run / "config.yaml"])
    old = cfg.model_copy(update={"trainer": cfg.trainer.model_copy(update={"max_steps": 6})})
    new = cfg.model_copy(update={"trainer": cfg.trainer.model_copy(update={"max_steps": 12})})
    line = next(li for li in proc.stdout.splitlines() if li.startswith("trainer.max_steps 6 -> 12"))
    before, after = (float(x) for x in re.search(r"from ([\d.]+)× to ([\d.]+)×", line).groups())
    assert before == pytest.approx(lr_factor(old, 6), rel=1e-2) and after == pytest.approx(lr_factor(new, 6), rel=1e-2)
    assert before != pytest.approx(after, rel=1e-2)
    assert "schedule of a 12-step run" in line
