"""Entropy-regularised Stackelberg Markov games (PBRL §2.2 eq. 2.4, Lemma 18 / App. B.1, §6.1 / App. E.1).

A leader with softmax policy ``π_x(a_l|s) ∝ exp(x[s, a_l])`` and a follower with ``π_y(a_f|s) ∝ exp(y[s, a_f])``
act simultaneously in a finite Markov game with transitions ``P[s, a_l, a_f, s']`` and rewards ``r_l, r_f``. Each
player ``⋆ ∈ {l, f}`` is charged its own regulariser ``τ h_⋆``; here ``h_s(p) = Σ_a p_a log p_a`` (negative
entropy), so for either player (PBRL §2.2)

    V_⋆(s) = E[Σ_t γ^t (r_⋆(s_t, a_l,t, a_f,t) − τ h(π_⋆(s_t)))],   Q_⋆(s, a_l, a_f) = r_⋆ + γ E_{s'} V_⋆(s').

The bilevel problem (2.4) / (6.1) is ``min_x −V_l^{π_x, π*_y(x)}(ρ)`` where ``π*_y(x)`` is the follower's soft best
response. By Lemma 18 the follower faces the parametric MDP ``M_τ(x)`` with

    r_x(s, a_f) = E_{a_l ~ π_x(s)} r_f(s, a_l, a_f),    P_x(s'|s, a_f) = E_{a_l ~ π_x(s)} P(s'|s, a_l, a_f).

**Paper typo handled:** §2.2 (after eq. 2.4), the statement of Lemma 18 and the last line of its proof (App. B.1)
print ``r_l`` in ``r_x``; the proof's expansion of ``V_f`` (eq. B.2) and the meaning of the game need ``r_f`` (the
follower maximises its own reward), which is what :func:`follower_mdp` uses.

The core's :func:`~bilevel_rl.tabular.core.soft_mdp.exact_hypergradient` assumes ``x``-independent dynamics, but here
``P_x`` depends on the leader, so :func:`hypergradient` re-derives the adjoint of the soft Bellman fixed point with an
``x``-dependent operator ``T_x(Q) = r_x + γ P_x τ logsumexp(Q/τ)`` (one ``S × S`` solve, as in SoBiRL eq. 10). It
reduces to the core's formula when ``P`` does not depend on ``a_l`` (tested).

Everything is float64 torch; exact quantities are differentiable unless stated otherwise. Monte-Carlo rollouts
(:func:`sample_rollouts`) implement the "trajectory length 5, batch 16" sampler of App. E.1 with the core sampler:
a game is an MDP over joint actions ``(a_l, a_f)`` with the product policy ``π_x ⊗ π_y``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch

from bilevel_rl.tabular.core.sampling import CategoricalTable, Simulator, rollout
from bilevel_rl.tabular.core.soft_mdp import (
    DTYPE,
    SoftMDP,
    SoftSolution,
    check_discount_and_temperature,
    solve_soft,
)

Player = Literal["leader", "follower"]


@dataclass
class StackelbergGame:
    """A finite entropy-regularised two-player Markov game (PBRL §2.2, ``M^g_τ``).

    Attributes:
        P: ``(S, A_l, A_f, S)`` transition probabilities.
        r_l: ``(S, A_l, A_f)`` leader reward.
        r_f: ``(S, A_l, A_f)`` follower reward.
        rho: ``(S,)`` initial distribution (full support, PBRL §2.1).
        gamma: discount in ``[0, 1)``.
        tau: regularisation weight ``τ > 0`` of both players' negative-entropy regularisers.
    """

    P: torch.Tensor
    r_l: torch.Tensor
    r_f: torch.Tensor
    rho: torch.Tensor
    gamma: float
    tau: float

    def __post_init__(self) -> None:
        if self.P.dim() != 4 or self.P.shape[0] != self.P.shape[3]:
            raise ValueError(f"P must have shape (S, A_l, A_f, S), got {tuple(self.P.shape)}")
        if self.r_l.shape != self.P.shape[:3] or self.r_f.shape != self.P.shape[:3]:
            raise ValueError("r_l and r_f must have shape (S, A_l, A_f)")
        if not torch.allclose(self.P.sum(-1), torch.ones((), dtype=self.P.dtype)):
            raise ValueError("P[s, a_l, a_f, :] must sum to one")
        check_discount_and_temperature(self.gamma, self.tau)

    @property
    def num_states(self) -> int:
        """|S|."""
        return int(self.P.shape[0])

    @property
    def num_leader_actions(self) -> int:
        """|A_l|."""
        return int(self.P.shape[1])

    @property
    def num_follower_actions(self) -> int:
        """|A_f|."""
        return int(self.P.shape[2])

    def reward(self, player: Player) -> torch.Tensor:
        """``r_l`` or ``r_f``."""
        return self.r_l if player == "leader" else self.r_f


def random_stackelberg_game(
    num_states: int,
    num_leader_actions: int,
    num_follower_actions: int,
    gamma: float,
    tau: float,
    generator: torch.Generator,
    sparsity_threshold: float = 0.7,
) -> StackelbergGame:
    """The random game of PBRL §6.1.

    ``U[0, 1]`` rewards with entries ``< 0.7`` set to 0, ``U[0, 1]`` transition entries normalised to distributions,
    uniform ``ρ`` (ρ is unspecified in the paper; it must have full support).
    """
    shape = (num_states, num_leader_actions, num_follower_actions)
    r_l = torch.rand(shape, generator=generator, dtype=DTYPE)
    r_f = torch.rand(shape, generator=generator, dtype=DTYPE)
    r_l = torch.where(r_l < sparsity_threshold, torch.zeros_like(r_l), r_l)
    r_f = torch.where(r_f < sparsity_threshold, torch.zeros_like(r_f), r_f)
    P = torch.rand((*shape, num_states), generator=generator, dtype=DTYPE)
    P = P / P.sum(-1, keepdim=True)
    rho = torch.full((num_states,), 1.0 / num_states, dtype=DTYPE)
    return StackelbergGame(P, r_l, r_f, rho, gamma, tau)


def neg_entropy(pi: torch.Tensor) -> torch.Tensor:
    """``h_s(π(s)) = Σ_a π(a|s) log π(a|s)`` per state, shape ``(S,)``."""
    return (pi * torch.log(pi.clamp_min(1e-300))).sum(-1)


def joint_transition(game: StackelbergGame, pi_x: torch.Tensor, pi_y: torch.Tensor) -> torch.Tensor:
    """``P^{π_x, π_y}[s, s'] = Σ_{a_l, a_f} π_x(a_l|s) π_y(a_f|s) P(s'|s, a_l, a_f)``."""
    return torch.einsum("sl,sf,slft->st", pi_x, pi_y, game.P)


def evaluate(
    game: StackelbergGame, pi_x: torch.Tensor, pi_y: torch.Tensor, player: Player
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact ``(Q_⋆ (S, A_l, A_f), V_⋆ (S,))`` of player ``⋆`` under the joint policy (PBRL §2.2).

    ``V_⋆ = (I − γ P^π)^{-1} [Σ π_x π_y r_⋆ − τ h(π_⋆)]`` and ``Q_⋆ = r_⋆ + γ P V_⋆`` (the regulariser is not charged
    at the current step, eq. 2.2). Differentiable in both policies.
    """
    r = game.reward(player)
    own = pi_x if player == "leader" else pi_y
    step = torch.einsum("sl,sf,slf->s", pi_x, pi_y, r) - game.tau * neg_entropy(own)
    eye = torch.eye(game.num_states, dtype=r.dtype)
    V = torch.linalg.solve(eye - game.gamma * joint_transition(game, pi_x, pi_y), step)
    Q = r + game.gamma * torch.einsum("slft,t->slf", game.P, V)
    return Q, V


def value(game: StackelbergGame, pi_x: torch.Tensor, pi_y: torch.Tensor, player: Player) -> torch.Tensor:
    """``V_⋆^{π_x, π_y}(ρ)`` (scalar, differentiable)."""
    return game.rho @ evaluate(game, pi_x, pi_y, player)[1]


def occupancy(
    game: StackelbergGame, pi_x: torch.Tensor, pi_y: torch.Tensor, init: torch.Tensor | None = None
) -> torch.Tensor:
    """Unnormalised discounted state occupancy ``ν(s) = Σ_t γ^t Pr(s_t = s | s_0 ~ init)`` (sums to ``1/(1−γ)``)."""
    init = game.rho if init is None else init
    eye = torch.eye(game.num_states, dtype=init.dtype)
    return torch.linalg.solve((eye - game.gamma * joint_transition(game, pi_x, pi_y)).T, init)


def follower_mdp(game: StackelbergGame, pi_x: torch.Tensor) -> tuple[SoftMDP, torch.Tensor]:
    """The follower's MDP ``M_τ(x)`` of Lemma 18: ``(SoftMDP(P_x, ρ, γ, τ), r_x)`` (with ``r_f``, see module doc).

    ``V_f^{π_x, π_y}(s) = V^{π_y}_{M_τ(x)}(s)`` for every ``π_y``, and the core's soft conventions (SoBiRL eq. 3)
    coincide with PBRL's (§2.1, eqs. 2.1–2.2), so :func:`~bilevel_rl.tabular.core.soft_mdp.solve_soft` gives
    ``π*_y(x)``.
    """
    P_x = torch.einsum("sl,slft->sft", pi_x, game.P)
    r_x = torch.einsum("sl,slf->sf", pi_x, game.r_f)
    return SoftMDP(P_x, game.rho, game.gamma, game.tau), r_x


def best_response(game: StackelbergGame, pi_x: torch.Tensor) -> SoftSolution:
    """The follower's exact soft best response ``π*_y(x)`` with ``Q*``, ``V*`` of ``M_τ(x)`` (no autograd graph)."""
    mdp, r_x = follower_mdp(game, pi_x.detach())
    return solve_soft(r_x, mdp)


def follower_gap(game: StackelbergGame, pi_x: torch.Tensor, pi_y: torch.Tensor) -> float:
    """``V_f^{π_x, π*_y(x)}(ρ) − V_f^{π_x, π_y}(ρ) ≥ 0`` (Fig. 1 right; the value penalty (3.2))."""
    with torch.no_grad():
        sol = best_response(game, pi_x)
        return float(game.rho @ sol.V - value(game, pi_x, pi_y, "follower"))


def hyper_objective(game: StackelbergGame, x: torch.Tensor) -> float:
    """``Φ(x) = −V_l^{π_x, π*_y(x)}(ρ)``, the upper objective of (6.1) at the follower's best response."""
    with torch.no_grad():
        pi_x = torch.softmax(x, -1)
        return float(-value(game, pi_x, best_response(game, pi_x).pi, "leader"))


def hypergradient(game: StackelbergGame, x: torch.Tensor) -> tuple[torch.Tensor, SoftSolution]:
    """Exact ``∇Φ(x)`` by implicit differentiation of the follower's soft Bellman fixed point (``x``-dependent ``P_x``).

    With ``T_x(Q) = r_x + γ P_x V(Q)``, ``V(Q) = τ logsumexp(Q/τ)``, ``Q* = T_x(Q*)`` and ``π* = softmax(Q*/τ)``:

    * ``g_Q = π* ⊙ (g_π − Σ_a π* g_π) / τ`` pulls ``g_π = ∂f/∂π*`` back to ``Q*``;
    * the adjoint ``w = (I − ∂T/∂Q)^{-T} g_Q`` with ``∂T/∂Q[(s,a),(s',a')] = γ P_x(s'|s,a) π*(a'|s')`` is
      ``w = g_Q + u ⊗ π*``, ``u = (I − γ P^{π*T}_x)^{-1} γ Σ_{s,a} g_Q(s,a) P_x(·|s,a)`` (an ``S × S`` solve);
    * ``∇Φ = ∂f/∂x + (∂T_x(Q*)/∂x)^T w`` (one vector–Jacobian product with ``Q*`` held fixed).

    Returns:
        ``(∇Φ(x), follower soft solution at x)``.
    """
    x = x.detach().clone().requires_grad_(True)
    pi_x = torch.softmax(x, -1)
    sol = best_response(game, pi_x)
    pi_star = sol.pi.clone().requires_grad_(True)
    f = -value(game, pi_x, pi_star, "leader")
    g_x_direct, g_pi = torch.autograd.grad(f, [x, pi_star], retain_graph=True)
    g_Q = pi_star.detach() * (g_pi - (g_pi * pi_star.detach()).sum(-1, keepdim=True)) / game.tau
    mdp, r_x = follower_mdp(game, pi_x)
    with torch.no_grad():
        P_pi = mdp.policy_transition(sol.pi)
        eye = torch.eye(game.num_states, dtype=DTYPE)
        u = torch.linalg.solve(eye - game.gamma * P_pi.T, game.gamma * torch.einsum("sa,sat->t", g_Q, mdp.P.detach()))
        w = g_Q + u[:, None] * sol.pi
    T_Q = r_x + game.gamma * torch.einsum("sat,t->sa", mdp.P, sol.V)
    (g_x_implicit,) = torch.autograd.grad(T_Q, x, grad_outputs=w)
    return (g_x_direct + g_x_implicit).detach(), sol


@dataclass
class GameBatch:
    """``G`` games of equal sizes, γ and τ, stacked along the state axis for vectorised Monte-Carlo runs.

    Game ``g`` owns the global states ``g·S … (g+1)·S − 1``; policies and logits of the batch are ``(G·S, A)`` tables
    and the games never exchange states, so a batched run is a set of independent runs (one RNG stream).
    """

    games: list[StackelbergGame]
    r_l: torch.Tensor = field(init=False, repr=False)
    r_f: torch.Tensor = field(init=False, repr=False)
    simulator: Simulator = field(init=False, repr=False)
    starts: CategoricalTable = field(init=False, repr=False)

    def __post_init__(self) -> None:
        first = self.games[0]
        for g in self.games:
            if g.P.shape != first.P.shape or g.gamma != first.gamma or g.tau != first.tau:
                raise ValueError("all games of a batch need equal sizes, gamma and tau")
        self.r_l = torch.cat([g.r_l for g in self.games])
        self.r_f = torch.cat([g.r_f for g in self.games])
        S, A_l, A_f = first.num_states, first.num_leader_actions, first.num_follower_actions
        # joint actions a = a_l·A_f + a_f; each game's table holds local next states, shifted by its first state
        P = torch.cat([g.P.reshape(S, A_l * A_f, S) for g in self.games])
        self.simulator = Simulator(P, next_offset=torch.arange(self.num_games).repeat_interleave(S) * S)
        self.starts = CategoricalTable(torch.stack([g.rho for g in self.games]))

    @property
    def num_games(self) -> int:
        """``G``."""
        return len(self.games)

    @property
    def num_states(self) -> int:
        """States per game ``S``."""
        return self.games[0].num_states

    @property
    def gamma(self) -> float:
        """Shared discount."""
        return self.games[0].gamma

    @property
    def tau(self) -> float:
        """Shared regularisation weight."""
        return self.games[0].tau

    def block(self, z: torch.Tensor, g: int) -> torch.Tensor:
        """Game ``g``'s rows of a stacked ``(G·S, ·)`` table."""
        return z[g * self.num_states : (g + 1) * self.num_states]


def as_batch(game: StackelbergGame | GameBatch) -> GameBatch:
    """Wrap a single game as a batch of one."""
    return game if isinstance(game, GameBatch) else GameBatch([game])


@dataclass
class GameRollouts:
    """``batch`` trajectories of length ``H`` per game (``(G·batch, H)`` tensors of global states / actions)."""

    states: torch.Tensor
    leader_actions: torch.Tensor
    follower_actions: torch.Tensor
    r_l: torch.Tensor
    r_f: torch.Tensor
    batch: int

    @property
    def env_steps(self) -> int:
        """Environment steps taken per game (``B · H``)."""
        return self.batch * int(self.states.shape[1])


def joint_policy(pi_x: torch.Tensor, pi_y: torch.Tensor) -> torch.Tensor:
    """``π_x ⊗ π_y`` as a ``(S, A_l·A_f)`` table over joint actions ``a = a_l·A_f + a_f``."""
    return (pi_x[:, :, None] * pi_y[:, None, :]).reshape(pi_x.shape[0], -1)


def sample_rollouts(
    game: StackelbergGame | GameBatch,
    pi_x: torch.Tensor,
    pi_y: torch.Tensor,
    batch: int,
    horizon: int,
    generator: torch.Generator,
    first_follower: torch.Tensor | None = None,
) -> GameRollouts:
    """Monte-Carlo rollouts with ``s_0 ~ ρ`` under ``(π_x, π_y)``, ``batch`` trajectories per game (core sampler).

    Args:
        game: a game or a :class:`GameBatch` (policies are then stacked ``(G·S, A)`` tables).
        pi_x: leader policy.
        pi_y: follower policy.
        batch: trajectories per game ``B``.
        horizon: trajectory length ``H``.
        generator: torch RNG (all randomness is drawn from it, so runs are reproducible).
        first_follower: if given, the follower's first action ``a_f,0`` is drawn from this policy instead of
            ``pi_y`` (the "mixed" rollouts of the Bellman-penalty gradient, Lemma 9b).
    """
    gb = as_batch(game)
    game_of = torch.arange(gb.num_games).repeat_interleave(batch)
    s0 = gb.starts.sample(game_of, generator) + game_of * gb.num_states
    sim = gb.simulator.with_policy(joint_policy(pi_x, pi_y))
    a0 = None
    if first_follower is not None:
        a0 = sim.with_policy(joint_policy(pi_x, first_follower)).act(s0, generator)
    ro = rollout(sim, s0, horizon, generator, a0)
    A_f = pi_y.shape[1]
    states, a_l, a_f = ro.states, ro.actions // A_f, ro.actions % A_f
    return GameRollouts(states, a_l, a_f, gb.r_l[states, a_l, a_f], gb.r_f[states, a_l, a_f], batch)
