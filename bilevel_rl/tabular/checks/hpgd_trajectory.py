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

import torch

from bilevel_rl.tabular.checks.hpgd import GradientWeights
from bilevel_rl.tabular.core.sampling import CategoricalTable, EnvBatch, Simulator, visit_table
from bilevel_rl.tabular.core.soft_mdp import DTYPE, SoftMDP


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


def _rescaling_is_inaccurate(tau: torch.Tensor, gamma: float) -> bool:
    return tau.numel() > 0 and gamma ** float(tau.max()) < 1e-6


def discounted_to_go(values: torch.Tensor, tau: torch.Tensor, gamma: float) -> torch.Tensor:
    """``G_t = Σ_{k ≥ t, same episode} γ^{k-t} v_k`` on ``(T, E)`` tensors (episodes start where ``τ = 0``).

    Vectorised as ``γ^{-τ_t} (suffix-sum of γ^τ v)`` reset at episode boundaries; a time loop is used instead
    when ``γ^{max τ}`` is too small for this rescaling to be accurate.
    """
    if _rescaling_is_inaccurate(tau, gamma):
        out = torch.zeros(values.shape, dtype=DTYPE)
        run = torch.zeros(values.shape[1], dtype=DTYPE)
        for t in range(values.shape[0] - 1, -1, -1):
            next_start = tau[t + 1] == 0 if t + 1 < values.shape[0] else torch.ones(values.shape[1], dtype=torch.bool)
            run = values[t] + gamma * torch.where(next_start, 0.0, run)
            out[t] = run
        return out
    v, tt = _flat(values).to(DTYPE), _flat(tau)
    n = v.numel()
    scale = gamma ** tt.to(DTYPE)
    suffix = torch.cat([torch.flip(torch.cumsum(torch.flip(v * scale, [0]), 0), [0]), torch.zeros(1, dtype=DTYPE)])
    starts = torch.where(tt == 0, torch.arange(n), n)
    later_starts = torch.flip(torch.cummin(torch.flip(starts, [0]), 0).values, [0])
    next_start = torch.cat([later_starts[1:], torch.tensor([n])])
    return _unflat((suffix[:n] - suffix[next_start]) / scale, values.shape)


def discounted_from_start(values: torch.Tensor, tau: torch.Tensor, gamma: float) -> torch.Tensor:
    """``C_t = Σ_{k ≤ t, same episode} γ^{t-k} v_k`` on ``(T, E)`` tensors (forward; resets where ``τ = 0``)."""
    if _rescaling_is_inaccurate(tau, gamma):
        out = torch.zeros(values.shape, dtype=DTYPE)
        run = torch.zeros(values.shape[1], dtype=DTYPE)
        for t in range(values.shape[0]):
            run = values[t] + gamma * torch.where(tau[t] == 0, 0.0, run)
            out[t] = run
        return out
    v, tt = _flat(values).to(DTYPE), _flat(tau)
    n = v.numel()
    scale = gamma ** tt.to(DTYPE)
    prefix = torch.cat([torch.zeros(1, dtype=DTYPE), torch.cumsum(v / scale, 0)])
    start = torch.cummax(torch.where(tt == 0, torch.arange(n), 0), 0).values
    return _unflat((prefix[1:] - prefix[start]) * scale, values.shape)


def pooled_estimator(
    mdp: SoftMDP,
    pi: torch.Tensor,
    rbar: torch.Tensor,
    num_envs: int,
    steps_per_env: int,
    max_episode_steps: int,
    generator: torch.Generator,
    terminal: torch.Tensor | None = None,
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
    """
    data = run_envs(mdp, pi, num_envs, steps_per_env, max_episode_steps, generator, terminal)
    data["run"] = torch.zeros(num_envs, dtype=torch.long)
    W_r, W_rbar = pooled_weights(data, rbar[None], mdp.gamma, mdp.tau, 1)
    return GradientWeights(W_r[0], W_rbar[0], num_envs * steps_per_env)


def pooled_weights(
    data: dict[str, torch.Tensor], rbar: torch.Tensor, gamma: float, lam: float | torch.Tensor, num_runs: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The weights ``(W_r, W_r̄)`` of :func:`pooled_estimator` for ``num_runs`` independent runs at once.

    Args:
        data: ``(T, N)`` tensors ``s``, ``a``, ``tau``, ``done``, ``complete`` of :func:`run_envs`, plus ``run (N,)``:
            the run each environment column belongs to (each run's statistics use its own columns only).
        rbar: ``(num_runs, S, A)`` each run's leader reward.
        gamma: discount.
        lam: follower temperature (a float, or one per run).
        num_runs: number of runs.

    Returns:
        ``(num_runs, S, A)`` weights ``W_r`` and ``W_r̄``, divided by each run's number of finished episodes (zero
        for a run without one).
    """
    R, S, A = rbar.shape
    s, a, tau, keep = data["s"], data["a"], data["tau"], data["complete"]
    run = data["run"][None, :].expand_as(s)
    n_ep = torch.zeros(R, dtype=DTYPE).index_add_(0, data["run"], data["done"].sum(0).to(DTYPE))
    rs = run * S + s  # a (run, state) row

    def table(weights: torch.Tensor) -> torch.Tensor:
        return visit_table(rs, a, weights, R * S, A).reshape(R, S, A)

    w = keep.to(DTYPE)
    disc = w * gamma ** tau.to(DTYPE)
    G = discounted_to_go(rbar[run, s, a], tau, gamma)
    n_sa = table(w)
    q_sum = table(w * G)
    n_s = n_sa.sum(-1)
    Qbar = q_sum / n_sa.clamp_min(1.0)
    Vbar = q_sum.sum(-1) / n_s.clamp_min(1.0)
    Abar = torch.where(n_sa > 0, Qbar - Vbar[..., None], 0.0)
    W_rbar = table(disc)  # c(s, a) = Σ_visits γ^τ, also the direct term's weight
    cA = W_rbar * Abar / (lam[:, None, None] if isinstance(lam, torch.Tensor) else lam)
    omega = w * (cA[run, s, a] / n_sa[run, s, a].clamp_min(1.0) - cA.sum(-1)[run, s] / n_s[run, s].clamp_min(1.0))
    W_r = table(w * discounted_from_start(omega, tau, gamma))
    scale = torch.where(n_ep > 0, 1.0 / n_ep.clamp_min(1.0), 0.0)[:, None, None]
    return W_r * scale, W_rbar * scale
