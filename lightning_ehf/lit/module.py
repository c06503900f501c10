"""The LightningModule: one shared step for train/val/test, dual ascent on the multipliers."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import lightning as L
import torch
from lightning.fabric.utilities.rank_zero import rank_zero_warn
from torch import Tensor, nn
from torchmetrics import Metric
from typing_extensions import override

from ..config.load import to_container
from ..config.schema import Config
from ..core.compiled import CompiledObjective
from ..core.constraints import LagrangeMultipliers, feasibility_ratio, selection_score
from ..core.flows import EquivariantHamiltonianFlow
from ..core.metrics import equivariance_error, invariance_error
from ..core.objectives import Objective, lagrangian
from ..core.random import stream_seed
from ..errors import NumericalDivergence
from .precision import eval_dtype, full_precision

RANK_NOISE_STREAM = 7  # seed-stream key of the per-rank encoder noise
REPORTED_BOUND = Objective()  # validation and test report the one-sample ELBO

__all__ = ["EHFModule", "RowMean", "RowStandardError"]


class RowMean(Metric):
    """The mean over the rows of a split, from the means of its batches: the sums of ``mean × rows`` and of
    ``rows``, in float64, added across ranks when computed. A non-finite batch mean makes the result
    non-finite (it is not dropped).

    ``torchmetrics.MeanMetric(nan_strategy="disable")`` would be this, but torchmetrics 1.9 replaces the
    weights by ones under that strategy, and its other strategies drop or replace NaN."""

    full_state_update = False

    def __init__(self) -> None:
        super().__init__()
        self.add_state("total", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("rows", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    @override
    def update(self, mean: Tensor, rows: int) -> None:
        self.total += mean.detach().to(torch.float64) * rows
        self.rows += rows

    @override
    def compute(self) -> Tensor:
        return self.total / self.rows


class RowStandardError(Metric):
    """The standard error of the mean over the rows of a split, from per-row values:
    ``s / √n`` with ``s² = (Σx² − (Σx)²/n) / (n − 1)`` (the sample variance, ``numpy.std(ddof=1)``²). The sums are
    float64 and added across ranks when computed; below two rows the error is 0."""

    full_state_update = False

    def __init__(self) -> None:
        super().__init__()
        for name in ("total", "squares", "rows"):
            self.add_state(name, torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    @override
    def update(self, values: Tensor) -> None:
        values = values.detach().to(torch.float64)
        self.total += values.sum()
        self.squares += values.square().sum()
        self.rows += values.numel()

    @override
    def compute(self) -> Tensor:
        if self.rows < 2:
            return torch.zeros((), dtype=torch.float64)
        variance = (self.squares - self.total.square() / self.rows) / (self.rows - 1)
        return (variance.clamp_min(0) / self.rows).sqrt()


class EHFModule(L.LightningModule):
    """Trains a density model on −ELBO + Σ_k λ_k (C_k − ε) (docs/design.md §2).

    ``model`` is an :class:`~lightning_ehf.core.flows.EquivariantHamiltonianFlow` or a baseline with
    the same interface (``elbo_and_constraints``, ``iwae``, ``sample``, ``generator_names``,
    ``symmetry``). ``config`` is the validated config; the checkpoint holds it as plain containers.

    Metrics: ``{stage}/elbo`` (``train/iwae`` instead when training on ``optim.objective=iwae``),
    ``{stage}/nll_iw{K}``, ``{stage}/kl`` (known target: NLL − entropy), ``{stage}/kl_paired`` (known target
    density: the mean over rows of ``log p(q) − log p̂(q)``, the same quantity with a much smaller error, and
    ``{stage}/kl_paired_stderr``, its standard error over the split's rows),
    ``{stage}/bracket_rms/{g}``, ``{stage}/lambda/{g}``, ``{stage}/invariance_error`` with
    ``{stage}/invariance_noise``, ``{stage}/equivariance_error``. The validation and test means over
    rows are torchmetrics metrics (:class:`RowMean`) weighted by batch size and reduced across ranks, so they
    are means over the whole split on any number of ranks.
    """

    def __init__(
        self,
        config: Config,
        model: nn.Module,
        entropy: float | None = None,
        run_id: str = "",
        target_log_prob: Callable[[Tensor], Tensor] | None = None,
    ) -> None:
        super().__init__()
        # plain containers in the checkpoint: weights_only loading (docs/design.md §6)
        self.save_hyperparameters(
            {"config": to_container(config), "entropy": entropy, "dim": int(model.symmetry.dim), "run_id": run_id}
        )
        self.config = config
        self.model = model
        c = config.constraint
        names = list(getattr(model, "generator_names", []))
        self.multipliers = LagrangeMultipliers(
            names, mode=c.mode, rule=c.rule, tolerance=c.tolerance, lr=c.lr, init=c.init, ema=c.ema
        )
        o = config.optim
        # an exact likelihood is its own tightest bound: the bound and the encoder's estimator do not apply
        exact = bool(getattr(model, "exact_likelihood", False))
        self.objective = REPORTED_BOUND if exact else Objective(o.objective, o.elbo_samples, o.estimator)
        self.entropy = entropy
        self.target_log_prob = target_log_prob  # the target's normalised log-density, in the data's coordinates
        self.iw_samples = config.eval.iw_samples
        self.nll_key = f"nll_iw{self.iw_samples}"  # the test NLL's name
        self.stage_iw = {"val": config.eval.val_iw_samples or self.iw_samples, "test": self.iw_samples}
        per_row = ["elbo", "loss", *(f"bracket_rms/{g}" for g in names)]
        per_row += ["kl"] if entropy is not None else []
        per_row += ["kl_paired"] if target_log_prob is not None else []
        # ODE models (efm): function evaluations per likelihood solve, and 1 when its divergence is exact
        per_row += ["nfe", "divergence_exact"] if hasattr(model, "last_nfe") else []
        # metric states are not persistent: checkpoints (and their strict loading) are unchanged
        self.eval_means = nn.ModuleDict(
            {
                f"{stage}/{name}": RowMean()
                for stage in ("val", "test")
                for name in [*per_row, f"nll_iw{self.stage_iw[stage]}"]
            }
        )
        self.eval_errors = nn.ModuleDict(
            {
                f"{stage}/kl_paired_stderr": RowStandardError()
                for stage in ("val", "test")
                if target_log_prob is not None
            }
        )
        self._compiled_objective: CompiledObjective | None = None  # trainer.compile: built on the first step
        self._last_constraint: Tensor | None = None
        self._constraints: list[
            Tensor
        ] = []  # of the batches since the last optimiser step (trainer.accumulate_grad_batches)
        self._stepped = False  # an optimiser step ran in this batch
        self._last_batch: Tensor | None = None
        self._last_loss_finite = True
        self._resume_rng: dict[str, Any] | None = None
        self.nonfinite_skips = 0
        # training seconds (wall time of fit, validations excluded) before this process: restored on resume
        self._elapsed_before = 0.0
        self._fit_t0: float | None = None
        self._val_seconds = 0.0  # time spent validating in this process
        self._val_t0: float | None = None

    # -- the shared step -----------------------------------------------------------------------

    def _shared_step(self, q: Tensor, stage: str) -> Tensor:
        train = stage == "train"
        if train and hasattr(self.model, "flow_matching_loss"):
            return self._flow_matching_step(q)
        # the training objective (the ELBO, or the IWAE bound over its samples); val/test report the ELBO
        objective = self.objective if train else REPORTED_BOUND
        if train and self.config.trainer.compile:
            if self._compiled_objective is None:
                self._compiled_objective = CompiledObjective(lambda x: objective(self.model, x))
            elbo, constraint = self._compiled_objective(q)
        else:
            elbo, constraint = objective(self.model, q)
        loss = lagrangian(elbo, constraint, self.multipliers)
        bs = q.shape[0]
        means = {objective.name: elbo.mean(), "loss": loss}
        means.update(
            {
                f"bracket_rms/{name}": c.clamp_min(0).sqrt()
                for name, c in zip(self.multipliers.names, constraint.detach())
            }
        )
        if train:
            for name, value in means.items():
                self.log(f"train/{name}", value, prog_bar=name in ("elbo", "iwae"), on_step=True, batch_size=bs)
            self._last_constraint = constraint.detach()
            self._last_batch = q.detach()
            self._last_loss_finite = bool(torch.isfinite(loss.detach()))
            for name, lam in self.multipliers.as_dict().items():
                self.log(f"train/lambda/{name}", lam, on_step=True, batch_size=bs)
            self.log("train/nonfinite_skips", float(self.nonfinite_skips), on_step=True, batch_size=bs)
            blocks = getattr(getattr(self.model, "flow", None), "blocks", [])
            for t, block in enumerate(blocks):
                self.log(f"train/step_size/{t}", block.step_size.detach(), on_step=True, batch_size=bs)
        else:
            chunk, k = self.config.eval.iw_chunk, self.stage_iw[stage]
            # an exact likelihood (nsf, efm): the bound already is log p, so the model is evaluated once
            nll_rows = -elbo if getattr(self.model, "exact_likelihood", False) else -self.model.iwae(q, k, chunk)
            if hasattr(self.model, "last_nfe"):
                means["nfe"] = q.new_tensor(float(self.model.last_nfe))
                means["divergence_exact"] = q.new_tensor(float(self.model.exact_divergence))
            means[f"nll_iw{k}"] = nll = nll_rows.mean()
            if self.entropy is not None:
                means["kl"] = nll - self.entropy
            if self.target_log_prob is not None:
                # paired with the target's log-density row by row: the two terms move together, so this
                # estimate of the same KL has a standard error several times smaller than nll − entropy
                paired_rows = nll_rows.double() + self.target_log_prob(q.double())
                means["kl_paired"] = paired_rows.mean()
                error = self.eval_errors[f"{stage}/kl_paired_stderr"]
                error.update(paired_rows)
                self.log(f"{stage}/kl_paired_stderr", error, on_step=False, on_epoch=True, batch_size=bs)
            for name, value in means.items():
                self._log_mean(f"{stage}/{name}", value, bs, prog_bar=name in (f"nll_iw{k}", "kl"))
        return loss

    def _flow_matching_step(self, q: Tensor) -> Tensor:
        """A training step of a flow-matching model (efm): its regression loss; no ELBO, no constraint."""
        loss = self.model.flow_matching_loss(q)
        bs = q.shape[0]
        self.log("train/fm_loss", loss, prog_bar=True, on_step=True, batch_size=bs)
        self.log("train/loss", loss, on_step=True, batch_size=bs)
        self._last_batch = q.detach()
        self._last_loss_finite = bool(torch.isfinite(loss.detach()))
        return loss

    def _log_mean(self, key: str, value: Tensor, rows: int, prog_bar: bool = False) -> None:
        """Add a batch mean to its split's mean, weighted by the batch's rows; Lightning logs that mean
        (computed across ranks) at the end of the validation or test, and resets it."""
        metric = self.eval_means[key]
        metric.update(value, rows)
        self.log(key, metric, on_step=False, on_epoch=True, prog_bar=prog_bar, batch_size=rows)

    @override
    def training_step(self, batch: Tensor, batch_idx: int) -> Tensor:
        return self._shared_step(batch, "train")

    @override
    def validation_step(self, batch: Tensor, batch_idx: int) -> None:
        with full_precision(self.model, batch.device.type):  # metrics that select checkpoints: float32 or better
            self._shared_step(batch.to(eval_dtype(batch.dtype)), "val")

    @override
    def test_step(self, batch: Tensor, batch_idx: int) -> None:
        with full_precision(self.model, batch.device.type):
            self._shared_step(batch.to(eval_dtype(batch.dtype)), "test")

    @override
    def on_fit_start(self) -> None:
        # seed_everything gives every rank the same stream: offset it so encoder noise differs
        if self.trainer.world_size > 1:
            torch.manual_seed(stream_seed(self.config.seed, RANK_NOISE_STREAM, self.global_rank))

    # -- dual ascent ---------------------------------------------------------------------------

    @override
    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self._last_constraint is not None:
            self._constraints.append(self._last_constraint)
            self._last_constraint = None
        if not self._stepped:  # accumulating gradients: λ moves after the optimiser step, on the batches' mean
            return
        self._stepped = False
        if not self._constraints:
            return
        # average over ranks first, so every rank applies the identical update (docs/design.md §6)
        constraint = self.trainer.strategy.reduce(torch.stack(self._constraints).mean(0), reduce_op="mean")
        self._constraints = []
        self.multipliers.update(constraint)

    # -- numerical blow-ups --------------------------------------------------------------------

    @override
    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        self._stepped = True
        # Gradients are already reduced across ranks here, so every rank takes the same decision.
        grads = [p.grad for p in self.parameters() if p.grad is not None]
        grads_finite = not grads or bool(torch.stack([torch.isfinite(g).all() for g in grads]).all())  # one sync
        loss_finite = bool(
            self.trainer.strategy.reduce(
                torch.tensor(float(self._last_loss_finite), device=self.device), reduce_op="min"
            )
        )
        if grads_finite and loss_finite:
            return
        what = "gradient" if loss_finite else "loss"
        block = self._diverging_block()
        where = f" in flow block {block + 1}" if block is not None else ""
        if self.config.optim.on_nonfinite == "stop":
            eps = (
                f" (its step size is {float(self.model.flow.blocks[block].step_size.detach()):.3g})"
                if block is not None
                else ""
            )
            raise NumericalDivergence(
                f"non-finite {what} at step {self.global_step}{where}{eps}: the leapfrog integration likely "
                f"diverged; lower model.step_size (or model.leapfrog_steps), or set optim.on_nonfinite=skip"
            )
        for p in self.parameters():
            p.grad = None  # Adam skips parameters without gradient: this step changes nothing
        self._last_constraint = None
        self._constraints = []
        self.nonfinite_skips += 1
        if block is not None:
            with torch.no_grad():
                self.model.flow.blocks[block].log_step -= math.log(2.0)
        rank_zero_warn(
            f"step {self.global_step}: non-finite {what}{where}; batch skipped"
            + (f", step size of block {block + 1} halved" if block is not None else "")
        )

    @torch.no_grad()
    def _diverging_block(self) -> int | None:
        """The first flow block (in the density direction) whose output is non-finite on the last
        batch, agreed across ranks; None when the blow-up is not in the flow's states."""
        flow = getattr(self.model, "flow", None)
        if flow is None or self._last_batch is None:
            return None
        n_blocks = len(flow.blocks)
        flags = torch.zeros(n_blocks, device=self.device)
        q = self.model.to_standard(self._last_batch)
        p = self.model.encoder(q).sample()
        for t in reversed(range(n_blocks)):
            q, p = flow.blocks[t].integrate(q, p, reverse=True, create_graph=False)
            if not (bool(torch.isfinite(q).all()) and bool(torch.isfinite(p).all())):
                flags[t] = 1.0
                break
        flags = self.trainer.strategy.reduce(flags, reduce_op="sum")
        hit = [t for t in reversed(range(n_blocks)) if flags[t] > 0]
        if hit:
            return hit[0]
        # States stayed finite, so the gradient overflowed. The adjoint runs from block 1 up to
        # block T, so the blow-up is in the lowest block with non-finite gradients (gradients are
        # already identical on every rank here).
        for t, block in enumerate(flow.blocks):
            if any(p.grad is not None and not bool(torch.isfinite(p.grad).all()) for p in block.parameters()):
                return t
        return None

    # -- training time -------------------------------------------------------------------------

    def training_seconds(self) -> float:
        """Wall-clock seconds of training so far, summed over the run's resumes: the time since fit started
        in this process without the time spent validating, plus what the checkpoint resumed from had."""
        if self._fit_t0 is None:
            return self._elapsed_before
        now = time.monotonic()
        validating = now - self._val_t0 if self._val_t0 is not None else 0.0
        return self._elapsed_before + (now - self._fit_t0) - self._val_seconds - validating

    @override
    def on_validation_start(self) -> None:
        if self._fit_t0 is not None:
            self._val_t0 = time.monotonic()

    @override
    def on_validation_end(self) -> None:
        if self._val_t0 is not None:
            self._val_seconds += time.monotonic() - self._val_t0
            self._val_t0 = None

    # -- exact resume: random state ------------------------------------------------------------

    @override
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # one row per rank; tensors keep weights_only loading
        checkpoint["ehf_rng"] = {"torch": self._per_rank(torch.get_rng_state())}
        checkpoint["ehf_nonfinite_skips"] = self.nonfinite_skips
        checkpoint["ehf_elapsed_s"] = float(self.training_seconds())
        if torch.cuda.is_available() and self.device.type == "cuda":
            checkpoint["ehf_rng"]["cuda"] = self._per_rank(torch.cuda.get_rng_state(self.device))

    def _per_rank(self, state: Tensor) -> Tensor:
        """A random state of every rank, stacked (on every rank: all_gather is collective)."""
        if self.trainer.world_size > 1:
            return self.all_gather(state.to(self.device)).cpu()
        return state[None]

    @override
    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self._trainer is None or self.trainer.state.fn == "fit":  # testing the best checkpoint keeps the run's count
            self._resume_rng = checkpoint.get("ehf_rng")  # ... and the run's random state
            self.nonfinite_skips = int(checkpoint.get("ehf_nonfinite_skips", 0))
            self._elapsed_before = float(checkpoint.get("ehf_elapsed_s", 0.0))

    @override
    def on_train_start(self) -> None:
        self._restore_rng()
        self._fit_t0, self._val_seconds, self._val_t0 = time.monotonic(), 0.0, None

    @override
    def on_test_start(self) -> None:
        # a run resumed after its last step trains nothing (on_train_start never runs): the test
        # then starts from the random state the uninterrupted run had at this point
        self._restore_rng()

    def _restore_rng(self) -> None:
        if self._resume_rng is None:
            return
        torch.set_rng_state(self._own_row(self._resume_rng["torch"]))
        if "cuda" in self._resume_rng and self.device.type == "cuda":
            torch.cuda.set_rng_state(self._own_row(self._resume_rng["cuda"]), self.device)
        self._resume_rng = None

    def _own_row(self, states: Tensor) -> Tensor:
        """This rank's state from :meth:`_per_rank`'s stack (rank 0's for ranks the run did not have)."""
        if states.ndim == 1:  # a single state (CUDA states of older checkpoints)
            return states.cpu()
        # a copy: a row of the stack is a view at an offset, which set_rng_state misreads (crash)
        return states[self.global_rank if self.global_rank < states.shape[0] else 0].cpu().clone()

    # -- symmetry diagnostics ------------------------------------------------------------------

    def _diagnostics(self, stage: str) -> None:
        # leave the training random stream untouched
        with torch.random.fork_rng(devices=[]), full_precision(self.model, self.device.type):
            self._diagnostics_impl(stage)

    def _diagnostics_impl(self, stage: str) -> None:
        dm = self.trainer.datamodule
        data = dm.val_data if stage == "val" else dm.test_data
        ev = self.config.eval
        symmetry = dm.symmetry  # on the data's coordinates, which the model takes
        if data is None or symmetry.num_generators == 0:
            return
        q = data[: ev.n_eval].to(self.device, eval_dtype(self.dtype))
        gen = torch.Generator(device="cpu").manual_seed(self.config.seed + 17)
        err, noise = invariance_error(
            self.model, q, symmetry, n_group=ev.n_group_samples, k=ev.invariance_iw, chunk=ev.iw_chunk, generator=gen
        )
        log = dict(sync_dist=True, batch_size=1.0)  # one estimate per rank, equally weighted
        self.log(f"{stage}/invariance_error", err, **log)
        self.log(f"{stage}/invariance_noise", noise, **log)
        if isinstance(self.model, EquivariantHamiltonianFlow):
            # the flow acts on the model's own coordinates, and so does the group it is equivariant under
            self.log(
                f"{stage}/equivariance_error",
                equivariance_error(self.model, q.shape[0], self.model.symmetry, generator=gen),
                **log,
            )
        for name, lam in self.multipliers.as_dict().items():
            self.log(f"{stage}/lambda/{name}", lam, **log)
        self.log(f"{stage}/lambda_rank_spread", self._lambda_rank_spread(), **log)

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
            # val/elapsed_s: training seconds (validations excluded) when this validation started, over all
            # resumes; the slowest rank's. A wall-clock value: it differs between two identical runs.
            self.log("val/elapsed_s", self.training_seconds(), sync_dist=True, reduce_fx="max", batch_size=1)
            self._diagnostics("val")
            if self.config.constraint.selection == "feasible":
                self._log_selection()

    def _log_selection(self) -> None:
        """``constraint.selection=feasible``: ``val/feasibility`` (``max_k`` bracket RMS ÷ √ε over the validation
        rows; 0 when nothing is constrained) and ``val/selection``, the score that picks ``best.ckpt`` and drives
        early stopping (:func:`~lightning_ehf.core.constraints.selection_score`). The split's means are already
        added across ranks, so every rank logs the same values."""

        def mean(name: str) -> float:
            return float(self.eval_means[f"val/{name}"].compute())

        ratio = 0.0
        if self.multipliers.active:
            rms = torch.tensor([mean(f"bracket_rms/{g}") for g in self.multipliers.names])
            ratio = feasibility_ratio(rms, self.multipliers.tolerance)
        self.log("val/feasibility", ratio, batch_size=1)
        self.log("val/selection", selection_score(mean(f"nll_iw{self.stage_iw['val']}"), ratio), batch_size=1)

    @override
    def on_test_epoch_end(self) -> None:
        self._diagnostics("test")
        if getattr(self.trainer.datamodule, "train_data", None) is not None:
            with torch.random.fork_rng(devices=[]), full_precision(self.model, self.device.type):
                self._train_set_nll()

    def _train_set_nll(self) -> None:
        """``test/train_nll``: the test's NLL estimator (same K) on the training rows (at most as many as
        the test set has), so ``test/nll − test/train_nll`` measures overfitting. Rows are split across
        ranks like the test set and the sums are reduced, so the mean is over the same rows on any world size."""
        dm = self.trainer.datamodule
        rows = dm.train_data[: dm.test_data.shape[0]] if dm.test_data is not None else dm.train_data
        world, rank = self.trainer.world_size, self.trainer.global_rank
        torch.manual_seed(stream_seed(self.config.seed, RANK_NOISE_STREAM, rank, 1))
        q = rows[rank::world].to(self.device, eval_dtype(self.dtype))
        chunk, batch = self.config.eval.iw_chunk, self.config.data.batch_size
        total = torch.zeros(2, dtype=torch.float64, device=self.device)
        for i in range(0, q.shape[0], batch):
            logp = self.model.iwae(q[i : i + batch], self.iw_samples, chunk).detach()
            total += torch.stack([-logp.double().sum(), logp.new_tensor(logp.shape[0], dtype=torch.float64)])
        total = self.trainer.strategy.reduce(total, reduce_op="sum")
        self.log("test/train_nll", float(total[0] / total[1].clamp_min(1)), batch_size=1)

    # -- optimisation --------------------------------------------------------------------------

    @override
    def configure_optimizers(self) -> Any:
        o = self.config.optim
        opt = torch.optim.Adam(self.model.parameters(), lr=o.lr, weight_decay=o.weight_decay)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: lr_factor(self.config, step))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def lr_factor(config: Config, step: int) -> float:
    """The learning rate at optimiser step ``step`` as a multiple of ``optim.lr``: linear warm-up over
    ``optim.warmup_steps``, then (``optim.scheduler=cosine``) a cosine from 1 down to 0.02 at ``trainer.max_steps``."""
    o, total = config.optim, config.trainer.max_steps
    warmup = min(o.warmup_steps, max(total - 1, 0))
    if step < warmup:
        return (step + 1) / warmup
    if o.scheduler == "none":
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return 0.02 + 0.98 * 0.5 * (1.0 + math.cos(math.pi * progress))


def schedule_change(saved: Config, resumed: Config, step: int) -> str:
    """What a resume at ``step`` with another ``trainer.max_steps`` does to the learning-rate schedule (the
    schedule is a function of max_steps, so it is recomputed); "" when nothing changes."""
    old, new = saved.trainer.max_steps, resumed.trainer.max_steps
    if old == new:
        return ""
    before, after = lr_factor(saved, step), lr_factor(resumed, step)
    if resumed.optim.scheduler == "none" and before == after:
        return f"trainer.max_steps {old} -> {new} on resume at step {step}: the learning rate stays constant"
    return (
        f"trainer.max_steps {old} -> {new} on resume at step {step}: the {resumed.optim.scheduler} schedule is "
        f"recomputed for {new} steps, so the learning rate moves from {before:.3g}× to {after:.3g}× optim.lr at "
        f"this step: from here it follows the schedule of a {new}-step run, down to 0.02× at step {new} (the steps "
        f"before followed the {old}-step schedule)"
    )
