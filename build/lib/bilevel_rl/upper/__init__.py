"""Upper-level (leader) rules. Each rule is one file with one hyperparameter dataclass."""

from bilevel_rl.upper.base import RULES, LeaderStep, UpperRule, make_rule, make_rule_config, rule_classes

__all__ = ["RULES", "LeaderStep", "UpperRule", "make_rule", "make_rule_config", "rule_classes"]
