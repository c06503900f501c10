"""The data pipeline: disjoint splits, and augmentation that reaches the training batches only.

* Training, validation and test rows never overlap: analytic targets in the finite and infinite
  regimes, and data files (whose rows are also all accounted for).
* With ``data.augment=true`` every training batch the model sees is a group transform of the batch
  the same run sees without augmentation (row norms of every rotated plane kept, rows moved), and
  validation and test batches are exactly the fixed splits, untransformed.
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch

from ehf_testing import tiny
from lightning_ehf.build import make_datamodule, make_module
from lightning_ehf.config.load import load_config, validate
from lightning_ehf.data.datamodule import file_split_sizes
from lightning_ehf.errors import ConfigError


def _datamodule(*overrides: str):
    cfg = load_config([], tiny(*overrides))
    validate(cfg)
    dm = make_datamodule(cfg)
    dm.setup("fit")
    return cfg, dm


def _rows(x: torch.Tensor) -> set[tuple[float, ...]]:
    return {tuple(r) for r in x.tolist()}


def _assert_disjoint(**splits: torch.Tensor) -> None:
    names = list(splits)
    for i, a in enumerate(names):
        assert len(_rows(splits[a])) == splits[a].shape[0], f"{a} repeats rows"
        for b in names[i + 1 :]:
            common = _rows(splits[a]) & _rows(splits[b])
            assert not common, f"{len(common)} rows are in both {a} and {b}"


def _train_batches(dm, n: int) -> list[torch.Tensor]:
    it = iter(dm.train_dataloader())
    return [next(it) for _ in range(n)]


@pytest.mark.parametrize("n_train", [200, 300])
def test_finite_target_splits_are_disjoint(n_train):
    _, dm = _datamodule("data.regime=finite", f"data.n_train={n_train}", "data.n_val=200", "data.n_test=200")
    assert dm.train_data.shape == (n_train, 2) and dm.val_data.shape == (200, 2) and dm.test_data.shape == (200, 2)
    _assert_disjoint(train=dm.train_data, val=dm.val_data, test=dm.test_data)
    # drawn from independent streams: row i of one split says nothing about row i of another (a
    # split drawn from the training stream shares its radii even though its rows differ)
    for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
        x, y = getattr(dm, f"{a}_data"), getattr(dm, f"{b}_data")
        n = min(x.shape[0], y.shape[0])
        corr = float(torch.corrcoef(torch.stack([x[:n].norm(dim=-1), y[:n].norm(dim=-1)]))[0, 1])
        assert abs(corr) < 0.3, f"{a} and {b} rows are correlated (radius correlation {corr:.2f})"
    seen = torch.cat(_train_batches(dm, 10))
    assert _rows(seen) <= _rows(dm.train_data), "the training loader yields rows outside the training split"


def test_infinite_target_stream_never_repeats_validation_or_test_rows():
    _, dm = _datamodule("data.regime=infinite", "data.n_val=200", "data.n_test=200", "data.batch_size=64")
    stream = torch.cat(_train_batches(dm, 20))
    _assert_disjoint(train=stream, val=dm.val_data, test=dm.test_data)


def test_splits_depend_on_the_seed():
    _, a = _datamodule("data.regime=finite", "data.n_train=100", "seed=0")
    _, b = _datamodule("data.regime=finite", "data.n_train=100", "seed=1")
    assert not torch.equal(a.val_data, b.val_data) and not torch.equal(a.train_data, b.train_data)


@pytest.fixture
def unique_rows_file(tmp_path) -> Path:
    """A 4-D file whose rows are all distinct (row i starts with i), so splits can be traced."""
    gen = np.random.default_rng(0)
    x = gen.normal(size=(500, 4)).astype(np.float32)
    x[:, 0] = np.arange(500, dtype=np.float32)
    path = tmp_path / "rows.npy"
    np.save(path, x)
    return path


FILE = ("data.target=null", "data.regime=finite", "symmetry.group=rotations", "symmetry.planes=[[0,1],[2,3]]")


def test_file_splits_are_disjoint_and_account_for_every_row(unique_rows_file):
    _, dm = _datamodule(*FILE, f"data.path={unique_rows_file}", "data.n_val=50", "data.n_test=70", "data.n_train=10000")
    assert (dm.val_data.shape[0], dm.test_data.shape[0], dm.train_data.shape[0]) == (50, 70, 380)
    _assert_disjoint(train=dm.train_data, val=dm.val_data, test=dm.test_data)
    every = torch.cat([dm.train_data, dm.val_data, dm.test_data])
    assert _rows(every) == _rows(torch.from_numpy(np.load(unique_rows_file)))
    seen = torch.cat(_train_batches(dm, 12))
    assert _rows(seen) <= _rows(dm.train_data)


@pytest.mark.parametrize(
    "n_rows, sizes", [(256, (26, 26, 204)), (500, (50, 50, 400)), (3, (1, 1, 1)), (12, (1, 1, 10))]
)
def test_file_default_split_is_ten_percent_each_at_least_one_row(tmp_path, n_rows, sizes):
    """``data.path`` alone: n_val = n_test = null, so max(1, round(10 % of the rows)) each, the rest trains."""
    x = np.stack([np.arange(n_rows), np.ones(n_rows)], axis=1).astype(np.float32)  # distinct rows
    np.save(tmp_path / "x.npy", x)
    cfg = load_config([], [f"data.path={tmp_path / 'x.npy'}"])
    validate(cfg)
    dm = make_datamodule(cfg)
    dm.setup("fit")
    assert (dm.val_data.shape[0], dm.test_data.shape[0], dm.train_data.shape[0]) == sizes
    _assert_disjoint(train=dm.train_data, val=dm.val_data, test=dm.test_data)
    assert _rows(torch.cat([dm.train_data, dm.val_data, dm.test_data])) == _rows(torch.from_numpy(x))
    assert dm.describe().endswith(f"{n_rows} rows: {sizes[2]} train, {sizes[0]} validate, {sizes[1]} test")


def test_file_split_sizes():
    assert file_split_sizes(256, None, None, 0.1, 0.1) == (26, 26)
    assert file_split_sizes(256, 10, None, 0.1, 0.2) == (10, 51)  # a count where given, a fraction where null
    assert file_split_sizes(256, None, 7, 0.25, 0.1) == (64, 7)
    assert file_split_sizes(5, None, None, 0.01, 0.01) == (1, 1)  # at least one row each
    with pytest.raises(
        ConfigError, match=r"^data.file_val_fraction \+ data.file_test_fraction: 1 validation \+ 1 test rows"
    ):
        file_split_sizes(2, None, None, 0.1, 0.1, "x2.npy")
    with pytest.raises(ConfigError, match=r"^data.n_val \+ data.file_test_fraction: .* in x.npy \(20 rows\)"):
        file_split_sizes(20, 18, None, 0.1, 0.1, "x.npy")
    with pytest.raises(ConfigError, match=r"^data.n_val \+ data.n_test = 20 leaves no training rows"):
        file_split_sizes(20, 10, 10, 0.1, 0.1, "x.npy")


def test_eval_split_rebuilds_the_default_file_split(tmp_path):
    """``ehf eval --split`` (Run.split_data, from the saved config) gets the rows the run validated and tested on."""
    from lightning_ehf.evaluate import Run

    np.save(tmp_path / "x.npy", np.random.default_rng(1).normal(size=(256, 3)).astype(np.float32))
    cfg = load_config([], [f"data.path={tmp_path / 'x.npy'}", "seed=3"])
    dm = make_datamodule(cfg)
    dm.setup("fit")
    run = Run(model=torch.nn.Identity(), config=cfg, dim=3, entropy=None, path=tmp_path)
    assert torch.equal(run.split_data("val"), dm.val_data) and torch.equal(run.split_data("test"), dm.test_data)
    assert dm.val_data.shape[0] == dm.test_data.shape[0] == 26


def test_file_training_split_is_capped_by_n_train(unique_rows_file):
    _, dm = _datamodule(*FILE, f"data.path={unique_rows_file}", "data.n_val=50", "data.n_test=50", "data.n_train=100")
    assert dm.train_data.shape[0] == 100
    _assert_disjoint(train=dm.train_data, val=dm.val_data, test=dm.test_data)


# ---------------------------------------------------------------------------------------------
# augmentation


class _Capture(L.Callback):
    """Every batch as the model receives it (after the device transfer, where augmentation acts)."""

    def __init__(self) -> None:
        self.batches: dict[str, list[torch.Tensor]] = {"train": [], "val": [], "test": []}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.batches["train"].append(batch.detach().clone())

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        self.batches["val"].append(batch.detach().clone())

    def on_test_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        self.batches["test"].append(batch.detach().clone())


def _seen_batches(*overrides: str):
    """Fit 4 steps (validating after 2 and 4) and test; returns the captured batches and the data."""
    cfg, dm = _datamodule("trainer.max_steps=4", "trainer.val_check_interval=2", *overrides)
    L.seed_everything(cfg.seed, verbose=False)
    module = make_module(cfg, dm)
    capture = _Capture()
    trainer = L.Trainer(
        max_steps=4,
        val_check_interval=2,
        check_val_every_n_epoch=None,
        max_epochs=-1,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        inference_mode=False,
        callbacks=[capture],
    )
    trainer.fit(module, datamodule=dm)
    trainer.test(module, datamodule=dm, verbose=False)
    return capture.batches, dm


def _plane_norms(x: torch.Tensor, planes: list[list[int]]) -> torch.Tensor:
    return torch.stack([x[:, p].norm(dim=-1) for p in planes], -1)


CASES = {
    "ring2d-finite": (("data.regime=finite", "data.n_train=256"), [[0, 1]]),
    "ring2d-infinite": (("data.regime=infinite",), [[0, 1]]),
    "file-two-planes": (FILE, [[0, 1], [2, 3]]),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_augmentation_transforms_training_batches_only(case, unique_rows_file):
    overrides, planes = CASES[case]
    overrides = (*overrides, f"data.path={unique_rows_file}") if case.startswith("file") else overrides
    plain, _ = _seen_batches(*overrides, "data.augment=false")
    augmented, dm = _seen_batches(*overrides, "data.augment=true")

    assert len(augmented["train"]) == len(plain["train"]) == 4
    for step, (raw, aug) in enumerate(zip(plain["train"], augmented["train"])):
        assert raw.shape == aug.shape
        # a rotation of every plane: the norms in each plane are kept ...
        torch.testing.assert_close(_plane_norms(aug, planes), _plane_norms(raw, planes), rtol=1e-5, atol=1e-5)
        # ... and the rows did move (random angles, one per row)
        moved = (aug - raw).norm(dim=-1) > 1e-3 * raw.norm(dim=-1).clamp_min(1.0)
        assert moved.float().mean() > 0.9, f"step {step}: augmentation left {int((~moved).sum())} rows unchanged"
    # the angles differ from row to row and from step to step
    angles = torch.cat(
        [
            torch.atan2(a[:, 1], a[:, 0]) - torch.atan2(r[:, 1], r[:, 0])
            for r, a in zip(plain["train"], augmented["train"])
        ]
    )
    assert torch.remainder(angles, 2 * torch.pi).std() > 1.0

    for stage, data in (("val", dm.val_data), ("test", dm.test_data)):
        seen = torch.cat(augmented[stage])
        reps = seen.shape[0] // data.shape[0]
        assert reps >= 1 and seen.shape[0] == reps * data.shape[0], (stage, seen.shape, data.shape)
        assert torch.equal(seen, data.repeat(reps, 1)), f"{stage} batches were transformed"
