"""The ground-truth baseline: the follower trains on the environment's own reward (SoBiRL Table 2's "SAC" row).

No data is gathered and the leader's model is never updated; the run measures what the follower reaches with the
true reward at the same environment budget.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from typing_extensions import override

from bilevel_rl.capabilities import Capability, Requirements
from bilevel_rl.followers.base import Follower
from bilevel_rl.reward_models.base import RewardModel
from bilevel_rl.upper.base import LeaderStep, UpperRule
from bilevel_rl.upper.preference_rule import LeaderOptimConfig


@dataclass
class TrueRewardConfig(LeaderOptimConfig):
    """No hyperparameters of its own.

    The leader-optimiser keys are accepted and unused, so that a preset that sets them (``upper.lr``,
    ``upper.batch_size``) can run every row of a table, this baseline included.
    """

    name: str = "true_reward"


class TrueReward(UpperRule):
    """Trains the follower on the environment's reward; the leader does nothing."""

    name = "true_reward"
    objectives: ClassVar[tuple[str, ...]] = ("preferences", "leader_reward")
    trains_leader = False

    def __init__(self, config: TrueRewardConfig) -> None:
        super().__init__()
        self.config = config

    @classmethod
    @override
    def requirements(cls, params: Any) -> Requirements:
        return {Capability.TRUE_REWARD: ""}

    @override
    def attach(self, follower: Follower, reward_model: RewardModel, data: Any = None) -> None:
        super().attach(follower, reward_model, data)
        follower.set_reward_model_to_true_reward()

    @override
    def update(self, step: LeaderStep) -> dict[str, float]:
        return {}

    @override
    def state_dict(self) -> dict[str, Any]:
        return {}

    @override
    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass
