"""`TrajectoryBatch`: the time-major record of what a follower did in its vectorised environment."""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np


@dataclass
class TrajectoryBatch:
    """Transitions of ``E`` parallel environments over ``T`` consecutive steps (time-major).

    Attributes:
        obs: ``(T, E, *obs_shape)`` observation *before* each step.
        actions: ``(T, E, *act_shape)`` actions in the environment's own action space.
        true_rewards: ``(T, E)`` the environment's own reward (never the learned one).
        dones: ``(T, E)`` the episode ended after this step (terminated or truncated).
        terminated: ``(T, E)`` the episode ended in a terminal state (not a time limit).
        episode_starts: ``(T, E)`` this step is the first of an episode.
        timesteps: ``(T, E)`` within-episode time index of each step (0 at an episode start); ``-1`` where
            the episode began before recording started and its index is unknown.
        log_probs: optional ``(T, E)`` log-probabilities of the actions under the behaviour policy.
        context: optional ``(T, E)`` integer context id (contextual bilevel RL).
    """

    obs: np.ndarray
    actions: np.ndarray
    true_rewards: np.ndarray
    dones: np.ndarray
    terminated: np.ndarray
    episode_starts: np.ndarray
    timesteps: np.ndarray
    log_probs: np.ndarray | None = None
    context: np.ndarray | None = None

    def __post_init__(self) -> None:
        t, e = self.true_rewards.shape
        for f in fields(self):
            value = getattr(self, f.name)
            if value is not None and value.shape[:2] != (t, e):
                raise ValueError(f"TrajectoryBatch.{f.name} has shape {value.shape}, expected ({t}, {e}, ...)")

    @property
    def num_steps(self) -> int:
        """Number of time steps ``T``."""
        return int(self.true_rewards.shape[0])

    @property
    def num_envs(self) -> int:
        """Number of parallel environments ``E``."""
        return int(self.true_rewards.shape[1])

    def __len__(self) -> int:
        return self.num_steps * self.num_envs

    def flat_obs(self) -> np.ndarray:
        """Observations flattened to ``(T*E, *obs_shape)``."""
        return self.obs.reshape(-1, *self.obs.shape[2:])

    def flat_actions(self) -> np.ndarray:
        """Actions flattened to ``(T*E, *act_shape)``."""
        return self.actions.reshape(-1, *self.actions.shape[2:])

    def start_discounts(self, gamma: float) -> tuple[np.ndarray, int]:
        """``γ^t`` per step (``(T, E)`` float64; 0 where the episode began before the batch) and the episode count.

        ``t`` is the within-episode index from the episode start, so ``Σ_steps w·r / episodes`` estimates
        ``E_{s_0~ρ}[Σ_t γ^t r(s_t, a_t)]`` (PBRL App. C.1, HPGD eq. (8)); episodes cut by the end of the batch lose
        their tail.
        """
        t = self.timesteps
        w = np.where(t >= 0, gamma ** np.maximum(t, 0).astype(np.float64), 0.0)
        return w, int(self.episode_starts.sum())

    def episode_returns(self) -> list[float]:
        """True returns of the episodes that both start and end inside this batch."""
        out: list[float] = []
        for e in range(self.num_envs):
            acc: float | None = None
            for t in range(self.num_steps):
                if self.episode_starts[t, e]:
                    acc = 0.0
                if acc is not None:
                    acc += float(self.true_rewards[t, e])
                    if self.dones[t, e]:
                        out.append(acc)
                        acc = None
        return out
