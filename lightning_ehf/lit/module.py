"""The LightningModule: one shared step for train/val/test, dual ascent on the multipliers."""

from __future__ import annotations

import math
from typing import Any, Optional

import lightning as L
import torch
from torch import Tensor, nn
from typing_extensions import override

from ..core.constraints import LagrangeMultipliers
from ..core.metrics import equivariance_error, invariance_error
from ..data.datasets import stream_seed

RANK_NOISE_STREAM = 7  # seed-stream key of the per-rank encoder noise

__all__ = ["EHFModule"]


class EHFModule(L.LightningModule):
    """Trains a density model on −ELBO + Σ_k λ_k (C_k − ε) (DESIGN.md §2).

    ``model`` is an :class:`~lightning_ehf.core.flows.EquivariantHamiltonianFlow` or a baseline with
    the same interface (``elbo_and_constraints``, ``iwae``, ``sample``, ``generator_names``,
    ``symmetry``). ``config`` is the resolved config as plain containers (checkpoint-safe).

    Metrics: ``{stage}/elbo``, ``{stage}/nll_iw{K}``, ``{stage}/kl`` (known target),
    ``{stage}/bracket_rms/{g}``, ``{stage}/lambda/{g}``, ``{stage}/invariance_error`` with
    ``{stage}/invariance_noise``, ``{stage}/equivariance_error``.
    """

    def __init__(self, config: dict[str, Any], model: nn.Module, entropy: Optional[float] = None) -> None:
        super().__init__()
        self.save_hyperparameters({"config": config, "entropy": entropy, "dim": int(model.symmetry.dim)})
        self.config = config
        self.model = model
        c = config["constraint"]
        names = list(getattr(model, "generator_names", []))
        self.multipliers = LagrangeMultipliers(names, mode=c["mode"], rule=c["rule"], tolerance=c["tolerance"],
                                               lr=c["lr"], init=c["init"], ema=c["ema"])
        self.entropy = entropy
        self.iw_samples = int(config["eval"]["iw_samples"])
        self.nll_key = f"nll_iw{self.iw_samples}"
        self._last_constraint: Optional[Tensor] = None

    # -- the shared step -----------------------------------------------------------------------

    def _shared_step(self, q: Tensor, stage: str) -> Tensor:
        train = stage == "train"
        n = int(self.config["optim"]["elbo_samples"]) if train else 1
        elbo, constraint = self.model.elbo_and_constraints(q, n)
        loss = -elbo.mean() + self.multipliers.penalty(constraint)
        bs = q.shape[0]
        log = dict(on_step=train, on_epoch=not train, batch_size=bs, sync_dist=not train)
        self.log(f"{stage}/elbo", elbo.mean(), prog_bar=train, **log)
        self.log(f"{stage}/loss", loss, **log)
        for name, c in zip(self.multipliers.names, constraint.detach()):
            self.log(f"{stage}/bracket_rms/{name}", c.clamp_min(0).sqrt(), **log)
        if train:
            self._last_constraint = constraint.detach()
            for name, lam in self.multipliers.as_dict().items():
                self.log(f"train/lambda/{name}", lam, on_step=True, batch_size=bs)
            blocks = getattr(getattr(self.model, "flow", None), "blocks", [])
            for t, block in enumerate(blocks):
                self.log(f"train/step_size/{t}", block.step_size.detach(), on_step=True, batch_size=bs)
        else:
            chunk = int(self.config["eval"]["iw_chunk"])
            nll = -self.model.iwae(q, self.iw_samples, chunk).mean()
            self.log(f"{stage}/{self.nll_key}", nll, prog_bar=True, **log)
            if self.entropy is not None:
                self.log(f"{stage}/kl", nll - self.entropy, prog_bar=True, **log)
        return loss

    @override
    def training_step(self, batch: Tensor, batch_idx: int) -> Tensor:
        return self._shared_step(batch, "train")

    @override
    def validation_step(self, batch: Tensor, batch_idx: int) -> None:
        self._shared_step(batch, "val")

    @override
    def test_step(self, batch: Tensor, batch_idx: int) -> None:
        self._shared_step(batch, "test")

    @override
    def on_fit_start(self) -> None:
        # seed_everything gives every rank the same stream: offset it so encoder noise differs
        if self.trainer.world_size > 1:
            torch.manual_seed(stream_seed(int(self.config["seed"]), RANK_NOISE_STREAM, self.global_rank))

    # -- dual ascent ---------------------------------------------------------------------------

    @override
    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self._last_constraint is None:
            return
        # average over ranks first, so every rank applies the identical update (DESIGN.md §6)
        constraint = self.trainer.strategy.reduce(self._last_constraint, reduce_op="mean")
        self.multipliers.update(constraint)
        self._last_constraint = None

    # -- symmetry diagnostics ------------------------------------------------------------------

    def _diagnostics(self, stage: str) -> None:
        dm = self.trainer.datamodule
        data = dm.val_data if stage == "val" else dm.test_data
        ev = self.config["eval"]
        symmetry = self.model.symmetry
        if data is None or symmetry.num_generators == 0:
            return
        q = data[: int(ev["n_eval"])].to(self.device, self.dtype)
        gen = torch.Generator(device="cpu").manual_seed(int(self.config["seed"]) + 17)
        err, noise = invariance_error(self.model, q, symmetry, n_group=int(ev["n_group_samples"]),
                                      k=int(ev["invariance_iw"]), chunk=int(ev["iw_chunk"]), generator=gen)
        self.log(f"{stage}/invariance_error", err, sync_dist=True)
        self.log(f"{stage}/invariance_noise", noise, sync_dist=True)
        if hasattr(self.model, "flow"):
            self.log(f"{stage}/equivariance_error", equivariance_error(self.model, q.shape[0], symmetry, generator=gen),
                     sync_dist=True)
        for name, lam in self.multipliers.as_dict().items():
            self.log(f"{stage}/lambda/{name}", lam, sync_dist=True)
        self.log(f"{stage}/lambda_rank_spread", self._lambda_rank_spread(), sync_dist=True)

    def _lambda_rank_spread(self) -> float:
        """max − min of λ across ranks: 0 when every rank applied the same updates. (DDP is built
        with ``broadcast_buffers=False``, so a divergence would show here instead of being masked.)"""
        if self.trainer.world_size == 1 or self.multipliers.value.numel() == 0:
            return 0.0
        gathered = self.all_gather(self.multipliers.value)
        return float((gathered.max(0).values - gathered.min(0).values).max())

    @override
    def on_validation_epoch_end(self) -> None:
        if not self.trainer.sanity_checking:
            self._diagnostics("val")

    @override
    def on_test_epoch_end(self) -> None:
        self._diagnostics("test")

    # -- optimisation --------------------------------------------------------------------------

    @override
    def configure_optimizers(self) -> Any:
        o = self.config["optim"]
        opt = torch.optim.Adam(self.model.parameters(), lr=o["lr"], weight_decay=o["weight_decay"])
        total = int(self.config["trainer"]["max_steps"])
        warmup = min(int(o["warmup_steps"]), max(total - 1, 0))

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            if o["scheduler"] == "none":
                return 1.0
            progress = min(1.0, (step - warmup) / max(1, total - warmup))
            return 0.02 + 0.98 * 0.5 * (1.0 + math.cos(math.pi * progress))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
