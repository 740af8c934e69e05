"""Tabular reward models behind the deep `RewardModel` seam (observations are one-hot states)."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import torch
from torch import nn
from typing_extensions import override

from bilevel_rl.reward_models.base import RewardModel
from bilevel_rl.tabular.core.reward import linear_reward


class TabularRewardModel(RewardModel):
    """``r_x(s, a) = x[s, a]`` (a parameter table) or ``r_x(s, a) = φ(s, a)·x`` (linear features).

    Observations are one-hot state vectors ``(B, S)`` (as the tabular followers emit) and actions are integers,
    so every upper rule written for the deep side runs unchanged on tabular problems.

    Args:
        num_states: ``S``.
        num_actions: ``A``.
        features: optional ``(S, A, d)`` feature tensor; ``None`` gives the full table (``d = S·A``).
        init_scale: standard deviation of the initial parameters (0: zeros).
        generator: torch generator for the initialisation.
    """

    def __init__(
        self,
        num_states: int,
        num_actions: int,
        features: torch.Tensor | None = None,
        init_scale: float = 0.0,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        self.num_states, self.num_actions = num_states, num_actions
        self.features: torch.Tensor | None
        if features is None:
            self.features = None
            shape: tuple[int, ...] = (num_states, num_actions)
        else:
            if features.shape[:2] != (num_states, num_actions):
                raise ValueError(f"features must have shape (S, A, d), got {tuple(features.shape)}")
            self.register_buffer("features", features.double())
            shape = (features.shape[2],)
        init = torch.randn(shape, generator=generator, dtype=torch.float64) * init_scale
        self.x = nn.Parameter(init)
        self.normalize = False

    @property
    @override
    def action_ndim(self) -> int:
        return 0

    def table(self) -> torch.Tensor:
        """The ``(S, A)`` reward table ``r_x`` (differentiable in ``x``)."""
        return linear_reward(self.x, self.features)

    @override
    def forward(self, obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        state_weights = obs.reshape(obs.shape[0], -1).to(torch.float64)  # one-hot (or a state distribution)
        rows = state_weights @ self.table()  # (B, A)
        return rows.gather(1, actions.reshape(-1, 1).long()).squeeze(1)


def one_hot_space(num_states: int) -> gym.spaces.Box:
    """The observation space of tabular followers: one-hot state vectors."""
    return gym.spaces.Box(0.0, 1.0, (num_states,), dtype=np.float32)
