"""The training and evaluation interface of a model with an exact log-likelihood (no momenta, no bound)."""

from __future__ import annotations

from torch import Tensor

__all__ = ["ExactLikelihood"]


class ExactLikelihood:
    """Mixin for models that define ``log_prob(q)``: their "ELBO" and "IWAE" are both ``log p(q)``, and they
    have no Hamiltonians, hence no constraints."""

    def log_prob(self, q: Tensor) -> Tensor:
        raise NotImplementedError

    def elbo_and_constraints(self, q: Tensor, n: int = 1, iwae: bool = False, estimator: str = "reparam") -> tuple[Tensor, Tensor]:
        # no momentum, no bound: neither the objective nor the encoder's estimator applies
        return self.log_prob(q), q.new_zeros(0)

    def elbo(self, q: Tensor, n: int = 1) -> Tensor:
        return self.log_prob(q)

    def iwae(self, q: Tensor, k: int = 1, chunk: int = 1) -> Tensor:
        return self.log_prob(q)
