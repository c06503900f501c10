"""Checkpoint files: finding, reading (``weights_only``) and loading them with one-line errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import CheckpointError

__all__ = ["check_state_dict", "load_checkpoint", "resolve_checkpoint"]


def resolve_checkpoint(path: str | Path) -> Path:
    """A ``.ckpt`` file as given, or ``checkpoints/best.ckpt`` (else ``last.ckpt``) of a run folder."""
    p = Path(path)
    if p.is_dir():
        for name in ("best.ckpt", "last.ckpt"):
            if (p / "checkpoints" / name).is_file():
                return p / "checkpoints" / name
        raise CheckpointError(f"no checkpoint in run folder {p} (expected checkpoints/best.ckpt or last.ckpt)")
    if not p.is_file():
        raise CheckpointError(f"checkpoint {p} not found")
    return p


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """``torch.load(..., weights_only=True)`` with one-line errors for missing or corrupted files."""
    p = resolve_checkpoint(path)
    try:
        ckpt = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure means a corrupted or foreign file
        raise CheckpointError(
            f"checkpoint {p} cannot be read (corrupted or not a checkpoint): {type(e).__name__}"
        ) from None
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt or "config" not in ckpt.get("hyper_parameters", {}):
        raise CheckpointError(f"checkpoint {p} was not written by lightning_ehf (no state_dict/config)")
    return ckpt


def _mismatch_summary(error: RuntimeError) -> str:
    """The informative line of a load_state_dict error (which key, which shapes)."""
    lines = [ln.strip() for ln in str(error).splitlines()]
    for marker in ("size mismatch", "Missing key", "Unexpected key"):
        for ln in lines:
            if marker in ln:
                return ln.rstrip(".")
    return lines[0] if lines else type(error).__name__


def check_state_dict(module: nn.Module, state_dict: dict[str, Any], path: str | Path) -> None:
    """Load ``state_dict`` into ``module`` or raise CheckpointError naming what differs."""
    try:
        module.load_state_dict(state_dict)
    except RuntimeError as e:
        raise CheckpointError(
            f"checkpoint {path} does not match the model its config builds: {_mismatch_summary(e)}"
        ) from None
