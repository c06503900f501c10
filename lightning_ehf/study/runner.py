"""Running a study's cells: which are done, which resume, the ``ehf train`` command of each, and the
launchers (local worker processes, a SLURM job array through submitit, a W&B grid sweep).

Layout of a study folder ``DIR``::

    DIR/study.json            what was asked for (study file, profile, overrides, cells)
    DIR/cells/<cell>/         the cell's run folder (exactly what ``ehf train run.dir=...`` writes)
    DIR/logs/<cell>.log       the cell's output
    DIR/logs/<cell>.json      its state while running or after failing: {state, pid, host, rc, ...}
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from ..errors import EXIT_PREEMPTED, ConfigError, UserError
from ..system import pid_alive
from .spec import Cell, Study

__all__ = ["CellState", "StudyFolder", "open_folder", "cell_command", "run_cell", "run_local", "run_slurm",
           "require_sbatch", "export_wandb_sweep"]

# keys a cell may differ in from its saved config without its results changing
_IGNORED_KEYS = ("progress.mode", "progress.every_n_steps", "progress.every_s", "logger.wandb.mode")


@dataclass
class CellState:
    cell: Cell
    state: str  # done | running | failed | interrupted | pending
    detail: str = ""


class StudyFolder:
    """The folder of one study run: cell folders, logs and state files."""

    def __init__(self, root: str | Path, study: Study) -> None:
        self.root = Path(root).resolve()
        self.study = study
        self.cells = study.cells()
        self._configs: dict[str, dict[str, Any]] = {}  # resolved configs, by cell name

    def cell_dir(self, cell: Cell) -> Path:
        return self.root / "cells" / cell.name

    def log_path(self, cell: Cell) -> Path:
        return self.root / "logs" / f"{cell.name}.log"

    def state_path(self, cell: Cell) -> Path:
        return self.root / "logs" / f"{cell.name}.json"

    def overrides(self, cell: Cell) -> list[str]:
        return [*cell.overrides, f"run.dir={self.cell_dir(cell)}"]

    def config(self, cell: Cell) -> dict[str, Any]:
        """The resolved config ``ehf train`` will give the cell (validated; ConfigError names the cell)."""
        from ..config.load import load_config, to_container

        if cell.name not in self._configs:
            try:
                cfg = load_config(self.study.config_files, self.overrides(cell))
            except ConfigError as e:
                raise ConfigError(f"cell {cell.name}: {e}") from None
            self._configs[cell.name] = to_container(cfg)
        return self._configs[cell.name]

    def write_manifest(self, command: str) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        manifest = {
            "study": self.study.name, "profile": self.study.profile, "source": str(self.study.source),
            "config_files": self.study.config_files, "base": self.study.base, "command": command,
            "axes": {a.name: a.values for a in self.study.axes}, "report": self.study.report,
            "slurm": self.study.slurm, "description": self.study.description,
            "cells": [{"name": c.name, "values": c.values, "overrides": list(c.overrides)} for c in self.cells],
        }
        (self.root / "study.json").write_text(json.dumps(manifest, indent=2) + "\n")

    # -- states ----------------------------------------------------------------------------------

    def check_configs(self) -> None:
        """Exit-2 error (UserError) if a cell that has started would now get a different config:
        results of two configs are never mixed in one cell."""
        import yaml

        from ..config.load import flatten, from_saved, to_container

        for cell in self.cells:
            saved_path = self.cell_dir(cell) / "config.yaml"
            if not saved_path.is_file():
                continue
            # a saved config holds every key of its day; keys added since then take their schema default
            saved = flatten(to_container(from_saved(yaml.safe_load(saved_path.read_text()))))
            wanted = flatten(self.config(cell))
            for key in sorted(set(saved) | set(wanted)):
                if key.startswith(_IGNORED_KEYS) or key == "data.path" and _same_path(saved.get(key), wanted.get(key)):
                    continue
                if saved.get(key) != wanted.get(key):
                    raise UserError(
                        f"cell {cell.name}: the study now gives {key}={wanted.get(key)!r}, but the cell was run with "
                        f"{saved.get(key)!r} ({self.cell_dir(cell)}); restore the study file, or use a new study "
                        "folder (--dir) for the changed study")

    def state(self, cell: Cell) -> CellState:
        run = self.cell_dir(cell)
        if (run / "metrics.json").is_file():
            return CellState(cell, "done")
        info = self._read_state(cell)
        if info.get("state") == "running" and info.get("host") == socket.gethostname() and pid_alive(int(info.get("pid", 0))):
            return CellState(cell, "running", f"pid {info['pid']}")
        if info.get("state") == "running" and info.get("host") not in (None, socket.gethostname()):
            return CellState(cell, "running", f"on {info['host']}")
        if info.get("state") == "failed":
            return CellState(cell, "failed", f"exit {info.get('rc')}; log {self.log_path(cell)}")
        if (run / "checkpoints" / "last.ckpt").is_file():
            return CellState(cell, "interrupted", "resumes from checkpoints/last.ckpt")
        return CellState(cell, "pending")

    def _read_state(self, cell: Cell) -> dict[str, Any]:
        try:
            return json.loads(self.state_path(cell).read_text())
        except (OSError, ValueError):
            return {}

    def _write_state(self, cell: Cell, **info: Any) -> None:
        path = self.state_path(cell)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(info) + "\n")
        tmp.replace(path)

    def states(self) -> list[CellState]:
        return [self.state(c) for c in self.cells]


def open_folder(root: str | Path) -> StudyFolder:
    """The study run in ``root`` as its ``study.json`` describes it (for status, report and agents)."""
    from .spec import Axis

    root = Path(root)
    try:
        m = json.loads((root / "study.json").read_text())
    except FileNotFoundError:
        raise UserError(f"{root}: not a study folder (no study.json; `ehf study run` makes one)") from None
    except ValueError as e:
        raise UserError(f"{root}/study.json: not valid JSON ({e})") from None
    axes = [Axis(name, values) for name, values in m["axes"].items()]
    study = Study(m["study"], m["profile"], Path(m["source"]), m["config_files"], m["base"], axes,
                  m.get("report") or {}, m.get("slurm") or {}, m.get("description") or "")
    return StudyFolder(root, study)


def _same_path(a: Any, b: Any) -> bool:
    return bool(a and b) and Path(str(a)).expanduser().resolve() == Path(str(b)).expanduser().resolve()


def cell_command(folder: StudyFolder, cell: Cell, python: str = sys.executable) -> list[str]:
    """The ``ehf train`` command of a cell: a fresh run, or ``--resume`` when it has a checkpoint."""
    files = [a for f in folder.study.config_files for a in ("-c", f)]
    run = folder.cell_dir(cell)
    resume = ["--resume", str(run)] if (run / "checkpoints" / "last.ckpt").is_file() else []
    return [python, "-m", "lightning_ehf", "train", *resume, *files, *folder.overrides(cell), "progress.mode=lines"]


def _set_parent_death_signal() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Linux: the cell gets SIGTERM (checkpoint, exit 75) if the study process dies, even by SIGKILL."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def run_cell(folder: StudyFolder, cell: Cell, threads: Optional[int] = None,
             started: Optional[Callable[[subprocess.Popen], None]] = None) -> int:
    """Run (or resume) one cell to the end in a child ``ehf train``; returns its exit code. A folder
    with neither results nor a checkpoint (stopped before its first checkpoint) is started afresh."""
    run = folder.cell_dir(cell)
    if (run / "metrics.json").is_file():
        return 0
    if run.exists() and not (run / "checkpoints" / "last.ckpt").is_file():
        shutil.rmtree(run)  # nothing to resume and no results: only a config and partial logs
    cmd = cell_command(folder, cell)
    env = dict(os.environ)
    if threads is not None:
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            env[var] = str(threads)
    env.pop("EHF_RUN_DIR", None)
    log = folder.log_path(cell)
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a") as out:
        out.write(f"\n$ {' '.join(cmd)}\n")
        out.flush()
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True,
                                preexec_fn=_set_parent_death_signal if sys.platform.startswith("linux") else None)
        folder._write_state(cell, state="running", pid=proc.pid, host=socket.gethostname(), started=time.time())
        if started is not None:
            started(proc)
        rc = proc.wait()
    if rc == 0 and (run / "metrics.json").is_file():
        folder.state_path(cell).unlink(missing_ok=True)
    elif rc == EXIT_PREEMPTED:
        folder._write_state(cell, state="interrupted", rc=rc, ended=time.time())
    else:
        folder._write_state(cell, state="failed", rc=rc, ended=time.time(), host=socket.gethostname())
    return rc


def _cell_summary(folder: StudyFolder, cell: Cell) -> str:
    try:
        m = json.loads((folder.cell_dir(cell) / "metrics.json").read_text())
    except (OSError, ValueError):
        return ""
    parts = [f"{k.split('/')[-1]} {m[k]:.4g}" for k in ("test/kl", "test/nll") if isinstance(m.get(k), float)][:1]
    if m.get("best_step") is not None:
        parts.append(f"best step {m['best_step']}/{m.get('max_steps')}")
    return ", ".join(parts)


def run_local(folder: StudyFolder, todo: Sequence[Cell], workers: int, cores: Optional[int] = None) -> dict[str, int]:
    """Run ``todo`` with ``workers`` concurrent child processes of cores ÷ workers torch threads each.
    A failed cell does not stop the others. SIGINT/SIGTERM stop every running cell at its next step
    (each keeps ``last.ckpt``; a rerun resumes it). Returns {cell name: exit code}."""
    from concurrent.futures import ThreadPoolExecutor, as_completed

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    cores = cores or os.cpu_count() or 1
    threads = max(1, cores // max(1, workers))
    running: dict[str, subprocess.Popen] = {}
    lock = threading.Lock()
    stop = threading.Event()
    results: dict[str, int] = {}

    def started(name: str) -> Callable[[subprocess.Popen], None]:
        def hook(proc: subprocess.Popen) -> None:
            with lock:
                running[name] = proc
                if stop.is_set():
                    proc.send_signal(signal.SIGTERM)
        return hook

    def one(cell: Cell) -> tuple[Cell, int, float]:
        if stop.is_set():
            return cell, EXIT_PREEMPTED, 0.0
        t0 = time.time()
        rc = run_cell(folder, cell, threads, started(cell.name))
        with lock:
            running.pop(cell.name, None)
        return cell, rc, time.time() - t0

    def on_signal(signum: int, frame: Any) -> None:
        stop.set()
        with lock:
            for proc in running.values():
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    print(f"running {len(todo)} cells: {workers} workers × {threads} torch threads", flush=True)
    columns = [TextColumn("cells"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TextColumn("eta"),
               TimeRemainingColumn()]
    try:
        from rich.console import Console

        console = Console(width=None if sys.stdout.isatty() else 200)
        with Progress(*columns, transient=False, console=console) as bar, ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            task = bar.add_task("cells", total=len(todo))
            futures = [pool.submit(one, c) for c in todo]
            t0 = time.time()
            for fut in as_completed(futures):
                cell, rc, seconds = fut.result()
                results[cell.name] = rc
                bar.advance(task)
                n = len(results)
                eta = (time.time() - t0) / n * (len(todo) - n)
                count = f"[{n}/{len(todo)}, eta {eta / 60:.0f} min]"
                if rc == 0:
                    bar.console.print(f"done    {cell.name}  ({seconds:.0f} s; {_cell_summary(folder, cell)}) {count}")
                elif rc == EXIT_PREEMPTED:
                    if seconds:
                        bar.console.print(f"stopped {cell.name}  (checkpoint kept; a rerun resumes it)")
                else:
                    bar.console.print(f"FAILED  {cell.name}  (exit {rc}); log: {folder.log_path(cell)}")
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
    return results


def _slurm_job(command: list[str], log: str, threads: int) -> int:  # runs inside the SLURM job
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[var] = str(threads)
    with open(log, "a") as out:
        return subprocess.call(command, stdout=out, stderr=subprocess.STDOUT, env=env)


def require_sbatch() -> None:
    """UserError (exit 2) unless ``sbatch`` is on PATH."""
    if shutil.which("sbatch") is None:
        raise UserError("--launcher slurm: sbatch not found on PATH (run on a SLURM login node, or use --cluster local "
                        "to try the path with submitit's local executor)")


def run_slurm(folder: StudyFolder, todo: Sequence[Cell], cluster: str = "slurm", wait: bool = True,
              poll_s: float = 5.0) -> dict[str, Any]:
    """Submit ``todo`` as one job array through submitit (``cluster='local'``: submitit's local
    executor, for trying the path without a cluster). Partition, time, CPUs and GPUs per cell come from
    the study file's ``slurm:`` section (or the command's flags). With ``wait``, follow the jobs."""
    import submitit

    if cluster == "slurm":
        require_sbatch()
    s = folder.study.slurm
    executor = submitit.AutoExecutor(folder=str(folder.root / "submitit" / "%j"), cluster=cluster)
    params: dict[str, Any] = {"timeout_min": int(s["time_min"]), "cpus_per_task": int(s["cpus_per_cell"]),
                              "tasks_per_node": 1, "nodes": 1, "name": f"ehf-{folder.study.name}"}
    if int(s["gpus_per_cell"]):
        params["gpus_per_node"] = int(s["gpus_per_cell"])
    if s.get("mem_gb"):
        params["mem_gb"] = float(s["mem_gb"])
    if cluster == "slurm":
        if s.get("partition"):
            params["slurm_partition"] = str(s["partition"])
        if s.get("parallelism"):
            params["slurm_array_parallelism"] = int(s["parallelism"])
        params["slurm_signal_delay_s"] = 120  # SIGUSR1 two minutes before the limit: the cell checkpoints, exit 75
    executor.update_parameters(**params)
    commands, logs = [], []
    for cell in todo:
        run = folder.cell_dir(cell)
        if run.exists() and not (run / "checkpoints" / "last.ckpt").is_file() and not (run / "metrics.json").is_file():
            shutil.rmtree(run)
        commands.append(cell_command(folder, cell))
        logs.append(str(folder.log_path(cell)))
        folder.log_path(cell).parent.mkdir(parents=True, exist_ok=True)
    jobs = executor.map_array(_slurm_job, commands, logs, [int(s["cpus_per_cell"])] * len(todo))
    for cell, job in zip(todo, jobs):
        folder._write_state(cell, state="running", host=f"slurm job {job.job_id}", job=str(job.job_id), started=time.time())
    print(f"submitted {len(jobs)} cells as job array {jobs[0].job_id.split('_')[0] if jobs else '-'} "
          f"({cluster}); logs in {folder.root / 'logs'}", flush=True)
    if not wait:
        return {"jobs": [j.job_id for j in jobs]}
    results: dict[str, int] = {}
    pending = dict(zip([c.name for c in todo], zip(todo, jobs)))
    while pending:
        for name, (cell, job) in list(pending.items()):
            if job.done():
                try:
                    rc = int(job.result())
                except Exception as e:  # the job itself failed (node failure, time limit): the cell is not done
                    print(f"FAILED  {name}  (job {job.job_id}: {str(e).splitlines()[0] if str(e) else type(e).__name__})")
                    rc = 1
                results[name] = rc
                if rc == 0:
                    folder.state_path(cell).unlink(missing_ok=True)
                    print(f"done    {name}  ({_cell_summary(folder, cell)})", flush=True)
                else:
                    state = "interrupted" if rc == EXIT_PREEMPTED else "failed"
                    folder._write_state(cell, state=state, rc=rc, ended=time.time(), job=str(job.job_id))
                    if state == "failed":
                        print(f"FAILED  {name}  (exit {rc}); log: {folder.log_path(cell)}", flush=True)
                del pending[name]
        if pending:
            time.sleep(poll_s)
    return results


def export_wandb_sweep(folder: StudyFolder, todo: Sequence[Cell]) -> Path:
    """Write ``DIR/sweep.yaml``: a W&B grid sweep over the cells. Each agent runs
    ``ehf study cell DIR cell=<name>``, which runs that cell's ``ehf train`` (or resumes or skips it)."""
    import yaml

    sweep = {
        "name": f"{folder.study.name}-{folder.study.profile}",
        "description": folder.study.description or f"ehf study {folder.study.name}",
        "method": "grid",
        "metric": {"name": "test/nll", "goal": "minimize"},
        "parameters": {"cell": {"values": [c.name for c in todo]}},
        "command": ["${env}", "${interpreter}", "-m", "lightning_ehf", "study", "cell", str(folder.root),
                    "${args_no_hyphens}"],
    }
    path = folder.root / "sweep.yaml"
    path.write_text(yaml.safe_dump(sweep, sort_keys=False))
    return path
