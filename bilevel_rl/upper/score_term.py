"""SoBiRL's score term: the hypergradient estimator shared by SoBiRL and Stoc-SoBiRL (a component both rules have).

Hyper-objective ``φ(x) = E_{d_1, d_2 ~ π*(x)}[l(d_1, d_2; x)]`` with ``l`` the Bradley–Terry loss (SoBiRL eq. (11)).
SoBiRL Prop. 5.2, using ``∇ log π*_{sa} = τ^{-1} ∇(Q*_{sa} − V*_s)``::

    ∇φ(x) = E[∇l(d; x)] + τ^{-1} E[l(d; x) Σ_{i,h} ∇(Q*_{s_h^i a_h^i} − V*_{s_h^i})(x)]                (12)+(13)

``estimator=truncated`` — the practical estimator, eq. (99), at the follower's policy ``π_k``::

    ∇_pφ = mean_m ∇l_m + τ_k^{-1} mean_m l_m Σ_{i,h} mask·∇(r(s_h^i, a_h^i) − E_{a'~π_k(·|s_h^i)} r(s_h^i, a'))

with ``τ_k`` the follower's temperature read at every leader step (SAC's live α). The expectation over ``a'`` is
exact for discrete actions and a mean over ``num_action_samples`` policy samples for Box actions, drawn with the
leader's generator (``LeaderStep.generator``).

``estimator=rollout`` — the untruncated eq. (14) / Alg. 3: ``∇(Q − V)`` is replaced by ``Ĝ^Q_{sa} − Ĝ^V_s``,
``Ĝ^Q_{sa} = J^{-1} Σ_j Σ_{t<T} γ^t ∇r(s_t^j, a_t^j)`` along ``J`` generative-model rollouts of length ``T`` from
``(s, a)`` (``Ĝ^V``: from ``s`` with ``a_0 ~ π_k``). Its bias is ``O(γ^T)`` (Lemma I.1); only followers with a
generative model (Capability.GENERATIVE_MODEL: the tabular ones) support it.

Both are the gradient of one surrogate (every term is linear in ``∇r``)::

    L(φ) = mean_m [ l_m(φ) + c_k · sg(l_m − b_m) · Σ_n w_n r_φ(o_n, a_n) ],    c_k = hyper_weight · min(σ/τ_k, max_coef)

where the weighted evaluations ``(o_n, a_n, w_n)`` owned by pair ``m`` give its score sum (weight ``+1`` at the
visited pair, ``−π(a'|s)`` / ``−1/K`` / ``∓γ^t/J`` for the expectation and the rollouts) and ``sg`` stops gradients.
The choices where the paper is silent are listed in :mod:`bilevel_rl.upper.sobirl`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from typing_extensions import override

from bilevel_rl.capabilities import Capability, Requirements
from bilevel_rl.data.segments import PreferencePairs
from bilevel_rl.followers.base import Follower
from bilevel_rl.objectives.preferences import bradley_terry_loss
from bilevel_rl.reward_models.base import RewardModel
from bilevel_rl.upper.base import LeaderStep, configured_temperature
from bilevel_rl.upper.estimators import (
    live_temperature,
    pair_tensors,
    reward_scale,
    rule_discount,
    rule_temperature,
    sample_actions,
)
from bilevel_rl.upper.preference_rule import LeaderOptimConfig, PreferenceRule

RewardFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""``(obs (N, *obs), actions (N, *act)) ↦ r (N,)``: the reward model, or a functional call at other parameters."""


@dataclass
class ScoreTermConfig(LeaderOptimConfig):
    """Settings of the SoBiRL score-term estimator (leader optimiser: SoBiRL J.2, AdamW 3e-4, wd 1e-2, batch 32).

    Attributes:
        estimator: ``truncated`` (eq. 99, practical) or ``rollout`` (eq. 14 / Alg. 3, needs a generative model).
        num_action_samples: ``K`` policy samples for ``E_{a'~π}[r(s, a')]`` with Box actions (exact if discrete).
        rollout_horizon: ``T``, rollout length of ``estimator=rollout`` (bias ``O(γ^T)``, Lemma I.1).
        rollout_samples: ``J``, rollouts per visited ``(s, a)`` for each of ``Ĝ^Q`` and ``Ĝ^V``.
        gamma: discount of the rollouts; ``None``: the follower's own.
        baseline: ``none`` (paper) or ``mean`` (leave-one-out minibatch mean of ``l`` in the score term).
        max_coef: optional upper clip of ``σ/τ_k`` (small SAC α inflates the term; docs/theory/sobirl_estimators.md §2).
        hyper_weight: multiplier of the score term (1 = paper, 0 = DRLHF).
        hyper_term_on: ``all`` pairs (paper) or only ``fresh`` ones, queried at the current iteration.
        hyper_term_after: ``c_k = 0`` while the follower has taken at most this many env steps. Not in the paper
            (eq. 99 has no gate); the SoBiRL authors' code sets the coefficient to 0 until 1e5 SAC steps of their
            Table 2 runs (``RLHF.py``). ``0`` (default): the paper's estimator, the term is on from the start.
    """

    estimator: Literal["truncated", "rollout"] = "truncated"
    num_action_samples: int = 10
    rollout_horizon: int = 20
    rollout_samples: int = 1
    gamma: float | None = None
    baseline: Literal["none", "mean"] = "none"
    max_coef: float | None = None
    hyper_weight: float = 1.0
    hyper_term_on: Literal["all", "fresh"] = "all"
    hyper_term_after: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        for key in ("num_action_samples", "rollout_horizon", "rollout_samples"):
            if int(getattr(self, key)) < 1 or int(getattr(self, key)) != getattr(self, key):
                raise ValueError(f"upper.{key} must be an integer >= 1, got {getattr(self, key)}")
        if self.gamma is not None and not 0.0 <= self.gamma < 1.0:
            raise ValueError(f"upper.gamma must be in [0, 1) or null, got {self.gamma}")
        if self.max_coef is not None and not self.max_coef > 0:
            raise ValueError(f"upper.max_coef must be > 0 or null, got {self.max_coef}")
        if not (self.hyper_weight >= 0 and math.isfinite(self.hyper_weight)):
            raise ValueError(f"upper.hyper_weight must be finite and >= 0, got {self.hyper_weight}")
        if int(self.hyper_term_after) != self.hyper_term_after or self.hyper_term_after < 0:
            raise ValueError(f"upper.hyper_term_after must be an integer >= 0, got {self.hyper_term_after}")


@dataclass
class HyperSamples:
    """Everything random in one minibatch estimate, so it can be re-evaluated at other parameters (Stoc-SoBiRL).

    Attributes:
        obs: ``(B, 2, H, *obs)`` pair observations; ``actions``, ``mask`` alike; ``labels`` ``(B,)``.
        score_obs: ``(N, *obs)`` observations of the weighted reward evaluations forming the score sums.
        score_actions: ``(N, *act)`` their actions.
        score_weights: ``(N,)`` weights (``+1``, ``−π(a'|s)``, ``−1/K`` or ``±γ^t/J``).
        owner: ``(N,)`` index of the pair each evaluation belongs to.
        hyper_mask: ``(B,)`` 1 for pairs whose score term is used.
        coef: ``c_k``, the multiplier of the score term.
        temperature: ``τ_k``.
    """

    obs: torch.Tensor
    actions: torch.Tensor
    mask: torch.Tensor
    labels: torch.Tensor
    score_obs: torch.Tensor
    score_actions: torch.Tensor
    score_weights: torch.Tensor
    owner: torch.Tensor
    hyper_mask: torch.Tensor
    coef: float
    temperature: float


def surrogate_loss(reward_fn: RewardFn, s: HyperSamples, baseline: str) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """The surrogate ``L`` of the module docstring on fixed samples: ``(loss, returns (B, 2), terms)``."""
    B = s.labels.shape[0]
    lead = s.mask.dim()
    r = reward_fn(s.obs.reshape(-1, *s.obs.shape[lead:]), s.actions.reshape(-1, *s.actions.shape[lead:]))
    returns = (r.reshape(s.mask.shape) * s.mask).sum(-1)
    bce = bradley_terry_loss(returns, s.labels)
    score = torch.zeros(B, dtype=r.dtype, device=r.device)
    if len(s.owner):
        rs = reward_fn(s.score_obs, s.score_actions)
        score = score.index_add(0, s.owner, s.score_weights.to(rs) * rs)
    weight = bce.detach()
    if baseline == "mean" and B > 1:
        weight = weight - (weight.sum() - weight) / (B - 1)
    hyper = (weight * s.hyper_mask.to(weight) * score).mean()
    bt = bce.mean()
    terms = {
        "upper/bt_loss": float(bt.detach()),
        "upper/hyper_term": float(hyper.detach()),
        "upper/temperature": s.temperature,
        "upper/hyper_coef": s.coef,
    }
    return bt + s.coef * hyper, returns, terms


class ScoreTerm:
    """Draws the score-term samples of one minibatch and scales them (a component of the SoBiRL rules).

    Args:
        config: the estimator settings.
    """

    def __init__(self, config: ScoreTermConfig) -> None:
        self.config = config
        self.gamma = 0.0

    @staticmethod
    def requirements(config: ScoreTermConfig | None) -> Requirements:
        """Temperature and action distribution always; a generative model (and a discount) for ``rollout``."""
        req: dict[Capability, str] = {
            Capability.TEMPERATURE: "the score term is scaled by 1/tau",
            Capability.ACTION_DIST: "E_{a'~pi}[r(s, a')] needs the policy",
        }
        if config is not None and config.estimator == "rollout":
            req[Capability.GENERATIVE_MODEL] = "upper.estimator=rollout; use upper.estimator=truncated"
            if config.gamma is None:
                req[Capability.GAMMA] = "upper.estimator=rollout with upper.gamma=null; set upper.gamma"
        return req

    def attach(self, follower: Follower, rule: str, temperature: float | None = None) -> None:
        """Check the live temperature and fix the rollout discount."""
        rule_temperature(follower, temperature, rule)
        if self.config.estimator == "rollout":
            self.gamma = rule_discount(follower, self.config.gamma)

    def coefficient(self, follower: Follower, model: RewardModel) -> tuple[float, float]:
        """``(τ_k, c_k)`` read now (SAC's α changes while the follower learns).

        The follower trains on ``σ·r_φ`` (``RewardModel.relabel``, ``σ = reward_scale``), so its soft optimum is
        ``π*`` of ``r_φ`` at temperature ``τ/σ``: the coefficient is ``σ/τ``. It is 0 while the follower has
        taken at most ``hyper_term_after`` env steps (the samples are drawn all the same, so the gate leaves every
        random stream where it would be without it).
        """
        tau = live_temperature(follower, self.config.name)
        c = reward_scale(model) / tau
        if self.config.max_coef is not None:
            c = min(c, self.config.max_coef)
        if follower.num_timesteps <= self.config.hyper_term_after and self.config.hyper_term_after > 0:
            return tau, 0.0
        return tau, self.config.hyper_weight * c

    def draw(self, pairs: PreferencePairs, step: LeaderStep, follower: Follower, model: RewardModel) -> HyperSamples:
        """Draw the estimator's samples for a minibatch (action samples or rollouts) at the current ``π_k``."""
        c = self.config
        obs, actions, mask = pair_tensors(model, pairs)
        dev = model.device
        fresh = pairs.iteration == step.iteration if c.hyper_term_on == "fresh" else np.ones(len(pairs), bool)
        hyper_mask = torch.as_tensor(fresh, device=dev, dtype=torch.float32)
        valid = (mask > 0) & (hyper_mask > 0).reshape(-1, *([1] * (mask.dim() - 1)))  # no samples for stale pairs
        owner = torch.nonzero(valid)[:, 0]
        o, a = obs[valid], actions[valid]  # visited (s_h^i, a_h^i)
        parts: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]] = []
        if len(o) == 0:  # no fresh pair in this minibatch
            parts.append((o, a, torch.zeros(0, device=dev, dtype=torch.float64), owner))
        elif c.estimator == "truncated":
            parts.append((o, a, torch.ones(len(o), device=dev, dtype=torch.float64), owner))
            with torch.no_grad():
                dist = follower.action_dist(o)
                if isinstance(dist, torch.distributions.Categorical):
                    probs = dist.probs.to(dev)
                    n, num_actions = probs.shape
                    all_actions = torch.arange(num_actions, device=dev).repeat(n).to(a.dtype)
                    rep = o.repeat_interleave(num_actions, dim=0)
                    parts.append((rep, all_actions, -probs.reshape(-1), owner.repeat_interleave(num_actions)))
                else:
                    k = c.num_action_samples
                    samples = sample_actions(dist, k, step.generator).to(device=dev, dtype=a.dtype)  # (K, N, *act)
                    rep = o.unsqueeze(0).expand(k, *o.shape).reshape(-1, *o.shape[1:])
                    weights = torch.full((k * len(o),), -1.0 / k, device=dev, dtype=torch.float64)
                    parts.append((rep, samples.reshape(-1, *a.shape[1:]), weights, owner.repeat(k)))
        else:
            J, T, gamma = c.rollout_samples, c.rollout_horizon, self.gamma
            starts = o.repeat_interleave(J, dim=0).cpu().numpy()
            own = owner.repeat_interleave(J).repeat_interleave(T)
            disc = torch.as_tensor(gamma ** np.arange(T), device=dev, dtype=torch.float64)
            for first, sign in ((a.repeat_interleave(J, dim=0).cpu().numpy(), 1.0), (None, -1.0)):
                ro = follower.rollouts_from(starts, first, T, step.rng)
                w = sign * disc * torch.as_tensor(ro.mask, device=dev) / J
                r_obs = torch.as_tensor(ro.obs, device=dev).to(o.dtype).reshape(-1, *o.shape[1:])
                r_act = torch.as_tensor(ro.actions, device=dev).to(a.dtype).reshape(-1, *a.shape[1:])
                keep = w.reshape(-1) != 0
                parts.append((r_obs[keep], r_act[keep], w.reshape(-1)[keep], own[keep]))
        tau, coef = self.coefficient(follower, model)
        return HyperSamples(
            obs=obs,
            actions=actions,
            mask=mask,
            labels=torch.as_tensor(pairs.labels, device=dev),
            score_obs=torch.cat([p[0] for p in parts]),
            score_actions=torch.cat([p[1] for p in parts]),
            score_weights=torch.cat([p[2].double() for p in parts]),
            owner=torch.cat([p[3] for p in parts]),
            hyper_mask=hyper_mask,
            coef=coef,
            temperature=tau,
        )


class ScoreTermRule(PreferenceRule):
    """A preference rule that *has* a :class:`ScoreTerm` (SoBiRL, Stoc-SoBiRL): its requirements and attach."""

    config: ScoreTermConfig

    def __init__(self, config: ScoreTermConfig) -> None:
        super().__init__()
        self.config = config
        self.score = ScoreTerm(config)

    @classmethod
    @override
    def requirements(cls, params: Any) -> Requirements:
        return ScoreTerm.requirements(params)

    @override
    def attach(self, follower: Follower, reward_model: RewardModel, data: Any = None) -> None:
        super().attach(follower, reward_model, data)
        self.score.attach(follower, self.name, configured_temperature(data))
