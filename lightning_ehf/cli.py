"""The ``ehf`` command (also ``python -m lightning_ehf``): train, eval, sample, print-config.

Exit codes: 0 success; 2 bad usage / config / data / checkpoint (one line naming the problem);
3 training diverged (non-finite loss or gradient; the last good checkpoint is kept); 75 stopped by
SIGTERM, SIGUSR1 or SIGUSR2 (preempted: ``checkpoints/last.ckpt`` holds the step reached, ``--resume`` continues);
1 anything else.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from .errors import EXIT_PREEMPTED, UserError

__all__ = ["EXIT_PREEMPTED", "entry", "main"]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ehf", description="Equivariant Hamiltonian Flows on PyTorch Lightning.")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a model; prints the run folder and the final results")
    t.add_argument(
        "-c", "--config", action="append", default=[], metavar="FILE.yaml", help="config files, merged in order"
    )
    t.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. trainer.max_steps=500")
    t.add_argument(
        "--resume",
        metavar="RUN_DIR|CKPT",
        help="continue a stopped run from its last checkpoint; -c files and overrides may repeat the "
        "run's original command, but only trainer.max_steps and progress.* may change",
    )

    pc = sub.add_parser("print-config", help="print the resolved config")
    pc.add_argument("-c", "--config", action="append", default=[], metavar="FILE.yaml")
    pc.add_argument("overrides", nargs="*", metavar="key=value")

    e = sub.add_parser("eval", help="per-row IWAE log-likelihoods of a data file (or the run's test set)")
    e.add_argument("--ckpt", required=True, help="checkpoint (.ckpt) or run folder")
    e.add_argument("--data", help="data file (.npy, .npz, .csv); default: the run's test set (see --split)")
    e.add_argument(
        "--split",
        choices=("test", "val"),
        help="instead of --data: the run's test set (the default) or its validation set",
    )
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
    r.add_argument(
        "overrides",
        nargs="*",
        metavar="profile=NAME|key=value",
        help="profile=quick|full|... picks a profile; other key=value overrides go to every cell",
    )
    r.add_argument("--dir", help="study folder (default runs/study/<study>-<profile>; a rerun continues it)")
    r.add_argument(
        "--launcher",
        choices=("local", "slurm", "wandb"),
        default="local",
        help="local: worker processes here; slurm: a job array (submitit); wandb: write a grid sweep",
    )
    r.add_argument("--workers", type=int, default=1, help="local: cells at once (torch threads = cores ÷ workers)")
    r.add_argument("--cores", type=int, help="local: cores to share among the workers (default: all)")
    r.add_argument(
        "--cluster",
        choices=("slurm", "local"),
        default="slurm",
        help="slurm launcher: submit with sbatch (slurm) or try the path with submitit's local executor",
    )
    r.add_argument("--no-wait", action="store_true", help="slurm launcher: submit and return (then: ehf study status)")
    for flag, key, typ in (
        ("--partition", "partition", str),
        ("--time-min", "time_min", int),
        ("--cpus-per-cell", "cpus_per_cell", int),
        ("--gpus-per-cell", "gpus_per_cell", int),
    ):
        r.add_argument(
            flag, dest=f"slurm_{key}", type=typ, help=f"slurm launcher: overrides the study file's slurm.{key}"
        )
    r.add_argument("--dry-run", action="store_true", help="list the cells, their state and commands; run nothing")
    for name, text in (
        ("status", "done / running / failed / pending cells of a study folder"),
        ("report", "results.csv, results.md and plots of a study folder"),
    ):
        x = ss.add_parser(name, help=text)
        x.add_argument("dir", metavar="DIR")
    c = ss.add_parser("cell", help="run one cell of a study folder (what a W&B sweep agent calls)")
    c.add_argument("dir", metavar="DIR")
    c.add_argument("cell", metavar="cell=NAME")

    b = sub.add_parser("bench", help="speed and memory against the reference path and NSF (benchmarks/)")
    b.add_argument("--quick", action="store_true", help="fewer repeats: a few minutes on 2 CPU cores")
    b.add_argument("--quality", action="store_true", help="also time to quality and the default runs (minutes)")
    b.add_argument("--no-memory", action="store_true", help="skip the peak-memory probes")
    b.add_argument(
        "--out", help="folder for bench.json and bench.md (default ./runs/bench/<time>, under the working directory)"
    )
    b.add_argument(
        "--only",
        help="comma-separated sections to run: training, eval, memory, scaling, particles, "
        "compile (only when named: minutes of compiling), quality",
    )
    return p


# -- commands -------------------------------------------------------------------------------------


def _loaded(args: argparse.Namespace):
    """The config of ``-c`` files and overrides, with W&B's own environment variables for the ``logger.wandb``
    keys they leave unset (as ``ehf train`` runs it)."""
    from .config.load import explicit_keys, load_config
    from .tracking import apply_wandb_environment

    cfg = load_config(args.config, args.overrides)
    apply_wandb_environment(cfg, explicit_keys(args.config, args.overrides))
    return cfg


def cmd_train(args: argparse.Namespace) -> int:
    from .train import resume_point, train

    if args.resume:
        result = train(None, resume=resume_point(args.resume, args.config, args.overrides))
    else:
        result = train(_loaded(args))
    return result.exit_code


def cmd_print_config(args: argparse.Namespace) -> int:
    from .build import resolve_data_file
    from .config.load import to_yaml

    print(to_yaml(resolve_data_file(_loaded(args), absolute=False)), end="")
    return 0


# -- eval / sample ------------------------------------------------------------------------------


def cmd_eval(args: argparse.Namespace) -> int:
    from .evaluate import evaluate, load_run, rows_to_score

    if args.data and args.split:
        raise UserError("--data and --split: give one of them (--split picks a set of the run instead of a file)")
    for flag in ("n", "iw"):
        if getattr(args, flag) is not None and getattr(args, flag) < 1:
            raise UserError(f"--{flag} must be positive, got {getattr(args, flag)}")
    run = load_run(args.ckpt)
    q, source = rows_to_score(run, args.data, args.split, args.n)
    summary, logp = evaluate(run, q, source, k=args.iw, seed=args.seed, paired=not args.data)
    if args.out:
        import numpy as np

        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        np.save(args.out, logp)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary))
    return 0


def cmd_sample(args: argparse.Namespace) -> int:
    import numpy as np

    from .evaluate import draw_samples, load_run

    if args.n < 1:
        raise UserError(f"--n must be positive, got {args.n}")
    x, note = draw_samples(load_run(args.ckpt), args.n, args.seed)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    np.save(args.out, x)
    print(f"wrote {x.shape[0]}×{x.shape[1]} samples to {args.out}{note}")
    return 0


def cmd_bench(args: argparse.Namespace, argv: Sequence[str] | None) -> int:
    from .bench import SECTIONS, run

    words = list(argv) if argv is not None else sys.argv[1:]
    unknown = sorted(set(args.only.split(",")) - set(SECTIONS)) if args.only else []
    if unknown:
        raise UserError(f"--only: unknown section(s) {', '.join(unknown)}; choose from {', '.join(SECTIONS)}")
    res = run(
        quick=args.quick,
        quality=args.quality,
        out=Path(args.out) if args.out else None,
        memory=not args.no_memory,
        command="ehf " + " ".join(words),
        only=args.only.split(",") if args.only else None,
    )
    print(Path(res["out"], "bench.md").read_text())
    print(f"written: {res['out']}/bench.json and bench.md")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "train":
            return cmd_train(args)
        if args.command == "print-config":
            return cmd_print_config(args)
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
