"""Callbacks: figures during/after training, logged to W&B as images."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import WandbLogger
from typing_extensions import override

from .plots import make_all_plots

__all__ = ["PlotCallback"]


class PlotCallback(Callback):
    """Writes ``plots/*.png`` every ``every_n_val`` validation rounds and after testing (rank 0),
    and logs them to W&B (``plots/<name>``)."""

    def __init__(self, folder: Path, every_n_val: int = 4, grid: int = 80) -> None:
        self.folder = Path(folder)
        self.every_n_val = every_n_val
        self.grid = grid
        self._rounds = 0

    def _plot(self, trainer: L.Trainer, pl_module: Any) -> None:
        if not trainer.is_global_zero:
            return
        dm = trainer.datamodule
        data = dm.val_data if dm.val_data is not None else dm.test_data
        with torch.random.fork_rng(devices=[]):  # plots must not shift the training random stream
            paths = make_all_plots(pl_module.model, data.to(pl_module.device, pl_module.dtype), self.folder,
                                   dm.target, self.grid)
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                for p in paths:
                    logger.log_image(key=f"plots/{p.stem}", images=[str(p)], step=trainer.global_step)

    @override
    def on_validation_end(self, trainer: L.Trainer, pl_module: Any) -> None:
        if trainer.sanity_checking:
            return
        self._rounds += 1
        if self._rounds % self.every_n_val == 0:
            self._plot(trainer, pl_module)

    @override
    def on_test_end(self, trainer: L.Trainer, pl_module: Any) -> None:
        self._plot(trainer, pl_module)
