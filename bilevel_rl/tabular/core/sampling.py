"""The one sampler of the tabular lab: actions, next states, trajectories and trajectory tuples of finite MDPs.

Everything the tabular lab samples goes through :class:`CategoricalTable`: the estimators' rollouts
(:func:`rollout`, :func:`rollout_until`, :func:`gradient_return_visits`), the tabular followers' environments and
generative model (:class:`EnvBatch`, :func:`rollout`), the trajectory tuples of the upper losses
(:func:`sample_tuples`), the HPGD Four-Rooms batches and the Stackelberg games' Monte-Carlo rollouts (a game batch
is a stack of MDPs with joint actions, :class:`Simulator` ``next_offset``).

Randomness is always an explicit ``torch.Generator``; global RNG state is never touched. The deep ``Follower`` seam
hands the tabular followers a ``numpy.random.Generator``: :func:`generator_from` turns it into a torch one.

Every stochastic estimator of :mod:`bilevel_rl.tabular.checks` is linear in the reward Jacobian ``∇_x r``: it is
``Σ_{s,a} W[s, a] ∇_x r(s, a)`` for a random weight table ``W``. The rollouts therefore return *visit weights*
(:class:`Visits`: discounted or geometrically truncated visit counts of ``(s, a)``), which
:func:`~bilevel_rl.tabular.core.reward.reward_vjp` turns into a gradient. Batches hold thousands of trajectories;
a Python loop runs over time steps only.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, replace

import numpy as np
import torch

from bilevel_rl.tabular.core.soft_mdp import DTYPE, SoftMDP


def generator_from(rng: np.random.Generator) -> torch.Generator:
    """A torch generator seeded from ``rng`` (the deep seams pass numpy generators; one draw of ``rng``)."""
    return torch.Generator().manual_seed(int(rng.integers(2**63)))


def pin_cdf(probs: torch.Tensor) -> torch.Tensor:
    """Row CDFs of ``probs (N, K)``, pinned to exactly 1 from each row's last outcome of positive probability on.

    A draw ``#{k : u >= cdf[k]}`` (or a right-sided search) with ``u ~ U[0, 1)`` then never returns an outcome of
    zero probability.
    """
    probs = probs.detach().to(DTYPE)
    cdf = probs.cumsum(-1)
    last = (probs > 0).cumsum(-1).argmax(-1, keepdim=True)  # the first index of each row's maximal count
    return torch.where(torch.arange(probs.shape[-1]) >= last, torch.ones((), dtype=DTYPE), cdf)


class CategoricalTable:
    """Fast sampling from the rows of a fixed ``(R, K)`` table of distributions.

    The row CDFs are stored offset by their row index in one sorted vector, so a batch of draws ``row[n]`` is one
    ``searchsorted`` of ``row + u`` (no ``(N, K)`` gather). Each CDF is pinned to exactly 1 from its last outcome of
    positive probability on, so ``u ∈ [0, 1)`` and a right-sided search never return an outcome of zero probability.
    """

    def __init__(self, probs: torch.Tensor) -> None:
        """Store the offset CDFs of ``probs (R, K)``."""
        self.num_rows, self.num_outcomes = int(probs.shape[0]), int(probs.shape[1])
        cdf = pin_cdf(probs)
        offsets = torch.arange(self.num_rows, dtype=DTYPE)[:, None]
        self._keys = (offsets + cdf).reshape(-1).contiguous()

    def sample(self, rows: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """One outcome per entry of ``rows (N,)``."""
        u = torch.rand(rows.shape, generator=generator, dtype=DTYPE)
        idx = torch.searchsorted(self._keys, rows.to(DTYPE) + u, right=True) - rows * self.num_outcomes
        return idx.clamp(0, self.num_outcomes - 1)


def sample_states(dist: torch.Tensor, n: int, generator: torch.Generator) -> torch.Tensor:
    """``n`` i.i.d. states from the distribution ``dist (S,)``."""
    return CategoricalTable(dist[None, :]).sample(torch.zeros(n, dtype=torch.long), generator)


def sample_geometric(n: int, success_prob: float, generator: torch.Generator) -> torch.Tensor:
    """``n`` draws of ``Geo(p)`` on ``{0, 1, 2, ...}`` with ``Pr(T >= k) = (1 - p)^k`` (HPGD App. D convention)."""
    if not 0.0 < success_prob <= 1.0:
        raise ValueError(f"success_prob must be in (0, 1], got {success_prob}")
    if success_prob == 1.0:
        return torch.zeros(n, dtype=torch.long)
    u = torch.rand(n, generator=generator, dtype=DTYPE)
    return torch.floor(torch.log1p(-u) / math.log1p(-success_prob)).long()


class Simulator:
    """A generative model: ``a ~ π(·|s)`` and ``s' ~ P(·|s, a)`` for batches of states (any start is allowed).

    Args:
        dynamics: a :class:`SoftMDP`, or transitions ``(R, A, K)`` over ``R`` state rows and ``K`` successor labels.
        policy: ``(R, A)`` policy, or ``None`` for a simulator of the dynamics alone (:meth:`act` then refuses).
        terminal: optional ``(R,)`` boolean mask of terminal states: :func:`rollout_until` and :class:`EnvBatch`
            end an episode on entering one.
        next_offset: optional ``(R,)`` integers added to the successor label drawn from row ``s``; a stack of
            independent MDPs whose tables hold local next states (a Stackelberg game batch) uses it.
    """

    def __init__(
        self,
        dynamics: SoftMDP | torch.Tensor,
        policy: torch.Tensor | None = None,
        terminal: torch.Tensor | None = None,
        next_offset: torch.Tensor | None = None,
    ) -> None:
        P = dynamics.P if isinstance(dynamics, SoftMDP) else dynamics
        self.num_actions = int(P.shape[1])
        self.terminal = terminal
        self.next_offset = next_offset
        self._P = CategoricalTable(P.reshape(-1, P.shape[2]))
        self._pi = None if policy is None else CategoricalTable(policy)

    def with_policy(self, policy: torch.Tensor) -> Simulator:
        """The same dynamics (sampling tables shared, not rebuilt) under another policy."""
        new = copy.copy(self)
        new._pi = CategoricalTable(policy)
        return new

    def act(self, s: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """``a ~ π(·|s)`` for a batch of states."""
        if self._pi is None:
            raise ValueError("this simulator has no policy; use with_policy()")
        return self._pi.sample(s, generator)

    def step(self, s: torch.Tensor, a: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """``s' ~ P(·|s, a)`` for a batch of pairs."""
        nxt = self._P.sample(s * self.num_actions + a, generator)
        return nxt if self.next_offset is None else nxt + self.next_offset[s]


@dataclass
class Trajectories:
    """A batch of fixed-length trajectories: ``states[n, t]`` and ``actions[n, t]``, both ``(N, L)`` long tensors."""

    states: torch.Tensor
    actions: torch.Tensor


def rollout(
    sim: Simulator, s0: torch.Tensor, length: int, generator: torch.Generator, a0: torch.Tensor | None = None
) -> Trajectories:
    """Roll out the simulator's policy for ``length`` steps from the states ``s0 (N,)``.

    Args:
        sim: dynamics and policy (terminal states are not special here).
        s0: ``(N,)`` start states.
        length: number of ``(s_t, a_t)`` pairs per trajectory (``>= 1``).
        generator: the random stream.
        a0: optional ``(N,)`` forced first actions (``Q``-type rollouts); otherwise ``a_0 ~ π(·|s_0)``.

    Returns:
        :class:`Trajectories` with ``(N, length)`` states and actions.
    """
    if length < 1:
        raise ValueError(f"length must be >= 1, got {length}")
    states, actions = [], []
    s = s0
    for t in range(length):
        a = a0 if (t == 0 and a0 is not None) else sim.act(s, generator)
        states.append(s)
        actions.append(a)
        if t + 1 < length:
            s = sim.step(s, a, generator)
    return Trajectories(torch.stack(states, 1), torch.stack(actions, 1))


def sample_trajectories(
    sim: Simulator, start: torch.Tensor, n: int, length: int, generator: torch.Generator
) -> Trajectories:
    """``n`` i.i.d. on-policy trajectories of ``length`` steps with ``s_0 ~ start`` (an ``(S,)`` distribution)."""
    return rollout(sim, sample_states(start, n, generator), length, generator)


def sample_tuples(
    sim: Simulator,
    start: torch.Tensor,
    num_tuples: int,
    num_trajectories: int,
    horizon: int,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``num_tuples`` i.i.d. tuples of ``I = num_trajectories`` on-policy ``H``-step trajectories from ``start``.

    The samples of an upper loss ``l(d_1, …, d_I; x)`` (SoBiRL eq. 11): states and actions of shape ``(M, I, H)``.
    """
    ro = sample_trajectories(sim, start, num_tuples * num_trajectories, horizon, generator)
    shape = (num_tuples, num_trajectories, horizon)
    return ro.states.reshape(shape), ro.actions.reshape(shape)


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

    def regroup(self, owner: torch.Tensor, scale: float = 1.0) -> Visits:
        """The same visits credited to ``owner[row]`` instead of ``row``, with weights times ``scale``."""
        return replace(self, rows=owner[self.rows], weights=scale * self.weights)

    @staticmethod
    def cat(parts: list[Visits]) -> Visits:
        """All visits of ``parts`` in one list."""
        fields = ("rows", "steps", "states", "actions", "weights")
        return Visits(*(torch.cat([getattr(p, f) for p in parts]) for f in fields))


def rollout_until(
    sim: Simulator,
    s0: torch.Tensor,
    last: torch.Tensor,
    generator: torch.Generator,
    a0: torch.Tensor | None = None,
) -> Visits:
    """Roll out the simulator's policy from ``s0 (N,)`` until each row ``n`` has visited the steps ``t = 0..last[n]``.

    Only the live rows are stepped, so the cost is ``Σ_n (last[n] + 1)`` transitions (not ``N max last``). With
    terminal states (``sim.terminal``) a row stops on entering one (the terminal pair is not visited) and a row
    that starts in one visits nothing.

    Args:
        sim: dynamics, policy and optional terminal states.
        s0: ``(N,)`` start states.
        last: ``(N,)`` index of the last step of each row (``>= 0``).
        generator: the random stream.
        a0: optional forced first actions; otherwise ``a_0 ~ π(·|s_0)``.

    Returns:
        The flat visit list with unit weights, ordered by time step.
    """
    rows = torch.arange(s0.shape[0])
    s, a = s0, a0
    if sim.terminal is not None:
        alive = ~sim.terminal[s0]
        rows, s, a = rows[alive], s[alive], None if a is None else a[alive]
    a = sim.act(s, generator) if a is None else a
    out: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
    t = 0
    while rows.numel():
        out.append((rows, s, a))
        live = last[rows] > t
        rows, s, a = rows[live], s[live], a[live]
        if rows.numel() == 0:
            break
        s = sim.step(s, a, generator)
        if sim.terminal is not None:
            live = ~sim.terminal[s]
            rows, s = rows[live], s[live]
        a = sim.act(s, generator)
        t += 1
    if not out:
        empty = torch.zeros(0, dtype=torch.long)
        return Visits(empty, empty, empty, empty, torch.zeros(0, dtype=DTYPE))
    steps = torch.cat([torch.full(r.shape, k, dtype=torch.long) for k, (r, _, _) in enumerate(out)])
    rows_, states, actions = (torch.cat([o[i] for o in out]) for i in range(3))
    return Visits(rows_, steps, states, actions, torch.ones(steps.shape, dtype=DTYPE))


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
    terminal: torch.Tensor | None = None,
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
        terminal: optional ``(S,)`` mask of absorbing states with ``∇r = 0`` where rollouts stop.

    Returns:
        The flat :class:`Visits` (rows index ``s0``).
    """
    sim = Simulator(mdp, pi, terminal)
    if a0 is None and first_policy is not None:
        a0 = sim.with_policy(first_policy).act(s0, generator)
    n = s0.shape[0]
    if cfg.geometric:
        return rollout_until(sim, s0, sample_geometric(n, 1.0 - mdp.gamma, generator), generator, a0)
    if terminal is None:  # every row runs the full horizon: the same draws as rollout_until, fewer operations
        visits = _time_major_visits(rollout(sim, s0, cfg.horizon, generator, a0))
    else:
        visits = rollout_until(sim, s0, torch.full((n,), cfg.horizon - 1), generator, a0)
    visits.weights = mdp.gamma ** visits.steps.to(DTYPE)
    return visits


def _time_major_visits(ro: Trajectories) -> Visits:
    """The visits of fixed-length trajectories in :func:`rollout_until`'s order (by time step, then row)."""
    n, length = ro.states.shape
    rows = torch.arange(n).repeat(length)
    steps = torch.arange(length).repeat_interleave(n)
    return Visits(rows, steps, ro.states.T.reshape(-1), ro.actions.T.reshape(-1), torch.ones(n * length, dtype=DTYPE))


@dataclass
class EnvStep:
    """One vectorised environment step.

    Attributes:
        states: ``s_t`` per copy.
        actions: ``a_t``.
        next_states: ``s_{t+1}`` (before any restart).
        time: ``t`` within the episode.
        done: the episode ended with this step (terminal next state or time limit); that copy restarted from ``ρ``.
    """

    states: torch.Tensor
    actions: torch.Tensor
    next_states: torch.Tensor
    time: torch.Tensor
    done: torch.Tensor


class EnvBatch:
    """``n`` copies of a finite MDP stepped side by side, each restarting from ``ρ`` when its episode ends.

    An episode ends on entering a terminal state (``sim.terminal``) or after ``episode_length`` steps (a time
    limit). The state (current states and within-episode times) is plain tensors, for checkpoints.

    Args:
        sim: the dynamics (its policy, if any, is not used: every :meth:`step` names the acting policy).
        rho: ``(S,)`` initial distribution.
        n: number of copies.
        episode_length: steps before an episode is cut.
        generator: the random stream of the initial states.
    """

    def __init__(
        self, sim: Simulator, rho: torch.Tensor, n: int, episode_length: int, generator: torch.Generator
    ) -> None:
        self.sim, self.episode_length = sim, episode_length
        self._rho = CategoricalTable(rho[None, :])
        self.states = self._starts(n, generator)
        self.time = torch.zeros(n, dtype=torch.long)

    def _starts(self, n: int, generator: torch.Generator) -> torch.Tensor:
        return self._rho.sample(torch.zeros(n, dtype=torch.long), generator)

    def step(self, policy: torch.Tensor | CategoricalTable, generator: torch.Generator) -> EnvStep:
        """Act with ``policy`` (an ``(S, A)`` table), step every copy and restart those whose episode ended."""
        table = policy if isinstance(policy, CategoricalTable) else CategoricalTable(policy)
        s, t = self.states, self.time
        a = table.sample(s, generator)
        s2 = self.sim.step(s, a, generator)
        done = t + 1 >= self.episode_length
        if self.sim.terminal is not None:
            done = done | self.sim.terminal[s2]
        self.states, self.time = s2.clone(), t + 1
        if bool(done.any()):
            self.states[done] = self._starts(int(done.sum()), generator)
            self.time[done] = 0
        return EnvStep(s, a, s2, t, done)
