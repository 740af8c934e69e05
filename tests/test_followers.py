"""Followers: relabelling with the current reward model, the learned-reward wrapper, the recorder."""

import pickle

import gymnasium as gym
import numpy as np
import pytest
import torch

from bilevel_rl.capabilities import Capability
from bilevel_rl.followers import (
    FOLLOWERS,
    A2CFollower,
    DiscreteSACFollower,
    OffPolicyFollower,
    OnPolicyFollower,
    PPOFollower,
    SACFollower,
    SoftDQNFollower,
    check_algo_kwargs,
    follower_class,
    make_follower,
)
from bilevel_rl.followers.base import Follower
from bilevel_rl.reward_models.mlp import MLPRewardModel


def _follower(algo, env_id="Pendulum-v1", **kw):
    algo_kwargs = {"policy_kwargs": {"net_arch": [32, 32]}}
    if algo == "sac":
        algo_kwargs.update(learning_starts=100, batch_size=32)
    if algo in ("dsac", "soft_dqn"):
        algo_kwargs.update(learning_starts=50, batch_size=32, train_freq=1, target_update_interval=50, buffer_size=2000)
    if algo == "ppo":
        algo_kwargs.update(n_steps=64, batch_size=32)
    algo_kwargs.update(kw.pop("algo_kwargs", {}))
    f = make_follower(algo, env_id, n_envs=2, seed=0, algo_kwargs=algo_kwargs, record_steps=300, **kw)
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
    """The rollout's stored rewards are r_φ of its (s, clipped a), from one batched call after collection, and the
    advantages SB3 trains on are recomputed from them (no stale per-step rewards, no env reward mixed in)."""
    from stable_baselines3.common.buffers import RolloutBuffer

    torch.manual_seed(0)
    f, rm = _follower(algo)
    calls = []
    original = f.model.rollout_reward_fn

    def spy(obs, actions):
        calls.append(len(obs))
        return original(obs, actions)

    f.model.rollout_reward_fn = spy
    f.model.train = lambda: None  # keep the rollout buffer as collected (training flattens it in place)
    for shift in (0.0, 3.0):
        with torch.no_grad():
            rm.net[-1].bias += shift
        f.learn(128)
        buf = f.model.rollout_buffer
        n = buf.buffer_size * buf.n_envs
        assert calls[-1] == n  # one call per rollout, all its steps at once
        obs = buf.observations.reshape(n, -1)
        space = f.action_space
        acts = np.clip(buf.actions.reshape(n, -1), space.low, space.high)
        np.testing.assert_allclose(buf.rewards.reshape(-1), rm.relabel(obs, acts).numpy(), rtol=1e-5, atol=1e-6)
        check = RolloutBuffer(
            buf.buffer_size,
            f.model.observation_space,
            space,
            n_envs=buf.n_envs,
            gamma=buf.gamma,
            gae_lambda=buf.gae_lambda,
        )
        check.rewards, check.values, check.episode_starts = buf.rewards.copy(), buf.values.copy(), buf.episode_starts
        with torch.no_grad():
            last = f.model.policy.predict_values(torch.as_tensor(f.model._last_obs))
        check.compute_returns_and_advantage(last, f.model._last_episode_starts)
        np.testing.assert_allclose(buf.advantages, check.advantages, rtol=1e-6)
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
        make_follower("sac", "CartPole-v1", 1, 0, {})


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


# ---------------------------------------------------------------------------------------------- classes and registry
SB3_CAPS = set(Capability) - {Capability.TEMPERATURE, Capability.GENERATIVE_MODEL, Capability.POLICY_LOOKAHEAD}
"""What every SB3 follower has; PPO and A2C add POLICY_LOOKAHEAD (ON_POLICY_CAPS)."""
ON_POLICY_CAPS = SB3_CAPS | {Capability.POLICY_LOOKAHEAD}


def test_registry_maps_names_to_classes():
    expected = {"sac": SACFollower, "dsac": DiscreteSACFollower, "soft_dqn": SoftDQNFollower}
    assert {**expected, "ppo": PPOFollower, "a2c": A2CFollower} == FOLLOWERS
    assert all(issubclass(cls, OffPolicyFollower) for cls in expected.values())
    assert issubclass(PPOFollower, OnPolicyFollower) and issubclass(A2CFollower, OnPolicyFollower)
    assert all(cls.name == name for name, cls in FOLLOWERS.items())
    choices = r"\(choose sac, dsac, soft_dqn, ppo, a2c\)"
    with pytest.raises(ValueError, match=rf"^follower.name: unknown follower 'td3' {choices}$"):
        follower_class("td3")
    with pytest.raises(ValueError, match="unknown follower"):
        make_follower("td3", "Pendulum-v1", 1, 0, {})


@pytest.mark.parametrize("name", ["sac", "dsac"])
def test_sac_followers_declare_a_temperature(name):
    for params in (None, {"name": name, "algo_kwargs": {}}, {"name": name, "algo_kwargs": {"ent_coef": "auto_0.1"}}):
        assert follower_class(name).declared_capabilities(params) == frozenset(SB3_CAPS | {Capability.TEMPERATURE})
    fixed = {"name": name, "algo_kwargs": {"ent_coef": 0.2}}
    assert Capability.TEMPERATURE in follower_class(name).declared_capabilities(fixed)
    # a fixed temperature of 0 is no entropy regularisation at all
    assert follower_class(name).declared_capabilities({"algo_kwargs": {"ent_coef": 0.0}}) == SB3_CAPS


@pytest.mark.parametrize("name", ["ppo", "a2c"])
def test_on_policy_followers_declare_a_temperature_only_with_an_entropy_bonus(name):
    cls = follower_class(name)
    assert cls.declared_capabilities(None) == ON_POLICY_CAPS  # SB3's default ent_coef is 0
    assert cls.declared_capabilities({"name": name, "algo_kwargs": {"ent_coef": 0.0}}) == ON_POLICY_CAPS
    assert Capability.TEMPERATURE not in cls.declared_capabilities({"name": name, "algo_kwargs": {}})
    with_bonus = cls.declared_capabilities({"name": name, "algo_kwargs": {"ent_coef": 0.01}})
    assert with_bonus == frozenset(ON_POLICY_CAPS | {Capability.TEMPERATURE})
    assert Capability.GENERATIVE_MODEL not in with_bonus


def test_live_capabilities_follow_the_entropy_coefficient():
    f, _ = _follower("ppo", algo_kwargs={"ent_coef": 0.01})
    assert f.capabilities == frozenset(ON_POLICY_CAPS | {Capability.TEMPERATURE})
    assert f.config_params["algo_kwargs"]["ent_coef"] == 0.01 and f.config_params["name"] == "ppo"
    f.model.ent_coef = 0.0
    assert f.capabilities == ON_POLICY_CAPS and f.temperature == 0.0
    g, _ = _follower("a2c")
    assert Capability.TEMPERATURE not in g.capabilities
    h, _ = _follower("sac")
    assert h.capabilities == frozenset(SB3_CAPS | {Capability.TEMPERATURE}) == type(h).declared_capabilities(None)


@pytest.mark.parametrize(
    ("name", "env_id"),
    [("sac", "Pendulum-v1"), ("dsac", "CartPole-v1"), ("soft_dqn", "CartPole-v1"), ("ppo", "Pendulum-v1")],
)
def test_gamma_is_the_sb3_models_discount(name, env_id):
    f, _ = _follower(name, env_id=env_id, algo_kwargs={"gamma": 0.95})
    assert f.gamma == pytest.approx(0.95) and f.gamma == f.model.gamma
    with pytest.raises(NotImplementedError, match="no discount factor"):
        Follower.gamma.fget(f)  # the base has none


def test_action_space_problems_are_one_line():
    box, discrete = gym.spaces.Box(-1, 1, (2,)), gym.spaces.Discrete(3)
    assert SACFollower.action_space_problem(box) is None
    assert "continuous (Box)" in SACFollower.action_space_problem(discrete)
    assert DiscreteSACFollower.action_space_problem(discrete) is None
    assert "Discrete" in DiscreteSACFollower.action_space_problem(box)
    assert PPOFollower.action_space_problem(box) is None and A2CFollower.action_space_problem(discrete) is None
    assert SoftDQNFollower.action_space_problem(discrete) is None
    assert "Discrete" in SoftDQNFollower.action_space_problem(box)
    with pytest.raises(ValueError, match=r"follower=dsac: env.id=Pendulum-v1 has action space"):
        make_follower("dsac", "Pendulum-v1", 1, 0, {})


# ---------------------------------------------------------------------------------------------- algo_kwargs checks
@pytest.mark.parametrize(
    ("name", "kwargs", "message"),
    [
        ("sac", {"batch_size": 0}, r"^follower\.algo_kwargs\.batch_size: must be an integer >= 1, got 0$"),
        ("ppo", {"batch_size": 0}, r"^follower\.algo_kwargs\.batch_size: must be an integer >= 1"),
        ("sac", {"batch_size": 1.5}, r"^follower\.algo_kwargs\.batch_size: must be an integer"),
        ("sac", {"buffer_size": 0}, r"^follower\.algo_kwargs\.buffer_size: must be an integer >= 1"),
        ("dsac", {"buffer_size": 0}, r"^follower\.algo_kwargs\.buffer_size:"),
        ("sac", {"gamma": -1}, r"^follower\.algo_kwargs\.gamma: must be a number in \(0, 1\], got -1$"),
        ("ppo", {"gamma": 1.5}, r"^follower\.algo_kwargs\.gamma: must be a number in \(0, 1\], got 1.5$"),
        ("sac", {"gamma": 1.5}, r"^follower\.algo_kwargs\.gamma:"),
        ("ppo", {"gamma": -1}, r"^follower\.algo_kwargs\.gamma:"),
        ("sac", {"learning_starts": -1}, r"^follower\.algo_kwargs\.learning_starts: must be an integer >= 0"),
        ("sac", {"tau": 0.0}, r"^follower\.algo_kwargs\.tau:"),
        ("sac", {"train_freq": 0}, r"^follower\.algo_kwargs\.train_freq:"),
        ("sac", {"gradient_steps": 0}, r"^follower\.algo_kwargs\.gradient_steps:"),
        ("dsac", {"target_update_interval": 0}, r"^follower\.algo_kwargs\.target_update_interval:"),
        ("soft_dqn", {"temperature": 0}, r"^follower\.algo_kwargs\.temperature: must be a number > 0, got 0$"),
        ("soft_dqn", {"temperature": "auto"}, r"^follower\.algo_kwargs\.temperature: must be a number > 0"),
        ("soft_dqn", {"loss": "l1"}, r"^follower\.algo_kwargs\.loss: must be 'huber' or 'mse', got 'l1'$"),
        ("soft_dqn", {"ent_coef": 0.1}, r"^follower\.algo_kwargs\.ent_coef: not an argument of SoftDQN"),
        ("soft_dqn", {"exploration_final_eps": 0.05}, r"^follower\.algo_kwargs\.exploration_final_eps: not an arg"),
        ("soft_dqn", {"n_steps": 3}, r"^follower\.algo_kwargs\.n_steps: not an argument of SoftDQN"),
        ("ppo", {"n_steps": 0}, r"^follower\.algo_kwargs\.n_steps:"),
        ("ppo", {"n_epochs": 0}, r"^follower\.algo_kwargs\.n_epochs:"),
        ("ppo", {"gae_lambda": 1.1}, r"^follower\.algo_kwargs\.gae_lambda: must be a number in \[0, 1\]"),
        ("ppo", {"clip_range": 0}, r"^follower\.algo_kwargs\.clip_range: must be a number > 0"),
        ("a2c", {"max_grad_norm": 0}, r"^follower\.algo_kwargs\.max_grad_norm:"),
        ("a2c", {"vf_coef": -0.5}, r"^follower\.algo_kwargs\.vf_coef:"),
        ("ppo", {"ent_coef": -0.1}, r"^follower\.algo_kwargs\.ent_coef: PPO takes a number >= 0, got -0.1$"),
        ("ppo", {"ent_coef": "auto"}, r"^follower\.algo_kwargs\.ent_coef: PPO takes a number >= 0"),
        ("sac", {"ent_coef": "auto_0"}, r"^follower\.algo_kwargs\.ent_coef: SAC takes"),
        ("sac", {"ent_coef": "learned"}, r"^follower\.algo_kwargs\.ent_coef: SAC takes"),
        (
            "sac",
            {"batchsize": 64},
            r"^follower\.algo_kwargs\.batchsize: not an argument of SAC \(did you mean batch_size\?\)$",
        ),
        ("ppo", {"n_step": 64}, r"^follower\.algo_kwargs\.n_step: not an argument of PPO \(did you mean n_steps\?\)$"),
        ("ppo", {"learning_starts": 100}, r"^follower\.algo_kwargs\.learning_starts: not an argument of PPO"),
        ("a2c", {"zzz": 1}, r"^follower\.algo_kwargs\.zzz: not an argument of A2C$"),
        (
            "sac",
            {"learning_rate": 1e-3},
            r"^follower\.algo_kwargs\.learning_rate: cannot be given .*follower.learning_rate",
        ),
        ("ppo", {"seed": 1}, r"^follower\.algo_kwargs\.seed: cannot be given"),
    ],
)
def test_check_algo_kwargs_refuses_bad_keys_and_values(name, kwargs, message):
    with pytest.raises(ValueError, match=message) as err:
        check_algo_kwargs(name, kwargs)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [
        ("sac", {"batch_size": 64, "gamma": 1.0, "tau": 0.005, "ent_coef": "auto_1.0", "train_freq": [1, "episode"]}),
        ("sac", {"gradient_steps": -1, "learning_starts": 0, "ent_coef": 0.0, "buffer_size": np.int64(10)}),
        ("dsac", {"ent_coef": "auto", "target_entropy_scale": 0.89, "target_update_interval": 8000}),
        ("soft_dqn", {"temperature": 0.2, "loss": "mse", "max_grad_norm": 1.0, "target_update_interval": 5000}),
        ("ppo", {"n_steps": 2048, "batch_size": 64, "gae_lambda": 0.0, "ent_coef": 0.01, "clip_range": 0.2}),
        ("a2c", {"n_steps": 5, "vf_coef": 0.0, "max_grad_norm": 0.5, "policy_kwargs": {"net_arch": [64]}}),
    ],
)
def test_check_algo_kwargs_accepts_valid_configs(name, kwargs):
    check_algo_kwargs(name, kwargs)


# ---------------------------------------------------------------------------------------------- checkpoints
@pytest.mark.parametrize(
    ("name", "env_id"),
    [
        ("sac", "Pendulum-v1"),
        ("dsac", "CartPole-v1"),
        ("soft_dqn", "CartPole-v1"),
        ("ppo", "Pendulum-v1"),
        ("a2c", "CartPole-v1"),
    ],
)
def test_state_dict_is_self_contained_and_resumes_exactly(name, env_id):
    """One nested dict, pickled as it is, restores a fresh follower that then continues exactly as the original."""
    torch.manual_seed(0)
    f, rm = _follower(name, env_id=env_id)
    f.learn(192)
    state = pickle.loads(pickle.dumps(f.state_dict()))
    assert state["name"] == name and isinstance(state["params"], dict)
    g, _ = _follower(name, env_id=env_id)
    g.set_reward_model(rm)
    g.load_state_dict(state)
    assert g.num_timesteps == f.num_timesteps >= 192
    for follower in (f, g):
        np.random.seed(3)
        torch.manual_seed(3)
        follower.learn(192)
    for p, q in zip(f.model.policy.parameters(), g.model.policy.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=0)
    np.testing.assert_array_equal(f.collect(96).obs, g.collect(96).obs)
    assert f.temperature == g.temperature
    other = "ppo" if name != "ppo" else "a2c"
    h, _ = _follower(other, env_id=env_id)
    with pytest.raises(ValueError, match=f"checkpoint follower is {name!r}"):
        h.load_state_dict(state)


def test_spawn_keeps_the_class():
    f, _ = _follower("a2c", learning_starts=64)
    g = f.spawn(seed=3)
    assert type(g) is A2CFollower and g.model.learning_starts == 64 and g.seed == 3


def test_evaluate_and_record_video_on_the_true_reward():
    pytest.importorskip("pygame")
    f, _ = _follower("a2c", env_id="CartPole-v1")
    assert Capability.VIDEO in f.capabilities
    frames = f.record_video(seed=0, max_steps=3)
    assert frames.ndim == 4 and frames.shape[-1] == 3 and 2 <= len(frames) <= 4
    metrics = f.evaluate(2, seed=0)
    assert metrics == f.evaluate(2, seed=0) and metrics["eval/episode_length"] >= 1
