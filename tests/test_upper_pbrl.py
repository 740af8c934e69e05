"""PBRL (bilevel_rl/upper/pbrl.py) checked against exact tabular answers, plus tiny end-to-end runs.

The rule runs unchanged on the tabular RuleLab. For the gradient checks both followers play *fixed* policies
(``SoftPolicyGradient`` with a 1e-12 learning rate only samples): ``π_y`` = uniform, ``π̂ = π*(x)``, so the
closed forms of :mod:`bilevel_rl.tabular.checks.penalty` apply exactly. Measured (seed 0, 1024 envs × 1000
steps, episodes of 10 steps at γ = 0.5): value penalty cosine 0.99999 (relative error 0.005), Bellman with mixed
rollouts 0.99999 (0.005), Bellman depth-1 (episode-start states) 0.002 from its own truncated closed form but 0.117
from the full Bellman gradient (the truncation; cosine 0.993, so the check uses relative errors);
follower extra-loss gradient vs autograd through trajectory enumeration 0.9997 (200000 on-policy pairs) and −0.17
with pairs of another policy (the off-policy bias the paper leaves open); follower optimality gap
``V*(ρ) − V^{π_y}(ρ)`` over the last 5 of 15 outer iterations 0.052 / 0.0045 / 0.00033 for λ = 1 / 4 / 16.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from bilevel_rl.data.preference_buffer import PreferenceBuffer
from bilevel_rl.tabular.checks.penalty import bellman_penalty_grad_exact, value_penalty, value_penalty_grad_exact
from bilevel_rl.tabular.checks.sobirl import expected_trajectory_loss
from bilevel_rl.tabular.core.reward import reward_vjp
from bilevel_rl.tabular.lab.followers import SoftPolicyGradient
from bilevel_rl.tabular.lab.rule_lab import RuleLab, make_rule_lab
from bilevel_rl.upper.estimators import pair_losses
from bilevel_rl.upper.pbrl import PBRL, PBRLConfig
from bilevel_rl.upper.penalty import LeaderPolicyLoss
from tests.helpers import TINY, assert_refused, cli, leader_step, metrics

STEPS, ENVS = 1000, 1024  # per env; ~100k episodes of 10 steps per follower


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(a @ b / (a.norm() * b.norm()))


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def frozen_penalty_direction(**config) -> tuple[RuleLab, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One ``rule.update`` with fixed ``π_y`` (uniform) and ``π̂ = π*(x)``; returns ``(lab, ∇p̂, π_y, π̂)``.

    ``∇p̂`` is read off the SGD step: ``x0 − x1 = ∇BT + λ ∇p̂`` with one minibatch holding the whole buffer.
    """
    lab = make_rule_lab(
        seed=0, num_features=8, episode_length=10, n_envs=ENVS, follower_cls=SoftPolicyGradient, lr=1e-12, updates=1
    )
    cfg = PBRLConfig(optimizer="sgd", lr=1.0, weight_decay=0.0, batch_size=512, best_response_steps=STEPS * ENVS)
    rule = PBRL(PBRLConfig(**{**cfg.__dict__, **config}))
    rule.attach(lab.follower, lab.reward_model)
    pi_hat = lab.optimal_policy()
    with torch.no_grad():
        rule.best_response.follower.theta.copy_(torch.log(pi_hat))  # type: ignore[union-attr]
    batch = lab.on_policy_batch(STEPS)
    buffer = lab.buffer(512, torch.Generator().manual_seed(1))
    x0 = lab.x.detach().clone()
    bt = torch.autograd.grad(pair_losses(lab.reward_model, buffer.all())[0].mean(), lab.x)[0]
    rule.update(leader_step(buffer, 1, np.random.default_rng(0), batch=batch, iteration=1))
    direction = (x0 - lab.x.detach() - bt) / rule.penalty_coefficient()
    lab.x.data.copy_(x0)
    return lab, direction, lab.follower.pi, pi_hat


def test_value_penalty_gradient_matches_closed_form():
    lab, g, pi_y, pi_hat = frozen_penalty_direction(penalty="value")
    exact = value_penalty_grad_exact(lab.x.detach(), lab.reward_fn, pi_y, pi_hat, lab.mdp)  # PBRL Lemma 7(a)
    assert cosine(g, exact) >= 0.99 and relative_error(g, exact) < 0.05


def test_bellman_penalty_mixed_rollouts_match_closed_form_and_depth1_is_a_truncation():
    lab, mixed, pi_y, pi_hat = frozen_penalty_direction(
        penalty="bellman", bellman_estimator="mixed", bellman_rollouts=100_000, bellman_horizon=12
    )
    exact = bellman_penalty_grad_exact(lab.x.detach(), lab.reward_fn, pi_y, pi_hat, lab.mdp)  # PBRL Lemma 9(a)
    assert cosine(mixed, exact) >= 0.99 and relative_error(mixed, exact) < 0.05
    _, depth1, _, _ = frozen_penalty_direction(penalty="bellman", bellman_states="start", bellman_max_states=10**6)
    truncated = reward_vjp(lab.x.detach(), lab.reward_fn, lab.mdp.rho[:, None] * (pi_hat - pi_y))
    assert relative_error(depth1, truncated) < 0.02  # what depth1 estimates: E_{s~ρ} Σ_a (π̂ − π_y) ∇r(s, a)
    assert relative_error(depth1, exact) > 0.08  # it drops γ E[∇V^π̂(s')]: measurably not the Bellman gradient


def test_mixed_bellman_refused_for_sb3_followers():
    from bilevel_rl.capabilities import Capability, CapabilityError, check_compatible
    from bilevel_rl.followers import follower_class

    req = PBRL.requirements(PBRLConfig(penalty="bellman", bellman_estimator="mixed"))
    assert "upper.bellman_estimator" in req[Capability.GENERATIVE_MODEL]
    assert Capability.GENERATIVE_MODEL not in PBRL.requirements(PBRLConfig(penalty="bellman"))
    sac = follower_class("sac").declared_capabilities({"name": "sac"})
    with pytest.raises(CapabilityError, match="upper.bellman_estimator=mixed"):
        check_compatible("pbrl", req, "sac", sac)
    check_compatible("pbrl", PBRL.requirements(PBRLConfig(penalty="bellman")), "sac", sac)


@pytest.mark.parametrize(("on_policy", "passes"), [(True, True), (False, False)])
def test_extra_policy_loss_is_the_score_function_gradient_of_f(on_policy, passes):
    """``∇_θ`` of the follower's extra loss / β equals ``∇_y f`` (autograd through exact trajectory enumeration)."""
    lab = make_rule_lab(seed=0, num_features=8, follower_cls=SoftPolicyGradient, lr=1e-12, updates=1)
    rule = PBRL(PBRLConfig(best_response="shared", policy_loss_pairs=200_000))
    rule.attach(lab.follower, lab.reward_model)
    follower = lab.follower
    assert isinstance(follower, SoftPolicyGradient)
    with torch.no_grad():
        follower.theta.copy_(torch.log(lab.optimal_policy()))
    follower.learn(8)
    buffer = PreferenceBuffer(200_000)  # on-policy pairs, or pairs of the uniform policy (stale, off-policy)
    behaviour = None if on_policy else torch.full_like(follower.pi, 0.5)
    buffer.add(lab.pairs(200_000, torch.Generator().manual_seed(2), pi=behaviour))
    rule.update(leader_step(buffer, 0, np.random.default_rng(0), iteration=1))
    g = torch.autograd.grad(rule.policy_loss(), follower.theta)[0] / rule.policy_loss_coefficient()
    theta = follower.theta.detach().clone().requires_grad_(True)
    f = expected_trajectory_loss(lab.x.detach(), torch.softmax(theta, 1), lab.reward_fn, lab.mdp, lab.loss)
    exact = torch.autograd.grad(f, theta)[0]
    assert (cosine(g.flatten(), exact.flatten()) >= 0.99) is passes


def test_follower_gap_shrinks_as_lambda_grows():
    """The penalised problem's solution approaches the bilevel one: ``p(x, y) = V*(ρ) − V^{π_y}(ρ)`` falls with λ."""
    gaps = []
    for lam in (1.0, 4.0, 16.0):
        lab = make_rule_lab(seed=0, num_features=8, follower_cls=SoftPolicyGradient, lr=0.1, updates=30, n_envs=32)
        cfg = PBRLConfig(
            optimizer="sgd", lr=0.05 / lam, weight_decay=0.0, batch_size=512, lam=lam, policy_loss_pairs=512
        )  # step ≤ 1/(L_f + λ L_p) (Thm 11): lr ∝ 1/λ
        rule = PBRL(cfg)
        rule.attach(lab.follower, lab.reward_model)
        gen, rng, tail = torch.Generator().manual_seed(1), np.random.default_rng(0), []
        for k in range(1, 16):
            batch = lab.on_policy_batch(100)
            rule.update(leader_step(lab.buffer(512, gen), 1, rng, batch=batch, iteration=k))
            if k > 10:
                tail.append(float(value_penalty(lab.x.detach(), lab.reward_fn, lab.follower.pi, lab.mdp)))
        gaps.append(float(np.mean(tail)))
    assert gaps[0] > gaps[1] > gaps[2] and gaps[2] < gaps[0] / 10, gaps


def test_lambda_schedule_and_coefficients():
    c = PBRLConfig(lam=2.0, lam_schedule="geometric", lam_growth=2.0, lam_every=3, lam_max=10.0)
    assert [c.lam_at(k) for k in (1, 3, 4, 7, 10)] == [2.0, 2.0, 4.0, 8.0, 10.0]
    assert PBRLConfig(lam=1.0, lam_schedule="linear", lam_growth=0.5).lam_at(5) == 3.0
    rule = PBRL(PBRLConfig(lam=4.0, penalty_weight_x=0.5))
    rule.iteration = 1
    assert rule.policy_loss_coefficient() == 0.25  # β = 1/λ
    assert rule.penalty_coefficient() == 0.0  # before attach: no best response
    assert PBRL(PBRLConfig(beta=1e-3)).policy_loss_coefficient() == 1e-3


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"penalty": "ni"}, "upper.penalty"),
        ({"lam": 0.0}, "upper.lam"),
        ({"lam_schedule": "cosine"}, "upper.lam_schedule"),
        ({"lam_max": 1.0}, "upper.lam_max"),
        ({"best_response": "none"}, "upper.best_response"),
        ({"best_response_steps": 0}, "upper.best_response_steps"),
        ({"policy_loss_pairs": 0}, "upper.policy_loss_pairs"),
        ({"policy_loss_source": "all"}, "upper.policy_loss_source"),
        ({"baseline": "critic"}, "upper.baseline"),
        ({"gamma": 1.0}, "upper.gamma"),
        ({"bellman_estimator": "full"}, "upper.bellman_estimator"),
        ({"beta": -1.0}, "upper.penalty_weight_x and upper.beta"),
        ({"policy_loss_clip": 0.0}, "upper.policy_loss_clip"),
    ],
)
def test_bad_hyperparameters_are_refused(kwargs, key):
    with pytest.raises(ValueError, match=key):
        PBRLConfig(**kwargs)


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (["upper=pbrl", "upper.penalty=ni"], "upper.penalty"),
        (["upper=pbrl", "upper.penalty=bellman", "upper.bellman_estimator=mixed"], "upper.bellman_estimator"),
        (["upper=pbrl", "upper.policy_loss_clip=0.2"], "upper.policy_loss_clip"),
    ],
)
def test_cli_refuses_with_one_line(overrides, key, tmp_path):
    assert_refused([*TINY, *overrides], key, tmp_path / "r")


HOPPER = [o for o in TINY if o != "env=pendulum"] + ["env.id=Hopper-v5"]  # exp=quickstart: follower=sac


def test_tiny_hopper_sac_run_logs_penalty_metrics_and_resumes(tmp_path):
    run = tmp_path / "pbrl"
    cli(*HOPPER, "upper=pbrl", "trainer.total_steps=600", f"hydra.run.dir={run}")
    cli(f"checkpoint.resume_from={run}", "trainer.total_steps=1000")  # restores the best response too
    df = metrics(run)
    assert df["env_steps"].tolist() == [200, 400, 600, 800, 1000]
    later = df.iloc[1:]
    for col in ("upper/penalty_grad_norm", "upper/bt_loss", "upper/lambda", "upper/penalty_estimate"):
        assert np.isfinite(later[col]).all(), col
    assert np.isfinite(df["follower/extra_policy_loss"].iloc[2:]).all()
    # the best response keeps pace with the follower (catch-up of the 200 warm-up steps at iteration 1); after the
    # resume it continues from its checkpoint (a fresh one would need 800 steps at iteration 3)
    assert later["upper/best_response/steps"].tolist() == [400, 200, 200, 200]
    assert later["upper/best_response/env_steps"].tolist() == [400, 600, 800, 1000]
    # and it continues exactly: the same metrics as an uninterrupted run (extra-loss pairs, RNGs, best response)
    cli(*HOPPER, "upper=pbrl", "trainer.total_steps=1000", f"hydra.run.dir={tmp_path / 'straight'}")
    pd.testing.assert_frame_equal(df, metrics(tmp_path / "straight"))


def test_tiny_bellman_sac_and_ppo_runs(tmp_path):
    cli(*HOPPER, "upper=pbrl", "upper.penalty=bellman", f"hydra.run.dir={tmp_path / 'bellman'}")
    df = metrics(tmp_path / "bellman").iloc[1:]
    assert np.isfinite(df["upper/penalty_grad_norm"]).all() and (df["upper/bellman_states"] > 0).all()
    ppo = ["follower=ppo", "follower.algo_kwargs.n_steps=200", "follower.algo_kwargs.batch_size=50"]
    cli(*HOPPER, *ppo, "upper=pbrl", f"hydra.run.dir={tmp_path / 'ppo'}")
    df = metrics(tmp_path / "ppo")
    assert df["env_steps"].iloc[-1] == 1000 and np.isfinite(df["upper/penalty_grad_norm"].iloc[1:]).all()
    assert np.isfinite(df["follower/extra_policy_loss"].iloc[1:]).all()


@pytest.mark.parametrize("hinge", [False, True])
def test_penalty_hinge_drops_a_negative_penalty_estimate(hinge):
    """With a best response *worse* than the follower (p̂ < 0) the hinge leaves only the BT step."""
    lab = make_rule_lab(
        seed=0, num_features=8, episode_length=10, n_envs=ENVS, follower_cls=SoftPolicyGradient, lr=1e-12, updates=1
    )
    cfg = PBRLConfig(optimizer="sgd", lr=1.0, weight_decay=0.0, batch_size=512, best_response_steps=STEPS * ENVS)
    rule = PBRL(PBRLConfig(**{**cfg.__dict__, "penalty_hinge": hinge}))
    rule.attach(lab.follower, lab.reward_model)
    pi_star = lab.optimal_policy()
    with torch.no_grad():
        lab.follower.theta.copy_(torch.log(pi_star))  # type: ignore[attr-defined]
        rule.best_response.follower.theta.copy_(-4.0 * torch.log(pi_star))  # type: ignore[union-attr]  # a poor policy
    batch = lab.on_policy_batch(STEPS)
    buffer = lab.buffer(512, torch.Generator().manual_seed(1))
    x0 = lab.x.detach().clone()
    bt = torch.autograd.grad(pair_losses(lab.reward_model, buffer.all())[0].mean(), lab.x)[0]
    metrics_ = rule.update(leader_step(buffer, 1, np.random.default_rng(0), batch=batch, iteration=1))
    assert metrics_["upper/penalty_estimate"] < 0
    penalty_part = (x0 - lab.x.detach() - bt).norm()
    assert metrics_["upper/penalty_active"] == (0.0 if hinge else 1.0)
    assert bool(penalty_part < 1e-9) is hinge


def test_log_prob_floor_bounds_the_extra_policy_loss():
    """Actions the policy nearly never takes have log π ≈ −50; the floor clamps them (no gradient below it)."""
    lab = make_rule_lab(seed=0, follower_cls=SoftPolicyGradient, lr=1e-12, updates=1)
    follower = lab.follower
    assert isinstance(follower, SoftPolicyGradient)
    buffer = lab.buffer(64, torch.Generator().manual_seed(3))  # pairs of the uniform policy: both actions occur
    with torch.no_grad():
        follower.theta[:, 0] = -50.0
    for floor, lowest in ((None, -40.0), (-10.0, -10.0)):
        rule = PBRL(PBRLConfig(best_response="shared", log_prob_min=floor))
        rule.attach(follower, lab.reward_model)
        pairs = buffer.all()
        obs = torch.as_tensor(pairs.obs).flatten(0, 2)
        logp = follower.action_dist(obs, grad=True).log_prob(torch.as_tensor(pairs.actions).flatten(0, 2))
        total = rule.policy_loss.log_probs(follower, pairs, grad=True)
        if floor is None:
            assert float(logp.detach().min()) < lowest and torch.allclose(total, logp.reshape(64, -1).sum(1))
        else:
            assert torch.allclose(total, logp.clamp_min(floor).reshape(64, -1).sum(1))
            (g,) = torch.autograd.grad(total.sum(), follower.theta)
            assert torch.isfinite(g).all()


class GaussianPolicy:
    """A state-independent Gaussian policy ``N(μ, σ²)`` over 1-d actions (just what LeaderPolicyLoss reads)."""

    def __init__(self) -> None:
        self.mean = torch.zeros(1, requires_grad=True)
        self.log_std = torch.zeros(1, requires_grad=True)

    def action_dist(self, obs, grad: bool = True):
        n = len(obs)
        with torch.set_grad_enabled(grad):
            return torch.distributions.Independent(
                torch.distributions.Normal(self.mean.expand(n, 1), self.log_std.exp().expand(n, 1)), 1
            )


def leader_policy_loss(policy: GaussianPolicy, clip: float | None) -> LeaderPolicyLoss:
    """The extra loss refreshed on 64 actions of N(0, 1) with advantages favouring those near 0.5."""
    from types import SimpleNamespace

    rng = np.random.default_rng(0)
    actions = rng.normal(size=(64, 1, 1)).astype(np.float32)
    batch = SimpleNamespace(
        flat_obs=lambda: np.zeros((64, 3), dtype=np.float32), flat_actions=lambda: actions.reshape(64, 1)
    )
    latest = SimpleNamespace(batch=batch, advantages=-((actions[..., 0] - 0.5) ** 2) + 1.0)
    loss = LeaderPolicyLoss(PBRLConfig(policy_loss_clip=clip, policy_loss_steps=64), lambda: 0.5)
    loss.follower = policy  # type: ignore[assignment]
    loss.refresh(SimpleNamespace(leader=SimpleNamespace(require=lambda name: latest), rng=rng))  # type: ignore[arg-type]
    return loss


def test_clipped_leader_policy_loss_has_the_score_function_gradient_then_stays_bounded():
    """At the refresh policy (ρ = 1) the clipped loss's gradient is the plain one's; descending the plain loss
    collapses the Gaussian's std (log π → +∞ around good actions), the clipped loss stops once ρ leaves 1 ± ε."""
    grads = []
    for clip in (None, 0.2):
        policy = GaussianPolicy()
        loss = leader_policy_loss(policy, clip)
        grads.append(torch.autograd.grad(loss(), [policy.mean, policy.log_std]))
    for plain, clipped in zip(*grads, strict=True):
        torch.testing.assert_close(plain, clipped)
    stds = {}
    for clip in (None, 0.2):
        policy = GaussianPolicy()
        loss = leader_policy_loss(policy, clip)
        opt = torch.optim.Adam([policy.mean, policy.log_std], lr=0.05)
        for _ in range(400):
            opt.zero_grad()
            loss().backward()
            opt.step()
            if float(policy.log_std.detach()) < -5.0:  # std < 0.007: collapsed (further steps reach NaN)
                break
        stds[clip] = float(policy.log_std.detach().exp())
    assert stds[None] < 0.01, stds  # the defect: the plain loss on a stale batch is unbounded below
    assert stds[0.2] > 0.6, stds
