"""A run killed with SIGKILL and resumed with ``ehf train --resume`` ends exactly where the same run,
uninterrupted, ends (docs/design.md §6: RNG state in checkpoints, step-indexed data streams, appending CSV).

For each case: run A (uninterrupted) and run B (same command) start together; B is SIGKILLed as soon as
its first ``checkpoints/last.ckpt`` appears (step 10 of 60), then resumed. Final validation NLL, test NLL
and the Lagrange multiplier must equal A's to 1e-6, and B's metrics.csv must hold exactly A's rows
(one per validation step: no duplicates from the redone part, no gaps from the kill).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from ehf_testing import clean_env, csv_rows, ehf, tiny

MAX_STEPS = 60
VAL_EVERY = 10
BASE = tiny(
    f"trainer.max_steps={MAX_STEPS}",
    f"trainer.val_check_interval={VAL_EVERY}",
    "data.batch_size=256",
    "model.hidden=32",
)
REGIMES = {"infinite": [], "finite": ["data.regime=finite", "data.n_train=700"]}
NLL = "val/nll_iw4"
TOL = 1e-6


def start(args: list[str], cwd: Path, log: Path) -> subprocess.Popen:
    out = open(log, "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "lightning_ehf", *args], cwd=cwd, env=clean_env(), stdout=out, stderr=subprocess.STDOUT
    )
    out.close()
    return proc


def finish(proc: subprocess.Popen, log: Path, timeout: float = 180) -> str:
    proc.wait(timeout=timeout)
    text = log.read_text()
    assert proc.returncode == 0, f"rc={proc.returncode}\n{text[-4000:]}"
    assert "Traceback" not in text, text[-4000:]
    return text


def kill_at_first_checkpoint(proc: subprocess.Popen, run_dir: Path, log: Path) -> int:
    """SIGKILL ``proc`` as soon as ``run_dir/checkpoints/last.ckpt`` exists; returns its global_step."""
    last = run_dir / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + 180
    while not last.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    finished_first = proc.poll() is not None
    if not finished_first:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    assert not finished_first, f"run B ended before it could be killed (make it longer):\n{log.read_text()[-3000:]}"
    assert proc.returncode == -signal.SIGKILL
    assert not (run_dir / "metrics.json").exists(), "run B finished before the kill"
    step = int(torch.load(last, map_location="cpu", weights_only=True)["global_step"])
    assert 0 < step < MAX_STEPS, step
    return step


def val_rows(run_dir: Path) -> list[dict]:
    return [r for r in csv_rows(run_dir) if NLL in r]


_reference: dict[str, Path] = {}  # regime → finished run A (shared by the folder and .ckpt cases)


@pytest.mark.slow
@pytest.mark.parametrize("regime, target", [("infinite", "folder"), ("finite", "folder"), ("infinite", "ckpt")])
def test_resume_after_sigkill_equals_uninterrupted(regime, target, tmp_path_factory):
    work = tmp_path_factory.mktemp(f"resume-{regime}-{target}")
    args = ["train", *BASE, *REGIMES[regime]]
    run_b = work / "B"
    proc_b = start([*args, f"run.dir={run_b}"], work, work / "B.log")
    proc_a = None
    if regime not in _reference:  # A runs while B is being killed and resumed
        _reference[regime] = work / "A"
        proc_a = start([*args, f"run.dir={work / 'A'}"], work, work / "A.log")
    run_a = _reference[regime]

    step = kill_at_first_checkpoint(proc_b, run_b, work / "B.log")
    where = run_b if target == "folder" else run_b / "checkpoints" / "last.ckpt"
    resumed = ehf(["train", "--resume", where], work, timeout=180)
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    assert "Traceback" not in resumed.stderr
    assert f"resuming from step {step}" in resumed.stdout, resumed.stdout[-2000:]
    if proc_a is not None:
        finish(proc_a, work / "A.log")

    a, b = json.loads((run_a / "metrics.json").read_text()), json.loads((run_b / "metrics.json").read_text())
    assert b["steps"] == a["steps"] == MAX_STEPS
    for key in ("test/nll", "test/lambda/L01", "test/bracket_rms/L01", "test/elbo"):
        assert abs(b[key] - a[key]) <= TOL, (key, a[key], b[key])
    assert a["test/lambda/L01"] > 0  # the multiplier moved: its state was really carried over

    va, vb = val_rows(run_a), val_rows(run_b)
    steps_a = [int(r["step"]) for r in va]
    assert steps_a == [k * VAL_EVERY - 1 for k in range(1, MAX_STEPS // VAL_EVERY + 1)], steps_a
    assert [int(r["step"]) for r in vb] == steps_a  # one row per validation: no duplicates, no gaps
    assert abs(float(vb[-1][NLL]) - float(va[-1][NLL])) <= TOL
    for ra, rb in zip(va, vb):
        assert abs(float(rb[NLL]) - float(ra[NLL])) <= TOL, (ra["step"], ra[NLL], rb[NLL])
    # every other row (train logging, learning rate, test) is there exactly once as well
    assert [(r["step"], sorted(r)) for r in csv_rows(run_b)] == [(r["step"], sorted(r)) for r in csv_rows(run_a)]

    last = torch.load(run_b / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert last["global_step"] == MAX_STEPS
