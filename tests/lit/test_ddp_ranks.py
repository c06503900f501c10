"""Two-process CPU DDP gives the same training as one process, only spread over ranks.

Every run is a subprocess with a timeout (docs/design.md §6: DDP started inside pytest re-runs the test
session in the second rank). ``ddp_driver.py`` is ``ehf train`` plus a callback that records,
on every rank, λ after each dual-ascent update and every training batch.

* λ is identical on both ranks after every update; no training row is seen by both ranks (infinite
  data: no row twice at all; finite data: every epoch is a permutation of the training set); the run
  writes one run folder with one ``best.ckpt`` and one ``last.ckpt``.
* Validation and test means are over every row exactly once, also when the rows do not split evenly
  (an exact stand-in model: the logged NLL must equal the mean over the split).
* One process with batch 256 and two with 128 each (same global batch, seed and 300 steps) reach
  validation NLLs within 0.05 nats; the validation NLL the two ranks logged (an odd number of rows, split
  unevenly) equals a single-process ``ehf eval --split val`` of the same checkpoint up to the estimator's
  Monte Carlo noise, measured from two evaluations with different seeds.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from ehf_testing import clean_env, csv_rows, ehf, tiny

DRIVER = Path(__file__).with_name("ddp_driver.py")
DDP = ["trainer.accelerator=cpu", "trainer.devices=2", "trainer.strategy=ddp", "trainer.ddp_timeout_s=60"]
STEPS, VAL_EVERY, BATCH = 12, 6, 32
REGIMES = {"infinite": [], "finite": ["data.regime=finite", "data.n_train=192"]}  # finite: 3 steps per epoch


def _tail(proc: subprocess.CompletedProcess) -> str:
    return f"rc={proc.returncode}\n--- stdout\n{proc.stdout[-2000:]}\n--- stderr\n{proc.stderr[-5000:]}"


def _rows(batches: torch.Tensor) -> list[tuple[float, ...]]:
    return [tuple(r) for r in batches.reshape(-1, batches.shape[-1]).tolist()]


@pytest.fixture(scope="module", params=list(REGIMES))
def ddp_run(request, tmp_path_factory) -> dict:
    """A 2-rank run of ``STEPS`` steps (λ forced to grow: tolerance 0, large dual step)."""
    work = tmp_path_factory.mktemp(f"ddp-{request.param}")
    overrides = [
        *tiny(f"trainer.max_steps={STEPS}", f"trainer.val_check_interval={VAL_EVERY}", f"data.batch_size={BATCH}"),
        *REGIMES[request.param],
        *DDP,
        "constraint.lr=10",
        "constraint.tolerance=0",
        "experiment=ddp",
        f"run.root={work / 'runs'}",
    ]
    proc = subprocess.run(
        [sys.executable, str(DRIVER), "train", str(work / "record"), *overrides],
        cwd=work,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, _tail(proc)
    assert "Traceback" not in proc.stderr, _tail(proc)
    ranks = [torch.load(work / "record" / f"rank{r}.pt", weights_only=True) for r in range(2)]
    return {"regime": request.param, "work": work, "runs": work / "runs" / "ddp", "ranks": ranks}


@pytest.mark.slow
def test_lambda_identical_on_both_ranks_after_every_update(ddp_run):
    lam0, lam1 = (r["lambdas"] for r in ddp_run["ranks"])
    assert lam0.shape == lam1.shape == (STEPS, 1), lam0.shape
    assert torch.equal(lam0, lam1), torch.cat([lam0, lam1], 1)
    assert float(lam0[-1]) > 0.0  # the multiplier moved: there was something to keep in step


@pytest.mark.slow
def test_no_training_row_on_both_ranks(ddp_run):
    b0, b1 = (r["batches"] for r in ddp_run["ranks"])
    assert b0.shape == b1.shape == (STEPS, BATCH, 2)
    for step in range(STEPS):
        shared = set(_rows(b0[step])) & set(_rows(b1[step]))
        assert not shared, f"step {step}: {len(shared)} rows on both ranks"
    if ddp_run["regime"] == "infinite":
        rows = _rows(torch.cat([b0, b1]))
        assert len(set(rows)) == len(rows) == 2 * STEPS * BATCH  # fresh samples everywhere
    else:
        per_epoch = 192 // (2 * BATCH)
        epochs = [
            set(_rows(torch.cat([b0[e : e + per_epoch], b1[e : e + per_epoch]]))) for e in range(0, STEPS, per_epoch)
        ]
        assert all(len(rows) == 192 for rows in epochs)  # each epoch: the training set, each row once
        assert all(rows == epochs[0] for rows in epochs)


@pytest.mark.slow
def test_one_run_folder_with_one_best_and_one_last_checkpoint(ddp_run):
    folders = list(ddp_run["runs"].iterdir())
    assert len(folders) == 1, folders  # rank 1 wrote into rank 0's folder, not a second one
    run_dir = folders[0]
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["steps"] == STEPS and metrics["test/lambda_rank_spread"] == 0.0


@pytest.mark.slow
def test_validation_and_test_means_cover_every_row_once(tmp_path):
    """An exact stand-in model (log p(q) = -(q_0 + 10)) on 257 validation and 131 test rows, split 129/128
    and 66/65 over the ranks: the logged means are the means over the whole splits, to float32 precision.
    (Lightning's distributed sampler would repeat rows to even the split, and Lightning averages integer
    batch weights over ranks with truncation: either shows up here as an offset of order 1e-2.)"""
    overrides = [
        "data.n_val=257",
        "data.n_test=131",
        "data.batch_size=32",
        "eval.iw_samples=4",
        "plots.enabled=false",
        "logger.wandb.mode=disabled",
        "progress.mode=none",
        "symmetry.group=none",
        *DDP,
    ]
    proc = subprocess.run(
        [sys.executable, str(DRIVER), "validate", str(tmp_path), *overrides],
        cwd=tmp_path,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, _tail(proc)
    result = json.loads((tmp_path / "validate.json").read_text())
    assert result["world_size"] == 2
    for split in ("val", "test"):
        assert abs(result["logged"][split] - result["expected"][split]) < 1e-5, (split, result)


PAIR_STEPS, PAIR_VAL, PAIR_K = 300, 2001, 64
FLOAT32_ALLOWANCE = 5e-4  # single process: the logged float32 value sat 3e-4 to 4e-4 above ehf eval's float64


@pytest.fixture(scope="module")
def pair(tmp_path_factory) -> dict[str, Path]:
    """The same ring2d run (seed 0, 300 steps) in one process with batch 256 and in two with 128 each;
    an odd number of validation rows, so the two ranks validate 1001 and 1000 of them."""
    work = tmp_path_factory.mktemp("ddp-pair")
    common = [
        f"trainer.max_steps={PAIR_STEPS}",
        f"trainer.val_check_interval={PAIR_STEPS}",
        f"data.n_val={PAIR_VAL}",
        "data.n_test=64",
        f"eval.iw_samples={PAIR_K}",
        "eval.n_eval=32",
        "eval.n_group_samples=1",
        "eval.invariance_iw=4",
        "plots.enabled=false",
        "model.hidden=32",
        "logger.wandb.mode=disabled",
        "progress.mode=none",
    ]
    runs = {}
    for name, extra in {"one": ["data.batch_size=256"], "two": ["data.batch_size=128", *DDP]}.items():
        proc = ehf(["train", *common, *extra, f"run.dir={work / name}"], work, timeout=400)
        assert proc.returncode == 0, _tail(proc)
        runs[name] = work / name
    return runs


@pytest.mark.slow
def test_one_and_two_processes_reach_the_same_validation_nll(pair):
    nll = {name: json.loads((run / "metrics.json").read_text())[f"val/nll_iw{PAIR_K}"] for name, run in pair.items()}
    print(f"val/nll_iw{PAIR_K} after {PAIR_STEPS} steps: one process {nll['one']:.4f}, two processes {nll['two']:.4f}")
    assert abs(nll["one"] - nll["two"]) <= 0.05, nll


@pytest.mark.slow
def test_logged_validation_nll_equals_single_process_eval(pair):
    run_dir = pair["two"]
    last = run_dir / "checkpoints" / "last.ckpt"
    assert torch.load(last, map_location="cpu", weights_only=True)["global_step"] == PAIR_STEPS
    logged = [r for r in csv_rows(run_dir) if f"val/nll_iw{PAIR_K}" in r]
    assert [int(r["step"]) for r in logged] == [PAIR_STEPS - 1]
    nll_ddp = float(logged[-1][f"val/nll_iw{PAIR_K}"])

    logp = []
    for seed in (0, 1):
        proc = ehf(
            ["eval", "--ckpt", last, "--split", "val", "--iw", PAIR_K, "--seed", seed, "--out", f"val{seed}.npy"],
            run_dir.parent,
        )
        assert proc.returncode == 0, _tail(proc)
        summary = json.loads(proc.stdout.strip().splitlines()[-1])
        assert summary["n"] == PAIR_VAL and summary["source"] == "val set of the run's config"
        logp.append(np.load(run_dir.parent / f"val{seed}.npy"))
    # σ, the Monte Carlo noise of one mean: the difference of two independent means has variance 2σ².
    # The logged value (one estimate) is compared with the mean of the two evaluations (variance σ²/2),
    # plus an allowance for float32 (training) against float64 (ehf eval).
    noise = float(np.std(logp[0] - logp[1], ddof=1) / np.sqrt(2 * PAIR_VAL))
    tolerance = 4 * noise * np.sqrt(1.5) + FLOAT32_ALLOWANCE
    nll_single = float(-np.mean(logp[0] + logp[1]) / 2)
    print(
        f"validation NLL: logged by 2 ranks {nll_ddp:.5f}, single-process eval {nll_single:.5f} "
        f"(Monte Carlo noise of one estimate {noise:.5f}, tolerance {tolerance:.5f})"
    )
    assert abs(nll_ddp - nll_single) <= tolerance, (nll_ddp, nll_single, tolerance)
    # ... and it would see a rank's rows missing
    assert abs(float(-np.mean(logp[0][0::2] + logp[1][0::2]) / 2) - nll_single) > tolerance


@pytest.mark.slow
def test_torchrun_starts_one_run_in_the_given_run_dir(tmp_path):
    """torchrun (what multi-node jobs without SLURM use) launches every rank itself; with ``run.dir`` they
    all join one run folder, and rank 0 alone prints and writes."""
    run = tmp_path / "run"
    args = [*tiny(f"data.batch_size={BATCH}"), *DDP, f"run.dir={run}"]
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc-per-node=2",
            "-m",
            "lightning_ehf",
            "train",
            *args,
        ],
        cwd=tmp_path,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, _tail(proc)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]
    assert proc.stdout.count(f"run folder: {run}") == 2, _tail(proc)  # at the start and at the end, rank 0 only
    assert proc.stdout.count(f"global batch: {2 * BATCH} = {BATCH} per device × 2 devices × 1 node") == 1, _tail(proc)
    assert json.loads((run / "metrics.json").read_text())["steps"] == 6
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]


LAUNCHERS = {
    "torchrun": {
        "TORCHELASTIC_RUN_ID": "x",
        "RANK": "1",
        "LOCAL_RANK": "1",
        "WORLD_SIZE": "2",
        "LOCAL_WORLD_SIZE": "2",
        "GROUP_RANK": "0",
    },
    "srun": {"SLURM_NTASKS": "2", "SLURM_PROCID": "0", "SLURM_JOB_NAME": "ehf", "SLURM_JOB_ID": "7"},
}


@pytest.mark.parametrize("launcher", list(LAUNCHERS))
def test_external_launcher_without_run_dir_exits_2(launcher, tmp_path, ehf_clean_env, capsys):
    """Each process would name its own timestamped run folder: refused, one line, nothing written."""
    from lightning_ehf import cli

    for name, value in LAUNCHERS[launcher].items():
        ehf_clean_env.setenv(name, value)
    ehf_clean_env.chdir(tmp_path)
    assert cli.main(["train", *tiny()]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"ehf train: error: run.dir: must be set when {launcher} starts 2 processes"), err
    assert len(err.splitlines()) == 1 and list(tmp_path.iterdir()) == []
