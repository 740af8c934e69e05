import os

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("MUJOCO_GL", "egl")

import numpy as np
import pytest
import torch

from bilevel_rl.data.trajectories import TrajectoryBatch

# One intra-op thread: tiny tensors on a shared 2-core machine are otherwise dominated by thread-pool sync
# (measured: torch.softmax on a 6x3 tensor took 5 ms under load with the default pool).
torch.set_num_threads(1)


def make_batch(rewards, dones, terminated=None, obs_dim=3, act_dim=2, starts=None):
    """Time-major batch (T, E) with obs[t, e] = [t, e, ...] so segments can be traced back."""
    rewards = np.asarray(rewards, dtype=np.float32)
    if rewards.ndim == 1:
        rewards = rewards[:, None]
    t, e = rewards.shape
    dones = np.asarray(dones, dtype=bool).reshape(t, e)
    terminated = dones.copy() if terminated is None else np.asarray(terminated, dtype=bool).reshape(t, e)
    obs = np.zeros((t, e, obs_dim), dtype=np.float32)
    obs[..., 0] = np.arange(t)[:, None]
    obs[..., 1] = np.arange(e)[None, :]
    acts = np.zeros((t, e, act_dim), dtype=np.float32)
    if starts is None:
        starts = np.zeros((t, e), dtype=bool)
        starts[0] = True
        starts[1:] = dones[:-1]
    steps = np.zeros((t, e), dtype=np.int64)
    for j in range(e):
        c = 0
        for i in range(t):
            if starts[i, j]:
                c = 0
            steps[i, j] = c
            c += 1
    return TrajectoryBatch(obs, acts, rewards, dones, terminated, starts, steps)


@pytest.fixture
def rng():
    return np.random.default_rng(0)
