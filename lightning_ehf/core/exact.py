"""The part of the model contract (:class:`~lightning_ehf.core.density.DensityModel`) that every model with an
exact log-likelihood shares: no momenta, no bound, no Hamiltonians."""

from __future__ import annotations

import torch
from torch import Tensor

from .coordinates import DataMap

__all__ = ["ExactLikelihood"]


class ExactLikelihood:
    """Mixin for models that define ``model_log_prob(q̃)`` and ``model_sample(n)`` in their own coordinates q̃:
    :meth:`log_prob` and :meth:`sample` take and return the data's, through the model's ``data_map``
    (``log p(x) = log p̃(q̃) − log |det W|``, :class:`~.coordinates.DataMap`). Their training bound and their
    reported estimate are both ``log p(x)``, and they have no constraints. They declare ``exact_likelihood``, so
    the pipeline passes them no bound options (IWAE, DReG): those do not apply."""

    exact_likelihood = True
    data_map: DataMap

    def model_log_prob(self, q: Tensor) -> Tensor:
        raise NotImplementedError

    def model_sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        raise NotImplementedError

    def log_prob(self, x: Tensor) -> Tensor:
        """``log p(x)`` per row of data coordinates x (..., data_dim)."""
        if x.ndim < 1 or x.shape[-1] != self.data_map.data_dim:
            raise ValueError(f"x must have shape (..., {self.data_map.data_dim}), got {tuple(x.shape)}")
        return self.model_log_prob(self.data_map.to_model(x)) - self.data_map.log_det

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """``n`` samples in data coordinates, (n, data_dim)."""
        return self.data_map.from_model(self.model_sample(n, generator))

    def elbo_and_constraints(self, q: Tensor, n: int = 1) -> tuple[Tensor, Tensor]:
        """The exact ``log p(q)`` (the tightest bound, whatever ``n``) and no constraints."""
        return self.log_prob(q), q.new_zeros(0)

    def iwae(self, q: Tensor, k: int = 1, chunk: int = 1) -> Tensor:
        """The exact ``log p(q)``: importance samples add nothing to an exact likelihood."""
        return self.log_prob(q)
