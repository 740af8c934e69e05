"""Learned reward models r_φ(s, a)."""

from bilevel_rl.reward_models.base import RewardModel
from bilevel_rl.reward_models.mlp import MLPRewardModel, make_reward_model

__all__ = ["MLPRewardModel", "RewardModel", "make_reward_model"]
