"""Standard-flow baselines behind the same interface as the EHF model, so every comparison runs
through one pipeline (data, module, logging, evaluation)."""

from __future__ import annotations

import torch
import zuko
from torch import Tensor, nn

from .core.coordinates import DataMap
from .core.exact import ExactLikelihood
from .core.symmetries import Symmetry

__all__ = ["NSFModel"]


class NSFModel(ExactLikelihood, nn.Module):
    """A zuko neural spline flow (Durkan et al. 2019) on q: a :class:`~lightning_ehf.core.density.DensityModel`
    with an exact likelihood, so its bound and its reported estimate are both ``log p(q)``. It has no
    Hamiltonians, hence no constraints; the symmetry is kept for the invariance diagnostics."""

    def __init__(self, symmetry: Symmetry, transforms: int = 4, bins: int = 8, hidden: int = 64, depth: int = 2,
                 data_map: DataMap | None = None) -> None:
        super().__init__()
        self.symmetry = symmetry  # in the model's coordinates
        self.dim = symmetry.dim
        self.data_map = data_map if data_map is not None else DataMap(symmetry.dim)
        self.generator_names: list[str] = []
        self.flow = zuko.flows.NSF(features=symmetry.dim, transforms=transforms, bins=bins,
                                   hidden_features=[hidden] * depth)

    def model_log_prob(self, q: Tensor) -> Tensor:
        """``log p̃(q̃)`` per row (B,) of the model's coordinates."""
        return self.flow().log_prob(q)

    def model_sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """``n`` samples of the model's coordinates, (n, d). zuko draws from torch's global generator:
        ``generator`` is not used."""
        return self.flow().sample((n,))
