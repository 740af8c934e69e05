"""IncentiveGame-v0 (PBRL §6.3's game, player 1's view): the tabular game's tables, designed reward, dynamics."""

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env

import bilevel_rl.envs  # noqa: F401 - registers the ids
from bilevel_rl.envs.incentive_game import IncentiveGameEnv
from bilevel_rl.envs.leader_params import LeaderParameters, attach_source
from bilevel_rl.envs.make import make_eval_env
from bilevel_rl.tabular.repro.incentive import random_incentive_game


def test_same_tables_as_the_tabular_game():
    env = IncentiveGameEnv(game_seed=3)
    game = random_incentive_game(10, 5, 5, 0.5, 0.1, torch.Generator().manual_seed(3))
    np.testing.assert_array_equal(env.P, game.P.numpy())
    np.testing.assert_array_equal(env.r_id, game.r_id.numpy())
    assert not np.array_equal(env.P, IncentiveGameEnv(game_seed=4).P)


def test_reward_is_the_designed_reward_by_hand():
    env = IncentiveGameEnv(game_seed=0)
    x = np.random.default_rng(0).normal(size=env.r.shape)
    env.set_leader_parameters(x)
    obs, _ = env.reset(seed=1)
    for _ in range(50):
        s = int(np.argmax(obs))
        a1 = int(env.np_random.integers(5))
        obs, r, terminated, truncated, info = env.step(a1)
        a2 = info["opponent_action"]
        assert r == pytest.approx(env.r[s, a1, a2] + 0.2 / (1.0 + np.exp(-x[s, a1, a2])))
        assert info["designer_reward"] == pytest.approx(env.r_id[s, a1, a2])
        assert not terminated and not truncated


def test_transitions_follow_P_averaged_over_the_opponent():
    """Empirical next-state frequencies against Σ_{a_2} π_2(a_2|s) P[s, a_1, a_2, ·] (a non-uniform π_2)."""
    env = IncentiveGameEnv(game_seed=2, num_states=3, num_actions_1=2, num_actions_2=2)
    pi2 = np.array([[0.9, 0.1], [0.2, 0.8], [0.5, 0.5]])
    env.set_opponent_policy(pi2)
    expected = np.einsum("sb,sabt->sat", pi2, env.P)
    counts = np.zeros((3, 2, 3))
    obs, _ = env.reset(seed=0)
    rng = np.random.default_rng(0)
    for _ in range(30000):
        s, a1 = int(np.argmax(obs)), int(rng.integers(2))
        obs, *_ = env.step(a1)
        counts[s, a1, int(np.argmax(obs))] += 1
    freq = counts / counts.sum(-1, keepdims=True)
    n = counts.sum(-1, keepdims=True)
    assert n.min() > 2000
    assert np.abs(freq - expected).max() < 4 * np.sqrt(0.25 / n.min())  # 4 standard errors at worst


def test_x_is_a_leader_parameter_and_bad_values_are_refused():
    env = make_eval_env("IncentiveGame-v0")
    assert isinstance(env, LeaderParameters)
    big = np.full((10, 5, 5), 50.0)
    attach_source(env, lambda: big)
    obs, _ = env.reset(seed=0)
    s = int(np.argmax(obs))
    _, r, _, _, info = env.step(0)
    assert r == pytest.approx(env.unwrapped.r[s, 0, info["opponent_action"]] + 0.2)  # σ(50) = 1, pushed by the source
    with pytest.raises(ValueError, match="x: expected"):
        env.unwrapped.set_leader_parameters(np.zeros(3))
    with pytest.raises(ValueError, match="opponent_policy"):
        IncentiveGameEnv(opponent_policy=np.ones((10, 5)))


def test_env_checker_and_truncation():
    check_env(IncentiveGameEnv(), skip_render_check=True)
    env = gym.make("IncentiveGame-v0")
    env.reset(seed=0)
    steps, truncated = 0, False
    while not truncated:
        *_, truncated, _ = env.step(0)
        steps += 1
    assert steps == 20


def test_usable_with_env_id_from_the_cli(tmp_path):
    """An RLHF run on IncentiveGame-v0 with the discrete SAC follower (the reward model learns r_x from pairs).

    The model sees ``(s, a_1)`` only and the opponent's uniform ``a_2`` is noise: the best correlation with the paid
    reward is about ``sqrt(1/5) ≈ 0.45``; 600 steps reach 0.19 (seed 0).
    """
    from tests.helpers import discrete_rlhf_run

    run = tmp_path / "ig"
    df = discrete_rlhf_run(run, "IncentiveGame-v0")
    assert df["env_steps"].iloc[-1] == 600 and df["reward_model/true_reward_corr"].dropna().iloc[-1] > 0.1
