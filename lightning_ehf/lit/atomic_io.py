"""Atomic checkpoint writes (temporary file, then rename) that never lose the previous good checkpoint."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.utilities.rank_zero import rank_zero_warn
from lightning.pytorch.plugins.io import TorchCheckpointIO
from typing_extensions import override

from ..system import pid_alive

__all__ = ["SafeCheckpointIO", "nonfinite_entries"]


def nonfinite_entries(state_dict: dict[str, Any]) -> list[str]:
    """Names of floating-point tensors holding NaN or ±Inf."""
    return [
        k
        for k, v in state_dict.items()
        if isinstance(v, torch.Tensor) and v.is_floating_point() and not bool(torch.isfinite(v).all())
    ]


def _remove_stale_temporaries(path: Path) -> None:
    """Delete ``.NAME.tmp-<pid>`` files left by writers that were killed mid-save."""
    for tmp in path.parent.glob(f".{path.name}.tmp-*"):
        pid = tmp.name.rsplit("-", 1)[-1]
        if pid.isdigit() and int(pid) != os.getpid() and not pid_alive(int(pid)):
            tmp.unlink(missing_ok=True)


class SafeCheckpointIO(TorchCheckpointIO):
    """Writes checkpoints atomically (a temporary file in the same folder, fsync, then rename), so
    a kill during a save leaves the previous file intact; refuses to write non-finite weights."""

    @override
    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        bad = nonfinite_entries(checkpoint.get("state_dict", {}))
        if bad:
            rank_zero_warn(
                f"not writing checkpoint {path}: non-finite values in {', '.join(bad[:5])}; "
                "the previous checkpoint is kept"
            )
            return
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale_temporaries(path)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        try:
            with open(tmp, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            if tmp.exists():
                tmp.unlink()
