"""Trained runs rebuilt from their checkpoints, scored and sampled (``ehf eval``, ``ehf sample``): IWAE log-likelihoods per row, with the
KL against a known target (plain and paired with the target's density row by row), and samples in the
data's own coordinates (particles with their centre of mass at the origin)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from .checkpoints import check_state_dict, load_checkpoint, resolve_checkpoint
from .config.load import from_saved
from .config.schema import Config
from .core.targets import make_target
from .data.files import load_array
from .errors import CheckpointError

__all__ = ["Run", "draw_samples", "evaluate", "load_run", "rows_to_score"]

EVAL_ROWS = 1024  # rows scored at once


@dataclass
class Run:
    """A trained model rebuilt from a checkpoint."""

    model: nn.Module  # takes and returns the data's coordinates (it maps them to its own)
    config: Config
    dim: int  # the data's coordinates
    entropy: float | None
    path: Path

    def split_data(self, split: str = "test") -> Tensor:
        """The run's fixed ``test`` or ``val`` set, regenerated from its config (targets) or its data file."""
        from .build import make_datamodule

        dm = make_datamodule(self.config)
        dm.setup("test")
        data = {"test": dm.test_data, "val": dm.val_data}[split]
        assert data is not None
        return data

    def test_data(self) -> Tensor:
        """The run's fixed test set (``split_data("test")``)."""
        return self.split_data("test")


def load_run(path: str | Path) -> Run:
    """Rebuild the model of a checkpoint and load its weights."""
    from .build import make_data_symmetry, make_model, particle_dim_of, resolve_translation
    from .core.targets import make_target

    ckpt = load_checkpoint(path)
    hp = ckpt["hyper_parameters"]
    cfg = from_saved(hp["config"])
    target = make_target(cfg.data.target) if cfg.data.target else None
    # the model's dimension; centre-of-mass-free coordinates have one particle's fewer than the data
    model_dim = int(hp.get("dim") or (target.dim if target is not None else 0))
    if model_dim <= 0:
        raise CheckpointError(f"checkpoint {resolve_checkpoint(path)} does not record the data dimension")
    data_dim = target.dim if target is not None else model_dim
    if target is None and resolve_translation(cfg) == "com":
        data_dim = model_dim + (particle_dim_of(cfg) or 0)
    symmetry = make_data_symmetry(cfg, data_dim, target)
    model = make_model(cfg, symmetry)
    prefix = "model."
    state = {k[len(prefix) :]: v for k, v in ckpt["state_dict"].items() if k.startswith(prefix)}
    check_state_dict(model, state, resolve_checkpoint(path))
    model.eval()
    return Run(model, cfg, data_dim, hp.get("entropy"), resolve_checkpoint(path))


def rows_to_score(run: Run, data: str | None, split: str | None, n: int | None) -> tuple[Tensor, str]:
    """The rows to score, in the data's coordinates, and where they come from: a data file, or the run's
    own test (default) or validation set; the first ``n`` rows when given."""
    if data:
        q = torch.from_numpy(load_array(data, expected_dim=run.dim, against="the checkpoint's model"))
        source = str(data)
    else:
        split = split or "test"
        q, source = run.split_data(split), f"{split} set of the run's config"
    return (q[:n] if n is not None else q), source


def _stderr(values: np.ndarray) -> float:
    return float(values.std(ddof=1) / np.sqrt(len(values))) if len(values) > 1 else 0.0


def evaluate(
    run: Run, q: Tensor, source: str, k: int | None = None, seed: int = 0, paired: bool = True
) -> tuple[dict[str, Any], np.ndarray]:
    """``log p̂(q)`` per row (IWAE with ``k`` importance samples, default the run's ``eval.iw_samples``; in
    float64) and a summary: ``nll`` with its standard error and, for the run's own rows of a known target
    (``paired``), ``kl = nll − H`` and ``kl_paired`` = mean of ``log p(q) − log p̂(q)`` with its error."""
    k = k if k is not None else run.config.eval.iw_samples
    torch.manual_seed(seed)
    model, q = run.model.double(), q.double()
    chunk = run.config.eval.iw_chunk
    with torch.no_grad():
        logp = torch.cat([model.iwae(q[i : i + EVAL_ROWS], k, chunk) for i in range(0, q.shape[0], EVAL_ROWS)])
    logp_np = logp.cpu().numpy().astype(np.float64)
    summary: dict[str, Any] = {
        "source": source,
        "n": int(q.shape[0]),
        "iw_samples": k,
        "nll": float(-logp_np.mean()),
        "nll_stderr": _stderr(logp_np),
    }
    if run.entropy is not None and paired:
        summary["kl"] = summary["nll"] - run.entropy
        if run.config.data.target is not None:  # the same KL paired row by row with the target's density
            target = make_target(run.config.data.target)
            with torch.no_grad():
                diff = target.log_prob(q).cpu().numpy() - logp_np
            summary["kl_paired"] = float(diff.mean())
            summary["kl_paired_stderr"] = _stderr(diff)
    return summary, logp_np


def draw_samples(run: Run, n: int, seed: int = 0) -> tuple[np.ndarray, str]:
    """``n`` samples of the run's model in the data's coordinates (float64), and a note on those coordinates."""
    torch.manual_seed(seed)
    with torch.no_grad():
        x = run.model.sample(n).double().cpu()
    return x.numpy(), run.model.data_map.sample_note()
