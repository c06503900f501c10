"""The part of the model contract (:class:`~lightning_ehf.core.density.DensityModel`) that every model with an
exact log-likelihood shares: no momenta, no bound, no Hamiltonians."""

from __future__ import annotations

from torch import Tensor

__all__ = ["ExactLikelihood"]


class ExactLikelihood:
    """Mixin for models that define ``log_prob(q)``: their training bound and their reported estimate are both
    ``log p(q)``, and they have no constraints. They declare ``exact_likelihood``, so the pipeline passes them
    no bound options (IWAE, DReG): those do not apply."""

    exact_likelihood = True

    def log_prob(self, q: Tensor) -> Tensor:
        raise NotImplementedError

    def elbo_and_constraints(self, q: Tensor, n: int = 1) -> tuple[Tensor, Tensor]:
        """The exact ``log p(q)`` (the tightest bound, whatever ``n``) and no constraints."""
        return self.log_prob(q), q.new_zeros(0)

    def iwae(self, q: Tensor, k: int = 1, chunk: int = 1) -> Tensor:
        """The exact ``log p(q)``: importance samples add nothing to an exact likelihood."""
        return self.log_prob(q)
