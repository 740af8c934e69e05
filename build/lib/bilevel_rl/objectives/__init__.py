"""Leader objectives: ``preferences`` (RLHF) and, in the same seam, the leader's own reward (shaping)."""

from bilevel_rl.objectives.base import Objective
from bilevel_rl.objectives.preferences import PreferenceObjective, PreferenceObjectiveConfig

__all__ = ["Objective", "PreferenceObjective", "PreferenceObjectiveConfig"]
