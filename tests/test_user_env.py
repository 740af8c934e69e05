"""An env of one's own: ``env.id=module:EnvId`` (gymnasium's syntax) for an env defined outside the package."""

from __future__ import annotations

import os
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import gymnasium as gym
import numpy as np
import pandas as pd
import pytest
import yaml

from bilevel_rl.envs.atari import is_atari
from bilevel_rl.envs.make import check_env_id, make_eval_env, make_train_env, resolve_env_id
from tests.helpers import assert_refused, cli, tiny

MODULE = "my_bilevel_envs"
ENV_ID = f"{MODULE}:PointMass-v0"

# The README's example ("### Your own environment"), verbatim.
ENV_SOURCE = textwrap.dedent(
    """
    # my_bilevel_envs.py — a 1-D point mass pushed towards the origin
    import gymnasium as gym
    import numpy as np

    class PointMass(gym.Env):
        observation_space = gym.spaces.Box(-10.0, 10.0, (2,), np.float32)  # Box observations: required
        action_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)         # Box: sac; Discrete: dsac/soft_dqn/ppo/a2c
        def reset(self, *, seed=None, options=None):
            super().reset(seed=seed)
            self.state = self.np_random.uniform(-1.0, 1.0, 2).astype(np.float32)
            return self.state.copy(), {}
        def step(self, action):
            vel = float(np.clip(self.state[1] + 0.1 * float(np.clip(action[0], -1, 1)), -10, 10))
            pos = float(np.clip(self.state[0] + 0.1 * vel, -10, 10))
            self.state = np.array([pos, vel], dtype=np.float32)
            return self.state.copy(), -(pos**2), False, False, {}  # obs, reward, terminated, truncated, info

    gym.register(id="PointMass-v0", entry_point="my_bilevel_envs:PointMass", max_episode_steps=50)
    """
)


@pytest.fixture
def env_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A directory holding ``my_bilevel_envs.py``, first on ``sys.path``; module and registration undone after."""
    (tmp_path / f"{MODULE}.py").write_text(ENV_SOURCE)
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        yield tmp_path
    finally:
        sys.modules.pop(MODULE, None)
        gym.registry.pop("PointMass-v0", None)


def test_validation_accepts_module_env_id(env_dir: Path) -> None:
    assert resolve_env_id(ENV_ID) == "PointMass-v0"
    spec = check_env_id(ENV_ID)
    assert spec.id == "PointMass-v0" and spec.max_episode_steps == 50
    assert not is_atari(ENV_ID)
    assert resolve_env_id("Pendulum-v1") == "Pendulum-v1"


def test_train_and_eval_envs_of_a_module_env_id(env_dir: Path) -> None:
    venv = make_train_env(ENV_ID, n_envs=2, seed=0)
    try:
        assert isinstance(venv.action_space, gym.spaces.Box) and venv.observation_space.shape == (2,)
        venv.reset()
        _, rewards, _, infos = venv.step(np.zeros((2, 1), dtype=np.float32))
        assert np.allclose(rewards, [info["true_reward"] for info in infos])
    finally:
        venv.close()
    env = make_eval_env(ENV_ID)
    try:
        env.reset(seed=0)
        steps, done = 0, False
        while not done:
            _, _, terminated, truncated, _ = env.step(env.action_space.sample())
            steps, done = steps + 1, terminated or truncated
        assert steps == 50  # the registered max_episode_steps
    finally:
        env.close()


@pytest.mark.parametrize(
    ("env_id", "expected"),
    [
        ("nosuch_mod:Foo-v0", "env.id=nosuch_mod:Foo-v0: cannot import module 'nosuch_mod' (ModuleNotFoundError: "),
        (f"{MODULE}:Nope-v0", f"env.id={MODULE}:Nope-v0: module '{MODULE}' registers no environment 'Nope-v0'"),
        ("NoSuchEnv-v0", "env.id: unknown gymnasium environment 'NoSuchEnv-v0'"),
    ],
)
def test_validation_refuses_with_one_line(env_dir: Path, env_id: str, expected: str) -> None:
    with pytest.raises(ValueError) as info:
        check_env_id(env_id)
    message = str(info.value)
    assert "\n" not in message and message.startswith(expected), message
    if "Nope" in env_id:
        assert "close matches: PointMass-v0" in message, message
    assert not is_atari(env_id)


def test_cli_refuses_an_unimportable_module(env_dir: Path) -> None:
    assert_refused(tiny("env.id=nosuch_mod:Foo-v0"), "env.id=nosuch_mod:Foo-v0: cannot import module", env_dir / "r")


def test_cli_trains_on_an_env_of_ones_own(env_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(env_dir), os.environ.get("PYTHONPATH")])))
    run_dir = env_dir / "run"
    overrides = tiny(
        f"env.id={ENV_ID}",
        "trainer.total_steps=400",
        "trainer.steps_per_iter=200",
        "trainer.initial_steps=200",
        "buffer.segment_length=10",
        "buffer.initial_pairs=10",
        "buffer.pairs_per_iter=5",
        "buffer.warmup_epochs=2",
        "trainer.eval_episodes=1",
        "progress=false",
    )
    cli(*overrides, f"hydra.run.dir={run_dir}", cwd=env_dir)
    df = pd.read_csv(run_dir / "metrics.csv")
    assert "eval/true_return" in df.columns and df["eval/true_return"].notna().any()
    config = yaml.safe_load((run_dir / "run_config.yaml").read_text())
    assert config["env"]["id"] == ENV_ID
