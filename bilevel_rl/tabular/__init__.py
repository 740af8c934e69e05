"""The tabular lab: finite soft MDPs where exact hypergradients are known (ground truth for every estimator)."""

from bilevel_rl.tabular.soft_mdp import (
    SoftMDP,
    SoftSolution,
    exact_hypergradient,
    implicit_policy_vjp,
    policy_evaluation,
    random_mdp,
    soft_bellman,
    soft_value_iteration,
    solve_soft,
    unrolled_hypergradient,
)

__all__ = [
    "SoftMDP",
    "SoftSolution",
    "exact_hypergradient",
    "implicit_policy_vjp",
    "policy_evaluation",
    "random_mdp",
    "soft_bellman",
    "soft_value_iteration",
    "solve_soft",
    "unrolled_hypergradient",
]
