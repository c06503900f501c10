"""The statistics of a study report: which cells may carry a claim (flags), means and spreads over seeds,
paired differences with Student-t intervals, and feasibility against the constraint's tolerance."""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from lightning_ehf.core.constraints import FEASIBLE_RATIO

__all__ = [
    "CONFIDENCE",
    "DIVERGED_NATS",
    "FEASIBLE_FACTOR",
    "FLAGS",
    "UNDER_TRAINED_FRACTION",
    "best_val_nll",
    "cell_flags",
    "diverged_after_best",
    "feasibility_ratio",
    "hit_cap",
    "is_flagged",
    "mean_std",
    "t_interval",
    "under_trained",
]

#: a cell whose best validation falls in the last 10 % of its step cap (boundary included) may still have been improving
UNDER_TRAINED_FRACTION = 0.9
#: a final validation NLL this many nats above the best one marks a blow-up (or runaway overfitting) after the best
#: step. Checkpoint selection on a few dozen validation rows moves test KL by 0.03–0.16 nats, so 1 nat is more than
#: six times the largest validation noise seen in the shipped studies.
DIVERGED_NATS = 1.0
#: a constrained cell is feasible when its bracket RMS is within this factor of √tolerance: the factor that
#: ``constraint.selection=feasible`` uses to pick checkpoints
FEASIBLE_FACTOR = FEASIBLE_RATIO
#: the coverage of the paired intervals
CONFIDENCE = 0.95

#: row key -> the phrase results.md uses. A cell carrying any of them supports no claim.
FLAGS: dict[str, str] = {
    "under_trained": "under-trained",
    "hit_cap": "hit the cap",
    "diverged_after_best": "diverged after best",
    "first_validation_best": "best at the 1st validation",
}
CONSTRAINED_MODES = ("dual", "penalty")


def under_trained(best_step: int | None, max_steps: int | None) -> bool:
    """The best validation step lies in the last 10 % of the cap: ``best_step ≥ 0.9 · max_steps``."""
    return bool(best_step is not None and max_steps and best_step >= UNDER_TRAINED_FRACTION * max_steps)


def hit_cap(metrics: Mapping[str, Any], early_stopping: bool) -> bool:
    """Early stopping was on (``trainer.patience`` set) and never fired: the run reached ``max_steps``.
    Without early stopping every run reaches its cap, so the flag says nothing there (False)."""
    if not early_stopping or metrics.get("stopped_early") is not False:
        return False
    steps, cap = metrics.get("steps"), metrics.get("max_steps")
    return steps is None or cap is None or steps >= cap


def diverged_after_best(final_val_nll: float | None, best_val_nll: float | None) -> bool:
    """The last validation NLL is non-finite, or more than ``DIVERGED_NATS`` above the best one
    (``final − best > 1 nat``): the tested checkpoint predates a blow-up. False when either is unknown."""
    if final_val_nll is None or best_val_nll is None:
        return False
    return not math.isfinite(final_val_nll) or final_val_nll - best_val_nll > DIVERGED_NATS


def first_validation_best(best_step: int | None, val_interval: int) -> bool:
    """The best step is the first validation: the optimum may lie before it."""
    return bool(best_step is not None and best_step <= val_interval)


def best_val_nll(metrics: Mapping[str, Any], history: Path, key: str | None) -> float | None:
    """The best validation NLL: ``metrics.json``'s ``best_val_nll``, else (runs written before that key) the
    lowest finite value of ``key`` in the run's ``metrics.csv``; None when neither is there."""
    if metrics.get("best_val_nll") is not None:
        return float(metrics["best_val_nll"])
    if key is None or not history.is_file():
        return None
    with open(history, newline="") as f:
        values = [float(r[key]) for r in csv.DictReader(f) if r.get(key) not in (None, "")]
    finite = [v for v in values if math.isfinite(v)]
    return min(finite) if finite else None


def _val_nll_key(metrics: Mapping[str, Any], config: Mapping[str, Any]) -> str | None:
    """The monitored validation NLL's name, ``val/nll_iw{K}`` (K = eval.val_iw_samples or eval.iw_samples)."""
    ev = config.get("eval") or {}
    k = ev.get("val_iw_samples") or ev.get("iw_samples")
    if k:
        return f"val/nll_iw{k}"
    keys = [m for m in metrics if m.startswith("val/nll_iw")]
    return keys[0] if len(keys) == 1 else None


def feasibility_ratio(metrics: Mapping[str, Any], constraint: Mapping[str, Any]) -> float | None:
    """``max_g test/bracket_rms/g ÷ √tolerance`` for a constrained cell (constraint.mode dual or penalty).
    The tolerance bounds the mean squared bracket, so a ratio ≤ 1 is feasible. None for an unconstrained cell,
    a zero tolerance, or a run without bracket metrics."""
    tolerance = constraint.get("tolerance")
    rms = [float(v) for k, v in metrics.items() if k.startswith("test/bracket_rms/") and v is not None]
    if constraint.get("mode") not in CONSTRAINED_MODES or not tolerance or not rms:
        return None
    return max(rms) / math.sqrt(float(tolerance))


def cell_flags(metrics: Mapping[str, Any], config: Mapping[str, Any], run: Path) -> dict[str, Any]:
    """A done cell's flags (``FLAGS``), ``flagged`` (any of them), ``feasibility`` (constrained cells) and
    ``best_val_nll`` (from metrics.json or the run's metrics.csv), from its metrics.json and saved config."""
    trainer = config.get("trainer") or {}
    best, cap = metrics.get("best_step"), metrics.get("max_steps")
    key = _val_nll_key(metrics, config)
    best_nll = best_val_nll(metrics, run / "metrics.csv", key)
    final = metrics.get(key) if key else None
    out: dict[str, Any] = {
        "under_trained": under_trained(best, cap),
        "hit_cap": hit_cap(metrics, trainer.get("patience") is not None),
        "diverged_after_best": diverged_after_best(None if final is None else float(final), best_nll),
        "first_validation_best": first_validation_best(best, int(trainer.get("val_check_interval") or 0)),
    }
    out["flagged"] = any(out.values())
    out["best_val_nll"] = best_nll
    out["feasibility"] = feasibility_ratio(metrics, config.get("constraint") or {})
    return out


def is_flagged(row: Mapping[str, Any]) -> bool:
    """A row carries any flag (rows built elsewhere may hold only some of them)."""
    return any(bool(row.get(flag)) for flag in FLAGS)


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """The mean and the sample standard deviation (n − 1; 0 for one value)."""
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    return mean, std


def t_interval(differences: Sequence[float], confidence: float = CONFIDENCE) -> tuple[float, float] | None:
    """The Student-t interval of a mean difference over n paired seeds:
    ``d̄ ± t_{(1+c)/2, n−1} · s / √n`` with s the sample standard deviation. None below 2 seeds."""
    from scipy.stats import t

    n = len(differences)
    if n < 2:
        return None
    mean, std = mean_std(differences)
    half = float(t.ppf((1 + confidence) / 2, n - 1)) * std / math.sqrt(n)
    return mean - half, mean + half
