"""The ``ehf`` command (also ``python -m lightning_ehf``): train, eval, sample, print-config.

Exit codes: 0 success; 2 bad usage / config / data / checkpoint (one line naming the problem);
3 training diverged (non-finite loss or gradient; the last good checkpoint is kept); 75 stopped by
SIGTERM or SIGUSR1 (preempted: ``checkpoints/last.ckpt`` holds the step reached, ``--resume`` continues);
1 anything else.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any, Optional, Sequence

from .errors import ConfigError, NumericalDivergence, UserError

RUN_DIR_ENV = "EHF_RUN_DIR"  # lets DDP child processes (which re-run this command) join rank 0's run
EXIT_PREEMPTED = 75  # sysexits.h EX_TEMPFAIL: a temporary failure, retry later (here: --resume)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ehf", description="Equivariant Hamiltonian Flows on PyTorch Lightning.")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a model; prints the run folder and the final results")
    t.add_argument("-c", "--config", action="append", default=[], metavar="FILE.yaml", help="config files, merged in order")
    t.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. trainer.max_steps=500")
    t.add_argument("--resume", metavar="RUN_DIR|CKPT",
                   help="continue a stopped run from its last checkpoint; -c files and overrides may repeat the "
                        "run's original command, but only trainer.max_steps and progress.* may change")

    pc = sub.add_parser("print-config", help="print the resolved config")
    pc.add_argument("-c", "--config", action="append", default=[], metavar="FILE.yaml")
    pc.add_argument("overrides", nargs="*", metavar="key=value")

    e = sub.add_parser("eval", help="per-row IWAE log-likelihoods of a data file (or the run's test set)")
    e.add_argument("--ckpt", required=True, help="checkpoint (.ckpt) or run folder")
    e.add_argument("--data", help="data file (.npy, .npz, .csv); default: the run's test set (see --split)")
    e.add_argument("--split", choices=("test", "val"),
                   help="instead of --data: the run's test set (the default) or its validation set")
    e.add_argument("--n", type=int, help="use only the first N rows")
    e.add_argument("--iw", type=int, help="importance samples K (default: the run's eval.iw_samples)")
    e.add_argument("--out", help="write log p(q) per row, float64 shape (N,), to this .npy")
    e.add_argument("--json", help="write the summary to this .json")
    e.add_argument("--seed", type=int, default=0)

    s = sub.add_parser("sample", help="draw samples from a trained model")
    s.add_argument("--ckpt", required=True, help="checkpoint (.ckpt) or run folder")
    s.add_argument("--n", type=int, required=True)
    s.add_argument("--out", required=True, help="output .npy, shape (N, d)")
    s.add_argument("--seed", type=int, default=0)

    st = sub.add_parser("study", help="grids of runs: run, status, report (configs/study/)")
    ss = st.add_subparsers(dest="study_command", required=True)
    r = ss.add_parser("run", help="run (or continue) a study: every cell is an ordinary run folder")
    r.add_argument("-c", "--config", required=True, metavar="STUDY.yaml", help="the study file (configs/study/)")
    r.add_argument("overrides", nargs="*", metavar="profile=NAME|key=value",
                   help="profile=quick|full|... picks a profile; other key=value overrides go to every cell")
    r.add_argument("--dir", help="study folder (default runs/study/<study>-<profile>; a rerun continues it)")
    r.add_argument("--launcher", choices=("local", "slurm", "wandb"), default="local",
                   help="local: worker processes here; slurm: a job array (submitit); wandb: write a grid sweep")
    r.add_argument("--workers", type=int, default=1, help="local: cells at once (torch threads = cores ÷ workers)")
    r.add_argument("--cores", type=int, help="local: cores to share among the workers (default: all)")
    r.add_argument("--cluster", choices=("slurm", "local"), default="slurm",
                   help="slurm launcher: submit with sbatch (slurm) or try the path with submitit's local executor")
    r.add_argument("--no-wait", action="store_true", help="slurm launcher: submit and return (then: ehf study status)")
    for flag, key, typ in (("--partition", "partition", str), ("--time-min", "time_min", int),
                           ("--cpus-per-cell", "cpus_per_cell", int), ("--gpus-per-cell", "gpus_per_cell", int)):
        r.add_argument(flag, dest=f"slurm_{key}", type=typ, help=f"slurm launcher: overrides the study file's slurm.{key}")
    r.add_argument("--dry-run", action="store_true", help="list the cells, their state and commands; run nothing")
    for name, text in (("status", "done / running / failed / pending cells of a study folder"),
                       ("report", "results.csv, results.md and plots of a study folder")):
        x = ss.add_parser(name, help=text)
        x.add_argument("dir", metavar="DIR")
    c = ss.add_parser("cell", help="run one cell of a study folder (what a W&B sweep agent calls)")
    c.add_argument("dir", metavar="DIR")
    c.add_argument("cell", metavar="cell=NAME")

    b = sub.add_parser("bench", help="speed and memory against the reference path and NSF (benchmarks/)")
    b.add_argument("--quick", action="store_true", help="fewer repeats: a few minutes on 2 CPU cores")
    b.add_argument("--quality", action="store_true", help="also time to quality and the default runs (minutes)")
    b.add_argument("--no-memory", action="store_true", help="skip the peak-memory probes")
    b.add_argument("--out", help="folder for bench.json and bench.md (default runs/bench/<time>)")
    b.add_argument("--only", help="comma-separated sections to run: training, eval, memory, scaling, particles, "
                                  "compile (only when named: minutes of compiling), quality")
    return p


# -- train --------------------------------------------------------------------------------------


def _inherited_run_dir() -> Optional[Path]:
    """The run folder of rank 0, for the DDP child processes Lightning launches (LOCAL_RANK > 0)."""
    if int(os.environ.get("LOCAL_RANK", 0)) > 0 and os.environ.get(RUN_DIR_ENV):
        return Path(os.environ[RUN_DIR_ENV])
    return None


def _external_launch() -> Optional[tuple[str, int, int]]:
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


def _new_run_dir(cfg: Any, run_id: str) -> Path:
    inherited = _inherited_run_dir()
    if inherited is not None:
        return inherited
    launch = _external_launch()
    if launch is not None and not cfg.run.dir:
        # each process would name its own timestamped folder: checkpoints and the test would disagree
        name, _, world = launch
        raise ConfigError(f"run.dir: must be set when {name} starts {world} processes, so that all of them use "
                          f"the same run folder (on a file system every node sees), e.g. run.dir=/shared/runs/<name>")
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


RESUMABLE_KEYS = ("trainer.max_steps", "progress.mode", "progress.every_n_steps", "progress.every_s")


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


def _resumable_overrides(files: Sequence[str], overrides: Sequence[str], saved_yaml: Path, run_dir: Path) -> list[str]:
    """What applies to a resumed run: the ``RESUMABLE_KEYS`` that ``files`` and ``overrides`` set, as
    overrides. Every other key they set must keep the run's value, so that a job script can rerun its
    original command with ``--resume``; a changed one raises UserError naming the key and both values."""
    from omegaconf import OmegaConf

    from .config.load import explicit_keys, load_config

    def value(cfg: Any, key: str) -> Any:
        node = OmegaConf.select(cfg, key)
        return OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node

    saved, given = load_config([saved_yaml]), load_config(files, overrides)
    keep = []
    for key, where in explicit_keys(files, overrides).items():
        new = value(given, key)
        if key in RESUMABLE_KEYS:
            keep.append(f"{key}={new}")
        elif not _same_as_saved(key, new, value(saved, key), run_dir):
            raise UserError(f"{key}: cannot be changed when resuming (the run has {value(saved, key)!r}, {where} sets "
                            f"{new!r}; only {', '.join(RESUMABLE_KEYS)} can)")
    return keep


def _resume_source(path: str, files: Sequence[str], overrides: Sequence[str]) -> tuple[Path, Path, Any, dict[str, Any]]:
    """(run folder, checkpoint, config, checkpoint dict) of a run to resume; ``files`` and ``overrides``
    may repeat the run's original command (see :func:`_resumable_overrides`)."""
    import tempfile

    from .checkpoints import load_checkpoint
    from .config.load import load_config
    from .errors import CheckpointError

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
    from omegaconf import OmegaConf

    with tempfile.TemporaryDirectory() as tmp:
        saved = Path(tmp) / "config.yaml"
        saved.write_text(OmegaConf.to_yaml(OmegaConf.create(ckpt["hyper_parameters"]["config"])))
        cfg = load_config([saved], _resumable_overrides(files, overrides, saved, run_dir))
    return run_dir, ckpt_path, cfg, ckpt


def _final_metrics(trainer: Any, module: Any, wall_time: float, last_val: dict[str, float],
                   best_step: Optional[int]) -> dict[str, Any]:
    """metrics.json: the last validation's ``val/*``, the ``test/*`` of the best checkpoint, and
    ``best_step`` (the step of that checkpoint), ``max_steps`` (the cap), ``stopped_early`` (by
    ``trainer.patience``), ``steps``, ``params`` (trainable parameters), ``wall_time_s``."""
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
    out["stopped_early"] = bool(trainer.global_step < trainer.max_steps)
    out["params"] = sum(p.numel() for p in module.model.parameters() if p.requires_grad)
    out["iw_samples"] = module.iw_samples
    return dict(sorted(out.items()))


def _checkpoint_step(path: str) -> Optional[int]:
    if not path or not Path(path).is_file():
        return None
    from .checkpoints import load_checkpoint

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
    shown = ["test/nll", "test/kl", "test/elbo", "test/invariance_error", "test/invariance_noise",
             "test/equivariance_error"]
    shown += sorted(k for k in metrics if k.startswith(("test/bracket_rms", "test/lambda")))
    if metrics.get("train/nonfinite_skips"):
        shown.append("train/nonfinite_skips")
    for key in shown + ["steps", "wall_time_s"]:
        if key in metrics:
            v = metrics[key]
            table.add_row(key, f"{v:.4g}" if isinstance(v, float) else str(v))
    Console().print(table)


def _quiet_known_noise() -> None:
    """Drop third-party messages that say nothing about this run (advertising, internal deprecations)."""
    import logging
    import warnings

    class _DropAdverts(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            return "litlogger" not in record.getMessage()

    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(_DropAdverts())
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")
    warnings.filterwarnings("ignore", message=r".*DistributedSampler.*trainer\.test.*")


def cmd_train(config_files: Sequence[str], overrides: Sequence[str], resume: Optional[str] = None,
              extra_callbacks: Sequence[Any] = ()) -> int:
    """``ehf train``; ``extra_callbacks``: Lightning callbacks added to the trainer (programmatic use)."""
    from .build import check_logger, make_datamodule, make_module
    from .checkpoints import check_state_dict

    _quiet_known_noise()
    from .config.load import load_config, validate

    ckpt_path: Optional[Path] = None
    resume_step: Optional[int] = None
    if resume:
        run_dir, ckpt_path, cfg, ckpt = _resume_source(resume, config_files, overrides)
        run_id = str(ckpt["hyper_parameters"].get("run_id") or secrets.token_hex(4))
        resume_step = int(ckpt.get("global_step", 0))
    else:
        cfg = load_config(config_files, overrides)
        run_id = secrets.token_hex(4)
    validate(cfg)
    if cfg.data.path:  # the saved config must find the file from any working directory
        cfg.data.path = str(Path(cfg.data.path).expanduser().resolve())
    check_logger(cfg)
    import lightning as L

    L.seed_everything(cfg.seed, workers=True, verbose=False)  # before building: initial weights
    datamodule = make_datamodule(cfg)
    module = make_module(cfg, datamodule, run_id)
    if resume:
        check_state_dict(module, ckpt["state_dict"], ckpt_path)
    else:
        run_dir = _new_run_dir(cfg, run_id)
    set_env = os.environ.get(RUN_DIR_ENV) != str(run_dir)
    os.environ[RUN_DIR_ENV] = str(run_dir)  # DDP children re-run this command: same folder
    try:
        return _train(cfg, module, datamodule, run_dir, run_id, ckpt_path, resume_step, list(extra_callbacks))
    finally:
        if set_env:
            os.environ.pop(RUN_DIR_ENV, None)


def _train(cfg: Any, module: Any, datamodule: Any, run_dir: Path, run_id: str, ckpt_path: Optional[Path],
           resume_step: Optional[int], extra_callbacks: Optional[list] = None) -> int:
    from .build import make_trainer
    from .config.load import save_config
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
        print(f"{verb} {run_dir}\ndata: {datamodule.describe()}\n{_global_batch(cfg, trainer)}", flush=True)

    preemption = next(c for c in trainer.callbacks if isinstance(c, Preemption))
    preemption.install()  # a SIGTERM or SIGUSR1 from now on stops the run at its next step boundary
    try:
        return _fit_and_test(trainer, module, datamodule, run_dir, ckpt_path, preemption)
    finally:
        preemption.restore()


def _global_batch(cfg: Any, trainer: Any) -> str:
    """``global batch: 1024 = 128 per device × 4 devices × 2 nodes`` (``data.batch_size`` is per process)."""
    batch, devices, nodes = int(cfg.data.batch_size), int(trainer.num_devices), int(trainer.num_nodes)

    def count(n: int, word: str) -> str:
        return f"{n} {word}{'s' if n != 1 else ''}"

    return (f"global batch: {batch * devices * nodes} = {batch} per device × {count(devices, 'device')} "
            f"× {count(nodes, 'node')}")


def _fit_and_test(trainer: Any, module: Any, datamodule: Any, run_dir: Path, ckpt_path: Optional[Path],
                  preemption: Any) -> int:
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    from .errors import Preempted

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
        best = next((c.best_model_path for c in trainer.callbacks if isinstance(c, ModelCheckpoint)), "")
        trainer.test(module, datamodule=datamodule, ckpt_path=best or None, verbose=False)
    except NumericalDivergence as e:
        kept = f"; last good checkpoint: {last}" if last.is_file() else "; no checkpoint had been written yet"
        print(f"ehf train: error: {e}{kept}", file=sys.stderr)
        return 3
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
        return EXIT_PREEMPTED
    metrics = _final_metrics(trainer, module, time.time() - start, last_val, _checkpoint_step(best))
    if trainer.is_global_zero:
        (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        _print_results(run_dir, metrics)
        print(f"run folder: {run_dir}")
    return 0


# -- eval / sample ------------------------------------------------------------------------------


def cmd_eval(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from .checkpoints import load_run
    from .data.files import load_array

    run = load_run(args.ckpt)
    model, cfg = run.model, run.config
    if args.data and args.split:
        raise UserError("--data and --split: give one of them (--split picks a set of the run instead of a file)")
    if args.data:
        if run.frame is not None:  # particles as given; the model sees their centre-of-mass-free coordinates
            rows = load_array(args.data, expected_dim=run.frame.full_dim, against="the checkpoint's particles")
            q = run.frame.to_subspace(torch.from_numpy(rows))
        else:
            q = torch.from_numpy(load_array(args.data, expected_dim=run.dim, against="the checkpoint's model"))
        source = str(args.data)
    else:
        split = args.split or "test"
        q = run.split_data(split)
        source = f"{split} set of the run's config"
    if args.n is not None:
        if args.n < 1:
            raise UserError(f"--n must be positive, got {args.n}")
        q = q[: args.n]
    k = args.iw if args.iw is not None else int(cfg["eval"]["iw_samples"])
    if k < 1:
        raise UserError(f"--iw must be positive, got {k}")
    torch.manual_seed(args.seed)
    model = model.double()
    q = q.double()
    chunk = int(cfg["eval"]["iw_chunk"])
    with torch.no_grad():
        logp = torch.cat([model.iwae(q[i : i + 1024], k, chunk) for i in range(0, q.shape[0], 1024)]).cpu().numpy()
    summary: dict[str, Any] = {
        "source": source, "n": int(q.shape[0]), "iw_samples": k, "nll": float(-logp.mean()),
        "nll_stderr": float(logp.std(ddof=1) / np.sqrt(len(logp))) if len(logp) > 1 else 0.0,
    }
    if run.entropy is not None and not args.data:
        summary["kl"] = summary["nll"] - run.entropy
        target_name = cfg["data"].get("target")
        if target_name is not None:  # the same KL paired row by row with the target's density (smaller error)
            from .core.frames import FramedTarget
            from .core.targets import make_target

            target = make_target(target_name)
            target = FramedTarget(target, run.frame) if run.frame is not None else target
            with torch.no_grad():
                diff = target.log_prob(q).cpu().numpy() - logp
            summary["kl_paired"] = float(diff.mean())
            summary["kl_paired_stderr"] = float(diff.std(ddof=1) / np.sqrt(len(diff))) if len(diff) > 1 else 0.0
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        np.save(args.out, logp.astype(np.float64))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary))
    return 0


def cmd_sample(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from .checkpoints import load_run

    if args.n < 1:
        raise UserError(f"--n must be positive, got {args.n}")
    run = load_run(args.ckpt)
    torch.manual_seed(args.seed)
    with torch.no_grad():
        x = run.model.sample(args.n).double().cpu()
    note = ""
    if run.frame is not None:
        x = run.frame.from_subspace(x)
        note = f" ({run.frame.n_particles} particles × {run.frame.particle_dim}, centre of mass at the origin)"
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    np.save(args.out, x.numpy())
    print(f"wrote {x.shape[0]}×{x.shape[1]} samples to {args.out}{note}")
    return 0


def cmd_bench(args: argparse.Namespace, argv: Optional[Sequence[str]]) -> int:
    import importlib.util

    suite_path = Path(__file__).resolve().parents[1] / "benchmarks" / "suite.py"
    if not suite_path.is_file():
        raise UserError(f"ehf bench needs the benchmark definitions of a source checkout ({suite_path} not found)")
    spec = importlib.util.spec_from_file_location("ehf_benchmarks", suite_path)
    suite = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(suite)
    words = list(argv) if argv is not None else sys.argv[1:]
    unknown = sorted(set(args.only.split(",")) - set(suite.SECTIONS)) if args.only else []
    if unknown:
        raise UserError(f"--only: unknown section(s) {', '.join(unknown)}; choose from {', '.join(suite.SECTIONS)}")
    res = suite.run(quick=args.quick, quality=args.quality, out=Path(args.out) if args.out else None,
                    memory=not args.no_memory, command="ehf " + " ".join(words),
                    only=args.only.split(",") if args.only else None)
    print(Path(res["out"], "bench.md").read_text())
    print(f"written: {res['out']}/bench.json and bench.md")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "train":
            return cmd_train(args.config, args.overrides, args.resume)
        if args.command == "print-config":
            from .config.load import load_config, to_yaml, validate

            cfg = load_config(args.config, args.overrides)
            validate(cfg)
            print(to_yaml(cfg), end="")
            return 0
        if args.command == "eval":
            return cmd_eval(args)
        if args.command == "sample":
            return cmd_sample(args)
        if args.command == "bench":
            return cmd_bench(args, argv)
        if args.command == "study":
            from .study.command import cmd_study

            return cmd_study(args, argv)
    except UserError as e:
        sub = f" {args.study_command}" if args.command == "study" else ""
        print(f"ehf {args.command}{sub}: error: {e}", file=sys.stderr)
        return 2
    return 1


def entry() -> None:
    try:
        sys.exit(main())
    except BrokenPipeError:  # the reader went away (``ehf ... | head``): stop quietly, as other tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)


if __name__ == "__main__":
    entry()
