"""Synthetic teachers that label pairs of segments from their true returns."""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np
from typing_extensions import override


class Teacher(ABC):
    """Labels segment pairs. A label is the probability that the *first* segment is preferred."""

    @abstractmethod
    def label(self, returns: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Label pairs.

        Args:
            returns: ``(P, 2)`` true (undiscounted) segment returns.
            rng: generator for stochastic teachers.

        Returns:
            ``(P,)`` float labels in ``[0, 1]``.
        """


class OracleTeacher(Teacher):
    """The papers' oracle: the segment with the higher true return wins; equal returns give 0.5.

    SoBiRL App. J: "preference is assigned to the trajectory with higher accumulated ground-truth reward".

    Args:
        tie_tolerance: absolute return difference at or below which a pair counts as a tie.
    """

    def __init__(self, tie_tolerance: float = 0.0) -> None:
        if tie_tolerance < 0:
            raise ValueError("teacher.tie_tolerance must be >= 0")
        self.tie_tolerance = tie_tolerance

    @override
    def label(self, returns: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        diff = returns[:, 0] - returns[:, 1]
        labels = np.where(diff > 0, 1.0, 0.0)
        labels[np.abs(diff) <= self.tie_tolerance] = 0.5
        return labels.astype(np.float32)


class BradleyTerryTeacher(Teacher):
    """Stochastic teacher: ``y ~ Bernoulli(sigmoid((R1 - R2) / temperature))``.

    This is what the SoBiRL authors' code does (imitation's ``SyntheticGatherer(sample=True)``, the return
    difference clipped at ±50); the paper text describes the deterministic oracle instead.
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


def make_teacher(name: str, **kwargs: float) -> Teacher:
    """Build a teacher by config name (``oracle`` or ``bradley_terry``)."""
    if name == "oracle":
        return OracleTeacher(tie_tolerance=float(kwargs.get("tie_tolerance", 0.0)))
    if name == "bradley_terry":
        return BradleyTerryTeacher(
            temperature=float(kwargs.get("temperature", 1.0)), clip=float(kwargs.get("clip", 50.0))
        )
    raise ValueError(f"teacher.name: unknown teacher {name!r} (choose oracle or bradley_terry)")
