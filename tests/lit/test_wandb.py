"""W&B logging (docs/design.md §4: ``wandb/`` holds an offline run by default; §6: W&B pitfalls).

The offline run's transaction log (``run-<id>.wandb``) is read back with wandb's own reader,
``wandb leet inspect`` (wandb ≥ 0.31; the old Python ``DataStore`` reader is gone from this version).
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from lightning_ehf.config.load import load_config


def _tail(proc) -> str:
    return f"rc={proc.returncode}\n--- stdout\n{proc.stdout[-2000:]}\n--- stderr\n{proc.stderr[-4000:]}"


def _leet(*args: str) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, "-m", "wandb", "leet", "inspect", *args], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, _tail(proc)
    return proc


@pytest.fixture(scope="module")
def offline_run(tmp_path_factory, ehf_cli, ehf_tiny) -> Path:
    """A tiny run with the default ``logger.wandb.mode`` (offline), logging every training step."""
    tmp = tmp_path_factory.mktemp("wandb-offline")
    run_dir = tmp / "run"
    proc = ehf_cli(["train", *ehf_tiny, "trainer.log_every_n_steps=1", f"run.dir={run_dir}"], cwd=tmp)
    assert proc.returncode == 0, _tail(proc)
    assert load_config([run_dir / "config.yaml"]).logger.wandb.mode == "offline"  # the default
    return run_dir


def _wandb_file(run_dir: Path) -> Path:
    files = sorted((run_dir / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(files) == 1, sorted(p.relative_to(run_dir) for p in (run_dir / "wandb").rglob("*"))
    return files[0]


def test_offline_run_is_written_inside_the_run_folder(offline_run):
    wandb_file = _wandb_file(offline_run)
    assert wandb_file.stat().st_size > 0
    run_id = wandb_file.stem.removeprefix("run-")
    assert wandb_file.parent.name.endswith(f"-{run_id}")
    images = sorted((wandb_file.parent / "files" / "media" / "images" / "plots").glob("*.png"))
    names = {p.name.split("_")[0] for p in images}
    assert {"density", "samples", "potentials"} <= names, images
    assert all(p.stat().st_size > 0 for p in images)


def test_offline_run_records_metrics_and_images(offline_run):
    wandb_file = _wandb_file(offline_run)
    state = json.loads(_leet("--summary", "--json", str(wandb_file)).stdout)
    assert state["state"] == "finished" and state["exit_code"] == 0
    assert state["project"] == "lightning_ehf"
    assert state["run_id"] == wandb_file.stem.removeprefix("run-")

    summary = state["summary"]
    for key in (
        "train/elbo",
        "train/loss",
        "train/bracket_rms/L01",
        "train/lambda/L01",
        "val/nll_iw4",
        "val/kl",
        "val/elbo",
        "val/bracket_rms/L01",
        "val/invariance_error",
        "test/nll_iw4",
        "test/kl",
        "test/lambda_rank_spread",
    ):
        assert key in summary, f"{key} not logged to W&B: {sorted(summary)}"
        assert math.isfinite(summary[key]), (key, summary[key])
    metrics = json.loads((offline_run / "metrics.json").read_text())
    assert summary["test/nll_iw4"] == pytest.approx(metrics["test/nll"], rel=1e-6)
    for plot in ("density", "samples", "potentials"):
        image = summary[f"plots/{plot}"]
        assert image["_type"].startswith("images") and image["count"] == 1, image
        assert (wandb_file.parent / "files" / image["filenames"][0]).is_file()

    # the history: one train/elbo per step (log_every_n_steps=1), one val/nll_iw4 per validation round
    records = [json.loads(line) for line in _leet("--json", str(wandb_file)).stdout.splitlines() if line.strip()]
    history = [r["history"]["item"] for r in records if r.get("type") == "history"]
    train_elbo = [h["train/elbo"] for h in history if "train/elbo" in h]
    val_nll = [(h["trainer/global_step"], h["val/nll_iw4"]) for h in history if "val/nll_iw4" in h]
    assert len(train_elbo) == 6 and all(math.isfinite(v) for v in train_elbo), train_elbo
    assert [s for s, _ in val_nll] == [2, 5], val_nll  # val_check_interval=3 over 6 steps
    assert all(math.isfinite(v) for _, v in val_nll)

    # the run's config is the resolved config
    config = state["config"]["config"]  # Lightning logs the module's hyper-parameters {config, entropy, …}
    assert config["trainer"]["max_steps"] == 6 and config["model"]["hidden"] == 16

    summary_file = wandb_file.parent / "files" / "wandb-summary.json"
    if summary_file.exists():  # written by some wandb versions even offline
        assert "val/nll_iw4" in json.loads(summary_file.read_text())


def test_offline_logger_does_not_set_wandb_mode(tmp_path, ehf_clean_env):
    """docs/design.md §6: WandbLogger(offline=True) would set WANDB_MODE for the whole process (and leak
    into later runs); the mode must go to wandb.init instead."""
    import os

    from lightning_ehf import build

    logger = build._wandb_logger(load_config(overrides=["logger.wandb.mode=offline"]), tmp_path, "deadbeef")
    assert logger is not None
    assert "WANDB_MODE" not in os.environ
    # Lightning sets WANDB_MODE=dryrun when `.experiment` starts a run with offline=True
    assert logger._offline is False and logger._wandb_init["mode"] == "offline"
    assert logger._wandb_init["dir"] == str(tmp_path)
    assert build._wandb_logger(load_config(overrides=["logger.wandb.mode=disabled"]), tmp_path, "deadbeef") is None


def test_disabled_mode_creates_no_wandb_folder(ehf_tiny_run):
    assert (ehf_tiny_run / "metrics.json").is_file()
    assert load_config([ehf_tiny_run / "config.yaml"]).logger.wandb.mode == "disabled"
    assert not (ehf_tiny_run / "wandb").exists()


def test_online_without_key_exits_2_before_creating_a_run_folder(tmp_path, ehf_cli):
    home = tmp_path / "home"
    home.mkdir()
    root = tmp_path / "runs"
    proc = ehf_cli(["train", "logger.wandb.mode=online", f"run.root={root}"], cwd=tmp_path, env={"HOME": str(home)})
    assert proc.returncode == 2, _tail(proc)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "logger.wandb.mode" in lines[0] and "API key" in lines[0], proc.stderr
    assert not root.exists(), sorted(str(p) for p in root.rglob("*"))


@pytest.mark.slow
def test_history_up_to_a_checkpoint_survives_sigkill(tmp_path, ehf_tiny):
    """wandb writes an offline run's records to disk only every few seconds (15 by default): a run killed
    outright lost its whole history. Runs flush every second, so what was logged before a checkpoint is on disk
    soon after it, even when the run and wandb's own process are killed with SIGKILL."""
    import os
    import pickle
    import signal
    import time

    import torch

    from ehf_testing import clean_env
    from lightning_ehf.tracking import WANDB_FLUSH_S

    run_dir = tmp_path / "run"
    # few records (well under wandb's 32 KiB blocks, which are written out when full)
    args = [
        *ehf_tiny,
        "trainer.max_steps=100000",
        "trainer.val_check_interval=40",
        "trainer.log_every_n_steps=10",
        "plots.enabled=false",
        f"run.dir={run_dir}",
    ]
    env = clean_env(
        WANDB_CONFIG_DIR=str(tmp_path / "wb-config"),
        WANDB_CACHE_DIR=str(tmp_path / "wb-cache"),
        WANDB_DATA_DIR=str(tmp_path / "wb-data"),
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "lightning_ehf", "train", *args],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        last = run_dir / "checkpoints" / "last.ckpt"
        t0 = time.time()
        step = None
        while step is None:
            assert proc.poll() is None and time.time() - t0 < 300, "no checkpoint"
            time.sleep(0.1)
            try:  # the checkpoint seen first; later ones may land just before the kill, inside one flush interval
                step = int(torch.load(last, map_location="cpu", weights_only=True)["global_step"])
            except (OSError, RuntimeError, EOFError, pickle.UnpicklingError):
                pass
        time.sleep(3 * WANDB_FLUSH_S)
        os.killpg(proc.pid, signal.SIGKILL)  # the run and wandb's service process: nothing gets to clean up
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert step >= 40
    records = [
        json.loads(line) for line in _leet("--json", str(_wandb_file(run_dir))).stdout.splitlines() if line.strip()
    ]
    history = [r["history"]["item"] for r in records if r.get("type") == "history"]
    logged = {h["trainer/global_step"] for h in history if "train/elbo" in h}
    assert set(range(9, step, 10)) <= logged, (step, sorted(logged))  # every training row before the checkpoint
    assert any(h.get("trainer/global_step") == step - 1 and "val/nll_iw4" in h for h in history)  # its validation
