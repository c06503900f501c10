"""Lagrange multipliers on a toy problem with a known optimal multiplier.

min_x (x − 2)²  s.t.  C(x) = x² ≤ 1   →   x* = 1, λ* = 1   (2(x − 2) + 2λx = 0 at x = 1).
"""

from __future__ import annotations

import math

import pytest
import torch

from lightning_ehf.core import LagrangeMultipliers


def run_toy(
    multipliers: LagrangeMultipliers, steps: int = 1500, lr_x: float = 0.05
) -> tuple[float, float, list[float]]:
    x = torch.zeros(1, requires_grad=True)
    opt = torch.optim.SGD([x], lr=lr_x)
    history = []
    for _ in range(steps):
        constraint = x.square()
        loss = (x - 2).square().sum() + multipliers.penalty(constraint)
        opt.zero_grad()
        loss.backward()
        opt.step()
        multipliers.update(x.detach().square())
        history.append(multipliers.value.item())
    return x.item(), multipliers.value.item(), history


@pytest.mark.parametrize(
    "rule,lr",
    [("additive", 0.5), ("additive", 0.1), ("augmented", 0.5), ("augmented", 2.0), ("geco", 0.1), ("geco", 0.05)],
)
def test_dual_ascent_finds_the_optimal_multiplier(rule, lr):
    lm = LagrangeMultipliers(["c"], mode="dual", rule=rule, tolerance=1.0, lr=lr)
    x, lam, history = run_toy(lm)
    assert abs(lam - 1.0) <= 0.05, f"λ = {lam} (rule {rule}, lr {lr})"
    assert abs(x - 1.0) <= 0.02, f"x = {x}"
    assert min(history) >= 0.0  # projected: never negative
    assert history[0] < 0.5  # it had to climb to λ* (does not start there)


def test_dual_multiplier_stays_zero_when_constraint_is_inactive():
    """x* = 2 already satisfies x² ≤ 9: complementary slackness gives λ* = 0."""
    lm = LagrangeMultipliers(["c"], mode="dual", rule="additive", tolerance=9.0, lr=0.5)
    x, lam, _ = run_toy(lm, steps=400)
    assert lam == 0.0 and abs(x - 2.0) < 1e-3


def test_additive_update_is_the_projected_step():
    lm = LagrangeMultipliers(["a", "b"], mode="dual", rule="additive", tolerance=0.5, lr=2.0, init=0.25)
    lm.update(torch.tensor([1.0, 0.0]))
    torch.testing.assert_close(lm.value, torch.tensor([0.25 + 2.0 * 0.5, 0.0]))  # second clipped at 0
    assert lm.as_dict() == {"a": 1.25, "b": 0.0}
    pen = lm.penalty(torch.tensor([2.0, 7.0]))
    assert pen.item() == pytest.approx(1.25 * (2.0 - 0.5))


def test_augmented_term_and_slope_are_the_method_of_multipliers():
    """``[max(0, λ + ρ (C − ε))² − λ²] / 2ρ``: its value, its slope ``max(0, λ + ρ (C − ε))`` on both sides of the
    kink, and the same multiplier step as the additive rule."""
    lam, rho, eps = 0.5, 4.0, 1.0
    lm = LagrangeMultipliers(["a", "b"], mode="dual", rule="augmented", tolerance=eps, lr=rho, init=lam)
    c = torch.tensor([1.5, 0.5], requires_grad=True)  # violated (shift 2.5) and slack past the kink (shift < 0)
    term = lm.penalty(c)
    expected = ((lam + rho * 0.5) ** 2 - lam**2) / (2 * rho) + (0.0 - lam**2) / (2 * rho)
    assert term.item() == pytest.approx(expected)
    (slope,) = torch.autograd.grad(term, c)
    torch.testing.assert_close(slope, torch.tensor([lam + rho * 0.5, 0.0]))
    lm.update(torch.tensor([1.5, 0.5]))
    torch.testing.assert_close(lm.value, torch.tensor([lam + rho * 0.5, 0.0]))  # projected at 0


def test_augmented_term_pushes_back_before_the_multiplier_grows():
    """At λ = 0 the additive rule's term has no slope; the augmented term's slope is already ρ (C − ε) dC/dx, so a
    violated constraint is pulled back from the first step."""
    plain = LagrangeMultipliers(["c"], mode="dual", rule="additive", tolerance=1.0, lr=2.0)
    augmented = LagrangeMultipliers(["c"], mode="dual", rule="augmented", tolerance=1.0, lr=2.0)
    x = torch.tensor([1.5], requires_grad=True)
    slopes = []
    for lm in (plain, augmented):
        (g,) = torch.autograd.grad(lm.penalty(x.square()).sum(), x)
        slopes.append(g.item())
    assert slopes[0] == 0.0 and slopes[1] == pytest.approx(2.0 * (1.5**2 - 1.0) * 2 * 1.5)


def test_geco_update_uses_moving_average_and_bounded_steps():
    lm = LagrangeMultipliers(["c"], mode="dual", rule="geco", tolerance=1.0, lr=1.0, init=1.0, ema=0.5)
    lm.update(torch.tensor([5.0]))  # first value initialises the average: m = 5, step 4 clipped to log 10
    assert lm.moving_average.item() == pytest.approx(5.0)
    assert lm.value.item() == pytest.approx(10.0, rel=1e-5)
    lm.update(torch.tensor([0.0]))  # m = 2.5, λ ← 10 · e^{1.5}
    assert lm.moving_average.item() == pytest.approx(2.5)
    assert lm.value.item() == pytest.approx(10.0 * math.exp(1.5), rel=1e-5)
    for _ in range(30):  # constraint satisfied: λ shrinks, but never below the floor 1e-6
        lm.update(torch.tensor([0.0]))
    assert lm.value.item() == pytest.approx(1e-6, rel=1e-3)


def test_penalty_mode_keeps_lambda_fixed_and_none_keeps_zero():
    fixed = LagrangeMultipliers(["c"], mode="penalty", init=3.0, tolerance=1.0, lr=0.5)
    x, lam, history = run_toy(fixed, steps=800)
    assert set(history) == {3.0}
    assert abs(x - 2.0 / (1.0 + 3.0)) < 1e-3  # stationary point of (x−2)² + 3(x² − 1)

    off = LagrangeMultipliers(["c"], mode="none", init=3.0, tolerance=1.0, lr=0.5)
    assert not off.active
    x, lam, history = run_toy(off, steps=800)
    assert set(history) == {0.0} and abs(x - 2.0) < 1e-3
    # the penalty is zero yet keeps the graph connected (no unused-parameter surprises)
    c = torch.tensor([5.0], requires_grad=True)
    pen = off.penalty(c)
    assert pen.item() == 0.0 and pen.requires_grad


def test_multipliers_are_buffers_checkpointed_and_follow_dtype():
    lm = LagrangeMultipliers(["L01", "L02"], mode="dual", init=0.5)
    state = lm.state_dict()
    assert set(state) == {"value", "moving_average", "updates"}
    assert list(lm.parameters()) == []  # not optimised by the optimiser
    lm.update(torch.tensor([1.0, 2.0]))
    restored = LagrangeMultipliers(["L01", "L02"], mode="dual")
    restored.load_state_dict(lm.state_dict())
    torch.testing.assert_close(restored.value, lm.value)
    lm64 = lm.to(torch.float64)
    assert lm64.value.dtype == torch.float64 and lm64.moving_average.dtype == torch.float64
    pen = lm64.penalty(torch.tensor([1.0, 1.0], dtype=torch.float64))
    assert pen.dtype == torch.float64


def test_invalid_arguments_are_rejected():
    with pytest.raises(ValueError, match="mode"):
        LagrangeMultipliers(["c"], mode="soft")
    with pytest.raises(ValueError, match="rule"):
        LagrangeMultipliers(["c"], rule="adam")
    with pytest.raises(ValueError):
        LagrangeMultipliers(["c"], lr=0.0)


def test_geco_sequence_with_asymmetric_ema_matches_hand_computation():
    """GECO with ema α = 0.9 over six updates of two multipliers, against a plain-float reference:
    ``m₁ = C₁`` (first update), then ``m ← α m + (1 − α) C``; ``step = clip(η (m − ε), ±log 10)``;
    ``λ ← clip(λ e^step, 1e-6, 1e6)``. Multiplier "a" takes unclipped steps, one clipped step (C = 40)
    and then hits the upper clamp; "b" shrinks into the lower clamp. α ≠ ½ so swapping the EMA
    weights changes every average after the first."""
    alpha, eps, eta = 0.9, 1.0, 0.5
    lm = LagrangeMultipliers(["a", "b"], mode="dual", rule="geco", tolerance=eps, lr=eta, init=1.0, ema=alpha)
    lm = lm.to(torch.float64)
    lm.value.copy_(torch.tensor([2.0e3, 3.0e-6], dtype=torch.float64))
    constraints = [(3.0, 0.0), (0.0, 5.0), (0.2, 0.0), (40.0, 0.0), (0.0, 0.0), (0.0, 0.0)]

    # hand-written reference, numbers spelled out for the first steps of "a":
    #   m = 3.0 → step 1.0; m = 2.7 → 0.85; m = 2.45 → 0.725; m = 6.205 → 2.6025 clipped to log 10
    lam = [2.0e3, 3.0e-6]
    ma = [0.0, 0.0]
    expected = []
    for t, cs in enumerate(constraints):
        for i, c in enumerate(cs):
            ma[i] = c if t == 0 else alpha * ma[i] + (1 - alpha) * c
            step = min(max(eta * (ma[i] - eps), -math.log(10.0)), math.log(10.0))
            lam[i] = min(max(lam[i] * math.exp(step), 1e-6), 1e6)
        expected.append((list(ma), list(lam)))
    assert [e[0][0] for e in expected[:4]] == pytest.approx([3.0, 2.7, 2.45, 6.205], rel=1e-12)
    assert expected[3][1][0] == pytest.approx(2.0e3 * math.exp(1.0 + 0.85 + 0.725) * 10.0, rel=1e-12)  # clipped step
    assert expected[4][1][0] == 1e6  # 2.6e5 · e^{2.29} hits the upper clamp
    assert [e[0][1] for e in expected[:4]] == pytest.approx([0.0, 0.5, 0.45, 0.405], rel=1e-12)
    assert expected[2][1][1] == pytest.approx(3.0e-6 * math.exp(-0.5 - 0.25 - 0.275), rel=1e-12)
    assert expected[3][1][1] == 1e-6  # 1.08e-6 · e^{-0.2975} < 1e-6: lower clamp

    for t, cs in enumerate(constraints):
        lm.update(torch.tensor(cs, dtype=torch.float64))
        want_ma, want_lam = expected[t]
        torch.testing.assert_close(
            lm.moving_average,
            torch.tensor(want_ma, dtype=torch.float64),
            rtol=1e-12,
            atol=1e-12,
            msg=lambda m, t=t: f"moving average after update {t + 1}: {m}",
        )
        torch.testing.assert_close(
            lm.value,
            torch.tensor(want_lam, dtype=torch.float64),
            rtol=1e-12,
            atol=0.0,
            msg=lambda m, t=t: f"λ after update {t + 1}: {m}",
        )
    assert int(lm.updates) == len(constraints)
    assert lm.value[0].item() == 1e6 and lm.value[1].item() == 1e-6  # both clamps reached
