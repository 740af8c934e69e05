"""Checkpoints keep only the filled rows of a replay buffer, and a restore samples and continues identically."""

from __future__ import annotations

import pickle

import gymnasium as gym
import numpy as np
import pytest
import torch
from stable_baselines3.common.buffers import ReplayBuffer

from bilevel_rl.followers.buffer_io import buffer_state, load_buffer_state, restore_rows
from bilevel_rl.followers.relabel import RelabelingReplayBuffer

OBS = gym.spaces.Box(-1.0, 1.0, (11,), np.float32)
ACT = gym.spaces.Box(-1.0, 1.0, (3,), np.float32)


def fill(buf: ReplayBuffer, steps: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    for t in range(steps):
        obs = rng.normal(size=(buf.n_envs, 11)).astype(np.float32)
        nxt = rng.normal(size=(buf.n_envs, 11)).astype(np.float32)
        act = rng.uniform(-1, 1, size=(buf.n_envs, 3)).astype(np.float32)
        done = np.array([t % 7 == 6] * buf.n_envs)
        buf.add(obs, nxt, act, rng.normal(size=buf.n_envs), done, [{}] * buf.n_envs)


def same_samples(a: ReplayBuffer, b: ReplayBuffer, seed: int) -> None:
    np.random.seed(seed)
    x = a.sample(64)
    np.random.seed(seed)
    y = b.sample(64)
    for u, v in zip(x, y, strict=True):
        assert (u is None and v is None) or torch.equal(u, v)


@pytest.mark.parametrize(
    ("cls", "optimize"), [(ReplayBuffer, False), (ReplayBuffer, True), (RelabelingReplayBuffer, False)]
)
def test_checkpoint_holds_contents_not_capacity_and_resumes_identically(cls: type, optimize: bool) -> None:
    kw = {"device": "cpu", "n_envs": 2, "optimize_memory_usage": optimize, "handle_timeout_termination": not optimize}
    buf = cls(1_000_000, OBS, ACT, **kw)
    fill(buf, 300, seed=0)
    state = buffer_state(buf, skip={"reward_model", "device"})
    blob = pickle.dumps(state, protocol=pickle.HIGHEST_PROTOCOL)
    assert len(blob) < 200_000  # 300 rows x 2 envs; the uncut arrays are ~200 MB
    other = cls(1_000_000, OBS, ACT, **kw)
    load_buffer_state(other, pickle.loads(blob))
    assert other.pos == 300 and not other.full
    same_samples(buf, other, seed=1)
    fill(buf, 50, seed=5)  # both continue identically: no shared arrays
    fill(other, 50, seed=5)
    same_samples(buf, other, seed=2)


def test_full_ring_round_trips_and_an_old_uncut_checkpoint_loads() -> None:
    buf = ReplayBuffer(40, OBS, ACT, device="cpu", n_envs=2)
    fill(buf, 27, seed=0)  # 20 rows per env: wrapped around
    assert buf.full
    other = ReplayBuffer(40, OBS, ACT, device="cpu", n_envs=2)
    load_buffer_state(other, pickle.loads(pickle.dumps(buffer_state(buf, skip={"device"}))))
    same_samples(buf, other, seed=3)
    legacy = ReplayBuffer(40, OBS, ACT, device="cpu", n_envs=2)
    load_buffer_state(legacy, {k: v for k, v in buf.__dict__.items() if k != "device"})  # the earlier format
    same_samples(buf, legacy, seed=4)
    assert legacy.observations is not buf.observations


def test_a_different_capacity_is_refused() -> None:
    buf = ReplayBuffer(1000, OBS, ACT, device="cpu")
    fill(buf, 10, seed=0)
    with pytest.raises(ValueError, match="same buffer_size"):
        load_buffer_state(ReplayBuffer(500, OBS, ACT, device="cpu"), buffer_state(buf, skip={"device"}))


def test_restore_rows_zeros_the_rest_and_refuses_arrays_that_do_not_fit() -> None:
    target = np.full((5, 2), 7, dtype=np.int16)
    restore_rows(target, np.ones((2, 2), dtype=np.int16), "a")
    np.testing.assert_array_equal(target, [[1, 1], [1, 1], [0, 0], [0, 0], [0, 0]])
    with pytest.raises(ValueError, match="checkpoint array a is int16"):
        restore_rows(target, np.ones((6, 2), dtype=np.int16), "a")  # more rows than the buffer
    with pytest.raises(ValueError, match="checkpoint array b"):
        restore_rows(target, np.ones((2, 2), dtype=np.int16), "b", cut=False)  # a per-env array is never cut
    with pytest.raises(ValueError, match="float32"):
        restore_rows(target, np.ones((2, 2), dtype=np.float32), "c")
