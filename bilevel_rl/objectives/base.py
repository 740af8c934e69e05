"""The `Objective` seam: what the leader optimises, and the data it gathers each outer iteration.

Two objectives share one trainer, one set of followers and one set of rules:

* ``preferences`` (RLHF, :class:`~bilevel_rl.objectives.preferences.PreferenceObjective`): a teacher labels pairs of
  the follower's trajectory segments and the leader fits its reward model to them (the Bradley–Terry upper loss of
  SoBiRL eq. (11) / PBRL eq. (2.5));
* ``leader_reward`` (reward shaping, incentive design): the leader maximises its own return on the follower's
  trajectories (HPGD eq. (1)); its data are those trajectories with the leader's per-step reward.

An objective is asked, once per outer iteration and in this order: :meth:`Objective.gather` (new data from the
follower's on-policy batch), :meth:`Objective.epochs` (how many leader epochs to run), then, after the rule's update,
:meth:`Objective.diagnose` (held-out quality metrics). Rules receive :attr:`Objective.data` inside
:class:`~bilevel_rl.upper.base.LeaderStep`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import numpy as np

from bilevel_rl.data.trajectories import TrajectoryBatch
from bilevel_rl.followers.base import LeaderStepReward, RewardMix
from bilevel_rl.reward_models.base import RewardModel


class Objective(ABC):
    """What the leader optimises and the data it needs (one instance per run; checkpointed by the trainer)."""

    name: str = "base"

    @property
    def reward_mix(self) -> RewardMix:
        """What the follower trains on (RLHF: the learned reward alone)."""
        return RewardMix()

    def eval_reward_fn(self, model: RewardModel, mix: RewardMix) -> LeaderStepReward | None:
        """The leader's per-step reward for evaluation episodes (``None``: nothing beyond ``eval/true_return``)."""
        return None

    @property
    @abstractmethod
    def data(self) -> Any:
        """The leader's data, handed to rules as ``LeaderStep.data`` (preferences: the :class:`PreferenceBuffer`)."""

    @abstractmethod
    def gather(
        self, batch: TrajectoryBatch, iteration: int, rng: np.random.Generator, reward_model: RewardModel
    ) -> dict[str, float]:
        """Turn the follower's newest on-policy batch into leader data; return metrics (held-out ones included)."""

    @abstractmethod
    def epochs(self, iteration: int) -> int:
        """Leader epochs at this outer iteration (``0``: no leader update)."""

    @property
    def stop_accuracy(self) -> float | None:
        """Training accuracy after which a leader update stops early (``None``: never; see ``LeaderStep``)."""
        return None

    def diagnose(self, batch: TrajectoryBatch, reward_model: RewardModel) -> dict[str, float]:
        """Quality of the leader's model on the iteration's transitions (no gradient)."""
        return {"follower/true_reward_mean": float(batch.true_rewards.mean())}

    def baseline_metrics(self, batch: TrajectoryBatch, reward_model: RewardModel) -> dict[str, float]:
        """What a run whose rule trains no leader (``upper=true_reward``) logs about the iteration's transitions."""
        return {"follower/true_reward_mean": float(batch.true_rewards.mean())}

    @abstractmethod
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue exactly."""

    @abstractmethod
    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""

    def save_artifacts(self, run_dir: Path) -> list[Path]:
        """Write end-of-run files into the run directory; return their paths."""
        return []
