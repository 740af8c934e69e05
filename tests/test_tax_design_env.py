"""TaxDesign-v0: the household of the HPGD tax-design problem (paper §5.2, App. F.3.1) against hand computations."""

import math
import warnings

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env

import bilevel_rl.envs  # noqa: F401 - registers TaxDesign-v0
from bilevel_rl.envs.make import check_env_id
from bilevel_rl.envs.tax_design import (
    TaxDesignEnv,
    decode_action,
    encode_action,
    household_utility,
    next_assets_mean,
    sample_next_assets,
    social_welfare,
    tax_revenue,
    transition_log_prob,
)

# action (i_n, i_1, i_2, i_3) = (5, 2, 1, 1): n = 5 * 0.89 = 4.45, c = (2.5, 1.25, 1.25); flat ((5*5+2)*5+1)*5+1
A_MID = ((5 * 5 + 2) * 5 + 1) * 5 + 1  # = 681
N_MID, C_MID = 4.45, (2.5, 1.25, 1.25)
# (9, 0, 0, 0): n = 8.01, no consumption; (0, 4, 4, 4): no work, c = (5, 5, 5)
A_WORK = 9 * 125
A_SPEND = 4 * 25 + 4 * 5 + 4


def _env(**kwargs):
    return TaxDesignEnv(**kwargs)


# ------------------------------------------------------------------------------------------------------------------
# actions
# ------------------------------------------------------------------------------------------------------------------


def test_flat_action_decodes_in_c_order_onto_the_authors_grids():
    assert A_MID == 681
    indices, hours, consumption = decode_action(A_MID)
    assert tuple(indices) == (5, 2, 1, 1)
    assert hours == pytest.approx(4.45)
    np.testing.assert_allclose(consumption, [2.5, 1.25, 1.25])
    assert encode_action(5, (2, 1, 1)) == 681
    idx, h, c = decode_action(np.array([0, 1249]))
    np.testing.assert_array_equal(idx, [[0, 0, 0, 0], [9, 4, 4, 4]])
    np.testing.assert_allclose(h, [0.0, 8.01])
    np.testing.assert_allclose(c, [[0, 0, 0], [5, 5, 5]])
    env = _env()
    assert env.action_space == gym.spaces.Discrete(1250)
    assert env.action_dims == (10, 5, 5, 5)
    with pytest.raises(ValueError, match=r"^action: expected"):
        decode_action(1250)


# ------------------------------------------------------------------------------------------------------------------
# pure dynamics and rewards vs hand arithmetic
# ------------------------------------------------------------------------------------------------------------------


def test_asset_transition_mean_by_hand():
    # s' = s + (1 - x) * w * n - sum(c), with w = 1
    assert next_assets_mean(10.0, N_MID, C_MID, 0.3) == pytest.approx(10.0 + 0.7 * 4.45 - 5.0)  # 8.115
    assert next_assets_mean(10.0, N_MID, C_MID, 0.0) == pytest.approx(10.0 + 4.45 - 5.0)
    # clipped to [-100, 100]
    assert next_assets_mean(99.0, 8.01, (0, 0, 0), 0.3) == 100.0  # 99 + 5.607
    assert next_assets_mean(-99.0, 0.0, (5, 5, 5), 0.3) == -100.0  # -99 - 15
    # vectorised over a batch of states
    out = next_assets_mean(np.array([0.0, -3.0]), np.array([8.01, 0.0]), np.array([[0, 0, 0], [1.25, 0, 0]]), 1.5)
    np.testing.assert_allclose(out, [(1 - 1.5) * 8.01, -3.0 - 1.25])


def test_household_utility_by_hand():
    vat = (0.25, 0.25, 0.25)
    alpha = (0.6, 0.3, 0.1)
    # s = 20: log(20/20 + 1) = log 2; theta n^2 = 0.1 * 4.45^2; quantities c/(1.25) = (2, 1, 1) -> 2^0.6 * 1 * 1
    expected = math.log(2.0) - 0.1 * 4.45**2 + 2.0**0.6
    assert household_utility(20.0, N_MID, C_MID, vat, alpha) == pytest.approx(expected, abs=1e-12)
    assert expected == pytest.approx(0.2286136, abs=1e-6)
    # unequal VAT, other group: quantities (2.5/1, 1.25/2, 3.75/1.5) = (2.5, 0.625, 2.5), alpha = (0.1, 0.7, 0.2)
    expected = math.log(1.0 + 60.0 / 20.0) - 0.1 * 8.01**2 + 2.5**0.1 * 0.625**0.7 * 2.5**0.2
    got = household_utility(60.0, 8.01, (2.5, 1.25, 3.75), (0.0, 1.0, 0.5), (0.1, 0.7, 0.2))
    assert got == pytest.approx(expected, abs=1e-12)
    # debt is penalised linearly (sigma(s) = s for s <= 0); a good not bought zeroes Cobb-Douglas
    assert household_utility(-7.0, 0.89, (2.5, 1.25, 0.0), vat, alpha) == pytest.approx(-7.0 - 0.1 * 0.89**2)


def test_social_welfare_and_revenue_by_hand():
    vat = (0.25, 0.25, 0.25)
    # revenue = sum c*y/(1+y) + w x n = 0.25 * (2 + 1 + 1) + 0.3 * 4.45 = 1 + 1.335
    assert tax_revenue(N_MID, C_MID, 0.3, vat) == pytest.approx(2.335)
    # v = min(s, 0) + sum c/(1+y) + 5 log(1 + revenue) = -7 + 4 + 5 log(3.335)
    assert social_welfare(-7.0, N_MID, C_MID, 0.3, vat) == pytest.approx(-7.0 + 4.0 + 5.0 * math.log(3.335))
    # positive assets do not count for the leader; unequal VAT (0, 1, 0.5), x = 1.2, n = 8.01
    revenue = 0.0 + 1.25 * 1.0 / 2.0 + 3.75 * 0.5 / 1.5 + 1.2 * 8.01  # 0.625 + 1.25 + 9.612
    assert tax_revenue(8.01, (2.5, 1.25, 3.75), 1.2, (0.0, 1.0, 0.5)) == pytest.approx(revenue)
    expected = 0.0 + (2.5 + 0.625 + 2.5) + 5.0 * math.log(1.0 + revenue)
    assert social_welfare(30.0, 8.01, (2.5, 1.25, 3.75), 1.2, (0.0, 1.0, 0.5)) == pytest.approx(expected)
    # zero revenue: log(1 + 0) = 0
    assert social_welfare(0.0, 0.0, (0, 0, 0), 0.3, vat) == 0.0


def test_truncated_normal_transition_density_and_sampler():
    # far from the bounds: a plain N(m, 5^2) density
    z = (12.0 - 10.0) / 5.0
    assert transition_log_prob(12.0, 10.0) == pytest.approx(-0.5 * z**2 - math.log(5.0 * math.sqrt(2 * math.pi)))
    # mean on the upper bound: half the mass is cut, the density doubles
    assert transition_log_prob(95.0, 100.0) == pytest.approx(
        -0.5 - math.log(5.0 * math.sqrt(2 * math.pi)) + math.log(2)
    )
    assert transition_log_prob(100.5, 100.0) == -np.inf
    rng = np.random.default_rng(0)
    draws = sample_next_assets(rng, np.full(4000, 99.0))
    assert draws.min() >= -100.0 and draws.max() <= 100.0
    assert draws.mean() < 99.0 - 2.0  # truncation pulls the mean inside
    assert sample_next_assets(rng, 3.0, noise_std=0.0) == 3.0


# ------------------------------------------------------------------------------------------------------------------
# the env
# ------------------------------------------------------------------------------------------------------------------


def test_step_reward_info_and_transition_by_hand():
    env = _env(tax=np.array([0.3, 0.25, 0.25, 0.25]), noise_std=0.0)
    obs, info = env.reset(seed=1, options={"context": 0, "assets": 20.0})
    np.testing.assert_allclose(obs, [20.0, 0.0])
    assert info["context"] == 0
    np.testing.assert_allclose(info["preferences"], [0.6, 0.3, 0.1])
    obs, reward, terminated, truncated, info = env.step(A_MID)
    assert reward == pytest.approx(math.log(2.0) - 0.1 * 4.45**2 + 2.0**0.6)
    # v at s = 20 (>0: omega = 0): 4 + 5 log(1 + 2.335)
    assert info["leader_reward"] == pytest.approx(4.0 + 5.0 * math.log(3.335))
    assert info["tax_revenue"] == pytest.approx(2.335)
    assert info["hours"] == pytest.approx(4.45)
    np.testing.assert_allclose(info["consumption"], [2.5, 1.25, 1.25])
    assert info["action_indices"] == (5, 2, 1, 1)
    assert not terminated and not truncated
    # s' = 20 + 0.7 * 4.45 - 5 = 18.115, context unchanged
    assert env.assets == pytest.approx(18.115)
    np.testing.assert_allclose(obs, [18.115, 0.0], rtol=1e-6)


def test_set_tax_changes_the_next_transition_exactly_as_the_formula_says():
    env = _env(noise_std=0.0)
    np.testing.assert_allclose(env.tax, [0.3, 0.3, 0.3, 0.3])
    env.reset(seed=0, options={"assets": 0.0, "context": 1})
    env.step(A_WORK)
    assert env.assets == pytest.approx(0.7 * 8.01)
    env.set_tax(torch.tensor([1.5, 0.3, 0.3, 0.3]))
    np.testing.assert_allclose(env.tax, [1.5, 0.3, 0.3, 0.3])
    before = env.assets
    _, _, _, _, info = env.step(A_WORK)
    assert env.assets == pytest.approx(before + (1.0 - 1.5) * 8.01)  # an income tax above 1 makes work cost assets
    assert info["tax_revenue"] == pytest.approx(1.5 * 8.01)
    # VAT leaves the transition alone but changes the household's reward
    env.set_tax(np.array([1.5, 2.0, 2.0, 2.0]))
    before = env.assets
    assert before == pytest.approx(0.2 * 8.01)  # 1.602
    _, reward, _, _, info = env.step(A_SPEND)
    assert env.assets == pytest.approx(before - 15.0)
    # sigma(1.602) = log(1.602/20 + 1); no work; quantities 5/3 each and alpha = (0.1, 0.7, 0.2) sums to 1
    assert reward == pytest.approx(math.log(1.602 / 20.0 + 1.0) + 5.0 / 3.0)
    # omega(1.602) = 0; sum c/(1+y) = 3 * 5/3; revenue = 3 * 5 * 2/3 = 10 (no income)
    assert info["leader_reward"] == pytest.approx(0.0 + 5.0 + 5.0 * math.log(11.0))
    # next step starts in debt: sigma(s) = s and omega(s) = s
    debt = env.assets
    _, reward, _, _, info = env.step(0)
    assert reward == pytest.approx(debt) and info["leader_reward"] == pytest.approx(debt)


def test_with_noise_two_taxes_differ_by_exactly_w_n_delta_x_from_the_same_seed():
    out = {}
    for x in (0.1, 0.9):
        env = _env(tax=[x, 0.3, 0.3, 0.3])
        env.reset(seed=42, options={"assets": 5.0})
        env.step(A_MID)
        out[x] = env.assets
    assert out[0.1] - out[0.9] == pytest.approx(0.8 * 1.0 * 4.45, abs=1e-9)
    assert out[0.1] != pytest.approx(5.0 + 0.9 * 4.45 - 5.0)  # the noise was applied


def test_truncation_at_200_steps_direct_and_registered():
    env = _env()
    env.reset(seed=3)
    for t in range(1, 201):
        _, _, terminated, truncated, _ = env.step(env.action_space.sample())
        assert not terminated
        assert truncated == (t == 200)
    made = gym.make("TaxDesign-v0")
    assert made.spec is not None and made.spec.max_episode_steps == 200
    made.reset(seed=3)
    made.action_space.seed(3)
    flags = [made.step(made.action_space.sample())[3] for _ in range(200)]
    assert flags == [False] * 199 + [True]
    assert check_env_id("TaxDesign-v0").max_episode_steps == 200


def test_both_contexts_occur_and_seeded_reset_is_reproducible():
    env = _env()
    env.reset(seed=7)
    contexts = {env.reset()[1]["context"] for _ in range(60)}
    assert contexts == {0, 1}

    def rollout(seed):
        e = _env()
        obs, info = e.reset(seed=seed)
        traj = [obs]
        for a in (A_MID, A_WORK, A_SPEND, 0):
            traj.append(e.step(a)[0])
        return np.stack(traj), info["context"]

    a, ka = rollout(123)
    b, kb = rollout(123)
    c, _ = rollout(124)
    np.testing.assert_array_equal(a, b)
    assert ka == kb
    assert not np.array_equal(a, c)
    # s_0 ~ N(0, sqrt 2)
    starts = np.array([env.reset()[0][0] for _ in range(2000)])
    assert abs(starts.mean()) < 0.15 and starts.std() == pytest.approx(math.sqrt(2), rel=0.08)
    # a fixed context never changes
    fixed = _env(context=1)
    assert {fixed.reset(seed=s)[1]["context"] for s in range(20)} == {1}


@pytest.mark.parametrize(
    ("tax", "pattern"),
    [
        ([0.3, -0.1, 0.3, 0.3], r"^tax\[1\] \(vat_1\)=-0\.1 is outside \[0, 2\.0\]$"),
        ([2.5, 0.3, 0.3, 0.3], r"^tax\[0\] \(income_tax\)=2\.5 is outside"),
        ([0.3, 0.3, 0.3, float("nan")], r"^tax\[3\] \(vat_3\)=nan is not finite$"),
        ([0.3, 0.3, 0.3], r"^tax: expected shape \(4,\)"),
        (torch.zeros(1, 4), r"^tax: expected shape \(4,\).*got shape \(1, 4\)$"),
        (["a", 0, 0, 0], r"^tax: expected 4 numbers"),
    ],
)
def test_bad_tax_vector_is_refused_with_a_one_line_error(tax, pattern):
    env = _env()
    with pytest.raises(ValueError, match=pattern) as err:
        env.set_tax(tax)
    assert "\n" not in str(err.value)
    np.testing.assert_allclose(env.tax, [0.3] * 4)  # unchanged
    with pytest.raises(ValueError, match=pattern):
        _env(tax=tax)


def test_other_bad_arguments_name_their_key():
    with pytest.raises(ValueError, match=r"^context: "):
        _env(context=2)
    env = _env()
    with pytest.raises(ValueError, match=r"^options\.wealth: unknown"):
        env.reset(options={"wealth": 1.0})
    with pytest.raises(ValueError, match=r"^options\.assets: "):
        env.reset(options={"assets": 150.0})
    env.reset(seed=0)
    with pytest.raises(ValueError, match=r"^action: "):
        env.step(1250)
    # the main text's wider domain [0, 3] is available on request
    _env(tax=[2.5, 3.0, 0.0, 0.0], max_tax=3.0)


def test_gymnasium_env_checker_passes_without_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_env(gym.make("TaxDesign-v0").unwrapped)
        check_env(gym.make("TaxDesign-v0", noise_std=0.0, context=0).unwrapped)


def test_sb3_dqn_runs_on_the_flat_action_space():
    from stable_baselines3 import DQN

    env = gym.make("TaxDesign-v0")
    model = DQN("MlpPolicy", env, learning_starts=16, batch_size=8, train_freq=4, buffer_size=200, seed=0)
    model.learn(total_timesteps=48)
    action, _ = model.predict(env.reset(seed=0)[0], deterministic=True)
    assert env.action_space.contains(int(action))
