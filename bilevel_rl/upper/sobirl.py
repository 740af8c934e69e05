"""SoBiRL: the first-order hypergradient of Yang, Gao & Yuan (AISTATS 2025), practical (eq. 99) and eq. 14 forms.

Hyper-objective ``φ(x) = E_{d_1, d_2 ~ π*(x)}[l(d_1, d_2; x)]`` with ``l`` the Bradley–Terry BCE (eq. 11, L117,
eq. 101). Prop. 5.2 (L193–195), using ``∇ log π*_{sa} = τ^{-1} ∇(Q*_{sa} − V*_s)``::

    ∇φ(x) = E[∇l(d; x)] + τ^{-1} E[l(d; x) Σ_{i,h} ∇(Q*_{s_h^i a_h^i} − V*_{s_h^i})(x)]                (12)+(13)

``estimator=truncated`` — the practical estimator, eq. (99) (L1884–1886), at the follower's policy ``π_k``::

    ∇_pφ = mean_m ∇l_m + τ_k^{-1} mean_m l_m Σ_{i,h} mask·∇(r(s_h^i, a_h^i) − E_{a'~π_k(·|s_h^i)} r(s_h^i, a'))

with ``τ_k`` the follower's temperature read at every leader step (SAC's live α, L1884). The expectation over
``a'`` is exact for discrete actions and a mean over ``num_action_samples`` policy samples for Box actions.

``estimator=rollout`` — the untruncated eq. (14) / Alg. 3 (L201–207, L1599–1621): ``∇(Q − V)`` is replaced by
``Ĝ^Q_{sa} − Ĝ^V_s``, ``Ĝ^Q_{sa} = J^{-1} Σ_j Σ_{t<T} γ^t ∇r(s_t^j, a_t^j)`` along ``J`` generative-model rollouts
of length ``T`` from ``(s, a)`` (``Ĝ^V``: from ``s`` with ``a_0 ~ π_k``). Its bias is ``O(γ^T)`` (Lemma I.1); only
followers with a generative model (``Follower.rollouts_from``: the tabular ones) support it.

Both are the gradient of one surrogate (digest §2.3, "implementation identity"; SoBiRL code, digest §4.6)::

    L(φ) = mean_m [ l_m(φ) + c_k · sg(l_m − b_m) · Σ_n w_n r_φ(o_n, a_n) ],    c_k = hyper_weight · min(σ/τ_k, max_coef)

where the weighted evaluations ``(o_n, a_n, w_n)`` owned by pair ``m`` give its score sum (weight ``+1`` at the
visited pair, ``−π(a'|s)`` / ``−1/K`` / ``∓γ^t/J`` for the expectation and the rollouts) and ``sg`` stops gradients.

Choices where the paper is silent (each tested in tests/test_upper_sobirl.py):

* **Reward scale.** The follower trains on ``σ·r_φ`` (``RewardModel.relabel``, ``σ = reward_scale`` when the model
  normalises), so its soft optimum is ``π*`` of ``r_φ`` at temperature ``τ/σ``: the coefficient is ``σ/τ``, not
  ``1/τ`` (the SoBiRL code clamps instead of scaling, so there ``σ = 1``).
* ``baseline=mean`` subtracts the leave-one-out minibatch mean of ``l`` (not in the paper; unbiased on-policy
  because each step's score has mean zero under ``π_k``, digest pitfall 2). Default ``none`` = paper.
* ``hyper_term_on=fresh`` keeps the score term only for pairs queried at the current iteration (drawn by ``π_k``),
  zeroing the others in the minibatch mean (so a fresh pair's weight equals its weight under ``all``; no action
  samples or rollouts are drawn for stale pairs; digest pitfall 6). Default ``all`` = paper and code.
* The warm-up (iteration 0) is plain Bradley–Terry (``PreferenceRule``), like the code's gate of the first 1e5
  SAC steps (RLHF.py L406–410); after it the term is on at every step.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from typing_extensions import override

from bilevel_rl.data.segments import PreferencePairs
from bilevel_rl.followers.base import Follower
from bilevel_rl.reward_models.base import RewardModel
from bilevel_rl.upper.base import SB3_FOLLOWERS, bradley_terry_loss
from bilevel_rl.upper.common import LeaderOptimConfig, PreferenceRule, Surrogate, pair_tensors

RewardFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""``(obs (N, *obs), actions (N, *act)) ↦ r (N,)``: the reward model, or a functional call at other parameters."""


@dataclass
class SoBiRLConfig(LeaderOptimConfig):
    """Hyperparameters of SoBiRL (leader optimiser: SoBiRL J.2, AdamW 3e-4, wd 1e-2, batch 32).

    Attributes:
        estimator: ``truncated`` (eq. 99, practical) or ``rollout`` (eq. 14 / Alg. 3, needs a generative model).
        num_action_samples: ``K`` policy samples for ``E_{a'~π}[r(s, a')]`` with Box actions (exact if discrete).
        rollout_horizon: ``T``, rollout length of ``estimator=rollout`` (bias ``O(γ^T)``, Lemma I.1).
        rollout_samples: ``J``, rollouts per visited ``(s, a)`` for each of ``Ĝ^Q`` and ``Ĝ^V``.
        gamma: discount of the rollouts; ``None``: the follower's own.
        baseline: ``none`` (paper) or ``mean`` (leave-one-out minibatch mean of ``l`` in the score term).
        max_coef: optional upper clip of ``σ/τ_k`` (small SAC α inflates the term, digest pitfall 1).
        hyper_weight: multiplier of the score term (1 = paper, 0 = DRLHF).
        hyper_term_on: ``all`` pairs (paper) or only ``fresh`` ones, queried at the current iteration.
    """

    estimator: str = "truncated"
    num_action_samples: int = 10
    rollout_horizon: int = 20
    rollout_samples: int = 1
    gamma: float | None = None
    baseline: str = "none"
    max_coef: float | None = None
    hyper_weight: float = 1.0
    hyper_term_on: str = "all"

    def __post_init__(self) -> None:
        super().__post_init__()
        choices = {
            "estimator": ("truncated", "rollout"),
            "baseline": ("none", "mean"),
            "hyper_term_on": ("all", "fresh"),
        }
        for key, allowed in choices.items():
            if getattr(self, key) not in allowed:
                raise ValueError(f"upper.{key} must be one of {', '.join(allowed)}, got {getattr(self, key)!r}")
        for key in ("num_action_samples", "rollout_horizon", "rollout_samples"):
            if int(getattr(self, key)) < 1 or int(getattr(self, key)) != getattr(self, key):
                raise ValueError(f"upper.{key} must be an integer >= 1, got {getattr(self, key)}")
        if self.gamma is not None and not 0.0 <= self.gamma < 1.0:
            raise ValueError(f"upper.gamma must be in [0, 1) or null, got {self.gamma}")
        if self.max_coef is not None and not self.max_coef > 0:
            raise ValueError(f"upper.max_coef must be > 0 or null, got {self.max_coef}")
        if not (self.hyper_weight >= 0 and math.isfinite(self.hyper_weight)):
            raise ValueError(f"upper.hyper_weight must be finite and >= 0, got {self.hyper_weight}")


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


def follower_gamma(follower: Follower) -> float | None:
    """The follower's discount if it exposes one (tabular ``mdp.gamma``, SB3 ``model.gamma``), else ``None``."""
    for holder in (getattr(follower, "mdp", None), getattr(follower, "model", None)):
        gamma = getattr(holder, "gamma", None)
        if isinstance(gamma, int | float):
            return float(gamma)
    return None


class SoBiRL(PreferenceRule):
    """Leader steps on the SoBiRL surrogate (eq. 99 or eq. 14) over the preference buffer."""

    name = "sobirl"
    needs_temperature = True
    config: SoBiRLConfig

    def __init__(self, config: SoBiRLConfig) -> None:
        super().__init__()
        self.config = config
        self.gamma = config.gamma

    @classmethod
    def check_follower(cls, follower_name: str, params: dict[str, Any]) -> str | None:
        """SB3 followers have no generative model, so they cannot run ``estimator=rollout``."""
        if params.get("estimator") == "rollout" and follower_name in SB3_FOLLOWERS:
            return (
                "upper.estimator=rollout needs a generative model (reset to an arbitrary state), which SB3 "
                "followers lack; use upper.estimator=truncated"
            )
        return None

    @override
    def attach(self, follower: Follower, reward_model: RewardModel) -> None:
        tau = follower.temperature
        if not (tau > 0 and math.isfinite(tau)):
            raise ValueError(
                f"upper={self.name} needs a follower temperature > 0 (SAC alpha, PPO/A2C "
                f"follower.algo_kwargs.ent_coef, tabular tau): the score term is scaled by 1/tau; got {tau}"
            )
        if self.config.estimator == "rollout":
            if type(follower).rollouts_from is Follower.rollouts_from:
                raise ValueError(
                    f"upper.estimator=rollout: {type(follower).__name__} has no generative model "
                    "(rollouts_from); use upper.estimator=truncated"
                )
            if self.gamma is None:
                self.gamma = follower_gamma(follower)
                if self.gamma is None:
                    raise ValueError("upper.gamma: the follower exposes no discount; set upper.gamma")
        super().attach(follower, reward_model)

    def hyper_coef(self) -> tuple[float, float]:
        """``(τ_k, c_k)`` read now (SAC's α changes while the follower learns)."""
        assert self.follower is not None and self.reward_model is not None
        tau = float(self.follower.temperature)
        if not (tau > 0 and math.isfinite(tau)):
            raise ValueError(f"upper={self.name}: follower temperature must stay > 0, got {tau}")
        m = self.reward_model
        scale = float(m.reward_scale) if m.normalize else 1.0
        c = scale / tau
        if self.config.max_coef is not None:
            c = min(c, self.config.max_coef)
        return tau, self.config.hyper_weight * c

    def draw(self, pairs: PreferencePairs) -> HyperSamples:
        """Draw the estimator's samples for a minibatch (action samples or rollouts) at the current ``π_k``."""
        assert self.follower is not None and self.reward_model is not None
        c, model = self.config, self.reward_model
        obs, actions, mask = pair_tensors(model, pairs)
        dev = model.device
        fresh = pairs.iteration == self.iteration if c.hyper_term_on == "fresh" else np.ones(len(pairs), bool)
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
                dist = self.follower.action_dist(o)
                if isinstance(dist, torch.distributions.Categorical):
                    probs = dist.probs.to(dev)
                    n, num_actions = probs.shape
                    all_actions = torch.arange(num_actions, device=dev).repeat(n).to(a.dtype)
                    rep = o.repeat_interleave(num_actions, dim=0)
                    parts.append((rep, all_actions, -probs.reshape(-1), owner.repeat_interleave(num_actions)))
                else:
                    k = c.num_action_samples
                    samples = dist.sample((k,)).to(device=dev, dtype=a.dtype)  # (K, N, *act)
                    rep = o.unsqueeze(0).expand(k, *o.shape).reshape(-1, *o.shape[1:])
                    weights = torch.full((k * len(o),), -1.0 / k, device=dev, dtype=torch.float64)
                    parts.append((rep, samples.reshape(-1, *a.shape[1:]), weights, owner.repeat(k)))
        else:
            J, T, gamma = c.rollout_samples, c.rollout_horizon, float(self.gamma or 0.0)
            starts = o.repeat_interleave(J, dim=0).cpu().numpy()
            own = owner.repeat_interleave(J).repeat_interleave(T)
            disc = torch.as_tensor(gamma ** np.arange(T), device=dev, dtype=torch.float64)
            for first, sign in ((a.repeat_interleave(J, dim=0).cpu().numpy(), 1.0), (None, -1.0)):
                ro = self.follower.rollouts_from(starts, first, T, self.rng)
                w = sign * disc * torch.as_tensor(ro.mask, device=dev) / J
                r_obs = torch.as_tensor(ro.obs, device=dev).to(o.dtype).reshape(-1, *o.shape[1:])
                r_act = torch.as_tensor(ro.actions, device=dev).to(a.dtype).reshape(-1, *a.shape[1:])
                keep = w.reshape(-1) != 0
                parts.append((r_obs[keep], r_act[keep], w.reshape(-1)[keep], own[keep]))
        tau, coef = self.hyper_coef()
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

    @override
    def surrogate(self, pairs: PreferencePairs) -> Surrogate:
        assert self.reward_model is not None
        s = self.draw(pairs)
        loss, returns, terms = surrogate_loss(self.reward_model, s, self.config.baseline)
        if self.config.hyper_term_on == "fresh":
            terms["upper/fresh_fraction"] = float(s.hyper_mask.mean())
        return Surrogate(loss, returns, s.labels, terms)
