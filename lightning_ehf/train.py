"""The train path: a validated config in, a trained and tested run folder out (``ehf train``, studies and
the benchmarks all come through :func:`train`).

A run folder ``runs/<experiment>/<timestamp>-<id>/`` holds ``config.yaml``, ``checkpoints/{best,last}.ckpt``,
``metrics.csv``, ``metrics.json`` and ``plots/``. :func:`resume_point` finds a stopped run, and :func:`train`
continues it exactly where it stopped.
"""

from __future__ import annotations

import json
import os
import secrets
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from .build import check_logger, make_datamodule, make_module, make_trainer, resolve_data_file
from .checkpoints import check_state_dict, load_checkpoint
from .config.load import explicit_keys, flatten, from_saved, load_config, override_value, save_config, to_container
from .config.schema import Config
from .core.constraints import is_infeasible_score
from .errors import (
    EXIT_DIVERGED,
    EXIT_PREEMPTED,
    CheckpointError,
    ConfigError,
    NumericalDivergence,
    Preempted,
    UserError,
)
from .lit.callbacks import log_to_wandb
from .lit.module import schedule_change
from .tracking import fresh_run_id

__all__ = ["RESUMABLE_KEYS", "ResumePoint", "RunResult", "quiet_known_noise", "resume_point", "train"]

RUN_DIR_ENV = "EHF_RUN_DIR"  # lets DDP child processes (which re-run the command) join rank 0's run


def _inherited_run_dir() -> Path | None:
    """The run folder of rank 0, for the DDP child processes Lightning launches (LOCAL_RANK > 0)."""
    if int(os.environ.get("LOCAL_RANK", 0)) > 0 and os.environ.get(RUN_DIR_ENV):
        return Path(os.environ[RUN_DIR_ENV])
    return None


def _external_launch() -> tuple[str, int, int] | None:
    """(launcher, global rank, number of processes) when torchrun or SLURM's srun started this process as
    one of several (the environments Lightning detects the same way), else None."""
    from lightning.fabric.plugins.environments import SLURMEnvironment, TorchElasticEnvironment

    if TorchElasticEnvironment.detect():
        launch = ("torchrun", int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)))
    elif SLURMEnvironment.detect():
        launch = ("srun", int(os.environ.get("SLURM_PROCID", 0)), int(os.environ.get("SLURM_NTASKS", 1)))
    else:
        return None
    return launch if launch[2] > 1 else None


def _new_run_dir(cfg: Config, run_id: str) -> Path:
    inherited = _inherited_run_dir()
    if inherited is not None:
        return inherited
    launch = _external_launch()
    if launch is not None and not cfg.run.dir:
        # each process would name its own timestamped folder: checkpoints and the test would disagree
        name, _, world = launch
        raise ConfigError(
            f"run.dir: must be set when {name} starts {world} processes, so that all of them use "
            f"the same run folder (on a file system every node sees), e.g. run.dir=/shared/runs/<name>"
        )
    if cfg.run.dir:
        run_dir = Path(cfg.run.dir)
        # other ranks may already see the files rank 0 writes at start: only rank 0 checks
        if (launch is None or launch[1] == 0) and run_dir.exists() and any(run_dir.iterdir()):
            raise UserError(f"run.dir: {run_dir} already exists and is not empty; choose another folder or --resume it")
    else:
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        run_dir = Path(cfg.run.root) / cfg.experiment / f"{stamp}-{run_id}"
        if run_dir.exists():  # same second and same random id: never share a folder
            raise UserError(f"run folder {run_dir} exists already; try again")
    return run_dir


RESUMABLE_KEYS = (
    "trainer.max_steps",
    "trainer.max_time_s",
    "progress.mode",
    "progress.every_n_steps",
    "progress.every_s",
)
RESUMABLE_PREFIXES = ("logger.wandb.",)  # where and under which names the run is logged; not its results


def _same_as_saved(key: str, given: Any, saved: Any, run_dir: Path) -> bool:
    """Whether an override repeated on ``--resume`` names the value the run already has. Paths are
    compared resolved: the run stored ``data.path`` absolute, and ``run.dir`` is the folder resumed."""
    if given == saved:
        return True
    if key == "data.path" and given and saved:
        return Path(given).expanduser().resolve() == Path(saved).expanduser().resolve()
    if key == "run.dir" and given:
        return Path(given).expanduser().resolve() == run_dir.resolve()
    return False


def _resumable_overrides(files: Sequence[str], overrides: Sequence[str], saved: Config, run_dir: Path) -> list[str]:
    """What applies to a resumed run: the ``RESUMABLE_KEYS`` that ``files`` and ``overrides`` set, as
    overrides. Every other key they set must keep the run's value, so that a job script can rerun its
    original command with ``--resume``; a changed one raises UserError naming the key and both values."""
    saved_values, given = flatten(to_container(saved)), flatten(to_container(load_config(files, overrides)))
    keep = []
    for key, where in explicit_keys(files, overrides).items():
        new, old = given.get(key), saved_values.get(key)
        if key in RESUMABLE_KEYS or key.startswith(RESUMABLE_PREFIXES):
            keep.append(f"{key}={override_value(new)}")
        elif not _same_as_saved(key, new, old, run_dir):
            raise UserError(
                f"{key}: cannot be changed when resuming (the run has {old!r}, {where} sets "
                f"{new!r}; only {', '.join(RESUMABLE_KEYS)} and logger.wandb.* can)"
            )
    return keep


@dataclass
class ResumePoint:
    """A stopped run to continue: its folder, its checkpoint, the config it continues with, the checkpoint."""

    run_dir: Path
    checkpoint: Path
    config: Config
    state: dict[str, Any]


def resume_point(path: str | Path, files: Sequence[str] = (), overrides: Sequence[str] = ()) -> ResumePoint:
    """The run to resume at ``path`` (a run folder or one of its checkpoints). ``files`` and ``overrides``
    may repeat the run's original command (only ``RESUMABLE_KEYS`` may change)."""
    p = Path(path)
    if p.is_dir():
        run_dir, ckpt_path = p, p / "checkpoints" / "last.ckpt"
        if not ckpt_path.is_file():
            raise CheckpointError(f"--resume: no checkpoints/last.ckpt in {p}: nothing to resume")
    elif p.is_file():
        if p.parent.name != "checkpoints":
            raise CheckpointError(f"--resume: {p} is not inside a run folder's checkpoints/")
        run_dir, ckpt_path = p.parent.parent, p
    else:
        raise CheckpointError(f"--resume: {p} not found")
    ckpt = load_checkpoint(ckpt_path)
    saved = from_saved(ckpt["hyper_parameters"]["config"])
    cfg = load_config(overrides=_resumable_overrides(files, overrides, saved, run_dir), base=to_container(saved))
    return ResumePoint(run_dir, ckpt_path, cfg, ckpt)


def _final_metrics(
    trainer: Any,
    module: Any,
    wall_time: float,
    last_val: dict[str, float],
    best_step: int | None,
    best_val_nll: float | None,
) -> dict[str, Any]:
    """metrics.json: the last validation's ``val/*``, the ``test/*`` of the best checkpoint, and
    ``best_step`` (the step of that checkpoint), ``best_val_nll`` (its validation NLL, the lowest
    ``val/nll_iw{K}``), ``max_steps`` (the cap), ``stopped_early`` (by ``trainer.patience``), ``stopped_by_time`` (by
    ``trainer.max_time_s``), ``steps``,
    ``params`` (trainable parameters), ``wall_time_s``."""
    out: dict[str, Any] = dict(last_val)
    for key, value in trainer.callback_metrics.items():
        if key.startswith("test/"):
            out[key] = float(value)
    nll_key = f"test/{module.nll_key}"
    if nll_key in out:
        out["test/nll"] = out[nll_key]
        if "test/train_nll" in out:
            out["test/nll_gap"] = out["test/nll"] - out["test/train_nll"]
    out["train/nonfinite_skips"] = int(module.nonfinite_skips)
    out["wall_time_s"] = round(wall_time, 2)
    out["steps"] = int(trainer.global_step)
    out["max_steps"] = int(trainer.max_steps)
    out["best_step"] = best_step
    out["best_val_nll"] = best_val_nll
    from lightning.pytorch.callbacks import Timer

    timer = next((c for c in trainer.callbacks if isinstance(c, Timer)), None)  # there only with trainer.max_time_s
    remaining = timer.time_remaining() if timer is not None else None
    out["stopped_by_time"] = remaining is not None and remaining <= 0
    out["stopped_early"] = bool(trainer.global_step < trainer.max_steps and not out["stopped_by_time"])
    out["params"] = sum(p.numel() for p in module.model.parameters() if p.requires_grad)
    out["iw_samples"] = module.iw_samples
    return dict(sorted(out.items()))


def _checkpoint_step(path: str) -> int | None:
    if not path or not Path(path).is_file():
        return None
    return int(load_checkpoint(path).get("global_step", 0))


def _last_validation(metrics_csv: Path) -> dict[str, float]:
    """The ``val/*`` values of the last validation row of a run's metrics.csv (empty if none)."""
    import csv

    if not metrics_csv.is_file():
        return {}
    with open(metrics_csv, newline="") as f:
        rows = [{k: float(v) for k, v in r.items() if k.startswith("val/") and v != ""} for r in csv.DictReader(f)]
    return next((r for r in reversed(rows) if r), {})


def _print_results(run_dir: Path, metrics: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"results  ({run_dir})")
    table.add_column("metric")
    table.add_column("value", justify="right")
    shown = [
        "test/nll",
        "test/kl",
        "test/elbo",
        "test/invariance_error",
        "test/invariance_noise",
        "test/equivariance_error",
    ]
    shown += sorted(k for k in metrics if k.startswith(("test/bracket_rms", "test/lambda")))
    if metrics.get("train/nonfinite_skips"):
        shown.append("train/nonfinite_skips")
    for key in shown + ["steps", "wall_time_s"]:
        if key in metrics:
            v = metrics[key]
            table.add_row(key, f"{v:.4g}" if isinstance(v, float) else str(v))
    Console().print(table)


def quiet_known_noise() -> None:
    """Drop third-party messages that say nothing about this run (advertising, internal deprecations)."""
    import logging
    import warnings

    class _DropAdverts(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            return "litlogger" not in record.getMessage()

    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(_DropAdverts())
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")
    warnings.filterwarnings("ignore", message=r".*DistributedSampler.*trainer\.test.*")


@dataclass
class RunResult:
    """What :func:`train` did: its exit code (0 done, 3 diverged, 75 preempted), the run folder, and the
    final metrics (``metrics.json``; empty unless the run finished)."""

    exit_code: int
    run_dir: Path
    metrics: dict[str, Any] = field(default_factory=dict)


def train(cfg: Config | None, resume: ResumePoint | None = None, callbacks: Sequence[Any] = ()) -> RunResult:
    """Train ``cfg`` into a new run folder (or continue ``resume``, with its config), test the best
    checkpoint, write ``metrics.json`` and print the results. ``callbacks``: extra Lightning callbacks.

    Raises :class:`~lightning_ehf.errors.UserError` for bad input before anything is written."""
    quiet_known_noise()
    if resume is not None:
        cfg = resume.config
        run_id = str(resume.state["hyper_parameters"].get("run_id") or secrets.token_hex(4))
        resume_step: int | None = int(resume.state.get("global_step", 0))
        note = schedule_change(from_saved(resume.state["hyper_parameters"]["config"]), cfg, resume_step)
        if note and int(os.environ.get("LOCAL_RANK", 0)) == 0:
            print(note, flush=True)
    else:
        run_id, resume_step = fresh_run_id(), None
    cfg = resolve_data_file(cfg)
    check_logger(cfg)
    import lightning as L

    L.seed_everything(cfg.seed, workers=True, verbose=False)  # before building: initial weights
    datamodule = make_datamodule(cfg)
    module = make_module(cfg, datamodule, run_id)
    if resume is not None:
        check_state_dict(module, resume.state["state_dict"], resume.checkpoint)
        run_dir = resume.run_dir
    else:
        run_dir = _new_run_dir(cfg, run_id)
    set_env = os.environ.get(RUN_DIR_ENV) != str(run_dir)
    os.environ[RUN_DIR_ENV] = str(run_dir)  # DDP children re-run this command: same folder
    ckpt_path = resume.checkpoint if resume is not None else None
    try:
        code, metrics = _train(cfg, module, datamodule, run_dir, run_id, ckpt_path, resume_step, list(callbacks))
        return RunResult(code, run_dir, metrics)
    finally:
        if set_env:
            os.environ.pop(RUN_DIR_ENV, None)


def _train(
    cfg: Config,
    module: Any,
    datamodule: Any,
    run_dir: Path,
    run_id: str,
    ckpt_path: Path | None,
    resume_step: int | None,
    extra_callbacks: list | None = None,
) -> tuple[int, dict[str, Any]]:
    from .lit.callbacks import Preemption

    try:  # before anything is written: Lightning refuses some combinations only here
        trainer = make_trainer(cfg, run_dir, run_id, extra_callbacks=extra_callbacks, resume_step=resume_step)
    except (ValueError, TypeError, RuntimeError) as e:
        if isinstance(e, UserError):
            raise
        raise ConfigError(f"trainer: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    if trainer.global_rank == 0:  # the launcher's rank (Lightning, torchrun, srun), known before fit()
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir / "config.yaml")
        verb = f"resuming from step {resume_step} in" if ckpt_path else "run folder:"
        coordinates = module.model.data_map.describe()
        data = datamodule.describe() + (f"; {coordinates}" if coordinates else "")
        print(f"{verb} {run_dir}\ndata: {data}\n{_global_batch(cfg, trainer)}", flush=True)

    preemption = next(c for c in trainer.callbacks if isinstance(c, Preemption))
    preemption.install()  # a SIGTERM, SIGUSR1 or SIGUSR2 from now on stops the run at its next step boundary
    try:
        return _fit_and_test(trainer, module, datamodule, run_dir, ckpt_path, preemption)
    finally:
        preemption.restore()


def _global_batch(cfg: Config, trainer: Any) -> str:
    """``global batch: 1024 = 128 per device × 4 devices × 2 nodes`` (``data.batch_size`` is per process)."""
    batch, devices, nodes = int(cfg.data.batch_size), int(trainer.num_devices), int(trainer.num_nodes)

    def count(n: int, word: str) -> str:
        return f"{n} {word}{'s' if n != 1 else ''}"

    accumulate = int(trainer.accumulate_grad_batches)
    text = (
        f"global batch: {batch * devices * nodes * accumulate} = {batch} per device × {count(devices, 'device')} "
        f"× {count(nodes, 'node')}"
    )
    return text + (f" × {accumulate} accumulated batches per optimiser step" if accumulate > 1 else "")


def _fit_and_test(
    trainer: Any, module: Any, datamodule: Any, run_dir: Path, ckpt_path: Path | None, preemption: Any
) -> tuple[int, dict[str, Any]]:
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    start = time.time()
    last = run_dir / "checkpoints" / "last.ckpt"
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=str(ckpt_path) if ckpt_path else None)
        if trainer.strategy.reduce_boolean_decision(preemption.requested, all=False):
            # the signal came during the last step: training is complete, the test is left for --resume
            raise Preempted(trainer.global_step, str(last), preemption.cause)
        last_val = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
        if not last_val and trainer.is_global_zero:  # resumed after its last validation
            last_val = _last_validation(run_dir / "metrics.csv")
        selector = next((c for c in trainer.callbacks if isinstance(c, ModelCheckpoint)), None)
        best = selector.best_model_path if selector is not None else ""
        best_score = selector.best_model_score if selector is not None else None
        if (
            selector is not None
            and selector.monitor == "val/selection"
            and best_score is not None
            and is_infeasible_score(best_score)
        ):
            best_score = None  # no validation met the constraint: best_val_nll says so by its absence
        trainer.test(module, datamodule=datamodule, ckpt_path=best or None, verbose=False)
    except NumericalDivergence as e:
        kept = f"; last good checkpoint: {last}" if last.is_file() else "; no checkpoint had been written yet"
        print(f"ehf train: error: {e}{kept}", file=sys.stderr)
        return EXIT_DIVERGED, {}
    except (Preempted, SIGTERMException) as e:
        # SIGTERMException: Lightning's own handler stopped fit() before ours was installed, or test()
        if isinstance(e, Preempted):
            saved = str(e)
        elif last.is_file():
            saved = f"stopped by SIGTERM at step {trainer.global_step}; last checkpoint: {last}"
        else:
            saved = "stopped by SIGTERM before the first checkpoint: nothing to resume, start the run again"
        resume = f"; continue with: ehf train --resume {run_dir}" if last.is_file() else ""
        if trainer.is_global_zero:
            print(f"ehf train: preempted: {saved}{resume}", file=sys.stderr, flush=True)
        return EXIT_PREEMPTED, {}
    metrics = _final_metrics(
        trainer,
        module,
        time.time() - start,
        last_val,
        _checkpoint_step(best),
        None if best_score is None else float(best_score),
    )
    log_to_wandb(trainer, {k: metrics[k] for k in ("test/nll", "test/nll_gap") if k in metrics})  # the sweep's metric
    if trainer.is_global_zero:
        (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        _print_results(run_dir, metrics)
        print(f"run folder: {run_dir}")
    return 0, metrics
