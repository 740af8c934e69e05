"""Iteration schedules shared by the deep leader rules (:mod:`bilevel_rl.upper`) and the tabular lab.

Pure functions of the iteration counter, so that a rule's config holds only the schedule's constants and the
same numbers come out of every implementation of a method:

* :func:`penalty_constant`: the penalty constant ``λ_k`` of penalty-based bilevel RL (PBRL, Shen et al. 2025,
  Algorithm 1 and Thm. 11 for a constant λ; growing λ as a continuation in λ), also the ``1/σ`` of the
  Hessian-free penalty method.
* :func:`storm_step`, :func:`storm_weight` and :func:`storm_normalised_step`: the step sizes ``β_k`` and momentum
  weights ``μ_k`` of Stoc-SoBiRL (SoBiRL Algorithm 4, eq. 93).
* :func:`polynomial_decay`: ``c / k^p``, e.g. the normalised inner steps ``τ_1 / k`` of the Hessian-free method
  (Gaur et al. 2025, Alg. 1 l. 8–9), the Zero-Order smoothing radius ``u_t = C / t`` (HPGD paper, Alg. 10) and the
  count-based step ``n(s, a)^{-0.7}`` of tabular soft Q-learning.
"""

from __future__ import annotations

import math
from typing import Literal

PenaltySchedule = Literal["constant", "linear", "geometric"]


def penalty_constant(
    steps: int,
    lam: float,
    schedule: PenaltySchedule = "constant",
    growth: float = 0.0,
    every: int = 1,
    lam_max: float | None = None,
) -> float:
    """The penalty constant ``λ`` after ``steps`` completed outer steps.

    ``constant``: ``λ``; ``linear``: ``λ + growth · steps``; ``geometric``: ``λ · growth^⌊steps / every⌋``; the
    result is capped at ``lam_max`` (``None``: no cap). The ``k``-th outer step (``k ≥ 1``) uses
    ``penalty_constant(k − 1, …)``, so ``λ_1 = λ`` under every schedule.

    Args:
        steps: completed outer steps (``k − 1`` at step ``k``; negative values count as 0).
        lam: the initial (or constant) penalty constant ``λ > 0``.
        schedule: ``constant``, ``linear`` or ``geometric``.
        growth: the slope (``linear``) or factor (``geometric``) of the schedule.
        every: outer steps per geometric increase (``>= 1``).
        lam_max: cap on ``λ``.

    Returns:
        ``λ_{steps+1}``.

    Raises:
        ValueError: an unknown schedule or ``every < 1``.
    """
    steps = max(steps, 0)
    if schedule == "constant":
        value = lam
    elif schedule == "linear":
        value = lam + growth * steps
    elif schedule == "geometric":
        if every < 1:
            raise ValueError(f"every must be >= 1, got {every}")
        value = lam * growth ** (steps // every)
    else:
        raise ValueError(f"unknown penalty schedule {schedule!r}")
    return value if lam_max is None else min(value, lam_max)


def storm_normalised_step(k: int, n_beta: float) -> float:
    """``β̂_k = (n_β + k)^{-1/3}`` of SoBiRL eq. 93 (``k ≥ 1``)."""
    return float((n_beta + k) ** (-1.0 / 3.0))


def storm_step(k: int, first_step: float, n_beta: float) -> float:
    """``β_k = β_1 ((n_β + 1) / (n_β + k))^{1/3}``: eq. 93's ``β_k ∝ (n_β + k)^{-1/3}`` with ``β_1 = first_step``.

    SoBiRL eq. 93 has ``β_k = β̂_k`` exactly, i.e. ``first_step = (n_β + 1)^{-1/3}``, in units where the
    hyper-objective's smoothness constant is ``O(1)``; ``first_step`` carries the problem's scale instead.
    """
    return first_step * storm_normalised_step(k, n_beta) / storm_normalised_step(1, n_beta)


def storm_weight(k: int, n_beta: float, floor: float = 15.0 / 16.0) -> float:
    """``μ_k = max{floor, 1 − β̂_{k−1}²}`` for ``k ≥ 2`` and ``μ_1 = 1`` (SoBiRL eq. 93 at ``floor = 15/16``).

    The STORM update (eq. 81) is ``h_k = ∇̄φ_k + (1 − μ_k)(h_{k−1} − ∇̄φ(·; x_{k−1}))``; ``μ_1 = 1`` makes the first
    direction the plain estimate.
    """
    if k <= 1:
        return 1.0
    return max(floor, 1.0 - storm_normalised_step(k - 1, n_beta) ** 2)


def polynomial_decay(k: float, first: float, power: float = 1.0) -> float:
    """``first / k^power`` for ``k ≥ 1`` (``power = 1``: the harmonic step ``first / k``).

    Raises:
        ValueError: ``k < 1`` (the schedules are indexed from 1; ``τ_k`` of the Hessian-free method is undefined
            at ``k = 0``).
    """
    if k < 1:
        raise ValueError(f"polynomial schedules start at k = 1, got {k}")
    return first / math.pow(k, power)
