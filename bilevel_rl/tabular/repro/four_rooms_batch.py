"""HPGD Table 3 (HPGD §5.1) with many runs stepped side by side: the paper's budget on a CPU.

The per-run loop of :mod:`bilevel_rl.tabular.repro.hpgd` (one run, one oracle solve per outer iteration) is far too
slow for the paper's budget (10,000 outer iterations × 10 seeds × the learning-rate grid, and the ``C`` grid for
Zero-Order). Here ``R`` runs of one (method, λ, β) cell — every (seed, learning rate[, C]) — share each outer
iteration: their best responses are solved together (batched soft policy iteration, one banded LU per run and
round), their HPGD trajectories are simulated together (``R × num_envs`` environments), and their exact gradients
(AMD) and values (Zero-Order, the metric) reuse the same factorisations. The mathematics per run is the per-run code's:

* the oracle ``π^o_{x,ξ}`` is the exact soft optimum (soft policy iteration to ``tol``, warm-started per context);
* HPGD: ``ĝ`` is :func:`~bilevel_rl.tabular.checks.hpgd_trajectory.pooled_weights` (Prop. 1 with every-visit
  Monte Carlo) on ``num_envs × steps_per_env`` on-policy steps; with ``hpgd_partial_episodes`` and
  ``hpgd_direct="start_state"`` exactly the estimator of the authors' code;
* AMD (Alg. 9 at its fixed point): the exact ``d/dx V̄^{π*_{x,ξ}}(S)`` by implicit differentiation; or, with
  ``amd_follower="sweeps"``, Alg. 9 as printed (``K`` warm-started sweeps per step, :mod:`.amd_sweeps`);
* Zero-Order (Alg. 10): ``[f(x + u z) − f(x)] / u · z`` with ``u = C / t``; ``f`` by our exact solver or, with
  ``zo_numerics="float32"``, by the authors' float32 dynamic programming (:mod:`.authors_float32`);
* update ``x ← x + α clip_{1}(ĝ)`` (ascent on the leader's return, i.e. Alg. 1's descent on ``F``).

All runs of a batch draw from one ``torch.Generator`` (so a run's numbers depend on the batch it ran in; the batch
composition and seed are part of the result). Tested against the per-run functions (``tests/test_four_rooms_batch.py``).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

import numba
import numpy as np
import torch

from bilevel_rl.tabular.checks.hpgd_trajectory import DIRECT_TERMS, DirectTerm, pooled_weights
from bilevel_rl.tabular.core.sampling import pin_cdf
from bilevel_rl.tabular.core.soft_mdp import DTYPE
from bilevel_rl.tabular.repro.amd_sweeps import SweptAMD
from bilevel_rl.tabular.repro.authors_float32 import ZO_NUMERICS, Float32Model, ZoNumerics
from bilevel_rl.tabular.repro.band_lu import BandedModel
from bilevel_rl.tabular.repro.four_rooms import CONTEXTS, FourRooms

Method = Literal["hpgd", "amd", "zero_order"]


def sparse_cdf(P: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(next, cdf)``, each ``(N, K)``: the at most ``K`` successors of every row of ``P (N, S)`` and their pinned CDF.

    Four-Rooms moves to at most five cells, so sampling a successor compares ``u`` with five numbers instead of
    searching a row of ``S``.
    """
    K = int((P > 0).sum(-1).max())
    probs, nxt = torch.sort(P, dim=-1, descending=True)
    return nxt[:, :K].contiguous(), pin_cdf(probs[:, :K])


class BatchFourRooms:
    """Four-Rooms rewards and dynamics for a batch of runs (``x: (R, d)``, contexts ``ctx: (R,)`` in ``{0, 1}``).

    Args:
        env: the environment conventions (``FourRooms``: slip of the model, cost form, goal mask, ``β``).
        sim_slip_prob: slip probability of the simulator that generates HPGD's trajectories (``None``: the model's).
            The authors' simulator moves as chosen with probability 0.67 while their dynamic-programming model,
            which gives the oracle and the metric, uses 0.56 (both from their ``fail_prob`` 0.33).
    """

    def __init__(self, env: FourRooms, sim_slip_prob: float | None = None) -> None:
        self.env, self.sim_slip_prob = env, sim_slip_prob
        self.S, self.A, self.d = env.num_states, env.num_actions, env.x_dim
        self.gamma = env.config.gamma
        self.P = torch.stack([env.transitions(xi) for xi in CONTEXTS])  # (2, S, A, S): the model
        self.banded = BandedModel.from_dense(self.P.numpy(), self.gamma)  # the oracle's linear algebra
        if sim_slip_prob is None:
            P_sim = self.P
        else:
            sim = FourRooms(replace(env.config, slip_prob=sim_slip_prob))
            P_sim = torch.stack([sim.transitions(xi) for xi in CONTEXTS])
        self.sim_next, self.sim_cdf = sparse_cdf(P_sim.reshape(-1, self.S))
        self.goal = torch.tensor([env.goals[xi] for xi in CONTEXTS])
        self.terminal = env.terminal()
        self.solves = 0  # runs solved (one per run and solve call)
        self.factorizations = 0  # LU factorisations (one per run and policy-iteration round)

    def identity(self) -> dict[str, object]:
        """The environment conventions (checked when a run resumes)."""
        return {**vars(self.env.config), "sim_slip": self.sim_slip_prob}

    def follower_reward(self, x: torch.Tensor, ctx: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
        """``(R, S, A)``: ``r_ξ + r̃_x`` per run, temperatures ``lam (R,)`` (:meth:`FourRooms.follower_reward`)."""
        env, R = self.env, x.shape[0]
        pen = env.penalty(x)  # (R, cells)
        cells = torch.arange(env.num_cells)
        is_goal = (cells[None, :] == self.goal[ctx][:, None]).to(DTYPE)
        if env.config.mask_goal_penalty:
            pen = pen * (1.0 - is_goal)
        sink = (-lam * math.log(self.A)).to(DTYPE)[:, None]
        return torch.cat([is_goal + pen, sink], 1)[:, :, None].expand(R, self.S, self.A)

    def leader_reward(self, x: torch.Tensor, ctx: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
        """``(R, S, A)``: ``r̄_{x,ξ} = 1{s = s+1} − β 1{s = G_ξ} cost(x)`` per run (``beta (R,)``)."""
        env, R = self.env, x.shape[0]
        states = torch.arange(self.S)
        goal = (states[None, :] == self.goal[ctx][:, None]).to(DTYPE)
        plus = (states == env.plus_one).to(DTYPE)[None, :]
        rbar = plus - (beta * env.cost(x))[:, None] * goal
        return rbar[:, :, None].expand(R, self.S, self.A)

    # ------------------------------------------------------------------ exact linear algebra
    def _groups(self, ctx: torch.Tensor) -> list[tuple[int, torch.Tensor]]:
        """``(k, runs in context k)`` for the contexts present (the model ``P`` is shared within a context)."""
        return [(k, idx) for k in range(len(CONTEXTS)) if len(idx := (ctx == k).nonzero()[:, 0])]

    def evaluate(self, lu: torch.Tensor, step: torch.Tensor, transposed: bool = False) -> torch.Tensor:
        """``V = (I − γ P^π)^{-1} step`` per run (``step: (R, S)``); ``transposed``: ``(I − γ P^π)^{-T} step``."""
        return torch.from_numpy(self.banded.solve(lu.numpy(), step.numpy(), transposed))

    def q_values(self, ctx: torch.Tensor, r: torch.Tensor, V: torch.Tensor) -> torch.Tensor:
        """``r + γ P V`` per run."""
        PV = torch.empty_like(r)
        for k, idx in self._groups(ctx):
            PV[idx] = (V[idx] @ self.P[k].reshape(-1, self.S).T).reshape(len(idx), self.S, self.A)
        return r + self.gamma * PV

    def expected_next(self, ctx: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """``Σ_{s,a} w(s, a) P(t | s, a)`` per run (``w: (R, S, A)`` → ``(R, S)``)."""
        out = torch.empty(w.shape[0], self.S, dtype=DTYPE)
        for k, idx in self._groups(ctx):
            out[idx] = w[idx].reshape(len(idx), -1) @ self.P[k].reshape(-1, self.S)
        return out

    def solve(
        self,
        r: torch.Tensor,
        ctx: torch.Tensor,
        lam: torch.Tensor,
        pi0: torch.Tensor,
        tol: float = 1e-10,
        max_iter: int = 100,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Soft policy iteration per run until ``max |ΔQ| < tol`` (runs that converged stop early).

        (A stop on the soft Bellman residual, ``γ λ max KL(π ‖ softmax(Q^π/λ)) / (1 − γ) < tol``, saves a round but
        leaves ``π`` ``O(√KL)`` from the optimum, about 1e-5 at λ = 10⁻³: too coarse for Zero-Order's late difference
        quotients, whose step ``u = C/t`` reaches 1e-4.)

        Returns the last *evaluated* policy (within ``tol`` of the soft optimum) and the banded LU factors of its
        ``I − γ P^π``, so values under it cost one more pair of triangular solves.
        """
        pi, lu, rounds = self.banded.soft_policy_iteration(
            r.numpy(), ctx.numpy(), lam.numpy(), pi0.numpy(), tol, max_iter
        )
        self.solves += r.shape[0]
        self.factorizations += int(rounds.sum())
        return torch.from_numpy(pi), torch.from_numpy(lu)

    def leader_values(
        self,
        x: torch.Tensor,
        ctx: torch.Tensor,
        beta: torch.Tensor,
        pi: torch.Tensor,
        lu: torch.Tensor,
    ) -> torch.Tensor:
        """``V̄^π(S)`` per run (HPGD eq. 7 as a return)."""
        rbar = self.leader_reward(x, ctx, beta)
        return self.evaluate(lu, (pi * rbar).sum(-1))[:, self.env.start]

    def exact_gradient(
        self,
        x: torch.Tensor,
        ctx: torch.Tensor,
        lam: torch.Tensor,
        beta: torch.Tensor,
        pi: torch.Tensor,
        lu: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(d/dx V̄^{π*}(S), V̄^{π*}(S))`` per run by implicit differentiation (AMD; HPGD Thm. 1 with ``ν`` summed).

        ``∂f/∂π(s, a) = d(s) Q̄(s, a)`` with ``d = (I − γ P^π)^{-T} e_S``; the adjoint of the soft-optimality
        condition (:func:`~bilevel_rl.tabular.core.soft_mdp.implicit_policy_vjp`) turns it into reward weights ``W``;
        the gradient is ``Σ d π ∇r̄ + Σ W ∇r`` (autograd through the batched reward tables).
        """
        xx = x.detach().clone().requires_grad_(True)
        rbar = self.leader_reward(xx, ctx, beta)
        with torch.no_grad():
            Vbar = self.evaluate(lu, (pi * rbar).sum(-1))
            e = torch.zeros(x.shape[0], self.S, dtype=DTYPE)
            e[:, self.env.start] = 1.0
            occ = self.evaluate(lu, e, transposed=True)  # d(s)
            g_pi = occ[:, :, None] * self.q_values(ctx, rbar, Vbar)
            w = pi * g_pi / lam[:, None, None]
            u = self.gamma * self.expected_next(ctx, w) - w.sum(-1)
            z = self.evaluate(lu, u, transposed=True)
            W = w + z[:, :, None] * pi
        total = (occ[:, :, None] * pi * rbar).sum() + (W * self.follower_reward(xx, ctx, lam)).sum()
        (g,) = torch.autograd.grad(total, xx)
        return g, Vbar[:, self.env.start]

    # ------------------------------------------------------------------ HPGD's trajectories
    def _columns(
        self, pi: torch.Tensor, ctx: torch.Tensor, num_envs: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(run, policy CDF rows, policy row offset, simulator row offset)`` of the ``R × num_envs`` columns."""
        R = pi.shape[0]
        run = torch.arange(R).repeat_interleave(num_envs)
        return run, pin_cdf(pi.reshape(R * self.S, self.A)), run * self.S, ctx[run] * self.S

    def rollouts(
        self,
        pi: torch.Tensor,
        ctx: torch.Tensor,
        num_envs: int,
        steps_per_env: int,
        max_episode_steps: int,
        generator: torch.Generator,
    ) -> dict[str, torch.Tensor]:
        """``num_envs`` auto-resetting simulator copies per run for ``steps_per_env`` steps (columns run-major).

        The layout and episode rules of :func:`~bilevel_rl.tabular.checks.hpgd_trajectory.run_envs`: an episode ends
        on entering the sink or after ``max_episode_steps``; restarts at ``S``. ``data["run"]`` maps columns to runs.
        """
        run, cdf, policy_row, sim_row = self._columns(pi, ctx, num_envs)
        N = len(run)
        policy = (cdf.numpy(), policy_row.numpy(), sim_row.numpy())
        # column-major storage ((N, T) arrays, returned as (T, N) views): every pass over the steps walks one
        # environment's column, so its reads and writes are contiguous; int32 halves the traffic of int64
        S_out = np.empty((N, steps_per_env), dtype=np.int32)
        A_out, T_out = np.empty_like(S_out), np.empty_like(S_out)
        D_out = np.empty((N, steps_per_env), dtype=np.bool_)
        s = np.full(N, self.env.start, dtype=np.int64)
        t = np.zeros(N, dtype=np.int64)
        sim = (self.sim_next.numpy(), self.sim_cdf.numpy(), self.terminal.numpy())
        for k0 in range(0, steps_per_env, ROLLOUT_CHUNK):
            u = torch.rand(min(ROLLOUT_CHUNK, steps_per_env - k0), 2, N, generator=generator, dtype=DTYPE).numpy()
            _rollout_chunk(np.ascontiguousarray(u.transpose(2, 1, 0)), k0, s, t, *policy, *sim, self.env.start,
                           max_episode_steps, S_out, A_out, T_out, D_out)  # fmt: skip
        complete = np.empty_like(D_out)
        _episode_completes(D_out, complete)
        S_t, A_t, T_t, D_t, C_t = (torch.from_numpy(a).T for a in (S_out, A_out, T_out, D_out, complete))
        return {"s": S_t, "a": A_t, "tau": T_t, "done": D_t, "complete": C_t, "run": run}

    def rollouts_stepwise(
        self,
        pi: torch.Tensor,
        ctx: torch.Tensor,
        num_envs: int,
        steps_per_env: int,
        max_episode_steps: int,
        generator: torch.Generator,
    ) -> dict[str, torch.Tensor]:
        """:meth:`rollouts` one torch step at a time (``torch.rand(2, N)`` per step); same draws, same output.

        The reference that the compiled kernel is tested and timed against (``scripts/bench_four_rooms_rollouts.py``).
        """
        run, policy_cdf, policy_row, sim_row = self._columns(pi, ctx, num_envs)
        N, start = len(run), self.env.start
        s, t = torch.full((N,), start, dtype=torch.long), torch.zeros(N, dtype=torch.long)
        out = {k: torch.empty(steps_per_env, N, dtype=torch.int32) for k in ("s", "a", "tau")}
        out["done"] = torch.empty(steps_per_env, N, dtype=torch.bool)
        last_a, last_k = self.A - 1, self.sim_cdf.shape[1] - 1
        for k in range(steps_per_env):
            u = torch.rand(2, N, 1, generator=generator, dtype=DTYPE)
            a = (u[0] >= policy_cdf[policy_row + s]).sum(1).clamp_(max=last_a)
            row = (sim_row + s) * self.A + a
            s2 = self.sim_next[row, (u[1] >= self.sim_cdf[row]).sum(1).clamp_(max=last_k)]
            done = (t >= max_episode_steps - 1) | self.terminal[s2]
            out["s"][k], out["a"][k], out["tau"][k], out["done"][k] = s, a, t, done
            s, t = torch.where(done, start, s2), torch.where(done, 0, t + 1)
        out["complete"] = torch.flip(torch.cummax(torch.flip(out["done"].to(torch.int8), [0]), 0).values, [0]).bool()
        return out | {"run": run}


ROLLOUT_CHUNK = 256  # steps of uniforms drawn at a time (2 × N doubles per step)
ROLLOUT_INTERLEAVE = 8  # environment columns the kernel advances in lockstep


@numba.njit(cache=True, nogil=True)
def _rollout_chunk(
    u: np.ndarray,
    k0: int,
    s: np.ndarray,
    t: np.ndarray,
    policy_cdf: np.ndarray,
    policy_row: np.ndarray,
    sim_row: np.ndarray,
    sim_next: np.ndarray,
    sim_cdf: np.ndarray,
    terminal: np.ndarray,
    start: int,
    max_episode_steps: int,
    S_out: np.ndarray,
    A_out: np.ndarray,
    T_out: np.ndarray,
    D_out: np.ndarray,
) -> None:  # pragma: no cover - compiled; tested through BatchFourRooms.rollouts
    """Steps ``k0 … k0 + u.shape[2] − 1`` of every environment column (state ``s``, episode step ``t``, in place).

    ``u: (N, 2, chunk)`` and the outputs ``(N, T)`` are column-major. Column ``n`` at step ``k`` draws its action by
    ``#{j : u[n, 0, k] ≥ cdf_π(s)[j]}`` and its successor by ``#{j : u[n, 1, k] ≥ cdf_P(s, a)[j]}`` (both capped at
    the last outcome), the draws of ``torch.rand(2, N)`` per step in the order a step-by-step torch loop makes them.
    """
    num_actions, num_next = policy_cdf.shape[1], sim_cdf.shape[1]
    N = u.shape[0]
    for n0 in range(0, N, ROLLOUT_INTERLEAVE):  # a few columns in lockstep: independent chains overlap in the CPU
        for i in range(u.shape[2]):
            k = k0 + i
            for n in range(n0, min(n0 + ROLLOUT_INTERLEAVE, N)):
                sn, tn = s[n], t[n]
                a = 0
                for j in range(num_actions):
                    a += u[n, 0, i] >= policy_cdf[policy_row[n] + sn, j]
                a = min(a, num_actions - 1)
                row = (sim_row[n] + sn) * num_actions + a
                m = 0
                for j in range(num_next):
                    m += u[n, 1, i] >= sim_cdf[row, j]
                s2 = sim_next[row, min(m, num_next - 1)]
                done = tn >= max_episode_steps - 1 or terminal[s2]
                S_out[n, k], A_out[n, k], T_out[n, k], D_out[n, k] = sn, a, tn, done
                if done:
                    s[n], t[n] = start, 0
                else:
                    s[n], t[n] = s2, tn + 1


@numba.njit(cache=True, nogil=True)
def _episode_completes(done: np.ndarray, complete: np.ndarray) -> None:  # pragma: no cover - compiled
    """``complete[n, k]``: some step ``k' ≥ k`` of column ``n`` ends an episode (the step's episode finished)."""
    N, T = done.shape
    for n in range(N):
        later = False
        for k in range(T - 1, -1, -1):
            later = later or done[n, k]
            complete[n, k] = later


AUTHORS_LRS = (0.5, 0.1, 0.05, 0.01)  # the learning rates of the authors' released Table 3 configs
AUTHORS_CS = (0.01, 0.1, 0.5, 1.0)  # and Zero-Order's C; App. F prints (1, .5, .1, .05, .01) and (.1, .5, 1, 2, 5)


@dataclass
class BatchConfig:
    """Every (cell, seed, learning rate[, C]) run of one method in one batch (Table 3: the cells are (λ, β)).

    Attributes:
        method: ``hpgd``, ``amd`` or ``zero_order``.
        cells: ``(λ, β)`` pairs (Table 3: λ ∈ {0.001, 0.003, 0.005} × β ∈ {1, 3, 5}).
        seeds: seeds (the paper: 10).
        lrs: learning rates; default the grid of the authors' released configs (0.5, 0.1, 0.05, 0.01), the one
            Table 3's numbers match; App. F prints 1, 0.5, 0.1, 0.05, 0.01.
        Cs: Zero-Order's ``C`` of ``u_t = C / t``; default the authors' configs' grid (0.01, 0.1, 0.5, 1); App. F
            prints 0.1, 0.5, 1, 2, 5. Ignored outside Zero-Order.
        iterations: outer iterations (the paper: 10,000).
        window: the metric averages the last ``window`` iterations (the authors: 1,000).
        metric: ``sampled``, the value the authors' code logs: ``V̄^{π*}(S)`` at ``x_t`` for the iteration's sampled
            context (HPGD, Zero-Order) and for both contexts averaged (AMD); or ``average``, both contexts for every
            method (``E_ξ``, the quantity ``F`` defines; what the per-run code reports).
        clip_norm: global gradient-norm clip (1.0).
        init_scale: ``x_0 ~ N(0, init_scale²)`` (0.01), drawn from the run's seed as in the per-run code.
        num_envs: HPGD's parallel environments per run (the authors: 5).
        steps_per_env: HPGD's steps per environment (the authors: 2,000; 10,000 steps per gradient).
        max_episode_steps: episode cap (200).
        tol: oracle tolerance on ``Q``.
        amd_follower: AMD's follower and derivative tables: ``exact`` (solved and differentiated exactly every step,
            Alg. 9 at its fixed point) or ``sweeps`` (Alg. 9 as printed and as the authors ran it: ``amd_sweeps``
            warm-started sweeps per step, so the tables lag a moving ``x``; its ``sampled`` metric is the lagged
            table's value, the one the authors log).
        amd_sweeps: ``K``, sweeps per outer step with ``amd_follower="sweeps"`` (the authors: 100).
        hpgd_partial_episodes: HPGD's statistics also use each environment's unfinished last episode (its
            reward-to-go truncated at the batch's end), as the authors' ``train_stochastic_bilevel_opt.py`` does;
            the normaliser stays the number of finished episodes. Default: finished episodes only.
        hpgd_direct: HPGD's estimator of the direct ``∇_x r̄`` term of Eq. 8
            (:func:`~bilevel_rl.tabular.checks.hpgd_trajectory.pooled_weights`): ``episodes`` (per-episode sums
            averaged over finished episodes; default) or ``start_state`` (every-visit average of the reward-to-go at
            the start state, the authors' ``UL_value_grad``).
        leader_float32: round the leader's logits ``x`` to float32 after every step (the authors' JAX code keeps
            them in float32, so a step below float32 resolution is lost); everything else stays float64.
        zo_numerics: Zero-Order's two values per step: ``float64`` (our exact solver) or ``float32`` (the authors'
            float32 dynamic programming, :mod:`.authors_float32`, whose rounding noise their late difference
            quotients divide by ``u = C/t``; ``x``, ``z``, ``u`` and the step are float32 too). ``float32`` needs the
            ``sampled`` metric (the value of the step's context, computed by the same float32 program).
        curve_every: keep each run's metric value every this many iterations.
        progress_every: print a progress line every this many iterations (0: never).
    """

    method: Method
    cells: tuple[tuple[float, float], ...] = ((0.001, 1.0),)
    seeds: tuple[int, ...] = tuple(range(10))
    lrs: tuple[float, ...] = AUTHORS_LRS
    Cs: tuple[float, ...] = AUTHORS_CS
    iterations: int = 10_000
    window: int = 1_000
    metric: Literal["sampled", "average"] = "sampled"
    clip_norm: float = 1.0
    init_scale: float = 0.01
    num_envs: int = 5
    steps_per_env: int = 2_000
    max_episode_steps: int = 200
    tol: float = 1e-10
    amd_follower: Literal["exact", "sweeps"] = "exact"
    amd_sweeps: int = 100
    hpgd_partial_episodes: bool = False
    hpgd_direct: DirectTerm = "episodes"
    leader_float32: bool = False
    zo_numerics: ZoNumerics = "float64"
    curve_every: int = 100
    progress_every: int = 0

    def __post_init__(self) -> None:
        if self.method not in ("hpgd", "amd", "zero_order"):
            raise ValueError(f"method: expected hpgd, amd or zero_order, got {self.method!r}")
        if not 0 < self.window <= self.iterations:
            raise ValueError(f"window: must be in [1, iterations={self.iterations}], got {self.window}")
        if self.amd_follower not in ("exact", "sweeps"):
            raise ValueError(f"amd_follower: expected exact or sweeps, got {self.amd_follower!r}")
        if self.hpgd_direct not in DIRECT_TERMS:
            raise ValueError(f"hpgd_direct: expected episodes or start_state, got {self.hpgd_direct!r}")
        if self.zo_numerics not in ZO_NUMERICS:
            raise ValueError(f"zo_numerics: expected float64 or float32, got {self.zo_numerics!r}")
        if self.zo_numerics == "float32" and self.metric != "sampled":
            raise ValueError("zo_numerics: float32 values are the sampled context's; use metric='sampled'")
        if self.amd_sweeps < 1:
            raise ValueError(f"amd_sweeps: must be >= 1, got {self.amd_sweeps}")

    def runs(self) -> list[dict[str, float]]:
        """One dict per run: ``lam, beta, seed, lr, C`` (``C`` is NaN outside Zero-Order)."""
        Cs = self.Cs if self.method == "zero_order" else (float("nan"),)
        return [
            {"lam": lam, "beta": beta, "seed": s, "lr": lr, "C": C}
            for lam, beta in self.cells
            for s in self.seeds
            for lr in self.lrs
            for C in Cs
        ]


@dataclass
class BatchResult:
    """Per-run outcomes of one batch (lists aligned with ``runs``)."""

    runs: list[dict[str, float]]
    metric: list[float]
    budget_used: list[float]
    curves: list[list[float]]
    cpu_seconds: float
    rounds_per_solve: float = float("nan")
    config: dict = field(default_factory=dict)


def run_batch(
    problem: BatchFourRooms,
    config: BatchConfig,
    generator: torch.Generator,
    checkpoint: Path | None = None,
    checkpoint_every: int = 500,
) -> BatchResult:
    """Every run of ``config`` for ``config.iterations`` outer iterations (module docstring).

    With ``checkpoint``, the whole state (iterates, warm starts, metric sums, curves, the generator) is saved there
    every ``checkpoint_every`` iterations, and a run that finds the file continues from it exactly (same numbers as
    an uninterrupted run); a file written for another configuration is refused.
    """
    c, runs = config, config.runs()
    R = len(runs)
    col = {k: torch.tensor([r[k] for r in runs], dtype=DTYPE) for k in ("lam", "beta", "lr", "C")}
    lam, beta, lr, C = col["lam"], col["beta"], col["lr"][:, None], col["C"][:, None]
    x = torch.empty(R, problem.d, dtype=DTYPE)
    for i, r in enumerate(runs):  # x_0 from the run's own seed, as the per-run code
        own = torch.Generator().manual_seed(int(r["seed"]))
        x[i] = c.init_scale * torch.randn(problem.d, generator=own, dtype=DTYPE)
    uniform = torch.full((R, problem.S, problem.A), 1.0 / problem.A, dtype=DTYPE)
    warm = [uniform.clone(), uniform.clone()]  # the last best response per context
    window_sum = torch.zeros(R, dtype=DTYPE)
    curves: list[list[float]] = [[] for _ in range(R)]
    t0, start, cpu_before = time.process_time(), 0, 0.0
    solves0, factorizations0 = problem.solves, problem.factorizations
    identity = {k: v for k, v in vars(c).items() if k != "progress_every"}
    swept = SweptAMD(problem, lam, beta, c.amd_sweeps) if c.method == "amd" and c.amd_follower == "sweeps" else None
    f32 = Float32Model(problem.env) if c.method == "zero_order" and c.zo_numerics == "float32" else None
    if f32 is not None:
        x = x.to(torch.float32).to(DTYPE)
    if checkpoint is not None and checkpoint.exists():
        state = torch.load(checkpoint, weights_only=False)
        if state["config"] != identity or state["problem"] != problem.identity():
            raise ValueError(f"checkpoint: {checkpoint} was written for another configuration; remove it to restart")
        start, x, warm, window_sum, curves = state["t"], state["x"], state["warm"], state["window_sum"], state["curves"]
        generator.set_state(state["generator"])
        cpu_before = state["cpu_seconds"]
        if swept is not None:
            swept.tables = state["tables"]
        solves0 -= state["solves"]
        factorizations0 -= state["factorizations"]
    elif swept is not None:
        swept.start(x)
    for t in range(start, c.iterations):
        ctx = torch.randint(len(CONTEXTS), (R,), generator=generator)
        if swept is not None:  # Alg. 9 as printed: no oracle, K sweeps of the lagging tables
            g, value = swept.step(x, ctx)
            warm = swept.policies()
        elif f32 is not None:  # Zero-Order in the authors' float32 arithmetic
            g, value = f32.zero_order_step(x, ctx, lam, beta, C / (t + 1), generator)
        else:
            pi0 = torch.where((ctx == 0)[:, None, None], warm[0], warm[1])
            pi, lu = problem.solve(problem.follower_reward(x, ctx, lam), ctx, lam, pi0, c.tol)
            for k in range(len(CONTEXTS)):
                warm[k][ctx == k] = pi[ctx == k]
            if c.method == "amd":
                g, value = problem.exact_gradient(x, ctx, lam, beta, pi, lu)
            else:
                value = problem.leader_values(x, ctx, beta, pi, lu)
                if c.method == "hpgd":
                    data = problem.rollouts(pi, ctx, c.num_envs, c.steps_per_env, c.max_episode_steps, generator)
                    if c.hpgd_partial_episodes:
                        data["complete"] = torch.ones_like(data["complete"])
                    xx = x.clone().requires_grad_(True)
                    rbar = problem.leader_reward(xx, ctx, beta)  # its values feed the statistics (detached there)
                    W_r, W_rbar = pooled_weights(data, rbar, problem.gamma, lam, c.hpgd_direct)
                    total = (W_r * problem.follower_reward(xx, ctx, lam)).sum() + (W_rbar * rbar).sum()
                    (g,) = torch.autograd.grad(total, xx)
                else:
                    u = C / (t + 1)
                    z = torch.randn(R, problem.d, generator=generator, dtype=DTYPE)
                    x1 = x + u * z
                    pi1, lu1 = problem.solve(problem.follower_reward(x1, ctx, lam), ctx, lam, pi, c.tol)
                    g = (problem.leader_values(x1, ctx, beta, pi1, lu1) - value)[:, None] / u * z
        in_window, on_curve = t >= c.iterations - c.window, t % c.curve_every == 0 or t == c.iterations - 1
        if (in_window or on_curve) and (c.metric == "average" or (c.method == "amd" and swept is None)):
            value = context_average(problem, x, lam, beta, warm, c.tol)
        if in_window:
            window_sum += value
        if on_curve:
            for i, v in enumerate(value.tolist()):
                curves[i].append(v)
        norm = g.norm(dim=1, keepdim=True)
        x = x + lr * torch.where(norm > c.clip_norm, g * (c.clip_norm / norm.clamp_min(1e-300)), g)
        if c.leader_float32 or f32 is not None:
            x = x.to(torch.float32).to(DTYPE)
        if checkpoint is not None and (t + 1) % checkpoint_every == 0 and t + 1 < c.iterations:
            tmp = checkpoint.with_suffix(checkpoint.suffix + ".tmp")
            torch.save(
                {
                    "t": t + 1, "x": x, "warm": warm, "window_sum": window_sum, "curves": curves,
                    "generator": generator.get_state(), "cpu_seconds": cpu_before + time.process_time() - t0,
                    "solves": problem.solves - solves0, "factorizations": problem.factorizations - factorizations0,
                    "config": identity, "problem": problem.identity(),
                    "tables": None if swept is None else swept.tables,
                },
                tmp,
            )  # fmt: skip
            tmp.replace(checkpoint)
        if c.progress_every and (t + 1) % c.progress_every == 0:
            elapsed = cpu_before + time.process_time() - t0
            print(
                f"[{c.method}] iteration {t + 1}/{c.iterations}: mean value {float(value.mean()):.4f}, "
                f"{elapsed:.1f} CPU-s, {elapsed / (t + 1) * (c.iterations - t - 1) / 60:.1f} CPU-min left",
                flush=True,
            )
    return BatchResult(
        runs=runs,
        metric=(window_sum / c.window).tolist(),
        budget_used=(1.0 - torch.softmax(x, 1)[:, -1]).tolist(),
        curves=curves,
        cpu_seconds=cpu_before + time.process_time() - t0,
        rounds_per_solve=(problem.factorizations - factorizations0) / max(1, problem.solves - solves0),
        config=dict(vars(c)),
    )


def context_average(
    problem: BatchFourRooms,
    x: torch.Tensor,
    lam: torch.Tensor,
    beta: torch.Tensor,
    warm: list[torch.Tensor],
    tol: float,
) -> torch.Tensor:
    """``E_ξ V̄^{π*_{x,ξ}}(S)`` per run (both contexts solved from the warm starts, which are left as they are)."""
    values = []
    for k in range(len(CONTEXTS)):
        ctx = torch.full((x.shape[0],), k, dtype=torch.long)
        pi, lu = problem.solve(problem.follower_reward(x, ctx, lam), ctx, lam, warm[k], tol)
        values.append(problem.leader_values(x, ctx, beta, pi, lu))
    return torch.stack(values).mean(0)
