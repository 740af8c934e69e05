"""HPGD hypergradient estimators (Thoma et al., NeurIPS 2024): Algorithms 1, 2, 5 and the critic/VJP form.

The follower plays the soft-optimal policy ``π*_x = softmax(Q*/λ)`` (``λ = mdp.tau``); Prop. 2 gives
``dπ*(a|s)/dx = λ^{-1} π*(a|s) ∂_x A^{π*}(s, a)`` where ``∂_x A`` is the derivative at *fixed* policy (HPGD §3.1).
Transitions and ``μ = ρ`` do not depend on ``x`` here, so every ``∇_x log P`` term of the paper vanishes and
Algorithm 2 needs no value tails, which only multiply ``∇_x log P`` (``docs/theory/hpgd_four_rooms.md`` §3.1).

Sign convention (``docs/theory/hpgd_four_rooms.md`` §1): the leader *minimises* ``F``. Eq. (8) / Algorithm 5 as
printed return ``∇(−F)``, the gradient of the leader's *return* (the proof of Prop. 1, App. E.6, differentiates
the return); every function here returns ``∇F``, the descent direction's negative, so that ``x ← x − α ∇F``
decreases ``F`` exactly like the other upper-level rules.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from bilevel_rl.tabular.core.occupancy import advantage_resolvent, occupancy
from bilevel_rl.tabular.core.reward import RewardFn, reward_vjp
from bilevel_rl.tabular.core.sampling import (
    RolloutConfig,
    Simulator,
    Visits,
    gradient_return_visits,
    rollout_until,
    sample_geometric,
    sample_states,
    sample_trajectories,
    visit_table,
)
from bilevel_rl.tabular.core.soft_mdp import DTYPE, SoftMDP, UpperFn, policy_evaluation, upper_partials

_GEOMETRIC = RolloutConfig(geometric=True)


def leader_values(pi: torch.Tensor, leader_reward: torch.Tensor, mdp: SoftMDP) -> tuple[torch.Tensor, torch.Tensor]:
    """*Unregularised* leader ``(Q̄^π, V̄^π)`` for the leader reward ``r̄`` (HPGD §3.3, after Prop. 1), differentiable."""
    return policy_evaluation(pi, leader_reward, mdp, regularised=False)


def decomposable_objective(x: torch.Tensor, pi: torch.Tensor, leader_reward_fn: RewardFn, mdp: SoftMDP) -> torch.Tensor:
    """``F(x, π) = −E_{s_0~ρ}^π[Σ_t γ^t r̄_x(s_t, a_t)] = −ρ·V̄^π`` (HPGD eq. 7), the leader *loss*."""
    return -(mdp.rho * leader_values(pi, leader_reward_fn(x), mdp)[1]).sum()


def hpgd_decomposable_exact(
    x: torch.Tensor, reward_fn: RewardFn, leader_reward_fn: RewardFn, pi: torch.Tensor, mdp: SoftMDP
) -> torch.Tensor:
    """Prop. 1 (eq. 8) in closed form at ``π``, returned as ``∇F`` (the printed eq. 8 is ``∇(−F)``).

    ``∇(−F) = Σ_{s,a} d^π(s, a) [λ^{-1} Q̄(s, a) ∂_x A^π(s, a) + ∇r̄(s, a)]`` with the discounted occupancy
    ``d^π`` from ``ρ``, ``∂_x A^π(s, a) = Σ (D^π[s, a] − D_V^π[s]) ∇r`` and no ``∇ log P`` term. At ``π = π*`` this
    equals the exact hypergradient of :func:`decomposable_objective`.
    """
    pi = pi.detach()
    with torch.no_grad():
        Qbar, _ = leader_values(pi, leader_reward_fn(x.detach()), mdp)
    d = occupancy(pi, mdp)
    W = advantage_resolvent(d * Qbar / mdp.tau, pi, mdp)
    return -(reward_vjp(x, reward_fn, W) + reward_vjp(x, leader_reward_fn, d))


def advantage_gradient_visits(
    mdp: SoftMDP,
    pi: torch.Tensor,
    s: torch.Tensor,
    a: torch.Tensor,
    generator: torch.Generator,
    terminal: torch.Tensor | None = None,
) -> tuple[Visits, Visits]:
    """HPGD Algorithm 2 (``GradientEstimator``, App. D) for a batch of ``(s, a)``, as visit weights.

    ``∂̂_x Q(s, a) = Σ_{t=0}^{T_Q} ∇r(s_t, a_t)`` on a rollout from the forced start ``(s, a)`` and ``∂̂_x V(s)`` the
    same from ``s`` with ``a_0 ~ π``, with independent ``T_Q, T_V ~ Geo(1 − γ)``; ``∂̂_x A = ∂̂_x Q − ∂̂_x V`` is
    unbiased for ``∂_x A^π(s, a)`` (Prop. 3). The ``γ/(1−γ) ∇log P · V`` tails are omitted: ``P`` is ``x``-free.
    Rollouts stop on entering a ``terminal`` state (absorbing, with ``∇r = 0`` there).

    Returns:
        ``(Q visits, V visits)``; row ``n`` of their difference is the estimate for ``(s[n], a[n])``.
    """
    return (
        gradient_return_visits(mdp, pi, s, _GEOMETRIC, generator, a0=a, terminal=terminal),
        gradient_return_visits(mdp, pi, s, _GEOMETRIC, generator, terminal=terminal),
    )


@dataclass
class GradientWeights:
    """An estimate ``ĝ = Σ W_r ∇_x r_x + Σ W_r̄ ∇_x r̄_x`` of the leader's ascent direction ``−∇F`` (HPGD eq. 8).

    Attributes:
        W_r: ``(S, A)`` weights of the follower reward's Jacobian.
        W_rbar: ``(S, A)`` weights of the leader reward's Jacobian.
        env_steps: state–action pairs sampled for the estimate.
    """

    W_r: torch.Tensor
    W_rbar: torch.Tensor
    env_steps: int

    def ascent(self, x: torch.Tensor, reward_fn: RewardFn, leader_reward_fn: RewardFn) -> torch.Tensor:
        """``ĝ`` at ``x`` (two vector–Jacobian products; the ``(S, A, d)`` Jacobians are never formed)."""
        return reward_vjp(x, leader_reward_fn, self.W_rbar) + reward_vjp(x, reward_fn, self.W_r)


def alg5_weights(
    mdp: SoftMDP,
    pi: torch.Tensor,
    rbar: torch.Tensor,
    num_samples: int,
    generator: torch.Generator,
    terminal: torch.Tensor | None = None,
) -> GradientWeights:
    """The mean of ``num_samples`` independent outputs of HPGD Algorithm 5 (Algorithm 2 inside; App. D, Prop. 4).

    Per sample: ``T ~ Geo(1 − γ)``, ``T' ~ Geo(1 − γ^{1/2})``, a trajectory ``(s_0, a_0, …, s_{T+T'})`` from ``ρ``,
    an independent ``∂̂A(s_T, a_T)`` (Algorithm 2, two fresh restarts) and ``Ĝ = Σ_{t'=T}^{T+T'} γ^{(t'−T)/2}
    r̄(s_{t'}, a_{t'})`` (unbiased for ``Q̄(s_T, a_T)``); then ``ĝ = Σ_{t≤T} ∇r̄(s_t, a_t) + (λ(1−γ))^{-1}
    ∂̂A(s_T, a_T) Ĝ`` estimates ``∇(−F)``. The ``∇ log P`` term is zero (``x``-free transitions).

    Corrections of the printed text: the extracted pseudocode writes ``r`` for the leader reward ``r̄`` and
    ``γ^{(t−T)/2}`` for ``γ^{(t'−T)/2}``; the output is ``∇(−F)``, not the ``dF/dx`` its label claims.

    States flagged ``terminal`` must be absorbing with ``∇r = 0`` and ``r̄ = 0`` there: rollouts stop on entering
    them, and a sample whose trajectory ends before ``T`` contributes its direct term only.

    Args:
        mdp: dynamics, ``ρ``, ``γ`` and ``λ = mdp.tau``.
        pi: follower policy (``π*`` or the oracle's ``π^o``).
        rbar: ``(S, A)`` leader reward ``r̄_x`` at the current ``x``.
        num_samples: samples averaged.
        generator: the random stream.
        terminal: optional ``(S,)`` terminal mask.
    """
    S, A, N = mdp.num_states, mdp.num_actions, num_samples
    T = sample_geometric(N, 1.0 - mdp.gamma, generator)
    T2 = sample_geometric(N, 1.0 - math.sqrt(mdp.gamma), generator)
    traj = rollout_until(Simulator(mdp, pi, terminal), sample_states(mdp.rho, N, generator), T + T2, generator)
    lag = traj.steps - T[traj.rows]
    head = lag <= 0  # t <= T: direct term
    tail = lag >= 0  # T <= t <= T + T': return estimate Ĝ
    G = torch.zeros(N, dtype=DTYPE).index_add_(
        0, traj.rows[tail], math.sqrt(mdp.gamma) ** lag[tail].to(DTYPE) * rbar[traj.states[tail], traj.actions[tail]]
    )
    at_T = lag == 0  # rows still running at time T (otherwise s_T is terminal and the term is 0)
    reached = torch.zeros(N, dtype=torch.bool).index_fill_(0, traj.rows[at_T], True)
    s_T = torch.zeros(N, dtype=torch.long).index_copy_(0, traj.rows[at_T], traj.states[at_T])[reached]
    a_T = torch.zeros(N, dtype=torch.long).index_copy_(0, traj.rows[at_T], traj.actions[at_T])[reached]
    q_vis, v_vis = advantage_gradient_visits(mdp, pi, s_T, a_T, generator, terminal)
    coef = G[reached] / (mdp.tau * (1.0 - mdp.gamma) * N)
    W_r = q_vis.table(S, A, coef) - v_vis.table(S, A, coef)
    W_rbar = visit_table(traj.states, traj.actions, head.to(DTYPE) / N, S, A)
    return GradientWeights(W_r, W_rbar, int(traj.rows.numel() + q_vis.rows.numel() + v_vis.rows.numel()))


@dataclass
class HPGDEstimatorConfig:
    """Sample size of an HPGD estimate.

    Attributes:
        num_samples: independent copies of the single-sample estimator that are averaged (Algorithm 1 uses one
            ``(ξ, s, a)`` per step; averaging independent copies keeps it unbiased and is our extension).
    """

    num_samples: int = 4096


def hpgd_decomposable_estimate(
    x: torch.Tensor,
    reward_fn: RewardFn,
    leader_reward_fn: RewardFn,
    pi: torch.Tensor,
    mdp: SoftMDP,
    cfg: HPGDEstimatorConfig,
    generator: torch.Generator,
) -> torch.Tensor:
    """Unbiased estimate of ``∇F`` for the decomposable leader loss (Algorithm 5, Prop. 1 / eq. 8).

    ``−`` the gradient of :func:`alg5_weights` (which estimates ``∇(−F)``, Prop. 4) with ``cfg.num_samples``
    samples.

    Args:
        x: leader variable.
        reward_fn: follower reward ``x ↦ r_x (S, A)``.
        leader_reward_fn: leader reward ``x ↦ r̄_x (S, A)`` (may ignore ``x``).
        pi: follower policy (``π*`` or the oracle's ``π^o``).
        mdp: dynamics; ``λ = mdp.tau``.
        cfg: sample size.
        generator: the random stream.

    Returns:
        The estimate of ``∇_x F`` (descent convention).
    """
    with torch.no_grad():
        rbar = leader_reward_fn(x.detach())
    return -alg5_weights(mdp, pi, rbar, cfg.num_samples, generator).ascent(x, reward_fn, leader_reward_fn)


def hpgd_estimate(
    x: torch.Tensor,
    reward_fn: RewardFn,
    upper_fn: UpperFn,
    pi: torch.Tensor,
    mdp: SoftMDP,
    state_dist: torch.Tensor,
    cfg: HPGDEstimatorConfig,
    generator: torch.Generator,
) -> torch.Tensor:
    """HPGD's general estimator of ``dF/dx`` (Algorithm 1 with Algorithm 2; Theorem 1, eq. 5).

    ``ĝ = ∂_1 f(x, π) + (λ ν(s))^{-1} ∂_2 f(x, π)/∂π(a|s) · ∂̂A(s, a)`` with ``s ~ ν`` (full support) and
    ``a ~ π(·|s)``; averaged over ``cfg.num_samples`` draws. Unbiased for ``dF/dx`` at ``π = π*`` (the leader knows
    ``∂f`` here; the ``1/ν(s)`` factor makes the variance scale with ``1/min_s ν(s)``).

    Args:
        x: leader variable.
        reward_fn: follower reward ``x ↦ r_x``.
        upper_fn: ``(x, π) ↦ f(x, π)``, a differentiable scalar loss.
        pi: follower policy.
        mdp: dynamics; ``λ = mdp.tau``.
        state_dist: ``ν (S,)`` with full support.
        cfg: sample size.
        generator: the random stream.
    """
    if not bool((state_dist > 0).all()):
        raise ValueError("state_dist must have full support (HPGD Thm. 1)")
    S, A, N = mdp.num_states, mdp.num_actions, cfg.num_samples
    direct, g_pi = upper_partials(x, pi, upper_fn)
    s = sample_states(state_dist, N, generator)
    a = Simulator(mdp, pi).act(s, generator)
    q_vis, v_vis = advantage_gradient_visits(mdp, pi, s, a, generator)
    coef = g_pi[s, a] / (mdp.tau * state_dist[s] * N)
    return direct + reward_vjp(x, reward_fn, q_vis.table(S, A, coef) - v_vis.table(S, A, coef))


@dataclass
class CriticVJPConfig:
    """Sizes of the critic-based VJP estimator (``docs/theory/hpgd_four_rooms.md`` §3.5).

    Attributes:
        num_episodes: on-policy episodes from ``ρ``.
        horizon: episode length ``L``; the truncation bias is ``O(L γ^L)``.
    """

    num_episodes: int = 4096
    horizon: int = 40


def hpgd_critic_vjp_estimate(
    x: torch.Tensor,
    reward_fn: RewardFn,
    leader_reward_fn: RewardFn,
    pi: torch.Tensor,
    mdp: SoftMDP,
    leader_advantage: torch.Tensor,
    cfg: CriticVJPConfig,
    generator: torch.Generator,
) -> torch.Tensor:
    """The scalable on-policy form of Prop. 1 used by the deep HPGD rule, returning ``∇F``.

    This form is our construction, not the paper's (``docs/theory/hpgd_four_rooms.md`` §3.5).

    With a leader critic ``Ā(s, a)`` and on-policy episodes from ``ρ``, ``w_t = γ^t Ā(s_t, a_t) / λ`` and the
    forward discounted cumulative sum ``c_k = w_k + γ c_{k−1}``, the surrogate ``Σ_k c_k r_x(s_k, a_k) +
    Σ_t γ^t r̄_x(s_t, a_t)`` has gradient ``Σ_t γ^t (λ^{-1} Ā(s_t, a_t) ∂̂Q(s_t, a_t) + ∇r̄(s_t, a_t))``, an
    estimate of ``∇(−F)``. It is unbiased (up to ``O(Lγ^L)``) when ``Ā`` is the exact leader advantage of ``π``:
    ``E_a[∂A · Q̄] = E_a[∂Q · Ā]`` because ``E_a ∂Q = ∂V`` and ``E_a Ā = 0``, and the reward-to-go after step
    ``t`` is independent of ``Ā(s_t, a_t)`` given ``(s_t, a_t)``. An MC advantage from the *same* trajectory
    would add a covariance bias (the reason why Algorithm 5 draws its two factors from independent rollouts).

    Args:
        x: leader variable.
        reward_fn: follower reward ``x ↦ r_x``.
        leader_reward_fn: leader reward ``x ↦ r̄_x``.
        pi: follower policy.
        mdp: dynamics; ``λ = mdp.tau``.
        leader_advantage: ``Ā (S, A)`` (e.g. ``Q̄ − V̄`` from :func:`leader_values`).
        cfg: sizes.
        generator: the random stream.
    """
    S, A, N, L = mdp.num_states, mdp.num_actions, cfg.num_episodes, cfg.horizon
    ro = sample_trajectories(Simulator(mdp, pi), mdp.rho, N, L, generator)
    disc = mdp.gamma ** torch.arange(L, dtype=DTYPE)
    w = disc[None, :] * leader_advantage.detach()[ro.states, ro.actions] / mdp.tau
    c = torch.empty_like(w)
    acc = torch.zeros(N, dtype=DTYPE)
    for k in range(L):
        acc = w[:, k] + mdp.gamma * acc
        c[:, k] = acc
    ascent = reward_vjp(x, reward_fn, visit_table(ro.states, ro.actions, c / N, S, A))
    ascent = ascent + reward_vjp(x, leader_reward_fn, visit_table(ro.states, ro.actions, disc / N, S, A))
    return -ascent
