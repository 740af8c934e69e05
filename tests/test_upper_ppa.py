"""PPA leader rule: exact checks on the tabular RuleLab, the corrected Hessian, the solver, refusals, CLI runs.

The follower is SoftPolicyGradient (softmax logits ``θ``, exact soft policy gradient) trained to the soft optimum,
where the θ-space IFT equals the exact hypergradient (the softmax-shift Hessian is singular, hence damping). Its
on-policy batch (500 envs x 120 steps, episodes of 12 steps, gamma 0.5) gives ``H`` and ``J``; directions are read
off one SGD step (lr 1, no weight decay, no clipping, one minibatch of 4000 pairs).
"""

import numpy as np
import pytest
import torch

from bilevel_rl.capabilities import Capability
from bilevel_rl.data.trajectories import TrajectoryBatch
from bilevel_rl.tabular.checks.ppa import ppa_exact_terms
from bilevel_rl.tabular.core.soft_mdp import DTYPE
from bilevel_rl.tabular.lab.followers import SoftPolicyGradient
from bilevel_rl.tabular.lab.rule_lab import make_rule_lab
from bilevel_rl.upper.base import make_rule
from bilevel_rl.upper.drlhf import DRLHF, DRLHFConfig
from bilevel_rl.upper.ppa import PPA, PPAConfig, conjugate_gradient, episode_steps
from tests.helpers import assert_refused, cli, finite_after_warmup, leader_step, tiny
from tests.tabular_helpers import compare

SGD = {"optimizer": "sgd", "lr": 1.0, "weight_decay": 0.0, "max_grad_norm": None}
N_PAIRS = 4000


@pytest.fixture(scope="module")
def lab():
    lab = make_rule_lab(follower_cls=SoftPolicyGradient, lr=0.1, updates=800, n_envs=500, episode_length=12)
    lab.batch = lab.on_policy_batch(120)  # 800 Adam steps on the exact objective, then 60k recorded steps
    assert (lab.follower.pi - lab.optimal_policy()).abs().max() < 1e-6  # at the soft optimum θ* (up to shifts)
    return lab


def one_step(lab, rule, n, pair_seed, seed=0, iteration=1):
    """``x_before − x_after`` of one update on ``n`` fresh pairs (x is restored afterwards) and its metrics."""
    rule.attach(lab.follower, lab.reward_model)
    buffer = lab.buffer(n, torch.Generator().manual_seed(pair_seed))
    x0 = lab.x.detach().clone()
    out = rule.update(leader_step(buffer, 1, np.random.default_rng(seed), batch=lab.batch, iteration=iteration))
    step = x0 - lab.x.detach()
    with torch.no_grad():
        lab.x.copy_(x0)
    return step, out


def ppa(n=N_PAIRS, **kwargs):
    return PPA(PPAConfig(**SGD, batch_size=n, horizon=12, cg_iters=20, **kwargs))


# ------------------------------------------------------------------------------------------- exact checks


def test_ppa_matches_the_exact_hypergradient_and_drlhf_and_eq28_do_not(lab):
    # measured (cosine, relative error) at 4000 pairs, pair seeds 1-4: Tikhonov solve (δ = 1e-3) 0.998-0.9998,
    # 0.065-0.084; the printed eq. 28 Hessian (outer product dropped) 0.974-0.991, 0.148-0.235 (1.8-2.9x the error
    # of the full Hessian on the same pairs); DRLHF (no implicit term) 0.896 at seed 1.
    exact = lab.exact_hypergradient()
    cmp = {
        name: compare(one_step(lab, rule, N_PAIRS, pair_seed=1)[0], exact)
        for name, rule in (
            ("normal", ppa(damping=1e-3)),
            ("damped", ppa(damping=1e-3, solver="damped")),
            ("eq28", ppa(damping=1e-3, hessian="paper_eq28")),
            ("drlhf", DRLHF(DRLHFConfig(**SGD, batch_size=N_PAIRS))),
        )
    }
    cos = {name: c for name, (c, _) in cmp.items()}
    print("PPA", cmp)
    assert cos["normal"] >= 0.99 and cos["damped"] >= 0.99
    assert cos["drlhf"] < 0.95
    assert cos["eq28"] < cos["normal"] - 0.005 and cmp["eq28"][1] > 1.8 * cmp["normal"][1]


def test_dice_hessian_is_the_exact_follower_hessian_and_eq28_is_not(lab):
    # H·e_i from the rule's HVPs vs autograd through the exact soft policy evaluation (ppa_exact_terms).
    # measured: full (cosine 0.9990, relative error 0.046), paper eq. 28 (0.859, 0.56).
    theta = lab.follower.theta.detach()
    exact = ppa_exact_terms(lab.follower.reward_table(), theta, lab.mdp, torch.zeros_like(theta), 1).hessian
    found = {}
    for form in ("full", "paper_eq28"):
        rule = ppa(hessian=form)
        rule.attach(lab.follower, lab.reward_model)
        graph, info = rule.prepare(leader_step(None, 1, np.random.default_rng(0), batch=lab.batch, iteration=1))
        assert info["upper/hessian_episodes"] == 500 * 10 and info["upper/hessian_steps"] == 500 * 120
        found[form] = compare(torch.stack([graph.hvp(e) for e in torch.eye(theta.numel(), dtype=DTYPE)]), exact)
    print("PPA Hessian", found)
    assert found["full"][0] > 0.995 and found["full"][1] < 0.08
    assert found["paper_eq28"][1] > 0.3


def test_conjugate_gradient_solves_and_stops_at_negative_curvature():
    g = torch.Generator().manual_seed(0)
    m = torch.randn(6, 6, generator=g, dtype=DTYPE)
    spd = m @ m.T + 0.5 * torch.eye(6, dtype=DTYPE)
    b = torch.randn(6, generator=g, dtype=DTYPE)
    x, info = conjugate_gradient(lambda v: spd @ v, b, 20)
    assert torch.allclose(x, torch.linalg.solve(spd, b), atol=1e-8) and info["upper/cg_negative"] == 0
    x, info = conjugate_gradient(lambda v: -spd @ v, b, 20)
    assert info["upper/cg_negative"] == 1 and info["upper/cg_iters"] == 0 and (x == 0).all()


def test_episode_steps_keep_known_starts_and_sum_scores_per_episode():
    # one env: steps 0-1 belong to an episode that began before the record, then episodes of 3 and 2+ steps
    t = np.array([[5], [6], [0], [1], [2], [0], [1]])
    starts = t == 0
    batch = TrajectoryBatch(
        obs=np.arange(7, dtype=np.float32).reshape(7, 1, 1),
        actions=np.zeros((7, 1, 1), dtype=np.float32),
        true_rewards=np.zeros((7, 1), dtype=np.float32),
        dones=np.roll(starts, -1, axis=0),
        terminated=np.zeros((7, 1), dtype=bool),
        episode_starts=starts,
        timesteps=t,
    )
    steps = episode_steps(batch, horizon=2, gamma=0.5, device=torch.device("cpu"))
    assert steps.obs[:, 0].tolist() == [2, 3, 5, 6] and steps.episodes == 2
    assert steps.discount.tolist() == [1.0, 0.5, 1.0, 0.5]
    assert steps.prefix(torch.tensor([1.0, 2.0, 10.0, 20.0])).tolist() == [1.0, 3.0, 10.0, 30.0]


def test_a_follower_without_policy_parameters_is_refused():
    oracle = make_rule_lab(seed=0)  # SoftVIOracle: π is a table, action_dist(grad=True) has no parameters
    with pytest.raises(ValueError, match="upper=ppa needs a policy differentiable in its parameters"):
        ppa(32).attach(oracle.follower, oracle.reward_model)  # refused by its capabilities at attach

    class Claims(type(oracle.follower)):  # a follower that claims a parametric policy it does not have
        @property
        def capabilities(self):
            return super().capabilities | {Capability.PARAMETRIC_POLICY}

    liar = Claims(oracle.mdp, oracle.true_reward, oracle.follower.config, 0)
    liar.set_reward_model(oracle.reward_model)
    batch = (liar.learn(20 * liar.num_envs), liar.collect(20))[1]
    rule = ppa(32)
    rule.attach(liar, oracle.reward_model)
    with pytest.raises(ValueError, match="parametric policy"):  # still caught when the graph is built
        rule.update(
            leader_step(oracle.buffer(32, torch.Generator().manual_seed(0)), 1, np.random.default_rng(0), batch, 1)
        )


def test_direct_term_switch_and_stale_pairs(lab):
    only_score, out = one_step(lab, ppa(64, include_direct_term=False), 64, pair_seed=2)
    assert out["upper/direct_grad_norm"] == 0 and out["upper/implicit_grad_norm"] > 0
    stale, out = one_step(lab, ppa(64), 64, pair_seed=2, iteration=2)  # the lab's pairs carry iteration 1
    drlhf, _ = one_step(lab, DRLHF(DRLHFConfig(**SGD, batch_size=64)), 64, pair_seed=2, iteration=2)
    assert out["upper/implicit_grad_norm"] == 0 and torch.allclose(stale, drlhf, atol=1e-12)


@pytest.mark.parametrize(
    ("params", "key"),
    [
        ({"damping": 0.0}, "upper.damping"),
        ({"cg_iters": 0}, "upper.cg_iters"),
        ({"horizon": 0}, "upper.horizon"),
        ({"gamma": -0.1}, "upper.gamma"),
        ({"solver": "minres"}, "upper.solver"),
        ({"hessian": "naive"}, "upper.hessian"),
        ({"implicit_pairs": "stale"}, "upper.implicit_pairs"),
        ({"batch_size": 0}, "upper.batch_size"),
    ],
)
def test_bad_hyperparameters_are_refused(params, key):
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        make_rule("ppa", params)


# ------------------------------------------------------------------------------------------- CLI


TERMS = [
    "upper/bt_loss",
    "upper/temperature",
    "upper/score_grad_norm",
    "upper/solve_norm",
    "upper/cg_residual",
    "upper/hessian_episodes",
    "upper/direct_grad_norm",
    "upper/implicit_grad_norm",
]


def _finite_after_warmup(run_dir):
    later = finite_after_warmup(run_dir, TERMS)
    assert (later["upper/implicit_grad_norm"] > 0).all()
    return later


def test_cli_ppa_sac_hopper(tmp_path):
    cli(*tiny("env=hopper", "follower=sac", "upper=ppa"), "upper.cg_iters=3", f"hydra.run.dir={tmp_path}")
    later = _finite_after_warmup(tmp_path)
    assert (later["upper/cg_iters"] <= 3).all()


def test_cli_ppa_ppo_cartpole(tmp_path):
    cli(
        *tiny("env.id=CartPole-v1", "follower=ppo", "upper=ppa"),
        "follower.algo_kwargs.n_steps=200",
        "follower.algo_kwargs.batch_size=50",
        "follower.algo_kwargs.ent_coef=0.01",
        "upper.cg_iters=3",
        f"hydra.run.dir={tmp_path}",
    )
    assert _finite_after_warmup(tmp_path)["upper/temperature"].eq(0.01).all()


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (["upper=ppa", "upper.damping=0"], "upper.damping"),
        (["upper=ppa", "env.id=CartPole-v1", "follower=ppo"], "follower.algo_kwargs.ent_coef"),
    ],
)
def test_cli_refusals_are_one_line(overrides, key, tmp_path):
    assert_refused(tiny(*overrides), key, tmp_path / "r")
