"""HPGD hypergradient estimators from sampled trajectories only, in the form of the Four-Rooms runs (HPGD §3, App. D).

The leader never sees ``P`` or ``π`` in these estimators: it only receives sampled trajectories of the follower's
(oracle) policy, plus the derivatives of its *own* parameterisation ``x ↦ r_x, r̄_x`` at the visited pairs. The
core :class:`~bilevel_rl.tabular.core.sampling.Simulator` plays the simulator (HPGD Assumption 3.2: an oracle
returning trajectories of ``π^o``); all randomness comes from an explicit ``torch.Generator``.

:func:`pooled_estimator` and Algorithm 5 (:func:`~bilevel_rl.tabular.checks.hpgd.alg5_weights`, which takes the same
``terminal`` mask) return :class:`~bilevel_rl.tabular.checks.hpgd.GradientWeights` ``(W_r, W_r̄)`` over ``(s, a)`` such
that the estimate of the ascent direction of the leader's return ``-dF/dx`` (HPGD Eq. 8 as printed; see
``docs/theory/hpgd_four_rooms.md`` §1) is

    ĝ = Σ_{s,a} W_r(s, a) ∇_x r_x(s, a) + Σ_{s,a} W_r̄(s, a) ∇_x r̄_x(s, a)

(:meth:`~bilevel_rl.tabular.checks.hpgd.GradientWeights.ascent`), so ``x`` can have any shape and the ``(S, A, d)``
Jacobians are never formed.

Scope: the leader controls the follower's reward only (Four-Rooms), so ``∇_x log P = ∇_x log μ = 0`` and the
``∇ log P`` and ``λ H`` tail terms of Algorithms 2 and 5 vanish; they are not implemented. States flagged
``terminal`` must be absorbing with ``∇_x r = 0`` and ``r̄ = 0`` there (rollouts stop on entering them).
"""

from __future__ import annotations

from typing import Literal, get_args

import numba
import numpy as np
import torch

from bilevel_rl.tabular.checks.hpgd import GradientWeights
from bilevel_rl.tabular.core.sampling import CategoricalTable, EnvBatch, Simulator
from bilevel_rl.tabular.core.soft_mdp import DTYPE, SoftMDP

DirectTerm = Literal["episodes", "start_state"]
DIRECT_TERMS: tuple[str, ...] = get_args(DirectTerm)


def run_envs(
    mdp: SoftMDP,
    pi: torch.Tensor,
    num_envs: int,
    steps_per_env: int,
    max_episode_steps: int,
    generator: torch.Generator,
    terminal: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """``num_envs`` auto-resetting environments for ``steps_per_env`` steps each (the authors' data layout).

    An episode ends when the next state is terminal or after ``max_episode_steps`` (treated as done, no
    bootstrap, as in the authors' code). Steps of an episode still running when the budget ends are flagged incomplete.

    Returns:
        ``(T, E)`` tensors ``s``, ``a``, ``tau`` (within-episode time), ``done`` and ``complete``.
    """
    envs = EnvBatch(Simulator(mdp, terminal=terminal), mdp.rho, num_envs, max_episode_steps, generator)
    table = CategoricalTable(pi)
    steps = [envs.step(table, generator) for _ in range(steps_per_env)]
    done = torch.stack([st.done for st in steps])
    # a step is complete iff its episode ends within the budget: some done at or after it in the column
    complete = torch.flip(torch.cummax(torch.flip(done.to(torch.int8), [0]), 0).values, [0]).bool()
    return {
        "s": torch.stack([st.states for st in steps]),
        "a": torch.stack([st.actions for st in steps]),
        "tau": torch.stack([st.time for st in steps]),
        "done": done,
        "complete": complete,
    }


def _flat(arr: torch.Tensor) -> torch.Tensor:
    """``(T, E)`` → flat environment-major order, so that each environment's episodes are contiguous."""
    return arr.T.reshape(-1)


def _unflat(flat: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    return flat.reshape(shape[1], shape[0]).T


class FlatEpisodes:
    """Episode boundaries of a flat, environment-major sequence of steps (episodes start where ``τ = 0``).

    Discounted sums within episodes are vectorised as rescaled cumulative sums (``γ^{±τ}``); built once, they serve
    every quantity of a batch. Callers check :func:`rescaling_is_accurate` first.
    """

    def __init__(self, tau: torch.Tensor, gamma: float) -> None:
        n = tau.numel()
        self.n = n
        self.scale = (gamma ** torch.arange(int(tau.max()) + 1 if n else 1, dtype=DTYPE))[tau]
        index = torch.arange(n)
        starts = torch.where(tau == 0, index, n)
        later_starts = torch.flip(torch.cummin(torch.flip(starts, [0]), 0).values, [0])
        self.next_start = torch.cat([later_starts[1:], torch.tensor([n])])
        self.start = torch.cummax(torch.where(tau == 0, index, 0), 0).values

    def to_go(self, v: torch.Tensor) -> torch.Tensor:
        """``G_t = Σ_{k ≥ t, same episode} γ^{k-t} v_k``."""
        suffix = torch.flip(torch.cumsum(torch.flip(v * self.scale, [0]), 0), [0])
        suffix = torch.cat([suffix, torch.zeros(1, dtype=DTYPE)])
        return (suffix[: self.n] - suffix[self.next_start]) / self.scale

    def from_start(self, v: torch.Tensor) -> torch.Tensor:
        """``C_t = Σ_{k ≤ t, same episode} γ^{t-k} v_k``."""
        prefix = torch.cat([torch.zeros(1, dtype=DTYPE), torch.cumsum(v / self.scale, 0)])
        return (prefix[1:] - prefix[self.start]) * self.scale


def rescaling_is_accurate(tau: torch.Tensor, gamma: float) -> bool:
    """Whether ``γ^{max τ}`` is large enough (``≥ 10⁻⁶``) for :class:`FlatEpisodes`' rescaled sums."""
    return tau.numel() == 0 or gamma ** float(tau.max()) >= 1e-6


def discounted_to_go(values: torch.Tensor, tau: torch.Tensor, gamma: float) -> torch.Tensor:
    """``G_t = Σ_{k ≥ t, same episode} γ^{k-t} v_k`` on ``(T, E)`` tensors (episodes start where ``τ = 0``).

    Vectorised by :class:`FlatEpisodes`; a time loop is used instead when ``γ^{max τ}`` is too small for the
    rescaling to be accurate.
    """
    if not rescaling_is_accurate(tau, gamma):
        out = torch.zeros(values.shape, dtype=DTYPE)
        run = torch.zeros(values.shape[1], dtype=DTYPE)
        for t in range(values.shape[0] - 1, -1, -1):
            next_start = tau[t + 1] == 0 if t + 1 < values.shape[0] else torch.ones(values.shape[1], dtype=torch.bool)
            run = values[t] + gamma * torch.where(next_start, 0.0, run)
            out[t] = run
        return out
    return _unflat(FlatEpisodes(_flat(tau), gamma).to_go(_flat(values).to(DTYPE)), values.shape)


def discounted_from_start(values: torch.Tensor, tau: torch.Tensor, gamma: float) -> torch.Tensor:
    """``C_t = Σ_{k ≤ t, same episode} γ^{t-k} v_k`` on ``(T, E)`` tensors (forward; resets where ``τ = 0``)."""
    if not rescaling_is_accurate(tau, gamma):
        out = torch.zeros(values.shape, dtype=DTYPE)
        run = torch.zeros(values.shape[1], dtype=DTYPE)
        for t in range(values.shape[0]):
            run = values[t] + gamma * torch.where(tau[t] == 0, 0.0, run)
            out[t] = run
        return out
    return _unflat(FlatEpisodes(_flat(tau), gamma).from_start(_flat(values).to(DTYPE)), values.shape)


def pooled_estimator(
    mdp: SoftMDP,
    pi: torch.Tensor,
    rbar: torch.Tensor,
    num_envs: int,
    steps_per_env: int,
    max_episode_steps: int,
    generator: torch.Generator,
    terminal: torch.Tensor | None = None,
    direct: DirectTerm = "episodes",
) -> GradientWeights:
    """Prop. 1 (Eq. 8) with tabular every-visit Monte-Carlo estimates pooled over one on-policy batch.

    This is the form the authors' Four-Rooms code computes (``docs/theory/hpgd_four_rooms.md`` §3.4): on
    ``num_envs × steps_per_env`` on-policy steps, every visit's discounted reward-to-go of ``∇_x r`` is an
    Algorithm-2 sample of ``∂_x Q^π(s_t, a_t)`` (Theorem 2, with the geometric truncation Rao-Blackwellised); they
    are averaged per ``(s, a)`` and per ``s`` to give ``∂_x Â = ∂_x Q̂ - ∂_x V̂``. The leader's ``Q̄`` is replaced by
    the tabular advantage ``Ā = Q̄ - V̄`` (valid since ``E_{a~π} ∂_x A(s, a) = 0``), and

        ĝ = (1/N_ep) Σ_{steps} γ^{τ_t} [ ∇_x r̄(s_t, a_t) + ∂_x Â(s_t, a_t) Ā(s_t, a_t) / λ ].

    The products of same-batch tabular averages make it biased for finite batches but consistent;
    its variance is orders of magnitude below Algorithm 5's at λ = 10⁻³ (see the results doc). The
    ``(S, A, d)`` tables are never formed: ``Σ_i ω_i ∂Q̂-sample_i`` is folded into a forward discounted cumsum.
    Only completed episodes enter the statistics; all ``num_envs × steps_per_env`` steps count as spent.

    Args:
        mdp: dynamics, ``ρ``, ``γ`` and ``λ = mdp.tau``.
        pi: ``(S, A)`` follower (oracle) policy.
        rbar: ``(S, A)`` leader reward at the current ``x``.
        num_envs: parallel auto-resetting environments.
        steps_per_env: steps per environment.
        max_episode_steps: episode cap (treated as done).
        generator: the random stream.
        terminal: optional ``(S,)`` terminal mask.
        direct: the estimator of the direct ``∇_x r̄`` term (:func:`pooled_weights`).
    """
    data = run_envs(mdp, pi, num_envs, steps_per_env, max_episode_steps, generator, terminal)
    data["run"] = torch.zeros(num_envs, dtype=torch.long)
    W_r, W_rbar = pooled_weights(data, rbar[None], mdp.gamma, mdp.tau, direct)
    return GradientWeights(W_r[0], W_rbar[0], num_envs * steps_per_env)


def pooled_weights(
    data: dict[str, torch.Tensor],
    rbar: torch.Tensor,
    gamma: float,
    lam: float | torch.Tensor,
    direct: DirectTerm = "episodes",
) -> tuple[torch.Tensor, torch.Tensor]:
    """The weights ``(W_r, W_r̄)`` of :func:`pooled_estimator` for several independent runs at once.

    The direct term ``E[Σ_t γ^t ∇_x r̄(s_t, a_t)] = ∂_x V̄(S)|_π`` of Eq. 8 has two estimators (``direct``):

    * ``episodes``: ``(1/N_ep) Σ_steps γ^{τ_t} ∇_x r̄(s_t, a_t)``, the per-episode sum averaged over episodes;
    * ``start_state``: the every-visit Monte-Carlo estimate of ``∂_x V̄`` at the start state: the discounted
      reward-to-go of ``∇_x r̄`` averaged over *every* visit of that state (mid-episode returns included), states
      weighted by how often episodes start there. This is what the authors' ``train_stochastic_bilevel_opt.py``
      computes (``UL_value_grad``, a per-state average, read at the episodes' first steps); with ``complete`` all
      true (every step counted) an unfinished last episode's truncated return enters that average and its start
      the count, which the ``episodes`` form (normalised by finished episodes) does not do.

    The response term is the same in both (normalised by the finished episodes, as the authors' code does).

    Args:
        data: ``(T, N)`` tensors ``s``, ``a``, ``tau``, ``done``, ``complete`` of :func:`run_envs`, plus ``run (N,)``:
            the run each environment column belongs to (each run's statistics use its own columns only).
        rbar: ``(R, S, A)`` each run's leader reward (``R`` runs).
        gamma: discount.
        lam: follower temperature (a float, or one per run).
        direct: the direct term's estimator (above).

    Returns:
        ``(R, S, A)`` weights ``W_r`` and ``W_r̄``: ``W_r`` divided by each run's number of finished episodes (zero
        for a run without one), ``W_r̄`` as ``direct`` says.
    """
    if direct not in DIRECT_TERMS:
        raise ValueError(f"direct: expected episodes or start_state, got {direct!r}")
    R, S, A = rbar.shape
    # the kernels walk one environment's column at a time: (N, T) arrays (free for BatchFourRooms.rollouts' views)
    steps = {k: np.ascontiguousarray(data[k].numpy().T) for k in ("s", "a", "tau", "complete")}
    run = data["run"].numpy()
    n_sa, q_sum, W_rbar = (np.zeros((R, S, A)) for _ in range(3))
    starts = np.zeros((R, S))
    _visit_tables(steps["s"], steps["a"], steps["tau"], steps["complete"], run, rbar.detach().to(DTYPE).numpy(),
                  gamma, n_sa, q_sum, W_rbar, starts)  # fmt: skip
    n_s = n_sa.sum(-1)
    Qbar = q_sum / np.maximum(n_sa, 1.0)
    Vbar = q_sum.sum(-1) / np.maximum(n_s, 1.0)
    Abar = np.where(n_sa > 0, Qbar - Vbar[..., None], 0.0)
    lam_r = lam.detach().to(DTYPE).numpy()[:, None, None] if isinstance(lam, torch.Tensor) else lam
    cA = W_rbar * Abar / lam_r  # c(s, a) Ā(s, a) / λ, c = Σ_visits γ^τ (also the direct term's weight)
    per_sa, per_s = cA / np.maximum(n_sa, 1.0), cA.sum(-1) / np.maximum(n_s, 1.0)
    W_r = np.zeros((R, S, A))
    _response_table(steps["s"], steps["a"], steps["tau"], steps["complete"], run, per_sa, per_s, gamma, W_r)
    n_ep = np.zeros(R)
    np.add.at(n_ep, run, data["done"].numpy().sum(0))
    scale = np.where(n_ep > 0, 1.0 / np.maximum(n_ep, 1.0), 0.0)[:, None, None]
    if direct == "episodes":
        return torch.from_numpy(W_r * scale), torch.from_numpy(W_rbar * scale)
    # start_state: visit v of state s weighs w(s) / n(s) (w: share of the counted episode starts at s); the weight of
    # ∇r̄(s_k, a_k) is Σ over the earlier visits t of its episode of γ^{k−t} · weight(t), a forward pass
    share = starts / np.maximum(starts.sum(-1, keepdims=True), 1.0)
    per_visit = np.where(n_s > 0, share / np.maximum(n_s, 1.0), 0.0)
    W_direct = np.zeros((R, S, A))
    # the response pass with ω_k = per_visit(s_k) (per_sa = 0, per_s = −per_visit)
    _response_table(steps["s"], steps["a"], steps["tau"], steps["complete"], run, np.zeros((R, S, A)), -per_visit,
                    gamma, W_direct)  # fmt: skip
    return torch.from_numpy(W_r * scale), torch.from_numpy(W_direct)


@numba.njit(cache=True, nogil=True)
def _visit_tables(
    s: np.ndarray,
    a: np.ndarray,
    tau: np.ndarray,
    complete: np.ndarray,
    run: np.ndarray,
    rbar: np.ndarray,
    gamma: float,
    n_sa: np.ndarray,
    q_sum: np.ndarray,
    c_sa: np.ndarray,
    starts: np.ndarray,
) -> None:  # pragma: no cover - compiled; tested through pooled_weights
    """Per run and ``(s, a)`` over the counted visits: counts, sums of ``Ḡ_t`` and of ``γ^{τ_t}``; episode starts.

    ``starts[r, s]`` counts the counted steps with ``τ = 0`` in state ``s``.
    ``Ḡ_t = Σ_{k ≥ t, same episode} γ^{k-t} r̄(s_k, a_k)`` by a backward pass per column (an episode ends where the
    next step has ``τ = 0`` or the column ends).
    """
    N, T = s.shape
    for n in range(N):
        r = run[n]
        g = 0.0
        for t in range(T - 1, -1, -1):
            if t == T - 1 or tau[n, t + 1] == 0:
                g = 0.0
            g = rbar[r, s[n, t], a[n, t]] + gamma * g
            if complete[n, t]:
                n_sa[r, s[n, t], a[n, t]] += 1.0
                q_sum[r, s[n, t], a[n, t]] += g
                c_sa[r, s[n, t], a[n, t]] += gamma ** tau[n, t]
                if tau[n, t] == 0:
                    starts[r, s[n, t]] += 1.0


@numba.njit(cache=True, nogil=True)
def _response_table(
    s: np.ndarray,
    a: np.ndarray,
    tau: np.ndarray,
    complete: np.ndarray,
    run: np.ndarray,
    per_sa: np.ndarray,
    per_s: np.ndarray,
    gamma: float,
    W_r: np.ndarray,
) -> None:  # pragma: no cover - compiled; tested through pooled_weights
    """``W_r(s, a) += Σ_visits C_t``, ``C_t = Σ_{k ≤ t, same episode} γ^{t-k} ω_k`` (a forward pass per column).

    ``ω_k = per_sa(s_k, a_k) − per_s(s_k)`` on the completed episodes' steps, zero elsewhere.
    """
    N, T = s.shape
    for n in range(N):
        r = run[n]
        acc = 0.0
        for t in range(T):
            if tau[n, t] == 0:
                acc = 0.0
            if complete[n, t]:
                acc = per_sa[r, s[n, t], a[n, t]] - per_s[r, s[n, t]] + gamma * acc
                W_r[r, s[n, t], a[n, t]] += acc
            else:
                acc = gamma * acc
