"""Leader values as the authors' Four-Rooms code computes them: float32 dynamic programming from zero.

The authors' JAX code runs in JAX's default float32. Each value ``f(x) = V̄^{π*_{x,ξ}}(S)`` that their Zero-Order
(HPGD Alg. 10, ``train_zero_order.py``) needs is

1. their follower solve (``general_value_iteration`` with ``KL_divergence`` regularisation): ``Q = 0``, then
   ``n_pi = 100`` rounds of ``π = softmax(Q/λ)`` followed by ``n_v = 5`` sweeps
   ``Q ← r_x + λ H(π) + γ P Σ_a π Q`` (no continuation from the goal, which is terminal);
2. ``π = softmax(Q/λ)`` and their leader evaluation (``initial_value_prediction``): ``V = 0``, then ``n_eval = 500``
   sweeps ``V ← Σ_a π (r̄_x + γ P V)``; the value is ``V(S)``.

In float64 this program is our exact solver up to its truncation: at the AMD iterates of four Table 3 cells after
2,000 steps the leader values differ by at most 2e-4 (one run at λ = 0.005) and by less than 1e-6 in the others.
In float32 it carries rounding noise (64 random iterates at λ = 0.003, β = 5: median 9e-7, max 7e-6 in ``f``).
Zero-Order divides the difference ``f(x + u z) − f(x)`` by ``u = C/t``, down to 1e-6 at ``t = 10⁴`` with ``C = 0.01``:
its late gradients are then rounding noise (same iterates: the float32 difference quotient's mean error is 0.2 % of
its mean size at ``u = 1e-2``, 2 % at 1e-3, 18 % at 1e-4, 1.6× at 1e-5 and 14× at 1e-6), and the clipped steps
random-walk ``x``. :func:`values_float32` reproduces that arithmetic, run-vectorised;
``BatchConfig.zo_numerics="float32"`` uses it for Zero-Order's two values per step. HPGD and AMD divide by ``λ ≥ 1e-3``,
never by ``u``; their float32 rounding is not emulated (and not measured).

The emulation is faithful to the operations and their order per entry, not bit-for-bit to XLA (whose reductions and
fusions round differently): the noise it adds has the authors' size, not their exact draws. Memory layout
``(state, action, run)`` lets the compiler vectorise over runs.
"""

from __future__ import annotations

from typing import Literal, get_args

import numba
import numpy as np
import torch

from bilevel_rl.tabular.repro.four_rooms import CONTEXTS, FourRooms

ZoNumerics = Literal["float64", "float32"]
"""Zero-Order's values: our exact float64 solver, or the authors' float32 program (this module)."""
ZO_NUMERICS: tuple[str, ...] = get_args(ZoNumerics)

AUTHORS_ROUNDS, AUTHORS_SWEEPS, AUTHORS_EVAL_SWEEPS = 100, 5, 500
"""``n_policy_iter``, ``n_value_iter`` of ``data/experiment_reg_lambda_*/config.yaml`` and the evaluation's
``n_policy_iter × n_value_iter`` sweeps."""


class Float32Model:
    """The float32 transition model and reward conventions of one Four-Rooms environment (all contexts).

    The 104 cells only: the goal of the run's context is terminal (no continuation), as in the authors' model,
    instead of our absorbing sink. The cells' transitions do not depend on the context except in the goal, whose
    row is never used, so one successor table serves both contexts.
    """

    CHUNK = 160

    def __init__(self, env: FourRooms) -> None:
        S = env.num_cells
        P = [env.transitions(xi)[:S, :, :S].numpy() for xi in CONTEXTS]
        goals = [env.goals[xi] for xi in CONTEXTS]
        free = P[0].copy()
        free[goals[0]] = P[1][goals[0]]  # the first goal's row from the other context, where it is an ordinary cell
        K = int((free > 0).sum(-1).max())
        self.next = np.zeros((S, env.num_actions, K), np.int64)
        self.prob = np.zeros((S, env.num_actions, K), np.float32)
        for s in range(S):
            for a in range(env.num_actions):
                (idx,) = np.nonzero(free[s, a])
                self.next[s, a, : len(idx)] = idx
                self.prob[s, a, : len(idx)] = free[s, a, idx]
        cfg = env.config
        self.goals = np.asarray(goals, np.int64)
        self.start, self.plus_one = env.start, env.plus_one
        self.gamma = np.float32(cfg.gamma)
        self.budget = np.float32(cfg.budget)
        self.cost_scale = np.float32(env.num_actions if cfg.cost_over_actions else 1)
        self.mask_goal = cfg.mask_goal_penalty

    def values(self, x: np.ndarray, ctx: np.ndarray, lam: np.ndarray, beta: np.ndarray) -> np.ndarray:
        """``(R,)`` float32 leader values ``V̄(S)`` of runs ``x: (R, d)`` (rounded to float32) in contexts ``ctx``.

        Runs are independent; they go through the kernel in chunks of :attr:`CHUNK` (its tables then stay in cache).
        """
        x = np.ascontiguousarray(x, np.float32)
        goal, lam, beta = self.goals[np.asarray(ctx)], np.asarray(lam, np.float32), np.asarray(beta, np.float32)
        out = np.empty(x.shape[0], np.float32)
        for i in range(0, x.shape[0], self.CHUNK):
            j = slice(i, i + self.CHUNK)
            out[j] = values_float32(
                x[j], goal[j], lam[j], beta[j], self, AUTHORS_ROUNDS, AUTHORS_SWEEPS, AUTHORS_EVAL_SWEEPS
            )
        return out

    def zero_order_step(
        self,
        x: torch.Tensor,
        ctx: torch.Tensor,
        lam: torch.Tensor,
        beta: torch.Tensor,
        u: torch.Tensor,
        generator: torch.Generator,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Alg. 10's ``[f(x + u z) − f(x)] / u · z`` and ``f(x)`` per run, in the authors' float32 arithmetic.

        ``x, z, u``, both values and the quotient are float32; the results are returned as float64. ``z ~ N(0, I)`` is
        drawn from ``generator`` in float64 and rounded, so the draws are the float64 run's.
        """
        z = torch.randn(x.shape, generator=generator, dtype=torch.float64).to(torch.float32)
        u32 = u.to(torch.float32)
        x32 = x.to(torch.float32)
        x1 = x32 + u32 * z
        f0 = torch.from_numpy(self.values(x32.numpy(), ctx.numpy(), lam.numpy(), beta.numpy()))
        f1 = torch.from_numpy(self.values(x1.numpy(), ctx.numpy(), lam.numpy(), beta.numpy()))
        return ((f1 - f0)[:, None] * z / u32).double(), f0.double()


def values_float32(
    x: np.ndarray,
    goal: np.ndarray,
    lam: np.ndarray,
    beta: np.ndarray,
    model: Float32Model,
    rounds: int,
    sweeps: int,
    eval_sweeps: int,
) -> np.ndarray:
    """The authors' float32 ``f(x)`` per run (module docstring); ``x (R, d)``, ``goal``, ``lam``, ``beta`` ``(R,)``."""
    return _values(
        x, goal, lam, beta, model.start, model.plus_one, model.next, model.prob, model.gamma, model.budget,
        model.cost_scale, model.mask_goal, rounds, sweeps, eval_sweeps,
    )  # fmt: skip


@numba.njit(cache=True, nogil=True)
def _rewards(x, goal, beta, plus, S, budget, cost_scale, mask_goal):  # type: ignore[no-untyped-def]
    """``(S, R)`` follower reward ``r_x`` and leader reward ``r̄_x`` in float32 (the incentive: ``-budget·softmax``)."""
    R = x.shape[0]
    r = np.zeros((S, R), np.float32)
    rbar = np.zeros((S, R), np.float32)
    for i in range(R):
        e = np.exp(x[i] - x[i].max())
        pen = (e / e.sum())[:S] * -budget
        cost = np.float32(0.0)
        for s in range(S):
            cost += abs(pen[s])
        for s in range(S):
            if s == goal[i]:
                r[s, i] = np.float32(1.0) + (np.float32(0.0) if mask_goal else pen[s])
                rbar[s, i] = -beta[i] * cost_scale * cost
            else:
                r[s, i] = pen[s]
            if s == plus:
                rbar[s, i] += np.float32(1.0)
    return r, rbar


@numba.njit(cache=True, nogil=True)
def _softmax(Q, lam, pi, kl):  # type: ignore[no-untyped-def]
    """``π = softmax(Q/λ)`` per state and run, and ``kl = λ Σ_a π log(π + 1e-32)`` (the authors' regulariser)."""
    S, A, R = Q.shape
    mx = np.empty(R, np.float32)
    tot = np.empty(R, np.float32)
    for s in range(S):
        for i in range(R):
            mx[i] = Q[s, 0, i]
        for a in range(1, A):
            for i in range(R):
                mx[i] = max(mx[i], Q[s, a, i])
        tot[:] = 0.0
        for a in range(A):
            for i in range(R):
                pi[s, a, i] = np.exp(Q[s, a, i] / lam[i] - mx[i] / lam[i])
                tot[i] += pi[s, a, i]
        kl[s] = 0.0
        for a in range(A):
            for i in range(R):
                pi[s, a, i] = pi[s, a, i] / tot[i]
                kl[s, i] += pi[s, a, i] * np.log(pi[s, a, i] + np.float32(1e-32))
        for i in range(R):
            kl[s, i] = lam[i] * kl[s, i]


@numba.njit(cache=True, nogil=True)
def _expected_next(nxt, prb, s, a, V, c):  # type: ignore[no-untyped-def]
    """``c[i] = Σ_k P(n_k | s, a) V[n_k, i]`` for every run ``i`` (in successor order, as the sweeps need it)."""
    c[:] = 0.0
    for k in range(nxt.shape[2]):
        n, p = nxt[s, a, k], prb[s, a, k]
        for i in range(c.shape[0]):
            c[i] += p * V[n, i]


@numba.njit(cache=True, nogil=True)
def _values(  # type: ignore[no-untyped-def]
    x, goal, lam, beta, start, plus, nxt, prb, gamma, budget, cost_scale, mask_goal, rounds, sweeps, eval_sweeps
):
    S, A, _ = nxt.shape
    R = x.shape[0]
    r, rbar = _rewards(x, goal, beta, plus, S, budget, cost_scale, mask_goal)
    live = np.ones((S, R), np.float32)  # 0 in the run's goal: no continuation from a terminal state
    for i in range(R):
        live[goal[i], i] = 0.0
    Q = np.zeros((S, A, R), np.float32)
    Qn = np.zeros((S, A, R), np.float32)
    pi = np.zeros((S, A, R), np.float32)
    kl = np.zeros((S, R), np.float32)
    V = np.zeros((S, R), np.float32)
    c = np.zeros(R, np.float32)
    for _ in range(rounds):
        _softmax(Q, lam, pi, kl)
        for _ in range(sweeps):
            V[:] = 0.0
            for s in range(S):
                for a in range(A):
                    for i in range(R):
                        V[s, i] += pi[s, a, i] * Q[s, a, i]
            for s in range(S):
                for a in range(A):
                    _expected_next(nxt, prb, s, a, V, c)
                    for i in range(R):
                        Qn[s, a, i] = r[s, i] - kl[s, i] + live[s, i] * (gamma * c[i])
            Q, Qn = Qn, Q
    _softmax(Q, lam, pi, kl)
    W = np.zeros((S, R), np.float32)
    Wn = np.zeros((S, R), np.float32)
    for _ in range(eval_sweeps):
        Wn[:] = 0.0
        for s in range(S):
            for a in range(A):
                _expected_next(nxt, prb, s, a, W, c)
                for i in range(R):
                    Wn[s, i] += pi[s, a, i] * (rbar[s, i] + live[s, i] * (gamma * c[i]))
        W, Wn = Wn, W
    return W[start].copy()
