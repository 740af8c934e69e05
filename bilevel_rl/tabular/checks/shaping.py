"""Exact checks of the reward-shaping estimators (``objective=leader_reward``) on a :class:`ShapingLab`.

* :func:`sample_gradients` runs a deep rule class unchanged on the lab: fresh on-policy batches of the follower's
  fixed policy ``π*(x)``, the objective's gather (exact critic), the rule's ``prepare`` and ``leader_loss``, and
  returns minus the loss gradient of each batch (the estimate of ``∇J``).
* :func:`first_step_expectation` is the exact mean of the estimators that keep only the first step of ``∂A_f``
  (HPGD with trace ``κ = 0``, SoBiRL's truncated eq. (99)): ``Σ_{s,a} d^π(s, a) Ā(s, a) (σ/λ)(∇r̃(s, a) −
  Σ_{a'} π(a'|s) ∇r̃(s, a'))`` plus the direct cost term; its distance from the exact hypergradient is their bias.
* :func:`penalty_expectation` is the exact value of PBRL's value-penalty direction ``λσ(∇V^{π̂} − ∇V^{π_y})`` for two
  fixed policies (Lemma 7(a)); :func:`penalty_step_samples` draws PBRL's leader-step estimates of it.
"""

from __future__ import annotations

import numpy as np
import torch

from bilevel_rl.objectives.leader_reward import follower_scale, shaping_cost
from bilevel_rl.tabular.core.occupancy import occupancy
from bilevel_rl.tabular.core.reward import linear_reward
from bilevel_rl.tabular.core.soft_mdp import policy_evaluation
from bilevel_rl.tabular.lab.followers import SoftPolicyGradient, TabularFollower
from bilevel_rl.tabular.lab.shaping_lab import ShapingLab, make_shaping_lab
from bilevel_rl.upper.base import LeaderStep
from bilevel_rl.upper.pbrl import PBRL, PBRLConfig
from bilevel_rl.upper.penalty import PenaltyInputs
from bilevel_rl.upper.preference_rule import PreferenceRule


def sample_gradients(
    lab: ShapingLab, rule: PreferenceRule, batches: int, steps_per_env: int, seed: int = 0
) -> torch.Tensor:
    """``(batches, d)`` per-batch estimates of ``∇J`` by ``rule`` (attached here; the follower's policy stays fixed)."""
    rule.attach(lab.follower, lab.model, lab.objective.data)
    rng = np.random.default_rng(seed)
    generator = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(batches):
        lab.follower.learn(steps_per_env * lab.follower.num_envs)  # the oracle re-solves the same reward: π fixed
        batch = lab.follower.collect(steps_per_env)
        lab.objective.gather(batch, 1, rng, lab.model)
        step = LeaderStep(lab.objective.data, batch, 1, 1, rng, generator)
        prepared, _ = rule.prepare(step)
        latest = lab.objective.latest
        assert latest is not None
        loss, _ = rule.leader_loss(latest, step, prepared)
        (grad,) = torch.autograd.grad(loss, lab.model.x)
        out.append(-grad.detach())
    return torch.stack(out)


def _direct_cost_gradient(lab: ShapingLab, d: torch.Tensor) -> torch.Tensor:
    """``−Σ d(s, a) β ∇cost(σ r̃_x(s, a))`` (zero without a cost)."""
    c = lab.config
    if c.cost == "none":
        return torch.zeros_like(lab.model.x)
    x = lab.model.x.detach().requires_grad_(True)
    paid = c.shaping_coef * linear_reward(x, lab.model.features)
    (g,) = torch.autograd.grad(-(d * c.cost_coef * shaping_cost(paid, c.cost)).sum(), x)
    return g


def first_step_expectation(lab: ShapingLab) -> torch.Tensor:
    """Exact mean of the first-step (``κ = 0``) estimators at the follower's policy (module docstring)."""
    pi, mdp = lab.follower.pi, lab.mdp
    Q, V = policy_evaluation(pi, lab.leader_table().detach(), mdp, regularised=False)
    adv = Q - V[:, None]
    d = occupancy(pi, mdp)
    scale = follower_scale(lab.model, lab.follower.reward_mix) / lab.follower.temperature
    x = lab.model.x.detach().requires_grad_(True)
    r = linear_reward(x, lab.model.features)
    centred = r - (pi * r).sum(1, keepdim=True)
    (g,) = torch.autograd.grad((d * adv * centred).sum() * scale, x)
    return g + _direct_cost_gradient(lab, d)


def penalty_expectation(lab: ShapingLab, best_response_pi: torch.Tensor, lam: float) -> torch.Tensor:
    """Exact ``−λσ(∇_x V^{π̂}_{r̃}(ρ) − ∇_x V^{π_y}_{r̃}(ρ))``, the ascent direction of PBRL's value-penalty step."""
    mdp = lab.mdp
    diff = occupancy(best_response_pi, mdp) - occupancy(lab.follower.pi, mdp)
    x = lab.model.x.detach().requires_grad_(True)
    sigma = follower_scale(lab.model, lab.follower.reward_mix)
    (g,) = torch.autograd.grad((diff * linear_reward(x, lab.model.features)).sum() * sigma * lam, x)
    return -g


def penalty_step_samples(seed: int, estimates: int = 60, lam: float = 2.0) -> tuple[torch.Tensor, torch.Tensor]:
    """PBRL's leader-step estimates ``(estimates, d)`` and the exact penalty direction (:func:`penalty_expectation`).

    A soft-policy-gradient follower on a shaping lab; the rule's ``prepare`` trains the best response, then the main
    follower is set to the uniform policy (far from the best response, so the direction is large) and each estimate
    is minus the gradient of ``leader_loss`` on fresh batches of both followers (100 steps per env).
    """
    lab = make_shaping_lab(seed=seed, follower_cls=SoftPolicyGradient, lr=0.5, updates=20)
    rule = PBRL(PBRLConfig(lam=lam, optimizer="sgd", best_response_steps=64 * 50))
    rule.attach(lab.follower, lab.model, lab.objective.data)
    rng, gen = np.random.default_rng(seed), torch.Generator().manual_seed(seed)
    batch = lab.follower.collect(50)
    lab.objective.gather(batch, 1, rng, lab.model)
    rule.prepare(LeaderStep(lab.objective.data, batch, 1, 1, rng, gen))  # trains the best response
    assert rule.best_response is not None and isinstance(lab.follower, TabularFollower)
    br = rule.best_response.follower
    assert isinstance(br, TabularFollower)
    lab.follower.pi = torch.full_like(lab.follower.pi, 1.0 / lab.follower.pi.shape[1])
    out = []
    for _ in range(estimates):
        main_batch, br_batch = lab.follower.sample(100), br.sample(100)
        lab.objective.gather(main_batch, 1, rng, lab.model)
        step = LeaderStep(lab.objective.data, main_batch, 1, 1, rng, gen)
        latest = lab.objective.latest
        assert latest is not None
        loss, _ = rule.leader_loss(latest, step, PenaltyInputs(main_batch, br_batch, gen))
        out.append(-torch.autograd.grad(loss, lab.model.x)[0])
    return torch.stack(out), penalty_expectation(lab, br.pi, lam=lam)
