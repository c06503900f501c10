"""Loading trained runs from checkpoints alone (they carry the resolved config)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch
from torch import Tensor, nn

from .errors import CheckpointError

__all__ = ["Run", "check_state_dict", "load_checkpoint", "load_run", "resolve_checkpoint"]


@dataclass
class Run:
    """A trained model rebuilt from a checkpoint."""

    model: nn.Module
    config: dict[str, Any]
    dim: int
    entropy: Optional[float]
    path: Path
    frame: Any = None  # the CentreOfMassFrame when the model lives in centre-of-mass-free coordinates

    def split_data(self, split: str = "test") -> Tensor:
        """The run's fixed ``test`` or ``val`` set, regenerated from its config (targets) or its data file."""
        from omegaconf import OmegaConf

        from .build import make_datamodule

        from .config.schema import Config

        # onto the schema: a checkpoint written before a key existed gets the key's default
        dm = make_datamodule(OmegaConf.merge(OmegaConf.structured(Config), self.config))
        dm.setup("test")
        data = {"test": dm.test_data, "val": dm.val_data}[split]
        assert data is not None
        return data

    def test_data(self) -> Tensor:
        """The run's fixed test set (``split_data("test")``)."""
        return self.split_data("test")


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
        raise CheckpointError(f"checkpoint {p} cannot be read (corrupted or not a checkpoint): {type(e).__name__}") from None
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
        raise CheckpointError(f"checkpoint {path} does not match the model its config builds: {_mismatch_summary(e)}") from None


def load_run(path: str | Path) -> Run:
    """Rebuild the model of a checkpoint and load its weights."""
    from omegaconf import OmegaConf

    from .build import make_data_symmetry, make_model, particle_dim_of, resolve_translation
    from .core.targets import make_target

    ckpt = load_checkpoint(path)
    hp = ckpt["hyper_parameters"]
    config = hp["config"]
    cfg = OmegaConf.create(config)
    target = make_target(cfg.data.target) if cfg.data.target else None
    dim = int(hp.get("dim") or (target.dim if target is not None else 0))
    if dim <= 0:
        raise CheckpointError(f"checkpoint {resolve_checkpoint(path)} does not record the data dimension")
    # the model's dimension; centre-of-mass-free coordinates have one particle's fewer than the data
    data_dim = target.dim if target is not None else dim
    if target is None and resolve_translation(cfg) == "com":
        data_dim = dim + (particle_dim_of(cfg) or 0)
    symmetry, frame = make_data_symmetry(cfg, data_dim, target)
    model = make_model(cfg, symmetry)
    prefix = "model."
    state = {k[len(prefix):]: v for k, v in ckpt["state_dict"].items() if k.startswith(prefix)}
    check_state_dict(model, state, resolve_checkpoint(path))
    model.eval()
    return Run(model, config, dim, hp.get("entropy"), resolve_checkpoint(path), frame)
