"""Particle systems end to end: N×n×D data files, ``symmetry.translation=com`` (centre-of-mass-free
coordinates), ``symmetry.permutations`` (identical particles), and the dw4 target."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from ehf_testing import tiny
from lightning_ehf import cli
from lightning_ehf.config.load import load_config


def _triangles(n: int, seed: int = 0) -> np.ndarray:
    """n noisy equilateral triangles (3 particles in 2-D), randomly rotated and translated: (n, 3, 2)."""
    rng = np.random.default_rng(seed)
    ang = np.pi / 2 + 2 * np.pi * np.arange(3) / 3
    template = 1.5 * np.stack([np.cos(ang), np.sin(ang)], -1)
    theta = rng.uniform(0, 2 * np.pi, n)
    rot = np.stack([np.stack([np.cos(theta), -np.sin(theta)], -1), np.stack([np.sin(theta), np.cos(theta)], -1)], -2)
    x = np.einsum("nij,kj->nki", rot, template) + 0.2 * rng.standard_normal((n, 3, 2))
    return x + rng.standard_normal((n, 1, 2))  # a random centre of mass: the density is translation invariant


@pytest.fixture(scope="module")
def particle_file_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("particles")
    data = tmp / "triangles.npy"
    np.save(data, _triangles(256))
    run_dir = tmp / "run"
    code = cli.main(
        [
            "train",
            *tiny(),
            f"data.path={data}",
            "symmetry.group=so2",
            "symmetry.translation=com",
            "symmetry.permutations=true",
            "data.augment=true",
            f"run.dir={run_dir}",
        ]
    )
    assert code == 0
    return tmp, data, run_dir


def test_a_particle_file_trains_in_centre_of_mass_free_coordinates(particle_file_run, capsys):
    tmp, data, run_dir = particle_file_run
    cfg = load_config([run_dir / "config.yaml"])
    assert cfg.symmetry.particle_dim == 2  # read from the N×3×2 file, and saved with the run
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert np.isfinite(metrics["test/nll"])
    # the checkpoint records the model's dimension: 3 particles × 2 less one particle's 2
    ckpt = torch.load(run_dir / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["hyper_parameters"]["dim"] == 4

    out = tmp / "samples.npy"
    assert cli.main(["sample", "--ckpt", str(run_dir), "--n", "50", "--out", str(out)]) == 0
    x = np.load(out)
    assert x.shape == (50, 6)  # back in the particles' own coordinates ...
    assert np.abs(x.reshape(50, 3, 2).mean(1)).max() < 1e-6  # ... with the centre of mass at the origin

    capsys.readouterr()
    assert cli.main(["eval", "--ckpt", str(run_dir), "--data", str(data), "--n", "20", "--iw", "4"]) == 0
    on_file = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    shifted = tmp / "shifted.npy"
    np.save(shifted, np.load(data) + 5.0)  # translating every particle leaves the likelihood unchanged
    assert cli.main(["eval", "--ckpt", str(run_dir), "--data", str(shifted), "--n", "20", "--iw", "4"]) == 0
    on_shifted = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert on_file["n"] == 20 and abs(on_file["nll"] - on_shifted["nll"]) < 0.05 + 3 * on_file["nll_stderr"]


def _exit_code_and_error(args, capsys) -> tuple[int, str]:
    capsys.readouterr()
    code = cli.main(args)
    return code, capsys.readouterr().err


@pytest.mark.parametrize(
    "changes, key",
    [
        (["data.target=particles2d", "symmetry.translation=com"], "symmetry.translation"),  # not translation invariant
        (
            ["data.target=dw4", "data.regime=finite", "data.n_train=64", "symmetry.translation=none"],
            "symmetry.translation",
        ),
        (["data.target=dw4", "data.regime=infinite"], "data.regime"),  # a fixed pool of MCMC samples
        (["data.target=dw4", "data.regime=finite", "data.n_train=20000"], "data.n_train"),  # more than the pool
        (["data.target=dw4", "data.regime=finite", "data.n_train=64", "data.n_val=3000"], "data.n_val"),
        (["data.target=ring2d", "symmetry.permutations=true"], "symmetry.permutations"),  # not particles
    ],
)
def test_particle_options_that_cannot_be_right_exit_2_naming_the_key(tmp_path, capsys, changes, key):
    code, err = _exit_code_and_error(["train", *tiny(*changes), f"run.dir={tmp_path / 'run'}"], capsys)
    assert code == 2, err
    assert err.startswith(f"ehf train: error: {key}:") and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "run").exists()  # refused before anything is written


def test_particle_dim_that_contradicts_the_file_exits_2(tmp_path, capsys):
    data = tmp_path / "triangles.npy"
    np.save(data, _triangles(64))
    code, err = _exit_code_and_error(
        ["train", *tiny(), f"data.path={data}", "symmetry.particle_dim=3", f"run.dir={tmp_path / 'run'}"], capsys
    )
    assert code == 2 and "symmetry.particle_dim" in err, err


def test_dw4_trains_on_its_pool_with_a_known_kl(tmp_path):
    run_dir = tmp_path / "run"
    code = cli.main(
        [
            "train",
            *tiny("data.n_val=64", "data.n_test=64"),
            "data.target=dw4",
            "data.regime=finite",
            "data.n_train=100",
            "model.invariant=true",
            "symmetry.permutations=true",
            f"run.dir={run_dir}",
        ]
    )
    assert code == 0
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert np.isfinite(metrics["test/kl"]) and metrics["test/kl"] > -0.5  # a bound: KL ≥ 0 up to noise


def test_standardised_run_saves_its_whitening_and_reloads_it(tmp_path):
    """``model.standardise=true``: the whitening is estimated from the training data, commutes with the
    group, travels in the checkpoint, and is the same when recomputed (so every DDP rank agrees)."""
    from lightning_ehf.build import make_datamodule, make_model, standardise
    from lightning_ehf.evaluate import load_run

    run_dir = tmp_path / "run"
    assert cli.main(["train", *tiny("data.target=particles2d"), "model.standardise=true", f"run.dir={run_dir}"]) == 0
    run = load_run(run_dir)
    w = run.model.data_map.scale.double()
    a = run.model.symmetry.matrices
    assert (w - torch.eye(6, dtype=w.dtype)).abs().max() > 0.1  # particles2d is far from isotropic
    assert (a @ w - w @ a).abs().max() < 1e-5
    cfg = load_config([run_dir / "config.yaml"])
    dm = make_datamodule(cfg)
    fresh = make_model(cfg, dm.symmetry)
    standardise(fresh, dm)
    torch.testing.assert_close(fresh.data_map.scale, run.model.data_map.scale, rtol=0, atol=0)
    torch.testing.assert_close(fresh.data_map.loc, run.model.data_map.loc, rtol=0, atol=0)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert np.isfinite(metrics["test/kl"])


def test_standardise_under_a_group_above_its_dimension_limit_exits_2(tmp_path, capsys):
    from lightning_ehf.core.standardise import MAX_STANDARDISE_DIM

    data = tmp_path / "wide.npy"
    np.save(data, np.random.default_rng(0).standard_normal((400, MAX_STANDARDISE_DIM + 2)))
    code, err = _exit_code_and_error(
        [
            "train",
            *tiny(),
            f"data.path={data}",
            "symmetry.group=so2",
            "model.standardise=true",
            f"run.dir={tmp_path / 'run'}",
        ],
        capsys,
    )
    assert code == 2 and "model.standardise:" in err and f"≤ {MAX_STANDARDISE_DIM}" in err
    assert not (tmp_path / "run" / "checkpoints").exists()
