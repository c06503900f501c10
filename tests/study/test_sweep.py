"""A W&B sweep over a shipped study, offline: the agent is simulated by running the sweep's command with the
environment a ``wandb agent`` gives its runs (``WANDB_SWEEP_ID``, ``WANDB_RUN_ID``, the project), and the
offline run is read back from its ``.wandb`` file with ``wandb leet inspect``. The shipped study turns W&B off
(``logger.wandb.mode: disabled``); under the agent the cell logs anyway, names itself after the cell, is grouped
by study, typed by method and tagged with its axis values, logs the sweep's metric, and a second agent that
resumes the cell continues the first one's W&B run."""

from __future__ import annotations

import json
import math
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ehf_testing import clean_env
from lightning_ehf.system import pid_alive

sys.path.insert(0, str(Path(__file__).parent))
from test_study import commands_in_log, metrics, study, wait_for  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ROOT / "configs" / "study" / "data_efficiency.yaml"
CELL = "ehf_dual-ring2d-n_train128-seed0"
SHRINK = [
    "trainer.max_steps=300",
    "trainer.val_check_interval=50",
    "trainer.patience=null",
    "data.n_test=64",
    "eval.iw_samples=4",
    "eval.val_iw_samples=4",
    "eval.n_eval=16",
    "eval.n_group_samples=1",
    "eval.invariance_iw=4",
]


def leet(*args: str) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, "-m", "wandb", "leet", "inspect", *args], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc


def run_record(wandb_file: Path) -> dict:
    records = [json.loads(line) for line in leet("--json", str(wandb_file)).stdout.splitlines() if line.strip()]
    return next(r["run"] for r in records if r.get("type") == "run")


def _cell_pid(study_dir: Path) -> int:
    return int(json.loads((study_dir / "logs" / f"{CELL}.json").read_text()).get("pid", 0))


def agent_env(tmp_path: Path, run_id: str) -> dict[str, str]:
    scratch = tmp_path / "wandb-home"
    return clean_env(
        WANDB_SWEEP_ID="sw33p",
        WANDB_RUN_ID=run_id,
        WANDB_MODE="offline",
        WANDB_PROJECT="ehf-sweep",
        WANDB_CONFIG_DIR=str(scratch / "config"),
        WANDB_CACHE_DIR=str(scratch / "cache"),
        WANDB_DATA_DIR=str(scratch / "data"),
    )


@pytest.mark.slow
def test_sweep_agent_runs_of_a_shipped_study_cell_log_and_resume_their_run(tmp_path):
    d = tmp_path / "study"
    r = study("run", "-c", SHIPPED, "profile=quick", *SHRINK, "--dir", d, "--launcher", "wandb", cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    sweep = yaml.safe_load((d / "sweep.yaml").read_text())
    assert sweep["metric"] == {"name": "test/nll", "goal": "minimize"} and CELL in sweep["parameters"]["cell"]["values"]
    assert sweep["command"][1] == sys.executable  # the study's interpreter, not the `python` an agent finds on PATH
    macros = {"${env}": ["/usr/bin/env"], "${args_no_hyphens}": [f"cell={CELL}"]}
    command = [w for word in sweep["command"] for w in macros.get(word, [word])]
    assert all("${" not in w for w in command), command
    run = d / "cells" / CELL

    # agent 1: its run is stopped (SIGTERM to the agent's process) after the first checkpoint
    first = subprocess.Popen(
        command,
        cwd=tmp_path,
        env=agent_env(tmp_path, "agentrun1"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(lambda: (run / "checkpoints" / "last.ckpt").is_file(), 240, "the cell's first checkpoint", first)
        first.send_signal(signal.SIGTERM)
        first.communicate(timeout=120)
    finally:
        if first.poll() is None:
            first.kill()
    wait_for(lambda: "preempted" in (d / "logs" / f"{CELL}.log").read_text(), 120, "the cell to stop")
    # ... and its process (``pid`` in the cell's state file) to be gone: until then it holds its W&B run
    wait_for(lambda: not (_cell_pid(d) and pid_alive(_cell_pid(d))), 120, "the cell's process to exit")
    assert not (run / "metrics.json").exists()

    # agent 2 (a new sweep run id) resumes the cell
    second = subprocess.run(
        command, cwd=tmp_path, env=agent_env(tmp_path, "agentrun2"), capture_output=True, text=True, timeout=400
    )
    assert second.returncode == 0, second.stdout + second.stderr
    assert f"cell {CELL}: exit 0" in second.stdout
    starts, resumed = commands_in_log(d / "logs" / f"{CELL}.log")
    assert "--resume" not in starts and f"--resume {run}" in resumed and "logger.wandb.mode=offline" in resumed
    assert metrics(run)["steps"] == 300

    files = sorted(run.glob("wandb/offline-run-*/run-*.wandb"))
    assert [f.name for f in files] == ["run-agentrun1.wandb"] * 2, files  # one per segment, the same W&B run
    for f in files:
        rec = run_record(f)
        assert rec["run_id"] == "agentrun1" and rec["sweep_id"] == "sw33p" and rec["project"] == "ehf-sweep"
        assert rec["display_name"] == CELL and rec["run_group"] == "data_efficiency" and rec["job_type"] == "ehf_dual"
        assert rec["tags"] == ["ehf_dual", "ring2d", "n_train128", "seed0"]
    state = json.loads(leet("--summary", "--json", str(files[-1])).stdout)
    assert state["state"] == "finished" and state["exit_code"] == 0
    summary = state["summary"]
    m = metrics(run)
    for key in ("test/nll", "test/nll_iw4", "test/kl", "test/invariance_error", "test/train_nll"):
        assert math.isfinite(summary[key]), key
    assert summary["test/nll"] == pytest.approx(m["test/nll"], rel=1e-6)  # the sweep's metric is the run's test NLL
    # the axes are top-level config fields (filter and pivot on a dashboard)
    config = state["config"]
    assert {k: config[k] for k in ("study", "method", "target", "n_train", "seed")} == {
        "study": "data_efficiency",
        "method": "ehf_dual",
        "target": "ring2d",
        "n_train": 128,
        "seed": 0,
    }
