"""Standard-flow baselines behind the same interface as the EHF model, so every comparison runs
through one pipeline (data, module, logging, evaluation)."""

from __future__ import annotations

from collections.abc import Iterable

import torch
import zuko
from torch import Tensor, nn

from .core.coordinates import DataMap
from .core.exact import ExactLikelihood
from .core.symmetries import Symmetry, no_symmetry

__all__ = ["NSFModel", "NSF_WIDTHS", "nsf_width_for_params"]

#: the widths a size-matched NSF is chosen from (``ehf bench``'s peer)
NSF_WIDTHS = range(16, 513, 4)


class NSFModel(ExactLikelihood, nn.Module):
    """A zuko neural spline flow (Durkan et al. 2019) on q: a :class:`~lightning_ehf.core.density.DensityModel`
    with an exact likelihood, so its bound and its reported estimate are both ``log p(q)``. It has no
    Hamiltonians, hence no constraints; the symmetry is kept for the invariance diagnostics."""

    def __init__(
        self,
        symmetry: Symmetry,
        transforms: int = 4,
        bins: int = 8,
        hidden: int = 64,
        depth: int = 2,
        data_map: DataMap | None = None,
    ) -> None:
        super().__init__()
        self.symmetry = symmetry  # in the model's coordinates
        self.dim = symmetry.dim
        self.data_map = data_map if data_map is not None else DataMap(symmetry.dim)
        self.generator_names: list[str] = []
        self.flow = zuko.flows.NSF(
            features=symmetry.dim, transforms=transforms, bins=bins, hidden_features=[hidden] * depth
        )

    def model_log_prob(self, q: Tensor) -> Tensor:
        """``log p̃(q̃)`` per row (B,) of the model's coordinates."""
        return self.flow().log_prob(q)

    def model_sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """``n`` samples of the model's coordinates, (n, d). zuko draws from torch's global generator:
        ``generator`` is not used."""
        return self.flow().sample((n,))


def nsf_width_for_params(
    dim: int, n_params: int, transforms: int = 4, bins: int = 8, depth: int = 2, widths: Iterable[int] = NSF_WIDTHS
) -> int:
    """The width (``model.hidden``) in ``widths`` (increasing) whose NSF on ``dim`` coordinates, with ``transforms``
    transforms of ``bins`` bins and ``depth`` hidden layers, has the trainable parameter count closest to
    ``n_params``: the size-matched peer of a model with ``n_params`` parameters. The search stops at the first
    width above ``n_params``."""
    best: tuple[int, int] | None = None
    for hidden in widths:
        model = NSFModel(no_symmetry(dim), transforms=transforms, bins=bins, hidden=hidden, depth=depth)
        size = sum(p.numel() for p in model.parameters() if p.requires_grad)
        if best is None or abs(size - n_params) < abs(best[1] - n_params):
            best = (hidden, size)
        if size > n_params:
            break
    if best is None:
        raise ValueError("nsf_width_for_params: no widths to choose from")
    return best[0]
