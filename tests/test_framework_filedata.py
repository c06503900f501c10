"""Training on a user data file whose symmetry comes from the config (docs/design.md §3, §4):
4-D data invariant under independent rotations of the planes (0,1) and (2,3)."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest

from lightning_ehf import cli
from lightning_ehf.config.load import load_config

GENERATORS = ("L01", "L23")


def _two_rings(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)

    def ring() -> np.ndarray:
        theta = rng.uniform(0, 2 * np.pi, n)
        radius = 2.0 + 0.2 * rng.standard_normal(n)
        return np.stack([radius * np.cos(theta), radius * np.sin(theta)], axis=1)

    return np.concatenate([ring(), ring()], axis=1)


@pytest.fixture(scope="module")
def file_run(tmp_path_factory, ehf_cli, ehf_tiny):
    tmp = tmp_path_factory.mktemp("file-data")
    data = tmp / "two_rings.npy"
    np.save(data, _two_rings(600))
    run_dir = tmp / "run"
    proc = ehf_cli(["train", *ehf_tiny, "data.target=null", f"data.path={data}", "data.regime=finite",
                    "data.n_val=100", "data.n_test=100", "symmetry.group=rotations",
                    "symmetry.planes=[[0,1],[2,3]]", "logger.wandb.mode=disabled", f"run.dir={run_dir}"], cwd=tmp)
    assert proc.returncode == 0, f"rc={proc.returncode}\n{proc.stderr[-4000:]}"
    return run_dir


def test_file_data_with_two_rotation_planes_trains(file_run):
    with (file_run / "metrics.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    header = set(rows[0])
    for stage in ("val", "test"):
        for g in GENERATORS:
            assert f"{stage}/bracket_rms/{g}" in header and f"{stage}/lambda/{g}" in header, sorted(header)
        assert f"{stage}/invariance_error" in header and f"{stage}/equivariance_error" in header
    assert not any("L02" in k or "L13" in k for k in header)  # exactly the two configured planes
    assert "val/kl" not in header and "test/kl" not in header  # file data: no known entropy

    val_rows = [r for r in rows if r.get("val/nll_iw4")]
    assert len(val_rows) == 2  # validation at steps 3 and 6
    for r in val_rows:
        for g in GENERATORS:
            assert math.isfinite(float(r[f"val/bracket_rms/{g}"])) and float(r[f"val/lambda/{g}"]) >= 0.0

    metrics = json.loads((file_run / "metrics.json").read_text())
    for g in GENERATORS:
        assert math.isfinite(metrics[f"test/bracket_rms/{g}"])
        assert metrics[f"test/lambda/{g}"] >= 0.0
    assert math.isfinite(metrics["test/nll"]) and "test/kl" not in metrics

    cfg = load_config([file_run / "config.yaml"])
    assert cfg.data.target is None and cfg.data.path.endswith("two_rings.npy")
    assert cfg.symmetry.planes == [[0, 1], [2, 3]]
    assert (file_run / "checkpoints" / "best.ckpt").is_file()


def test_eval_of_a_file_run_uses_the_files_test_split(file_run, tmp_path, capsys):
    out = tmp_path / "logp.npy"
    assert cli.main(["eval", "--ckpt", str(file_run), "--out", str(out)]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["n"] == 100 and "kl" not in summary  # data.n_test rows of the file
    logp = np.load(out)
    assert logp.shape == (100,) and np.isfinite(logp).all()

    rc = cli.main(["sample", "--ckpt", str(file_run), "--n", "5", "--out", str(tmp_path / "s.npy")])
    assert rc == 0 and np.load(tmp_path / "s.npy").shape == (5, 4)
