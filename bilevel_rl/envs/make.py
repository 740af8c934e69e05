"""Gymnasium vector envs for any Box-observation id, with the true reward kept in ``info["true_reward"]``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.vec_env import VecEnv, VecEnvWrapper
from stable_baselines3.common.vec_env.base_vec_env import VecEnvStepReturn
from typing_extensions import override

RewardFn = Callable[[np.ndarray, np.ndarray], np.ndarray]


def _register_optional_envs() -> None:
    """Register ALE envs when ale-py is installed (gymnasium >= 1.0 needs it explicit)."""
    try:
        import ale_py

        gym.register_envs(ale_py)
        ale_py.ALEInterface.setLoggerMode(ale_py.LoggerMode.Error)  # no banner on stderr at every env creation
    except ImportError:
        pass


def check_env_id(env_id: str) -> gym.envs.registration.EnvSpec:
    """Return the spec of a registered id, or raise a one-line ``ValueError`` naming ``env.id``."""
    _register_optional_envs()
    try:
        return gym.spec(env_id)
    except Exception as exc:  # gymnasium raises several error types here
        raise ValueError(f"env.id: unknown gymnasium environment {env_id!r} ({type(exc).__name__})") from None


class TrueRewardInfo(gym.Wrapper):
    """Copy the environment's own reward into ``info["true_reward"]`` at every step."""

    @override
    def step(self, action: Any) -> tuple[Any, Any, bool, bool, dict[str, Any]]:
        obs, reward, terminated, truncated, info = self.env.step(action)
        info["true_reward"] = float(reward)
        return obs, reward, terminated, truncated, info


def make_train_env(env_id: str, n_envs: int, seed: int, env_kwargs: dict[str, Any] | None = None) -> VecEnv:
    """Vectorised training env: ``env → Monitor (true episode returns) → TrueRewardInfo``, SB3-seeded."""
    check_env_id(env_id)
    return make_vec_env(env_id, n_envs=n_envs, seed=seed, env_kwargs=env_kwargs or {}, wrapper_class=TrueRewardInfo)


def make_eval_env(env_id: str, env_kwargs: dict[str, Any] | None = None, render: bool = False) -> gym.Env:
    """A single un-vectorised env for evaluation on the true reward."""
    check_env_id(env_id)
    kwargs = dict(env_kwargs or {})
    if render:
        kwargs["render_mode"] = "rgb_array"
    return gym.make(env_id, **kwargs)


class LearnedRewardVecEnv(VecEnvWrapper):
    """Replace the reward of each step by the *current* learned reward ``r_φ(s_t, a_t)``.

    Used by on-policy followers (PPO/A2C). The true reward stays in ``info["true_reward"]`` (and in the
    Monitor's episode statistics, which sit below this wrapper).
    """

    def __init__(self, venv: VecEnv, reward_fn: RewardFn | None = None) -> None:
        super().__init__(venv)
        self.reward_fn = reward_fn
        self.prev_obs: np.ndarray | None = None
        self._actions: np.ndarray | None = None

    @override
    def reset(self) -> Any:
        obs = self.venv.reset()
        self.prev_obs = np.asarray(obs).copy()
        return obs

    @override
    def step_async(self, actions: np.ndarray) -> None:
        self._actions = np.asarray(actions).copy()
        self.venv.step_async(actions)

    @override
    def step_wait(self) -> VecEnvStepReturn:
        obs, rewards, dones, infos = self.venv.step_wait()
        if self.reward_fn is not None:
            if self.prev_obs is None or self._actions is None:
                raise RuntimeError("LearnedRewardVecEnv.step_wait before reset/step_async")
            rewards = np.asarray(self.reward_fn(self.prev_obs, self._actions), dtype=np.float32).reshape(-1)
        self.prev_obs = np.asarray(obs).copy()
        return obs, rewards, dones, infos


def torch_reward_fn(reward_model: torch.nn.Module) -> RewardFn:
    """Wrap a reward model's ``relabel`` as a numpy → numpy function."""

    def fn(obs: np.ndarray, actions: np.ndarray) -> np.ndarray:
        return reward_model.relabel(obs, actions).cpu().numpy()  # type: ignore[operator]

    return fn
