"""``ehf study run --launcher slurm``: the cells as a SLURM job array through submitit.

Time limits and preemption. submitit asks SLURM for its preemption signal two minutes before the time limit
(``--signal=USR2@120``; ``SUBMITIT_PREEMPT_SIGNAL``). SLURM sends it to the processes of the job step: the
submitit worker, which calls :meth:`SlurmCell.checkpoint`, and the cell's ``ehf train``, which handles SIGUSR2 like
SIGTERM (finish the step, write ``last.ckpt``, exit 75). ``checkpoint`` passes the signal on as well (for
clusters that signal the worker only), waits for ``ehf train`` to exit and hands submitit the same cell again, so
submitit requeues the job (``scontrol requeue``); the requeued job resumes the cell from its checkpoint. A cell
that exits 75 on its own (SIGTERM at preemption) ends its job with 75; the launcher, while it waits, submits the
cell again (``RESUBMITS`` times at most).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from typing import Any

from ..errors import UserError
from ..system import pid_alive
from .folders import open_folder
from .runner import EXIT_PREEMPTED, StudyFolder, cell_summary, run_cell
from .spec import Cell

__all__ = ["RESUBMITS", "SIGNAL_DELAY_S", "SlurmCell", "require_sbatch", "run_slurm"]

SIGNAL_DELAY_S = 120  # the preemption signal comes this long before the time limit
RESUBMITS = 3  # a cell that exits 75 (preempted) is submitted again at most this often while the launcher waits


def _job_id() -> str:
    """This SLURM job's id as submitit and ``squeue`` name it (``<array job>_<task>`` in an array)."""
    array, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    return f"{array}_{task}" if array and task else os.environ.get("SLURM_JOB_ID", "")


class SlurmCell:
    """One cell as a submitit job: ``job()`` runs (or resumes) the cell in a child ``ehf train`` and returns
    its exit code; submitit calls :meth:`checkpoint` on its preemption signal."""

    def __init__(self, root: str, cell: str, threads: int, stop_wait_s: float = SIGNAL_DELAY_S - 10) -> None:
        self.root, self.cell, self.threads, self.stop_wait_s = root, cell, threads, stop_wait_s
        self._proc: subprocess.Popen | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_proc": None}

    def __call__(self) -> int:
        folder = open_folder(self.root)
        return run_cell(
            folder,
            folder.cell(self.cell),
            self.threads,
            started=self._started,
            job=_job_id(),
            node=socket.gethostname(),
        )

    def _started(self, proc: subprocess.Popen) -> None:
        self._proc = proc

    def checkpoint(self) -> Any:
        """In submitit's signal handler: stop ``ehf train`` at its next step (it checkpoints and exits 75), then
        requeue this cell. Waits by polling, not ``Popen.wait``: the interrupted main thread may hold its lock."""
        import submitit

        proc = self._proc
        if proc is not None and pid_alive(proc.pid):
            proc.send_signal(signal.SIGUSR2)
            deadline = time.monotonic() + self.stop_wait_s
            while pid_alive(proc.pid) and time.monotonic() < deadline:
                time.sleep(0.2)
        folder = open_folder(self.root)
        job = _job_id()
        folder._write_state(
            folder.cell(self.cell),
            state="running",
            job=job,
            host=f"slurm job {job}",
            requeued=True,
            started=time.time(),
        )
        return submitit.helpers.DelayedSubmission(self)


def require_sbatch() -> None:
    """UserError (exit 2) unless ``sbatch`` is on PATH."""
    if shutil.which("sbatch") is None:
        raise UserError(
            "--launcher slurm: sbatch not found on PATH (run on a SLURM login node, or use --cluster local "
            "to try the path with submitit's local executor)"
        )


def _executor(folder: StudyFolder, cluster: str) -> Any:
    import submitit

    s = folder.study.slurm
    executor = submitit.AutoExecutor(folder=str(folder.root / "submitit" / "%j"), cluster=cluster)
    params: dict[str, Any] = {
        "timeout_min": s.time_min,
        "cpus_per_task": s.cpus_per_cell,
        "tasks_per_node": 1,
        "nodes": 1,
        "name": f"ehf-{folder.study.name}",
    }
    if s.gpus_per_cell:
        params["gpus_per_node"] = s.gpus_per_cell
    if s.mem_gb:
        params["mem_gb"] = s.mem_gb
    if cluster == "slurm":
        if s.partition:
            params["slurm_partition"] = s.partition
        if s.parallelism:
            params["slurm_array_parallelism"] = s.parallelism
        params["slurm_signal_delay_s"] = SIGNAL_DELAY_S
    executor.update_parameters(**params)
    return executor


def _submit(executor: Any, folder: StudyFolder, cells: Sequence[Cell]) -> list[Any]:
    threads = folder.study.slurm.cpus_per_cell
    for cell in cells:
        folder.log_path(cell).parent.mkdir(parents=True, exist_ok=True)
    with executor.batch():
        futures = [executor.submit(SlurmCell(str(folder.root), cell.name, threads)) for cell in cells]
    jobs = list(futures)
    for cell, job in zip(cells, jobs):
        folder._write_state(
            cell, state="running", host=f"slurm job {job.job_id}", job=str(job.job_id), started=time.time()
        )
    return jobs


def run_slurm(
    folder: StudyFolder, todo: Sequence[Cell], cluster: str = "slurm", wait: bool = True, poll_s: float = 5.0
) -> dict[str, Any]:
    """Submit ``todo`` as one job array through submitit (``cluster='local'``: submitit's local
    executor, for trying the path without a cluster). Partition, time, CPUs and GPUs per cell come from
    the study file's ``slurm:`` section (or the command's flags). With ``wait``, follow the jobs and submit
    a preempted cell again."""
    if cluster == "slurm":
        require_sbatch()
    executor = _executor(folder, cluster)
    jobs = _submit(executor, folder, todo)
    print(
        f"submitted {len(jobs)} cells as job array {jobs[0].job_id.split('_')[0] if jobs else '-'} "
        f"({cluster}); logs in {folder.root / 'logs'}",
        flush=True,
    )
    if not wait:
        return {"jobs": [j.job_id for j in jobs]}
    results: dict[str, int] = {}
    pending = dict(zip([c.name for c in todo], zip(todo, jobs)))
    submitted = dict.fromkeys(pending, 1)
    while pending:
        for name, (cell, job) in list(pending.items()):
            if not job.done():
                continue
            try:
                rc = int(job.result())
            except Exception as e:  # the job itself failed (node failure, killed at the limit): not done
                print(f"FAILED  {name}  (job {job.job_id}: {str(e).splitlines()[0] if str(e) else type(e).__name__})")
                rc = 1
            if rc == EXIT_PREEMPTED and submitted[name] <= RESUBMITS:
                submitted[name] += 1
                pending[name] = (cell, _submit(executor, folder, [cell])[0])
                print(
                    f"again   {name}  (preempted in job {job.job_id}; resumes in job {pending[name][1].job_id})",
                    flush=True,
                )
                continue
            results[name] = rc
            if rc == 0:
                folder.state_path(cell).unlink(missing_ok=True)
                print(f"done    {name}  ({cell_summary(folder, cell)})", flush=True)
            else:
                state = "interrupted" if rc == EXIT_PREEMPTED else "failed"
                folder._write_state(cell, state=state, rc=rc, ended=time.time(), job=str(job.job_id))
                if state == "failed":
                    print(f"FAILED  {name}  (exit {rc}); log: {folder.log_path(cell)}", flush=True)
            del pending[name]
        if pending:
            time.sleep(poll_s)
    return results
