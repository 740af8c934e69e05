"""On-policy SB3 followers (PPO, A2C): the learned reward enters the rollout through a vec-env wrapper."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
import torch
from stable_baselines3 import A2C, PPO
from stable_baselines3.common.vec_env import VecEnv
from typing_extensions import override

from bilevel_rl.envs.make import LearnedRewardVecEnv, torch_reward_fn
from bilevel_rl.followers.sb3_base import SB3Follower
from bilevel_rl.followers.sb3_parts import GlobalProgressMixin
from bilevel_rl.reward_models.base import RewardModel


class _FrozenStartMixin:
    """On-policy followers: no gradient updates until ``learning_starts`` env steps (``follower.freeze_initial``).

    The trainer's iteration 0 then records the *initial* policy for the warm-up pairs, as PBRL App. E.2 and
    Christiano et al. 2017 do, instead of training it on the untrained reward model (with the App. E.2 CNN's
    per-action head that reward prefers some actions outright, and A2C collapsed onto them within 25k Seaquest
    steps: entropy 1e-4).
    """

    learning_starts: int = 0
    num_timesteps: int
    n_steps: int
    n_envs: int

    def train(self) -> None:
        if self.num_timesteps - self.n_steps * self.n_envs < self.learning_starts:  # the rollout began before it
            return
        super().train()  # type: ignore[misc]


class BilevelPPO(_FrozenStartMixin, GlobalProgressMixin, PPO):
    """PPO with run-level learning-rate progress and a frozen start."""


class BilevelA2C(_FrozenStartMixin, GlobalProgressMixin, A2C):
    """A2C with run-level learning-rate progress and a frozen start."""


class OnPolicyFollower(SB3Follower):
    """An SB3 actor-critic (one policy network and optimizer) trained on rewards from :class:`LearnedRewardVecEnv`.

    ``learning_starts`` freezes the initial policy for that many env steps (``follower.freeze_initial``).
    """

    reward_wrapper: LearnedRewardVecEnv

    @override
    def _wrap_env(self, venv: VecEnv) -> VecEnv:
        self.reward_wrapper = LearnedRewardVecEnv(venv)
        return self.reward_wrapper

    @override
    def _configure_model(self, lr: float, actor_lr: float | None, learning_starts: int) -> None:
        self.model.learning_starts = learning_starts  # type: ignore[attr-defined]

    @override
    def _policy_optimizer(self) -> torch.optim.Optimizer:
        """The actor-critic's single optimizer (policy and value share it)."""
        return self.model.policy.optimizer

    @override
    def set_reward_model(self, reward_model: RewardModel) -> None:
        self.reward_model = reward_model
        self.reward_wrapper.reward_fn = torch_reward_fn(reward_model)

    @override
    def set_reward_model_to_true_reward(self) -> None:
        self.reward_model = None
        self.true_reward_only = True
        self.reward_wrapper.reward_fn = None

    @override
    @property
    def temperature(self) -> float:
        """The entropy coefficient ``ent_coef`` (0 means no entropy bonus: no ``TEMPERATURE`` capability)."""
        return float(self.model.ent_coef)  # type: ignore[attr-defined]

    @override
    def action_dist(self, obs: np.ndarray | torch.Tensor, grad: bool = False) -> torch.distributions.Distribution:
        """Gaussian (the env clips its samples) or categorical ``π(·|s)``."""
        o = torch.as_tensor(obs, device=self.model.device)
        with torch.set_grad_enabled(grad):
            dist = self.model.policy.get_distribution(o).distribution  # type: ignore[operator]
            if isinstance(self.action_space, gym.spaces.Box):
                return torch.distributions.Independent(dist, 1)
            return dist  # type: ignore[no-any-return]

    @override
    def state_dict(self) -> dict[str, Any]:
        """:meth:`SB3Follower.state_dict` plus the reward wrapper's last observation."""
        state = super().state_dict()
        prev = self.reward_wrapper.prev_obs
        state["wrapper_prev_obs"] = None if prev is None else np.array(prev, copy=True)
        return state

    @override
    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        prev = state["wrapper_prev_obs"]
        self.reward_wrapper.prev_obs = None if prev is None else np.array(prev, copy=True)


class PPOFollower(OnPolicyFollower):
    """SB3 PPO."""

    name = "ppo"
    algorithm = BilevelPPO
    algorithm_name = "PPO"


class A2CFollower(OnPolicyFollower):
    """SB3 A2C."""

    name = "a2c"
    algorithm = BilevelA2C
    algorithm_name = "A2C"
