"""``model.standardise=true``: the whitening moments come from training rows only, in both regimes (never
from validation or test rows), and a run's saved whitening is the closed form of its training rows."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ehf_testing import tiny
from lightning_ehf import cli
from lightning_ehf.build import make_datamodule
from lightning_ehf.config.load import load_config, validate


def _datamodule(*overrides: str):
    cfg = load_config([], tiny(*overrides))
    validate(cfg)
    dm = make_datamodule(cfg)
    dm.setup("fit")
    return dm


def _rows(x: torch.Tensor) -> set[tuple[float, ...]]:
    return {tuple(r) for r in x.tolist()}


@pytest.mark.parametrize(
    "overrides",
    [
        ("data.regime=finite", "data.n_train=96"),
        ("data.regime=finite", "data.n_train=96", "data.val_fraction=0.25"),
    ],
    ids=["finite", "finite-val-fraction"],
)
def test_finite_regime_moments_are_the_training_rows(overrides):
    dm = _datamodule(*overrides)
    moments = dm.moment_sample()
    assert torch.equal(moments, dm.train_data)
    assert not _rows(moments) & (_rows(dm.val_data) | _rows(dm.test_data))


def test_file_moments_are_the_training_rows(tmp_path):
    x = np.random.default_rng(0).normal(size=(120, 2))
    np.save(tmp_path / "x.npy", x)
    dm = _datamodule(
        "data.target=null", f"data.path={tmp_path / 'x.npy'}", "symmetry.group=none", "data.n_val=20", "data.n_test=20"
    )
    moments = dm.moment_sample()
    assert torch.equal(moments, dm.train_data) and moments.shape[0] == 120 - dm.n_val - dm.n_test
    assert not _rows(moments) & (_rows(dm.val_data) | _rows(dm.test_data))


def test_infinite_regime_moments_are_fresh_training_draws():
    dm = _datamodule("data.regime=infinite", "data.n_val=256", "data.n_test=512")
    held_out = _rows(dm.val_data) | _rows(dm.test_data)
    for n in (256, 512, 2000):  # as many rows as a held-out split, too: a draw from its stream would repeat it
        moments = dm.moment_sample(n)
        assert moments.shape == (n, 2)
        assert not _rows(moments) & held_out, n
        assert torch.equal(moments, dm.moment_sample(n))  # reproducible, the same on every rank


def _saved_whitening(run) -> tuple[np.ndarray, np.ndarray]:
    state = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    return state["model.data_map.loc"].double().numpy(), state["model.data_map.scale"].double().numpy()


def _sqrtm(cov: np.ndarray) -> np.ndarray:
    evals, evecs = np.linalg.eigh(cov)
    return evecs @ np.diag(np.sqrt(evals)) @ evecs.T


def test_run_whitens_a_file_by_the_closed_form_of_its_training_rows(tmp_path, ehf_clean_env):
    """No group: μ is the mean of the training rows and W the symmetric square root of their covariance
    (divided by N − 1)."""
    rng = np.random.default_rng(1)
    x = rng.normal(size=(60, 2)) * [1.0, 3.0] + [0.5, -2.0]
    np.save(tmp_path / "x.npy", x)
    run = tmp_path / "run"
    common = [
        "data.target=null",
        f"data.path={tmp_path / 'x.npy'}",
        "symmetry.group=none",
        "data.n_val=10",
        "data.n_test=10",
        "model.standardise=true",
    ]
    assert (
        cli.main(["train", *tiny("trainer.max_steps=2", "trainer.val_check_interval=2", *common), f"run.dir={run}"])
        == 0
    )
    cfg = load_config([str(run / "config.yaml")])
    dm = make_datamodule(cfg)
    dm.setup("fit")
    train = dm.train_data.double().numpy()
    held_out = np.concatenate([dm.val_data.numpy(), dm.test_data.numpy()])
    assert train.shape == (40, 2)
    loc, scale = _saved_whitening(run)
    assert np.allclose(loc, train.mean(0), atol=1e-5)
    assert np.allclose(scale, _sqrtm(np.cov(train.T, ddof=1)), atol=1e-5)
    all_rows = np.concatenate([train, held_out])
    assert not np.allclose(scale, _sqrtm(np.cov(all_rows.T, ddof=1)), atol=1e-3)  # the check can fail


def test_run_whitens_an_infinite_stream_by_training_draws_only(tmp_path, ehf_clean_env):
    """ring2d (so2): μ = 0 and W = sqrt(tr S / 2) I, S the covariance of the moment rows, which are none of
    the validation or test rows."""
    run = tmp_path / "run"
    assert (
        cli.main(
            [
                "train",
                *tiny(
                    "trainer.max_steps=2",
                    "trainer.val_check_interval=2",
                    "model.standardise=true",
                    "data.regime=infinite",
                ),
                f"run.dir={run}",
            ]
        )
        == 0
    )
    dm = make_datamodule(load_config([str(run / "config.yaml")]))
    dm.setup("fit")
    rows = dm.moment_sample()
    assert not _rows(rows) & (_rows(dm.val_data) | _rows(dm.test_data))
    s = np.cov(rows.double().numpy().T, ddof=1)
    loc, scale = _saved_whitening(run)
    assert np.allclose(loc, 0.0, atol=1e-6)
    assert np.allclose(scale, np.sqrt(np.trace(s) / 2) * np.eye(2), atol=1e-5)
