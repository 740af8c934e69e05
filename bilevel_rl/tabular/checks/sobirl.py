"""SoBiRL hypergradient estimators (eq. 14 / Alg. 3 and the practical depth-1 truncation, eq. 99).

Upper level (SoBiRL eq. 11): ``f(x, π) = E_{d_1..d_I ~ ρ(d; π)}[l(d_1, …, d_I; x)]`` with ``H``-step trajectories
``d_i`` sampled by ``π`` from ``ρ``; the lower level is the soft MDP with reward ``r(x)`` and temperature ``τ``. The
upper- and lower-level dynamics coincide here (the RLHF instance of SoBiRL §3.3).

Prop. 5.2 (§5, eqs. 12–13): at ``π = π*(x)``

    ∇φ(x) = E[∇_x l(d; x)] + τ^{-1} E[l(d; x) Σ_{i,h} ∇(Q*_{s_h^i a_h^i} − V*_{s_h^i})(x)],

and Prop. 5.1 writes ``∇Q*``/``∇V*`` as discounted sums of ``∇r`` along on-policy rollouts. Eq. (14) (§5)
replaces ``π*`` by any ``π``: its value is the *plug-in* hypergradient ``∇̃φ(x, π)``, equal to ``∇φ`` at ``π*``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import torch
import torch.nn.functional as F

from bilevel_rl.tabular.core.occupancy import advantage_resolvent, enumerate_trajectories
from bilevel_rl.tabular.core.reward import RewardFn, grad_or_zeros, reward_vjp
from bilevel_rl.tabular.core.sampling import (
    RolloutConfig,
    Simulator,
    Visits,
    gradient_return_visits,
    sample_tuples,
    visit_table,
)
from bilevel_rl.tabular.core.soft_mdp import SoftMDP


class TrajectoryLoss(Protocol):
    """An upper loss ``l(d_1, …, d_I; x)`` on ``I`` trajectories of ``horizon`` steps (SoBiRL eq. 11)."""

    num_trajectories: int
    horizon: int

    def __call__(self, x: torch.Tensor, r: torch.Tensor, states: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """Per-tuple losses ``(M,)`` for ``states``/``actions`` of shape ``(M, I, H)`` and reward table ``r(x)``."""
        ...


@dataclass
class BradleyTerryLoss:
    """RLHF loss on trajectory pairs with a fixed labelling function (SoBiRL §3.3 and eq. 101, App. K).

    ``l(d_1, d_2; x) = E_y[l_h] = −p log σ(Δ) − (1 − p) log σ(−Δ)`` with ``Δ = Σ_h r_x(d_1) − Σ_h r_x(d_2)`` and
    label probability ``p = σ((R(d_1) − R(d_2)) / label_temperature)`` from a fixed ground-truth reward ``R``.
    Taking the expectation over the label keeps ``l`` deterministic and smooth (SoBiRL: "``l = E_y[l_h]``").

    Attributes:
        true_reward: ``(S, A)`` ground-truth reward of the synthetic labeller.
        horizon: segment length ``H``.
        label_temperature: Bradley–Terry temperature of the labeller.
    """

    true_reward: torch.Tensor
    horizon: int
    label_temperature: float = 1.0
    num_trajectories: int = 2

    def __call__(self, x: torch.Tensor, r: torch.Tensor, states: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """Expected BCE per pair, ``(M,)``."""
        returns = r[states, actions].sum(-1)
        delta = returns[:, 0] - returns[:, 1]
        true = self.true_reward[states, actions].sum(-1)
        p = torch.sigmoid((true[:, 0] - true[:, 1]) / self.label_temperature)
        return p * F.softplus(-delta) + (1 - p) * F.softplus(delta)


@dataclass
class UtilityLoss:
    """``l(d; x) = −Σ_{h<H} u(s_h, a_h)`` on one trajectory: a leader utility that does not depend on ``x``.

    This is the reward-shaping instance (SoBiRL §3.3 and the reward-shaping case of eq. 11 in §5, with an
    ``H``-step return instead of ``−Q̄``): ``∇_x l = 0`` and the whole hypergradient is the implicit term.

    Attributes:
        utility: ``(S, A)`` per-step leader utility ``u``.
        horizon: ``H``.
    """

    utility: torch.Tensor
    horizon: int
    num_trajectories: int = 1

    def __call__(self, x: torch.Tensor, r: torch.Tensor, states: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """Negated undiscounted utility of each tuple, ``(M,)``."""
        return -self.utility[states, actions].sum((-1, -2))


def _tuples(pi: torch.Tensor, mdp: SoftMDP, loss: TrajectoryLoss) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """All ``I``-tuples of ``H``-step trajectories with their probabilities: ``(M, I, H)``, ``(M, I, H)``, ``(M,)``."""
    states, actions, prob = enumerate_trajectories(pi, mdp, loss.horizon)
    K, num = states.shape[0], loss.num_trajectories
    idx = torch.cartesian_prod(*[torch.arange(K)] * num).reshape(-1, num)
    return states[idx], actions[idx], prob[idx].prod(1)


def expected_trajectory_loss(
    x: torch.Tensor, pi: torch.Tensor, reward_fn: RewardFn, mdp: SoftMDP, loss: TrajectoryLoss
) -> torch.Tensor:
    """Exact ``f(x, π) = E_{d ~ ρ(d; π)}[l(d; x)]`` by enumerating every tuple (differentiable in ``x`` and ``π``)."""
    states, actions, prob = _tuples(pi, mdp, loss)
    return (prob * loss(x, reward_fn(x), states, actions)).sum()


def sample_loss_tuples(
    pi: torch.Tensor, mdp: SoftMDP, loss: TrajectoryLoss, num_tuples: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """``num_tuples`` i.i.d. tuples of ``I`` on-policy ``H``-step trajectories from ``ρ``: ``(M, I, H)`` each."""
    return sample_tuples(Simulator(mdp, pi), mdp.rho, num_tuples, loss.num_trajectories, loss.horizon, generator)


def score_rollouts(
    mdp: SoftMDP,
    pi: torch.Tensor,
    states: torch.Tensor,
    actions: torch.Tensor,
    num_rollouts: int,
    cfg: RolloutConfig,
    generator: torch.Generator,
) -> Visits:
    """The ``ξ`` and ``ζ`` rollouts of SoBiRL Algorithm 3 for every visited pair of ``M`` tuples ``(M, I, H)``.

    For each ``(s, a) = (s_h^{m,i}, a_h^{m,i})``: ``J = num_rollouts`` rollouts ``ξ`` from the forced start
    ``(s, a)`` and ``J`` rollouts ``ζ`` from ``s`` with ``a_0 ~ π`` (generative model), truncated by ``cfg``.
    Returns one visit list credited to the tuple ``m``, ``ξ`` visits weighted ``+w/J`` and ``ζ`` visits ``−w/J``
    (``w`` the truncation weight), so that ``Σ_k weights ∇r`` over tuple ``m``'s visits is
    ``Σ_{i,h} ∇̄(Q^ξ_{sa} − V^ζ_s)`` (eqs. 79–80).
    """
    M, J = states.shape[0], num_rollouts
    owner = torch.arange(M).repeat_interleave(states[0].numel() * J)
    starts = states.reshape(-1).repeat_interleave(J)
    first = actions.reshape(-1).repeat_interleave(J)
    q = gradient_return_visits(mdp, pi, starts, cfg, generator, a0=first)
    v = gradient_return_visits(mdp, pi, starts, cfg, generator)
    return Visits.cat([q.regroup(owner, 1.0 / J), v.regroup(owner, -1.0 / J)])


@dataclass
class HypergradientEstimate:
    """A hypergradient split into its direct part (12) and its implicit / score part (13); ``grad`` is the sum."""

    grad: torch.Tensor
    direct: torch.Tensor
    implicit: torch.Tensor


def _direct_term(
    x: torch.Tensor, reward_fn: RewardFn, loss: TrajectoryLoss, states: torch.Tensor, actions: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(mean_m ∇_x l(d^m; x), l(d^m; x) detached (M,))``."""
    x = x.detach().requires_grad_(True)
    values = loss(x, reward_fn(x), states, actions)
    return grad_or_zeros(values.mean(), x), values.detach()


@dataclass
class SoBiRLEstimatorConfig:
    """Sampling sizes of SoBiRL's ``HyperEstimator`` (Alg. 3, App. I.1).

    Attributes:
        num_tuples: ``M``, trajectory tuples per estimate.
        num_rollouts: ``J``, independent ``∇Q`` and ``∇V`` rollouts per visited ``(s, a)``.
        rollout: truncation of the rollouts (``T`` of Alg. 3, or HPGD-style geometric truncation, unbiased).
        leave_one_out_baseline: subtract from ``l(d^m)`` in the score term the mean loss of the *other* tuples.
            Not in the paper (default off = faithful). It stays unbiased because ``E_{a~π}[∇̃Q_{sa}] = ∇̃V_s``
            makes the score sum mean-zero and the baseline is independent of tuple ``m`` (see
            ``docs/theory/sobirl_estimators.md`` §3).
    """

    num_tuples: int = 4096
    num_rollouts: int = 1
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    leave_one_out_baseline: bool = False


def sobirl_estimate(
    x: torch.Tensor,
    reward_fn: RewardFn,
    pi: torch.Tensor,
    mdp: SoftMDP,
    loss: TrajectoryLoss,
    cfg: SoBiRLEstimatorConfig,
    generator: torch.Generator,
) -> HypergradientEstimate:
    """SoBiRL's stochastic first-order hypergradient ``∇̄φ`` (Alg. 3, the estimator of eq. 14).

    ``∇̄φ = (1/M) Σ_m ∇l(d^m; x) + τ^{-1} (1/M) Σ_m l(d^m; x) Σ_{i,h} (∇̄Q^ξ_{s_h^i a_h^i} − ∇̄V^ζ_{s_h^i})`` with
    ``∇̄Q^ξ_{sa} = (1/J) Σ_j Σ_t γ^t ∇r(s_t^j, a_t^j)`` along rollouts from the forced start ``(s, a)`` and ``∇̄V^ζ``
    the same from ``s`` with ``a_0 ~ π`` (generative model). Everything is linear in ``∇r``, so the score part is
    one VJP of a visit-weight table (the surrogate identity of ``docs/theory/sobirl_estimators.md`` §1).

    Corrections of the printed text: "``d^m_T``" in Alg. 3 line 1 (App. I.1) is ``d^m_I``; the last line of the
    proof of Prop. 5.2 (App. E) writes ``V*_{s_h^i a_h^i}`` for ``V*_{s_h^i}``. With ``cfg.rollout.geometric`` the
    rollouts use HPGD's ``Geo(1 − γ)`` truncation instead of the fixed ``T`` of Alg. 3, which removes the ``O(γ^T)``
    bias.

    Args:
        x: leader variable.
        reward_fn: ``x ↦ r(x) (S, A)``.
        pi: ``(S, A)`` follower policy ``π_k`` (samples the tuples and the rollouts).
        mdp: lower-level dynamics (also the upper-level one).
        loss: the upper loss ``l``.
        cfg: sample sizes.
        generator: the random stream.

    Returns:
        The estimate with its direct (12) and implicit (13) parts.
    """
    states, actions = sample_loss_tuples(pi, mdp, loss, cfg.num_tuples, generator)
    direct, values = _direct_term(x, reward_fn, loss, states, actions)
    M = states.shape[0]
    weights = values
    if cfg.leave_one_out_baseline:
        if M < 2:
            raise ValueError("the leave-one-out baseline needs num_tuples >= 2")
        weights = values - (values.sum() - values) / (M - 1)
    visits = score_rollouts(mdp, pi, states, actions, cfg.num_rollouts, cfg.rollout, generator)
    implicit = reward_vjp(x, reward_fn, visits.table(mdp.num_states, mdp.num_actions, weights / (mdp.tau * M)))
    return HypergradientEstimate(direct + implicit, direct, implicit)


def _loss_weighted_visits(
    x: torch.Tensor, reward_fn: RewardFn, pi: torch.Tensor, mdp: SoftMDP, loss: TrajectoryLoss
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact ``(E[∇_x l], c)`` with ``c(s, a) = E[l(d; x) Σ_{i,h} 1{(s_h^i, a_h^i) = (s, a)}]`` at fixed ``π``."""
    states, actions, prob = _tuples(pi.detach(), mdp, loss)
    x = x.detach().requires_grad_(True)
    values = loss(x, reward_fn(x), states, actions)
    direct = grad_or_zeros((prob * values).sum(), x)
    weights = (prob * values.detach())[:, None, None].expand(states.shape)
    return direct, visit_table(states, actions, weights, mdp.num_states, mdp.num_actions)


def sobirl_exact(
    x: torch.Tensor, reward_fn: RewardFn, pi: torch.Tensor, mdp: SoftMDP, loss: TrajectoryLoss
) -> HypergradientEstimate:
    """Exact value of eq. (14), ``∇̃φ(x, π)``, by trajectory enumeration and exact ``∇̃Q``/``∇̃V`` (linear solves).

    ``∇̃Q_{sa} = Σ D^π[s, a] ∇r`` and ``∇̃V_s = Σ_a π(a|s) ∇̃Q_{sa}``
    (:func:`~bilevel_rl.tabular.core.occupancy.state_action_resolvent`). At
    ``π = π*(x)`` this is the exact hypergradient of Prop. 5.2.
    """
    direct, c = _loss_weighted_visits(x, reward_fn, pi, mdp, loss)
    implicit = reward_vjp(x, reward_fn, advantage_resolvent(c, pi.detach(), mdp) / mdp.tau)
    return HypergradientEstimate(direct + implicit, direct, implicit)


@dataclass
class PracticalSoBiRLConfig:
    """Settings of the practical estimator, eq. (99).

    Attributes:
        num_tuples: ``M``, trajectory tuples per estimate.
        temperature: ``τ_k`` of the score term (SAC's current ``α`` in the deep version, App. J.1); ``None`` means
            the MDP's own ``τ`` (the lower level's true temperature).
    """

    num_tuples: int = 4096
    temperature: float | None = None


def sobirl_practical_estimate(
    x: torch.Tensor,
    reward_fn: RewardFn,
    pi: torch.Tensor,
    mdp: SoftMDP,
    loss: TrajectoryLoss,
    cfg: PracticalSoBiRLConfig,
    generator: torch.Generator,
) -> HypergradientEstimate:
    """Practical SoBiRL estimator, eq. (99) (App. J.1), a *biased* depth-1 truncation of eq. (14).

    ``∇_pφ = (1/M) Σ_m ∇l + τ_k^{-1} (1/M) Σ_m l(d^m) Σ_{i,h} ∇(r(s, a) − E_{a'~π_k(·|s)} r(s, a'))`` evaluated at
    ``(s, a) = (s_h^i, a_h^i)``: it replaces ``∇̃(Q − V)`` by its ``t = 0`` term, dropping ``γ`` and all later
    steps, so no rollouts are needed. It coincides with eq. (14) when ``γ = 0``; for ``γ > 0`` the bias is
    measured in the tests. ``π_k`` is a constant (no gradient to the policy), as in the released code.

    Args:
        x: leader variable.
        reward_fn: ``x ↦ r(x)``.
        pi: follower policy ``π_k``.
        mdp: dynamics.
        loss: the upper loss.
        cfg: sample size and temperature.
        generator: the random stream.
    """
    tau = mdp.tau if cfg.temperature is None else cfg.temperature
    S, A, M = mdp.num_states, mdp.num_actions, cfg.num_tuples
    states, actions = sample_loss_tuples(pi, mdp, loss, M, generator)
    direct, values = _direct_term(x, reward_fn, loss, states, actions)
    weights = (values / (tau * M))[:, None, None].expand(states.shape)
    c = visit_table(states, actions, weights, S, A)
    implicit = reward_vjp(x, reward_fn, c - pi.detach() * c.sum(1, keepdim=True))
    return HypergradientEstimate(direct + implicit, direct, implicit)


def sobirl_practical_exact(
    x: torch.Tensor,
    reward_fn: RewardFn,
    pi: torch.Tensor,
    mdp: SoftMDP,
    loss: TrajectoryLoss,
    temperature: float | None = None,
) -> HypergradientEstimate:
    """Exact expectation of eq. (99) at ``π`` (trajectory enumeration); compare with :func:`sobirl_exact`."""
    tau = mdp.tau if temperature is None else temperature
    direct, c = _loss_weighted_visits(x, reward_fn, pi, mdp, loss)
    implicit = reward_vjp(x, reward_fn, (c - pi.detach() * c.sum(1, keepdim=True)) / tau)
    return HypergradientEstimate(direct + implicit, direct, implicit)
