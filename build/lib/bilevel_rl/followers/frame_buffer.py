"""A replay buffer for frame-stacked image observations that stores each frame once.

SB3's ``ReplayBuffer`` stores the full ``(K, 84, 84)`` stack twice per transition (obs and next_obs): 56 kB a
step, 56 GB for the 1M-step buffers of the SoBiRL Atari set-up (SoBiRL App. J.2 and code: discrete SAC
with a 1M replay and 4 stacked 84×84 frames). ``FrameStackReplayBuffer`` keeps only the newest frame of each
observation (7 kB) and rebuilds both stacks when a batch is sampled, exactly as SB3's ``VecFrameStack`` built
them (zero padding before an episode's first frame).

How the stacks are recovered (per env column, each independent):

* Row ``t`` stores ``obs_t[-C:]`` (the newest frame; ``C`` channels per frame) and ``back[t]``: how many of the
  ``K-1`` older frames of ``obs_t`` are the newest frames of the rows just before it (its *chain*).
* Row ``t+1`` continues the chain of row ``t`` exactly when ``obs_{t+1} == next_obs_t`` (checked at ``add``,
  one array comparison). Then ``next_obs_t`` is rebuilt from ``obs_t`` and row ``t+1``'s frame. Otherwise
  (a terminal step: ``next_obs_t`` is SB3's ``infos["terminal_observation"]``; or an env reset with no done,
  e.g. ``learn(reset_num_timesteps=True)``) the newest frame of ``next_obs_t`` stays in a compact side store,
  and row ``t+1`` starts a new chain. The decision is made on the data, so the rebuilt arrays equal what was
  added whatever the wrappers did; ``done`` only feeds the sampled ``dones``.
* A chain start whose older frames are not all zero (a buffer attached mid-episode) keeps those ``K-1``
  frames in a second side store (*heads*). VecFrameStack's episode starts are zero-padded and store nothing.
* Side-store entries of a row are freed when that row is overwritten. The newest row's next frame is always in
  the side store (until the next ``add`` links it), so the newest row can be sampled, as in SB3.
* A row is valid iff every row its stack needs is still held: ``back[t] <= age(t)`` (age 0 = oldest row).
  Only up to ``K-1`` of the oldest rows per column fail this once the buffer has wrapped; sampling redraws
  them, so an invalid row is never returned.

Rewards: with ``reward_model`` set, sampled rewards are ``reward_model.relabel(obs, actions)`` on the sampled
batch (never stale; the same contract as ``RelabelingReplayBuffer``), optionally clamped to
``[-reward_clip, reward_clip]`` (the SoBiRL code clamps relabelled rewards to ``[-1, 1]``); otherwise the stored
environment reward (``true_rewards``).
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np
import torch
from gymnasium import spaces
from stable_baselines3.common.buffers import BaseBuffer
from stable_baselines3.common.type_aliases import ReplayBufferSamples
from stable_baselines3.common.vec_env import VecNormalize
from typing_extensions import override

from bilevel_rl.followers.buffer_io import filled_rows, restore_rows

_MAX_REDRAWS = 64


class SupportsRelabel(Protocol):
    """Anything that labels a flat batch of transitions with rewards (e.g. ``RewardModel``)."""

    def relabel(self, obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """Rewards ``(B,)`` for observations ``(B, *obs_shape)`` and actions ``(B,)`` (discrete) / ``(B, d)``."""
        ...


class FrameStackReplayBuffer(BaseBuffer):
    """Drop-in ``replay_buffer_class`` for SB3 off-policy algorithms on frame-stacked uint8 images.

    Observations must be channels-first uint8 stacks ``(K·C, H, W)`` (SB3 ``VecFrameStack`` followed by
    ``VecTransposeImage``), newest frame last. Samples have the fields and dtypes of SB3's ``ReplayBuffer``.

    Args:
        buffer_size: Capacity in transitions over all envs (``buffer_size // n_envs`` rows per env, as SB3).
        observation_space: A uint8 ``Box`` of shape ``(K·C, H, W)``.
        action_space: The action space (``Discrete`` actions are stored in the smallest integer type).
        device: Torch device of the sampled tensors.
        n_envs: Number of parallel envs (independent columns).
        optimize_memory_usage: Accepted for signature compatibility and ignored (this buffer is always the
            memory-lean variant; unlike SB3 it also handles timeouts correctly).
        handle_timeout_termination: Sampled ``dones`` exclude ``infos["TimeLimit.truncated"]`` steps, as SB3.
        frame_stack: ``K``, the number of frames in a stack. ``None``: ``obs_shape[0]`` (one channel a frame).
        reward_clip: Clamp relabelled rewards to ``[-reward_clip, reward_clip]`` (``None``: no clamp).

    Raises:
        ValueError: For non-image observation spaces (use SB3's ``ReplayBuffer`` there), or a ``frame_stack``
            that does not divide the channel count.
    """

    reward_model: SupportsRelabel | None

    def __init__(
        self,
        buffer_size: int,
        observation_space: spaces.Space,
        action_space: spaces.Space,
        device: torch.device | str = "auto",
        n_envs: int = 1,
        optimize_memory_usage: bool = False,
        handle_timeout_termination: bool = True,
        frame_stack: int | None = None,
        reward_clip: float | None = None,
    ) -> None:
        if not (
            isinstance(observation_space, spaces.Box)
            and len(observation_space.shape) == 3
            and observation_space.dtype == np.uint8
        ):
            raise ValueError(
                "FrameStackReplayBuffer needs channels-first uint8 image stacks (K, H, W) "
                f"(VecFrameStack + VecTransposeImage), got {observation_space}; use SB3's ReplayBuffer instead"
            )
        super().__init__(buffer_size, observation_space, action_space, device, n_envs=n_envs)
        self.buffer_size = max(buffer_size // n_envs, 1)
        channels = self.obs_shape[0]
        k = channels if frame_stack is None else int(frame_stack)
        if k < 1 or channels % k != 0:
            raise ValueError(f"frame_stack={frame_stack} does not divide the {channels} observation channels")
        if k > 256:
            raise ValueError(f"frame_stack={k} > 256 is not supported")
        self.frame_stack = k
        self.frame_shape: tuple[int, int, int] = (channels // k, self.obs_shape[1], self.obs_shape[2])
        self.optimize_memory_usage = optimize_memory_usage
        self.handle_timeout_termination = handle_timeout_termination
        self.reward_model = None
        self.reward_clip = reward_clip

        self.action_dtype = np.dtype(np.float32 if action_space.dtype == np.float64 else action_space.dtype)
        store_dtype = self.action_dtype
        if isinstance(action_space, spaces.Discrete) and int(action_space.start) == 0:
            store_dtype = np.dtype(np.min_scalar_type(max(int(action_space.n) - 1, 0)))
        n, e = self.buffer_size, self.n_envs
        # np.zeros: pages are only committed when written, so a 1M buffer can be built before it is filled
        self.frames = np.zeros((n, e, *self.frame_shape), dtype=np.uint8)
        self.actions = np.zeros((n, e, self.action_dim), dtype=store_dtype)
        self.true_rewards = np.zeros((n, e), dtype=np.float32)
        self.dones = np.zeros((n, e), dtype=bool)
        self.timeouts = np.zeros((n, e), dtype=bool)
        self.back = np.zeros((n, e), dtype=np.uint8)
        self.has_side = np.zeros((n, e), dtype=bool)
        self.side: dict[int, np.ndarray] = {}  # row * n_envs + env -> next frame (C, H, W)
        self.heads: dict[int, np.ndarray] = {}  # row * n_envs + env -> older frames (K-1, C, H, W)
        self._last_next_obs = np.zeros((e, *self.obs_shape), dtype=np.uint8)
        self._has_last = np.zeros((e,), dtype=bool)

    # ------------------------------------------------------------------ storage

    @override
    def add(  # type: ignore[override]
        self,
        obs: np.ndarray,
        next_obs: np.ndarray,
        action: np.ndarray,
        reward: np.ndarray,
        done: np.ndarray,
        infos: list[dict[str, Any]],
    ) -> None:
        """Store one vectorised step (same arguments as SB3's ``ReplayBuffer.add``)."""
        n_envs, c = self.n_envs, self.frame_shape[0]
        obs = np.asarray(obs).reshape(n_envs, *self.obs_shape)
        next_obs = np.asarray(next_obs).reshape(n_envs, *self.obs_shape)
        action = np.asarray(action).reshape(n_envs, self.action_dim)
        p, prev = self.pos, (self.pos - 1) % self.buffer_size
        for e in range(n_envs):
            linked = bool(self._has_last[e]) and np.array_equal(obs[e], self._last_next_obs[e])
            if linked:  # previous row's next frame is this row's frame: drop its pending side entry
                self.side.pop(prev * n_envs + e, None)
                self.has_side[prev, e] = False
                back = min(int(self.back[prev, e]) + 1, self.frame_stack - 1)
            else:
                back = 0
            key = p * n_envs + e
            self.side.pop(key, None)
            self.heads.pop(key, None)
            if not linked and self.frame_stack > 1 and obs[e, :-c].any():
                self.heads[key] = obs[e, :-c].reshape(self.frame_stack - 1, *self.frame_shape).copy()
            self.frames[p, e] = obs[e, -c:]
            self.side[key] = next_obs[e, -c:].copy()
            self.has_side[p, e] = True
            self.back[p, e] = back
            self._last_next_obs[e] = next_obs[e]
            self._has_last[e] = True
        self.actions[p] = action
        self.true_rewards[p] = np.asarray(reward, dtype=np.float32).reshape(n_envs)
        self.dones[p] = np.asarray(done).reshape(n_envs)
        if self.handle_timeout_termination:
            self.timeouts[p] = [bool(info.get("TimeLimit.truncated", False)) for info in infos]
        self.pos += 1
        if self.pos == self.buffer_size:
            self.full = True
            self.pos = 0

    @override
    def reset(self) -> None:
        """Empty the buffer (arrays are kept; the next ``add`` starts new chains)."""
        super().reset()
        self.side.clear()
        self.heads.clear()
        self.has_side[:] = False
        self._has_last[:] = False

    # ------------------------------------------------------------------ reconstruction

    def valid_mask(self) -> np.ndarray:
        """``(buffer_size, n_envs)`` bool: rows that can be sampled (held, and every frame they need held)."""
        rows = np.arange(self.buffer_size)
        mask = self._valid(rows[:, None], np.zeros((1, self.n_envs), dtype=np.int64) + np.arange(self.n_envs))
        if not self.full:
            mask[self.pos :] = False
        return mask

    def _valid(self, rows: np.ndarray, envs: np.ndarray) -> np.ndarray:
        oldest = self.pos if self.full else 0
        age = (rows - oldest) % self.buffer_size
        return self.back[rows, envs].astype(np.int64) <= age

    def stacks(self, rows: np.ndarray, envs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Rebuild ``(obs, next_obs)``, each ``(B, *obs_shape)`` uint8, for valid ``(rows, envs)`` pairs."""
        rows, envs = np.asarray(rows, dtype=np.int64), np.asarray(envs, dtype=np.int64)
        k, n, n_envs = self.frame_stack, self.buffer_size, self.n_envs
        b = len(rows)
        back = self.back[rows, envs].astype(np.int64)
        offsets = np.arange(-(k - 1), 1)  # frame j of a stack is k-1-j rows back
        obs = self.frames[(rows[:, None] + offsets) % n, envs[:, None]]  # one gather: (B, K, C, H, W)
        obs[-offsets[None, :] > back[:, None]] = 0  # frames from before the chain start: zeros (or its head)
        if self.heads:
            for i in np.flatnonzero(back < k - 1):
                head = self.heads.get(int((rows[i] - back[i]) % n) * n_envs + int(envs[i]))
                if head is not None:  # frames before the chain start (older ones are zeros otherwise)
                    obs[i, : k - 1 - back[i]] = head[back[i] :]
        nxt = np.empty_like(obs)
        nxt[:, : k - 1] = obs[:, 1:]
        nxt[:, k - 1] = self.frames[(rows + 1) % n, envs]
        for i in np.flatnonzero(self.has_side[rows, envs]):
            nxt[i, k - 1] = self.side[int(rows[i]) * n_envs + int(envs[i])]
        return obs.reshape(b, *self.obs_shape), nxt.reshape(b, *self.obs_shape)

    # ------------------------------------------------------------------ sampling

    @override
    def sample(self, batch_size: int, env: VecNormalize | None = None) -> ReplayBufferSamples:
        """Sample ``batch_size`` valid transitions uniformly (rows, then env columns, as SB3)."""
        upper = self.size()
        if upper == 0:
            raise ValueError("cannot sample from an empty FrameStackReplayBuffer")
        batch_inds = np.random.randint(0, upper, size=batch_size)
        return self._get_samples(batch_inds, env=env)

    @override
    def _get_samples(self, batch_inds: np.ndarray, env: VecNormalize | None = None) -> ReplayBufferSamples:
        rows = np.array(batch_inds, dtype=np.int64)
        envs = np.random.randint(0, high=self.n_envs, size=(len(rows),))
        rows, envs = self._redraw_invalid(rows, envs)
        return self.get_transitions(rows, envs, env=env)

    def _redraw_invalid(self, rows: np.ndarray, envs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Replace invalid pairs by uniform redraws among valid ones (rejection; exact fallback)."""
        upper = self.size()
        bad = ~self._valid(rows, envs)
        for _ in range(_MAX_REDRAWS):
            if not bad.any():
                return rows, envs
            nb = int(bad.sum())
            rows[bad] = np.random.randint(0, upper, size=nb)
            envs[bad] = np.random.randint(0, self.n_envs, size=nb)
            bad = ~self._valid(rows, envs)
        if not bad.any():
            return rows, envs
        valid = np.flatnonzero(self.valid_mask().reshape(-1))
        if len(valid) == 0:
            raise ValueError(
                f"no sampleable transition: every held row needs frames already overwritten "
                f"(buffer_size per env {self.buffer_size} vs frame_stack {self.frame_stack})"
            )
        pick = valid[np.random.randint(0, len(valid), size=int(bad.sum()))]
        rows[bad], envs[bad] = pick // self.n_envs, pick % self.n_envs
        return rows, envs

    def get_transitions(
        self, rows: np.ndarray, envs: np.ndarray, env: VecNormalize | None = None
    ) -> ReplayBufferSamples:
        """The transitions at given ``(rows, envs)`` pairs, as SB3's samples (no validity check: see ``valid_mask``).

        Observations are passed through ``env.normalize_obs`` and stored rewards through ``env.normalize_reward``
        when a ``VecNormalize`` is given, as SB3 does. Relabelled rewards are computed on the raw uint8
        observations and are not normalised.
        """
        rows, envs = np.asarray(rows, dtype=np.int64), np.asarray(envs, dtype=np.int64)
        obs, next_obs = self.stacks(rows, envs)
        actions = self.actions[rows, envs].astype(self.action_dtype)
        dones = self.dones[rows, envs] & ~self.timeouts[rows, envs]
        # every array here is a fresh copy (fancy indexing), so no second copy is needed for the tensors
        obs_t = self.to_torch(self._normalize_obs(obs, env), copy=False)  # type: ignore[arg-type]
        actions_t = self.to_torch(actions, copy=False)
        if self.reward_model is not None:
            raw_obs = obs_t if env is None else self.to_torch(obs)
            model_actions = actions_t[:, 0] if isinstance(self.action_space, spaces.Discrete) else actions_t
            rewards_t = self.reward_model.relabel(raw_obs, model_actions).reshape(-1, 1).float().to(self.device)
            if self.reward_clip is not None:
                rewards_t = rewards_t.clamp(-self.reward_clip, self.reward_clip)
        else:
            rewards = self._normalize_reward(self.true_rewards[rows, envs].reshape(-1, 1), env)
            rewards_t = self.to_torch(rewards, copy=False)
        return ReplayBufferSamples(
            observations=obs_t,
            actions=actions_t,
            next_observations=self.to_torch(self._normalize_obs(next_obs, env), copy=False),  # type: ignore[arg-type]
            dones=self.to_torch(dones.astype(np.float32).reshape(-1, 1), copy=False),
            rewards=rewards_t,
        )

    # ------------------------------------------------------------------ accounting

    def bytes_per_transition(self) -> int:
        """Bytes one stored step costs in the arrays (per env): frame + action + reward + 4 one-byte fields.

        Excluded (stated, not hidden): the side store, ``C·H·W`` bytes plus ~150 bytes of Python overhead per
        terminal step (or reset without done) still held, and ``(K-1)·C·H·W`` per mid-episode chain start
        (none under VecFrameStack's zero-padded starts); see :meth:`side_store_nbytes` for the live figure.
        """
        frame = int(np.prod(self.frame_shape))
        action = self.actions.dtype.itemsize * self.action_dim
        return frame + action + 4 + 4  # reward float32; dones, timeouts, back, has_side (1 byte each)

    def side_store_nbytes(self) -> int:
        """Payload bytes currently held in the side stores (terminal/next frames and chain heads)."""
        return sum(a.nbytes for a in self.side.values()) + sum(a.nbytes for a in self.heads.values())

    def nbytes(self) -> int:
        """Bytes of all allocated arrays (committed lazily by the OS) plus the side-store payload."""
        return sum(getattr(self, name).nbytes for name in self._ARRAYS) + self.side_store_nbytes()

    # ------------------------------------------------------------------ checkpointing

    _ROW_ARRAYS = ("frames", "actions", "true_rewards", "dones", "timeouts", "back", "has_side")
    _ENV_ARRAYS = ("_last_next_obs", "_has_last")
    _ARRAYS = _ROW_ARRAYS + _ENV_ARRAYS

    def state_dict(self) -> dict[str, Any]:
        """Filled rows of the arrays (views, not copies), side stores, positions. ``reward_model`` excluded.

        Only the rows written so far are kept (:mod:`~bilevel_rl.followers.buffer_io`): a buffer that is not full
        checkpoints its contents, not its capacity.
        """
        n_rows = filled_rows(self.pos, self.full, self.buffer_size)
        state: dict[str, Any] = {name: getattr(self, name)[:n_rows] for name in self._ROW_ARRAYS}
        state.update({name: getattr(self, name) for name in self._ENV_ARRAYS})
        state.update(
            pos=self.pos,
            full=self.full,
            side=dict(self.side),
            heads=dict(self.heads),
            buffer_size=self.buffer_size,
            n_envs=self.n_envs,
            frame_stack=self.frame_stack,
        )
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` output into a buffer built with the same spaces, capacity and ``n_envs``."""
        for name in ("buffer_size", "n_envs", "frame_stack"):
            if state[name] != getattr(self, name):
                raise ValueError(f"checkpoint buffer has {name}={state[name]}, this buffer {getattr(self, name)}")
        for name in self._ARRAYS:
            restore_rows(getattr(self, name), state[name], name, cut=name in self._ROW_ARRAYS)
        self.pos, self.full = int(state["pos"]), bool(state["full"])
        self.side, self.heads = dict(state["side"]), dict(state["heads"])
