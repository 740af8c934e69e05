"""PBRL (Shen, Yang, Chen, JMLR 2025): penalty-based bilevel RL on the tabular Stackelberg Markov game.

The bilevel problem (2.4) / (6.1) is replaced by the penalised problem (3.1)

    min_{x, y} F_λ(x, y) = f(x, y) + λ p(x, y),      f(x, y) = −V_l^{π_x, π_y}(ρ),

with either penalty:

* **value penalty** (3.2): ``p_V(x, y) = max_{y'} V_f^{π_x, π_{y'}}(ρ) − V_f^{π_x, π_y}(ρ)``;
* **Bellman penalty** (3.5)–(3.7): ``p_B(x, y) = g(x, y) − v(x)``,
  ``g = E_{s~ρ}[⟨π_y(s), q_s(x)⟩ + τ h_s(π_y(s))]``, ``q_s(x) = −Q*_x(s, ·)``, ``v(x) = min_y g(x, y)``. With the
  negative-entropy ``h`` this is ``τ E_{s~ρ} KL(π_y(s) ‖ π*_y(x)(s))``.

Algorithm 1 (§4.3, update (4.4)) takes, at every outer step ``k``, an approximate best response ``π̂_k`` from an
inner oracle (App. C.7: policy mirror descent, eq. C.32, or ``T`` policy-gradient steps, eq. C.33, as in the
experiments of App. E.1; warm-started across outer steps, which the paper leaves open) and the step

    (x, y) ← (x, y) − α (∇f + λ ∇̂p),

where ``∇̂p`` is the closed form with ``π*_y(x) → π̂`` (C.29 for the value penalty, below C.31 for Bellman):

* Lemma 6 / 7(b): ``∇_x p_V = −∇_x V_f^{π_x, π_y}(ρ) + ∇_x V_f^{π_x, π̂}(ρ)`` with
  ``∇_x V_f^{π_x, μ}(ρ) = E[Σ_t γ^t Q̄_f(s_t, a_l,t, a_f,t) ∇log π_x(a_l,t|s_t) | π_x, μ]``, ``∇_y p_V = −∇_y V_f``;
* Lemma 8 / 9(b): ``∇_x p_B = ∇_x g − ∇v`` where ``∇_x g`` (resp. ``∇v``) is ``−E_{s~ρ, a_f,0~π_y (resp. π̂)}
  ∇_x Q_f^{π_x, π̂}(s, a_f,0)`` ("mixed" rollouts: only the follower's first action differs), and
  ``∇_y p_B = ∇_y g = E_{s~ρ}[Σ_a ∇π_y(a|s)(τ log π_y(a|s) − Q̂(s, a))]`` (C.27 through the softmax).

Two estimators are provided: ``"exact"`` evaluates these expectations with occupancy measures (linear solves), and
``"mc"`` uses REINFORCE over ``B`` trajectories of length ``H`` from ``s_0 ~ ρ`` (App. E.1: ``H = 5, B = 16``). The
independent policy-gradient baseline (§6.1) is ``method="independent"``.

**Printed-algorithm corrections** (``docs/theory/penalty_methods.md`` §1.2): the "penalty constant γ" of Alg. 1
line 1 is λ; the update of line 6 lost its minus sign and is implemented as (4.4), i.e. descent on ``F_λ``; the
Stackelberg follower reward is ``r_f`` (not the printed ``r_l`` of §2.2 and Lemma 18, App. B.1; see
:mod:`bilevel_rl.tabular.repro.stackelberg`); the Lemma 7(b) expectation
conditions on ``s_0 ~ ρ`` (not ``s_0 = s``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache, partial
from typing import Literal

import torch

from bilevel_rl.schedules import PenaltySchedule, penalty_constant
from bilevel_rl.tabular.core.soft_mdp import DTYPE
from bilevel_rl.tabular.repro.stackelberg import (
    GameBatch,
    GameRollouts,
    StackelbergGame,
    as_batch,
    best_response,
    evaluate,
    hyper_objective,
    hypergradient,
    joint_transition,
    neg_entropy,
    occupancy,
    sample_rollouts,
    value,
)

Method = Literal["value", "bellman", "independent"]
Estimator = Literal["mc", "exact"]
Oracle = Literal["pg", "pmd", "exact"]
AnyGame = StackelbergGame | GameBatch


@dataclass
class TabularPBRLConfig:
    """All hyperparameters of one PBRL / independent-PG run (defaults: App. E.1 value-penalty settings).

    Attributes:
        method: ``"value"`` / ``"bellman"`` penalty (Alg. 1) or ``"independent"`` policy gradient (baseline).
        lam: penalty constant λ (E.1: 2 for the value, 7 for the Bellman penalty).
        lam_schedule: ``"constant"`` (theory, Thm 11), ``"linear"`` (``λ_k = λ + lam_growth·k``) or
            ``"geometric"`` (``λ_k = λ · lam_growth^{⌊k / lam_every⌋}``); capped at ``lam_max``.
        lam_growth: slope (linear) or factor (geometric) of the schedule.
        lam_every: iterations between geometric increases.
        lam_max: cap of the schedule.
        lr: step size α of the outer update (E.1: 0.1).
        lr_y: follower step size (defaults to ``lr``; the theory uses one α).
        inner_steps: inner-oracle iterations ``T`` per outer step (E.1: 1 value, 10 Bellman).
        inner_lr: inner policy-gradient / PMD step size (unspecified in the paper; 0.1 like α).
        oracle: ``"pg"`` (warm-started PG ascent on ``V_f``, as run), ``"pmd"`` (C.32–C.33 with exact ``Q``) or
            ``"exact"`` (the soft best response, ``π̂ = π*_y(x)``).
        estimator: ``"mc"`` (REINFORCE, App. E.1) or ``"exact"`` expectations.
        horizon: Monte-Carlo trajectory length ``H`` (E.1: 5).
        batch: Monte-Carlo batch ``B`` (E.1: 16).
        iterations: maximum outer iterations.
        env_step_budget: stop once this many environment steps were used (all rollouts, inner ones included).
        log_every: record diagnostics every this many outer iterations.
        seed: RNG seed of the sampler.
    """

    method: Method = "value"
    lam: float = 2.0
    lam_schedule: PenaltySchedule = "constant"
    lam_growth: float = 0.0
    lam_every: int = 1
    lam_max: float = math.inf
    lr: float = 0.1
    lr_y: float | None = None
    inner_steps: int = 1
    inner_lr: float = 0.1
    oracle: Oracle = "pg"
    estimator: Estimator = "mc"
    horizon: int = 5
    batch: int = 16
    iterations: int = 1000
    env_step_budget: int | None = None
    log_every: int = 100
    seed: int = 0

    def penalty_coefficient(self, k: int) -> float:
        """λ_k of the configured schedule at outer iteration ``k`` (0-based: ``k`` steps already taken)."""
        return penalty_constant(k, self.lam, self.lam_schedule, self.lam_growth, self.lam_every, self.lam_max)

    @classmethod
    def paper(cls, method: Method, **overrides: object) -> TabularPBRLConfig:
        """The App. E.1 settings of ``method`` (lr 0.1, MC ``H = 5``, ``B = 16``; λ / T per penalty)."""
        base: dict[str, object] = {"method": method}
        if method == "bellman":
            base |= {"lam": 7.0, "inner_steps": 10}
        elif method == "independent":
            base |= {"lam": 0.0, "inner_steps": 0}
        base |= overrides
        return cls(**base)  # type: ignore[arg-type]


# ---------------------------------------------------------------- exact closed forms (Lemmas 6–9, softmax policies)


def softmax_pg(pi: torch.Tensor, weight: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """``∇_θ Σ_s weight(s) Σ_a π_θ(a|s) q(s, a)`` for softmax logits θ with ``q`` and ``weight`` held fixed.

    Equals ``weight(s) π(a|s) (q(s, a) − Σ_b π(b|s) q(s, b))``; with ``weight`` the discounted occupancy this is the
    policy-gradient theorem.
    """
    return weight[:, None] * pi * (q - (pi * q).sum(-1, keepdim=True))


def upper_grads_exact(game: StackelbergGame, pi_x: torch.Tensor, pi_y: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Exact ``(∇_x f, ∇_y f)`` of ``f = −V_l^{π_x, π_y}(ρ)`` (the leader's own entropy term included)."""
    Q_l, _ = evaluate(game, pi_x, pi_y, "leader")
    nu = occupancy(game, pi_x, pi_y)
    q_x = torch.einsum("slf,sf->sl", Q_l, pi_y) - game.tau * torch.log(pi_x)
    q_y = torch.einsum("slf,sl->sf", Q_l, pi_x)
    return -softmax_pg(pi_x, nu, q_x), -softmax_pg(pi_y, nu, q_y)


def follower_pg_exact(game: StackelbergGame, pi_x: torch.Tensor, pi_y: torch.Tensor) -> torch.Tensor:
    """Exact ``∇_y V_f^{π_x, π_y}(ρ)`` (soft policy gradient, PBRL B.10 through the softmax)."""
    Q_f, _ = evaluate(game, pi_x, pi_y, "follower")
    q = torch.einsum("slf,sl->sf", Q_f, pi_x) - game.tau * torch.log(pi_y)
    return softmax_pg(pi_y, occupancy(game, pi_x, pi_y), q)


def leader_grad_follower_value(game: StackelbergGame, pi_x: torch.Tensor, mu: torch.Tensor) -> torch.Tensor:
    """``∇_x V_f^{π_x, μ}(ρ)`` with μ fixed (Lemma 7(b), C.2–C.5): ``Σ_s ν(s) Σ_{a_l} ∇π_x(a_l|s) Q̄_f(s, a_l)``."""
    Q_f, _ = evaluate(game, pi_x, mu, "follower")
    return softmax_pg(pi_x, occupancy(game, pi_x, mu), torch.einsum("slf,sf->sl", Q_f, mu))


def value_penalty(game: StackelbergGame, pi_x: torch.Tensor, pi_y: torch.Tensor) -> float:
    """``p_V = V_f^{π_x, π*}(ρ) − V_f^{π_x, π_y}(ρ)`` (eq. 3.2)."""
    with torch.no_grad():
        return float(game.rho @ best_response(game, pi_x).V - value(game, pi_x, pi_y, "follower"))


def bellman_penalty(game: StackelbergGame, pi_x: torch.Tensor, pi_y: torch.Tensor) -> float:
    """``p_B = g − v`` (eqs. 3.5–3.7) ``= E_{s~ρ}[Σ_a π_y (τ log π_y − Q*) + V*]``."""
    with torch.no_grad():
        sol = best_response(game, pi_x)
        g_s = (pi_y * (game.tau * torch.log(pi_y) - sol.Q)).sum(-1)
        return float(game.rho @ (g_s + sol.V))


def value_penalty_grads_exact(
    game: StackelbergGame, pi_x: torch.Tensor, pi_y: torch.Tensor, pi_hat: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(∇_x p_V, ∇_y p_V)`` of Lemma 6 / 7(b) with ``π*_y(x) → π̂`` (C.29); exact when ``π̂ = π*``."""
    gx = leader_grad_follower_value(game, pi_x, pi_hat) - leader_grad_follower_value(game, pi_x, pi_y)
    return gx, -follower_pg_exact(game, pi_x, pi_y)


def bellman_penalty_grads_exact(
    game: StackelbergGame, pi_x: torch.Tensor, pi_y: torch.Tensor, pi_hat: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(∇_x p_B, ∇_y p_B)`` of Lemma 8 / 9(b) with ``π*_y(x) → π̂`` (below C.31); exact when ``π̂ = π*``.

    ``E_{s_0~ρ, a_f,0~μ_0} ∇_x Q_f^{π_x, π̂}(s_0, a_f,0)`` splits into the ``t = 0`` term at ``ρ`` with the follower
    action from ``μ_0`` and the ``t ≥ 1`` terms at the occupancy ``γ (I − γ P^{π_x, π̂})^{-T} P^{π_x, μ_0 T} ρ``.
    """
    Q_f, _ = evaluate(game, pi_x, pi_hat, "follower")
    q_tail = torch.einsum("slf,sf->sl", Q_f, pi_hat)

    def grad_q(mu0: torch.Tensor) -> torch.Tensor:
        first = softmax_pg(pi_x, game.rho, torch.einsum("slf,sf->sl", Q_f, mu0))
        tail_init = game.gamma * joint_transition(game, pi_x, mu0).T @ game.rho
        return first + softmax_pg(pi_x, occupancy(game, pi_x, pi_hat, tail_init), q_tail)

    gx = grad_q(pi_hat) - grad_q(pi_y)
    q_hat = torch.einsum("slf,sl->sf", Q_f, pi_x)
    return gx, softmax_pg(pi_y, game.rho, game.tau * torch.log(pi_y) - q_hat)


# ---------------------------------------------------------------- Monte-Carlo estimators (App. E.1)


@lru_cache(maxsize=16)
def _return_operator(gamma: float, horizon: int) -> torch.Tensor:
    """``W[t', t] = γ^{t'}`` for ``t' ≥ t`` (else 0), so ``(c @ W)[t] = γ^t Σ_{t' ≥ t} γ^{t'−t} c_{t'}``."""
    t = torch.arange(horizon)
    return torch.where(t[:, None] >= t[None, :], gamma ** t[:, None].to(DTYPE), torch.zeros((), dtype=DTYPE))


def discounted_returns(c: torch.Tensor, gamma: float) -> torch.Tensor:
    """``γ^t`` times the return-to-go of a ``(B, H)`` reward array, truncated at ``H`` (the MC bias of App. E.1)."""
    return c @ _return_operator(gamma, c.shape[1])


def softmax_score(
    pi: torch.Tensor, states: torch.Tensor, actions: torch.Tensor, weights: torch.Tensor, batch: int
) -> torch.Tensor:
    """``(1/B) Σ_{i,t} w_{i,t} ∇_θ log π_θ(a_{i,t}|s_{i,t})`` for softmax logits (``∇ log π = e_a − π(s)``).

    Differentiable in ``weights`` (not in ``pi``: the score is evaluated at the sampling policy).
    """
    s, w, p = states.reshape(-1), weights.reshape(-1), pi.detach()
    grad = torch.zeros(p.shape, dtype=w.dtype).index_put((s, actions.reshape(-1)), w, accumulate=True)
    return grad.index_add(0, s, -w[:, None] * p[s]) / batch


def entropy_direct(pi: torch.Tensor, states: torch.Tensor, gamma: float, batch: int) -> torch.Tensor:
    """``(1/B) Σ_{i,t} γ^t ∇_θ h(π_θ(s_{i,t}))`` (the pathwise part of the regulariser's gradient)."""
    p = pi.detach()
    log_pi = torch.log(p)
    dh = p * (log_pi - (p * log_pi).sum(-1, keepdim=True))
    disc = (gamma ** torch.arange(states.shape[1], dtype=DTYPE)).repeat(states.shape[0])
    grad = torch.zeros_like(p).index_add_(0, states.reshape(-1), disc[:, None] * dh[states.reshape(-1)])
    return grad / batch


def _soft_returns(game: AnyGame, roll: GameRollouts, player: str, pi_reg: torch.Tensor) -> torch.Tensor:
    """``γ^t``-weighted returns-to-go of ``r_⋆ − τ h(π_⋆(s_t))`` (⋆ = ``player``, ``π_⋆ = pi_reg``)."""
    reward = roll.r_l if player == "leader" else roll.r_f
    return discounted_returns(reward - game.tau * neg_entropy(pi_reg)[roll.states], game.gamma)


def mc_own_pg(game: AnyGame, roll: GameRollouts, pi: torch.Tensor, player: str) -> torch.Tensor:
    """REINFORCE estimate of ``∇ V_⋆(ρ)`` w.r.t. player ⋆'s own logits (regulariser included)."""
    actions = roll.leader_actions if player == "leader" else roll.follower_actions
    w = _soft_returns(game, roll, player, pi)
    direct = entropy_direct(pi, roll.states, game.gamma, roll.batch)
    return softmax_score(pi, roll.states, actions, w, roll.batch) - game.tau * direct


def mc_cross_pg(
    game: AnyGame, roll: GameRollouts, pi_param: torch.Tensor, pi_other: torch.Tensor, player: str
) -> torch.Tensor:
    """REINFORCE estimate of ``∇ V_⋆(ρ)`` w.r.t. the *other* player's logits (⋆ = ``player``).

    ``pi_other`` is ⋆'s own policy: its regulariser enters the returns but not the gradient.
    """
    actions = roll.follower_actions if player == "leader" else roll.leader_actions
    return softmax_score(pi_param, roll.states, actions, _soft_returns(game, roll, player, pi_other), roll.batch)


def _mixed_q_returns(game: AnyGame, roll: GameRollouts, pi_hat: torch.Tensor) -> torch.Tensor:
    """``γ^t``-weighted returns-to-go of ``Q_f^{π_x, π̂}``: regulariser ``τ h(π̂)`` charged from ``t = 1`` on."""
    c = roll.r_f - game.tau * neg_entropy(pi_hat)[roll.states]
    c[:, 0] = roll.r_f[:, 0]
    return discounted_returns(c, game.gamma)


def mc_bellman_grads(
    game: AnyGame, pi_x: torch.Tensor, pi_y: torch.Tensor, pi_hat: torch.Tensor, mixed: GameRollouts, hat: GameRollouts
) -> tuple[torch.Tensor, torch.Tensor]:
    """MC ``(∇_x p_B, ∇_y p_B)`` (Lemma 9(b)): ``mixed`` has ``a_f,0 ~ π_y`` then ``π̂``; ``hat`` is all ``π̂``."""
    g_mixed = _mixed_q_returns(game, mixed, pi_hat)
    gx = softmax_score(pi_x, hat.states, hat.leader_actions, _mixed_q_returns(game, hat, pi_hat), hat.batch)
    gx = gx - softmax_score(pi_x, mixed.states, mixed.leader_actions, g_mixed, mixed.batch)
    s0, a0 = mixed.states[:, :1], mixed.follower_actions[:, :1]
    return gx, softmax_score(pi_y, s0, a0, game.tau * torch.log(pi_y[s0, a0]) - g_mixed[:, :1], mixed.batch)


# ---------------------------------------------------------------- Algorithm 1 and the independent-PG baseline


@dataclass
class PBRLResult:
    """Final iterates and the diagnostics recorded every ``log_every`` iterations (exact, not estimated)."""

    x: torch.Tensor
    y: torch.Tensor
    y_hat: torch.Tensor
    rows: list[dict[str, float]] = field(default_factory=list)


def _diagnostics(game: StackelbergGame, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    pi_x, pi_y = torch.softmax(x, -1), torch.softmax(y, -1)
    sol = best_response(game, pi_x)
    with torch.no_grad():
        v_f = float(value(game, pi_x, pi_y, "follower"))
        g_s = (pi_y * (game.tau * torch.log(pi_y) - sol.Q)).sum(-1)
        return {
            "leader_value": float(value(game, pi_x, pi_y, "leader")),
            "leader_value_at_best_response": float(value(game, pi_x, sol.pi, "leader")),
            "follower_gap": float(game.rho @ sol.V) - v_f,
            "bellman_gap": float(game.rho @ (g_s + sol.V)),
        }


def _per_game(gb: GameBatch, fn: Callable[..., tuple[torch.Tensor, ...]], *tables: torch.Tensor) -> list[torch.Tensor]:
    """Apply an exact single-game function to every game's block of the stacked tables and re-stack the outputs."""
    outs = [fn(game, *(gb.block(t, g) for t in tables)) for g, game in enumerate(gb.games)]
    return [torch.cat(parts) for parts in zip(*outs, strict=True)]


def _pmd_step(game: StackelbergGame, pi_x: torch.Tensor, pi_hat: torch.Tensor, eta: float) -> tuple[torch.Tensor]:
    """One PMD step (C.32–C.33) for negative-entropy ``h`` and KL Bregman divergence, in logits.

    ``π^{i+1} ∝ (π^i)^{1/(1+ητ)} exp(η Q^{π^i} / (1+ητ))`` with the follower-MDP ``Q`` of ``M_τ(x)``.
    """
    Q_f, _ = evaluate(game, pi_x, pi_hat, "follower")
    q = torch.einsum("slf,sl->sf", Q_f, pi_x)
    return ((torch.log(pi_hat) + eta * q) / (1 + eta * game.tau),)


def _exact_grads(
    method: Method, game: StackelbergGame, pi_x: torch.Tensor, pi_y: torch.Tensor, pi_hat: torch.Tensor
) -> tuple[torch.Tensor, ...]:
    """Exact ``(∇_x f, ∇_y f, ∇̂_x p, ∇̂_y p)`` of one game."""
    grads = value_penalty_grads_exact if method == "value" else bellman_penalty_grads_exact
    return (*upper_grads_exact(game, pi_x, pi_y), *grads(game, pi_x, pi_y, pi_hat))


def _inner_oracle(
    gb: GameBatch, cfg: TabularPBRLConfig, pi_x: torch.Tensor, y_hat: torch.Tensor, gen: torch.Generator
) -> tuple[torch.Tensor, int]:
    """``T`` warm-started oracle steps on the follower MDP ``M_τ(x)`` (C.32–C.33); returns ``(ŷ, env steps)``."""
    if cfg.oracle == "exact":
        return _per_game(gb, lambda g, px: (torch.log(best_response(g, px).pi),), pi_x)[0], 0
    steps = 0
    for _ in range(cfg.inner_steps):
        pi_hat = torch.softmax(y_hat, -1)
        if cfg.oracle == "pmd":
            y_hat = _per_game(gb, lambda g, px, ph: _pmd_step(g, px, ph, cfg.inner_lr), pi_x, pi_hat)[0]
        elif cfg.estimator == "exact":
            pg = _per_game(gb, lambda g, px, ph: (follower_pg_exact(g, px, ph),), pi_x, pi_hat)[0]
            y_hat = y_hat + cfg.inner_lr * pg
        else:
            roll = sample_rollouts(gb, pi_x, pi_hat, cfg.batch, cfg.horizon, gen)
            steps += roll.env_steps
            y_hat = y_hat + cfg.inner_lr * mc_own_pg(gb, roll, pi_hat, "follower")
    return y_hat, steps


def run_pbrl(
    game: AnyGame,
    cfg: TabularPBRLConfig,
    x0: torch.Tensor | None = None,
    y0: torch.Tensor | None = None,
    y_hat0: torch.Tensor | None = None,
) -> PBRLResult:
    """Algorithm 1 (value / Bellman penalty) or independent PG from logits ``x0, y0`` (default zeros, i.e. uniform).

    ``game`` may be a :class:`GameBatch`: the games then run side by side (stacked ``(G·S, A)`` logits, one sampler
    call per rollout for all games), which is how the 10-game comparison of §6.1 is vectorised.

    Diagnostics rows (one per game and logged iteration; exact values): ``game``, ``iteration``, ``env_steps`` (per
    game, inner-oracle rollouts included), ``lam``, ``leader_value`` (``V_l^{π_x, π_y}(ρ)``, Fig. 1 left),
    ``follower_gap`` (``p_V``, Fig. 1 right), ``bellman_gap`` (``p_B``), ``leader_value_at_best_response``
    (``−Φ(x)``) and ``step_norm`` (``‖∇f + λ∇̂p‖`` of the last step, all games; independent PG: the ascent norm).
    """
    gb = as_batch(game)
    n_states = gb.num_games * gb.num_states
    gen = torch.Generator().manual_seed(cfg.seed)
    first = gb.games[0]
    x = torch.zeros(n_states, first.num_leader_actions, dtype=DTYPE) if x0 is None else x0.clone()
    y = torch.zeros(n_states, first.num_follower_actions, dtype=DTYPE) if y0 is None else y0.clone()
    y_hat = y.clone() if y_hat0 is None else y_hat0.clone()
    lr_y = cfg.lr if cfg.lr_y is None else cfg.lr_y
    result = PBRLResult(x, y, y_hat)
    env_steps, step_norm, lam, k = 0, float("nan"), cfg.penalty_coefficient(0), 0
    while True:
        done = k >= cfg.iterations or (cfg.env_step_budget is not None and env_steps >= cfg.env_step_budget)
        if k % cfg.log_every == 0 or done:
            for g, single in enumerate(gb.games):
                row = {"game": float(g), "iteration": float(k), "env_steps": float(env_steps), "lam": lam}
                row |= {"step_norm": step_norm} | _diagnostics(single, gb.block(x, g), gb.block(y, g))
                result.rows.append(row)
        if done:
            break
        k += 1
        lam = cfg.penalty_coefficient(k - 1)
        pi_x, pi_y = torch.softmax(x, -1), torch.softmax(y, -1)
        if cfg.method == "independent":
            if cfg.estimator == "exact":
                dx, dy = _per_game(
                    gb, lambda g, px, py: (-upper_grads_exact(g, px, py)[0], follower_pg_exact(g, px, py)), pi_x, pi_y
                )
            else:
                roll = sample_rollouts(gb, pi_x, pi_y, cfg.batch, cfg.horizon, gen)
                env_steps += roll.env_steps
                dx, dy = mc_own_pg(gb, roll, pi_x, "leader"), mc_own_pg(gb, roll, pi_y, "follower")
            x, y = x + cfg.lr * dx, y + lr_y * dy
            step_norm = float(torch.sqrt(dx.square().sum() + dy.square().sum()))
            continue
        y_hat, used = _inner_oracle(gb, cfg, pi_x, y_hat, gen)
        env_steps += used
        pi_hat = torch.softmax(y_hat, -1)
        if cfg.estimator == "exact":
            fx, fy, px, py = _per_game(gb, partial(_exact_grads, cfg.method), pi_x, pi_y, pi_hat)
        else:
            roll = sample_rollouts(gb, pi_x, pi_y, cfg.batch, cfg.horizon, gen)
            hat = sample_rollouts(gb, pi_x, pi_hat, cfg.batch, cfg.horizon, gen)
            env_steps += roll.env_steps + hat.env_steps
            fx = -mc_own_pg(gb, roll, pi_x, "leader")
            fy = -mc_cross_pg(gb, roll, pi_y, pi_x, "leader")
            if cfg.method == "value":
                px = mc_cross_pg(gb, hat, pi_x, pi_hat, "follower") - mc_cross_pg(gb, roll, pi_x, pi_y, "follower")
                py = -mc_own_pg(gb, roll, pi_y, "follower")
            else:
                mixed = sample_rollouts(gb, pi_x, pi_hat, cfg.batch, cfg.horizon, gen, first_follower=pi_y)
                env_steps += mixed.env_steps
                px, py = mc_bellman_grads(gb, pi_x, pi_y, pi_hat, mixed, hat)
        gx, gy = fx + lam * px, fy + lam * py
        x, y = x - cfg.lr * gx, y - lr_y * gy
        step_norm = float(torch.sqrt(gx.square().sum() + gy.square().sum()))
    result.x, result.y, result.y_hat = x, y, y_hat
    return result


def hypergradient_descent(
    game: StackelbergGame, x0: torch.Tensor, lr: float, iterations: int, tol: float = 1e-10, armijo: bool = False
) -> tuple[torch.Tensor, list[float]]:
    """The bilevel reference solution: gradient descent on ``Φ(x) = −V_l^{π_x, π*_y(x)}(ρ)`` with exact ``∇Φ``.

    Uses the implicit hypergradient :func:`~bilevel_rl.tabular.repro.stackelberg.hypergradient`; stops when
    ``‖∇Φ‖ ≤ tol``.
    With ``armijo=True`` the step starts at ``lr``, is halved until ``Φ`` decreases by ``½ step ‖∇Φ‖²`` and the next
    trial step is twice the accepted one (for games where a safe constant step is unknown).

    Returns:
        ``(x, [‖∇Φ‖ per iteration])``.
    """
    x, norms = x0.clone(), []
    phi = hyper_objective(game, x)
    for _ in range(iterations):
        g, _ = hypergradient(game, x)
        norms.append(float(g.norm()))
        if norms[-1] <= tol:
            break
        if not armijo:
            x = x - lr * g
            continue
        step = lr
        while True:
            cand = x - step * g
            phi_cand = hyper_objective(game, cand)
            if phi_cand <= phi - 0.5 * step * norms[-1] ** 2 or step < 1e-12:
                break
            step /= 2
        x, phi, lr = cand, phi_cand, 2 * step
    return x, norms


def lbfgs_reference(
    game: StackelbergGame, x0: torch.Tensor, iterations: int = 500, tol: float = 1e-10
) -> tuple[torch.Tensor, float]:
    """A tightly converged local bilevel solution: L-BFGS (strong-Wolfe line search) on ``Φ`` with exact ``∇Φ``.

    Plain gradient descent on ``Φ`` is slow when ``Φ`` is ill-conditioned; the reference for the λ table needs
    ``‖∇Φ‖`` far below the distances it measures. Returns ``(x*, ‖∇Φ(x*)‖)``.
    """
    x = x0.detach().clone().requires_grad_(True)
    opt = torch.optim.LBFGS(
        [x], lr=1.0, max_iter=iterations, tolerance_grad=tol, tolerance_change=0.0, line_search_fn="strong_wolfe"
    )

    def closure() -> torch.Tensor:
        g, _ = hypergradient(game, x.detach())
        x.grad = g
        return torch.tensor(hyper_objective(game, x.detach()), dtype=DTYPE)

    opt.step(closure)  # type: ignore[no-untyped-call]
    x_star = x.detach()
    return x_star, float(hypergradient(game, x_star)[0].norm())
