"""Followers: relabelling with the current reward model, the learned-reward wrapper, the recorder."""

import gymnasium as gym
import numpy as np
import pytest
import torch

from bilevel_rl.followers.sb3 import SB3Follower
from bilevel_rl.reward_models.mlp import MLPRewardModel


def _follower(algo, env_id="Pendulum-v1", **kw):
    algo_kwargs = {"policy_kwargs": {"net_arch": [32, 32]}}
    if algo == "sac":
        algo_kwargs.update(learning_starts=100, batch_size=32)
    if algo == "ppo":
        algo_kwargs.update(n_steps=64, batch_size=32)
    f = SB3Follower(algo, env_id, n_envs=2, seed=0, algo_kwargs=algo_kwargs, record_steps=300, **kw)
    rm = MLPRewardModel(f.observation_space, f.action_space, hidden_sizes=(16,))
    f.set_reward_model(rm)
    return f, rm


def test_sac_replay_samples_are_relabelled_by_the_current_reward_model():
    torch.manual_seed(0)
    f, rm = _follower("sac")
    f.learn(300)
    buf = f.model.replay_buffer
    np.random.seed(1)
    batch = buf.sample(64)
    low, high = torch.as_tensor(f.action_space.low), torch.as_tensor(f.action_space.high)
    env_actions = low + 0.5 * (batch.actions + 1) * (high - low)  # SAC stores actions scaled to [-1, 1]
    np.testing.assert_allclose(batch.rewards.squeeze(1), rm.relabel(batch.observations, env_actions), rtol=1e-6)
    # the true rewards are kept beside the learned ones, and differ from them
    assert (buf.true_rewards[:300] <= 0).all() and (buf.true_rewards[:300] > -17).all()  # Pendulum's range
    assert not np.allclose(buf.rewards[:300], buf.true_rewards[:300])
    # a reward-model change is seen by the very next sampled batch
    with torch.no_grad():
        rm.net[-1].bias += 5.0
    np.random.seed(1)
    again = buf.sample(64)
    torch.testing.assert_close(again.observations, batch.observations)
    shift = (again.rewards - batch.rewards).squeeze(1)
    torch.testing.assert_close(shift, torch.full_like(shift, 5.0 * float(rm.reward_scale)))
    # between reward-model changes each transition's reward is computed once, not once per sample
    np.random.seed(2)
    buf.sample(64)
    assert buf.refresh(np.arange(300)) == 0


def test_relabel_runs_in_eval_mode_without_grad():
    f, rm = _follower("sac")
    rm.train()
    out = rm.relabel(np.zeros((4, 3), np.float32), np.zeros((4, 1), np.float32))
    assert not out.requires_grad and rm.training  # mode restored afterwards


@pytest.mark.parametrize("algo", ["ppo", "a2c"])
def test_on_policy_follower_trains_on_the_learned_reward(algo):
    torch.manual_seed(0)
    f, rm = _follower(algo)
    wrapper = f.reward_wrapper
    seen = []
    original = wrapper.reward_fn

    def spy(obs, actions):
        out = original(obs, actions)
        seen.append((obs.copy(), actions.copy(), out.copy()))
        return out

    wrapper.reward_fn = spy
    f.learn(128)
    obs, actions, rewards = seen[-1]
    np.testing.assert_allclose(rewards, rm.relabel(obs, actions).numpy(), rtol=1e-6)
    with torch.no_grad():
        rm.net[-1].bias += 3.0
    f.learn(128)
    obs2, actions2, rewards2 = seen[-1]
    np.testing.assert_allclose(rewards2, rm.relabel(obs2, actions2).numpy(), rtol=1e-6)
    # the recorder keeps the environment's own reward, not the learned one
    batch = f.collect(64)
    assert batch.obs.shape == (64, 2, 3)
    true_r = batch.true_rewards
    assert (true_r <= 0).all() and (true_r > -17).all()  # Pendulum's reward range


def test_recorder_true_rewards_match_monitor_episode_returns():
    f, _ = _follower("sac")
    f.learn(600)  # 3 Pendulum episodes (200 steps each) per env
    batch = f.collect(300)
    returns = sorted(batch.episode_returns())
    monitor = sorted(info["r"] for info in f.model.ep_info_buffer)
    assert len(returns) >= 2
    for r in returns:
        assert min(abs(r - m) for m in monitor) < 1e-3
    assert batch.timesteps.max() == 199 and batch.episode_starts.sum() >= 2


def test_sac_refuses_discrete_actions():
    with pytest.raises(ValueError, match="follower=sac"):
        SB3Follower("sac", "CartPole-v1", 1, 0, {})


def test_temperature_and_action_dist():
    f, _ = _follower("sac")
    assert f.temperature == pytest.approx(1.0)  # auto_1.0 default of SB3 SAC when ent_coef="auto"
    obs = np.random.default_rng(0).normal(size=(5, 3)).astype(np.float32)
    dist = f.action_dist(obs)
    a = dist.sample()
    assert a.shape == (5, 1) and (a.abs() <= 2.0).all()  # Pendulum's env units, [-2, 2]
    # same density as SB3's own squashed Gaussian on the scaled action, with the Jacobian of the rescaling
    actor = f.model.actor
    mean, log_std, kw = actor.get_action_dist_params(torch.as_tensor(obs))
    sb3 = actor.action_dist.proba_distribution(mean, log_std, **kw)
    expected = sb3.log_prob(a / 2.0) - np.log(2.0)
    torch.testing.assert_close(dist.log_prob(a), expected, rtol=1e-4, atol=1e-4)
    assert torch.isfinite(dist.log_prob(torch.full((5, 1), 2.0))).all()  # boundary actions stay finite
    g, _ = _follower("ppo", env_id="CartPole-v1")
    probs = g.action_dist(np.zeros((5, 4), np.float32)).probs
    torch.testing.assert_close(probs.sum(-1), torch.ones(5))
    assert not g.action_dist(np.zeros((5, 4), np.float32)).probs.requires_grad
    assert g.action_dist(np.zeros((5, 4), np.float32), grad=True).probs.requires_grad
    assert isinstance(g.action_space, gym.spaces.Discrete)


@pytest.mark.parametrize("algo", ["sac", "ppo", "a2c"])
def test_extra_policy_loss_moves_the_policy(algo):
    """The hook adds its gradient at every policy step: a loss rewarding large actions pushes the mean up
    compared with the same follower (same seed) trained without it."""
    obs = torch.zeros(16, 3)
    means = []
    for hooked in (False, True):
        torch.manual_seed(0)
        f, _ = _follower(algo)
        if hooked:
            f.set_extra_policy_loss(lambda f=f: -10.0 * f.action_dist(obs, grad=True).rsample().mean())
        metrics = f.learn(400)
        assert ("follower/extra_policy_loss" in metrics) == hooked
        assert f.extra_loss_count == 0  # reported and reset by learn()
        means.append(float(f.action_dist(obs).sample((400,)).mean()))
    assert means[1] > means[0] + 0.25, means


def test_spawn_builds_an_independent_follower():
    f, rm = _follower("sac")
    g = f.spawn(seed=7)
    assert g is not f and g.env_id == f.env_id and g.seed == 7 and g.num_timesteps == 0
    g.set_reward_model(rm)
    g.learn(50)
    assert g.num_timesteps == 50 and f.num_timesteps == 0


@pytest.mark.parametrize(("center", "target_std"), [(False, 1.0), (True, 1.0), (True, 0.1)])
def test_reward_normalisation_scales_and_optionally_centres(center, target_std):
    """``update_normalization`` gives the follower rewards of std ``target_std``; only ``center`` removes the mean."""
    torch.manual_seed(0)
    _, rm = _follower("sac")
    rm.center, rm.target_std = center, target_std
    obs, act = np.random.default_rng(0).normal(size=(500, 3)), np.random.default_rng(1).uniform(-2, 2, size=(500, 1))
    with torch.no_grad():
        rm.net[-1].bias += 3.0  # a large offset
    rm.update_normalization(obs.astype(np.float32), act.astype(np.float32))
    r = rm.relabel(obs.astype(np.float32), act.astype(np.float32)).numpy()
    assert r.std(ddof=1) == pytest.approx(target_std, rel=1e-4)  # (torch.std is the unbiased estimate)
    if center:
        assert abs(r.mean()) < 1e-4
    else:
        with torch.no_grad():
            raw = rm.rewards(torch.as_tensor(obs, dtype=torch.float32), torch.as_tensor(act, dtype=torch.float32))
        assert r.mean() == pytest.approx(float(raw.mean()) * float(rm.reward_scale), rel=1e-4) and r.mean() > 1


@pytest.mark.parametrize("algo", ["a2c", "ppo"])
def test_on_policy_follower_keeps_its_initial_policy_until_learning_starts(algo):
    """``follower.freeze_initial``: the warm-up transitions come from the initial policy (PBRL E.2)."""
    torch.manual_seed(0)
    f, _ = _follower(algo, learning_starts=128)
    before = [p.detach().clone() for p in f.model.policy.parameters()]

    def unchanged():
        return all(torch.equal(a, b) for a, b in zip(before, f.model.policy.parameters(), strict=True))

    f.learn(128)
    assert f.num_timesteps >= 128 and unchanged()
    f.learn(256)
    assert not unchanged()
