"""SoBiRL: the first-order hypergradient of Yang, Gao & Yuan (AISTATS 2025), practical (eq. 99) and eq. 14 forms.

The estimator (SoBiRL Prop. 5.2, eqs. (12)–(14), (99)) is :class:`~bilevel_rl.upper.score_term.ScoreTerm`; this
rule takes AdamW steps (App. J.2) on its surrogate over the preference buffer.

Choices where the paper is silent (each tested in tests/test_upper_sobirl.py):

* **Reward scale.** The follower trains on ``σ·r_φ`` (``RewardModel.relabel``, ``σ = reward_scale`` when the model
  normalises), so its soft optimum is ``π*`` of ``r_φ`` at temperature ``τ/σ``: the coefficient is ``σ/τ``, not
  ``1/τ`` (the authors' code clamps rewards instead of scaling them, so there ``σ = 1``).
* ``baseline=mean`` subtracts the leave-one-out minibatch mean of ``l`` (not in the paper; unbiased on-policy
  because each step's score has mean zero under ``π_k``). Default ``none`` = paper.
* ``hyper_term_on=fresh`` keeps the score term only for pairs queried at the current iteration (drawn by ``π_k``),
  zeroing the others in the minibatch mean (no action samples or rollouts are drawn for stale pairs; older pairs
  were drawn by older policies, for which the score term is off-policy). Default ``all`` = paper and code.
* ``objective=leader_reward`` (reward shaping): the upper loss of a trajectory is minus its leader return,
  ``l(d) = −Σ_h γ_L^h r̄(s_h, a_h)``, over whole recorded episodes (``segment_length=null``; an integer cuts them into
  segments of that many steps, as the preference pairs are cut), and eq. (99)'s truncated score gives

      ∇J ≈ (1/n) Σ_d (R(d) − b_d) Σ_{h∈d} (σ/τ) (∇r̃(s_h, a_h) − E_{a'~π} ∇r̃(s_h, a'))  −  (1/n) Σ_d Σ_h γ_L^h β ∇cost_h,

  REINFORCE on whole-trajectory returns. Its mean equals that of HPGD's ``κ = 0`` trajectory estimator (both keep
  the first step of ``∇ log π*``; bias measured in tests/test_shaping_exact.py); ``baseline=mean`` is the
  leave-one-out mean of the other segments' returns.
* The warm-up (iteration 0) is plain Bradley–Terry (``PreferenceRule``); after it the term is on at every step
  (paper). The authors' code gates it off for its first 1e5 SAC steps: ``hyper_term_after=<env steps>`` does the same
  (``c_k = 0`` up to that step count; refused with ``objective=leader_reward``, where the term is the whole
  estimator).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from typing_extensions import override

from bilevel_rl.data.segments import PreferencePairs
from bilevel_rl.objectives.leader_reward import LeaderBatch, follower_scale
from bilevel_rl.upper.base import LeaderStep
from bilevel_rl.upper.estimators import rule_temperature
from bilevel_rl.upper.preference_rule import Surrogate, positive
from bilevel_rl.upper.score_term import ScoreTermConfig, ScoreTermRule, surrogate_loss
from bilevel_rl.upper.shaping import direct_cost_loss, score_surrogate, segment_weights


@dataclass
class SoBiRLConfig(ScoreTermConfig):
    """Hyperparameters of SoBiRL: the leader optimiser and the score-term estimator (:class:`ScoreTermConfig`).

    Attributes:
        segment_length: ``objective=leader_reward``: steps per trajectory segment (``None``: whole episodes).
    """

    name: str = "sobirl"
    segment_length: int | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        positive(self, "segment_length")


class SoBiRL(ScoreTermRule):
    """Leader steps on the SoBiRL surrogate (eq. 99 or eq. 14) over the preference buffer."""

    name = "sobirl"
    objectives = ("preferences", "leader_reward")
    config: SoBiRLConfig

    @classmethod
    @override
    def objective_problem(cls, params: Any, objective: str) -> str | None:
        if objective == "leader_reward" and params is not None and params.estimator == "rollout":
            return "upper.estimator=rollout is for objective=preferences; use upper.estimator=truncated"
        if objective == "leader_reward" and getattr(params, "hyper_term_after", 0) > 0:
            return "upper.hyper_term_after is for objective=preferences (with leader_reward there is no other term)"
        return super().objective_problem(params, objective)

    @override
    def leader_loss(self, data: LeaderBatch, step: LeaderStep, prepared: Any) -> tuple[torch.Tensor, dict[str, float]]:
        """Minus the REINFORCE form of eq. (99) on segment returns (module docstring), plus the direct cost."""
        assert self.reward_model is not None and self.follower is not None
        model, c = self.reward_model, self.config
        seg, disc, returns = segment_weights(data, c.segment_length)
        n = len(returns)
        if n == 0:
            raise ValueError("upper=sobirl: the follower batch holds no episode start; increase trainer.steps_per_iter")
        centred = returns - (returns.sum() - returns) / (n - 1) if c.baseline == "mean" and n > 1 else returns
        tau = rule_temperature(self.follower, step.leader.config.follower_temperature, self.name)
        coef = c.hyper_weight * follower_scale(model, self.follower.reward_mix) / tau
        if c.max_coef is not None:
            coef = min(coef, c.max_coef)
        weights = np.where(seg >= 0, centred[np.maximum(seg, 0)], 0.0) * coef / n
        implicit = score_surrogate(model, self.follower, data, weights, 0.0, c.num_action_samples, step.generator)
        cost = direct_cost_loss(model, data, step.leader, disc) / n
        terms = {"upper/segments": float(n), "upper/segment_return": float(returns.mean()), "upper/coef": coef}
        return cost - implicit, terms

    @override
    def surrogate(self, pairs: PreferencePairs, step: LeaderStep, prepared: Any) -> Surrogate:
        assert self.reward_model is not None and self.follower is not None
        s = self.score.draw(pairs, step, self.follower, self.reward_model)
        loss, returns, terms = surrogate_loss(self.reward_model, s, self.config.baseline)
        if self.config.hyper_term_on == "fresh":
            terms["upper/fresh_fraction"] = float(s.hyper_mask.mean())
        return Surrogate(loss, returns, s.labels, terms)
