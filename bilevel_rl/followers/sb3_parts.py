"""Pieces of the SB3 followers besides the follower classes.

Run-level learning-rate progress, the recorder callback, and the episode loops of evaluation and video (vector envs
and Atari).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import gymnasium as gym
import numpy as np
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.vec_env import VecEnv

from bilevel_rl.envs.atari import AtariConfig, episode_metrics, make_atari_eval_env
from bilevel_rl.envs.make import make_eval_env
from bilevel_rl.followers.base import LeaderStepReward, TransitionRecorder

Predict = Callable[[np.ndarray], np.ndarray]
"""Observations → actions of the evaluated policy."""


class GlobalProgressMixin:
    """Learning-rate progress over ``lr_horizon`` env steps instead of per ``learn()`` call."""

    lr_horizon: int | None = None
    _current_progress_remaining: float

    def _update_current_progress_remaining(self, num_timesteps: int, total_timesteps: int) -> None:
        horizon = self.lr_horizon or total_timesteps
        self._current_progress_remaining = max(0.0, 1.0 - float(num_timesteps) / float(horizon))


def learning_rate_schedule(lr: float, kind: str) -> Any:
    """SB3 ``learning_rate``: ``constant`` or ``linear`` in the remaining progress."""
    if kind == "constant":
        return lr
    if kind == "linear":
        return lambda progress: lr * progress
    raise ValueError(f"follower.lr_schedule: unknown schedule {kind!r} (choose constant or linear)")


def positive_ent_coef(value: Any) -> bool:
    """Whether an SB3 ``ent_coef`` gives a temperature > 0: ``auto``/``auto_<init>`` (learned) or a number > 0."""
    if isinstance(value, str) and value.startswith("auto"):
        return True
    try:
        return float(value) > 0
    except (TypeError, ValueError):
        return False


class RecorderCallback(BaseCallback):
    """Feeds every environment step into a :class:`TransitionRecorder`."""

    def __init__(self, recorder: TransitionRecorder) -> None:
        super().__init__()
        self.recorder = recorder
        self.game_returns: list[float] = []  # Monitor's full-episode returns (Atari: whole game, unclipped)

    def _on_step(self) -> bool:
        loc = self.locals
        actions = loc["clipped_actions"] if "clipped_actions" in loc else loc["actions"]
        infos = loc["infos"]
        true_r = np.array([info.get("true_reward", np.nan) for info in infos], dtype=np.float32)
        truncated = np.array([bool(info.get("TimeLimit.truncated", False)) for info in infos])
        self.game_returns += [float(info["episode"]["r"]) for info in infos if "episode" in info]
        # SB3 updates model._last_obs only after the callback, so it still holds the pre-step observation.
        self.recorder.add(
            np.asarray(self.model._last_obs).copy(),
            np.asarray(actions).copy(),
            true_r,
            np.asarray(loc["dones"]),
            truncated,
        )
        return True


def evaluate_episodes(
    predict: Predict, env: gym.Env, episodes: int, seed: int, leader_reward: LeaderStepReward | None = None
) -> dict[str, float]:
    """``eval/...`` metrics of ``episodes`` episodes on the env's own reward (episode ``i`` reset with ``seed + i``).

    With ``leader_reward(obs, action, env_reward)`` the mean of its episode sums is ``eval/leader_return``.
    """
    returns, lengths, leader_returns = [], [], []
    for i in range(episodes):
        obs, _ = env.reset(seed=seed + i)
        done, ret, lead, length = False, 0.0, 0.0, 0
        while not done:
            action = predict(obs)
            next_obs, reward, terminated, truncated, _ = env.step(action)
            ret += float(reward)
            if leader_reward is not None:
                lead += leader_reward(obs, action, float(reward))
            obs = next_obs
            length += 1
            done = terminated or truncated
        returns.append(ret)
        lengths.append(length)
        leader_returns.append(lead)
    metrics = episode_metrics(returns, lengths)
    if leader_reward is not None:
        metrics["eval/leader_return"] = float(np.mean(leader_returns))
    return metrics


def record_episode(
    predict: Predict,
    env_id: str,
    env_kwargs: dict[str, Any],
    atari: AtariConfig | None,
    seed: int,
    max_steps: int,
) -> np.ndarray:
    """Frames ``(T, H, W, 3)`` of one episode of at most ``max_steps`` steps (Atari: a whole game)."""
    if atari is not None:
        venv: VecEnv = make_atari_eval_env(env_id, env_kwargs, atari, seed, render=True)
        try:
            vobs = venv.reset()
            images = [venv.get_images()[0]]
            for _ in range(max_steps):
                vobs, _, dones, _ = venv.step(predict(np.asarray(vobs)))
                images.append(venv.get_images()[0])
                if dones[0]:
                    break
        finally:
            venv.close()
        return np.stack([np.asarray(f) for f in images])
    env = make_eval_env(env_id, env_kwargs, render=True)
    try:
        obs, _ = env.reset(seed=seed)
        frames = [env.render()]
        for _ in range(max_steps):
            obs, _, terminated, truncated, _ = env.step(predict(obs))
            frames.append(env.render())
            if terminated or truncated:
                break
    finally:
        env.close()
    return np.stack([np.asarray(f) for f in frames])
