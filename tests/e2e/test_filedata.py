"""Training on a user data file whose symmetry comes from the config (docs/design.md §3, §4):
4-D data invariant under independent rotations of the planes (0,1) and (2,3); and ``data.path`` given
alone (README "Your own data"): file data, no symmetry, split 10 % / 10 % / the rest by default."""

from __future__ import annotations

import csv
import json
import math
import shutil

import numpy as np
import pytest
import torch

from ehf_testing import TINY
from lightning_ehf import cli
from lightning_ehf.config.load import load_config, to_container

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
    proc = ehf_cli(
        [
            "train",
            *ehf_tiny,
            "data.target=null",
            f"data.path={data}",
            "data.regime=finite",
            "data.n_val=100",
            "data.n_test=100",
            "symmetry.group=rotations",
            "symmetry.planes=[[0,1],[2,3]]",
            "logger.wandb.mode=disabled",
            f"run.dir={run_dir}",
        ],
        cwd=tmp,
    )
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


# -- data.path alone: the file is the data, split 10 % / 10 % / the rest (schema.py FILE_DEFAULTS) -----------


@pytest.fixture(scope="module")
def path_only_run(tmp_path_factory, ehf_cli):
    """``ehf train data.path=ring256.npy`` and nothing else about the data (256 rows, 2-D): no
    data.target, data.regime, data.n_val / n_test or symmetry.* (the tiny overrides set no data key but
    data.batch_size)."""
    tmp = tmp_path_factory.mktemp("path-only")
    np.save(tmp / "ring256.npy", _two_rings(256, seed=1)[:, :2])
    overrides = [o for o in TINY if not o.startswith(("data.n_val=", "data.n_test="))]
    assert not [o for o in overrides if o.startswith("data.") and not o.startswith("data.batch_size=")]
    argv = [*overrides, "data.path=ring256.npy", f"run.dir={tmp / 'run'}"]
    proc = ehf_cli(["train", *argv], cwd=tmp)
    assert proc.returncode == 0, f"rc={proc.returncode}\n{proc.stderr[-4000:]}"
    return tmp, argv, proc


def test_data_path_alone_trains_on_the_file_with_the_default_split(path_only_run):
    tmp, _, proc = path_only_run
    run = tmp / "run"
    assert "data: ring256.npy (d=2, finite, symmetry none); 256 rows: 204 train, 26 validate, 26 test" in proc.stdout
    cfg = load_config([run / "config.yaml"])
    assert cfg.data.target is None and cfg.data.path == str(tmp / "ring256.npy")
    assert (cfg.data.regime, cfg.data.n_val, cfg.data.n_test, cfg.symmetry.group) == ("finite", None, None, "none")
    metrics = json.loads((run / "metrics.json").read_text())
    assert math.isfinite(metrics["test/nll"]) and "test/kl" not in metrics


def test_eval_splits_of_a_path_only_run_are_the_26_validation_and_test_rows(path_only_run, capsys):
    run = path_only_run[0] / "run"
    for split in ("val", "test"):
        assert cli.main(["eval", "--ckpt", str(run), "--split", split, "--iw", "2"]) == 0
        assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["n"] == 26


def test_saved_config_of_a_path_only_run_reloads_identically(path_only_run):
    tmp, argv, _ = path_only_run
    run = tmp / "run"
    saved = to_container(load_config([run / "config.yaml"]))
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert saved == ckpt["hyper_parameters"]["config"]  # what --resume and ehf eval rebuild the run from
    # the same as the original command (ehf train resolves data.path)
    given = [a if not a.startswith("data.path=") else f"data.path={tmp / 'ring256.npy'}" for a in argv]
    assert saved == to_container(load_config([], given))


def test_path_only_run_resumes_with_its_original_command(path_only_run, ehf_cli):
    tmp, argv, _ = path_only_run
    copy = tmp / "resumed"
    shutil.copytree(tmp / "run", copy)  # leaves the shared run as it was
    proc = ehf_cli(["train", "--resume", str(copy), *argv[:-1], "trainer.max_steps=8"], cwd=tmp)
    assert proc.returncode == 0, f"rc={proc.returncode}\n{proc.stderr[-4000:]}"
    assert json.loads((copy / "metrics.json").read_text())["steps"] == 8


def test_explicit_target_with_a_path_exits_2_naming_data_path(tmp_path, ehf_cli):
    np.save(tmp_path / "x.npy", _two_rings(50)[:, :2])
    proc = ehf_cli(["train", *TINY, "data.target=ring2d", "data.path=x.npy", "run.dir=run"], cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("ehf train: error: data.path: both data.target=ring2d and data.path are set")
    assert not (tmp_path / "run").exists()
