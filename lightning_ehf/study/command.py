"""``ehf study run | status | report | cell``."""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from ..errors import UserError
from .folders import open_folder
from .runner import (
    EXIT_PREEMPTED,
    StudyFolder,
    cell_command,
    export_wandb_sweep,
    run_cell,
    run_local,
    sweep_wandb_mode,
)
from .slurm import require_sbatch, run_slurm
from .spec import SlurmSpec, Study, checked, load_study
from .tuning import EvaluationFolder, TuningFolder, evaluation_folder, tuning_folder, write_choice

__all__ = ["cmd_study"]


def _split_overrides(items: Sequence[str]) -> tuple[str | None, list[str]]:
    profile, rest = None, []
    for item in items:
        if item.startswith("profile="):
            profile = item.split("=", 1)[1]
        else:
            rest.append(item)
    return profile, rest


def _print_states(folder: StudyFolder) -> Counter:
    from rich.console import Console
    from rich.table import Table

    states = folder.states()
    counts = Counter(s.state for s in states)
    table = Table(title=f"study {folder.study.name} ({folder.study.profile}): {folder.root}")
    table.add_column("cell", no_wrap=True)
    table.add_column("state")
    table.add_column("detail")
    for s in states:
        table.add_row(s.cell.name, s.state, s.detail)
    console = Console(width=None if sys.stdout.isatty() else 160)
    console.print(table)
    shown = ("done", "running", "failed", "interrupted", "pending") + (("diverged",) if counts.get("diverged") else ())
    console.print(", ".join(f"{counts.get(k, 0)} {k}" for k in shown))
    return counts


def _run(args: argparse.Namespace, argv: Sequence[str] | None) -> int:
    profile, overrides = _split_overrides(args.overrides)
    study = load_study(args.config, profile, overrides)
    flags = {k: getattr(args, f"slurm_{k}") for k in ("partition", "time_min", "cpus_per_cell", "gpus_per_cell")}
    if flags := {k: v for k, v in flags.items() if v is not None}:
        study.slurm = checked(SlurmSpec, {**study.slurm.model_dump(), **flags}, "command line", "slurm")
    if args.workers < 1:
        raise UserError(f"--workers must be >= 1, got {args.workers}")
    root = Path(args.dir) if args.dir else Path("runs") / "study" / f"{study.name}-{study.profile}"
    if study.tune is not None:
        return _run_tuned(args, argv, study, root)
    folder = StudyFolder(root, study)
    return _run_stage(args, argv, folder, folder)


def _run_tuned(args: argparse.Namespace, argv: Sequence[str] | None, study: Study, root: Path) -> int:
    """Stage 1 (every configuration on the tuning seeds; a matched method's in a second round), then stage 2
    (each method's chosen configuration on the evaluation seeds). A stage that is not complete ends the run."""
    placeholder = StudyFolder(root, study)  # study.json while stage 1 runs: the study as asked for
    tuning = tuning_folder(root, study)
    while True:
        rc = _run_stage(args, argv, tuning, placeholder, stage="tuning")
        if rc != 0:
            return rc
        again = tuning_folder(root, study)
        if len(again.cells) > len(tuning.cells) and not args.dry_run:
            tuning = again  # the reference of a matched method has chosen: its round
            continue
        if not again.complete():
            print(
                f"stage 2 (the {len(placeholder.cells)} evaluation cells) waits for the tuning stage in "
                f"{again.root}; rerun this command once its cells are done",
                flush=True,
            )
            return 0
        break
    folder = evaluation_folder(root, study)
    path = folder.tuning.root / "choice.json" if args.dry_run else write_choice(folder)
    for group in folder.tuning.choices().values():
        score = group.config(group.chosen).val_nll if group.chosen else None
        print(
            f"chose {group.method:<16} {' '.join(group.values.values()):<24} {group.chosen}  "
            f"(validation NLL {score:.4g})",
            flush=True,
        )
    print(f"every score: {path}", flush=True)
    return _run_stage(args, argv, folder, folder)


def _run_stage(
    args: argparse.Namespace,
    argv: Sequence[str] | None,
    folder: StudyFolder,
    manifest: StudyFolder,
    stage: str = "study",
) -> int:
    """Run the cells of ``folder`` that are not done; ``manifest``: the folder whose study.json is written."""
    study = folder.study
    for cell in folder.cells:  # every cell's config is valid before anything runs
        folder.config(cell)
    folder.check_configs()
    states = folder.states()
    counts = Counter(s.state for s in states)
    todo = [s.cell for s in states if s.state in ("pending", "interrupted", "failed")]
    diverged = f", {counts['diverged']} diverged (kept: scored +inf)" if counts.get("diverged") else ""
    print(
        f"{stage} {study.name} ({study.profile}): {len(states)} cells in {folder.root}; "
        f"{counts.get('done', 0)} done (skipped){diverged}, {counts.get('running', 0)} running elsewhere, "
        f"{len(todo)} to run ({counts.get('interrupted', 0)} resume from a checkpoint, {counts.get('failed', 0)} "
        f"failed before)",
        flush=True,
    )
    if args.dry_run:
        for s in states:
            print(
                f"[{s.state}] {s.cell.name}"
                + (
                    ""
                    if s.state in ("done", "running", "diverged")
                    else f"\n    {' '.join(cell_command(folder, s.cell, 'python'))}"
                )
            )
        return 0
    if todo and args.launcher == "slurm" and args.cluster == "slurm":
        require_sbatch()  # before anything is written
    words = list(argv) if argv is not None else sys.argv[1:]
    manifest.write_manifest("ehf " + " ".join(words))
    if not todo:
        if stage == "study":
            print(f"nothing to run; tables and plots: ehf study report {folder.root}")
        return 0
    t0 = time.time()
    if args.launcher == "wandb":
        path = export_wandb_sweep(folder, todo)
        print(
            f"wrote {path} (grid over {len(todo)} cells). Start it with:\n"
            f"    wandb sweep {path}\n    wandb agent <entity>/<project>/<sweep id>   # on every machine that sees "
            f"{folder.root}\nthen: ehf study status {folder.root}"
        )
        return 0
    if args.launcher == "slurm":
        results = run_slurm(folder, todo, cluster=args.cluster, wait=not args.no_wait)
        if args.no_wait:
            print(f"follow with: ehf study status {folder.root}")
            return 0
    else:
        results = run_local(folder, todo, args.workers, args.cores)
    codes = list(results.values())
    print(f"{sum(c == 0 for c in codes)} of {len(todo)} cells finished in {time.time() - t0:.0f} s")
    counts = _print_states(folder)
    if counts.get("done", 0) == len(folder.cells) and stage == "study":
        print(f"all cells done; tables and plots: ehf study report {folder.root}")
    if stage == "tuning":  # a diverged configuration is a result of the tuning, not a failure
        codes = [0 if folder.state(folder.cell(name)).state == "diverged" else c for name, c in results.items()]
    if any(c not in (0, EXIT_PREEMPTED) for c in codes):
        return 1
    return EXIT_PREEMPTED if any(c == EXIT_PREEMPTED for c in codes) else 0


def _cell(args: argparse.Namespace) -> int:
    folder = open_folder(args.dir)
    name = args.cell.split("=", 1)[1] if args.cell.startswith("cell=") else args.cell
    if isinstance(folder, EvaluationFolder) and not folder.chosen:
        raise UserError(
            f"cell {name}: the study's tuning stage ({folder.root / 'tune'}) has not chosen every "
            "configuration yet; its cells run first"
        )
    cell = folder.cell(name)
    folder.check_configs()
    # under a W&B sweep agent the cell must log, or the sweep records nothing
    mode = sweep_wandb_mode(folder, cell) if os.environ.get("WANDB_SWEEP_ID") else None
    rc = run_cell(folder, cell, extra=[f"logger.wandb.mode={mode}"] if mode else [])
    print(f"cell {name}: exit {rc}; run folder {folder.cell_dir(cell)}; log {folder.log_path(cell)}")
    return rc


def cmd_study(args: argparse.Namespace, argv: Sequence[str] | None = None) -> int:
    if args.study_command == "run":
        return _run(args, argv)
    if args.study_command == "status":
        folder = open_folder(args.dir)
        # a tuned study: its first stage, then its cells
        counts = (_print_states(folder.tuning) if isinstance(folder, EvaluationFolder) else Counter()) + _print_states(
            folder
        )
        return 0 if not counts.get("failed") else 1
    if args.study_command == "cell":
        return _cell(args)
    if args.study_command == "report":
        from .report import write_report

        folder = open_folder(args.dir)
        if isinstance(folder, TuningFolder):
            raise UserError(
                f"{args.dir}: the tuning stage of a study; `ehf study report {folder.root.parent}` reports "
                "both stages (its Tuning section lists every configuration's score)"
            )
        out = write_report(folder)
        print(Path(out["md"]).read_text())
        print(f"written: {', '.join(str(p) for p in out['files'])}")
        return 0
    raise UserError(f"unknown study command {args.study_command!r}")
