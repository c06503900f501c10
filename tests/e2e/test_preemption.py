"""Preemption and the checkpoints a cluster job restarts from.

* SIGTERM mid-training (what SLURM and Kubernetes send before killing a job): the run finishes the step
  it is in, writes ``last.ckpt`` at that step and exits 75 within 30 s with one stderr line; ``ehf train
  --resume`` then ends with exactly the metrics (metrics.json and every metrics.csv row) of the same run
  uninterrupted. SIGUSR1 (SLURM's early warning, ``#SBATCH --signal=USR1@120``) stops a run the same way.
* ``checkpoint.every_n_minutes`` refreshes ``last.ckpt`` on a timer, between two steps (where a preemption
  saves), through the atomic checkpoint writer.
* ``last.ckpt`` always holds the final step, also when validation stopped improving long before and the
  last step is not a validation step (``ModelCheckpoint(save_last=True)`` would leave it at the last best).
* ``--resume RUN`` with the run's original overrides repeated (relative paths included) is accepted;
  only a changed value is refused, naming the key and both values.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from ehf_testing import clean_env, csv_rows, ehf, tiny

MAX_STEPS, VAL_EVERY = 60, 10
BASE = tiny(
    f"trainer.max_steps={MAX_STEPS}",
    f"trainer.val_check_interval={VAL_EVERY}",
    "data.batch_size=256",
    "model.hidden=32",
    "progress.mode=lines",
    "progress.every_n_steps=1",
)
EXIT_PREEMPTED = 75
TOL = 1e-6


def _start(args: list, cwd: Path, log: Path) -> subprocess.Popen:
    with open(log, "w") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "lightning_ehf", *map(str, args)],
            cwd=cwd,
            env=clean_env(),
            stdout=out,
            stderr=subprocess.PIPE,
            text=True,
        )


def _wait_for_step(proc: subprocess.Popen, log: Path, step: int, timeout: float = 180) -> int:
    """Wait until the progress lines in ``log`` report ``step`` or later; returns the step seen."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        seen = [int(s) for s in re.findall(r"^step (\d+)/", log.read_text(), re.M)]
        if seen and max(seen) >= step:
            return max(seen)
        time.sleep(0.02)
    raise AssertionError(f"the run never reached step {step} (rc={proc.poll()}):\n{log.read_text()[-3000:]}")


DDP = ["trainer.accelerator=cpu", "trainer.devices=2", "trainer.strategy=ddp", "trainer.ddp_timeout_s=60"]


@pytest.mark.slow
@pytest.mark.parametrize("ranks", [1, 2], ids=["1-process", "2-process-ddp"])
def test_sigterm_saves_the_step_reached_exits_75_and_resume_equals_uninterrupted(tmp_path, ranks):
    """With DDP the signal goes to rank 0 only (the process started here): the ranks still agree."""
    args = ["train", *BASE, *(DDP if ranks == 2 else [])]
    run_a, run_b = tmp_path / "A", tmp_path / "B"
    proc_a = _start([*args, f"run.dir={run_a}"], tmp_path, tmp_path / "A.log")
    proc_b = _start([*args, f"run.dir={run_b}"], tmp_path, tmp_path / "B.log")
    seen = _wait_for_step(proc_b, tmp_path / "B.log", VAL_EVERY + 3, timeout=300)  # past a validation, between two
    proc_b.send_signal(signal.SIGTERM)
    sent = time.monotonic()
    _, err = proc_b.communicate(timeout=60)
    took = time.monotonic() - sent
    assert proc_b.returncode == EXIT_PREEMPTED, f"rc={proc_b.returncode}\n{err[-3000:]}"
    assert took <= 30, took
    assert "Traceback" not in err, err[-3000:]
    lines = [ln for ln in err.splitlines() if ln.startswith("ehf train:")]
    assert len(lines) == 1, err[-3000:]
    match = _stop_message("SIGTERM", run_b).fullmatch(lines[0])
    assert match, lines[0]
    step = int(match.group(1))
    assert seen <= step < MAX_STEPS, (seen, step)
    assert torch.load(run_b / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["global_step"] == step
    assert not (run_b / "metrics.json").exists()
    print(f"SIGTERM at step {seen}: stopped at step {step}, exit {proc_b.returncode} after {took:.1f} s")

    resumed = ehf(["train", "--resume", run_b], tmp_path, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming from step {step} in {run_b}" in resumed.stdout
    proc_a.communicate(timeout=300)
    assert proc_a.returncode == 0

    a, b = (json.loads((run / "metrics.json").read_text()) for run in (run_a, run_b))
    assert sorted(a) == sorted(b)
    for key in a:
        if key not in ("wall_time_s", "val/elapsed_s"):  # wall-clock readings differ between any two runs
            assert abs(b[key] - a[key]) <= TOL, (key, a[key], b[key])
    assert a["steps"] == MAX_STEPS and a["test/lambda/L01"] > 0
    # every logged value, once, at the same step (val/elapsed_s: there at the same steps, its value a clock reading)
    assert _without_clock(csv_rows(run_b)) == _without_clock(csv_rows(run_a))
    assert [("val/elapsed_s" in r) for r in csv_rows(run_b)] == [("val/elapsed_s" in r) for r in csv_rows(run_a)]


def _without_clock(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "val/elapsed_s"} for r in rows]


def _stop_message(sig: str, run: Path) -> re.Pattern:
    return re.compile(
        rf"ehf train: preempted: stopped by {sig} at step (\d+); saved {re.escape(str(run))}"
        rf"/checkpoints/last\.ckpt; continue with: ehf train --resume {re.escape(str(run))}"
    )


def test_sigusr1_stops_like_sigterm(tmp_path):
    """The same stop as SIGTERM (the test above proves that resuming from it is exact): exit 75, one
    line naming the signal, ``last.ckpt`` at the step reached."""
    run = tmp_path / "run"
    proc = _start(["train", *BASE, f"run.dir={run}"], tmp_path, tmp_path / "run.log")
    seen = _wait_for_step(proc, tmp_path / "run.log", 3)
    proc.send_signal(signal.SIGUSR1)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == EXIT_PREEMPTED, f"rc={proc.returncode}\n{err[-3000:]}"
    lines = [ln for ln in err.splitlines() if ln.startswith("ehf train:")]
    assert len(lines) == 1 and "Traceback" not in err, err[-3000:]
    match = _stop_message("SIGUSR1", run).fullmatch(lines[0])
    assert match, lines[0]
    step = int(match.group(1))
    assert seen <= step < MAX_STEPS, (seen, step)
    assert torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["global_step"] == step


@pytest.mark.parametrize(
    "minutes, expected",
    [(None, {3, 6}), (60.0, {3, 6}), (1e-6, {1, 2, 3, 4, 5, 6})],
    ids=["off", "not-due", "every-step"],
)
def test_every_n_minutes_refreshes_last_checkpoint_on_a_timer(tmp_path, ehf_clean_env, monkeypatch, minutes, expected):
    """Validation at steps 3 and 6 saves ``last.ckpt`` anyway; a timer of 60 µs is due between any two
    steps (a training step takes longer), one of 60 minutes never in this run. The writes are recorded
    at the atomic writer, so the timed save goes through it too."""
    from lightning_ehf import cli
    from lightning_ehf.lit.atomic_io import SafeCheckpointIO

    written: list[int] = []
    save = SafeCheckpointIO.save_checkpoint

    def recording(self, checkpoint, path, storage_options=None):
        if Path(path).name == "last.ckpt":
            written.append(int(checkpoint["global_step"]))
        return save(self, checkpoint, path, storage_options)

    monkeypatch.setattr(SafeCheckpointIO, "save_checkpoint", recording)
    run = tmp_path / "run"
    timer = [] if minutes is None else [f"checkpoint.every_n_minutes={minutes}"]
    assert cli.main(["train", *tiny(*timer), f"run.dir={run}"]) == 0
    assert written == sorted(set(written)), written  # never the same step twice
    # step 0 (before the first step) depends on how long the first batch took to draw
    assert set(written) - {0} == expected, written
    assert torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["global_step"] == 6


def test_every_n_minutes_must_be_positive(tmp_path, ehf_clean_env, capsys):
    from lightning_ehf import cli

    assert cli.main(["train", *tiny("checkpoint.every_n_minutes=0"), f"run.dir={tmp_path / 'run'}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "ehf train: error: checkpoint.every_n_minutes: must be > 0 (minutes) or null (off), got 0.0", err
    assert not (tmp_path / "run").exists()


def test_last_checkpoint_holds_the_final_step_when_validation_stops_improving(tmp_path, ehf_clean_env, monkeypatch):
    """Validation NLL rises at every validation (10, 20), so best.ckpt stays at step 10; the run ends
    at step 25, between validations."""
    from lightning_ehf import cli
    from lightning_ehf.lit.module import EHFModule

    def worsening_validation(self, batch, batch_idx):
        self.log(
            f"val/{self.nll_key}",
            float(self.global_step),
            on_epoch=True,
            batch_size=float(batch.shape[0]),
            sync_dist=True,
        )

    monkeypatch.setattr(EHFModule, "validation_step", worsening_validation)
    run = tmp_path / "run"
    rc = cli.main(["train", *tiny("trainer.max_steps=25", "trainer.val_check_interval=10"), f"run.dir={run}"])
    assert rc == 0
    steps = {
        name: torch.load(run / "checkpoints" / f"{name}.ckpt", map_location="cpu", weights_only=True)["global_step"]
        for name in ("best", "last")
    }
    assert steps == {"best": 10, "last": 25}
    assert json.loads((run / "metrics.json").read_text())["steps"] == 25


@pytest.fixture(scope="module")
def file_run(tmp_path_factory) -> tuple[Path, list[str]]:
    """A finished run on a data file given by a relative path, in a relative run.dir; its overrides."""
    work = tmp_path_factory.mktemp("resume-overrides")
    angle = np.random.default_rng(0).uniform(0, 2 * np.pi, 400)
    np.save(work / "ring.npy", np.stack([2 * np.cos(angle), 2 * np.sin(angle)], 1))
    overrides = [
        *tiny("data.n_val=50", "data.n_test=50"),
        "data.target=null",
        "data.path=ring.npy",
        "data.regime=finite",
        "symmetry.group=so2",
        "optim.lr=0.003",
        "run.dir=myrun",
    ]
    proc = ehf(["train", *overrides], work)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return work, overrides


def test_resume_accepts_the_original_overrides_repeated(file_run):
    work, overrides = file_run
    proc = ehf(["train", "--resume", "myrun", *overrides, "trainer.max_steps=8"], work)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resuming from step 6 in myrun" in proc.stdout
    assert json.loads((work / "myrun" / "metrics.json").read_text())["steps"] == 8


@pytest.mark.parametrize(
    "changed, old, new",
    [
        ("model.hidden=8", "16", "8"),
        ("data.path=other.npy", "ring.npy", "other.npy"),
        ("optim.lr=0.01", "0.003", "0.01"),
    ],
)
def test_resume_refuses_a_changed_override_naming_key_and_values(file_run, changed, old, new):
    work, overrides = file_run
    key = changed.split("=")[0]
    argv = [item for item in overrides if not item.startswith(f"{key}=")] + [changed]
    before = (work / "myrun" / "checkpoints" / "last.ckpt").read_bytes()
    proc = ehf(["train", "--resume", "myrun", *argv], work)
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"ehf train: error: {key}: cannot be changed when resuming"), lines
    assert old in lines[0] and new in lines[0] and "trainer.max_steps" in lines[0], lines[0]
    assert (work / "myrun" / "checkpoints" / "last.ckpt").read_bytes() == before


def test_resume_accepts_the_original_config_file_repeated(file_run):
    work, overrides = file_run
    (work / "same.yaml").write_text("optim:\n  lr: 0.003\ndata:\n  regime: finite\n")
    proc = ehf(["train", "-c", "same.yaml", "--resume", "myrun", "trainer.max_steps=9"], work)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((work / "myrun" / "metrics.json").read_text())["steps"] == 9


def test_under_slurm_lightnings_requeue_handler_is_off(tmp_path, monkeypatch):
    """Inside a SLURM job Lightning would add its own SIGUSR1 requeue; SIGTERM and SIGUSR1 handling stay
    ours alone."""
    from lightning.fabric.plugins.environments import SLURMEnvironment

    from lightning_ehf.build import make_trainer
    from lightning_ehf.config.load import load_config

    for name, value in {
        "SLURM_NTASKS": "1",
        "SLURM_NTASKS_PER_NODE": "1",
        "SLURM_JOB_NAME": "ehf",
        "SLURM_JOB_ID": "7",
        "SLURM_NODELIST": "node1",
        "SLURM_PROCID": "0",
        "SLURM_LOCALID": "0",
        "SLURM_NODEID": "0",
    }.items():
        monkeypatch.setenv(name, value)
    cfg = load_config([], tiny("trainer.accelerator=cpu", "trainer.strategy=ddp", "trainer.devices=1"))
    trainer = make_trainer(cfg, tmp_path / "run", "x")
    env = trainer.strategy.cluster_environment
    assert isinstance(env, SLURMEnvironment) and env.auto_requeue is False
