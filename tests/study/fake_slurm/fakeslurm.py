"""A stand-in for SLURM's commands on one machine, enough for submitit and ``ehf study`` (tests only).

``sbatch`` runs each task of the job array at once in the background, as ``bash SCRIPT`` with the SLURM
variables set; ``srun`` runs its command with its ``--output``/``--error`` files; ``squeue``, ``sacct``,
``scancel`` and ``scontrol requeue`` read and change the jobs' states, kept as JSON files in ``$FAKE_SLURM_DIR``.

The time limit: ``FAKE_SLURM_SIGNAL_WHEN`` (JSON, a list of paths, one per array task) makes the first run of
task i receive the script's ``--signal`` (e.g. ``USR2``), sent to every process of the job except the batch
shell (as SLURM signals the processes of a job step), once path i exists; ``FAKE_SLURM_GRACE_S`` later
(default 60) what still runs is killed (state TIMEOUT). A requeued task (``scontrol requeue``) runs again.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

STATE = Path(os.environ.get("FAKE_SLURM_DIR", "/tmp/fake_slurm"))
LIVE = ("PENDING", "RUNNING", "REQUEUED", "COMPLETING")


def _path(job: str) -> Path:
    return STATE / f"{job}.json"


def _read(job: str) -> dict:
    try:
        return json.loads(_path(job).read_text())
    except (OSError, ValueError):
        return {}


def _write(job: str, **info) -> None:
    data = {**_read(job), **info}
    tmp = _path(job).with_suffix(".tmp")
    tmp.write_text(json.dumps(data))
    tmp.replace(_path(job))


def _tasks(ids: list[str]) -> list[str]:
    """The task ids (``12_0``) that ``ids`` (``12`` or ``12_0``) name."""
    out = []
    for job in ids:
        out += sorted(p.stem for p in STATE.glob("*.json") if p.stem == job or p.stem.startswith(f"{job}_"))
    return out


def sbatch(args: list[str]) -> int:
    script = Path(args[-1])
    text = script.read_text()
    flags = dict(re.findall(r"^#SBATCH --([\w-]+)=?(.*)$", text, re.M))
    STATE.mkdir(parents=True, exist_ok=True)
    counter = STATE / "counter"
    job = int(counter.read_text()) + 1 if counter.exists() else 1000
    counter.write_text(str(job))
    array = flags.get("array", "0-0").split("%")[0]
    first, last = (int(x) for x in (array.split("-") if "-" in array else (array, array)))
    for task in range(first, last + 1):
        _write(f"{job}_{task}", state="PENDING", attempts=0)
    subprocess.Popen(
        [sys.executable, __file__, "_schedule", str(job), str(first), str(last), str(script)],
        start_new_session=True,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=open(STATE / f"{job}.scheduler.log", "a"),
    )
    print(f"Submitted batch job {job}")
    return 0


def _tree(root: int) -> list[int]:
    """``root`` and its descendants."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo += children.get(pid, [])
    return out


def _signal_all(pids: list[int], signum: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass


def _run_task(job: int, task: int, script: Path, flags: dict, when: list[str], grace: float) -> None:
    name = f"{job}_{task}"
    sig = getattr(signal, "SIG" + flags.get("signal", "USR2@90").split("@")[0].removeprefix("B:"))
    while True:
        attempt = _read(name).get("attempts", 0) + 1
        _write(name, state="RUNNING", attempts=attempt, requeue=False)
        env = dict(
            os.environ,
            SLURM_JOB_ID=str(job * 100 + task),
            SLURM_ARRAY_JOB_ID=str(job),
            SLURM_ARRAY_TASK_ID=str(task),
            SLURM_JOB_NAME=flags.get("job-name", "job"),
            SLURM_NTASKS="1",
            SLURM_JOB_NUM_NODES="1",
            SLURM_NODEID="0",
            SLURM_PROCID="0",
            SLURM_LOCALID="0",
            SLURM_JOB_NODELIST="fakenode",
            SLURM_RESTART_COUNT=str(attempt - 1),
        )
        out = flags.get("output", f"slurm-{name}.out").replace("%A", str(job)).replace("%a", str(task))
        out = out.replace("%j", str(job * 100 + task))
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        with open(out, "a") as log:
            proc = subprocess.Popen(
                ["bash", str(script)], env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        signalled, state = None, None
        while proc.poll() is None:
            time.sleep(0.1)
            if attempt == 1 and signalled is None and task < len(when) and when[task] and Path(when[task]).exists():
                _signal_all([p for p in _tree(proc.pid) if p != proc.pid], sig)
                signalled = time.time()
                _write(name, signalled=signalled)
            if signalled is not None and time.time() - signalled > grace:
                _signal_all(_tree(proc.pid), signal.SIGKILL)
                state = "TIMEOUT"
            if _read(name).get("cancel"):
                _signal_all(_tree(proc.pid), signal.SIGTERM)
                state = "CANCELLED"
        _signal_all(_tree(proc.pid)[1:], signal.SIGKILL)  # what the job left behind ends with it
        if _read(name).get("requeue") and state is None:
            _write(name, state="PENDING")
            time.sleep(0.5)
            continue
        _write(name, state=state or ("COMPLETED" if proc.returncode == 0 else "FAILED"), rc=proc.returncode)
        return


def _schedule(job: int, first: int, last: int, script: Path) -> None:
    flags = dict(re.findall(r"^#SBATCH --([\w-]+)=?(.*)$", script.read_text(), re.M))
    when = json.loads(os.environ.get("FAKE_SLURM_SIGNAL_WHEN", "[]"))
    grace = float(os.environ.get("FAKE_SLURM_GRACE_S", "60"))
    threads = [
        threading.Thread(target=_run_task, args=(job, t, script, flags, when, grace)) for t in range(first, last + 1)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def srun(args: list[str]) -> int:
    out = err = None
    i = 0
    while i < len(args) and args[i].startswith("-"):
        if args[i] in ("--output", "-o", "--error", "-e"):
            value = args[i + 1]
            for key, var in (("%j", "SLURM_JOB_ID"), ("%A", "SLURM_ARRAY_JOB_ID"), ("%a", "SLURM_ARRAY_TASK_ID")):
                value = value.replace(key, os.environ.get(var, ""))
            value = value.replace("%t", "0")
            out, err = (value, err) if args[i] in ("--output", "-o") else (out, value)
            i += 2
        else:
            i += 1
    for path, fd in ((out, 1), (err or out, 2)):
        if path:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            os.dup2(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644), fd)
    os.execvp(args[i], args[i:])
    return 1


def _option(args: list[str], *names: str) -> list[str]:
    values = []
    for i, a in enumerate(args):
        if a in names and i + 1 < len(args):
            values.append(args[i + 1])
        for n in names:
            if a.startswith(n + "="):
                values.append(a.split("=", 1)[1])
    return values


def squeue(args: list[str]) -> int:
    for job in _tasks(_option(args, "-j", "--jobs")):
        info = _read(job)
        if info.get("state") in LIVE:
            print(info["state"])
    return 0


def sacct(args: list[str]) -> int:
    fields = (_option(args, "-o", "--format") or ["JobID,State,NodeList"])[0].split(",")
    if "-n" not in args and "--noheader" not in args:
        print("|".join(fields))
    for job in _tasks(_option(args, "-j", "--jobs")):
        info = _read(job)
        row = {"JobID": job, "State": info.get("state", "PENDING"), "NodeList": "fakenode"}
        print("|".join(row.get(f, "") for f in fields))
    return 0


def scancel(args: list[str]) -> int:
    sig = _option(args, "--signal", "-s")
    for job in _tasks([a for a in args if re.fullmatch(r"\d+(_\d+)?", a)]):
        if sig:
            continue  # signals to jobs: not needed by these tests
        _write(job, cancel=True)
    return 0


def scontrol(args: list[str]) -> int:
    if args[:1] == ["requeue"]:
        for job in _tasks(args[1].split(",")):
            _write(job, requeue=True)
        return 0
    print(f"fake scontrol: unsupported {args}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    command, rest = sys.argv[1], sys.argv[2:]
    if command == "_schedule":
        _schedule(int(rest[0]), int(rest[1]), int(rest[2]), Path(rest[3]))
        sys.exit(0)
    sys.exit(
        {"sbatch": sbatch, "srun": srun, "squeue": squeue, "sacct": sacct, "scancel": scancel, "scontrol": scontrol}[
            command
        ](rest)
    )
