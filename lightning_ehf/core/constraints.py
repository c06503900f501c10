"""Lagrange multipliers for the symmetry constraints ``C_k = E[{g_k, H}²] ≤ ε_k``.

Training solves ``min_θ max_{λ ≥ 0} −ELBO + Σ_k λ_k (C_k − ε_k)`` (docs/design.md §2). The multipliers
are buffers (checkpointed, follow ``.to``), updated in closed form after each optimiser step from
``C̄_k`` — which the caller must already have averaged over all devices, so every rank applies the
same update and holds the same λ.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

__all__ = [
    "FEASIBLE_RATIO",
    "INFEASIBLE_OFFSET",
    "LagrangeMultipliers",
    "MODES",
    "RULES",
    "feasibility_ratio",
    "is_infeasible_score",
    "selection_score",
]

MODES = ("none", "penalty", "dual")
RULES = ("additive", "augmented", "geco")
#: a constraint counts as met when its bracket RMS is within this factor of the allowed ``√ε`` (``C ≤ 1.21 ε``)
FEASIBLE_RATIO = 1.1
#: added to an infeasible checkpoint's NLL, so that it ranks after every feasible one (a data point's NLL stays far
#: within ±INFEASIBLE_OFFSET / 2; the value is also what checkpoints of the earlier rule hold, 10⁴ + their ratio)
INFEASIBLE_OFFSET = 1.0e4


def feasibility_ratio(bracket_rms: Tensor, tolerance: float) -> float:
    """``max_k RMS_k / √ε``: at most 1 when every ``C_k = RMS_k² ≤ ε``; 0 without generators."""
    if bracket_rms.numel() == 0:
        return 0.0
    worst = float(bracket_rms.max())
    return worst / math.sqrt(tolerance) if tolerance > 0 else (0.0 if worst == 0 else math.inf)


def selection_score(nll: float, ratio: float) -> float:
    """What picks the checkpoint of a constrained run (lower is better): the NLL of a feasible one
    (``ratio ≤ FEASIBLE_RATIO``), else ``INFEASIBLE_OFFSET + nll``, so that any feasible checkpoint beats every
    infeasible one and, while none is feasible, the lowest NLL is kept. (Keeping the least infeasible instead kept
    barely trained flows, whose brackets are small: two_rings4d at η = 1 tested step 250–400 with KL 1.6.)"""
    return float(nll) if ratio <= FEASIBLE_RATIO else INFEASIBLE_OFFSET + float(nll)


def is_infeasible_score(score: float) -> bool:
    """Whether a :func:`selection_score` is an infeasible checkpoint's."""
    return float(score) >= INFEASIBLE_OFFSET / 2


class LagrangeMultipliers(nn.Module):
    """One multiplier ``λ_k ≥ 0`` per generator.

    Modes:
        ``none``: λ ≡ 0, the constraint is only monitored.
        ``penalty``: λ fixed at ``init``.
        ``dual``: updated after every step by ``rule``:
            ``additive`` (projected dual ascent):  ``λ ← max(0, λ + η (C̄ − ε))``;
            ``augmented`` (method of multipliers, Bertsekas 1982, §3.1 for inequalities): the loss term is
            ``[max(0, λ + ρ (C − ε))² − λ²] / 2ρ``, whose slope in ``C`` is ``max(0, λ + ρ (C − ε))``, and
            ``λ ← max(0, λ + ρ (C̄ − ε))`` with ``ρ = η``: a violated constraint is pushed back at once instead of
            waiting for λ to grow;
            ``geco`` (Rezende & Viola 2018): ``m ← α m + (1 − α) C̄``, ``λ ← λ · exp(η (m − ε))``,
            λ clamped to [1e-6, 1e6] so it can recover from either end.
    """

    def __init__(
        self,
        names: Sequence[str],
        mode: str = "dual",
        rule: str = "additive",
        tolerance: float = 1e-3,
        lr: float = 1.0,
        init: float = 0.0,
        ema: float = 0.9,
    ) -> None:
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"unknown constraint mode '{mode}'; choose from {MODES}")
        if rule not in RULES:
            raise ValueError(f"unknown multiplier rule '{rule}'; choose from {RULES}")
        if tolerance < 0 or lr <= 0 or init < 0 or not 0 <= ema < 1:
            raise ValueError("need tolerance ≥ 0, lr > 0, init ≥ 0 and 0 ≤ ema < 1")
        self.names = list(names)
        self.mode, self.rule = mode, rule
        self.tolerance, self.lr, self.ema = float(tolerance), float(lr), float(ema)
        k = len(self.names)
        start = 0.0 if mode == "none" else init
        if mode == "dual" and rule == "geco":
            start = max(start, 1e-6)
        self.register_buffer("value", torch.full((k,), float(start)))
        self.register_buffer("moving_average", torch.zeros(k))
        self.register_buffer("updates", torch.zeros((), dtype=torch.long))

    @property
    def active(self) -> bool:
        return self.mode != "none" and len(self.names) > 0

    def penalty(self, constraint: Tensor) -> Tensor:
        """``Σ_k λ_k (C_k − ε)``: the Lagrangian term added to the loss (λ is a constant here); the augmented
        rule's term is ``Σ_k [max(0, λ_k + ρ (C_k − ε))² − λ_k²] / 2ρ``."""
        if not self.active:
            return constraint.sum() * 0.0
        lam = self.value.to(constraint)
        if self.mode == "dual" and self.rule == "augmented":
            shifted = (lam + self.lr * (constraint - self.tolerance)).clamp_min(0.0)
            return ((shifted.square() - lam.square()) / (2 * self.lr)).sum()
        return (lam * (constraint - self.tolerance)).sum()

    @torch.no_grad()
    def update(self, constraint: Tensor) -> None:
        """One closed-form multiplier step from the (rank-averaged) constraint values ``C̄``, (k,)."""
        if self.mode != "dual" or not self.names:
            return
        c = constraint.detach().to(self.value)
        if self.rule in ("additive", "augmented"):
            self.value.copy_((self.value + self.lr * (c - self.tolerance)).clamp_min(0.0))
        else:
            ma = c if int(self.updates) == 0 else self.ema * self.moving_average + (1 - self.ema) * c
            self.moving_average.copy_(ma)
            step = (self.lr * (ma - self.tolerance)).clamp(-math.log(10.0), math.log(10.0))
            self.value.copy_((self.value * step.exp()).clamp(1e-6, 1e6))
        self.updates += 1

    def as_dict(self) -> dict[str, float]:
        return {name: float(v) for name, v in zip(self.names, self.value.tolist())}
