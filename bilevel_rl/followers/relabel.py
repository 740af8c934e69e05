"""SB3's replay buffer with rewards relabelled by the current reward model at sample time (vector observations)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from stable_baselines3.common.buffers import ReplayBuffer
from stable_baselines3.common.type_aliases import ReplayBufferSamples
from typing_extensions import override

from bilevel_rl.followers.base import RewardMix
from bilevel_rl.reward_models.base import RewardModel


class RelabelingReplayBuffer(ReplayBuffer):
    """SB3 replay buffer whose sampled rewards always come from the *current* reward model.

    ``true_rewards`` keeps the environment's rewards; SB3's ``rewards`` array is used as a cache of learned
    rewards, so SB3's own ``_get_samples`` (and its RNG draws) stay untouched. Before each sample, if any row of
    the batch was computed under an older reward model, every stale row in the buffer is recomputed at once, in
    fixed blocks of ``block_size`` rows (fixed shapes keep the arithmetic identical between runs). A reward model
    counts as changed when any parameter or buffer was replaced or modified in place (torch's version counters),
    so a leader step, a normalisation update or a manual edit are all seen by the very next sampled batch.
    Between leader updates this computes each transition's reward once instead of once per sample.

    With a :class:`~bilevel_rl.followers.base.RewardMix` (reward shaping) the cached reward is
    ``mix.model · r_φ + mix.env · r_env``, ``r_env`` the stored environment reward (the visible one: delayed when
    ``env.visible_reward`` delays it).
    """

    reward_model: RewardModel | None = None
    mix: RewardMix = RewardMix()
    action_low: torch.Tensor | None = None
    action_high: torch.Tensor | None = None
    block_size: int = 1024
    _fingerprint: Any = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.true_rewards = np.zeros_like(self.rewards)
        self.fresh = np.zeros((self.buffer_size,), dtype=bool)

    @override
    def add(self, obs: Any, next_obs: Any, action: Any, reward: Any, done: Any, infos: Any) -> None:
        self.true_rewards[self.pos] = np.array(reward)
        self.fresh[self.pos] = False
        super().add(obs, next_obs, action, reward, done, infos)

    def refresh(self, rows: np.ndarray | None = None) -> int:
        """Recompute stale learned rewards if any of ``rows`` (default: all) is stale; return rows recomputed."""
        model = self.reward_model
        if model is None:
            return 0
        fingerprint = model.fingerprint()
        if fingerprint != self._fingerprint:
            self.fresh[:] = False
            self._fingerprint = fingerprint
        upper = self.buffer_size if self.full else self.pos
        if rows is not None and self.fresh[rows].all():
            return 0
        stale = np.flatnonzero(~self.fresh[:upper])
        done = 0
        for block in np.unique(stale // self.block_size):
            lo, hi = block * self.block_size, min((block + 1) * self.block_size, self.buffer_size)
            obs = self.to_torch(self.observations[lo:hi].reshape(-1, *self.obs_shape))
            act = self.to_torch(self.actions[lo:hi].reshape(-1, self.action_dim))
            if self.action_low is not None and self.action_high is not None:  # stored scaled to [-1, 1]
                act = self.action_low + 0.5 * (act + 1.0) * (self.action_high - self.action_low)
            reward = model.relabel(obs, act).reshape(hi - lo, self.n_envs).cpu().numpy()
            if self.mix != RewardMix():
                reward = self.mix.model * reward + self.mix.env * self.true_rewards[lo:hi]
            self.rewards[lo:hi] = reward
            self.fresh[lo:hi] = True
            done += hi - lo
        return done

    @override
    def _get_samples(self, batch_inds: np.ndarray, env: Any = None) -> ReplayBufferSamples:
        self.refresh(batch_inds)
        return super()._get_samples(batch_inds, env)
