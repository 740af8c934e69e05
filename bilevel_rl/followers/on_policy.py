"""On-policy SB3 followers (PPO, A2C): the leader's reward for a whole rollout comes from one batched call.

SB3 stores each step's environment reward while it collects a rollout; here the environment's reward is scaled by
``EnvRewardScale`` (0 when the learned reward replaces it), and once the rollout is complete the leader's model is
evaluated on all of its ``(s_t, a_t)`` in one call, added to the stored rewards, and SB3's returns and advantages are
computed again (:meth:`BatchedRewardMixin.collect_rollouts`). A per-step call would cost one reward-model forward
per environment step. The stored rewards already hold SB3's bootstrap ``γ V(s_T)`` of time-limit truncations, which
the addition keeps.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from stable_baselines3 import A2C, PPO
from stable_baselines3.common.buffers import RolloutBuffer
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.utils import obs_as_tensor
from stable_baselines3.common.vec_env import VecEnv
from typing_extensions import override

from bilevel_rl.capabilities import Capability
from bilevel_rl.envs.make import EnvRewardScale, RewardFn, torch_reward_fn
from bilevel_rl.followers.base import RewardMix
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


class BatchedRewardMixin:
    """Add ``rollout_reward_fn(obs, actions)`` of the whole rollout to its stored rewards, then recompute advantages."""

    rollout_reward_fn: RewardFn | None = None

    def collect_rollouts(
        self, env: VecEnv, callback: BaseCallback, rollout_buffer: RolloutBuffer, n_rollout_steps: int
    ) -> bool:
        """SB3's rollout collection, then the leader's reward for the whole rollout in one call."""
        complete: bool = super().collect_rollouts(env, callback, rollout_buffer, n_rollout_steps)  # type: ignore[misc]
        if complete and self.rollout_reward_fn is not None:
            add_rollout_rewards(self, rollout_buffer, self.rollout_reward_fn)
        return complete


def add_rollout_rewards(model: Any, buffer: RolloutBuffer, reward_fn: RewardFn) -> None:
    """``buffer.rewards += reward_fn`` of every stored ``(s_t, a_t)`` in one call; returns and advantages anew.

    Box actions are clipped to the action space, as SB3 clips them before stepping the environment, so the reward is
    that of the action the environment executed.
    """
    steps, envs = buffer.buffer_size, buffer.n_envs
    obs = buffer.observations.reshape(steps * envs, *buffer.obs_shape)
    space = model.action_space
    if isinstance(space, gym.spaces.Box):
        actions = np.clip(buffer.actions.reshape(steps * envs, *space.shape), space.low, space.high)
    else:
        actions = buffer.actions.reshape(steps * envs).astype(np.int64)
    buffer.rewards += np.asarray(reward_fn(obs, actions), dtype=np.float32).reshape(steps, envs)
    with torch.no_grad():
        last_values = model.policy.predict_values(obs_as_tensor(model._last_obs, model.device))
    buffer.compute_returns_and_advantage(last_values=last_values, dones=model._last_episode_starts)


class BilevelPPO(BatchedRewardMixin, _FrozenStartMixin, GlobalProgressMixin, PPO):
    """PPO with batched rollout rewards, run-level learning-rate progress and a frozen start."""


class BilevelA2C(BatchedRewardMixin, _FrozenStartMixin, GlobalProgressMixin, A2C):
    """A2C with batched rollout rewards, run-level learning-rate progress and a frozen start."""


class OnPolicyFollower(SB3Follower):
    """An SB3 actor-critic (one policy network and optimizer) whose rollouts get the leader's reward in one call.

    ``learning_starts`` freezes the initial policy for that many env steps (``follower.freeze_initial``).
    """

    reward_wrapper: EnvRewardScale

    @override
    def _wrap_env(self, venv: VecEnv) -> VecEnv:
        self.reward_wrapper = EnvRewardScale(venv, coef=1.0)
        return self.reward_wrapper

    @override
    def _configure_model(self, lr: float, actor_lr: float | None, learning_starts: int) -> None:
        self.model.learning_starts = learning_starts  # type: ignore[attr-defined]

    @override
    def _policy_optimizer(self) -> torch.optim.Optimizer:
        """The actor-critic's single optimizer (policy and value share it)."""
        return self.model.policy.optimizer

    @override
    def set_reward_model(self, reward_model: RewardModel, mix: RewardMix | None = None) -> None:
        mix = mix or RewardMix()
        self.reward_model = reward_model
        self._reward_mix = mix
        self.reward_wrapper.coef = mix.env
        self.model.rollout_reward_fn = torch_reward_fn(reward_model, mix.model)  # type: ignore[attr-defined]

    @override
    def set_reward_model_to_true_reward(self) -> None:
        self.reward_model = None
        self.true_reward_only = True
        self._reward_mix = RewardMix(env=1.0, model=0.0)
        self.reward_wrapper.coef = 1.0
        self.model.rollout_reward_fn = None  # type: ignore[attr-defined]

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
    @classmethod
    def declared_capabilities(cls, params: Mapping[str, Any] | None = None) -> frozenset[Capability]:
        """The SB3 set plus ``POLICY_LOOKAHEAD`` (one actor-critic module whose log-probs are a functional call)."""
        return super().declared_capabilities(params) | {Capability.POLICY_LOOKAHEAD}

    @override
    @property
    def capabilities(self) -> frozenset[Capability]:
        return super().capabilities | {Capability.POLICY_LOOKAHEAD}

    @override
    def policy_parameters(self) -> dict[str, torch.Tensor]:
        return dict(self.model.policy.named_parameters())

    @override
    def policy_log_prob(
        self, obs: torch.Tensor, actions: torch.Tensor, params: dict[str, torch.Tensor]
    ) -> torch.Tensor:
        """``policy.evaluate_actions``'s log-probabilities through ``torch.func.functional_call``."""
        return torch.func.functional_call(
            _LogProb(self.model.policy), {f"policy.{k}": v for k, v in params.items()}, (obs, actions)
        )

    @override
    def policy_learning_rate(self) -> float:
        """SB3's current learning rate (its schedule at the run's progress)."""
        return float(self.model.lr_schedule(self.model._current_progress_remaining))


class _LogProb(torch.nn.Module):
    """``(obs, actions) -> log π(a|s)`` of an SB3 actor-critic policy, as a module for ``functional_call``."""

    def __init__(self, policy: torch.nn.Module) -> None:
        super().__init__()
        self.policy = policy

    def forward(self, obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        return self.policy.evaluate_actions(obs, actions)[1]  # type: ignore[operator,no-any-return]


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
