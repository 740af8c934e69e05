"""Shared iteration schedules (bilevel_rl.schedules): penalty constants, STORM steps and weights, polynomial decay."""

import math

import pytest

from bilevel_rl.schedules import (
    penalty_constant,
    polynomial_decay,
    storm_normalised_step,
    storm_step,
    storm_weight,
)


def test_penalty_constant_schedules_and_cap():
    assert [penalty_constant(k, 2.0) for k in range(3)] == [2.0, 2.0, 2.0]
    assert [penalty_constant(k, 2.0, "linear", 0.5) for k in range(3)] == [2.0, 2.5, 3.0]
    geometric = [penalty_constant(k, 2.0, "geometric", 10.0, every=3) for k in range(7)]
    assert geometric == [2.0, 2.0, 2.0, 20.0, 20.0, 20.0, 200.0]
    assert penalty_constant(6, 2.0, "geometric", 10.0, every=3, lam_max=50.0) == 50.0
    assert penalty_constant(10, 2.0, "linear", 1.0, lam_max=math.inf) == 12.0
    assert penalty_constant(-1, 2.0, "linear", 1.0) == 2.0  # the warm-up (iteration 0) uses λ_1
    with pytest.raises(ValueError, match="schedule"):
        penalty_constant(0, 1.0, "cosine")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="every"):
        penalty_constant(0, 1.0, "geometric", 2.0, every=0)


def test_storm_schedule_is_sobirl_eq93():
    n = 3
    assert storm_step(1, 0.008, n) == pytest.approx(0.008)
    for k in (1, 2, 10, 1000):
        assert storm_normalised_step(k, n) == pytest.approx((n + k) ** (-1 / 3))
        assert storm_step(k, 0.5, n) == pytest.approx(0.5 * ((n + 1) / (n + k)) ** (1 / 3))
    assert storm_weight(1, n) == 1.0
    for k in (2, 5, 100):
        assert storm_weight(k, n) == pytest.approx(max(15 / 16, 1 - (n + k - 1) ** (-2 / 3)))
        assert storm_weight(k, n, floor=0.5) == pytest.approx(max(0.5, 1 - (n + k - 1) ** (-2 / 3)))


def test_polynomial_decay():
    assert [polynomial_decay(k, 2.0) for k in (1, 2, 4)] == [2.0, 1.0, 0.5]
    assert polynomial_decay(16, 1.0, 0.5) == 0.25
    with pytest.raises(ValueError, match="k = 1"):
        polynomial_decay(0, 1.0)
