"""Same seed, same numbers (CPU): two runs of one command give identical metrics.json (``wall_time_s``
aside), metrics.csv (the wall-clock column ``val/elapsed_s`` aside) and weights; another seed gives another test NLL."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ehf_testing import clean_env, tiny

TINY = tiny("trainer.max_steps=8", "trainer.val_check_interval=4", "trainer.accelerator=cpu")


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """Runs ``a`` and ``b`` (seed 0) and ``c`` (seed 1), started together."""
    work = tmp_path_factory.mktemp("determinism")
    seeds = {"a": 0, "b": 0, "c": 1}
    procs = {
        name: subprocess.Popen(
            [sys.executable, "-m", "lightning_ehf", "train", *TINY, f"seed={seed}", f"run.dir={work / name}"],
            cwd=work,
            env=clean_env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name, seed in seeds.items()
    }
    for name, p in procs.items():
        _, err = p.communicate(timeout=180)
        assert p.returncode == 0, (name, err[-3000:])
    return {name: work / name for name in seeds}


WALL_CLOCK = "val/elapsed_s"  # training seconds at each validation: a clock reading, never equal between runs


def _metrics(run: Path) -> dict:
    m = json.loads((run / "metrics.json").read_text())
    m.pop("wall_time_s")
    m.pop(WALL_CLOCK)
    return m


def _csv_without_clock(run: Path) -> list[dict]:
    """Every metrics.csv row, in order, with all columns but the wall-clock one (present where validated)."""
    with open(run / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert any(r.get(WALL_CLOCK) for r in rows)
    return [{k: v for k, v in r.items() if k != WALL_CLOCK} for r in rows]


def test_same_seed_same_results(runs):
    a, b = _metrics(runs["a"]), _metrics(runs["b"])
    assert a == b, {k: (a.get(k), b.get(k)) for k in set(a) | set(b) if a.get(k) != b.get(k)}
    assert _csv_without_clock(runs["a"]) == _csv_without_clock(runs["b"])
    wa = torch.load(runs["a"] / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    wb = torch.load(runs["b"] / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def test_other_seed_other_results(runs):
    a, c = _metrics(runs["a"]), _metrics(runs["c"])
    assert a["test/nll"] != c["test/nll"]
