"""DDP runs for ``tests/lit/test_ddp_ranks.py``. A plain script, not a test module: DDP must never start
inside the pytest process (Lightning re-runs this script for the other ranks).

    python tests/lit/ddp_driver.py train OUT_DIR key=value ...
        ``ehf train`` with a recording callback: per rank ``r``, ``OUT_DIR/rank{r}.pt`` holds the Lagrange
        multipliers after every update (one row per step, taken before the next step and at the end) and
        every training batch the rank received.

    python tests/lit/ddp_driver.py validate OUT_DIR key=value ...
        ``trainer.validate`` and ``trainer.test`` of a stand-in model whose IWAE estimate is exact and
        deterministic, ``log p(q) = -(q_0 + 10)``, so the logged NLL must be the mean of ``q_0 + 10`` over
        the whole split; rank 0 writes ``OUT_DIR/validate.json`` with the logged and the expected values.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from torch import Tensor, nn

from lightning_ehf.build import make_datamodule, make_trainer
from lightning_ehf.config.load import load_config
from lightning_ehf.core import symmetries
from lightning_ehf.lit.module import EHFModule
from lightning_ehf.train import train


class Recorder(Callback):
    """λ after each dual-ascent update and the rows of each training batch, on every rank."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.lambdas: list[Tensor] = []
        self.batches: list[Tensor] = []

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: Any, batch: Any, batch_idx: int) -> None:
        if trainer.global_step > 0:  # the update of the previous step is applied by now
            self.lambdas.append(pl_module.multipliers.value.detach().cpu().clone())
        self.batches.append(batch.detach().cpu().clone())

    def on_train_end(self, trainer: L.Trainer, pl_module: Any) -> None:
        self.lambdas.append(pl_module.multipliers.value.detach().cpu().clone())
        self.out.mkdir(parents=True, exist_ok=True)
        torch.save(
            {
                "lambdas": torch.stack(self.lambdas),
                "batches": torch.stack(self.batches),
                "world_size": trainer.world_size,
            },
            self.out / f"rank{trainer.global_rank}.pt",
        )


class ExactModel(nn.Module):
    """Stands in for a flow: ``log p(q) = -(q_0 + 10)`` exactly, ELBO likewise, no generators."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.symmetry = symmetries.no_symmetry(dim)
        self.generator_names: list[str] = []
        self.shift = nn.Parameter(torch.tensor(10.0))

    def iwae(self, q: Tensor, k: int, chunk: int) -> Tensor:
        return -(q[:, 0] + self.shift)

    def elbo_and_constraints(self, q: Tensor, n: int) -> tuple[Tensor, Tensor]:
        return self.iwae(q, 1, 1), q.new_zeros(0)


def validate(out: Path, overrides: list[str]) -> int:
    cfg = load_config([], overrides)
    dm = make_datamodule(cfg)
    module = EHFModule(cfg, ExactModel(dm.dim))
    trainer = make_trainer(cfg, out / "run", "exact")
    k = cfg.eval.iw_samples
    logged = {
        "val": trainer.validate(module, datamodule=dm, verbose=False)[0][f"val/nll_iw{k}"],
        "test": trainer.test(module, datamodule=dm, verbose=False)[0][f"test/nll_iw{k}"],
    }
    expected = {
        "val": float(dm.val_data[:, 0].double().mean()) + 10,
        "test": float(dm.test_data[:, 0].double().mean()) + 10,
    }
    if trainer.is_global_zero:
        (out / "validate.json").write_text(
            json.dumps({"logged": logged, "expected": expected, "world_size": trainer.world_size})
        )
    return 0


if __name__ == "__main__":
    mode, out_dir, args = sys.argv[1], Path(sys.argv[2]), sys.argv[3:]
    if mode == "train":
        sys.exit(train(load_config([], args), callbacks=[Recorder(out_dir)]).exit_code)
    sys.exit(validate(out_dir, args))
