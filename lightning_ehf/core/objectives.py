"""The training objective: which bound on ``log p_θ(q)`` is maximised, with which encoder gradient, and the
Lagrangian of the constrained problem (docs/design.md §2)

    min_{θ,φ} max_{λ ≥ 0}   −E_q[bound(q)] + Σ_k λ_k (C_k − ε_k).

This is the only place the Lagrangian is written; the LightningModule, the benchmarks and the scripts
call :func:`lagrangian`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from torch import Tensor, nn

from .constraints import LagrangeMultipliers

__all__ = ["Objective", "lagrangian"]


def lagrangian(bound: Tensor, constraint: Tensor, multipliers: LagrangeMultipliers) -> Tensor:
    """``−mean(bound) + Σ_k λ_k (C_k − ε)`` for per-row bounds (B,) and constraint values ``C_k`` (k,);
    λ is a constant here (the multipliers move by their own closed-form update)."""
    return -bound.mean() + multipliers.penalty(constraint)


@dataclass(frozen=True)
class Objective:
    """The bound a model trains on: ``elbo`` (the mean of ``samples`` log-weights) or ``iwae`` (their
    log-mean-exp, the IWAE bound of Burda et al. 2016), with the ``reparam`` or ``dreg`` (doubly
    reparameterised, Tucker et al. 2019) encoder gradient."""

    bound: Literal["elbo", "iwae"] = "elbo"
    samples: int = 1
    estimator: Literal["reparam", "dreg"] = "reparam"

    def __post_init__(self) -> None:
        if self.bound not in ("elbo", "iwae") or self.estimator not in ("reparam", "dreg") or self.samples < 1:
            raise ValueError(f"objective: bound elbo|iwae, estimator reparam|dreg, samples >= 1; got {self}")

    @property
    def name(self) -> str:
        """The metric name of the bound (``train/elbo`` or ``train/iwae``)."""
        return self.bound

    def options(self) -> dict[str, Any]:
        """Keyword options of ``elbo_and_constraints`` for this objective; only the ones that differ from the
        plain ELBO, so models with the plain ``(q, n)`` interface keep working."""
        out: dict[str, Any] = {"iwae": True} if self.bound == "iwae" else {}
        if self.estimator != "reparam":
            out["estimator"] = self.estimator
        return out

    def __call__(self, model: nn.Module, q: Tensor) -> tuple[Tensor, Tensor]:
        """Per-row bound (B,) and constraint values (k,) of ``model`` on a batch ``q``."""
        return model.elbo_and_constraints(q, self.samples, **self.options())
