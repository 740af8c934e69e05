"""The ground-truth baseline: the follower trains on the environment's own reward (SoBiRL Table 2's "SAC" row).

No preferences are queried and the reward model is never updated; the run measures what the follower reaches
with the true reward at the same environment budget.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from typing_extensions import override

from bilevel_rl.followers.base import Follower
from bilevel_rl.reward_models.base import RewardModel
from bilevel_rl.upper.base import UpperRule

if TYPE_CHECKING:
    from bilevel_rl.data.preference_buffer import PreferenceBuffer
    from bilevel_rl.data.trajectories import TrajectoryBatch


@dataclass
class TrueRewardConfig:
    """No hyperparameters (the config group still carries the shared leader keys, which are ignored)."""

    lr: float = 3e-4
    batch_size: int = 32


class TrueReward(UpperRule):
    """Trains the follower on the environment's reward; the leader does nothing."""

    name = "true_reward"
    uses_preferences = False

    def __init__(self, config: TrueRewardConfig) -> None:
        super().__init__()
        self.config = config

    @override
    def attach(self, follower: Follower, reward_model: RewardModel) -> None:
        super().attach(follower, reward_model)
        follower.set_reward_model_to_true_reward()

    @override
    def update(
        self,
        buffer: PreferenceBuffer,
        epochs: int,
        rng: np.random.Generator,
        batch: TrajectoryBatch | None = None,
        iteration: int = 0,
    ) -> dict[str, float]:
        return {}

    @override
    def state_dict(self) -> dict[str, Any]:
        return {}

    @override
    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass
