"""``system.pid_alive``: what studies and the checkpoint writer use to tell a live process from a dead one."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from lightning_ehf.system import pid_alive


def _state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def test_pid_alive_tells_running_from_exited_processes():
    assert pid_alive(os.getpid())
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        assert pid_alive(child.pid)
    finally:
        child.kill()
    # killed but not yet reaped: a zombie, which counts as exited
    deadline = time.time() + 30
    while _state(child.pid) != "Z":
        assert time.time() < deadline, "the killed child never became a zombie"
        time.sleep(0.01)
    assert not pid_alive(child.pid)
    child.wait()  # reaped: the process id is gone
    assert not pid_alive(child.pid)
