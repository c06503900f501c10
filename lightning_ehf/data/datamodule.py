"""LightningDataModule for analytic targets (finite or infinite regime) and user data files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, IterableDataset
from typing_extensions import override

from ..core.frames import permute_particles
from ..core.random import stream_seed
from ..core.symmetries import Symmetry
from ..core.targets import Target
from ..errors import ConfigError
from .datasets import ArrayDataset, ArrayStream, TargetStream
from .files import load_array

__all__ = ["EHFDataModule", "file_split_sizes"]

# Seed-stream keys of the fixed splits and of augmentation (the training stream is TRAIN_STREAM = 0).
_SPLIT_STREAM = {"train": 1, "val": 2, "test": 3, "shuffle": 4, "augment": 5, "moments": 6}


def file_split_sizes(
    n_rows: int,
    n_val: int | None,
    n_test: int | None,
    val_fraction: float | None = None,
    test_fraction: float | None = None,
    path: object = "the data file",
) -> tuple[int, int]:
    """Validation and test rows of a data file of ``n_rows`` rows: ``n_val`` / ``n_test`` rows as given,
    or, where null (the default for files), ``max(1, round(fraction · n_rows))``: 26 + 26 of 256 rows at
    10 % each. Raises ConfigError naming the keys when no training row would be left."""
    v = n_val if n_val is not None else max(1, round(float(val_fraction) * n_rows))  # type: ignore[arg-type]
    t = n_test if n_test is not None else max(1, round(float(test_fraction) * n_rows))  # type: ignore[arg-type]
    if v + t >= n_rows:
        if n_val is not None and n_test is not None:
            raise ConfigError(
                f"data.n_val + data.n_test = {v + t} leaves no training rows in {path} ({n_rows} rows); lower them"
            )
        keys = (
            f"{'data.n_val' if n_val is not None else 'data.file_val_fraction'} + "
            f"{'data.n_test' if n_test is not None else 'data.file_test_fraction'}"
        )
        raise ConfigError(
            f"{keys}: {v} validation + {t} test rows (at least 1 each) leave no training rows in {path} "
            f"({n_rows} rows); lower them or use a larger file"
        )
    return v, t


class EHFDataModule(L.LightningDataModule):
    r"""Data for one run. Declares ``dim``, ``symmetry`` and (for analytic data) ``target``.

    * Target, ``regime='finite'``: ``n_train`` samples drawn once from the seed; fixed val/test sets.
      With ``val_fraction`` the validation rows are the first ``round(val_fraction · n_train)`` of those
      samples and training uses the rest, so the run sees ``n_train`` samples in all (an honest data
      budget); otherwise validation is ``n_val`` fresh samples.
    * Target, ``regime='infinite'``: a fresh batch every step (:class:`TargetStream`), distinct per
      rank and worker and reproducible from the seed; fixed val/test sets.
    * File (``path``): rows shuffled with the seed, then ``n_val`` for validation, ``n_test`` for test,
      and (at most ``n_train`` of) the rest for training. ``n_val`` / ``n_test`` null (the default for
      files): ``file_val_fraction`` / ``file_test_fraction`` of the rows, at least one each
      (:func:`file_split_sizes`; ``self.n_val`` and ``self.n_test`` hold the row counts).

    With ``augment`` every training batch is acted on by random group elements (one per row),
    after it reaches the device; the elements of step ``i`` on rank ``r`` are drawn from ``(seed, r, i)``.
    With ``permute_particles = n`` augmentation also relabels the n particles of every row at random.

    Rows are held in the data's own coordinates (particles with their centre of mass where it is): a model
    that lives in other coordinates maps them itself.

    Under DDP, rank ``r`` of ``W`` validates and tests rows ``r, r + W, r + 2W, …``: every row exactly
    once (Lightning's distributed sampler would pad with repeated rows), and the logged means (the
    module's ``MeanMetric``\ s, weighted by rows and reduced across ranks) are means over the whole set.
    """

    def __init__(
        self,
        symmetry: Symmetry,
        target: Target | None = None,
        path: str | None = None,
        rows: np.ndarray | None = None,
        regime: str = "infinite",
        n_train: int = 20000,
        n_val: int | None = 2000,
        n_test: int | None = 5000,
        batch_size: int = 512,
        augment: bool = False,
        num_workers: int = 0,
        seed: int = 0,
        val_fraction: float | None = None,
        file_val_fraction: float | None = None,
        file_test_fraction: float | None = None,
        permute_particles: int | None = None,
    ) -> None:
        super().__init__()
        if (target is None) == (path is None):
            raise ConfigError("data: set exactly one of data.target and data.path")
        if target is not None and (n_val is None or n_test is None):
            raise ConfigError("data.n_val, data.n_test: a target needs numbers of samples (null is for data files)")
        if path is not None and regime != "finite":
            raise ConfigError("data.regime: file data (data.path) is a fixed sample; set data.regime=finite")
        self.symmetry, self.target, self.path = symmetry, target, path
        self.regime, self.n_train, self.n_val, self.n_test = regime, n_train, n_val, n_test
        self.batch_size, self.augment, self.num_workers, self.seed = batch_size, augment, num_workers, seed
        if val_fraction is not None and (target is None or regime != "finite"):
            raise ConfigError("data.val_fraction: applies to the finite training set of a target (data.regime=finite)")
        self.val_fraction = val_fraction
        if target is not None and regime == "infinite" and getattr(target, "finite_pool", False):
            raise ConfigError(
                f"data.regime: target {target.name} is a fixed pool of samples, not a sampler; set data.regime=finite"
            )
        self.permute_particles = permute_particles
        if target is not None and getattr(target, "finite_pool", False):  # checked before any file is written
            wanted = {"train": ("data.n_train", n_train), "test": ("data.n_test", n_test)}
            if val_fraction is None:
                wanted["val"] = ("data.n_val", n_val)
            for split, (key, n) in wanted.items():
                if n is not None and n > target.pool_size(split):
                    raise ConfigError(
                        f"{key}: {target.name} has {target.pool_size(split)} '{split}' samples; asked for {n}"
                    )
        self.train_data: Tensor | None = None
        self.val_data: Tensor | None = None
        self.test_data: Tensor | None = None
        self._file_rows: Tensor | None = None
        if path is not None:
            if rows is None:  # ``rows``: the file's contents when the caller has read it already
                rows = load_array(path, expected_dim=symmetry.dim)
            self._file_rows = torch.from_numpy(rows).float()
            self.n_val, self.n_test = file_split_sizes(
                self._file_rows.shape[0], n_val, n_test, file_val_fraction, file_test_fraction, path
            )

    @property
    def dim(self) -> int:
        return self.symmetry.dim

    def _draw(self, split: str, n: int) -> Tensor:
        assert self.target is not None
        gen = torch.Generator().manual_seed(stream_seed(self.seed, _SPLIT_STREAM[split]))
        return self.target.sample_split(split, n, generator=gen, dtype=torch.float32)

    @override
    def setup(self, stage: str | None = None) -> None:
        if self.val_data is not None:
            return
        if self._file_rows is not None:
            gen = torch.Generator().manual_seed(stream_seed(self.seed, _SPLIT_STREAM["shuffle"]))
            rows = self._file_rows[torch.randperm(self._file_rows.shape[0], generator=gen)]
            self.val_data = rows[: self.n_val]
            self.test_data = rows[self.n_val : self.n_val + self.n_test]
            self.train_data = rows[self.n_val + self.n_test :][: self.n_train]
        elif self.val_fraction is not None:
            rows = self._draw("train", self.n_train)
            n_val = round(self.val_fraction * self.n_train)
            self.val_data, self.train_data = rows[:n_val], rows[n_val:]
            self.test_data = self._draw("test", self.n_test)
        else:
            self.val_data = self._draw("val", self.n_val)
            self.test_data = self._draw("test", self.n_test)
            if self.regime == "finite":
                self.train_data = self._draw("train", self.n_train)

    def moment_sample(self, n: int = 20_000) -> Tensor:
        """Training data to estimate the moments of (``model.standardise``): the training rows in the
        finite regime, else n fresh rows of the target's training distribution from their own stream.
        Identical on every rank."""
        self.setup()
        if self.regime == "finite" or self._file_rows is not None:
            assert self.train_data is not None
            return self.train_data
        assert self.target is not None
        gen = torch.Generator().manual_seed(stream_seed(self.seed, _SPLIT_STREAM["moments"]))
        return self.target.sample_split("train", n, generator=gen, dtype=torch.float32)

    @override
    def train_dataloader(self) -> DataLoader:
        # Both regimes are step-indexed streams, so a resumed run continues at the batch it had
        # reached (global_step is restored before this is called) and ranks get distinct batches.
        trainer = getattr(self, "trainer", None)
        start = int(trainer.global_step) if trainer is not None else 0
        rank, world = self._rank_and_world()
        if self.regime == "infinite":
            assert self.target is not None
            stream: IterableDataset = TargetStream(
                self.target, self.batch_size, self.seed, rank=rank, start_index=start
            )
        else:
            assert self.train_data is not None
            stream = ArrayStream(
                self.train_data, self.batch_size, self.seed, rank=rank, world_size=world, start_index=start
            )
        # a private generator: creating the iterator must not draw from the global random stream
        return DataLoader(stream, batch_size=None, num_workers=self.num_workers, generator=torch.Generator())

    def _rank_and_world(self) -> tuple[int, int]:
        trainer = getattr(self, "trainer", None)
        return (int(trainer.global_rank), int(trainer.world_size)) if trainer is not None else (0, 1)

    def _fixed_loader(self, data: Tensor | None) -> DataLoader:
        assert data is not None
        rank, world = self._rank_and_world()
        return DataLoader(
            ArrayDataset(data[rank::world]),
            batch_size=self.batch_size,
            shuffle=False,
            num_workers=self.num_workers,
            generator=torch.Generator(),
        )

    @override
    def val_dataloader(self) -> DataLoader:
        return self._fixed_loader(self.val_data)

    @override
    def test_dataloader(self) -> DataLoader:
        return self._fixed_loader(self.test_data)

    @override
    def on_before_batch_transfer(self, batch: Tensor, dataloader_idx: int) -> Tensor:
        # Lightning's one hook between two training steps (the previous one complete, the next one not
        # yet counted): callbacks that stop a run there (lit.callbacks.Preemption) get their turn
        trainer = getattr(self, "trainer", None)
        # with trainer.accumulate_grad_batches > 1, only between two optimiser steps (the accumulated
        # gradients of a partial step are not in a checkpoint)
        if trainer is not None and trainer.training and _between_optimiser_steps(trainer):
            for callback in trainer.callbacks:
                if hasattr(callback, "between_steps"):
                    callback.between_steps(trainer)
        return batch

    @override
    def on_after_batch_transfer(self, batch: Tensor, dataloader_idx: int) -> Tensor:
        trainer = getattr(self, "trainer", None)
        if self.augment and trainer is not None and trainer.training:
            # indexed by step (not the global random stream), so a run resumed at any step sees the same
            gen = torch.Generator().manual_seed(
                stream_seed(self.seed, _SPLIT_STREAM["augment"], trainer.global_rank, trainer.global_step)
            )
            g = self.symmetry.sample(batch.shape[0], generator=gen, dtype=batch.dtype, device=batch.device)
            batch = g.act_q(batch)
            if self.permute_particles:
                batch = permute_particles(batch, self.permute_particles, generator=gen)
        return batch

    def describe(self) -> str:
        source = self.target.name if self.target is not None else Path(str(self.path)).name
        text = f"{source} (d={self.dim}, {self.regime}, symmetry {self.symmetry.name})"
        if self._file_rows is not None:
            n_train = min(self.n_train, self._file_rows.shape[0] - self.n_val - self.n_test)
            text += f"; {self._file_rows.shape[0]} rows: {n_train} train, {self.n_val} validate, {self.n_test} test"
        if self.val_fraction is not None:
            n_val = round(self.val_fraction * self.n_train)
            text += f"; of n_train={self.n_train} samples, {self.n_train - n_val} train and {n_val} validate"
        return text


def _between_optimiser_steps(trainer: Any) -> bool:
    accumulate = int(getattr(trainer, "accumulate_grad_batches", 1) or 1)
    return accumulate == 1 or trainer.fit_loop.epoch_loop.batch_progress.current.completed % accumulate == 0
