"""Standard-flow baselines behind the same interface as the EHF model, so every comparison runs
through one pipeline (data, module, logging, evaluation)."""

from __future__ import annotations

import torch
import zuko
from torch import Tensor, nn

from .core.exact import ExactLikelihood
from .core.symmetries import Symmetry

__all__ = ["NSFModel"]


class NSFModel(ExactLikelihood, nn.Module):
    """A zuko neural spline flow (Durkan et al. 2019) on q: a :class:`~lightning_ehf.core.density.DensityModel`
    with an exact likelihood, so its bound and its reported estimate are both ``log p(q)``. It has no
    Hamiltonians, hence no constraints; the symmetry is kept for the invariance diagnostics."""

    def __init__(self, symmetry: Symmetry, transforms: int = 4, bins: int = 8, hidden: int = 64, depth: int = 2) -> None:
        super().__init__()
        self.symmetry = symmetry
        self.dim = symmetry.dim
        self.generator_names: list[str] = []
        self.flow = zuko.flows.NSF(features=symmetry.dim, transforms=transforms, bins=bins,
                                   hidden_features=[hidden] * depth)

    def log_prob(self, q: Tensor) -> Tensor:
        """``log p(q)`` per row (B,)."""
        if q.ndim < 1 or q.shape[-1] != self.dim:
            raise ValueError(f"q must have shape (..., {self.dim}), got {tuple(q.shape)}")
        return self.flow().log_prob(q)

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """``n`` samples, (n, d). zuko draws from torch's global generator: ``generator`` is not used."""
        return self.flow().sample((n,))
