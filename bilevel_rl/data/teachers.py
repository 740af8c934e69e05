"""Synthetic teachers that label pairs of segments from their true rewards.

Besides the papers' oracle and the SoBiRL code's Bradley–Terry teacher, this module has the simulated teachers of
B-Pref (Lee et al. 2021, "B-Pref: Benchmarking Preference-Based Reinforcement Learning", the section on simulated
human teachers; code: ``rll-research/BPref``, ``RewardModel.get_label`` in ``reward_model.py``, whose behaviour is
followed where the two differ, except for the thresholds' ``ε²``, see :class:`RelativeThresholdTeacher`).
B-Pref's stochastic (``teacher=noisy``) teacher is :class:`BradleyTerryTeacher` with ``temperature = 1/β = 1``; the
others are :class:`MistakeTeacher`, :class:`MyopicTeacher`, :class:`SkipTeacher` and :class:`EqualTeacher`.

A query runs in three steps (:meth:`Teacher.calibrate`, :meth:`Teacher.segment_returns`, :meth:`Teacher.label`):

1. ``calibrate`` gives the teacher the mean true return of an ``H``-step segment of the follower's newest
   behaviour; teachers with relative thresholds (skip, equal) set them from it, the others ignore it;
2. ``segment_returns`` turns the pairs' per-step true rewards into the ``(P, 2)`` returns the teacher compares
   (undiscounted sums; the myopic teacher weights later steps more);
3. ``label`` turns those returns into labels: the probability that the *first* segment is preferred, or
   :data:`SKIPPED` (NaN) for a query the teacher declines to answer (only the skip teacher does).
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np
from typing_extensions import override

SKIPPED = float("nan")
"""The label of a query the teacher skipped: the pair is dropped, it never enters the preference buffer."""


class Teacher(ABC):
    """Labels segment pairs. A label is the probability that the *first* segment is preferred."""

    def calibrate(self, mean_segment_return: float, first_query: bool) -> None:
        """Adapt to the scale of the true reward before a round of queries (default: nothing to adapt).

        Args:
            mean_segment_return: mean true return of an ``H``-step segment of the newest behaviour
                (``H`` × the mean per-step true reward of the batch the queries are drawn from).
            first_query: no query has been asked before this round.
        """
        return

    def segment_returns(self, true_rewards: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """The returns the teacher compares: undiscounted sums over the valid steps.

        Args:
            true_rewards: ``(P, 2, H)`` true per-step rewards of each pair's segments.
            mask: ``(P, 2, H)``, 0 on padding after a terminal state.

        Returns:
            ``(P, 2)`` segment returns.
        """
        return (true_rewards * mask).sum(axis=2)

    def metrics(self) -> dict[str, float]:
        """The teacher's current state worth logging (e.g. its thresholds); empty by default."""
        return {}

    @abstractmethod
    def label(self, returns: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Label pairs.

        Args:
            returns: ``(P, 2)`` segment returns, as :meth:`segment_returns` computes them.
            rng: generator for stochastic teachers.

        Returns:
            ``(P,)`` float labels in ``[0, 1]``, or :data:`SKIPPED` (NaN) for a skipped query.
        """


def _rational_labels(returns: np.ndarray, tie_tolerance: float = 0.0) -> np.ndarray:
    """1 where the first return is higher, 0 where it is lower, 0.5 where they differ by ``<= tie_tolerance``."""
    diff = returns[:, 0] - returns[:, 1]
    labels = np.where(diff > 0, 1.0, 0.0)
    labels[np.abs(diff) <= tie_tolerance] = 0.5
    return labels.astype(np.float32)


class OracleTeacher(Teacher):
    """The papers' oracle: the segment with the higher true return wins; equal returns give 0.5.

    SoBiRL App. J: "preference is assigned to the trajectory with higher accumulated ground-truth reward"
    (B-Pref's "oracle" teacher: ``β = ∞``, ``γ = 1``, no mistakes, skips or ties; B-Pref's code breaks exact ties
    towards the first segment, this teacher labels them 0.5).

    Args:
        tie_tolerance: absolute return difference at or below which a pair counts as a tie.
    """

    def __init__(self, tie_tolerance: float = 0.0) -> None:
        if tie_tolerance < 0:
            raise ValueError("teacher.tie_tolerance must be >= 0")
        self.tie_tolerance = tie_tolerance

    @override
    def label(self, returns: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return _rational_labels(returns, self.tie_tolerance)


class BradleyTerryTeacher(Teacher):
    """Stochastic teacher: ``y ~ Bernoulli(sigmoid((R1 - R2) / temperature))``.

    This is what the SoBiRL authors' code does (imitation's ``SyntheticGatherer(sample=True)``, the return
    difference clipped at ±50); the paper text describes the deterministic oracle instead.

    It is also B-Pref's stochastic teacher (``teacher=noisy``; its preference model with ``γ = 1``:
    ``P[σ1 ≻ σ0] = exp(β R1) / (exp(β R0) + exp(β R1))``, rationality ``β = 1``): ``temperature = 1/β``. B-Pref's
    code does not clip; the clip at ±50 changes a probability by less than ``2e-22``.
    """

    def __init__(self, temperature: float = 1.0, clip: float = 50.0) -> None:
        if temperature <= 0:
            raise ValueError("teacher.temperature must be > 0")
        self.temperature = temperature
        self.clip = clip

    @override
    def label(self, returns: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        z = np.clip((returns[:, 0] - returns[:, 1]) / self.temperature, -self.clip, self.clip)
        p = 1.0 / (1.0 + np.exp(-z))
        return (rng.random(p.shape) < p).astype(np.float32)


class MistakeTeacher(Teacher):
    """B-Pref's "mistake" teacher: the oracle's label, flipped with probability ``flip_prob`` (``ε = 0.1``).

    B-Pref: the teacher errs, flipping its preference, with probability ε; code: ``get_label`` draws
    ``rand <= teacher_eps_mistake`` per query *after* the rational label and sets ``label = 1 - label``. Here one
    uniform draw per query as well; a tie (0.5, exact equality only) stays 0.5 when flipped.

    Args:
        flip_prob: probability of flipping each label, in ``[0, 1]``.
    """

    def __init__(self, flip_prob: float = 0.1) -> None:
        if not 0.0 <= flip_prob <= 1.0:
            raise ValueError(f"teacher.flip_prob: must be in [0, 1], got {flip_prob}")
        self.flip_prob = flip_prob

    @override
    def label(self, returns: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        labels = _rational_labels(returns)
        flip = rng.random(labels.shape) < self.flip_prob
        labels[flip] = 1.0 - labels[flip]
        return labels


class MyopicTeacher(Teacher):
    """B-Pref's "myopic" teacher: compares ``Σ_t γ^(H−1−t) r_t`` (``γ = 0.9``), so later steps count more.

    B-Pref: the preference model with ``β = ∞`` and ``γ < 1`` (the teacher weighs the end of a segment more);
    code: ``get_label`` multiplies ``r[:, :i+1]`` by ``teacher_gamma`` for ``i = 0 … H−2``, i.e. step ``t``
    (0-based) by ``γ^(H−1−t)``: the last step has weight 1. Steps padded after a terminal state count as zero
    reward at their position (the absorbing-state rule of :mod:`bilevel_rl.data.segments`). The label is the
    oracle's on these returns (exact ties 0.5).

    Args:
        gamma: discount towards the *start* of the segment, in ``(0, 1]`` (1: the oracle).
    """

    def __init__(self, gamma: float = 0.9) -> None:
        if not 0.0 < gamma <= 1.0:
            raise ValueError(f"teacher.gamma: must be in (0, 1], got {gamma}")
        self.gamma = gamma

    @override
    def segment_returns(self, true_rewards: np.ndarray, mask: np.ndarray) -> np.ndarray:
        horizon = true_rewards.shape[-1]
        weights = self.gamma ** np.arange(horizon - 1, -1, -1, dtype=np.float64)
        return ((true_rewards * mask) * weights).sum(axis=2)

    @override
    def label(self, returns: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return _rational_labels(returns)


class RelativeThresholdTeacher(Teacher):
    """A teacher with a threshold ``δ`` relative to the scale of recent segment returns (B-Pref's skip, equal).

    The rule (B-Pref; code: ``train_PEBBLE.py`` / PrefPPO before each reward update and
    ``RewardModel.set_teacher_thres_*``): ``δ = ε · m``, where ``m`` is the mean true return of an ``H``-step
    segment of recent behaviour. B-Pref's code takes ``m = mean(last 10 training episodes' true returns) · H / T``
    (``T`` the episode limit); here ``m = H ·`` the mean per-step true reward of the batch the queries are drawn
    from (:meth:`calibrate`), the same quantity for B-Pref's tasks, whose episodes always run to the time limit.

    B-Pref's code multiplies by ``ε`` twice at every update after the first one (the training loop passes
    ``m · ε`` to a setter that multiplies by ``ε`` again), so its thresholds are ``ε · m`` for the first round of
    queries and ``ε² · m`` (0.01 m for ε = 0.1) afterwards. We follow the paper (``ε · m`` every round) unless
    ``square_eps_after_first`` asks for the code's behaviour. As in the code, a threshold ``<= 0`` (a task whose
    recent rewards are negative on average, e.g. Pendulum) disables the rule, and it is 0 until the first
    :meth:`calibrate`.

    Args:
        eps: ``ε``, the threshold as a fraction of the mean recent segment return (``>= 0``; B-Pref: 0.1).
        square_eps_after_first: reproduce B-Pref's code: ``ε²`` instead of ``ε`` after the first round.
    """

    metric_name = "teacher/threshold"

    def __init__(self, eps: float = 0.1, square_eps_after_first: bool = False) -> None:
        if eps < 0:
            raise ValueError(f"teacher.eps: must be >= 0, got {eps}")
        self.eps = eps
        self.square_eps_after_first = square_eps_after_first
        self.threshold = 0.0

    @override
    def calibrate(self, mean_segment_return: float, first_query: bool) -> None:
        factor = self.eps if first_query or not self.square_eps_after_first else self.eps**2
        self.threshold = factor * float(mean_segment_return)

    @override
    def metrics(self) -> dict[str, float]:
        return {self.metric_name: self.threshold}


class SkipTeacher(RelativeThresholdTeacher):
    """B-Pref's "skip" teacher: skips a query when neither segment's return exceeds ``δ_skip = ε · m``.

    B-Pref: the teacher skips a query where neither segment is good enough; code: ``get_label`` keeps
    the pairs with ``max(R0, R1) > teacher_thres_skip`` when that threshold is ``> 0``. The answered pairs get the
    oracle's label; skipped ones get :data:`SKIPPED` and never enter the buffer. ``δ_skip`` follows the rule of
    :class:`RelativeThresholdTeacher`.
    """

    metric_name = "teacher/skip_threshold"

    @override
    def label(self, returns: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        labels = _rational_labels(returns)
        if self.threshold > 0:
            labels[returns.max(axis=1) <= self.threshold] = SKIPPED
        return labels


class EqualTeacher(RelativeThresholdTeacher):
    """B-Pref's "equal" teacher: label 0.5 when the returns differ by less than ``δ_equal = ε · m``.

    B-Pref: segments whose returns are close are equally preferable, ``y = (0.5, 0.5)``; code:
    ``get_label`` marks ``|R0 − R1| < teacher_thres_equal`` as ``-1``, trained as a 0.5 target. Other pairs get the
    oracle's label. ``δ_equal`` follows the rule of :class:`RelativeThresholdTeacher`.
    """

    metric_name = "teacher/equal_threshold"

    @override
    def label(self, returns: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        labels = _rational_labels(returns)
        labels[np.abs(returns[:, 0] - returns[:, 1]) < self.threshold] = 0.5
        return labels


TEACHERS = ("oracle", "bradley_terry", "mistake", "myopic", "skip", "equal")
"""The ``teacher.name`` choices (``teacher=noisy`` is ``bradley_terry`` at temperature 1)."""


def make_teacher(name: str, **kwargs: float) -> Teacher:
    """Build a teacher by config name (one of :data:`TEACHERS`) from its config keys."""
    if name == "oracle":
        return OracleTeacher(tie_tolerance=float(kwargs.get("tie_tolerance", 0.0)))
    if name == "bradley_terry":
        return BradleyTerryTeacher(
            temperature=float(kwargs.get("temperature", 1.0)), clip=float(kwargs.get("clip", 50.0))
        )
    if name == "mistake":
        return MistakeTeacher(flip_prob=float(kwargs.get("flip_prob", 0.1)))
    if name == "myopic":
        return MyopicTeacher(gamma=float(kwargs.get("gamma", 0.9)))
    if name in ("skip", "equal"):
        cls = SkipTeacher if name == "skip" else EqualTeacher
        return cls(
            eps=float(kwargs.get("eps", 0.1)),
            square_eps_after_first=bool(kwargs.get("square_eps_after_first", False)),
        )
    raise ValueError(f"teacher.name: unknown teacher {name!r} (choose {' or '.join(TEACHERS)})")
