"""objective=leader_reward end to end: reward mix, leader critic, every rule's run, refusals, resume."""

import math
import sys

import gymnasium as gym
import numpy as np
import pandas as pd
import pytest
import torch

from bilevel_rl.data.trajectories import TrajectoryBatch
from bilevel_rl.followers import make_follower
from bilevel_rl.followers.base import RewardMix
from bilevel_rl.objectives.leader_reward import LeaderRewardConfig, gae
from bilevel_rl.reward_models.base import RewardModel
from tests.helpers import assert_refused, cli, metrics

SHAPING = [
    "exp=shaping_delayed_hopper",
    "env=pendulum",
    "trainer.total_steps=768",
    "trainer.steps_per_iter=256",
    "trainer.initial_steps=256",
    "trainer.eval_every=1",
    "trainer.eval_episodes=1",
    "follower.algo_kwargs.n_steps=256",
    "follower.algo_kwargs.n_epochs=2",
    "progress=false",
]


class ConstantReward(RewardModel):
    """r(s, a) = value (one parameter, so it is a module with a device)."""

    def __init__(self, value: float) -> None:
        super().__init__()
        self.value = torch.nn.Parameter(torch.tensor(float(value)))
        self.normalize = False

    @property
    def action_ndim(self) -> int:
        return 1

    def forward(self, obs, actions):
        return self.value * torch.ones(obs.shape[0])


@pytest.mark.parametrize("name", ["ppo", "sac"])
def test_follower_trains_on_env_reward_plus_the_shaping_reward(name):
    """Stored training rewards = env_coef * r_env + model_coef * r_shaping (on-policy rollouts, off-policy relabels)."""
    kwargs = {"n_steps": 64, "batch_size": 32} if name == "ppo" else {"learning_starts": 1000, "buffer_size": 1000}
    f = make_follower(name, "Pendulum-v1", 1, 0, kwargs, record_steps=64)
    f.set_reward_model(ConstantReward(2.0), RewardMix(env=1.0, model=0.5))
    f.learn(64)
    env = f.collect(64).true_rewards.reshape(-1)  # dense = visible here
    if name == "ppo":
        stored = f.model.rollout_buffer.rewards.reshape(-1)
    else:
        buf = f.replay_buffer
        buf.refresh()
        stored = buf.rewards[:64].reshape(-1)
    np.testing.assert_allclose(stored, env + 1.0, rtol=1e-5, atol=1e-5)
    assert f.reward_mix == RewardMix(env=1.0, model=0.5)
    f.close()


def test_gae_by_hand():
    """Terminal: no bootstrap; truncation and the batch's last step: V(s_t) stands in for V(s_{t+1})."""
    r = np.array([[1.0], [2.0], [3.0], [4.0]])
    v = np.array([[0.5], [1.0], [1.5], [2.0]])
    dones = np.array([[False], [True], [True], [False]])
    term = np.array([[False], [True], [False], [False]])
    batch = TrajectoryBatch(
        obs=np.zeros((4, 1, 1)),
        actions=np.zeros((4, 1, 1)),
        true_rewards=r.astype(np.float32),
        dones=dones,
        terminated=term,
        episode_starts=np.array([[True], [False], [True], [True]]),
        timesteps=np.array([[0], [1], [0], [0]]),
    )
    g, lam = 0.9, 0.5
    adv, ret = gae(r, v, batch, g, lam)
    d3 = 4.0 + g * 2.0 - 2.0  # batch end: V(s_3) stands in
    d2 = 3.0 + g * 1.5 - 1.5  # truncated
    d1 = 2.0 - 1.0  # terminated
    d0 = 1.0 + g * 1.0 - 0.5
    expected = [d0 + g * lam * d1, d1, d2, d3]
    np.testing.assert_allclose(adv[:, 0], expected)
    np.testing.assert_allclose(ret, adv + v)


def test_leader_reward_config_refusals():
    for kwargs, key in (
        ({"cost": "l1"}, "objective.cost_coef"),
        ({"reward_fn": "no_such_module:f"}, "objective.reward_fn"),
        ({"reward_fn": "math"}, "objective.reward_fn"),
        ({"gae_lambda": 1.5}, "objective.gae_lambda"),
        ({"follower_temperature": 0.0}, "objective.follower_temperature"),
    ):
        with pytest.raises(ValueError, match=key.replace(".", r"\.")):
            LeaderRewardConfig(**kwargs)


@pytest.mark.parametrize("row", ["hpgd", "sobirl_shaping", "pbrl_shaping", "meta_gradient"])
def test_each_rule_runs_and_moves_the_shaping_reward(row, tmp_path):
    run = tmp_path / row
    cli(*SHAPING, f"upper={row}", f"hydra.run.dir={run}")
    df = pd.read_csv(run / "metrics.csv")
    last = df.iloc[-1]
    assert df["shaping/mean_abs"].iloc[0] == 0.0  # zero-initialised shaping: the follower starts on r_visible alone
    assert last["shaping/mean_abs"] > 0.0 and math.isfinite(last["upper/loss"])
    assert last["eval/leader_return"] == last["eval/true_return"]  # r-bar is the dense reward here
    for col in ("upper/critic_explained_variance", "shaping/dense_reward_corr", "follower/leader_return"):
        assert col in df.columns, col


def test_baseline_rows_train_on_the_visible_reward_only(tmp_path):
    run = tmp_path / "floor"
    cli(*SHAPING, "upper=true_reward", f"hydra.run.dir={run}")
    df = pd.read_csv(run / "metrics.csv")
    assert "upper/loss" not in df.columns and "eval/true_return" in df.columns


def test_user_leader_reward_and_cost_reach_the_evaluation(tmp_path, monkeypatch):
    """objective.reward_fn by dotted path; eval/leader_return is its episode sum minus the cost (0 at r = 0)."""
    (tmp_path / "my_leader.py").write_text(
        "import numpy as np\n\ndef minus_one(obs, actions, env_reward):\n    return -np.ones(len(obs))\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("PYTHONPATH", str(tmp_path) + ":" + ":".join(sys.path))
    run = tmp_path / "user"
    cli(*SHAPING, "trainer.total_steps=512", "objective.reward_fn=my_leader:minus_one", f"hydra.run.dir={run}")
    df = pd.read_csv(run / "metrics.csv")
    assert df["eval/leader_return"].iloc[0] == -200.0  # Pendulum: 200 steps at -1, shaping zero at first
    assert (df["upper/leader_reward_mean"] == -1.0).all()


def test_shaping_refusals(tmp_path):
    assert_refused([*SHAPING, "upper=drlhf"], "upper=drlhf", tmp_path / "a")
    assert_refused([*SHAPING, "upper=pbrl"], "upper=pbrl_shaping", tmp_path / "b")
    no_ppo_keys = [a for a in SHAPING if not a.startswith("follower.algo_kwargs")]
    assert_refused([*no_ppo_keys, "upper=meta_gradient", "follower=sac"], "functional policy", tmp_path / "c")
    assert_refused([*SHAPING, "upper=hpgd", "upper.estimator=generative"], "upper.estimator", tmp_path / "d")
    assert_refused([*SHAPING, "objective.follower_temperature=null"], "temperature", tmp_path / "e")
    assert_refused([*SHAPING, "objective.reward_fn=nowhere:fn"], "objective.reward_fn", tmp_path / "f")
    assert_refused([*SHAPING, "upper=sobirl_shaping", "upper.hyper_term_after=10"], "hyper_term_after", tmp_path / "g")


@pytest.mark.parametrize("row", ["hpgd", "pbrl_shaping"])
def test_shaping_resume_continues_exactly(row, tmp_path):
    full, part = tmp_path / "full", tmp_path / "part"
    cli(*SHAPING, f"upper={row}", f"hydra.run.dir={full}")
    cli(*SHAPING, f"upper={row}", "trainer.total_steps=512", f"hydra.run.dir={part}")
    cli(f"checkpoint.resume_from={part}", "trainer.total_steps=768")
    pd.testing.assert_frame_equal(metrics(full), metrics(part))


def test_tabular_hpgd_steps_raise_the_leader_objective():
    """The deep HPGD class, trained by the trainer's loop on a ShapingLab, increases J(x) (exact values)."""
    from bilevel_rl.tabular.core.soft_mdp import policy_evaluation, solve_soft
    from bilevel_rl.tabular.lab.shaping_lab import make_shaping_lab
    from bilevel_rl.upper.base import LeaderStep
    from bilevel_rl.upper.hpgd import HPGD, HPGDConfig

    lab = make_shaping_lab(seed=4)

    def value() -> float:
        r = lab.env_reward + lab.model.table().detach()
        pi = solve_soft(r, lab.mdp).pi
        return float(lab.mdp.rho @ policy_evaluation(pi, lab.env_reward, lab.mdp, regularised=False)[1])

    rule = HPGD(HPGDConfig(trace=1.0, lr=0.05, weight_decay=0.0))
    rule.attach(lab.follower, lab.model, lab.objective.data)
    rng, gen = np.random.default_rng(0), torch.Generator().manual_seed(0)
    before = value()
    for it in range(1, 41):
        lab.follower.learn(64 * 50)
        batch = lab.follower.collect(50)
        lab.objective.gather(batch, it, rng, lab.model)
        rule.update(LeaderStep(lab.objective.data, batch, it, 1, rng, gen))
    assert value() > before + 0.05, (before, value())


def test_reward_mix_of_a_tabular_follower():
    from bilevel_rl.tabular.lab.shaping_lab import make_shaping_lab

    lab = make_shaping_lab(seed=0)
    table = lab.follower.reward_table()
    torch.testing.assert_close(table, lab.env_reward + lab.model.table().detach())
    assert isinstance(lab.follower.action_space, gym.spaces.Discrete)


def test_sac_preset_rules_read_sac_temperature(tmp_path):
    """exp=shaping_delayed_hopper_sac: HPGD scales by SAC's live alpha (no follower_temperature), shaping moves."""
    run = tmp_path / "sac"
    cli(
        "exp=shaping_delayed_hopper_sac",
        "env=pendulum",
        "trainer.total_steps=600",
        "trainer.steps_per_iter=200",
        "trainer.initial_steps=200",
        "trainer.eval_every=1",
        "trainer.eval_episodes=1",
        "progress=false",
        f"hydra.run.dir={run}",
    )
    df = pd.read_csv(run / "metrics.csv")
    temps = df["upper/temperature"].dropna()
    assert len(temps) >= 2 and (temps != 1.0).all() and temps.nunique() > 1  # alpha is learned, not the preset's 1
    assert df["shaping/mean_abs"].iloc[0] == 0.0 and df["shaping/mean_abs"].iloc[-1] > 0.0
