"""Shared helpers: subprocess CLI runs, metrics, leader steps, a toy discrete env, a one-thread fixture."""

import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pandas as pd
import pytest
import torch
from gymnasium import spaces

BIN = Path(sys.executable).parent / "bilevel-rl"

# a complete run in a few seconds: Pendulum, tiny nets, 5 iterations of 200 steps
TINY = [
    "exp=quickstart",
    "env=pendulum",
    "trainer.total_steps=1000",
    "trainer.steps_per_iter=200",
    "trainer.initial_steps=200",
    "buffer.initial_pairs=20",
    "buffer.pairs_per_iter=10",
    "buffer.warmup_epochs=2",
    "buffer.epochs_per_iter=2",
    "trainer.eval_episodes=1",
    "follower.algo_kwargs.policy_kwargs.net_arch=[32,32]",
    "reward_model.hidden_sizes=[32,32]",
    "progress=false",
]


def cli(*args, cwd=None, timeout=300, check=True):
    env = {**os.environ, "WANDB_MODE": "disabled", "HYDRA_FULL_ERROR": "1"}
    proc = subprocess.run([str(BIN), *args], capture_output=True, text=True, cwd=cwd, timeout=timeout, env=env)
    if check and proc.returncode != 0:
        raise AssertionError(f"bilevel-rl {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc


def metrics(run_dir):
    """metrics.csv without timing columns (those differ between identical runs)."""
    df = pd.read_csv(Path(run_dir) / "metrics.csv")
    return df[[c for c in df.columns if not c.startswith("time/")]]


def assert_refused(args, key, run_dir):
    """The CLI refuses before training: exit 2, one stderr line ``error: ...`` naming ``key``, no metrics.csv."""
    proc = cli(*args, f"hydra.run.dir={run_dir}", check=False)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and key in lines[0], proc.stderr
    assert not (Path(run_dir) / "metrics.csv").exists()


def tiny(*overrides):
    """TINY with every key it shares with ``overrides`` replaced by theirs (a key may be given once)."""
    keys = {o.split("=")[0] for o in overrides}
    return [o for o in TINY if o.split("=")[0] not in keys] + list(overrides)


def finite_after_warmup(run_dir, columns):
    """The metrics rows after the warm-up (at least 2), asserting each column exists and is finite there."""
    df = pd.read_csv(Path(run_dir) / "metrics.csv")
    later = df[df["iteration"] >= 1]
    assert len(later) >= 2
    for col in columns:
        assert col in df.columns, col
        assert later[col].map(math.isfinite).all(), (col, later[col].tolist())
    return later


def leader_step(data, epochs, rng, batch=None, iteration=0, seed=0):
    """A LeaderStep as the trainer builds it (the leader's torch generator seeded with ``seed``)."""
    import torch

    from bilevel_rl.upper.base import LeaderStep

    return LeaderStep(data, batch, iteration, epochs, rng, torch.Generator().manual_seed(seed))


@pytest.fixture(autouse=True)
def one_thread() -> Any:
    """One torch thread while the test runs (import it into a test module to apply it there)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class ToyEnv(gym.Env[np.ndarray, int]):
    """Vector observations, ``n`` actions, reward = the action, ``horizon``-step episodes (truncated, never done)."""

    def __init__(self, obs_dim: int = 3, n_actions: int = 2, horizon: int = 10) -> None:
        self.observation_space = spaces.Box(-1.0, 1.0, (obs_dim,), np.float32)
        self.action_space = spaces.Discrete(n_actions)
        self.horizon = horizon
        self.t = 0

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        self.t = 0
        return self.observation_space.sample(), {}

    def step(self, action: int) -> tuple[np.ndarray, float, bool, bool, dict]:
        self.t += 1
        return self.observation_space.sample(), float(action), False, self.t >= self.horizon, {}


def discrete_rlhf_run(run_dir: Path, env_id: str, total_steps: int = 600) -> pd.DataFrame:
    """A short RLHF run (``exp=rules_cpu``, discrete SAC follower) on ``env_id`` from the CLI; its metrics."""
    cli(
        "exp=rules_cpu",
        f"env.id={env_id}",
        "follower=dsac",
        "buffer.segment_length=10",
        f"trainer.total_steps={total_steps}",
        "trainer.steps_per_iter=200",
        "trainer.initial_steps=200",
        "progress=false",
        f"hydra.run.dir={run_dir}",
    )
    return pd.read_csv(run_dir / "metrics.csv")
