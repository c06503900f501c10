"""Checkpoints survive kills and travel (docs/design.md §4, §6).

* ``SafeCheckpointIO`` (atomic: temporary file + fsync + rename): a process SIGKILLed while writing a
  300 MB checkpoint leaves the previous ``last.ckpt`` loadable and unchanged; a checkpoint holding
  NaN/Inf weights is not written at all.
* Every ``.ckpt`` of a finished run loads with ``torch.load(..., weights_only=True)``; ``ehf eval`` and
  ``ehf sample`` work from the checkpoint alone (run folder moved, config.yaml deleted, another cwd).
* Two runs of one experiment started at the same moment get distinct run folders.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from ehf_testing import TINY, clean_env, ehf
from lightning_ehf.lit.atomic_io import SafeCheckpointIO

RUN_NAME = re.compile(r"^\d{8}-\d{6}-[0-9a-f]{8}$")


def small_checkpoint() -> dict:
    return {
        "state_dict": {"w": torch.arange(6.0).reshape(2, 3), "b": torch.tensor([0.5, -1.0])},
        "global_step": 7,
        "epoch": 0,
    }


def same_checkpoint(a: dict, b: dict) -> bool:
    return (
        a.keys() == b.keys()
        and a["global_step"] == b["global_step"]
        and a["state_dict"].keys() == b["state_dict"].keys()
        and all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])
    )


def temporaries(folder: Path, name: str = "last.ckpt") -> list[str]:
    return sorted(n for n in os.listdir(folder) if n.startswith(f".{name}.tmp-"))


# -- SafeCheckpointIO ------------------------------------------------------------------------------

CHILD = r"""
import sys, torch
from lightning_ehf.lit.atomic_io import SafeCheckpointIO
big = {"state_dict": {f"w{i}": torch.ones(7_500_000) for i in range(10)}, "global_step": 99, "epoch": 3}  # 300 MB
SafeCheckpointIO().save_checkpoint(big, sys.argv[1])
"""


@pytest.fixture(scope="module")
def killed_save(tmp_path_factory) -> tuple[Path, list[str]]:
    """A folder whose ``last.ckpt`` (small) was being overwritten by a 300 MB save when the writer was
    SIGKILLed; returns the folder and the temporaries seen at the kill."""
    folder = tmp_path_factory.mktemp("killed-save")
    last = folder / "last.ckpt"
    SafeCheckpointIO().save_checkpoint(small_checkpoint(), last)
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(last)], env=clean_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    seen: list[str] = []
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline:
        seen = temporaries(folder)
        if seen:
            os.kill(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.0005)
    proc.wait(timeout=60)
    err = proc.stderr.read().decode() if proc.stderr else ""
    assert seen, f"the save finished (rc={proc.returncode}) before its temporary file was seen: {err[-2000:]}"
    assert proc.returncode == -signal.SIGKILL, (proc.returncode, err[-2000:])
    return folder, seen


def test_sigkill_during_save_keeps_the_previous_checkpoint(killed_save):
    folder, seen = killed_save
    assert seen[0].startswith(".last.ckpt.tmp-")
    loaded = torch.load(folder / "last.ckpt", map_location="cpu", weights_only=True)
    assert same_checkpoint(loaded, small_checkpoint())
    assert (folder / "last.ckpt").stat().st_size < 10_000  # not even partly the 300 MB one


def test_next_save_removes_temporaries_of_killed_writers(killed_save):
    folder, _ = killed_save
    newer = small_checkpoint() | {"global_step": 8}
    SafeCheckpointIO().save_checkpoint(newer, folder / "last.ckpt")
    assert torch.load(folder / "last.ckpt", weights_only=True)["global_step"] == 8
    assert temporaries(folder) == []


@pytest.mark.parametrize("bad", [float("nan"), float("inf")], ids=["nan", "inf"])
def test_nonfinite_weights_are_not_written(bad, tmp_path):
    last = tmp_path / "last.ckpt"
    SafeCheckpointIO().save_checkpoint(small_checkpoint(), last)
    before = (last.read_bytes(), last.stat().st_mtime_ns)
    broken = small_checkpoint()
    broken["state_dict"]["b"][1] = bad
    broken["global_step"] = 8
    with pytest.warns(UserWarning, match=r"not writing checkpoint .*non-finite values in b"):
        SafeCheckpointIO().save_checkpoint(broken, last)
    assert (last.read_bytes(), last.stat().st_mtime_ns) == before
    assert sorted(os.listdir(tmp_path)) == ["last.ckpt"]  # no temporary either
    # and nothing is written where there was no checkpoint yet
    with pytest.warns(UserWarning, match="non-finite"):
        SafeCheckpointIO().save_checkpoint(broken, tmp_path / "sub" / "best.ckpt")
    assert not (tmp_path / "sub" / "best.ckpt").exists()


# -- finished runs: concurrent start, portable checkpoints -------------------------------------


@pytest.fixture(scope="module")
def two_concurrent_runs(tmp_path_factory) -> list[Path]:
    """Two tiny runs of the same experiment, started at the same moment under one run.root."""
    work = tmp_path_factory.mktemp("concurrent")
    args = [sys.executable, "-m", "lightning_ehf", "train", *TINY, f"run.root={work / 'runs'}"]
    procs = [
        subprocess.Popen(args, cwd=work, env=clean_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=180) for p in procs]
    for p, (_out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
        assert "Traceback" not in err
    printed = [re.findall(r"^run folder: (.+)$", out, re.M)[-1] for out, _ in outs]
    return [Path(p) for p in printed]


def test_concurrent_runs_get_distinct_folders(two_concurrent_runs):
    a, b = two_concurrent_runs
    assert a != b and a.parent == b.parent, (a, b)
    assert sorted(p.name for p in a.parent.iterdir()) == sorted([a.name, b.name])
    for run in (a, b):
        assert RUN_NAME.match(run.name), run.name
        assert (run / "metrics.json").is_file() and (run / "checkpoints" / "last.ckpt").is_file()
        assert json.loads((run / "metrics.json").read_text())["steps"] == 6


def test_every_checkpoint_loads_weights_only(two_concurrent_runs):
    for run in two_concurrent_runs:
        ckpts = sorted((run).rglob("*.ckpt"))
        assert sorted(p.name for p in ckpts) == ["best.ckpt", "last.ckpt"]
        assert not list(run.rglob("*.tmp-*"))  # no temporaries left by the atomic writes
        for path in ckpts:
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
            assert isinstance(ckpt["hyper_parameters"]["config"], dict)
            assert ckpt["hyper_parameters"]["dim"] == 2
            assert ckpt["ehf_rng"]["torch"].dtype == torch.uint8  # RNG state as a tensor
            floats = [v for v in ckpt["state_dict"].values() if v.is_floating_point()]
            assert floats and all(bool(torch.isfinite(v).all()) for v in floats)


def test_eval_and_sample_from_the_checkpoint_alone(two_concurrent_runs, tmp_path):
    moved = tmp_path / "elsewhere" / "myrun"
    shutil.copytree(two_concurrent_runs[0], moved)
    for name in ("config.yaml", "hparams.yaml", "metrics.csv", "metrics.json"):
        (moved / name).unlink(missing_ok=True)
    cwd = tmp_path / "cwd"
    cwd.mkdir()

    proc = ehf(["eval", "--ckpt", moved, "--n", "32", "--iw", "4", "--out", "logp.npy"], cwd)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["n"] == 32 and np.isfinite(summary["nll"])
    logp = np.load(cwd / "logp.npy")
    assert logp.shape == (32,) and np.isfinite(logp).all()

    proc = ehf(["sample", "--ckpt", moved / "checkpoints" / "last.ckpt", "--n", "7", "--out", "s.npy"], cwd)
    assert proc.returncode == 0, proc.stderr[-3000:]
    x = np.load(cwd / "s.npy")
    assert x.shape == (7, 2) and np.isfinite(x).all()
    assert sorted(p.name for p in moved.iterdir()) == ["checkpoints"]  # eval/sample wrote nothing there
