"""Hessian-free penalty method (bilevel_rl/upper/hessian_free.py) against exact tabular answers, plus a tiny run.

On the default RuleLab (seed 0) the two followers play fixed policies (``SoftPolicyGradient`` with a 1e-12 learning
rate only samples): the main follower ``λ' = π*_σ(x)`` (exact maximiser of ``J − σG``, Newton) and the best response
``λ = π*(x)``. The rule's reward step is compared with the closed form of eq. (11) (Danskin;
``tabular.estimators_penalty.hessian_free_grad_exact``). Measured (1024 envs × 1000 steps, episodes of 10 steps,
20000 pairs): cosine 0.9998 (σ = 0.5) and 0.9986 (σ = 0.25); the DRLHF direction ``∇_φ G`` alone reaches only
0.949 / 0.937 (it lacks the penalty term). Against the exact hypergradient ``∇Φ`` (‖∇Φ‖ = 0.27) the rule reaches
0.998 / 0.999, DRLHF 0.965 / 0.947. Importance-weighted ``∇G`` at ``λ`` (``grad_G_at=star_follower``): 0.9998, ESS
0.98. The printed sign of Alg. 1 l.15 matches its own closed form (0.997), not eq. (11) (0.71). The proxy's bias
``‖∇Φ_σ − ∇Φ‖`` = 0.023 / 0.012 / 0.0048 for σ = 0.5 / 0.25 / 0.1, i.e. O(σ).
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from bilevel_rl.tabular.checks.penalty import HessianFreeEstimatorConfig as TabularHF
from bilevel_rl.tabular.checks.penalty import hessian_free_grad_exact, penalised_follower
from bilevel_rl.tabular.checks.sobirl import expected_trajectory_loss
from bilevel_rl.tabular.core.reward import grad_or_zeros
from bilevel_rl.tabular.lab.followers import SoftPolicyGradient
from bilevel_rl.tabular.lab.rule_lab import RuleLab, make_rule_lab
from bilevel_rl.upper.hessian_free import HessianFree, HessianFreeConfig
from tests.helpers import TINY, cli, leader_step, metrics

STEPS, ENVS, PAIRS = 1000, 1024, 20_000


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(a @ b / (a.norm() * b.norm()))


def grad_G(lab: RuleLab, pi: torch.Tensor) -> torch.Tensor:
    """``∇_φ G(φ, π)`` at a fixed policy (trajectory enumeration)."""
    x = lab.x.detach().clone().requires_grad_(True)
    return grad_or_zeros(expected_trajectory_loss(x, pi, lab.reward_fn, lab.mdp, lab.loss), x)


def rule_step(sigma: float, **config) -> tuple[RuleLab, dict[str, float], torch.Tensor, torch.Tensor, torch.Tensor]:
    """One SGD step (lr 1, one minibatch) with ``λ' = π*_σ(x)``, ``λ = π*(x)``: ``(lab, metrics, d, λ', λ)``."""
    lab = make_rule_lab(seed=0, episode_length=10, n_envs=ENVS, follower_cls=SoftPolicyGradient, lr=1e-12, updates=1)
    pi_sigma = penalised_follower(lab.x.detach(), lab.reward_fn, lab.mdp, lab.loss, sigma)
    pi_star = lab.optimal_policy()
    rule = HessianFree(
        HessianFreeConfig(
            optimizer="sgd",
            lr=1.0,
            weight_decay=0.0,
            batch_size=PAIRS,
            sigma=sigma,
            best_response_steps=STEPS * ENVS,
            **config,
        )
    )
    rule.attach(lab.follower, lab.reward_model)
    assert isinstance(lab.follower, SoftPolicyGradient) and isinstance(rule.best_response.follower, SoftPolicyGradient)
    with torch.no_grad():
        lab.follower.theta.copy_(torch.log(pi_sigma))
        rule.best_response.follower.theta.copy_(torch.log(pi_star))
    batch = lab.on_policy_batch(STEPS)  # the main follower λ' samples; its pairs are the buffer
    buffer = lab.buffer(PAIRS, torch.Generator().manual_seed(1))
    x0 = lab.x.detach().clone()
    out = rule.update(leader_step(buffer, 1, np.random.default_rng(0), batch=batch, iteration=1))
    step = x0 - lab.x.detach()
    lab.x.data.copy_(x0)
    return lab, out, step, pi_sigma, pi_star


@pytest.mark.parametrize("sigma", [0.5, 0.25])
def test_direction_matches_eq11_and_the_penalty_term_matters(sigma):
    lab, _, d, pi_sigma, pi_star = rule_step(sigma)
    exact = hessian_free_grad_exact(
        lab.x.detach(), lab.reward_fn, pi_star, pi_sigma, lab.mdp, lab.loss, TabularHF(sigma)
    )
    assert cosine(d, exact) >= 0.99
    assert cosine(grad_G(lab, pi_sigma), exact) < 0.99  # DRLHF's direction (no penalty term) does not get there
    assert cosine(d, lab.exact_hypergradient()) >= 0.99  # and the proxy's gradient is close to the hypergradient


def test_grad_G_at_star_follower_importance_weights_the_pairs():
    lab, out, d, pi_sigma, pi_star = rule_step(0.5, grad_G_at="star_follower")
    exact = hessian_free_grad_exact(lab.x.detach(), lab.reward_fn, pi_star, pi_sigma, lab.mdp, lab.loss, TabularHF(0.5))
    exact = exact - grad_G(lab, pi_sigma) + grad_G(lab, pi_star)  # eq. (11) as printed: ∇_φ G at λ = λ*(φ)
    assert cosine(d, exact) >= 0.99
    assert out["upper/is_ess_fraction"] > 0.9


def test_printed_sign_follows_alg1_line15_and_warns(caplog):
    with caplog.at_level(logging.WARNING):
        lab, _, d, pi_sigma, pi_star = rule_step(0.5, penalty_sign="printed")
    assert "penalty_sign=printed" in caplog.text
    args = (lab.x.detach(), lab.reward_fn, pi_star, pi_sigma, lab.mdp, lab.loss)
    assert cosine(d, hessian_free_grad_exact(*args, TabularHF(0.5, sign="alg1_printed"))) >= 0.99
    assert cosine(d, hessian_free_grad_exact(*args, TabularHF(0.5))) < 0.99


def test_proxy_bias_is_order_sigma():
    """``‖∇Φ_σ − ∇Φ‖ / σ`` is about constant: the rule's target approaches the exact hypergradient as σ → 0."""
    lab = make_rule_lab(seed=0)
    x, pi_star, exact = lab.x.detach(), lab.optimal_policy(), lab.exact_hypergradient()
    errors = []
    for sigma in (0.5, 0.25, 0.1):
        pi_sigma = penalised_follower(x, lab.reward_fn, lab.mdp, lab.loss, sigma)
        hf = hessian_free_grad_exact(x, lab.reward_fn, pi_star, pi_sigma, lab.mdp, lab.loss, TabularHF(sigma))
        errors.append(float((hf - exact).norm()))
    ratios = np.array(errors) / np.array([0.5, 0.25, 0.1])
    assert errors[0] > errors[1] > errors[2] and ratios.max() / ratios.min() < 1.5, errors
    assert errors[0] < 0.2 * float(exact.norm())


def test_coefficients_and_main_follower_role():
    rule = HessianFree(HessianFreeConfig(sigma=0.25))
    assert rule.penalty_coefficient() == 4.0 and rule.policy_loss_coefficient() == 0.25  # PBRL-value, λ = 1/σ
    assert HessianFree(HessianFreeConfig(sigma=0.25, penalty_sign="printed")).penalty_coefficient() == -4.0
    lab = make_rule_lab(seed=0, follower_cls=SoftPolicyGradient)
    rule.attach(lab.follower, lab.reward_model)
    assert set(rule.auxiliary_followers()) == {"best_response"} and rule.best_response is not lab.follower
    assert lab.follower._extra == rule.policy_loss  # the main follower is λ' (J − σG)
    assert rule.best_response.follower._extra is None  # type: ignore[union-attr]  # λ trains on J only (Alg. 3 l.6)


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"sigma": 0.0}, "upper.sigma"),
        ({"penalty_sign": "minus"}, "upper.penalty_sign"),
        ({"grad_G_at": "both"}, "upper.grad_G_at"),
        ({"policy_loss_scale": -1.0}, "upper.policy_loss_scale"),
    ],
)
def test_bad_hyperparameters_are_refused(kwargs, key):
    with pytest.raises(ValueError, match=key):
        HessianFreeConfig(**kwargs)


def test_cli_refuses_bad_sigma_with_one_line(tmp_path):
    proc = cli(*TINY, "upper=hessian_free", "upper.sigma=0", f"hydra.run.dir={tmp_path / 'r'}", check=False)
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and "upper.sigma" in lines[0], proc.stderr


def test_tiny_hopper_sac_run(tmp_path):
    hopper = [o for o in TINY if o != "env=pendulum"] + ["env.id=Hopper-v5"]  # exp=quickstart: follower=sac
    cli(*hopper, "upper=hessian_free", f"hydra.run.dir={tmp_path / 'hf'}")
    df = metrics(tmp_path / "hf")
    assert df["env_steps"].iloc[-1] == 1000
    later = df.iloc[1:]
    for col in ("upper/sigma", "upper/penalty_grad_norm", "upper/penalty_estimate", "upper/bt_loss"):
        assert np.isfinite(later[col]).all(), col
    assert np.isfinite(df["follower/extra_policy_loss"].iloc[2:]).all()
    assert (tmp_path / "hf" / "checkpoints" / "latest").exists()  # saved with the best response each iteration
