"""Exact discounted visit measures of a fixed policy on a finite MDP (the targets of the sampled visit weights).

* :func:`state_action_resolvent` ``D^π[s, a, s', a'] = E[Σ_t γ^t 1{(s_t, a_t) = (s', a')} | s_0 = s, a_0 = a, π]``,
  so that ``∇_x Q^π(s, a) = Σ D^π[s, a] ∇_x r`` for a *fixed* policy (SoBiRL Prop. 5.1; HPGD Thm. 2 without
  ``∇ log P``), and ``∇_x V^π(s) = Σ_a π(a|s) ∇_x Q^π(s, a)``.
* :func:`occupancy` ``d^π(s, a) = Σ_{s_0} ρ(s_0) Σ_t γ^t Pr(s_t = s, a_t = a)``, the unnormalised discounted
  occupancy measure, so that ``∇_x V^π(ρ) = Σ d^π ∇_x r`` (PBRL eq. C.1).
* :func:`enumerate_trajectories` lists every ``H``-step trajectory with its probability (differentiable in ``π``),
  which makes expectations over trajectory tuples exact on small MDPs.
"""

from __future__ import annotations

import torch

from bilevel_rl.tabular.core.soft_mdp import SoftMDP


def state_action_resolvent(pi: torch.Tensor, mdp: SoftMDP) -> torch.Tensor:
    """``D^π (S, A, S, A)``: discounted state–action visits from a forced start ``(s, a)`` (exact, linear solve)."""
    S, A = mdp.num_states, mdp.num_actions
    succ = torch.einsum("sat,tb->satb", mdp.P, pi).reshape(S * A, S * A)
    eye = torch.eye(S * A, dtype=pi.dtype)
    return torch.linalg.solve(eye - mdp.gamma * succ, eye).reshape(S, A, S, A)


def state_resolvent(pi: torch.Tensor, mdp: SoftMDP) -> torch.Tensor:
    """``D_V^π (S, S, A)``: discounted state–action visits from ``s_0 = s`` with ``a_0 ~ π``."""
    return torch.einsum("sa,sabc->sbc", pi, state_action_resolvent(pi, mdp))


def occupancy(pi: torch.Tensor, mdp: SoftMDP, start: torch.Tensor | None = None) -> torch.Tensor:
    """Unnormalised discounted occupancy ``d^π (S, A)`` from ``start`` (default ``ρ``); it sums to ``1/(1−γ)``."""
    start = mdp.rho if start is None else start
    return torch.einsum("s,sbc->bc", start, state_resolvent(pi, mdp))


def advantage_resolvent(coef: torch.Tensor, pi: torch.Tensor, mdp: SoftMDP) -> torch.Tensor:
    """``W = Σ_{s,a} c(s, a) (D^π[s, a] − D_V^π[s])``: the exact visit weights of ``Σ c(s, a) ∂_x A^π(s, a)``.

    ``∂_x A^π(s, a) = ∂_x Q^π(s, a) − ∂_x V^π(s)`` at fixed ``π`` (HPGD Prop. 2; SoBiRL eq. 14's
    ``∇̃Q − ∇̃V``), so ``Σ c ∂_x A = Σ W ∇_x r``.
    """
    D = state_action_resolvent(pi, mdp)
    DV = torch.einsum("sa,sabc->sbc", pi, D)
    return torch.einsum("sa,sabc->bc", coef, D) - torch.einsum("s,sbc->bc", coef.sum(1), DV)


def enumerate_trajectories(
    pi: torch.Tensor, mdp: SoftMDP, horizon: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Every ``horizon``-step trajectory from ``ρ`` under ``π``, with its probability (differentiable in ``pi``).

    ``Pr(d) = ρ(s_0) Π_{h<H} π(a_h|s_h) Π_{h<H−1} P(s_{h+1}|s_h, a_h)`` (the trajectory distribution of SoBiRL §3.3).

    Returns:
        ``(states (K, H), actions (K, H), prob (K,))`` with ``K = (S·A)^H``.
    """
    S, A = mdp.num_states, mdp.num_actions
    grids = torch.cartesian_prod(*[torch.arange(S * A)] * horizon).reshape(-1, horizon)
    states, actions = grids // A, grids % A
    prob = mdp.rho[states[:, 0]] * pi[states, actions].prod(1)
    if horizon > 1:
        prob = prob * mdp.P[states[:, :-1], actions[:, :-1], states[:, 1:]].prod(1)
    return states, actions, prob
