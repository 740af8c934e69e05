"""DRLHF: reward learning from preferences (Christiano et al. 2017), the papers' baseline.

The leader minimises the Bradley–Terry cross-entropy over the preference buffer ``D``:

    φ ← φ − β ∇_φ (1/|B|) Σ_{(d0,d1,y)∈B} l_h(d0, d1, y; φ),
    l_h = −y log σ(R_φ(d0) − R_φ(d1)) − (1−y) log σ(R_φ(d1) − R_φ(d0)),   R_φ(d) = Σ_h r_φ(s_h, a_h)

(SoBiRL eq. 101 and §3.3; PBRL eq. 2.5). This is SoBiRL's practical update (eq. 99) with the hyper-gradient
term removed. One "epoch" is a full shuffled pass over the buffer in minibatches, optimised with AdamW
(SoBiRL J.2: lr 3e-4, weight decay 1e-2, batch 32).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from typing_extensions import override

from bilevel_rl.data.segments import PreferencePairs
from bilevel_rl.upper.base import LeaderStep
from bilevel_rl.upper.preference_rule import LeaderOptimConfig, PreferenceRule, Surrogate


@dataclass
class DRLHFConfig(LeaderOptimConfig):
    """Hyperparameters of DRLHF (defaults: SoBiRL App. J.2); see :class:`LeaderOptimConfig`."""

    name: str = "drlhf"


class DRLHF(PreferenceRule):
    """Bradley–Terry preference learning."""

    name = "drlhf"

    def __init__(self, config: DRLHFConfig) -> None:
        super().__init__()
        self.config = config

    @override
    def surrogate(self, pairs: PreferencePairs, step: LeaderStep, prepared: Any) -> Surrogate:
        return self.bt_surrogate(pairs)
