"""End-to-end training through the ``ehf`` command: every shipped experiment, the nsf baseline, the
run-folder contract (docs/design.md §4), and a single-device ``trainer.test`` without fitting (§6)."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import torch

from lightning_ehf.config.load import load_config

REPO = Path(__file__).resolve().parents[2]
EXPERIMENTS = sorted((REPO / "configs" / "experiment").glob("*.yaml"))
RUN_NAME = re.compile(r"^\d{8}-\d{6}-[0-9a-f]{8}$")  # runs/<experiment>/<timestamp>-<id>/


def _tail(proc) -> str:
    return f"rc={proc.returncode}\n--- stdout\n{proc.stdout[-2000:]}\n--- stderr\n{proc.stderr[-4000:]}"


def _finite(metrics: dict, key: str) -> float:
    assert key in metrics, f"{key} missing from metrics.json: {sorted(metrics)}"
    value = metrics[key]
    assert isinstance(value, float) and math.isfinite(value), f"{key} = {value!r}"
    return value


def _check_run_folder(run_dir: Path, experiment: str, steps: int, known_target: bool = True) -> dict:
    """The docs/design.md §4 run-folder contract; returns metrics.json."""
    for name in ("config.yaml", "metrics.csv", "metrics.json", "checkpoints/last.ckpt", "checkpoints/best.ckpt"):
        assert (run_dir / name).is_file(), f"{name} missing in {run_dir}: {sorted(p.name for p in run_dir.iterdir())}"
    assert sorted(p.name for p in (run_dir / "plots").glob("*.png")), "no plots/*.png"

    cfg = load_config([run_dir / "config.yaml"])  # the saved, resolved config loads back
    assert cfg.experiment == experiment
    assert cfg.trainer.max_steps == steps and cfg.model.hidden == 16 and cfg.eval.iw_samples == 4

    metrics = json.loads((run_dir / "metrics.json").read_text())
    nll = _finite(metrics, "test/nll")
    assert nll == metrics["test/nll_iw4"]
    assert metrics["steps"] == steps
    assert metrics["iw_samples"] == 4
    _finite(metrics, "test/elbo")
    # the bound: ELBO ≤ IWAE-K log-likelihood estimate (on the same test set, up to MC noise)
    assert -metrics["test/elbo"] >= nll - 0.5, (metrics["test/elbo"], nll)

    best = torch.load(run_dir / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=True)
    last = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert last["global_step"] == steps
    assert best["hyper_parameters"]["config"]["experiment"] == experiment
    entropy = best["hyper_parameters"]["entropy"]
    if known_target:
        kl = _finite(metrics, "test/kl")
        assert entropy is not None and kl == pytest.approx(nll - entropy, abs=1e-4)
    else:
        assert "test/kl" not in metrics and entropy is None
    return metrics


@pytest.mark.slow
@pytest.mark.parametrize("path", EXPERIMENTS, ids=[p.stem for p in EXPERIMENTS])
def test_every_experiment_trains_end_to_end(path, tmp_path, ehf_cli, ehf_tiny):
    root = tmp_path / "runs"
    proc = ehf_cli(["train", "-c", path, *ehf_tiny, "logger.wandb.mode=disabled", f"run.root={root}"], cwd=tmp_path)
    assert proc.returncode == 0, _tail(proc)
    assert "Traceback" not in proc.stderr

    experiment = load_config([path]).experiment
    folders = list((root / experiment).iterdir())
    assert len(folders) == 1 and RUN_NAME.match(folders[0].name), folders
    run_dir = folders[0]
    assert f"run folder: {run_dir}" in proc.stdout
    assert not (run_dir / "wandb").exists()  # logger.wandb.mode=disabled
    _check_run_folder(run_dir, experiment, steps=6)


@pytest.mark.slow
def test_nsf_baseline_trains_on_ring2d(tmp_path, ehf_cli, ehf_tiny):
    run_dir = tmp_path / "run"
    proc = ehf_cli(
        [
            "train",
            *ehf_tiny,
            "model.kind=nsf",
            "data.target=ring2d",
            "logger.wandb.mode=disabled",
            f"run.dir={run_dir}",
        ],
        cwd=tmp_path,
    )
    assert proc.returncode == 0, _tail(proc)
    metrics = _check_run_folder(run_dir, "default", steps=6)
    _finite(metrics, "test/invariance_error")
    assert "test/equivariance_error" not in metrics  # an nsf has no phase-space flow to compare
    assert load_config([run_dir / "config.yaml"]).model.kind == "nsf"


def test_metrics_json_holds_final_validation_numbers(ehf_tiny_run):
    metrics = json.loads((ehf_tiny_run / "metrics.json").read_text())
    _finite(metrics, "val/nll_iw4")
    _finite(metrics, "val/kl")


def test_shared_tiny_run_folder(ehf_tiny_run):
    """The session's tiny run honours the contract too, and ``disabled`` W&B leaves no wandb/ folder."""
    metrics = _check_run_folder(ehf_tiny_run, "default", steps=6)
    assert not (ehf_tiny_run / "wandb").exists()
    # ring2d declares SO(2): one generator, its bracket and multiplier are reported
    _finite(metrics, "test/bracket_rms/L01")
    assert metrics["test/lambda/L01"] >= 0.0
    _finite(metrics, "test/invariance_error")
    _finite(metrics, "test/equivariance_error")
    header = (ehf_tiny_run / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"val/nll_iw4", "val/kl", "test/nll_iw4", "val/bracket_rms/L01"} <= set(header), header


def test_trainer_test_without_fit_single_device(tmp_path, ehf_clean_env, ehf_tiny):
    """docs/design.md §6: forces need autograd in val/test; CPU DDP hides a missing ``inference_mode=False``."""
    from lightning_ehf import build

    cfg = load_config(overrides=[*ehf_tiny, "logger.wandb.mode=disabled", "plots.enabled=false"])
    dm = build.make_datamodule(cfg)
    module = build.make_module(cfg, dm)
    trainer = build.make_trainer(cfg, tmp_path / "run", "00000000")
    out = trainer.test(module, datamodule=dm, verbose=False)
    assert trainer.global_step == 0
    assert len(out) == 1
    m = {k: float(v) for k, v in trainer.callback_metrics.items()}
    for key in (
        "test/nll_iw4",
        "test/kl",
        "test/elbo",
        "test/bracket_rms/L01",
        "test/invariance_error",
        "test/equivariance_error",
    ):
        assert key in m and math.isfinite(m[key]), (key, m)
    assert m["test/kl"] == pytest.approx(m["test/nll_iw4"] - module.entropy, abs=1e-4)
    assert m["test/lambda/L01"] == 0.0  # no update without training
    # an untrained flow starts at the free motion: its brackets vanish, so the equivariance error is tiny
    assert m["test/equivariance_error"] < 1e-3


def test_two_in_process_trainings_get_their_own_folders(tmp_path, ehf_clean_env, ehf_tiny):
    from lightning_ehf import cli

    first, second = tmp_path / "first", tmp_path / "second"
    base = [
        *ehf_tiny,
        "trainer.max_steps=2",
        "trainer.val_check_interval=2",
        "logger.wandb.mode=disabled",
        "plots.enabled=false",
    ]
    assert cli.main(["train", *base, f"run.dir={first}"]) == 0
    assert cli.main(["train", *base, "seed=1", f"run.dir={second}"]) == 0
    assert (second / "metrics.json").is_file()
    assert load_config([first / "config.yaml"]).seed == 0
