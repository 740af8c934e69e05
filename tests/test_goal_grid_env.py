"""GoalGrid-v0 (PPA-BRL §5's grid world as a gymnasium env): moves, reward, goal as a leader parameter, refusals."""

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env

import bilevel_rl.envs  # noqa: F401 - registers the ids
from bilevel_rl.envs.goal_grid import GoalGridEnv
from bilevel_rl.envs.leader_params import LeaderParameters, attach_source
from bilevel_rl.envs.make import make_eval_env
from bilevel_rl.tabular.repro.ppa_navigation import NavigationTask


def test_moves_rewards_and_truncation_by_hand():
    env = gym.make("GoalGrid-v0", goal=(2.0, 1.0))
    obs, _ = env.reset(seed=0)
    assert obs.tolist() == [0.0, 0.0]
    obs, r, *_ = env.step(2)  # −x into the wall: stays at (0, 0)
    assert obs.tolist() == [0.0, 0.0] and r == pytest.approx(-0.5 * (2.0**2 + 1.0**2))
    obs, r, *_ = env.step(1)  # +x
    assert obs.tolist() == [1.0, 0.0] and r == pytest.approx(-2.5)
    obs, r, *_ = env.step(3)  # reward of (1, 0), then +y
    assert obs.tolist() == [1.0, 1.0] and r == pytest.approx(-0.5 * (1.0 + 1.0))
    steps = 3
    truncated = False
    while not truncated:
        *_, truncated, _ = env.step(0)
        steps += 1
    assert steps == 20


def test_reward_is_the_tabular_navigation_reward():
    task, env = NavigationTask(), GoalGridEnv(goal=(3.5, 1.25))
    table = task.reward(torch.tensor([3.5, 1.25], dtype=torch.float64))[:, 0]
    for s, (x, y) in enumerate(task.positions.tolist()):
        assert env.reward(np.array([x, y])) == pytest.approx(float(table[s]))


def test_goal_is_a_leader_parameter_and_bad_goals_are_refused():
    env = make_eval_env("GoalGrid-v0")
    assert isinstance(env, LeaderParameters)
    attach_source(env, lambda: np.array([0.0, 0.0]))
    env.reset(seed=0)
    _, r, *_ = env.step(0)
    assert r == 0.0  # at (0, 0) = the goal pushed in by the source
    with pytest.raises(ValueError, match="goal"):
        env.unwrapped.set_leader_parameters((6.0, 0.0))  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match="size"):
        GoalGridEnv(size=1)


def test_env_checker():
    check_env(GoalGridEnv(), skip_render_check=True)


def test_usable_with_env_id_from_the_cli(tmp_path):
    """An RLHF run on GoalGrid-v0 with the discrete SAC follower (the reward model learns the goal distance)."""
    from tests.helpers import discrete_rlhf_run

    run = tmp_path / "gg"
    df = discrete_rlhf_run(run, "GoalGrid-v0")
    assert df["env_steps"].iloc[-1] == 600 and df["reward_model/true_reward_corr"].dropna().iloc[-1] > 0.5
