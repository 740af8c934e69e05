"""Atari envs: DeepMind wrapper order and semantics, teacher reward, evaluation score and exact resume."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
import pytest
from omegaconf import OmegaConf
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.vec_env import VecEnv

from bilevel_rl.config import CONFIG_DIR
from bilevel_rl.envs import atari
from bilevel_rl.envs.atari import AtariConfig, atari_make_kwargs, atari_spaces, evaluate_atari, is_atari
from bilevel_rl.envs.state import get_env_state, set_env_state

NO_STICKY = {"repeat_action_probability": 0.0}


def _chain(venv: VecEnv) -> list[str]:
    layer: Any = venv.envs[0]  # type: ignore[attr-defined]
    names = []
    while isinstance(layer, gym.Wrapper):
        names.append(type(layer).__name__)
        layer = layer.env
    return [*names, type(layer).__name__]


def _monitor(venv: VecEnv) -> Monitor:
    layer: Any = venv.envs[0]  # type: ignore[attr-defined]
    while not isinstance(layer, Monitor):
        layer = layer.env
    return layer


def _random_steps(venv: VecEnv, actions: np.ndarray) -> tuple[list[np.ndarray], np.ndarray, np.ndarray, np.ndarray]:
    obs, rewards, dones, true = [], [], [], []
    for a in actions:
        o, r, d, infos = venv.step(np.array([a]))
        obs.append(o.copy())
        rewards.append(r[0])
        dones.append(d[0])
        true.append(infos[0]["true_reward"])
    return obs, np.array(rewards), np.array(dones), np.array(true)


def test_is_atari() -> None:
    assert is_atari("ALE/Breakout-v5") and is_atari("BreakoutNoFrameskip-v4")
    assert not is_atari("Pendulum-v1") and not is_atari("NoSuchGame-v9")


def test_config_validation_and_presets() -> None:
    assert AtariConfig.from_dict({}) == AtariConfig()
    assert AtariConfig().teacher_reward == "raw"
    for bad, key in (
        ({"teacher_reward": "sign"}, "teacher_reward"),
        ({"frame_skip": 0}, "frame_skip"),
        ({"frame_stack": 2.5}, "frame_stack"),
        ({"noop_max": -1}, "noop_max"),
        ({"clip_reward": 1}, "clip_reward"),
        ({"eval_max_steps": 0}, "eval_max_steps"),
        ({"bogus": 1}, "bogus"),
    ):
        with pytest.raises(ValueError, match=rf"^env\.atari\.{key}:") as err:
            AtariConfig.from_dict(bad)
        assert "\n" not in str(err.value)
    for name in ("breakout", "pong", "beamrider", "seaquest", "spaceinvaders", "mspacman"):
        cfg = OmegaConf.load(CONFIG_DIR / "env" / f"{name}.yaml")
        assert is_atari(cfg.id) and cfg.n_envs == 1 and cfg.kwargs.repeat_action_probability == 0.0
        assert AtariConfig.from_dict(OmegaConf.to_container(cfg.atari)) == AtariConfig()  # type: ignore[arg-type]


def test_make_kwargs_force_emulator_frameskip_1() -> None:
    assert atari_make_kwargs("ALE/Breakout-v5", NO_STICKY) == {**NO_STICKY, "frameskip": 1}
    assert atari_make_kwargs("ALE/Breakout-v5", {"frameskip": 1}) == {"frameskip": 1}
    assert atari_make_kwargs("BreakoutNoFrameskip-v4", None) == {}
    with pytest.raises(ValueError, match=r"^env\.kwargs\.frameskip:"):
        atari_make_kwargs("ALE/Breakout-v5", {"frameskip": 4})
    with pytest.raises(ValueError, match=r"^env\.kwargs\.obs_type:"):
        atari_make_kwargs("ALE/Breakout-v5", {"obs_type": "grayscale"})
    with pytest.raises(ValueError, match=r"^env\.id:"):
        atari_make_kwargs("Pendulum-v1", None)


def test_spaces() -> None:
    obs_space, act_space = atari_spaces("ALE/Breakout-v5", NO_STICKY)
    assert obs_space.shape == (4, 84, 84) and obs_space.dtype == np.uint8
    assert isinstance(act_space, gym.spaces.Discrete) and act_space.n == 4
    obs_space, _ = atari_spaces("ALE/Pong-v5", NO_STICKY, AtariConfig(frame_stack=2, screen_size=64))
    assert obs_space.shape == (2, 64, 64)


def test_train_env_wrappers_frameskip_and_zero_padding() -> None:
    venv = atari.make_atari_train_env("ALE/Breakout-v5", 1, 0, NO_STICKY, AtariConfig())
    assert _chain(venv) == [
        "ClipRewardEnv",
        "AtariTrueReward",
        "WarpFrame",
        "FireResetEnv",
        "EpisodicLifeEnv",
        "MaxAndSkipEnv",
        "NoopResetEnv",
        "Monitor",
        "OrderEnforcing",
        "PassiveEnvChecker",
        "AtariEnv",
    ]
    ale_env: Any = venv.envs[0].unwrapped  # type: ignore[attr-defined]
    assert ale_env._frameskip == 1
    obs = venv.reset()
    assert obs.shape == (1, 4, 84, 84) and obs.dtype == np.uint8
    # zero padding at episode start, newest frame last
    assert not obs[0, :3].any() and obs[0, 3].any()
    frame = ale_env.ale.getEpisodeFrameNumber()
    obs, _, dones, _ = venv.step(np.array([0]))
    assert not dones[0] and ale_env.ale.getEpisodeFrameNumber() - frame == 4  # one agent step = 4 frames
    assert not obs[0, :2].any() and obs[0, 2:].any(axis=(1, 2)).all()
    # Breakout under random play loses a life quickly: a life loss ends the training episode and the next
    # observation is a fresh, zero-padded stack
    rng = np.random.default_rng(0)
    lives = ale_env.ale.lives()
    for _ in range(2000):
        obs, _, dones, _ = venv.step(rng.integers(4, size=1))
        if dones[0]:
            break
    assert dones[0] and ale_env.ale.lives() == lives - 1 and ale_env.ale.lives() > 0
    assert not obs[0, :3].any() and obs[0, 3].any()
    venv.close()


@pytest.mark.parametrize("teacher", ["raw", "clipped"])
def test_true_reward_raw_or_clipped(teacher: str) -> None:
    venv = atari.make_atari_train_env("ALE/SpaceInvaders-v5", 1, 0, NO_STICKY, AtariConfig(teacher_reward=teacher))
    venv.reset()
    actions = np.random.default_rng(1).integers(venv.action_space.n, size=400)  # type: ignore[attr-defined]
    _, rewards, _, true = _random_steps(venv, actions)
    assert set(np.unique(rewards)) <= {-1.0, 0.0, 1.0} and rewards.max() == 1.0  # follower reward is clipped
    np.testing.assert_array_equal(np.sign(true), rewards)
    if teacher == "raw":
        assert true.max() > 1.0  # SpaceInvaders scores 5-30 per kill
    else:
        np.testing.assert_array_equal(true, rewards)
    venv.close()


def test_eval_env_game_score_equals_monitor_return() -> None:
    venv = atari.make_atari_eval_env("ALE/SpaceInvaders-v5", NO_STICKY, AtariConfig(), seed=0)
    chain = _chain(venv)
    assert "EpisodicLifeEnv" not in chain and "ClipRewardEnv" not in chain and "FireResetEnv" in chain
    n = venv.action_space.n  # type: ignore[attr-defined]
    rng = np.random.default_rng(0)
    out = evaluate_atari(lambda obs: rng.integers(n, size=len(obs)), venv, episodes=1, seed=3, max_steps=27_000)
    monitor = _monitor(venv)
    assert len(monitor.get_episode_rewards()) == 1  # a full game (3 lives), not one life
    assert out["eval/true_return"] == monitor.get_episode_rewards()[0] > 1.0
    assert out["eval/true_return"] % 5 == 0 and out["eval/true_return_std"] == 0.0
    # Monitor sits below the frame skip: its length counts emulator frames (no-ops and FIRE included)
    assert 4 * out["eval/episode_length"] <= monitor.get_episode_lengths()[0] <= 4 * out["eval/episode_length"] + 40
    # truncation at max_steps agent steps; the same seed gives the same start
    rng = np.random.default_rng(0)
    short = evaluate_atari(lambda obs: rng.integers(n, size=len(obs)), venv, episodes=2, seed=3, max_steps=50)
    assert short["eval/episode_length"] == 50.0
    venv.close()


def test_eval_env_render_gives_rgb_frames() -> None:
    venv = atari.make_atari_eval_env("ALE/Pong-v5", NO_STICKY, AtariConfig(), seed=0, render=True)
    venv.reset()
    frame = venv.render()
    assert frame is not None and frame.shape == (210, 160, 3) and frame.dtype == np.uint8
    venv.close()


def test_resume_mid_episode_is_exact() -> None:
    """Snapshot after 200 random steps; a fresh env (other seed) restored from it replays the next 100 exactly.

    Sticky actions stay on (v5 default 0.25), so the emulator's RNG must be restored too; Breakout loses lives
    in the window, so EpisodicLifeEnv's counters and the auto-reset's no-op RNG are exercised.
    """
    cfg = AtariConfig()
    venv = atari.make_atari_train_env("ALE/Breakout-v5", 1, 0, {}, cfg)
    venv.reset()
    actions = np.random.default_rng(4).integers(4, size=300)
    _random_steps(venv, actions[:200])
    env_state = [get_env_state(e) for e in venv.envs]  # type: ignore[attr-defined]
    stack_state = atari.get_vec_stack_state(venv)
    ref_obs, ref_rew, ref_done, ref_true = _random_steps(venv, actions[200:])
    assert ref_done.any() and ref_true.any()  # the window holds a life loss and some reward
    ref_episodes = _monitor(venv).get_episode_rewards()

    fresh = atari.make_atari_train_env("ALE/Breakout-v5", 1, 123, {}, cfg)
    fresh.reset()
    for env, state in zip(fresh.envs, env_state, strict=True):  # type: ignore[attr-defined]
        set_env_state(env, state)
    atari.set_vec_stack_state(fresh, stack_state)
    obs, rew, done, true = _random_steps(fresh, actions[200:])
    for a, b in zip(obs, ref_obs, strict=True):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(rew, ref_rew)
    np.testing.assert_array_equal(done, ref_done)
    np.testing.assert_array_equal(true, ref_true)
    assert _monitor(fresh).get_episode_rewards() == ref_episodes

    # without the frame stack the first observations differ: the stack is real state
    other = atari.make_atari_train_env("ALE/Breakout-v5", 1, 123, {}, cfg)
    other.reset()
    for env, state in zip(other.envs, env_state, strict=True):  # type: ignore[attr-defined]
        set_env_state(env, state)
    o, _, _, _ = other.step(np.array([actions[200]]))
    assert not np.array_equal(o, ref_obs[0])
    with pytest.raises(ValueError, match="frame-stack state"):
        atari.set_vec_stack_state(other, [])
    for v in (venv, fresh, other):
        v.close()
