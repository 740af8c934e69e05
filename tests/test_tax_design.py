"""Tax design through the trainer (HPGD §5.2): the leader module against the env's formulas, the environment reading
the leader's parameters, HPGD's direct and transition terms, the Zero-Order baseline, refusals, resume."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from bilevel_rl.data.trajectories import TrajectoryBatch
from bilevel_rl.envs import tax_design as td
from bilevel_rl.followers import make_follower
from bilevel_rl.objectives.leader_reward import LeaderBatch
from bilevel_rl.reward_models.tax import TaxModel
from bilevel_rl.upper.shaping import environment_loss
from tests.helpers import assert_refused, cli, metrics, one_thread  # noqa: F401

TAX = [
    "exp=tax_design",
    "trainer.total_steps=3000",
    "trainer.steps_per_iter=1000",
    "trainer.initial_steps=1000",
    "trainer.eval_every=1",
    "trainer.eval_episodes=1",
    "env.n_envs=1",
    "follower.algo_kwargs.batch_size=64",
    "follower.algo_kwargs.target_update_interval=500",
    "progress=false",
]


def random_steps(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    obs = np.stack([rng.uniform(-100, 100, n), rng.integers(0, 2, n)], 1).astype(np.float32)
    return obs, rng.integers(0, td.N_ACTIONS, n)


def test_tax_model_matches_the_environment_formulas_and_has_finite_gradients():
    model = TaxModel(initial_tax=0.5)
    obs, act = random_steps(400)
    _, hours, cons = td.decode_action(act)
    tax = model.env_parameters()
    np.testing.assert_allclose(tax, 0.5)
    u = td.household_utility(obs[:, 0], hours, cons, tax[1:], td.CONTEXTS[obs[:, 1].astype(int)])
    v = td.social_welfare(obs[:, 0], hours, cons, tax[0], tax[1:])
    mean = td.next_assets_mean(obs[:, 0], hours, cons, tax[0])
    s1 = td.sample_next_assets(np.random.default_rng(1), mean)
    nxt = torch.as_tensor(np.stack([s1, obs[:, 1]], 1).astype(np.float32))
    o, a = torch.as_tensor(obs), torch.as_tensor(act)
    np.testing.assert_allclose(model(o, a).double().detach().numpy(), u, atol=1e-5)
    np.testing.assert_allclose(model.leader_reward(o, a).detach().numpy(), v, atol=1e-9)
    np.testing.assert_allclose(
        model.transition_log_prob(o, a, nxt).detach().numpy(), td.transition_log_prob(s1, mean), atol=1e-5
    )
    (model(o, a).sum() + model.leader_reward(o, a).sum() + model.transition_log_prob(o, a, nxt).sum()).backward()
    assert model.w.grad is not None and torch.isfinite(model.w.grad).all()


def test_vat_gradient_of_a_household_that_skips_a_good_is_zero():
    model = TaxModel()
    skip = td.encode_action(3, (2, 0, 4))  # good 2 not bought: the Cobb-Douglas term is 0 at every VAT
    obs = torch.tensor([[10.0, 0.0]])
    (g,) = torch.autograd.grad(model(obs, torch.tensor([skip])).sum(), model.w)
    assert torch.equal(g, torch.zeros(4, dtype=torch.float64))


def test_the_follower_environments_read_the_leader_parameters_before_every_step():
    follower = make_follower("soft_dqn", "TaxDesign-v0", 2, 0, {"learning_starts": 10**6}, record_steps=8)
    try:
        model = TaxModel()
        follower.set_reward_model(model)
        follower.set_leader_source(model.env_parameters)
        with torch.no_grad():
            model.w.fill_(0.0)  # tax = 2·sigmoid(0) = 1
        follower.learn(4)
        for env in follower._vec_env().envs:  # type: ignore[attr-defined]
            np.testing.assert_allclose(env.unwrapped.tax, 1.0)
    finally:
        follower.close()


class FakeFollower:
    gamma = 0.8

    def soft_state_values(self, obs: np.ndarray) -> np.ndarray:
        return 0.1 * obs[:, 0].astype(np.float64) + 1.0


def test_environment_loss_is_the_direct_plus_the_transition_terms():
    """Time-major indexing of s_{t+1}, no term across an episode end or after the last row (hand-built sums)."""
    T, E, gl, gf = 3, 2, 0.9, 0.8
    obs, act = random_steps(T * E, seed=3)
    dones = np.zeros((T, E), bool)
    dones[0, 1] = True  # env 1's first episode ends at t = 0
    starts = np.zeros((T, E), bool)
    starts[0] = True
    starts[1, 1] = True
    timesteps = np.array([[0, 0], [1, 0], [2, 1]])
    batch = TrajectoryBatch(
        obs=obs.reshape(T, E, 2),
        actions=act.reshape(T, E),
        true_rewards=np.zeros((T, E), np.float32),
        dones=dones,
        terminated=np.zeros((T, E), bool),
        episode_starts=starts,
        timesteps=timesteps,
    )
    rng = np.random.default_rng(4)
    adv, ret = rng.normal(size=(T, E)), rng.normal(size=(T, E))
    data = LeaderBatch(batch, np.zeros((T, E)), adv, ret, gl, 1)
    omega = gl ** timesteps.astype(float)
    model, follower = TaxModel(), FakeFollower()
    lam = 0.2
    response = omega * adv / lam
    loss, _ = environment_loss(model, follower, data, omega, response, 0.0, gf)  # type: ignore[arg-type]
    (got,) = torch.autograd.grad(-loss, model.w)

    o, a = torch.as_tensor(obs), torch.as_tensor(act)
    expected = torch.autograd.grad((torch.as_tensor(omega.reshape(-1)) * model.leader_reward(o, a)).sum(), model.w)[0]
    vbar, vf = (ret - adv).reshape(-1), follower.soft_state_values(obs)
    for t, e in ((0, 0), (1, 0), (1, 1)):  # the transitions with a recorded successor
        i, j = t * E + e, (t + 1) * E + e
        coef = gl * omega[t, e] * (vbar[j] - vbar[i]) + response[t, e] * gf * (vf[j] - vf[i])
        logp = model.transition_log_prob(o[i : i + 1], a[i : i + 1], o[j : j + 1]).sum()
        expected = expected + coef * torch.autograd.grad(logp, model.w)[0]
    torch.testing.assert_close(got, expected)
    without, _ = environment_loss(model, follower, data, omega, None, 0.0, gf)  # type: ignore[arg-type]
    assert not torch.allclose(torch.autograd.grad(-without, model.w)[0], got)


@pytest.mark.parametrize("row", ["hpgd_tax", "zero_order"])
def test_tax_design_runs_move_the_taxes_and_log_them(row, tmp_path):
    run = tmp_path / row
    cli(
        *TAX,
        f"upper={row}",
        "upper.probe_steps=500" if row == "zero_order" else "upper.trace=1.0",
        f"hydra.run.dir={run}",
    )
    df = pd.read_csv(run / "metrics.csv")
    taxes = df[[f"upper/tax/{n}" for n in td.TAX_NAMES]].dropna()
    assert np.allclose(taxes.iloc[0], 0.3, atol=1e-6)
    assert not np.allclose(taxes.iloc[-1], 0.3, atol=1e-6)  # the leader stepped
    assert np.isfinite(df["eval/leader_return"].dropna()).all() and (df["upper/nonfinite_steps"].dropna() == 0).all()


def test_tax_design_refusals(tmp_path):
    assert_refused([*TAX, "env.id=CartPole-v1"], "reward_model=tax", tmp_path / "a")
    from types import SimpleNamespace

    from bilevel_rl.config import ConfigError, _check_reward_model

    sections = SimpleNamespace(
        reward_model=SimpleNamespace(name="tax"),
        env=SimpleNamespace(id="TaxDesign-v0"),
        objective=SimpleNamespace(name="leader_reward"),
        upper=SimpleNamespace(name="hpgd", transition_response=True),
        follower=SimpleNamespace(name="ppo"),
    )
    with pytest.raises(ConfigError, match="upper.transition_response"):
        _check_reward_model(sections, td.TaxDesignEnv().observation_space)  # type: ignore[arg-type]
    sections.upper.transition_response = False
    _check_reward_model(sections, td.TaxDesignEnv().observation_space)  # type: ignore[arg-type]


def test_tax_design_resume_continues_exactly(tmp_path):
    full, part = tmp_path / "full", tmp_path / "part"
    cli(*TAX, f"hydra.run.dir={full}")
    cli(*TAX, "trainer.total_steps=2000", f"hydra.run.dir={part}")
    cli(f"checkpoint.resume_from={part}", "trainer.total_steps=3000")
    pd.testing.assert_frame_equal(metrics(full), metrics(part))


def test_the_fixed_tax_baseline_logs_the_welfare_of_its_episodes():
    """``upper=true_reward`` trains no leader but still logs ``follower/leader_return``: here the social welfare summed
    over the one episode that starts and ends inside the batch (env 0); env 1's episode began before recording."""
    from bilevel_rl.objectives.leader_reward import LeaderRewardConfig, LeaderRewardObjective

    obs, act = random_steps(8, seed=3)
    model = TaxModel(initial_tax=0.4)
    batch = TrajectoryBatch(
        obs=obs.reshape(4, 2, 2),
        actions=act.reshape(4, 2),
        true_rewards=np.zeros((4, 2), dtype=np.float32),
        dones=np.array([[False, True], [False, False], [False, False], [True, False]]),
        terminated=np.zeros((4, 2), dtype=bool),
        episode_starts=np.array([[True, False], [False, True], [False, False], [False, False]]),
        timesteps=np.array([[0, -1], [1, 0], [2, 1], [3, 2]]),
    )
    objective = LeaderRewardObjective(LeaderRewardConfig(), None, 0.9)  # type: ignore[arg-type]  # no critic needed
    got = objective.baseline_metrics(batch, model)
    _, hours, cons = td.decode_action(act)
    welfare = td.social_welfare(obs[:, 0], hours, cons, 0.4, np.full(td.N_GOODS, 0.4)).reshape(4, 2)
    assert got["follower/leader_return"] == pytest.approx(welfare[:, 0].sum())
    assert got["follower/true_reward_mean"] == 0.0
