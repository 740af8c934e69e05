"""Vectorised trajectory sampling and HPGD hypergradient estimators for finite soft MDPs (HPGD §3, App. C).

The leader never sees ``P`` or ``π`` in these estimators: it only receives sampled trajectories of the follower's
(oracle) policy, plus the derivatives of its *own* parameterisation ``x ↦ r_x, r̄_x`` at the visited pairs. The
transition table is held by :class:`TabularSampler`, which plays the simulator (HPGD Assumption 3.2: an oracle
returning trajectories of ``π^o``). All randomness comes from an explicit ``numpy.random.Generator``.

Both estimators return *weight tables* ``(W_r, W_r̄)`` over ``(s, a)`` such that the estimate of the ascent direction
of the leader's return ``-dF/dx`` (HPGD Eq. 8; digest pitfall P1) is the vector-Jacobian product

    ĝ = Σ_{s,a} W_r(s, a) ∇_x r_x(s, a) + Σ_{s,a} W_r̄(s, a) ∇_x r̄_x(s, a),

which :func:`weights_to_gradient` evaluates with one backward pass through the leader's parameterisation (so ``x``
can have any shape and the ``(S, A, d)`` Jacobians are never formed).

Scope: the leader controls the follower's reward only (Four-Rooms), so ``∇_x log P = ∇_x log μ = 0`` and the
``∇ log P`` and ``λ H`` tail terms of Algorithms 2 and 5 vanish; they are not implemented. States flagged
``terminal`` must be absorbing with ``∇_x r = 0`` and ``r̄ = 0`` there (rollouts stop on entering them).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from bilevel_rl.tabular.soft_mdp import DTYPE


def _cumulative(p: np.ndarray) -> np.ndarray:
    c = np.cumsum(p, axis=-1)
    c[..., -1] = 1.0
    return c


def _table(s: np.ndarray, a: np.ndarray, w: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """``W[s, a] = Σ_i w_i 1{(s_i, a_i) = (s, a)}`` (a fast ``np.add.at``)."""
    flat = np.bincount(
        (s * shape[1] + a).ravel(), weights=np.broadcast_to(w, s.shape).ravel(), minlength=shape[0] * shape[1]
    )
    return flat.reshape(shape)


def _pick(cum: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Inverse-CDF sampling: the first index ``k`` with ``cum[..., k] > u`` (rows of ``cum`` end in 1)."""
    return np.minimum((cum < u[:, None]).sum(1), cum.shape[1] - 1)


class TabularSampler:
    """Simulator of ``P[s, a, s']`` that can be reset to any state (needed by Algorithm 2's restarts).

    Successors are stored sparsely (``K`` = largest support). For a fixed policy, the action and the successor are
    drawn together from the joint table ``π(a|s) P(s'|s, a)`` with one uniform per walker and step; all uniforms
    come from the explicit generator passed in.
    """

    def __init__(self, P: torch.Tensor, terminal: np.ndarray | None = None) -> None:
        Pn = P.detach().cpu().numpy()
        S, A, _ = Pn.shape
        K = int((Pn > 0).sum(-1).max())
        self.num_actions = A
        self.succ = np.zeros((S, A, K), dtype=np.int64)
        self.prob = np.zeros((S, A, K))
        for s in range(S):
            for a in range(A):
                nz = np.flatnonzero(Pn[s, a] > 0)
                self.succ[s, a, : len(nz)] = nz
                self.succ[s, a, len(nz) :] = nz[-1]
                self.prob[s, a, : len(nz)] = Pn[s, a, nz] / Pn[s, a, nz].sum()
        self.cum = _cumulative(self.prob)
        self.terminal = np.zeros(S, dtype=bool) if terminal is None else np.asarray(terminal, dtype=bool)
        self.joint_action = np.broadcast_to(np.repeat(np.arange(A), K)[None, :], (S, A * K))
        self.joint_next = self.succ.reshape(S, A * K)

    def joint_cdf(self, pi: np.ndarray) -> np.ndarray:
        """``(S, A·K)`` cumulative table of ``π(a|s) P(succ_k|s, a)`` (one draw gives both ``a`` and ``s'``)."""
        return _cumulative((pi[:, :, None] * self.prob).reshape(len(pi), -1))

    def step(self, s: np.ndarray, a: np.ndarray, u: np.ndarray) -> np.ndarray:
        """One transition ``s' ~ P(·|s, a)`` for every walker, from uniforms ``u``."""
        return self.succ[s, a, _pick(self.cum[s, a], u)]

    def rollout(
        self,
        s0: np.ndarray,
        a0: np.ndarray | None,
        pi: np.ndarray,
        max_len: np.ndarray,
        rng: np.random.Generator,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """``SampleTrajectory(o, start=(s, a) or s, length=max_len)`` of digest §3.0 for ``B`` walkers at once.

        Only running walkers are stepped (a walker stops after time ``L_b`` or on entering a terminal state).

        Args:
            s0: ``(B,)`` start states.
            a0: ``(B,)`` forced first actions, or ``None`` to draw ``a_0 ~ π(·|s_0)``.
            pi: ``(S, A)`` follower policy.
            max_len: ``(B,)`` last time index ``L_b`` (pairs ``t = 0..L_b`` are returned).
            rng: the explicit generator.

        Returns:
            Flat records ``(t, walker, s_t, a_t)`` of every visited pair, in time order.
        """
        jcdf = self.joint_cdf(pi)
        idx = np.flatnonzero(~self.terminal[s0])
        s = s0[idx]
        ts, ws, ss, as_ = [], [], [], []
        t = 0
        while len(idx):
            u = rng.random(len(idx))
            if t == 0 and a0 is not None:
                a = a0[idx]
                s_next = self.step(s, a, u)
            else:
                k = _pick(jcdf[s], u)
                a, s_next = self.joint_action[s, k], self.joint_next[s, k]
            ts.append(np.full(len(idx), t))
            ws.append(idx)
            ss.append(s)
            as_.append(a)
            t += 1
            keep = (t <= max_len[idx]) & ~self.terminal[s_next]
            idx, s = idx[keep], s_next[keep]
        if not ts:
            empty = np.zeros(0, dtype=np.int64)
            return empty, empty, empty, empty
        return np.concatenate(ts), np.concatenate(ws), np.concatenate(ss), np.concatenate(as_)

    def run_envs(
        self,
        rho: np.ndarray,
        pi: np.ndarray,
        num_envs: int,
        steps_per_env: int,
        max_episode_steps: int,
        rng: np.random.Generator,
    ) -> dict[str, np.ndarray]:
        """``num_envs`` auto-resetting environments for ``steps_per_env`` steps each (the authors' data layout).

        An episode ends when the next state is terminal or after ``max_episode_steps`` (treated as done, no
        bootstrap, digest P17). Steps of an episode still running when the budget ends are flagged incomplete.

        Returns:
            ``(T, E)`` arrays ``s``, ``a``, ``tau`` (within-episode time), ``done`` and ``complete``.
        """
        rho_cum = _cumulative(rho)
        jcdf = self.joint_cdf(pi)
        E, T = num_envs, steps_per_env
        U = rng.random((T + 1, 2, E))
        s = np.minimum(np.searchsorted(rho_cum, U[T, 0], side="right"), len(rho) - 1)
        tau = np.zeros(E, dtype=np.int64)
        out = {k: np.zeros((T, E), dtype=np.int64) for k in ("s", "a", "tau")}
        done = np.zeros((T, E), dtype=bool)
        for t in range(T):
            k = _pick(jcdf[s], U[t, 0])
            out["s"][t], out["a"][t], out["tau"][t] = s, self.joint_action[s, k], tau
            s = self.joint_next[s, k]
            tau = tau + 1
            d = self.terminal[s] | (tau >= max_episode_steps)
            done[t] = d
            if d.any():
                fresh = np.minimum(np.searchsorted(rho_cum, U[t, 1], side="right"), len(rho) - 1)
                s = np.where(d, fresh, s)
                tau = np.where(d, 0, tau)
        # a step is complete iff its episode ends within the budget: some done at or after it in the column
        complete = np.flip(np.maximum.accumulate(np.flip(done, 0), axis=0), 0)
        return {**out, "done": done, "complete": complete}


def _flat(arr: np.ndarray) -> np.ndarray:
    """``(T, E)`` → flat environment-major order, so that each environment's episodes are contiguous."""
    return np.ascontiguousarray(arr.T).reshape(-1)


def _unflat(flat: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    return flat.reshape(shape[1], shape[0]).T


def discounted_to_go(values: np.ndarray, tau: np.ndarray, gamma: float) -> np.ndarray:
    """``G_t = Σ_{k ≥ t, same episode} γ^{k-t} v_k`` on ``(T, E)`` arrays (episodes start where ``τ = 0``).

    Vectorised as ``γ^{-τ_t} (suffix-sum of γ^τ v)`` reset at episode boundaries; a time loop is used instead
    when ``γ^{max τ}`` is too small for this rescaling to be accurate.
    """
    if gamma ** float(tau.max(initial=0)) < 1e-6:
        out = np.zeros(values.shape)
        run = np.zeros(values.shape[1])
        for t in range(values.shape[0] - 1, -1, -1):
            nxt_start = tau[t + 1] == 0 if t + 1 < values.shape[0] else np.ones(values.shape[1], dtype=bool)
            run = values[t] + gamma * np.where(nxt_start, 0.0, run)
            out[t] = run
        return out
    v, tt = _flat(values), _flat(tau)
    n = len(v)
    scale = gamma ** tt.astype(float)
    suffix = np.append(np.cumsum((v * scale)[::-1])[::-1], 0.0)
    starts = np.where(tt == 0, np.arange(n), n)
    next_start = np.append(np.minimum.accumulate(starts[::-1])[::-1][1:], n)
    return _unflat((suffix[:n] - suffix[next_start]) / scale, values.shape)


def discounted_from_start(values: np.ndarray, tau: np.ndarray, gamma: float) -> np.ndarray:
    """``C_t = Σ_{k ≤ t, same episode} γ^{t-k} v_k`` on ``(T, E)`` arrays (forward; resets where ``τ = 0``)."""
    if gamma ** float(tau.max(initial=0)) < 1e-6:
        out = np.zeros(values.shape)
        run = np.zeros(values.shape[1])
        for t in range(values.shape[0]):
            run = values[t] + gamma * np.where(tau[t] == 0, 0.0, run)
            out[t] = run
        return out
    v, tt = _flat(values), _flat(tau)
    n = len(v)
    scale = gamma ** tt.astype(float)
    prefix = np.concatenate([[0.0], np.cumsum(v / scale)])
    start = np.maximum.accumulate(np.where(tt == 0, np.arange(n), 0))
    return _unflat((prefix[1:] - prefix[start]) * scale, values.shape)


@dataclass
class GradientWeights:
    """Weights ``W_r, W_r̄`` (``(S, A)``) of an estimate, and the number of environment steps it consumed."""

    W_r: np.ndarray
    W_rbar: np.ndarray
    env_steps: int


def pooled_estimator(
    sampler: TabularSampler,
    rho: np.ndarray,
    pi: np.ndarray,
    rbar: np.ndarray,
    gamma: float,
    lam: float,
    num_envs: int,
    steps_per_env: int,
    max_episode_steps: int,
    rng: np.random.Generator,
) -> GradientWeights:
    """Prop. 1 (Eq. 8) with tabular every-visit Monte-Carlo estimates pooled over one on-policy batch.

    This is the form the authors' Four-Rooms code computes (digest §4.1): on ``num_envs × steps_per_env``
    on-policy steps, every visit's discounted reward-to-go of ``∇_x r`` is an Algorithm-2 sample of
    ``∂_x Q^π(s_t, a_t)`` (Theorem 2, with the geometric truncation Rao-Blackwellised); they are averaged per
    ``(s, a)`` and per ``s`` to give ``∂_x Â = ∂_x Q̂ - ∂_x V̂``. The leader's ``Q̄`` is replaced by the tabular
    advantage ``Ā = Q̄ - V̄`` (valid since ``E_{a~π} ∂_x A(s, a) = 0``), and

        ĝ = (1/N_ep) Σ_{steps} γ^{τ_t} [ ∇_x r̄(s_t, a_t) + ∂_x Â(s_t, a_t) Ā(s_t, a_t) / λ ].

    The products of same-batch tabular averages make it biased for finite batches but consistent (digest P8);
    its variance is orders of magnitude below Algorithm 5's at λ = 10⁻³ (see the results doc). The
    ``(S, A, d)`` tables are never formed: ``Σ_i ω_i ∂Q̂-sample_i`` is folded into a forward discounted cumsum.
    Only completed episodes enter the statistics; all ``num_envs × steps_per_env`` steps count as spent.
    """
    S, A = rbar.shape
    data = sampler.run_envs(rho, pi, num_envs, steps_per_env, max_episode_steps, rng)
    s, a, tau, keep = data["s"], data["a"], data["tau"], data["complete"]
    n_ep = int(data["done"].sum())
    env_steps = num_envs * steps_per_env
    if n_ep == 0:
        return GradientWeights(np.zeros((S, A)), np.zeros((S, A)), env_steps)
    w = keep.astype(float)
    disc = w * gamma**tau
    G = discounted_to_go(rbar[s, a], tau, gamma)
    n_sa = _table(s, a, w, (S, A))
    q_sum = _table(s, a, w * G, (S, A))
    n_s = n_sa.sum(1)
    Qbar = q_sum / np.maximum(n_sa, 1.0)
    Vbar = q_sum.sum(1) / np.maximum(n_s, 1.0)
    Abar = np.where(n_sa > 0, Qbar - Vbar[:, None], 0.0)
    W_rbar = _table(s, a, disc, (S, A))  # c(s, a) = Σ_visits γ^τ, also the direct term's weight
    cA = W_rbar * Abar / lam
    omega = w * (cA[s, a] / np.maximum(n_sa[s, a], 1.0) - cA.sum(1)[s] / np.maximum(n_s[s], 1.0))
    W_r = _table(s, a, w * discounted_from_start(omega, tau, gamma), (S, A))
    return GradientWeights(W_r / n_ep, W_rbar / n_ep, env_steps)


def alg5_estimator(
    sampler: TabularSampler,
    rho: np.ndarray,
    pi: np.ndarray,
    rbar: np.ndarray,
    gamma: float,
    lam: float,
    num_samples: int,
    rng: np.random.Generator,
) -> GradientWeights:
    """The mean of ``num_samples`` independent outputs of Algorithm 5 (with Algorithm 2 inside), vectorised.

    Per sample (HPGD App. C, L1413-1492 and L1570-1615; digest §3, P3):
      ``T ~ Geo(1-γ)``, ``T' ~ Geo(1-γ^{1/2})`` (supports from 0); roll ``s_0 ~ μ`` for ``T + T'`` steps;
      ``Ĝ = Σ_{t'=T}^{T+T'} γ^{(t'-T)/2} r̄(s_{t'}, a_{t'})``;
      ``∂̂_x A(s_T, a_T) = Σ_{t=0}^{T_Q} ∇r(τ_Q) - Σ_{t=0}^{T_V} ∇r(τ_V)`` from two *fresh* rollouts restarted at
      ``(s_T, a_T)`` and at ``s_T`` (``T_Q, T_V ~ Geo(1-γ)``);
      ``ĝ = Σ_{t=0}^{T} ∇r̄(s_t, a_t) + ∂̂_x A · Ĝ / (λ (1-γ))`` (no ``∇ log P`` term: ``P`` does not depend on x).
    Unbiased for Eq. 8 at the sampled policy (Prop. 4). ``env_steps`` counts the sampled state-action pairs.
    """
    S, A = rbar.shape
    W_r = np.zeros((S, A))
    B = num_samples
    T = rng.geometric(1.0 - gamma, B) - 1
    Tp = rng.geometric(1.0 - gamma**0.5, B) - 1
    s0 = _pick(np.broadcast_to(_cumulative(rho), (B, len(rho))), rng.random(B))
    t, b, st, at = sampler.rollout(s0, None, pi, T + Tp, rng)
    steps = len(t)
    W_rbar = _table(st, at, (t <= T[b]).astype(float), (S, A))
    tail = t >= T[b]
    G = np.bincount(b[tail], weights=gamma ** ((t[tail] - T[b[tail]]) / 2.0) * rbar[st[tail], at[tail]], minlength=B)
    at_T = t == T[b]  # walkers still running at time T (otherwise s_T is terminal and the term is 0)
    walkers = b[at_T]
    sT, aT = st[at_T], at[at_T]
    coef = G[walkers] / (lam * (1.0 - gamma))
    for first, sign in ((aT, 1.0), (None, -1.0)):
        horizon = rng.geometric(1.0 - gamma, len(walkers)) - 1
        _, b2, s2, a2 = sampler.rollout(sT, first, pi, horizon, rng)
        steps += len(b2)
        W_r += _table(s2, a2, sign * coef[b2], (S, A))
    return GradientWeights(W_r / B, W_rbar / B, steps)


def weights_to_gradient(
    x: torch.Tensor,
    reward_fn: Callable[[torch.Tensor], torch.Tensor],
    leader_reward_fn: Callable[[torch.Tensor], torch.Tensor],
    weights: GradientWeights,
) -> torch.Tensor:
    """``ĝ = Σ W_r ∇_x r_x + Σ W_r̄ ∇_x r̄_x`` by one backward pass (the ascent direction of the leader's return)."""
    x = x.detach().requires_grad_(True)
    total = (reward_fn(x) * torch.from_numpy(weights.W_r).to(DTYPE)).sum()
    total = total + (leader_reward_fn(x) * torch.from_numpy(weights.W_rbar).to(DTYPE)).sum()
    (g,) = torch.autograd.grad(total, x, allow_unused=True)
    return torch.zeros_like(x) if g is None else g.detach()
