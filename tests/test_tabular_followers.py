"""Tabular followers and reward model behind the deep seams; the deep trainer and DRLHF run on them unchanged."""

import numpy as np
import pandas as pd
import pytest
import torch

from bilevel_rl.capabilities import Capability
from bilevel_rl.data.teachers import OracleTeacher
from bilevel_rl.objectives.preferences import PreferenceObjective, PreferenceObjectiveConfig
from bilevel_rl.tabular.core.soft_mdp import DTYPE, random_mdp, solve_soft
from bilevel_rl.tabular.lab.followers import (
    PolicyMirrorDescent,
    SoftPolicyGradient,
    SoftQLearning,
    SoftVIOracle,
    TabularEnvConfig,
)
from bilevel_rl.tabular.lab.reward_model import TabularRewardModel
from bilevel_rl.trainer import TrainerConfig
from bilevel_rl.upper.base import make_rule
from tests.tabular_helpers import run_trainer


def _problem(seed=0, S=6, A=3):
    g = torch.Generator().manual_seed(seed)
    mdp = random_mdp(S, A, 0.9, 0.1, g)
    true_r = torch.rand(S, A, generator=g, dtype=DTYPE)
    return mdp, true_r


@pytest.mark.parametrize(
    ("cls", "kwargs", "steps"),
    [
        (SoftVIOracle, {}, 40),
        (PolicyMirrorDescent, {"eta": 5.0, "updates": 50}, 40),
        (SoftQLearning, {}, 3000),
        (SoftPolicyGradient, {"lr": 0.5, "updates": 500}, 40),
    ],
)
def test_followers_reach_the_soft_optimum_of_the_reward_they_are_given(cls, kwargs, steps):
    mdp, true_r = _problem()
    f = cls(mdp, true_r, TabularEnvConfig(n_envs=8, episode_length=30, record_steps=200), seed=0, **kwargs)
    rm = TabularRewardModel(mdp.num_states, mdp.num_actions)
    with torch.no_grad():
        rm.x.copy_(true_r)  # the learned reward equals the true one: the follower must find pi*(r)
    f.set_reward_model(rm)
    for _ in range(3):
        f.learn(steps * 8)
    target = solve_soft(true_r, mdp).pi
    tol = {SoftQLearning: 0.05, SoftPolicyGradient: 2e-3}.get(cls, 1e-6)
    assert (f.pi - target).abs().max() < tol
    assert f.evaluate(1, 0)["eval/soft_optimal_gap"] < {SoftQLearning: 0.5, SoftPolicyGradient: 1e-4}.get(cls, 1e-8)
    batch = f.collect(30)
    assert batch.obs.shape == (30, 8, mdp.num_states) and batch.actions.dtype == np.int64
    np.testing.assert_allclose(batch.true_rewards, true_r.numpy()[batch.obs.argmax(-1), batch.actions], rtol=1e-6)


def test_tabular_reward_model_table_and_features_agree():
    S, A, d = 4, 3, 5
    feats = torch.randn(S, A, d, dtype=DTYPE)
    rm = TabularRewardModel(S, A, features=feats, init_scale=1.0, generator=torch.Generator().manual_seed(0))
    obs = torch.eye(S).repeat_interleave(A, 0)
    acts = torch.arange(A).repeat(S)
    torch.testing.assert_close(rm(obs, acts).reshape(S, A), feats @ rm.x)
    with pytest.raises(ValueError, match="features"):
        TabularRewardModel(S, A, features=torch.zeros(2, 2, 2))


def test_state_dict_roundtrip_continues_identically():
    mdp, true_r = _problem(1)
    cfg = TabularEnvConfig(n_envs=2, episode_length=10, record_steps=50)
    a = SoftQLearning(mdp, true_r, cfg, seed=3)
    rm = TabularRewardModel(mdp.num_states, mdp.num_actions, init_scale=1.0, generator=torch.Generator().manual_seed(0))
    a.set_reward_model(rm)
    a.learn(100)
    b = SoftQLearning(mdp, true_r, cfg, seed=99)
    b.set_reward_model(rm)
    b.load_state_dict(a.state_dict())
    a.learn(100)
    b.learn(100)
    np.testing.assert_array_equal(a.Q, b.Q)
    np.testing.assert_array_equal(a.collect(50).actions, b.collect(50).actions)


def test_deep_trainer_and_drlhf_run_unchanged_on_a_tabular_problem(tmp_path):
    """RLHF on a random soft MDP: the table learned from preferences recovers the true reward's ordering and the
    follower's exact true value rises."""
    torch.manual_seed(0)
    mdp, true_r = _problem(2, S=8, A=3)
    follower = SoftVIOracle(mdp, true_r, TabularEnvConfig(n_envs=8, episode_length=25, record_steps=100), seed=0)
    rm = TabularRewardModel(mdp.num_states, mdp.num_actions)
    rule = make_rule("drlhf", {"lr": 0.05, "batch_size": 32, "weight_decay": 0.0})
    cfg = TrainerConfig(total_steps=8 * 50 * 8, steps_per_iter=8 * 50, initial_steps=8 * 50, eval_every=1)
    objective = PreferenceObjective(
        PreferenceObjectiveConfig(
            capacity=1000, segment_length=10, initial_pairs=200, pairs_per_iter=50, warmup_epochs=30, epochs_per_iter=5
        ),
        OracleTeacher(),
    )
    run_trainer(cfg, follower, rm, rule, objective, tmp_path)
    df = pd.read_csv(tmp_path / "metrics.csv")
    assert df["reward_model/true_reward_corr"].iloc[-1] > 0.9
    assert df["eval/true_return"].iloc[-1] > df["eval/true_return"].iloc[0] + 0.5


def test_soft_policy_gradient_extra_loss_shifts_the_policy_and_spawn_is_independent():
    """An extra policy loss ``−c·log π(a0|s)`` moves mass onto action 0 beyond the soft optimum; spawn copies config."""
    mdp, true_r = _problem()
    f = SoftPolicyGradient(mdp, true_r, TabularEnvConfig(n_envs=4, episode_length=20), seed=0, lr=0.5, updates=1500)
    rm = TabularRewardModel(mdp.num_states, mdp.num_actions)
    with torch.no_grad():
        rm.x.copy_(true_r)
    f.set_reward_model(rm)
    g = f.spawn(seed=1)
    obs = torch.eye(mdp.num_states)
    f.set_extra_policy_loss(lambda: -f.action_dist(obs, grad=True).log_prob(torch.zeros(mdp.num_states)).sum())
    f.learn(40)
    g.learn(40)
    star = solve_soft(true_r, mdp).pi
    torch.testing.assert_close(g.pi, star, atol=5e-3, rtol=0)  # spawned follower: no extra loss, soft optimum
    assert (f.pi[:, 0] > star[:, 0] + 0.05).all()
    assert g.num_timesteps == 40 and g.generator is not f.generator


def test_rollouts_from_follow_the_policy_and_the_dynamics():
    """Generative rollouts: forced first actions, then on-policy; empirical next-state law matches P."""
    mdp, true_r = _problem(S=3, A=2)
    f = SoftVIOracle(mdp, true_r, TabularEnvConfig(n_envs=2), seed=0)
    rm = TabularRewardModel(mdp.num_states, mdp.num_actions)
    f.set_reward_model(rm)
    f.learn(2)
    n = 20000
    obs = np.tile(np.eye(3, dtype=np.float32)[[1]], (n, 1))
    ro = f.rollouts_from(obs, np.ones(n, dtype=np.int64), horizon=2, rng=np.random.default_rng(0))
    assert ro.obs.shape == (n, 2, 3) and (ro.actions[:, 0] == 1).all() and (ro.obs[:, 0].argmax(1) == 1).all()
    next_states = np.bincount(ro.obs[:, 1].argmax(1), minlength=3) / n
    np.testing.assert_allclose(next_states, mdp.P[1, 1].numpy(), atol=0.015)
    second = np.bincount(ro.actions[:, 1], minlength=2)
    assert second.min() > 0  # drawn from the (non-degenerate) policy


def test_tabular_followers_declare_what_they_implement():
    """τ > 0, γ, π(·|s), spawn and exact restarts for all; the soft policy gradient also has differentiable logits
    and an extra policy loss; none trains on the true reward or records videos."""
    mdp, true_r = _problem()
    common = {
        Capability.TEMPERATURE,
        Capability.GAMMA,
        Capability.ACTION_DIST,
        Capability.SPAWN,
        Capability.GENERATIVE_MODEL,
    }
    extra = {Capability.EXTRA_POLICY_LOSS, Capability.PARAMETRIC_POLICY}
    for cls in (SoftVIOracle, SoftQLearning, PolicyMirrorDescent, SoftPolicyGradient):
        want = common | extra if cls is SoftPolicyGradient else common
        f = cls(mdp, true_r, TabularEnvConfig(n_envs=2), seed=0)
        assert cls.declared_capabilities() == cls.declared_capabilities({"name": "x"}) == f.capabilities == want
        assert f.gamma == mdp.gamma and f.temperature == mdp.tau > 0
        with pytest.raises(NotImplementedError):
            f.set_reward_model_to_true_reward()
        with pytest.raises(NotImplementedError):
            f.record_video(0)
