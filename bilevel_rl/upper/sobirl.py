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
* The warm-up (iteration 0) is plain Bradley–Terry (``PreferenceRule``), like the authors' code, which gates the
  term off for its first 1e5 SAC steps; after it the term is on at every step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from typing_extensions import override

from bilevel_rl.data.segments import PreferencePairs
from bilevel_rl.upper.base import LeaderStep
from bilevel_rl.upper.preference_rule import Surrogate
from bilevel_rl.upper.score_term import ScoreTermConfig, ScoreTermRule, surrogate_loss


@dataclass
class SoBiRLConfig(ScoreTermConfig):
    """Hyperparameters of SoBiRL: the leader optimiser and the score-term estimator (:class:`ScoreTermConfig`)."""

    name: str = "sobirl"


class SoBiRL(ScoreTermRule):
    """Leader steps on the SoBiRL surrogate (eq. 99 or eq. 14) over the preference buffer."""

    name = "sobirl"
    config: SoBiRLConfig

    @override
    def surrogate(self, pairs: PreferencePairs, step: LeaderStep, prepared: Any) -> Surrogate:
        assert self.reward_model is not None and self.follower is not None
        s = self.score.draw(pairs, step, self.follower, self.reward_model)
        loss, returns, terms = surrogate_loss(self.reward_model, s, self.config.baseline)
        if self.config.hyper_term_on == "fresh":
            terms["upper/fresh_fraction"] = float(s.hyper_mask.mean())
        return Surrogate(loss, returns, s.labels, terms)
