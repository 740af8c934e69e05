"""Penalty-gradient estimators: PBRL value / Bellman penalties and the Hessian-free penalty method.

Both methods replace the lower-level constraint by a penalty and only need *first-order* ``x``-gradients of
values at fixed policies. In the RLHF / reward-shaping setting (reward ``r_x``, ``x``-free dynamics) these are
discounted sums of ``∇r`` along rollouts (PBRL eq. C.1, C.10; Hessian-free Lemma 5, eq. 12):

    ∇_x V^π(ρ)  = E[Σ_t γ^t ∇r(s_t, a_t) | s_0 ~ ρ, π]                = Σ d^π ∇r,
    ∇_x Q^π(s,a) = E[Σ_t γ^t ∇r(s_t, a_t) | s_0 = s, a_0 = a, π]        = Σ D^π[s, a] ∇r.

Values are the entropy-regularised ones of the lab (``h`` = negative entropy, weight ``τ``); the regulariser does
not depend on ``x``, so it changes the penalties but not these ``x``-gradient formulas.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch

from bilevel_rl.tabular.checks.sobirl import TrajectoryLoss, expected_trajectory_loss, sample_loss_tuples
from bilevel_rl.tabular.core.occupancy import occupancy, state_action_resolvent
from bilevel_rl.tabular.core.reward import RewardFn, grad_or_zeros, reward_vjp
from bilevel_rl.tabular.core.sampling import RolloutConfig, gradient_return_visits, sample_states
from bilevel_rl.tabular.core.soft_mdp import SoftMDP, policy_evaluation, soft_value, solve_soft


@dataclass
class PenaltyConfig:
    """Monte-Carlo sizes of a penalty-gradient estimate.

    Attributes:
        num_rollouts: ``B``, rollouts per policy (both rollout batches have this size).
        rollout: truncation of the discounted sums (PBRL uses length-5 MC in its experiments, App. E.1; a
            fixed ``H`` leaves an ``O(γ^H)`` bias, Hessian-free §4 after eq. 12; geometric truncation is
            unbiased).
        num_pairs: trajectory tuples for ``∇_x Ĝ`` (Hessian-free method only).
    """

    num_rollouts: int = 4096
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    num_pairs: int = 4096


def discounted_reward_gradient_table(
    mdp: SoftMDP,
    pi: torch.Tensor,
    cfg: PenaltyConfig,
    generator: torch.Generator,
    first_policy: torch.Tensor | None = None,
) -> torch.Tensor:
    """Visit weights ``W (S, A)`` of ``B`` rollouts from ``ρ`` so that ``Σ W ∇r`` estimates ``∇_x V^π(ρ)``.

    This is ``mean_j DR_x(τ_j)`` with ``DR_x(τ) = Σ_t γ^t r_x(s_t, a_t)`` (PBRL eq. C.1; Hessian-free Alg. 1
    l. 12). With ``first_policy`` the first action is drawn from it and later ones from ``pi`` (PBRL's mixed rollouts).
    """
    s0 = sample_states(mdp.rho, cfg.num_rollouts, generator)
    visits = gradient_return_visits(mdp, pi, s0, cfg.rollout, generator, first_policy=first_policy)
    return visits.table(mdp.num_states, mdp.num_actions) / cfg.num_rollouts


def value_gradient_difference(
    mdp: SoftMDP,
    pi_plus: torch.Tensor,
    pi_minus: torch.Tensor,
    cfg: PenaltyConfig,
    generator: torch.Generator,
    first_minus: torch.Tensor | None = None,
) -> torch.Tensor:
    """Visit weights of ``∇_x V^{π+}(ρ) − ∇_x V^{π−}(ρ)`` from two independent batches of ``B`` rollouts.

    The ``π−`` rollouts take their first action from ``first_minus`` when given (PBRL's mixed rollouts). Every
    penalty gradient of this module is one of these differences: PBRL's value penalty (``π̂`` vs ``π_y``), its
    Bellman penalty (``π̂`` vs ``π̂`` after ``a_0 ~ π_y``) and the Hessian-free method (``π*`` vs ``π_σ``).
    """
    W = discounted_reward_gradient_table(mdp, pi_plus, cfg, generator)
    return W - discounted_reward_gradient_table(mdp, pi_minus, cfg, generator, first_policy=first_minus)


def value_penalty(x: torch.Tensor, reward_fn: RewardFn, pi_y: torch.Tensor, mdp: SoftMDP) -> torch.Tensor:
    """PBRL value penalty ``p(x, y) = max_π V^π_{r_x}(ρ) − V^{π_y}_{r_x}(ρ) >= 0`` (PBRL eq. 3.2)."""
    r = reward_fn(x)
    return (mdp.rho * (solve_soft(r, mdp).V - policy_evaluation(pi_y, r, mdp)[1])).sum()


def value_penalty_grad_exact(
    x: torch.Tensor, reward_fn: RewardFn, pi_y: torch.Tensor, pi_hat: torch.Tensor, mdp: SoftMDP
) -> torch.Tensor:
    """Closed form of PBRL Lemma 7(a) with ``π* → π̂`` (eq. C.29): ``Σ (d^{π̂} − d^{π_y}) ∇r``.

    With ``π̂ = π*(x)`` it is ``∇_x p(x, y)`` exactly (Danskin, Lemma 6).
    """
    return reward_vjp(x, reward_fn, occupancy(pi_hat.detach(), mdp) - occupancy(pi_y.detach(), mdp))


def value_penalty_grad_estimate(
    x: torch.Tensor,
    reward_fn: RewardFn,
    pi_y: torch.Tensor,
    pi_hat: torch.Tensor,
    mdp: SoftMDP,
    cfg: PenaltyConfig,
    generator: torch.Generator,
) -> torch.Tensor:
    """Stochastic PBRL value-penalty ``x``-gradient (Lemma 7(a), eq. C.29).

    ``∇̂_x p = mean DR_x(τ̂) − mean DR_x(τ_y)`` with independent rollouts ``τ̂ ~ π̂`` and ``τ_y ~ π_y`` from ``ρ``.
    Descending it raises ``r_x`` on ``π_y``'s trajectories and lowers it on the best response's.

    Args:
        x: leader variable.
        reward_fn: ``x ↦ r_x``.
        pi_y: the penalised follower ``π_y``.
        pi_hat: approximate best response ``π̂ ≈ π*(x)``.
        mdp: dynamics.
        cfg: sizes.
        generator: the random stream.
    """
    return reward_vjp(x, reward_fn, value_gradient_difference(mdp, pi_hat, pi_y, cfg, generator))


def bellman_penalty(x: torch.Tensor, reward_fn: RewardFn, pi_y: torch.Tensor, mdp: SoftMDP) -> torch.Tensor:
    """PBRL Bellman penalty ``p = g(x, y) − v(x)`` (eqs. 3.5–3.7) with negative-entropy ``h``.

    ``g = E_{s~ρ}[⟨y_s, −Q*(s, ·)⟩ + τ Σ_a y log y]`` and ``v = min_y g = −V*(ρ)``; equivalently
    ``p = τ E_{s~ρ} KL(π_y(·|s) ‖ π*(·|s))`` (``docs/theory/penalty_methods.md`` §1.8).
    """
    sol_Q = _soft_q(reward_fn(x), mdp)
    g = (mdp.rho * (pi_y * (mdp.tau * torch.log(pi_y) - sol_Q)).sum(1)).sum()
    return g + (mdp.rho * soft_value(sol_Q, mdp.tau)).sum()


def _soft_q(r: torch.Tensor, mdp: SoftMDP) -> torch.Tensor:
    """``Q*(r) = Q^{π*}(r)`` with ``π*`` held fixed, so autograd gives the fixed-policy (envelope) ``r``-gradient."""
    sol = solve_soft(r, mdp)
    Q, _ = policy_evaluation(sol.pi, r, mdp)
    return Q


def bellman_penalty_grad_exact(
    x: torch.Tensor, reward_fn: RewardFn, pi_y: torch.Tensor, pi_hat: torch.Tensor, mdp: SoftMDP
) -> torch.Tensor:
    """Closed form of PBRL Lemma 9(a) with ``π* → π̂`` (below eq. C.31).

    ``∇_x p = E_{s~ρ, a~π̂}[∇_x Q^{π̂}(s, a)] − E_{s~ρ, a~π_y}[∇_x Q^{π̂}(s, a)]`` with the fixed-policy
    ``∇_x Q^{π̂} = Σ D^{π̂}[s, a] ∇r``; exact ``∇_x p`` at ``π̂ = π*(x)`` (Lemma 8).
    """
    D = state_action_resolvent(pi_hat.detach(), mdp)
    start = mdp.rho[:, None] * (pi_hat.detach() - pi_y.detach())
    return reward_vjp(x, reward_fn, torch.einsum("sa,sabc->bc", start, D))


def bellman_penalty_grad_estimate(
    x: torch.Tensor,
    reward_fn: RewardFn,
    pi_y: torch.Tensor,
    pi_hat: torch.Tensor,
    mdp: SoftMDP,
    cfg: PenaltyConfig,
    generator: torch.Generator,
) -> torch.Tensor:
    """Stochastic PBRL Bellman-penalty ``x``-gradient with mixed rollouts (Lemma 9(a); App. C.7 after eq. C.31).

    ``∇̂_x p = mean DR_x(τ̂) − mean DR_x(τ_mix)`` where ``τ̂`` follows ``π̂`` throughout and ``τ_mix`` takes
    ``a_0 ~ π_y(s_0)`` and then ``π̂`` (only the first action differs), both from ``s_0 ~ ρ``.

    Args:
        x: leader variable.
        reward_fn: ``x ↦ r_x``.
        pi_y: the penalised follower.
        pi_hat: approximate best response.
        mdp: dynamics.
        cfg: sizes.
        generator: the random stream.
    """
    return reward_vjp(x, reward_fn, value_gradient_difference(mdp, pi_hat, pi_hat, cfg, generator, first_minus=pi_y))


# ---------------------------------------------------------------------------------------------------------------
# Hessian-free penalty method (Gaur et al. 2025, arXiv 2503.17644 v1)


def follower_value(x: torch.Tensor, pi: torch.Tensor, reward_fn: RewardFn, mdp: SoftMDP) -> torch.Tensor:
    """Lower objective ``J(x, π) = V^π_{r_x}(ρ)`` (entropy-regularised so that its maximiser is unique)."""
    return (mdp.rho * policy_evaluation(pi, reward_fn(x), mdp)[1]).sum()


@dataclass
class PenalisedFollowerConfig:
    """Solver settings for ``π_σ = argmax_π J(x, π) − σ G(x, π)`` (damped Newton on per-state softmax logits).

    Attributes:
        max_iter: Newton iterations.
        tolerance: stopping tolerance on the gradient norm with respect to the logits.
        eigen_floor: smallest curvature magnitude used in the Newton step (the logit Hessian is singular along
            per-state shifts, which the gradient does not excite).
    """

    max_iter: int = 100
    tolerance: float = 1e-12
    eigen_floor: float = 1e-8


def penalised_follower(
    x: torch.Tensor,
    reward_fn: RewardFn,
    mdp: SoftMDP,
    loss: TrajectoryLoss,
    sigma: float,
    cfg: PenalisedFollowerConfig | None = None,
) -> torch.Tensor:
    """``π*_σ(x) = argmax_π h_σ(x, π)``, ``h_σ = J − σ G`` (Hessian-free eq. 10 and §3.1), started at ``π*(x)``.

    Saddle-free Newton ascent (curvatures replaced by their magnitudes, floored) with backtracking on the logits
    ``θ`` (``π = softmax θ``), so every step is an ascent direction even where ``h_σ`` is not concave.
    """
    cfg = cfg or PenalisedFollowerConfig()
    x = x.detach()
    r = reward_fn(x).detach()

    def objective(theta: torch.Tensor) -> torch.Tensor:
        pi = torch.softmax(theta, dim=1)
        J = (mdp.rho * policy_evaluation(pi, r, mdp)[1]).sum()
        return J - sigma * expected_trajectory_loss(x, pi, lambda _: r, mdp, loss)

    theta = torch.log(solve_soft(r, mdp).pi)
    for _ in range(cfg.max_iter):
        th = theta.clone().requires_grad_(True)
        value = objective(th)
        (grad,) = torch.autograd.grad(value, th)
        g = grad.reshape(-1)
        if g.norm() < cfg.tolerance:
            break
        hess = torch.autograd.functional.hessian(objective, theta).reshape(g.numel(), g.numel())
        curv, basis = torch.linalg.eigh(-hess)
        step = basis @ ((basis.T @ g) / curv.abs().clamp_min(cfg.eigen_floor))
        t = 1.0
        while t > 1e-12:
            candidate = theta + t * step.reshape(theta.shape)
            if objective(candidate) >= value + 1e-4 * t * (step @ g):
                break
            t *= 0.5
        theta = candidate
    return torch.softmax(theta, dim=1)


def hessian_free_proxy(
    x: torch.Tensor,
    reward_fn: RewardFn,
    mdp: SoftMDP,
    loss: TrajectoryLoss,
    sigma: float,
    pi_sigma: torch.Tensor | None = None,
) -> torch.Tensor:
    """The proxy ``Φ_σ(x) = G(x, π_σ) + (J(x, π*) − J(x, π_σ)) / σ`` (eq. 10) at the exact minimiser ``π_σ``."""
    pi_sigma = penalised_follower(x, reward_fn, mdp, loss, sigma) if pi_sigma is None else pi_sigma
    pi_star = solve_soft(reward_fn(x), mdp).pi
    gap = follower_value(x, pi_star, reward_fn, mdp) - follower_value(x, pi_sigma, reward_fn, mdp)
    return expected_trajectory_loss(x, pi_sigma, reward_fn, mdp, loss) + gap / sigma


PenaltySign = Literal["eq11", "alg1_printed"]


@dataclass
class HessianFreeEstimatorConfig:
    """Hyperparameters of the Hessian-free reward step.

    Attributes:
        sigma: penalty constant ``σ > 0`` (the proxy's bias is ``O(σ)``, its variance ``O(1/σ²)``).
        sign: ``"eq11"`` (correct, Danskin) or ``"alg1_printed"`` (Alg. 1 l. 15 / Alg. 3 l. 9; erratum, for
            reproduction only).
    """

    sigma: float = 0.1
    sign: PenaltySign = "eq11"

    def __post_init__(self) -> None:
        if self.sigma <= 0:
            raise ValueError(f"sigma must be > 0, got {self.sigma}")
        if self.sign not in ("eq11", "alg1_printed"):
            raise ValueError(f"unknown sign convention {self.sign!r}")

    @property
    def penalty_coefficient(self) -> float:
        """``±1/σ``, the factor of ``∇_x J(x, π*) − ∇_x J(x, π_σ)``."""
        return (1.0 if self.sign == "eq11" else -1.0) / self.sigma


def hessian_free_grad_exact(
    x: torch.Tensor,
    reward_fn: RewardFn,
    pi_star: torch.Tensor,
    pi_sigma: torch.Tensor,
    mdp: SoftMDP,
    loss: TrajectoryLoss,
    hf: HessianFreeEstimatorConfig,
) -> torch.Tensor:
    """Closed form ``∇Φ_σ = ∇_x G(x, π_σ) + σ^{-1}(∇_x J(x, π*) − ∇_x J(x, π_σ))`` (eq. 11; Danskin).

    The derivation by Danskin's theorem is in ``docs/theory/penalty_methods.md`` §2.1.

    ``∇_x G`` is at fixed ``π_σ`` (trajectory enumeration) and ``∇_x J(x, π) = Σ d^π ∇r``. ``hf.sign =
    "alg1_printed"`` flips the penalty term as Alg. 1 l. 15 / Alg. 3 l. 9 print it (for reproducing the erratum).
    """
    xg = x.detach().requires_grad_(True)
    grad_G = grad_or_zeros(expected_trajectory_loss(xg, pi_sigma.detach(), reward_fn, mdp, loss), xg)
    W = (occupancy(pi_star.detach(), mdp) - occupancy(pi_sigma.detach(), mdp)) * hf.penalty_coefficient
    return grad_G + reward_vjp(x, reward_fn, W)


def hessian_free_grad_estimate(
    x: torch.Tensor,
    reward_fn: RewardFn,
    pi_star: torch.Tensor,
    pi_sigma: torch.Tensor,
    mdp: SoftMDP,
    loss: TrajectoryLoss,
    hf: HessianFreeEstimatorConfig,
    cfg: PenaltyConfig,
    generator: torch.Generator,
) -> torch.Tensor:
    """Stochastic reward gradient ``d_t`` of the Hessian-free penalty method (Alg. 1 l. 11–15, sign corrected).

    ``d_t = ∇_x Ĝ(x; pairs ~ π_σ) + σ^{-1}(∇_x Ĵ(x, π*) − ∇_x Ĵ(x, π_σ))`` with
    ``∇_x Ĵ(x, π) = (1/B) Σ_j Σ_i γ^{i−1} ∇r(s_{ij}, a_{ij})`` on ``B`` rollouts of ``π`` from ``ρ`` (l. 12, 14).

    Corrections (``docs/theory/penalty_methods.md`` §2.1–2.2, §2.4): Alg. 1 l. 15 prints ``−σ^{-1}(…)``; eq. (11),
    Danskin's theorem and PBRL give ``+σ^{-1}(…)``, and the printed sign makes ``x`` ascend the penalty. ``∇_x Ĝ`` is
    taken on pairs from ``π_σ`` (Danskin-exact) instead of ``π*`` (both are ``O(σ)`` from ``∇Φ``). ``G`` is the
    Bradley–Terry BCE (any :class:`TrajectoryLoss`) instead of eq. (6)'s linear probability.

    Args:
        x: leader variable (the paper's ``φ``).
        reward_fn: ``x ↦ r_x``.
        pi_star: the RL follower ``π_λ ≈ π*(x)``.
        pi_sigma: the penalised follower ``π_λ' ≈ π*_σ(x)``.
        mdp: dynamics.
        loss: the upper loss ``l`` whose expectation is ``G``.
        hf: ``σ`` and the sign convention.
        cfg: Monte-Carlo sizes.
        generator: the random stream.
    """
    states, actions = sample_loss_tuples(pi_sigma, mdp, loss, cfg.num_pairs, generator)
    xg = x.detach().requires_grad_(True)
    grad_G = grad_or_zeros(loss(xg, reward_fn(xg), states, actions).mean(), xg)
    W = value_gradient_difference(mdp, pi_star, pi_sigma, cfg, generator)
    return grad_G + reward_vjp(x, reward_fn, W * hf.penalty_coefficient)
