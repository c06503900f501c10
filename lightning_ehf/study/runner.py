"""Running a study's cells: which are done, which resume, the ``ehf train`` command of each, and the
launchers (local worker processes, a SLURM job array through submitit, a W&B grid sweep).

Layout of a study folder ``DIR``::

    DIR/study.json            what was asked for (study file, profile, overrides, cells)
    DIR/cells/<cell>/         the cell's run folder (exactly what ``ehf train run.dir=...`` writes)
    DIR/logs/<cell>.log       the cell's output
    DIR/logs/<cell>.json      its state while running or after failing: {state, pid, host, job, beat, rc, ...}
    DIR/tune/                 a tuned study's first stage (:mod:`.tuning`): the same layout, and choice.json

A running cell's state file carries a heartbeat (``beat``, rewritten every ``HEARTBEAT_S``) and, under SLURM, its
job id. A cell recorded as running whose process is gone (this host), whose SLURM job has ended (``squeue`` /
``sacct``) or whose heartbeat stopped (another host, ``HEARTBEAT_TIMEOUT_S``) is not running: it resumes from
its checkpoint (or starts again) at the next ``ehf study run``.

Every cell's W&B run is named after the cell, grouped by study, typed by method and tagged with its axis values;
its W&B config has the axes as top-level fields (``cell_wandb_overrides``).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config.load import override_value
from ..errors import EXIT_PREEMPTED, ConfigError, UserError
from ..system import pid_alive
from .spec import Cell, Study

__all__ = [
    "CellState",
    "StudyFolder",
    "cell_command",
    "cell_wandb_overrides",
    "run_cell",
    "run_local",
    "export_wandb_sweep",
    "slurm_job_state",
    "sweep_wandb_mode",
]

HEARTBEAT_S = 60.0  # a running cell's state file is rewritten this often ...
HEARTBEAT_TIMEOUT_S = 600.0  # ... and a cell on another host whose heartbeat is older than this is not running
# keys a cell may differ in from its saved config without its results changing
_IGNORED_KEYS = ("progress.mode", "progress.every_n_steps", "progress.every_s", "logger.wandb.")


@dataclass
class CellState:
    cell: Cell
    state: str  # done | running | failed | interrupted | pending
    detail: str = ""


class StudyFolder:
    """The folder of one study run: cell folders, logs and state files."""

    def __init__(self, root: str | Path, study: Study, cells: list[Cell] | None = None) -> None:
        self.root = Path(root).resolve()
        self.study = study
        self.cells = study.cells() if cells is None else cells  # a tuned study's stages list their own
        self._configs: dict[str, dict[str, Any]] = {}  # resolved configs, by cell name

    def cell_dir(self, cell: Cell) -> Path:
        return self.root / "cells" / cell.name

    def log_path(self, cell: Cell) -> Path:
        return self.root / "logs" / f"{cell.name}.log"

    def state_path(self, cell: Cell) -> Path:
        return self.root / "logs" / f"{cell.name}.json"

    def overrides(self, cell: Cell) -> list[str]:
        return [*cell.overrides, *cell_wandb_overrides(self.study, cell), f"run.dir={self.cell_dir(cell)}"]

    def cell(self, name: str) -> Cell:
        found = next((c for c in self.cells if c.name == name), None)
        if found is None:
            raise UserError(f"cell {name!r} is not a cell of {self.root}")
        return found

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
            "study": self.study.name,
            "profile": self.study.profile,
            "source": str(self.study.source),
            "config_files": self.study.config_files,
            "base": self.study.base,
            "command": command,
            "axes": {a.name: a.values for a in self.study.axes},
            "report": self.study.report.model_dump(),
            "slurm": self.study.slurm.model_dump(),
            "description": self.study.description,
            **({"tune": dataclasses.asdict(self.study.tune)} if self.study.tune is not None else {}),
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
                        "folder (--dir) for the changed study"
                    )

    def state(self, cell: Cell) -> CellState:
        run = self.cell_dir(cell)
        if (run / "metrics.json").is_file():
            return CellState(cell, "done")
        info = self._read_state(cell)
        gone = ""
        if info.get("state") == "running":
            alive, detail = _still_running(info)
            if alive:
                return CellState(cell, "running", detail)
            gone = f"{detail}; "
        if info.get("state") == "failed":
            return CellState(cell, "failed", f"exit {info.get('rc')}; log {self.log_path(cell)}")
        if (run / "checkpoints" / "last.ckpt").is_file():
            return CellState(cell, "interrupted", f"{gone}resumes from checkpoints/last.ckpt")
        return CellState(cell, "pending", gone.rstrip("; "))

    def _read_state(self, cell: Cell) -> dict[str, Any]:
        try:
            return json.loads(self.state_path(cell).read_text())
        except (OSError, ValueError):
            return {}

    def beat(self, cell: Cell) -> None:
        """Refresh the heartbeat of a running cell's state file."""
        info = self._read_state(cell)
        if info.get("state") == "running":
            self._write_state(cell, **{**info, "beat": time.time()})

    def _write_state(self, cell: Cell, **info: Any) -> None:
        path = self.state_path(cell)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(info) + "\n")
        tmp.replace(path)

    def states(self) -> list[CellState]:
        return [self.state(c) for c in self.cells]


_SLURM_LIVE = {
    "PENDING",
    "RUNNING",
    "REQUEUED",
    "CONFIGURING",
    "COMPLETING",
    "SUSPENDED",
    "RESIZING",
    "REQUEUE_HOLD",
    "REQUEUE_FED",
    "SIGNALING",
    "STAGE_OUT",
    "STOPPED",
    "RESV_DEL_HOLD",
}


def slurm_job_state(job: str) -> str | None:
    """The state of SLURM job ``job`` (``123`` or ``123_4``) from ``squeue``, else ``sacct``; ``GONE`` when
    neither knows it; None when neither command is on PATH (not on a SLURM machine)."""
    tools = [t for t in ("squeue", "sacct") if shutil.which(t)]
    if not tools:
        return None
    commands = {
        "squeue": ["squeue", "-h", "-j", job, "-o", "%T"],
        "sacct": ["sacct", "-n", "-X", "-P", "-j", job, "-o", "State"],
    }
    for tool in tools:
        try:
            out = subprocess.run(commands[tool], capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired):
            continue
        words = out.stdout.split()
        if out.returncode == 0 and words:
            return words[0].upper()
    return "GONE"


def _still_running(info: dict[str, Any]) -> tuple[bool, str]:
    """Whether the cell a ``running`` state file describes still runs, and the detail to show."""
    beat = info.get("beat")
    stale = beat is not None and time.time() - float(beat) > HEARTBEAT_TIMEOUT_S
    if info.get("job"):
        job = str(info["job"])
        state = slurm_job_state(job)
        if state is None:  # no SLURM commands here: the heartbeat decides (a queued job has none yet)
            return (
                (False, f"no heartbeat from slurm job {job} for {HEARTBEAT_TIMEOUT_S / 60:.0f} min")
                if stale
                else (True, f"slurm job {job}")
            )
        if state in _SLURM_LIVE:
            return True, f"slurm job {job}, {state.lower()}"
        return False, f"slurm job {job} ended ({state.lower()}) before the cell finished"
    host = info.get("host")
    if host == socket.gethostname():
        pid = int(info.get("pid", 0))
        return (True, f"pid {pid}") if pid_alive(pid) else (False, f"process {pid} ended before the cell finished")
    if stale:
        return False, f"no heartbeat from {host} for {HEARTBEAT_TIMEOUT_S / 60:.0f} min"
    return True, f"on {host}"


def cell_wandb_overrides(study: Study, cell: Cell) -> list[str]:
    """The cell's W&B identity, for every key the study does not set itself: name = the cell, group = the
    study, job type = its method (when the study has a method axis), tags = its axis values (after the
    study's own tags), and the axes as top-level config fields (plain values for an axis of one key)."""
    given = {item.split("=", 1)[0] for item in cell.overrides}
    fields: dict[str, Any] = {"study": study.name}
    for axis in study.axes:
        overrides = axis.values[cell.values[axis.name]]
        value = next(iter(overrides.values())) if len(overrides) == 1 else None
        fields[axis.name] = (
            value if isinstance(value, (int, float, str)) and axis.name != "method" else cell.values[axis.name]
        )
    tags = [str(t) for t in study.base.get("logger.wandb.tags") or []] + list(cell.values.values())
    wanted = {
        "logger.wandb.name": cell.name,
        "logger.wandb.group": study.name,
        "logger.wandb.job_type": cell.values.get("method"),
        "logger.wandb.tags": tags,
        "logger.wandb.fields": fields,
    }
    return [
        f"{k}={override_value(v)}"
        for k, v in wanted.items()
        if v is not None and (k not in given or k.endswith(".tags"))
    ]


def _same_path(a: Any, b: Any) -> bool:
    return bool(a and b) and Path(str(a)).expanduser().resolve() == Path(str(b)).expanduser().resolve()


def cell_command(folder: StudyFolder, cell: Cell, python: str = sys.executable, extra: Sequence[str] = ()) -> list[str]:
    """The ``ehf train`` command of a cell: a fresh run, or ``--resume`` when it has a checkpoint; ``extra``
    overrides go last."""
    files = [a for f in folder.study.config_files for a in ("-c", f)]
    run = folder.cell_dir(cell)
    resume = ["--resume", str(run)] if (run / "checkpoints" / "last.ckpt").is_file() else []
    return [
        python,
        "-m",
        "lightning_ehf",
        "train",
        *resume,
        *files,
        *folder.overrides(cell),
        "progress.mode=lines",
        *extra,
    ]


def sweep_wandb_mode(folder: StudyFolder, cell: Cell, environ: dict[str, str] | None = None) -> str | None:
    """The W&B mode a cell run by a sweep agent must log in, or None when the study's own applies. A sweep
    records nothing from a run that does not log, so a study that turns W&B off (most do: ``disabled``) or
    leaves it to its default logs in ``WANDB_MODE`` (online or offline) under an agent, else online."""
    from ..config.load import explicit_keys
    from ..tracking import wandb_mode_from_env

    env = os.environ if environ is None else environ
    mode = folder.config(cell)["logger"]["wandb"]["mode"]
    if "logger.wandb.mode" in explicit_keys(folder.study.config_files, folder.overrides(cell)) and mode != "disabled":
        return None
    wanted = wandb_mode_from_env(env)
    return wanted if wanted in ("online", "offline") else "online"


def _set_parent_death_signal() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Linux: the cell gets SIGTERM (checkpoint, exit 75) if the study process dies, even by SIGKILL."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def cell_environment(parent: Mapping[str, str], threads: int | None = None) -> dict[str, str]:
    """The environment of a cell's ``ehf train``: the parent's, with ``threads`` OpenMP/MKL/BLAS threads, and
    without what names another run (``EHF_RUN_DIR``; ``WANDB_RUN_ID`` outside a sweep agent, whose id names its
    one cell's run) or another process's W&B service (``WANDB_SERVICE``)."""
    env = dict(parent)
    if threads is not None:
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            env[var] = str(threads)
    env.pop("EHF_RUN_DIR", None)
    # a cell starts its own W&B service: one inherited from this process would outlive a preempted cell and keep
    # its run ID open, so the cell's resumed segment could not reopen that run ("run ID ... is in use")
    env.pop("WANDB_SERVICE", None)
    if not env.get("WANDB_SWEEP_ID"):
        env.pop("WANDB_RUN_ID", None)
    return env


def run_cell(
    folder: StudyFolder,
    cell: Cell,
    threads: int | None = None,
    started: Callable[[subprocess.Popen], None] | None = None,
    extra: Sequence[str] = (),
    **state: Any,
) -> int:
    """Run (or resume) one cell to the end in a child ``ehf train``; returns its exit code. A folder
    with neither results nor a checkpoint (stopped before its first checkpoint) is started afresh.
    ``extra``: overrides after the cell's; ``state``: more entries of its state file (e.g. the SLURM job)."""
    run = folder.cell_dir(cell)
    if (run / "metrics.json").is_file():
        return 0
    if run.exists() and not (run / "checkpoints" / "last.ckpt").is_file():
        shutil.rmtree(run)  # nothing to resume and no results: only a config and partial logs
    cmd = cell_command(folder, cell, extra=extra)
    env = cell_environment(os.environ, threads)
    log = folder.log_path(cell)
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a") as out:
        out.write(f"\n$ {' '.join(cmd)}\n")
        out.flush()
        proc = subprocess.Popen(
            cmd,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
            preexec_fn=_set_parent_death_signal if sys.platform.startswith("linux") else None,
        )
        folder._write_state(
            cell,
            **{
                **state,
                "state": "running",
                "pid": proc.pid,
                "host": socket.gethostname(),
                "started": time.time(),
                "beat": time.time(),
            },
        )
        if started is not None:
            started(proc)
        while True:
            try:
                rc = proc.wait(timeout=HEARTBEAT_S)
                break
            except subprocess.TimeoutExpired:
                folder.beat(cell)
    if rc == 0 and (run / "metrics.json").is_file():
        folder.state_path(cell).unlink(missing_ok=True)
    elif rc == EXIT_PREEMPTED:
        folder._write_state(cell, **state, state="interrupted", rc=rc, ended=time.time())
    else:
        folder._write_state(cell, state="failed", rc=rc, ended=time.time(), host=socket.gethostname())
    return rc


def cell_summary(folder: StudyFolder, cell: Cell) -> str:
    try:
        m = json.loads((folder.cell_dir(cell) / "metrics.json").read_text())
    except (OSError, ValueError):
        return ""
    parts = [f"{k.split('/')[-1]} {m[k]:.4g}" for k in ("test/kl", "test/nll") if isinstance(m.get(k), float)][:1]
    if m.get("best_step") is not None:
        parts.append(f"best step {m['best_step']}/{m.get('max_steps')}")
    return ", ".join(parts)


def run_local(folder: StudyFolder, todo: Sequence[Cell], workers: int, cores: int | None = None) -> dict[str, int]:
    """Run ``todo`` with ``workers`` concurrent child processes of cores ÷ workers torch threads each.
    A failed cell does not stop the others. SIGINT/SIGTERM stop every running cell at its next step
    (each keeps ``last.ckpt``; a rerun resumes it). Returns {cell name: exit code}."""
    from concurrent.futures import ThreadPoolExecutor, as_completed

    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

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
    columns = [
        TextColumn("cells"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
    ]
    try:
        from rich.console import Console

        console = Console(width=None if sys.stdout.isatty() else 200)
        with (
            Progress(*columns, transient=False, console=console) as bar,
            ThreadPoolExecutor(max_workers=max(1, workers)) as pool,
        ):
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
                    bar.console.print(f"done    {cell.name}  ({seconds:.0f} s; {cell_summary(folder, cell)}) {count}")
                elif rc == EXIT_PREEMPTED:
                    if seconds:
                        bar.console.print(f"stopped {cell.name}  (checkpoint kept; a rerun resumes it)")
                else:
                    bar.console.print(f"FAILED  {cell.name}  (exit {rc}); log: {folder.log_path(cell)}")
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
    return results


def export_wandb_sweep(folder: StudyFolder, todo: Sequence[Cell]) -> Path:
    """Write ``DIR/sweep.yaml``: a W&B grid sweep over the cells. Each agent runs
    ``ehf study cell DIR cell=<name>`` with this interpreter, which runs that cell's ``ehf train`` (or resumes or
    skips it), logging to W&B whatever the study's mode (:func:`sweep_wandb_mode`). The sweep's metric,
    ``test/nll``, is the test NLL every run logs beside ``test/nll_iw{K}``."""
    import yaml

    sweep = {
        "name": f"{folder.study.name}-{folder.study.profile}",
        "description": folder.study.description or f"ehf study {folder.study.name}",
        "method": "grid",
        "metric": {"name": "test/nll", "goal": "minimize"},
        "parameters": {"cell": {"values": [c.name for c in todo]}},
        # the study's own interpreter: ${interpreter} would be whatever `python` the agent finds on PATH
        "command": [
            "${env}",
            sys.executable,
            "-m",
            "lightning_ehf",
            "study",
            "cell",
            str(folder.root),
            "${args_no_hyphens}",
        ],
    }
    path = folder.root / "sweep.yaml"
    path.write_text(yaml.safe_dump(sweep, sort_keys=False))
    return path
