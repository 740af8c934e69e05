"""Adapters from the tabular core to the deep seams, so the trainer and every leader rule run on tabular problems.

* :mod:`.followers`: tabular followers behind :class:`bilevel_rl.followers.base.Follower` (exact soft-VI oracle,
  soft Q-learning, policy mirror descent, soft policy gradient), with their declared capabilities.
* :mod:`.reward_model`: the table / linear-feature reward model behind
  :class:`bilevel_rl.reward_models.base.RewardModel`.
* :mod:`.rule_lab`: a small RLHF problem with the exact hypergradient, on which the deep rules are checked.
"""

from bilevel_rl.tabular.lab.followers import (
    TABULAR_CAPABILITIES,
    PolicyMirrorDescent,
    SoftPolicyGradient,
    SoftQLearning,
    SoftVIOracle,
    TabularEnvConfig,
    TabularFollower,
)
from bilevel_rl.tabular.lab.reward_model import TabularRewardModel, one_hot_space
from bilevel_rl.tabular.lab.rule_lab import RuleLab, make_rule_lab

__all__ = [
    "TABULAR_CAPABILITIES",
    "PolicyMirrorDescent",
    "RuleLab",
    "SoftPolicyGradient",
    "SoftQLearning",
    "SoftVIOracle",
    "TabularEnvConfig",
    "TabularFollower",
    "TabularRewardModel",
    "make_rule_lab",
    "one_hot_space",
]
