"""Upper-level (leader) rules. Each rule is one file with one hyperparameter dataclass."""

from bilevel_rl.upper.base import UpperRule, bradley_terry_loss, make_rule, preference_accuracy

__all__ = ["UpperRule", "bradley_terry_loss", "make_rule", "preference_accuracy"]
