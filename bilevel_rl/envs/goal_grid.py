"""The goal-placement grid world of PPA-BRL §5 as a gymnasium env (``GoalGrid-v0``).

An agent starts at ``(0, 0)`` of an ``N × N`` grid and moves (stay / ±x / ±y, deterministic, walls block); the
designer's parameter is the goal ``ν ∈ [0, N−1]²`` (continuous), and the agent's reward is
``r_ν(s) = −κ ‖p(s) − ν‖²`` (our choice for §5's "reward based on its speed in reaching the goal": the squared-distance
form of §2.1 Example 1, eq. 6). It is the environment of :mod:`bilevel_rl.tabular.repro.ppa_navigation` (same
moves, same reward), for followers that learn from samples; the goal is set like any leader parameter
(``set_leader_parameters``, :mod:`bilevel_rl.envs.leader_params`) or by ``env.kwargs.goal``.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from bilevel_rl.tabular.repro.ppa_navigation import MOVES


class GoalGridEnv(gym.Env[np.ndarray, np.int64]):
    """PPA-BRL §5's grid world with a movable goal (module docstring).

    Args:
        size: grid side ``N`` (``>= 2``).
        goal: ``ν``; ``None`` is the far corner ``(N−1, N−1)``.
        kappa: reward scale ``κ > 0``.
        max_episode_steps: truncation (the registered id uses 20).
    """

    metadata: dict[str, Any] = {"render_modes": []}

    def __init__(
        self, size: int = 6, goal: tuple[float, float] | None = None, kappa: float = 0.5, max_episode_steps: int = 20
    ) -> None:
        if size < 2:
            raise ValueError(f"size: must be >= 2, got {size}")
        if not kappa > 0:
            raise ValueError(f"kappa: must be > 0, got {kappa}")
        self.size, self.kappa, self.max_episode_steps = int(size), float(kappa), int(max_episode_steps)
        self.observation_space = spaces.Box(0.0, float(size - 1), shape=(2,), dtype=np.float32)
        self.action_space = spaces.Discrete(len(MOVES))
        self._goal = self._check_goal((size - 1.0, size - 1.0) if goal is None else goal)
        self._pos = np.zeros(2, dtype=np.int64)

    def _check_goal(self, goal: Any) -> np.ndarray:
        g = np.asarray(goal, dtype=np.float64).reshape(-1)
        if g.shape != (2,) or not np.isfinite(g).all() or (g < 0).any() or (g > self.size - 1).any():
            raise ValueError(
                f"goal: must be a finite (x, y) in [0, {self.size - 1}]^2, got {np.asarray(goal).tolist()}"
            )
        return g

    @property
    def goal(self) -> np.ndarray:
        """The current ``ν`` (a copy)."""
        return self._goal.copy()

    def set_leader_parameters(self, goal: Any) -> None:
        """Move the goal to ``ν`` (applies from the next step; one-line error if outside the grid)."""
        self._goal = self._check_goal(goal)

    def reward(self, position: np.ndarray) -> float:
        """``−κ ‖p − ν‖²``."""
        return float(-self.kappa * np.sum((np.asarray(position, dtype=np.float64) - self._goal) ** 2))

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict]:
        """Back to ``(0, 0)``."""
        super().reset(seed=seed)
        self._pos = np.zeros(2, dtype=np.int64)
        return self._pos.astype(np.float32), {}

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        """Reward of the current cell (r depends on the state only), then the move."""
        if not self.action_space.contains(action):
            raise ValueError(f"action: expected an integer in [0, {len(MOVES)}), got {action!r}")
        reward = self.reward(self._pos)
        self._pos = np.clip(self._pos + np.asarray(MOVES[int(action)]), 0, self.size - 1)
        return self._pos.astype(np.float32), reward, False, False, {"goal": self.goal}


if "GoalGrid-v0" not in gym.registry:
    gym.register(id="GoalGrid-v0", entry_point="bilevel_rl.envs.goal_grid:GoalGridEnv", max_episode_steps=20)
