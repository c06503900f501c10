"""The contract every density model of the pipeline honours (EHF and the baselines): what training,
evaluation, sampling and the symmetry diagnostics call. ``tests/core/test_model_contract.py`` runs every
variant the config can build through it."""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor

from .coordinates import DataMap
from .symmetries import Symmetry

__all__ = ["DensityModel"]


@runtime_checkable
class DensityModel(Protocol):
    """A density ``p̂(q)`` over data ``q ∈ R^d``, in the data's own coordinates.

    The model owns the map to the coordinates it works in (``data_map``, a
    :class:`~lightning_ehf.core.coordinates.DataMap`: a centre-of-mass frame and a standardisation, whose
    log-determinant its densities include): everything below takes and returns data coordinates.

    * ``elbo_and_constraints(q, n, **options)``: a per-row lower bound on ``log p̂(q)`` (B,) and the
      constraint values ``C_k`` (k,) of the Lagrangian (empty without generators). ``options`` are those of
      :class:`~lightning_ehf.core.objectives.Objective`; a model with ``exact_likelihood`` takes none (its
      bound is ``log p̂(q)`` itself, so the bound and the encoder's estimator do not apply).
    * ``iwae(q, k, chunk)``: the estimate of ``log p̂(q)`` the metrics report, IWAE with ``k`` importance
      samples drawn ``chunk`` at a time (an exact model returns ``log p̂(q)`` for any ``k``).
    * ``sample(n, generator)``: ``n`` samples, (n, d).
    * ``symmetry`` and ``generator_names``: the group in the model's own coordinates (``data_map.restrict``
      of the data's), and the names of the constraints (one per generator for EHF, none for a model without
      Hamiltonians).
    """

    symmetry: Symmetry
    data_map: DataMap
    exact_likelihood: bool

    @property
    def generator_names(self) -> list[str]: ...

    def elbo_and_constraints(self, q: Tensor, n: int = 1, **options: Any) -> tuple[Tensor, Tensor]: ...

    def iwae(self, q: Tensor, k: int = 256, chunk: int = 64) -> Tensor: ...

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor: ...
