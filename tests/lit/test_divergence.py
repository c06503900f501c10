"""Numerical blow-ups (docs/design.md §6 "Non-finite values"): a leapfrog step size of 50 with lr=1 makes the flow diverge
within a few steps.

* ``optim.on_nonfinite=stop`` (default): exit code 3, one stderr line naming the step and the kept
  checkpoint, and that checkpoint is finite and loads with ``weights_only=True``.
* ``optim.on_nonfinite=skip``: exit 0; every bad batch is skipped (announced on stderr) and the step
  size of the diverging block halved; the count is logged as ``train/nonfinite_skips``.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ehf_testing import clean_env, csv_rows, tiny

DIVERGING = tiny(
    "trainer.max_steps=40", "trainer.val_check_interval=2", "optim.warmup_steps=0", "model.step_size=50", "optim.lr=1.0"
)


@pytest.fixture(scope="module")
def diverged(tmp_path_factory) -> dict[str, tuple[subprocess.CompletedProcess, Path]]:
    """The diverging run with on_nonfinite=stop and =skip, started together."""
    work = tmp_path_factory.mktemp("diverge")
    modes = {"stop": [], "skip": ["optim.on_nonfinite=skip", "trainer.log_every_n_steps=1"]}
    procs = {}
    for mode, extra in modes.items():
        args = [sys.executable, "-m", "lightning_ehf", "train", *DIVERGING, *extra, f"run.dir={work / mode}"]
        procs[mode] = (
            args,
            subprocess.Popen(
                args, cwd=work, env=clean_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
            ),
        )
    out = {}
    for mode, (args, p) in procs.items():
        stdout, stderr = p.communicate(timeout=180)
        out[mode] = (subprocess.CompletedProcess(args, p.returncode, stdout, stderr), work / mode)
    return out


def test_stop_exits_3_and_keeps_a_finite_checkpoint(diverged):
    proc, run = diverged["stop"]
    assert proc.returncode == 3, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if "non-finite" in ln]
    assert len(lines) == 1, proc.stderr[-3000:]
    line = lines[0]
    assert line.startswith("ehf train: error: non-finite") and "last good checkpoint" in line, line
    step = int(re.search(r"at step (\d+)", line).group(1))
    assert re.search(r"flow block \d+", line) and "model.step_size" in line, line  # where, and what to do
    kept = Path(line.split("last good checkpoint: ", 1)[1].strip())
    assert kept.resolve() == (run / "checkpoints" / "last.ckpt").resolve()

    ckpt = torch.load(kept, map_location="cpu", weights_only=True)
    assert ckpt["global_step"] <= step
    floats = {k: v for k, v in ckpt["state_dict"].items() if v.is_floating_point()}
    assert floats and all(bool(torch.isfinite(v).all()) for v in floats.values()), [
        k for k, v in floats.items() if not bool(torch.isfinite(v).all())
    ]
    assert not (run / "metrics.json").exists()
    assert "run folder:" in proc.stdout  # it had started: the folder is where the checkpoint is


def test_skip_finishes_and_shrinks_the_diverging_block(diverged):
    proc, run = diverged["skip"]
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    text = proc.stderr + proc.stdout
    skipped = re.findall(r"step \d+: non-finite \w+[^;\n]*; batch skipped", text)
    assert skipped, proc.stderr[-3000:]
    # the block is named when it can be located (from its states, else from its gradients)
    located = re.findall(
        r"step \d+: non-finite \w+ in flow block (\d+); batch skipped, step size of block \1 halved", text
    )
    assert located, skipped
    blocks = {int(b) - 1 for b in located}  # messages count blocks from 1, metric names from 0

    rows = csv_rows(run)
    counts = [float(r["train/nonfinite_skips"]) for r in rows if "train/nonfinite_skips" in r]
    assert counts and max(counts) >= 1
    # logged every step, before that step's own skip: the last value is the total, or one less when
    # the final step itself was skipped; metrics.json holds the total
    assert max(counts) in (len(skipped), len(skipped) - 1), (max(counts), len(skipped))
    for b in blocks:
        sizes = [float(r[f"train/step_size/{b}"]) for r in rows if f"train/step_size/{b}" in r]
        assert sizes and sizes[-1] < 50, (b, sizes[-5:])
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["steps"] == 40 and metrics["train/nonfinite_skips"] == len(skipped)
    last = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert all(bool(torch.isfinite(v).all()) for v in last["state_dict"].values() if v.is_floating_point())


def test_skip_count_is_in_metrics_json(diverged):
    proc, run = diverged["skip"]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics.get("train/nonfinite_skips", 0) >= 1, sorted(metrics)
