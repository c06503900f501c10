"""``ehf study run --launcher slurm`` against a fake SLURM (``tests/study/fake_slurm``: sbatch, srun, squeue, sacct,
scancel, scontrol on PATH), through submitit: a cell signalled at its time limit (submitit's SIGUSR2) checkpoints,
exits 75, is requeued and ends with the metrics of an uninterrupted local study; a cell recorded as running whose
job or process is gone is seen as such and run again."""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from pathlib import Path

import pytest

from ehf_testing import clean_env

sys.path.insert(0, str(Path(__file__).parent))
from test_study import commands_in_log, metrics, status, study, write_study  # noqa: E402

FAKE = Path(__file__).parent / "fake_slurm"


def _settled(state_file: Path, timeout_s: float = 30.0) -> dict:
    """A fake job's last state. The scheduler records it after the job's process has exited, which can be a moment
    after the study has read the job's result (as SLURM's own accounting lags), so wait until it leaves RUNNING."""
    deadline = time.monotonic() + timeout_s
    while True:
        job = json.loads(state_file.read_text())
        if job.get("state") not in ("RUNNING", "PENDING") or time.monotonic() > deadline:
            return job
        time.sleep(0.1)


def fake_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    return clean_env(
        PATH=f"{FAKE}{os.pathsep}{os.environ['PATH']}",
        FAKE_SLURM_DIR=str(tmp_path / "slurm-state"),
        FAKE_SLURM_PYTHON=sys.executable,
        **extra,
    )


@pytest.mark.slow
def test_cells_signalled_at_the_time_limit_requeue_and_match_an_uninterrupted_study(tmp_path):
    spec = write_study(
        tmp_path / "tl.yaml",
        "tl",
        {"seed": {"key": "seed", "values": [0, 1]}},
        {"trainer.max_steps": 400, "trainer.val_check_interval": 50},
        slurm={"time_min": 5, "cpus_per_cell": 1},
    )
    d, ref = tmp_path / "slurm", tmp_path / "local"
    cells = ["seed0", "seed1"]
    # the time limit's signal comes once a cell has written its first checkpoint (step 50 of 400)
    when = json.dumps([str(d / "cells" / c / "checkpoints" / "last.ckpt") for c in cells])
    r = study(
        "run",
        "-c",
        spec,
        "--dir",
        d,
        "--launcher",
        "slurm",
        cwd=tmp_path,
        timeout=600,
        env=fake_env(tmp_path, FAKE_SLURM_SIGNAL_WHEN=when),
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert "submitted 2 cells as job array" in r.stdout and "2 of 2 cells finished" in r.stdout
    submission = next((d / "submitit").rglob("*_submission.sh")).read_text()
    assert "#SBATCH --signal=USR2@120" in submission  # what submitit asks SLURM for
    for name in cells:
        job = _settled(next((tmp_path / "slurm-state").glob("*_" + str(cells.index(name)) + ".json")))
        assert job["state"] == "COMPLETED" and job["attempts"] == 2 and "signalled" in job, job  # requeued once
        log = (d / "logs" / f"{name}.log").read_text()
        assert "ehf train: preempted: stopped by SIGUSR2" in log
        first, second = commands_in_log(d / "logs" / f"{name}.log")
        assert "--resume" not in first and f"--resume {d / 'cells' / name}" in second
    rc, rows, out = status(d)
    assert rc == 0 and {k: v[0] for k, v in rows.items()} == dict.fromkeys(cells, "done"), out

    r = study("run", "-c", spec, "--dir", ref, "--workers", 2, "--cores", 2, cwd=tmp_path, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    for name in cells:
        a, b = metrics(d / "cells" / name), metrics(ref / "cells" / name)
        timing = {"wall_time_s", "val/elapsed_s"}  # wall-clock values
        assert {k: v for k, v in a.items() if k not in timing} == {k: v for k, v in b.items() if k not in timing}
        assert a["steps"] == 400


def _stale(d: Path, cell: str, **info) -> None:
    (d / "logs").mkdir(parents=True, exist_ok=True)
    (d / "logs" / f"{cell}.json").write_text(json.dumps({"state": "running", "started": time.time() - 7200, **info}))


@pytest.mark.slow
def test_running_cells_whose_job_or_process_is_gone_are_run_again(tmp_path):
    spec = write_study(
        tmp_path / "st.yaml", "st", {"seed": {"key": "seed", "values": [0, 1, 2, 3, 4]}}, {"trainer.max_steps": 10}
    )
    d = tmp_path / "study"
    env = fake_env(tmp_path)
    r = study("run", "-c", spec, "--dir", d, "--launcher", "wandb", cwd=tmp_path, env=env)  # the manifest; runs nothing
    assert r.returncode == 0, r.stdout + r.stderr
    (tmp_path / "slurm-state").mkdir()
    (tmp_path / "slurm-state" / "77_0.json").write_text(json.dumps({"state": "RUNNING"}))  # a job SLURM still runs
    (tmp_path / "slurm-state" / "78_0.json").write_text(json.dumps({"state": "TIMEOUT"}))  # killed at its limit
    _stale(d, "seed0", job="77_0", host="slurm job 77_0")
    _stale(d, "seed1", job="78_0", host="slurm job 78_0")
    _stale(d, "seed2", job="99_0", host="slurm job 99_0")  # unknown to squeue and sacct: gone
    _stale(d, "seed3", host="elsewhere", pid=12345, beat=time.time() - 3600)  # another host, heartbeat stopped
    _stale(d, "seed4", host=socket.gethostname(), pid=2**22 + 17, beat=time.time())  # this host, no such process

    r = study("status", d, cwd=tmp_path, timeout=60, env=env)
    rows = {line.split("│")[1].strip(): line for line in r.stdout.splitlines() if line.count("│") == 4}
    assert "running" in rows["seed0"] and "slurm job 77_0, running" in rows["seed0"], r.stdout
    for name, why in (
        ("seed1", "slurm job 78_0 ended (timeout)"),
        ("seed2", "slurm job 99_0 ended (gone)"),
        ("seed3", "no heartbeat from elsewhere"),
        ("seed4", "ended before the cell finished"),
    ):
        assert "pending" in rows[name] and why in rows[name], (name, r.stdout)

    r = study("run", "-c", spec, "--dir", d, "--workers", 2, "--cores", 2, cwd=tmp_path, timeout=600, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "1 running elsewhere, 4 to run" in r.stdout
    for name in ("seed1", "seed2", "seed3", "seed4"):
        assert metrics(d / "cells" / name)["steps"] == 10
    assert not (d / "cells" / "seed0").exists()  # its job still runs: left alone
