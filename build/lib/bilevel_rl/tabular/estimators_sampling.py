"""Vectorised trajectory sampling and exact occupancy measures on finite soft MDPs.

Every stochastic estimator in :mod:`bilevel_rl.tabular.estimators` is linear in the reward Jacobian ``∇_x r``:
it is ``Σ_{s,a} W[s, a] ∇_x r(s, a)`` for a random weight table ``W``. The samplers here therefore return *visit
weights* (discounted or geometrically truncated visit counts of ``(s, a)``) and :func:`reward_vjp` turns a weight
table into a gradient with one vector–Jacobian product through ``r(x)``, so ``x`` may have any shape.

Sampling is batched over thousands of trajectories (a Python loop runs over time steps only) and takes an explicit
``torch.Generator``; global RNG state is never touched.

Exact counterparts (no sampling):

* :func:`state_action_resolvent` ``D^π[s, a, s', a'] = E[Σ_t γ^t 1{(s_t, a_t) = (s', a')} | s_0 = s, a_0 = a, π]``,
  so that ``∇_x Q^π(s, a) = Σ D^π[s, a] ∇_x r`` for a *fixed* policy (SoBiRL Prop. 5.1; HPGD Thm. 2 without
  ``∇ log P``), and ``∇_x V^π(s) = Σ_a π(a|s) ∇_x Q^π(s, a)``.
* :func:`occupancy` ``d^π(s, a) = Σ_{s_0} ρ(s_0) Σ_t γ^t Pr(s_t = s, a_t = a)``, the unnormalised discounted
  occupancy measure, so that ``∇_x V^π(ρ) = Σ d^π ∇_x r`` (PBRL eq. C.1).
* :func:`enumerate_trajectories` lists every ``H``-step trajectory with its probability (differentiable in ``π``),
  which makes expectations over trajectory tuples exact on small MDPs.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from bilevel_rl.tabular.soft_mdp import DTYPE, SoftMDP


class CategoricalTable:
    """Fast sampling from the rows of a fixed ``(R, K)`` table of distributions.

    The row CDFs are stored offset by their row index in one sorted vector, so a batch of draws ``row[n]`` is one
    ``searchsorted`` of ``row + u`` (no ``(N, K)`` gather); ``u ∈ [0, 1)`` and a right-sided search never return an
    outcome of zero probability.
    """

    def __init__(self, probs: torch.Tensor) -> None:
        """Store the offset CDFs of ``probs (R, K)``."""
        probs = probs.detach().to(DTYPE)
        self.num_rows, self.num_outcomes = int(probs.shape[0]), int(probs.shape[1])
        offsets = torch.arange(self.num_rows, dtype=DTYPE)[:, None]
        self._keys = (offsets + probs.cumsum(-1)).reshape(-1).contiguous()

    def sample(self, rows: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """One outcome per entry of ``rows (N,)``."""
        u = torch.rand(rows.shape, generator=generator, dtype=DTYPE)
        idx = torch.searchsorted(self._keys, rows.to(DTYPE) + u, right=True) - rows * self.num_outcomes
        return idx.clamp(0, self.num_outcomes - 1)


class Simulator:
    """A generative model of ``(mdp, π)``: samples ``a ~ π(·|s)`` and ``s' ~ P(·|s, a)`` in batches."""

    def __init__(self, mdp: SoftMDP, pi: torch.Tensor) -> None:
        """Precompute the sampling tables of ``π (S, A)`` and ``P``."""
        self.num_actions = mdp.num_actions
        self._pi = CategoricalTable(pi)
        self._P = CategoricalTable(mdp.P.reshape(-1, mdp.num_states))

    def act(self, s: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """``a ~ π(·|s)`` for a batch of states."""
        return self._pi.sample(s, generator)

    def step(self, s: torch.Tensor, a: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """``s' ~ P(·|s, a)`` for a batch of pairs."""
        return self._P.sample(s * self.num_actions + a, generator)


def sample_geometric(n: int, success_prob: float, generator: torch.Generator) -> torch.Tensor:
    """``n`` draws of ``Geo(p)`` on ``{0, 1, 2, ...}`` with ``Pr(T >= k) = (1 - p)^k`` (HPGD convention, §3.0)."""
    if not 0.0 < success_prob <= 1.0:
        raise ValueError(f"success_prob must be in (0, 1], got {success_prob}")
    if success_prob == 1.0:
        return torch.zeros(n, dtype=torch.long)
    u = torch.rand(n, generator=generator, dtype=DTYPE)
    return torch.floor(torch.log1p(-u) / math.log1p(-success_prob)).long()


@dataclass
class Rollouts:
    """A batch of trajectories: ``states[n, t]`` and ``actions[n, t]``, both ``(N, L)`` long tensors."""

    states: torch.Tensor
    actions: torch.Tensor


def sample_states(dist: torch.Tensor, n: int, generator: torch.Generator) -> torch.Tensor:
    """``n`` i.i.d. states from the distribution ``dist (S,)``."""
    return CategoricalTable(dist[None, :]).sample(torch.zeros(n, dtype=torch.long), generator)


def rollout(
    mdp: SoftMDP,
    pi: torch.Tensor,
    s0: torch.Tensor,
    length: int,
    generator: torch.Generator,
    a0: torch.Tensor | None = None,
) -> Rollouts:
    """Roll out ``π`` for ``length`` steps from the states ``s0 (N,)`` (a generative model: any start is allowed).

    Args:
        mdp: the dynamics.
        pi: ``(S, A)`` policy.
        s0: ``(N,)`` start states.
        length: number of ``(s_t, a_t)`` pairs per trajectory (``>= 1``).
        generator: the random stream.
        a0: optional ``(N,)`` forced first actions (``Q``-type rollouts); otherwise ``a_0 ~ π(·|s_0)``.

    Returns:
        :class:`Rollouts` with ``(N, length)`` states and actions.
    """
    if length < 1:
        raise ValueError(f"length must be >= 1, got {length}")
    sim = Simulator(mdp, pi)
    states, actions = [], []
    s = s0
    for t in range(length):
        a = a0 if (t == 0 and a0 is not None) else sim.act(s, generator)
        states.append(s)
        actions.append(a)
        if t + 1 < length:
            s = sim.step(s, a, generator)
    return Rollouts(torch.stack(states, 1), torch.stack(actions, 1))


def visit_table(
    states: torch.Tensor, actions: torch.Tensor, weights: torch.Tensor, num_states: int, num_actions: int
) -> torch.Tensor:
    """``W[s, a] = Σ_k weights[k] 1{states[k] = s, actions[k] = a}`` (any shapes; weights broadcast to states)."""
    flat = (states * num_actions + actions).reshape(-1)
    w = torch.broadcast_to(weights, states.shape).reshape(-1).to(DTYPE)
    return torch.bincount(flat, weights=w, minlength=num_states * num_actions).reshape(num_states, num_actions)


@dataclass
class Visits:
    """A flat list of weighted visits: sample ``rows[k]`` was in ``(states[k], actions[k])`` at time ``steps[k]``.

    For the discounted reward-gradient sums of :func:`gradient_return_visits`, sample ``n``'s estimate of
    ``∇Q`` / ``∇V`` is ``Σ_{k: rows[k] = n} weights[k] ∇r(states[k], actions[k])``.
    """

    rows: torch.Tensor
    steps: torch.Tensor
    states: torch.Tensor
    actions: torch.Tensor
    weights: torch.Tensor

    def table(self, num_states: int, num_actions: int, coef: torch.Tensor | None = None) -> torch.Tensor:
        """``(S, A)`` total visit weight; with ``coef (N,)`` each visit of row ``n`` is scaled by ``coef[n]``."""
        w = self.weights if coef is None else self.weights * coef[self.rows]
        return visit_table(self.states, self.actions, w, num_states, num_actions)

    def per_row(self, num_rows: int, num_states: int, num_actions: int) -> torch.Tensor:
        """``(N, S, A)`` visit weights per sample."""
        flat = (self.rows * num_states + self.states) * num_actions + self.actions
        out = torch.bincount(flat, weights=self.weights, minlength=num_rows * num_states * num_actions)
        return out.reshape(num_rows, num_states, num_actions)


def rollout_until(
    mdp: SoftMDP,
    pi: torch.Tensor,
    s0: torch.Tensor,
    last: torch.Tensor,
    generator: torch.Generator,
    a0: torch.Tensor | None = None,
) -> Visits:
    """Roll out ``π`` from ``s0 (N,)`` until each row ``n`` has visited the steps ``t = 0..last[n]``.

    Only the live rows are stepped, so the cost is ``Σ_n (last[n] + 1)`` transitions (not ``N max last``).

    Args:
        mdp: the dynamics.
        pi: ``(S, A)`` policy.
        s0: ``(N,)`` start states.
        last: ``(N,)`` index of the last step of each row (``>= 0``).
        generator: the random stream.
        a0: optional forced first actions; otherwise ``a_0 ~ π(·|s_0)``.

    Returns:
        The flat visit list with unit weights, ordered by time step.
    """
    sim = Simulator(mdp, pi)
    rows = torch.arange(s0.shape[0])
    s = s0
    a = sim.act(s0, generator) if a0 is None else a0
    out: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
    t = 0
    while True:
        out.append((rows, s, a))
        live = last[rows] > t
        rows, s, a = rows[live], s[live], a[live]
        if rows.numel() == 0:
            break
        s = sim.step(s, a, generator)
        a = sim.act(s, generator)
        t += 1
    steps = torch.cat([torch.full(r.shape, k, dtype=torch.long) for k, (r, _, _) in enumerate(out)])
    return Visits(
        torch.cat([o[0] for o in out]),
        steps,
        torch.cat([o[1] for o in out]),
        torch.cat([o[2] for o in out]),
        torch.ones(steps.shape, dtype=DTYPE),
    )


@dataclass
class RolloutConfig:
    """How a discounted reward-gradient sum ``Σ_t γ^t ∇r(s_t, a_t)`` is sampled along one rollout.

    Attributes:
        horizon: fixed truncation length ``T`` (weights ``γ^t`` for ``t < T``); the bias of the sum is at most
            ``γ^T max|∇r| / (1 − γ)`` (SoBiRL Lemma I.1). Ignored when ``geometric`` is set.
        geometric: HPGD's random truncation (Alg. 2): ``T ~ Geo(1 − γ)`` and the *undiscounted* sum over
            ``t <= T``; unbiased because ``Pr(T >= t) = γ^t`` (HPGD Prop. 3).
    """

    horizon: int = 40
    geometric: bool = False


def gradient_return_visits(
    mdp: SoftMDP,
    pi: torch.Tensor,
    s0: torch.Tensor,
    cfg: RolloutConfig,
    generator: torch.Generator,
    a0: torch.Tensor | None = None,
    first_policy: torch.Tensor | None = None,
) -> Visits:
    """Weighted visits of one rollout per start whose weighted ``∇r`` sum estimates ``∇Q^π`` or ``∇V^π``.

    Row ``n`` estimates ``E[Σ_t γ^t ∇r(s_t, a_t) | s_0 = s0[n], (a_0 = a0[n]), π]`` (SoBiRL Prop. 5.1,
    HPGD Thm. 2 with ``∇ log P = 0``). With geometric truncation the expected cost is ``N / (1 − γ)`` transitions.

    Args:
        mdp: the dynamics (``γ`` from here).
        pi: ``(S, A)`` rollout policy.
        s0: ``(N,)`` start states.
        cfg: truncation scheme.
        generator: the random stream.
        a0: optional forced first actions (``∇Q``); otherwise ``a_0 ~ first_policy`` (``∇V``).
        first_policy: policy of the first action when ``a0`` is not given (default ``pi``); PBRL's mixed rollouts
            take ``a_0 ~ π_y`` and later actions from ``π̂``.

    Returns:
        The flat :class:`Visits` (rows index ``s0``).
    """
    if a0 is None and first_policy is not None:
        a0 = Simulator(mdp, first_policy).act(s0, generator)
    n = s0.shape[0]
    if cfg.geometric:
        return rollout_until(mdp, pi, s0, sample_geometric(n, 1.0 - mdp.gamma, generator), generator, a0)
    visits = rollout_until(mdp, pi, s0, torch.full((n,), cfg.horizon - 1), generator, a0)
    visits.weights = mdp.gamma ** visits.steps.to(DTYPE)
    return visits


def grad_or_zeros(output: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``∇_x output`` for a scalar ``output`` (detached), or zeros when ``output`` does not depend on ``x``."""
    if not output.requires_grad:
        return torch.zeros_like(x)
    (g,) = torch.autograd.grad(output, x, allow_unused=True)
    return torch.zeros_like(x) if g is None else g.detach()


def reward_vjp(x: torch.Tensor, reward_fn: Callable[[torch.Tensor], torch.Tensor], W: torch.Tensor) -> torch.Tensor:
    """``Σ_{s,a} W[s, a] ∇_x r(s, a)`` by one vector–Jacobian product (zero if ``r`` does not depend on ``x``)."""
    x = x.detach().requires_grad_(True)
    r = reward_fn(x)
    if not r.requires_grad:
        return torch.zeros_like(x)
    (g,) = torch.autograd.grad(r, x, grad_outputs=W.detach().to(r.dtype), allow_unused=True)
    return torch.zeros_like(x) if g is None else g.detach()


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


def enumerate_trajectories(
    pi: torch.Tensor, mdp: SoftMDP, horizon: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Every ``horizon``-step trajectory from ``ρ`` under ``π``, with its probability (differentiable in ``pi``).

    ``Pr(d) = ρ(s_0) Π_{h<H} π(a_h|s_h) Π_{h<H−1} P(s_{h+1}|s_h, a_h)`` (SoBiRL L115).

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
