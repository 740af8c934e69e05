"""HPGD's hypergradient when the leader's ``x`` also enters the transitions, against the exact one (tabular).

Thoma et al., *Contextual bilevel RL for incentive alignment* (NeurIPS 2024), write ``P_{x,ξ}`` throughout: Theorem 2
gives the partial derivative of the follower's soft ``Q`` at a *fixed* policy,

    ∂_x Q^π_λ(s_0, a_0) = E^π_{s_0,a_0}[ Σ_t γ^t ∇_x r_x(s_t, a_t)
                                         + γ^{t+1} ∇_x log P_x(s_{t+1}|s_t, a_t) V^π_λ(s_{t+1}) ],

Proposition 1 (eq. 8) the gradient of the leader's discounted return ``J(x) = E^{π*_x, P_x}_{s_0~μ}[Σ_t γ^t r̄_x]``,

    dJ/dx = E^{π*_x}_{s_0~μ}[ Σ_t γ^t ( λ^{-1} ∂_x A^{π*}_λ(s_t, a_t) Q̄(s_t, a_t) + ∇_x r̄_x(s_t, a_t)
                                         + ∇_x log P_x(s_t|s_{t−1}, a_{t−1}) V̄(s_t) ) ],

and Algorithms 5 (outer) and 2 (``∂̂_x A``, with the geometric ``∇ log P`` tails) estimate it without bias
(Propositions 3, 4). Eq. 8 as printed is labelled ``dF/dx`` but its proof (App. E.6) differentiates the return, so
it is ``dJ/dx = −dF/dx`` (``docs/theory/hpgd_four_rooms.md`` §1); everything here returns the *ascent* ``dJ/dx``.

The §5.2 tax-design experiment is the case where this matters: the income tax enters only the wealth dynamics
``P_x`` (and the welfare ``r̄``). The authors' ``train_tax_design.py`` estimates the income-tax gradient as
``N_ep^{-1} Σ γ^t [∇_x sw(s_t, a_t) + clip_{±1}(∇_x log P(s_t|s_{t−1}, a_{t−1})) V̂̄(s_t)]`` only; its
best-response term ``λ^{-1} ∂_x A · Ĝ`` is built from ``∇`` of the follower reward w.r.t. the VAT alone, so the
follower-response term of ``x`` (the ``γ^{t+1} ∇ log P V_λ`` part of Theorem 2 inside ``∂_x A``) is left out.
:func:`estimator_weights` ``(variant="authors")`` reproduces that rule on any model: ``∂_x Q_f`` is taken as if
``P`` did not depend on ``x`` (the ``∇ r`` sums of Theorem 2 only). For a parameter that enters only ``P`` (the
income tax) its response term is zero, exactly as in the code; for one that enters only ``r`` (the VAT) it is the
full term. (The code's clipping and fitted critics are estimation details, not modelled here.)

The model (our choice, :class:`TransitionControlledMDP`): ``x ∈ R^d``,

    P_x(s'|s, a) = softmax_{s'}(B[s, a, s'] + Σ_k x_k F[k, s, a, s']),
    r_x(s, a) = R[s, a] + Σ_k x_k G[k, s, a],       r̄_x(s, a) = R̄[s, a] + Σ_k x_k H̄[k, s, a],

``x``-free ``μ = ρ`` (so eq. 8's ``t = 0`` term ``∇ log μ`` vanishes), follower discount ``γ`` and temperature
``λ`` (the follower plays ``π*_x = softmax(Q*_x/λ)``), leader discount ``γ̄`` (``= γ`` in the paper; a different
``γ̄`` only changes the outer occupancy and Algorithm 5's ``T, T'``).

Every estimate is linear in the three Jacobians, so it is returned as :class:`TransitionWeights` ``(W_r, W_r̄,
W_logP)`` with ``ĝ = Σ W_r ∇r + Σ W_r̄ ∇r̄ + Σ_{s,a,s'} W_logP ∇ log P`` (one vector–Jacobian product).
Derivation and measured numbers: ``docs/theory/hpgd_transitions.md``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch

from bilevel_rl.tabular.core.occupancy import advantage_resolvent, occupancy, state_action_resolvent
from bilevel_rl.tabular.core.sampling import (
    Simulator,
    Visits,
    rollout_until,
    sample_geometric,
    sample_states,
    sample_trajectories,
    visit_table,
)
from bilevel_rl.tabular.core.soft_mdp import (
    DTYPE,
    SoftMDP,
    SoftSolution,
    check_discount_and_temperature,
    policy_evaluation,
    soft_value,
    solve_soft,
)

Variant = Literal["paper", "authors"]
"""``"paper"``: Theorem 2 in full inside ``∂_x A``; ``"authors"``: ``∂_x A`` from the ``∇ r`` sums only."""


@dataclass
class TransitionControlledMDP:
    """A finite soft MDP whose transitions and rewards are smooth in the leader's ``x ∈ R^d`` (module docstring).

    Attributes:
        B: ``(S, A, S)`` base transition logits.
        F: ``(d, S, A, S)`` transition-logit features of ``x``.
        R: ``(S, A)`` base follower reward.
        G: ``(d, S, A)`` follower-reward features of ``x``.
        Rbar: ``(S, A)`` base leader reward.
        Hbar: ``(d, S, A)`` leader-reward features of ``x``.
        rho: ``(S,)`` initial distribution (``x``-free).
        gamma: follower discount.
        gamma_leader: leader discount ``γ̄``.
        tau: follower temperature ``λ``.
    """

    B: torch.Tensor
    F: torch.Tensor
    R: torch.Tensor
    G: torch.Tensor
    Rbar: torch.Tensor
    Hbar: torch.Tensor
    rho: torch.Tensor
    gamma: float
    gamma_leader: float
    tau: float

    def __post_init__(self) -> None:
        check_discount_and_temperature(self.gamma, self.tau)
        check_discount_and_temperature(self.gamma_leader, self.tau)
        S, A, _ = self.B.shape
        d = self.F.shape[0]
        if self.F.shape != (d, S, A, S) or self.G.shape != (d, S, A) or self.Hbar.shape != (d, S, A):
            raise ValueError("F, G, Hbar must have shapes (d, S, A, S), (d, S, A), (d, S, A)")

    def log_transitions(self, x: torch.Tensor) -> torch.Tensor:
        """``log P_x (S, A, S)``, differentiable in ``x``."""
        return torch.log_softmax(self.B + torch.einsum("k,ksat->sat", x, self.F), dim=-1)

    def transitions(self, x: torch.Tensor) -> torch.Tensor:
        """``P_x (S, A, S)``."""
        return self.log_transitions(x).exp()

    def reward(self, x: torch.Tensor) -> torch.Tensor:
        """Follower reward ``r_x (S, A)``."""
        return self.R + torch.einsum("k,ksa->sa", x, self.G)

    def leader_reward(self, x: torch.Tensor) -> torch.Tensor:
        """Leader reward ``r̄_x (S, A)``."""
        return self.Rbar + torch.einsum("k,ksa->sa", x, self.Hbar)

    def follower_mdp(self, x: torch.Tensor) -> SoftMDP:
        """``(P_x, ρ, γ, λ)`` at ``x`` (detached)."""
        return SoftMDP(self.transitions(x.detach()), self.rho, self.gamma, self.tau)

    def leader_mdp(self, x: torch.Tensor) -> SoftMDP:
        """``(P_x, ρ, γ̄, λ)`` at ``x`` (detached): the leader evaluates ``r̄`` with its own discount."""
        return SoftMDP(self.transitions(x.detach()), self.rho, self.gamma_leader, self.tau)


def random_model(
    S: int,
    A: int,
    d: int,
    gamma: float,
    gamma_leader: float,
    tau: float,
    generator: torch.Generator,
    transition_scale: float = 1.0,
    base_scale: float = 2.0,
) -> tuple[TransitionControlledMDP, torch.Tensor]:
    """A random model and a point ``x`` (standard-normal tables; ``F`` scaled by ``transition_scale``).

    Set ``transition_scale = 0`` for ``x``-free dynamics (the reward-only case of :mod:`.hpgd`).
    """

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator, dtype=DTYPE)

    model = TransitionControlledMDP(
        B=base_scale * randn(S, A, S),
        F=transition_scale * randn(d, S, A, S),
        R=randn(S, A),
        G=randn(d, S, A),
        Rbar=randn(S, A),
        Hbar=0.5 * randn(d, S, A),
        rho=torch.full((S,), 1.0 / S, dtype=DTYPE),
        gamma=gamma,
        gamma_leader=gamma_leader,
        tau=tau,
    )
    return model, 0.5 * randn(d)


def follower_solution(model: TransitionControlledMDP, x: torch.Tensor) -> SoftSolution:
    """The follower's soft optimum ``(Q*_x, V*_x, π*_x)`` at ``x``."""
    return solve_soft(model.reward(x.detach()), model.follower_mdp(x))


def leader_return(model: TransitionControlledMDP, x: torch.Tensor) -> float:
    """``J(x) = ρ·V̄^{π*_x, P_x}`` (unregularised, discount ``γ̄``; the negative of HPGD eq. 7's ``f``)."""
    pi = follower_solution(model, x).pi
    _, Vbar = policy_evaluation(pi, model.leader_reward(x.detach()), model.leader_mdp(x), regularised=False)
    return float((model.rho * Vbar).sum())


def _leader_return_graph(model: TransitionControlledMDP, x: torch.Tensor, pi: torch.Tensor) -> torch.Tensor:
    """``ρ·V̄`` with ``P_x``, ``r̄_x`` and ``π`` all in the autograd graph."""
    P = model.transitions(x)
    P_pi = torch.einsum("sa,sat->st", pi, P)
    eye = torch.eye(P.shape[0], dtype=DTYPE)
    Vbar = torch.linalg.solve(eye - model.gamma_leader * P_pi, (pi * model.leader_reward(x)).sum(1))
    return (model.rho * Vbar).sum()


def exact_hypergradient(model: TransitionControlledMDP, x: torch.Tensor) -> tuple[torch.Tensor, SoftSolution]:
    """Exact ``dJ/dx`` by implicit differentiation of the soft Bellman fixed point with ``x`` in ``r`` *and* ``P``.

    With ``T_x(Q) = r_x + γ P_x λ logsumexp(Q/λ)`` and ``Q* = T_x(Q*)`` (HPGD §2; the adjoint of
    :func:`bilevel_rl.tabular.repro.stackelberg.hypergradient`):

    * ``g_π = ∂J/∂π`` and ``∂J/∂x|_π`` by autograd through the leader's linear-solve evaluation;
    * ``g_Q = π* ⊙ (g_π − Σ_a π* g_π)/λ`` (the softmax Jacobian);
    * the adjoint ``w = (I − ∂T/∂Q)^{-T} g_Q = g_Q + u ⊗ π*``, ``u = (I − γ P^{π*T}_x)^{-1} γ Σ_{s,a} g_Q P_x(·|s,a)``;
    * ``dJ/dx = ∂J/∂x|_π + (∂T_x(Q*)/∂x)^T w`` (one VJP with ``Q*`` fixed).

    Returns:
        ``(dJ/dx, follower soft solution at x)``.
    """
    x = x.detach().clone().requires_grad_(True)
    sol = follower_solution(model, x)
    pi = sol.pi.clone().requires_grad_(True)
    g_direct, g_pi = torch.autograd.grad(_leader_return_graph(model, x, pi), [x, pi])
    with torch.no_grad():
        P = model.transitions(x)
        g_Q = sol.pi * (g_pi - (g_pi * sol.pi).sum(-1, keepdim=True)) / model.tau
        eye = torch.eye(P.shape[0], dtype=DTYPE)
        P_pi = torch.einsum("sa,sat->st", sol.pi, P)
        u = torch.linalg.solve(eye - model.gamma * P_pi.T, model.gamma * torch.einsum("sa,sat->t", g_Q, P))
        w = g_Q + u[:, None] * sol.pi
    T_Q = model.reward(x) + model.gamma * torch.einsum("sat,t->sa", model.transitions(x), sol.V)
    (g_implicit,) = torch.autograd.grad(T_Q, x, grad_outputs=w)
    return (g_direct + g_implicit).detach(), sol


def unrolled_hypergradient(model: TransitionControlledMDP, x: torch.Tensor, iterations: int) -> torch.Tensor:
    """``dJ/dx`` by autograd through ``iterations`` soft value-iteration sweeps with ``P_x`` in the graph (cross-check).

    The truncation error is ``O(iterations · γ^iterations)``.
    """
    x = x.detach().clone().requires_grad_(True)
    P, r = model.transitions(x), model.reward(x)
    Q = torch.zeros_like(r)
    for _ in range(iterations):
        Q = r + model.gamma * torch.einsum("sat,t->sa", P, soft_value(Q, model.tau))
    (g,) = torch.autograd.grad(_leader_return_graph(model, x, torch.softmax(Q / model.tau, 1)), x)
    return g


@dataclass
class TransitionWeights:
    """``ĝ = Σ W_r ∇_x r_x + Σ W_r̄ ∇_x r̄_x + Σ_{s,a,s'} W_logP ∇_x log P_x(s'|s,a)``, an estimate of ``dJ/dx``.

    Attributes:
        W_r: ``(S, A)`` weights of the follower reward's Jacobian.
        W_rbar: ``(S, A)`` weights of the leader reward's Jacobian.
        W_logP: ``(S, A, S)`` weights of the transition log-likelihood's Jacobian.
        env_steps: sampled transitions (0 for exact expectations).
    """

    W_r: torch.Tensor
    W_rbar: torch.Tensor
    W_logP: torch.Tensor
    env_steps: int = 0

    def ascent(self, model: TransitionControlledMDP, x: torch.Tensor) -> torch.Tensor:
        """``ĝ`` at ``x`` by one vector–Jacobian product."""
        x = x.detach().clone().requires_grad_(True)
        total = (
            (self.W_r * model.reward(x)).sum()
            + (self.W_rbar * model.leader_reward(x)).sum()
            + (self.W_logP * model.log_transitions(x)).sum()
        )
        (g,) = torch.autograd.grad(total, x)
        return g.detach()


def follower_q_gradient_weights(
    pi: torch.Tensor, mdp: SoftMDP, V_soft: torch.Tensor, s: int, a: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Theorem 2 at one ``(s, a)`` as weights: ``∂_x Q^π_λ(s, a) = Σ W_r ∇r + Σ W_logP ∇ log P``.

    ``W_r = D^π[s, a]`` (discounted visits from the forced start) and ``W_logP[s', a', s''] = γ D^π[s, a, s', a']
    P(s''|s', a') V^π_λ(s'')``; ``V_soft`` is the follower's *regularised* value of ``π``.
    """
    D = state_action_resolvent(pi, mdp)[s, a]
    return D, mdp.gamma * D[:, :, None] * mdp.P * V_soft[None, None, :]


def estimator_weights(model: TransitionControlledMDP, x: torch.Tensor, variant: Variant = "paper") -> TransitionWeights:
    """The exact expectation of HPGD's estimator (eq. 8 with Theorem 2 inside ``∂_x A``) at ``π*_x``, as weights.

    With the leader's occupancy ``d̄`` (discount ``γ̄``, from ``ρ``), ``Q̄, V̄`` (unregularised, ``r̄_x``), the follower's
    soft ``V_λ = V*`` and ``U = Σ_{s,a} c(s, a)(D^π[s, a] − D^π_V[s])`` for ``c = d̄ ⊙ Q̄ / λ`` (follower discount):

    * ``W_r̄ = d̄``;  ``W_r = U``;
    * ``W_logP[s, a, s'] = γ̄ d̄(s, a) P(s'|s, a) V̄(s')``  (eq. 8's own ``∇ log P · V̄`` term)
      ``+ γ U(s, a) P(s'|s, a) V_λ(s')``  (Theorem 2's ``∇ log P`` term inside ``∂_x A``; dropped by ``"authors"``).

    At ``variant="paper"`` this equals :func:`exact_hypergradient` (Proposition 1); the ``"authors"`` variant is the
    expectation of the authors' tax-design rule (module docstring) and is biased when ``P`` depends on ``x``.
    """
    sol = follower_solution(model, x)
    pi = sol.pi
    mdp_f, mdp_l = model.follower_mdp(x), model.leader_mdp(x)
    P = mdp_f.P
    with torch.no_grad():
        Qbar, Vbar = policy_evaluation(pi, model.leader_reward(x.detach()), mdp_l, regularised=False)
        d = occupancy(pi, mdp_l)
        U = advantage_resolvent(d * Qbar / model.tau, pi, mdp_f)
        W_logP = model.gamma_leader * d[:, :, None] * P * Vbar[None, None, :]
        if variant == "paper":
            W_logP = W_logP + model.gamma * U[:, :, None] * P * sol.V[None, None, :]
    return TransitionWeights(U, d, W_logP)


def _at_step(vis: Visits, step: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(reached, state, action)`` per row at its own time ``step[row]`` (``reached``: the row got there)."""
    sel = vis.steps == step[vis.rows]
    rows = vis.rows[sel]
    reached = torch.zeros(n, dtype=torch.bool).index_fill_(0, rows, True)
    s = torch.zeros(n, dtype=torch.long).index_copy_(0, rows, vis.states[sel])
    a = torch.zeros(n, dtype=torch.long).index_copy_(0, rows, vis.actions[sel])
    return reached, s, a


def _tail_sum(vis: Visits, start: torch.Tensor, gamma: float, values: torch.Tensor, n: int) -> torch.Tensor:
    """``Σ_{t ≥ start[row]} γ^{(t − start)/2} values(s_t, a_t)`` per row (the ``T' ~ Geo(1 − γ^{1/2})`` tails)."""
    lag = vis.steps - start[vis.rows]
    tail = lag >= 0
    contrib = math.sqrt(gamma) ** lag[tail].to(DTYPE) * values[vis.states[tail], vis.actions[tail]]
    return torch.zeros(n, dtype=DTYPE).index_add_(0, vis.rows[tail], contrib)


def algorithm2_weights(
    mdp: SoftMDP,
    pi: torch.Tensor,
    r: torch.Tensor,
    s: torch.Tensor,
    a: torch.Tensor,
    coef: torch.Tensor,
    generator: torch.Generator,
    variant: Variant = "paper",
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """``Σ_n coef[n] ∂̂_x A(s[n], a[n])`` by HPGD Algorithm 2, as ``(W_r, W_logP, env_steps)``.

    Per row, for the ``Q`` rollout (forced ``a_0``) and the ``V`` rollout (``a_0 ~ π``): ``T ~ Geo(1 − γ)``,
    ``T' ~ Geo(1 − γ^{1/2})``, a rollout to step ``T + T' + 1``, the ``∇r`` visits ``t ≤ T`` and
    ``γ/(1−γ) ∇ log P(s_{T+1}|s_T, a_T) Σ_{t=T+1}^{T+T'+1} γ^{(t−T−1)/2}(r(s_t, a_t) + λ H(π(·|s_t)))`` (the tail
    is unbiased for ``V^π_λ(s_{T+1})``; Prop. 3). ``variant="authors"`` drops the ``∇ log P`` term (and its tails).
    """
    S, A = r.shape
    n = s.shape[0]
    with_tails = variant == "paper"
    H = -(pi * torch.log(pi.clamp_min(1e-300))).sum(1)
    soft_r = r + mdp.tau * H[:, None]
    sim = Simulator(mdp, pi)
    W_r = torch.zeros(S, A, dtype=DTYPE)
    W_logP = torch.zeros(S, A, S, dtype=DTYPE)
    steps = 0
    for sign, a0 in ((1.0, a), (-1.0, None)):
        T = sample_geometric(n, 1.0 - mdp.gamma, generator)
        T2 = sample_geometric(n, 1.0 - math.sqrt(mdp.gamma), generator) if with_tails else None
        last = T + T2 + 1 if T2 is not None else T
        vis = rollout_until(sim, s, last, generator, a0)
        steps += int(vis.rows.numel())
        head = vis.steps <= T[vis.rows]
        W_r += sign * visit_table(vis.states[head], vis.actions[head], coef[vis.rows[head]], S, A)
        if with_tails:
            V_hat = _tail_sum(vis, T + 1, mdp.gamma, soft_r, n)
            _, s_T, a_T = _at_step(vis, T, n)
            _, s_T1, _ = _at_step(vis, T + 1, n)
            w = sign * coef * mdp.gamma / (1.0 - mdp.gamma) * V_hat
            W_logP.index_put_((s_T, a_T, s_T1), w, accumulate=True)
    return W_r, W_logP, steps


def algorithm5_weights(
    model: TransitionControlledMDP,
    x: torch.Tensor,
    num_samples: int,
    generator: torch.Generator,
    variant: Variant = "paper",
    pi: torch.Tensor | None = None,
) -> TransitionWeights:
    """The mean of ``num_samples`` outputs of HPGD Algorithm 5 with ``∇ log P`` terms (App. D), as weights.

    Per sample: ``T ~ Geo(1 − γ̄)``, ``T' ~ Geo(1 − γ̄^{1/2})``, a trajectory ``s_0 ~ ρ, …, s_{T+T'}`` of ``π``,
    ``Ĝ = Σ_{t'=T}^{T+T'} γ̄^{(t'−T)/2} r̄(s_{t'}, a_{t'})`` (unbiased for ``Q̄(s_T, a_T)``) and

        ĝ = Σ_{t≤T} ∇r̄(s_t, a_t) + (λ(1−γ̄))^{-1} ∂̂_x A(s_T, a_T) Ĝ + (1−γ̄)^{-1} ∇ log P(s_T|s_{T−1}, a_{T−1}) Ĝ,

    with ``∂̂_x A`` from fresh Algorithm-2 rollouts (:func:`algorithm2_weights`, same ``variant``) and the last term
    zero at ``T = 0`` (``μ`` is ``x``-free). Unbiased for ``dJ/dx`` at ``π = π*`` with ``variant="paper"``
    (Prop. 4; ``γ̄ = γ`` in the paper, ``γ̄`` only enters the outer ``T, T'`` here).

    Args:
        model: the model.
        x: leader variable.
        num_samples: independent samples averaged.
        generator: the random stream.
        variant: ``"paper"`` or ``"authors"`` (module docstring).
        pi: follower policy (default ``π*_x``).
    """
    mdp = model.follower_mdp(x)
    pi = follower_solution(model, x).pi if pi is None else pi
    r, rbar = model.reward(x.detach()), model.leader_reward(x.detach())
    S, A, N, gl = mdp.num_states, mdp.num_actions, num_samples, model.gamma_leader
    T = sample_geometric(N, 1.0 - gl, generator)
    T2 = sample_geometric(N, 1.0 - math.sqrt(gl), generator)
    vis = rollout_until(Simulator(mdp, pi), sample_states(model.rho, N, generator), T + T2, generator)
    G = _tail_sum(vis, T, gl, rbar, N)
    head = vis.steps <= T[vis.rows]
    W_rbar = visit_table(vis.states[head], vis.actions[head], torch.ones((), dtype=DTYPE) / N, S, A)
    _, s_T, a_T = _at_step(vis, T, N)
    has_prev, s_prev, a_prev = _at_step(vis, T - 1, N)
    W_logP = torch.zeros(S, A, S, dtype=DTYPE)
    W_logP.index_put_(
        (s_prev[has_prev], a_prev[has_prev], s_T[has_prev]), G[has_prev] / ((1.0 - gl) * N), accumulate=True
    )
    coef = G / (model.tau * (1.0 - gl) * N)
    W_r, W_logP_f, steps = algorithm2_weights(mdp, pi, r, s_T, a_T, coef, generator, variant)
    return TransitionWeights(W_r, W_rbar, W_logP + W_logP_f, int(vis.rows.numel()) + steps)


def critic_trajectory_weights(
    model: TransitionControlledMDP,
    x: torch.Tensor,
    num_episodes: int,
    horizon: int,
    generator: torch.Generator,
    variant: Variant = "paper",
) -> TransitionWeights:
    """Eq. 8 on on-policy trajectories with exact critics ``Ā, V̄, V_λ`` (the form of the authors' tax-design code).

    On ``num_episodes`` trajectories ``s_0 ~ ρ, a_t ~ π*_x`` of ``horizon = L`` steps, with the per-step follower
    gradient ``h_k = ∇r(s_k, a_k) + γ ∇ log P(s_{k+1}|s_k, a_k) V_λ(s_{k+1})`` (Theorem 2's summand; ``"authors"``
    keeps ``∇r`` only) and ``∂̂Q(s_t, a_t) = Σ_{k≥t} γ^{k−t} h_k`` (the same trajectory's future),

        ĝ = Σ_t γ̄^t [ λ^{-1} Ā(s_t, a_t) ∂̂Q(s_t, a_t) + ∇r̄(s_t, a_t) + γ̄ ∇ log P(s_{t+1}|s_t, a_t) V̄(s_{t+1}) ].

    ``Ā = Q̄ − V̄`` replaces eq. 8's ``Q̄`` (``E_{a~π} ∂_x A = 0``), and ``E_a[Ā ∂Q] = E_a[Q̄ ∂A]`` because ``E_a ∂Q =
    ∂V`` and ``E_a Ā = 0``; the future after ``(s_t, a_t)`` is independent of ``Ā(s_t, a_t)`` given the pair, so the
    estimate is unbiased up to the ``O(L γ^L)`` truncation. The response sum is folded into the forward cumsum
    ``c_k = γ̄^k Ā(s_k, a_k)/λ + γ c_{k−1}`` (weight of ``h_k``). The critics are exact here (the authors fit value
    networks); the leader's eq.-8 transition term uses ``V̄(s_{t+1})``.
    """
    sol = follower_solution(model, x)
    mdp_f, mdp_l = model.follower_mdp(x), model.leader_mdp(x)
    S, A, N, L = mdp_f.num_states, mdp_f.num_actions, num_episodes, horizon
    g, gl = model.gamma, model.gamma_leader
    with torch.no_grad():
        Qbar, Vbar = policy_evaluation(sol.pi, model.leader_reward(x.detach()), mdp_l, regularised=False)
    Abar = Qbar - Vbar[:, None]
    ro = sample_trajectories(Simulator(mdp_f, sol.pi), model.rho, N, L, generator)
    s, a = ro.states, ro.actions
    disc_l = gl ** torch.arange(L, dtype=DTYPE)
    w = disc_l[None, :] * Abar[s, a] / model.tau
    c = torch.empty_like(w)
    acc = torch.zeros(N, dtype=DTYPE)
    for k in range(L):
        acc = w[:, k] + g * acc
        c[:, k] = acc
    W_r = visit_table(s, a, c / N, S, A)
    W_rbar = visit_table(s, a, disc_l / N, S, A)
    W_logP = torch.zeros(S, A, S, dtype=DTYPE)
    idx = (s[:, :-1], a[:, :-1], s[:, 1:])
    W_logP.index_put_(idx, gl * disc_l[None, :-1] * Vbar[s[:, 1:]] / N, accumulate=True)
    if variant == "paper":
        W_logP.index_put_(idx, g * c[:, :-1] * sol.V[s[:, 1:]] / N, accumulate=True)
    return TransitionWeights(W_r, W_rbar, W_logP, N * L)
