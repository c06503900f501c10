"""Callbacks: figures during/after training (logged to W&B as images), the always-current
``last.ckpt`` (also on a timer), a clean stop on SIGTERM, SIGUSR1 or SIGUSR2, progress output for
terminals and log files, and early stopping that waits for a feasible validation."""

from __future__ import annotations

import signal
import sys
import threading
import time
from pathlib import Path
from types import FrameType
from typing import Any, TextIO

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, Checkpoint, EarlyStopping, RichProgressBar
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.trainer.states import TrainerFn
from typing_extensions import override

from ..core.constraints import is_infeasible_score
from ..errors import Preempted
from .plots import make_all_plots

__all__ = [
    "PREEMPTION_SIGNALS",
    "FeasibleEarlyStopping",
    "LastCheckpoint",
    "PlotCallback",
    "Preemption",
    "ProgressLines",
    "StepProgressBar",
    "log_to_wandb",
]


class FeasibleEarlyStopping(EarlyStopping):
    """Early stopping on ``val/selection`` (``constraint.selection=feasible``) whose patience starts at the first
    validation that meets the constraint.

    Before then ``best.ckpt`` keeps the lowest NLL as a fallback, but patience does not count: counting it from
    infeasible validations ended dual-ascent runs before λ had grown enough to reach the tolerance (ring2d, n_train
    128, η = 30: stopped at step 699 with test KL 0.98). Runs that never become feasible go on to
    ``trainer.max_steps`` (or ``trainer.max_time_s``). A non-finite score still stops at once."""

    @override
    def _evaluate_stopping_criteria(self, current: torch.Tensor) -> tuple[bool, str | None]:
        # Lightning's one hook between reading the monitored value and counting patience (stable across 2.x)
        nothing_feasible = is_infeasible_score(self.best_score)
        if nothing_feasible and bool(torch.isfinite(current)) and is_infeasible_score(current):
            self.best_score = torch.minimum(current, self.best_score.to(current.device))
            self.wait_count = 0
            return False, None
        return super()._evaluate_stopping_criteria(current)


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
            paths = make_all_plots(
                pl_module.model, data.to(pl_module.device, pl_module.dtype), self.folder, dm.target, self.grid
            )
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


class LastCheckpoint(Checkpoint):
    """``checkpoints/last.ckpt``, rewritten after every validation, at the end of training, when the
    run is preempted and, with ``every_n_minutes``, whenever that long has passed since the last write,
    so it always holds the latest step. (``ModelCheckpoint(monitor=..., save_last=True)`` refreshes
    ``last.ckpt`` only together with a new best, so it lags once validation stops improving.)

    A subclass of ``Checkpoint`` so that Lightning runs it after the best-checkpoint callback: the file
    then carries that callback's updated state."""

    def __init__(self, dirpath: Path, every_n_minutes: float | None = None) -> None:
        self.path = Path(dirpath) / "last.ckpt"
        self.every_s = every_n_minutes * 60.0 if every_n_minutes else None
        self._saved_step: int | None = None
        self._saved_at = time.monotonic()

    def save(self, trainer: L.Trainer) -> None:
        """Write ``last.ckpt`` unless it holds this step already (every rank must call this, and all take
        the same decision: the module gathers the random states of all ranks)."""
        if self._saved_step == trainer.global_step:
            return
        trainer.save_checkpoint(self.path, weights_only=False)
        self._saved_step = trainer.global_step
        self._saved_at = time.monotonic()
        for logger in trainer.loggers:  # metrics.csv on disk up to this checkpoint (a resume keeps those rows)
            logger.save()

    def between_steps(self, trainer: L.Trainer) -> None:
        """The timed save (``checkpoint.every_n_minutes``). It is taken here, where a preemption saves too
        (see :meth:`Preemption.between_steps`), rather than after a training batch like Lightning's
        ``ModelCheckpoint(train_time_interval=...)``, because only here does the file resume exactly.
        Ranks whose clocks disagree agree first: the first rank that is due decides for all."""
        if self.every_s is None:
            return
        due = time.monotonic() - self._saved_at >= self.every_s
        if trainer.strategy.reduce_boolean_decision(due, all=False):
            self.save(trainer)

    @override
    def on_train_start(self, trainer: L.Trainer, pl_module: Any) -> None:
        self._saved_at = time.monotonic()  # the interval counts training time, not model building

    @override
    def on_validation_end(self, trainer: L.Trainer, pl_module: Any) -> None:
        if trainer.sanity_checking or trainer.state.fn != TrainerFn.FITTING:
            return
        self.save(trainer)

    @override
    def on_train_end(self, trainer: L.Trainer, pl_module: Any) -> None:
        self.save(trainer)


#: SIGTERM: schedulers, ``docker stop``; SIGUSR1: ``#SBATCH --signal=USR1@…``; SIGUSR2: what submitit asks SLURM
#: for before a time limit (``--signal=USR2@…``, its ``SUBMITIT_PREEMPT_SIGNAL``), so study cells stop cleanly too
PREEMPTION_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)


def log_to_wandb(trainer: L.Trainer, metrics: dict[str, float]) -> None:
    """Log ``metrics`` at the current step to the run's W&B logger, if it has one (rank 0 only)."""
    if not metrics or not trainer.is_global_zero:
        return
    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger):
            logger.log_metrics(metrics, step=trainer.global_step)


class Preemption(Callback):
    """Turns SIGTERM, SIGUSR1 or SIGUSR2 into a clean stop. SIGTERM is what SLURM, Kubernetes, ``docker stop``
    and most schedulers send before killing a job; SIGUSR1 is the early warning a SLURM job asks for with
    ``#SBATCH --signal=USR1@<seconds>``. The step being trained (and a validation that is running)
    completes, every rank stops before the same next step, ``last.ckpt`` is written at the step reached
    and :class:`~lightning_ehf.errors.Preempted` is raised (the CLI exits 75). ``ehf train --resume``
    then continues exactly where the run stopped.

    Lightning's own SIGTERM handling stops the loop at points that depend on the rank and exits 0, so
    a preempted run would look finished; this callback replaces it for the training loop.
    """

    def __init__(self, last: LastCheckpoint, signals: tuple[signal.Signals, ...] = PREEMPTION_SIGNALS) -> None:
        self.last = last
        self.signals = signals
        self.requested = False
        self.received: str | None = None  # the name of the signal this process received
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        """Route the signals to this callback (main thread only). The handlers found the first time are
        kept for :meth:`restore`."""
        if threading.current_thread() is not threading.main_thread():
            return
        for signum in self.signals:
            previous = signal.signal(signum, self._handle)
            self._previous.setdefault(signum, previous)

    def restore(self) -> None:
        """Put back the handlers that :meth:`install` replaced first."""
        if threading.current_thread() is not threading.main_thread():
            return
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.requested = True
        self.received = self.received or signal.Signals(signum).name

    @property
    def cause(self) -> str:
        """What stopped the run, for messages: the signal's name, or that another rank received it."""
        return self.received or "a signal to another rank"

    @override
    def on_train_start(self, trainer: L.Trainer, pl_module: Any) -> None:
        self.install()  # fit() has registered Lightning's handler by now: ours replaces it

    def between_steps(self, trainer: L.Trainer) -> None:
        """Called by the data module between two training steps (``EHFDataModule.on_before_batch_transfer``),
        where the previous step is complete, validation and scheduler included, and Lightning has not
        yet counted the next one: a checkpoint written here restores exactly. Ranks receive the signal
        at different moments (or not at all), so they agree first."""
        if trainer.strategy.reduce_boolean_decision(self.requested, all=False):
            self.last.save(trainer)
            raise Preempted(trainer.global_step, str(self.last.path), self.cause)


class StepProgressBar(RichProgressBar):
    """The rich progress bar, labelled "Training": a run is one endless epoch counted in steps, so
    Lightning's ``Epoch 0/<max_epochs - 1>`` label would read ``Epoch 0/-2``."""

    @override
    def _get_train_description(self, current_epoch: int) -> str:
        return f"{'Training':{len(self.validation_description)}}"


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s" if m else f"{s}s"


class ProgressLines(Callback):
    """Plain progress lines (rank 0) for logs and batch jobs, where a redrawn progress bar shows
    nothing until the end: one line at least every ``every_n_steps`` training steps and at least every
    ``every_s`` seconds (checked after every training and validation batch), one line with the
    results of each validation.

    ``step 1200/2000  train/elbo -2.712  train/lambda/L01 3.2  5.3 steps/s  elapsed 3m46s  left 2m31s``
    """

    SHOWN = ("train/elbo", "train/iwae", "train/lambda/")
    SHOWN_VAL = ("val/nll", "val/kl", "val/elbo", "val/invariance_error", "val/lambda/")

    def __init__(self, every_n_steps: int, every_s: float, stream: TextIO | None = None) -> None:
        self.every_n_steps = every_n_steps
        self.every_s = every_s
        self.stream = stream
        self._start = self._last_time = 0.0
        self._start_step = self._last_step = 0

    def _print(self, trainer: L.Trainer, text: str, training: bool = False) -> None:
        self._last_time = time.monotonic()
        if training:  # the step cadence counts training lines only: they stay at multiples of N
            self._last_step = trainer.global_step
        if trainer.is_global_zero:
            print(f"step {trainer.global_step}/{trainer.max_steps}  {text}", file=self.stream or sys.stdout, flush=True)

    @staticmethod
    def _metrics(trainer: L.Trainer, prefixes: tuple[str, ...]) -> str:
        """``name value`` of the logged metrics starting with ``prefixes``, in the order of the prefixes."""
        metrics = sorted(trainer.callback_metrics.items())
        return "  ".join(f"{k} {float(v):.4g}" for p in prefixes for k, v in metrics if k.startswith(p))

    @override
    def on_train_start(self, trainer: L.Trainer, pl_module: Any) -> None:
        self._start = self._last_time = time.monotonic()
        self._start_step = self._last_step = trainer.global_step

    @override
    def on_train_batch_end(self, trainer: L.Trainer, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        step, now = trainer.global_step, time.monotonic()
        due = (
            step - self._last_step >= self.every_n_steps
            or now - self._last_time >= self.every_s
            or step >= trainer.max_steps
        )
        if not due:
            return
        elapsed = now - self._start
        rate = (step - self._start_step) / elapsed if elapsed > 0 else 0.0
        left = f"  left {_duration((trainer.max_steps - step) / rate)}" if rate > 0 else ""
        self._print(
            trainer,
            f"{self._metrics(trainer, self.SHOWN)}  {rate:.3g} steps/s  elapsed {_duration(elapsed)}{left}",
            training=True,
        )

    @override
    def on_validation_batch_end(
        self, trainer: L.Trainer, pl_module: Any, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        if trainer.state.fn == TrainerFn.FITTING and time.monotonic() - self._last_time >= self.every_s:
            total = trainer.num_val_batches[dataloader_idx] if trainer.num_val_batches else "?"
            self._print(trainer, f"validating: batch {batch_idx + 1}/{total}")

    @override
    def on_validation_end(self, trainer: L.Trainer, pl_module: Any) -> None:
        if trainer.sanity_checking or trainer.state.fn != TrainerFn.FITTING:
            return
        self._print(trainer, f"validation: {self._metrics(trainer, self.SHOWN_VAL)}")
