"""Facts about this machine and its processes, shared by checkpointing, studies and benchmarks (no heavy imports)."""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

__all__ = ["pid_alive", "hardware"]


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this machine and has not exited (a zombie counts as exited)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # Linux: an exited process whose parent is gone stays a zombie until init reaps it
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        return True


def hardware() -> dict[str, Any]:
    """CPU model, cores, torch threads and version, Python, and the GPU if one is visible."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info: dict[str, Any] = {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": "cpu",
    }
    if torch.cuda.is_available():
        info["device"] = "cuda"
        info["gpu"] = torch.cuda.get_device_name(0)
    return info
