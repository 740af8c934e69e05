"""Finite entropy-regularised (soft) MDPs in torch: exact soft optimum and exact hypergradients.

Notation follows SoBiRL §3.1: states ``S``, actions ``A``, transitions ``P[s, a, s']``, initial
distribution ``rho``, discount ``gamma``, temperature ``tau > 0``. For a reward table ``r[s, a]``

    Q*(s, a) = r(s, a) + γ Σ_s' P(s'|s, a) V*(s'),   V*(s) = τ log Σ_a exp(Q*(s, a)/τ),
    π*(a|s) = softmax_a(Q*(s, ·)/τ)                                                  (SoBiRL eqs. 5–7).

For a leader variable ``x`` with reward ``r(x)`` and an upper objective ``φ(x) = f(x, π*(x))`` the exact
hypergradient follows from implicit differentiation of the soft Bellman fixed point (SoBiRL eq. 8 and
Prop. 4.1; HPGD Thm. 1 / Prop. 2):

    ∇V*   = (I − γ P^{π*})^{-1} Σ_a π*(a|·) ∇r(·, a)                                  (SoBiRL eq. 10)
    ∇Q*   = ∇r + γ P ∇V*
    ∇ log π*(a|s) = τ^{-1} (∇Q*(s, a) − ∇V*(s))                                       (SoBiRL eq. 8)
    ∇φ    = ∇_x f + Σ_{s,a} ∂f/∂π(s, a) · ∇π*(s, a).

:func:`exact_hypergradient` evaluates this with one linear solve and one vector–Jacobian product through
``r(x)`` (adjoint form), so ``x`` may be any tensor and ``r`` any differentiable map.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

DTYPE = torch.float64


def check_discount_and_temperature(gamma: float, tau: float) -> None:
    """Refuse a discount outside ``[0, 1)`` or a non-positive temperature."""
    if not 0.0 <= gamma < 1.0:
        raise ValueError(f"gamma must be in [0, 1), got {gamma}")
    if tau <= 0:
        raise ValueError(f"tau must be > 0, got {tau}")


@dataclass
class SoftMDP:
    """Dynamics of a finite soft MDP (the reward is supplied separately, so the leader can own it).

    Attributes:
        P: ``(S, A, S)`` transition probabilities, rows summing to one.
        rho: ``(S,)`` initial-state distribution.
        gamma: discount in ``[0, 1)``.
        tau: entropy temperature ``> 0``.
    """

    P: torch.Tensor
    rho: torch.Tensor
    gamma: float
    tau: float

    def __post_init__(self) -> None:
        if self.P.dim() != 3 or self.P.shape[0] != self.P.shape[2]:
            raise ValueError(f"P must have shape (S, A, S), got {tuple(self.P.shape)}")
        if not torch.allclose(self.P.sum(-1), torch.ones((), dtype=self.P.dtype)):
            raise ValueError("P[s, a, :] must sum to one")
        check_discount_and_temperature(self.gamma, self.tau)

    @property
    def num_states(self) -> int:
        """|S|."""
        return int(self.P.shape[0])

    @property
    def num_actions(self) -> int:
        """|A|."""
        return int(self.P.shape[1])

    def policy_transition(self, pi: torch.Tensor) -> torch.Tensor:
        """``P^π[s, s'] = Σ_a π(a|s) P(s'|s, a)``."""
        return torch.einsum("sa,sat->st", pi, self.P)


@dataclass
class SoftSolution:
    """Soft-optimal ``Q* (S, A)``, ``V* (S,)`` and ``π* (S, A)``."""

    Q: torch.Tensor
    V: torch.Tensor
    pi: torch.Tensor


def random_mdp(num_states: int, num_actions: int, gamma: float, tau: float, generator: torch.Generator) -> SoftMDP:
    """A random MDP with full-support Dirichlet(1) transitions and a uniform initial distribution."""
    p = -torch.log(torch.rand(num_states, num_actions, num_states, generator=generator, dtype=DTYPE))
    return SoftMDP(p / p.sum(-1, keepdim=True), torch.full((num_states,), 1.0 / num_states, dtype=DTYPE), gamma, tau)


def soft_value(Q: torch.Tensor, tau: float) -> torch.Tensor:
    """``V(s) = τ log Σ_a exp(Q(s, a)/τ)`` (SoBiRL eq. 9)."""
    return tau * torch.logsumexp(Q / tau, dim=1)


def soft_bellman(Q: torch.Tensor, r: torch.Tensor, mdp: SoftMDP) -> torch.Tensor:
    """The soft Bellman optimality operator ``T(Q) = r + γ P τ logsumexp(Q/τ)`` (SoBiRL §4, used by Algorithm 2)."""
    return r + mdp.gamma * torch.einsum("sat,t->sa", mdp.P, soft_value(Q, mdp.tau))


def _solution(Q: torch.Tensor, tau: float) -> SoftSolution:
    """``(Q, V(Q), softmax(Q/τ))``."""
    return SoftSolution(Q, soft_value(Q, tau), torch.softmax(Q / tau, dim=1))


def soft_value_iteration(
    r: torch.Tensor, mdp: SoftMDP, iterations: int, Q0: torch.Tensor | None = None
) -> SoftSolution:
    """``iterations`` applications of the soft Bellman operator (differentiable: autograd unrolls them)."""
    Q = torch.zeros_like(r) if Q0 is None else Q0
    for _ in range(iterations):
        Q = soft_bellman(Q, r, mdp)
    return _solution(Q, mdp.tau)


def policy_evaluation(
    pi: torch.Tensor, r: torch.Tensor, mdp: SoftMDP, regularised: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact ``(Q^π, V^π)`` by a linear solve: ``V = (I − γ P^π)^{-1} Σ_a π (r − τ log π)`` (SoBiRL eq. 3).

    With ``regularised=False`` the entropy term is dropped (the plain discounted return of ``r`` under ``π``, e.g.
    the leader's unregularised values of HPGD eq. 7).
    """
    step_reward = r - mdp.tau * torch.log(pi.clamp_min(1e-300)) if regularised else r
    eye = torch.eye(mdp.num_states, dtype=r.dtype)
    V = torch.linalg.solve(eye - mdp.gamma * mdp.policy_transition(pi), (pi * step_reward).sum(1))
    return r + mdp.gamma * torch.einsum("sat,t->sa", mdp.P, V), V


def solve_soft(
    r: torch.Tensor, mdp: SoftMDP, tol: float = 1e-12, max_iter: int = 200, pi0: torch.Tensor | None = None
) -> SoftSolution:
    """Exact soft optimum by soft policy iteration, polished by three Bellman sweeps (no autograd graph).

    Each round evaluates the policy exactly (linear solve) and improves it by ``softmax(Q/τ)``; this converges
    much faster than value iteration when γ is close to one. A warm start ``pi0`` (e.g. the previous solution of
    a slowly changing reward) only shortens the iteration: the soft optimum is unique.
    """
    with torch.no_grad():
        r = r.detach().to(DTYPE)
        pi = torch.full_like(r, 1.0 / mdp.num_actions) if pi0 is None else pi0.detach().to(DTYPE)
        Q = torch.zeros_like(r)
        for _ in range(max_iter):
            Q_new, _ = policy_evaluation(pi, r, mdp)
            pi = torch.softmax(Q_new / mdp.tau, dim=1)
            if torch.max(torch.abs(Q_new - Q)) < tol:
                Q = Q_new
                break
            Q = Q_new
        for _ in range(3):
            Q = soft_bellman(Q, r, mdp)
        return _solution(Q, mdp.tau)


def implicit_policy_vjp(g_pi: torch.Tensor, sol: SoftSolution, mdp: SoftMDP) -> torch.Tensor:
    """Weights ``W[s, a]`` such that ``Σ_{s,a} g_π[s,a] ∇π*[s,a] = Σ_{s,a} W[s,a] ∇r[s,a]`` (adjoint of eq. 8/10).

    With ``w = π* ⊙ g_π / τ`` and ``u(s') = γ Σ_{s,a} w(s,a) P(s'|s,a) − Σ_a w(s', a)``,
    ``z = (I − γ P^{π*})^{-T} u`` gives ``W = w + z ⊗ π*``.
    """
    pi = sol.pi
    w = pi * g_pi / mdp.tau
    u = mdp.gamma * torch.einsum("sa,sat->t", w, mdp.P) - w.sum(1)
    eye = torch.eye(mdp.num_states, dtype=pi.dtype)
    z = torch.linalg.solve((eye - mdp.gamma * mdp.policy_transition(pi)).T, u)
    return w + z[:, None] * pi


UpperFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""``(x, π) ↦ f(x, π)``, a differentiable scalar upper objective."""


def upper_partials(x: torch.Tensor, pi: torch.Tensor, upper_fn: UpperFn) -> tuple[torch.Tensor, torch.Tensor]:
    """``(∇_x f(x, π), ∇_π f(x, π))`` by autograd (detached; zeros where ``f`` does not depend on an argument)."""
    xg = x.detach().requires_grad_(True)
    pg = pi.detach().clone().requires_grad_(True)
    gx, gp = torch.autograd.grad(upper_fn(xg, pg), [xg, pg], allow_unused=True)
    return (
        torch.zeros_like(xg) if gx is None else gx.detach(),
        torch.zeros_like(pg) if gp is None else gp.detach(),
    )


def exact_hypergradient(
    x: torch.Tensor,
    reward_fn: Callable[[torch.Tensor], torch.Tensor],
    upper_fn: UpperFn,
    mdp: SoftMDP,
) -> tuple[torch.Tensor, SoftSolution]:
    """Exact ``∇φ(x)`` for ``φ(x) = f(x, π*(x))`` by implicit differentiation of the soft Bellman fixed point.

    Args:
        x: leader variable (any shape; float64 recommended).
        reward_fn: ``x ↦ r(x)``, a differentiable ``(S, A)`` reward table.
        upper_fn: ``(x, π) ↦ f(x, π)``, a differentiable scalar.
        mdp: the lower-level dynamics.

    Returns:
        ``(∇φ(x), soft solution at x)``.
    """
    x = x.detach().requires_grad_(True)
    r = reward_fn(x)
    sol = solve_soft(r, mdp)
    g_x, g_pi = upper_partials(x, sol.pi, upper_fn)
    W = implicit_policy_vjp(g_pi, sol, mdp)
    (g_r,) = torch.autograd.grad(r, x, grad_outputs=W, allow_unused=True)
    total = g_x + (g_r if g_r is not None else torch.zeros_like(x))
    return total.detach(), sol


def unrolled_hypergradient(
    x: torch.Tensor,
    reward_fn: Callable[[torch.Tensor], torch.Tensor],
    upper_fn: UpperFn,
    mdp: SoftMDP,
    iterations: int,
) -> torch.Tensor:
    """``∇φ`` by autograd through ``iterations`` unrolled soft value-iteration sweeps (a cross-check)."""
    x = x.detach().requires_grad_(True)
    sol = soft_value_iteration(reward_fn(x), mdp, iterations)
    (g,) = torch.autograd.grad(upper_fn(x, sol.pi), x)
    return g
