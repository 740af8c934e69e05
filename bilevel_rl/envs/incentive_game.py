"""PBRL §6.3's incentive-design Markov game, seen by player 1, as a gymnasium env (``IncentiveGame-v0``).

The game is :func:`bilevel_rl.tabular.repro.incentive.random_incentive_game` (``|S| = 10``, ``|A_1| = |A_2| = 5``,
``U[0, 1]`` rewards, random transitions, uniform ``ρ``; the same tables for the same ``game_seed``). Player 1 is the
learning agent; player 2 plays a fixed stochastic policy (uniform unless :meth:`IncentiveGameEnv.set_opponent_policy`
sets another), so the env is the single-agent MDP player 1 faces against that opponent: the state moves by the
players' transitions ``P[s, a_1, a_2, ·]`` and player 1 is paid the designed reward ``r_x = r + c·σ(x)`` (eq. 6.2,
``c = 0.2``). The designer's parameter ``x ∈ R^{S×A_1×A_2}`` is a leader parameter (``set_leader_parameters``,
:mod:`bilevel_rl.envs.leader_params`; zero at the start, as in our §6.3 reproduction). ``info`` carries the
opponent's action and the designer's reward ``r_id(s, a_1, a_2)``; note that the designer's objective (eq. 6.2) is
its return under its *own* transitions ``P_id``, which this env does not simulate: the two-player PBRL-NI and
Meta-Gradient runs are :mod:`bilevel_rl.tabular.repro.incentive` (``scripts/reproduce_pbrl_incentive_design.py``).

Observations are the one-hot state (``float32``, length ``S``). Episodes start at ``s_0 ~ ρ`` and are truncated at
20 steps (``γ = 0.5`` in our reproduction: ``γ^20 < 10^-6``); the game has no terminal state.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces

from bilevel_rl.tabular.repro.incentive import IncentiveGame, random_incentive_game


class IncentiveGameEnv(gym.Env[np.ndarray, np.int64]):
    """Player 1's view of a random PBRL §6.3 game against a fixed opponent policy (module docstring).

    Args:
        game_seed: seed of the game's tables (the same seed gives the same game as the tabular reproduction).
        num_states: ``S``.
        num_actions_1: ``A_1`` (player 1, the agent).
        num_actions_2: ``A_2`` (player 2, the opponent).
        incentive_scale: ``c`` in ``r_x = r + c·σ(x)``.
        opponent_policy: ``(S, A_2)`` rows on the simplex; ``None`` is uniform.
        max_episode_steps: truncation (the registered id uses 20).
    """

    metadata: dict[str, Any] = {"render_modes": []}

    def __init__(
        self,
        game_seed: int = 0,
        num_states: int = 10,
        num_actions_1: int = 5,
        num_actions_2: int = 5,
        incentive_scale: float = 0.2,
        opponent_policy: Any = None,
        max_episode_steps: int = 20,
    ) -> None:
        if min(num_states, num_actions_1, num_actions_2) < 1:
            sizes = (num_states, num_actions_1, num_actions_2)
            raise ValueError(f"num_states, num_actions_1, num_actions_2: must be >= 1, got {sizes}")
        game = random_incentive_game(
            num_states, num_actions_1, num_actions_2, 0.5, 0.1, torch.Generator().manual_seed(int(game_seed))
        )
        self.game: IncentiveGame = game
        self.P = game.P.numpy()
        self.r = game.r.numpy()
        self.r_id = game.r_id.numpy()
        self.rho = game.rho.numpy()
        self.incentive_scale = float(incentive_scale)
        self.max_episode_steps = int(max_episode_steps)
        self.observation_space = spaces.Box(0.0, 1.0, shape=(num_states,), dtype=np.float32)
        self.action_space = spaces.Discrete(num_actions_1)
        self._x = np.zeros_like(self.r)
        self._opponent = np.full((num_states, num_actions_2), 1.0 / num_actions_2)
        if opponent_policy is not None:
            self.set_opponent_policy(opponent_policy)
        self._state = 0

    @property
    def x(self) -> np.ndarray:
        """The designer's current ``x`` (a copy)."""
        return self._x.copy()

    def set_leader_parameters(self, x: Any) -> None:
        """Set the incentive parameter ``x`` (shape ``(S, A_1, A_2)``; applies from the next step)."""
        arr = np.asarray(x, dtype=np.float64)
        if arr.shape != self.r.shape or not np.isfinite(arr).all():
            raise ValueError(f"x: expected finite values of shape {self.r.shape}, got shape {arr.shape}")
        self._x = arr.copy()

    def set_opponent_policy(self, policy: Any) -> None:
        """Fix player 2's policy (``(S, A_2)``, each row a distribution)."""
        arr = np.asarray(policy, dtype=np.float64)
        if arr.shape != self._opponent.shape or (arr < 0).any() or not np.allclose(arr.sum(-1), 1.0):
            raise ValueError(f"opponent_policy: expected {self._opponent.shape} rows on the simplex, got {arr.shape}")
        self._opponent = arr.copy()

    def designed_reward(self) -> np.ndarray:
        """``r_x = r + c·σ(x)``, shape ``(S, A_1, A_2)``."""
        return self.r + self.incentive_scale / (1.0 + np.exp(-self._x))

    def _obs(self) -> np.ndarray:
        obs = np.zeros(len(self.rho), dtype=np.float32)
        obs[self._state] = 1.0
        return obs

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict]:
        """``s_0 ~ ρ``."""
        super().reset(seed=seed)
        self._state = int(self.np_random.choice(len(self.rho), p=self.rho))
        return self._obs(), {}

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        """Player 2 draws its action, player 1 is paid ``r_x(s, a_1, a_2)``, the state moves by ``P``."""
        if not self.action_space.contains(action):
            raise ValueError(f"action: expected an integer in [0, {self.r.shape[1]}), got {action!r}")
        s, a1 = self._state, int(action)
        a2 = int(self.np_random.choice(self._opponent.shape[1], p=self._opponent[s]))
        reward = float(self.designed_reward()[s, a1, a2])
        info = {"opponent_action": a2, "designer_reward": float(self.r_id[s, a1, a2])}
        self._state = int(self.np_random.choice(self.P.shape[-1], p=self.P[s, a1, a2]))
        return self._obs(), reward, False, False, info


if "IncentiveGame-v0" not in gym.registry:
    gym.register(
        id="IncentiveGame-v0", entry_point="bilevel_rl.envs.incentive_game:IncentiveGameEnv", max_episode_steps=20
    )
