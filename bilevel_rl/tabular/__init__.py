"""The tabular lab: finite soft MDPs where exact hypergradients are known (ground truth for every estimator).

Organised by role:

* :mod:`bilevel_rl.tabular.core`: finite soft MDPs, soft value iteration, exact solutions and hypergradients by
  implicit differentiation, the reward parameterisation and the one sampler (explicit ``torch.Generator``).
* :mod:`bilevel_rl.tabular.lab`: the adapters to the deep seams (tabular followers, reward model, ``RuleLab``).
* :mod:`bilevel_rl.tabular.checks`: the stochastic estimators of the leader rules, each with its exact target.
* :mod:`bilevel_rl.tabular.repro`: paper reproductions (M-SoBiRL / Stoc-SoBiRL, HPGD Four-Rooms with AMD and
  Zero-Order, PBRL on Stackelberg games, the Hessian-free sign).

This package re-exports the core's main entry points.
"""

from bilevel_rl.tabular.core import (
    CategoricalTable,
    Simulator,
    SoftMDP,
    SoftSolution,
    exact_hypergradient,
    implicit_policy_vjp,
    policy_evaluation,
    random_mdp,
    rollout,
    soft_bellman,
    soft_value_iteration,
    solve_soft,
    unrolled_hypergradient,
)

__all__ = [
    "CategoricalTable",
    "Simulator",
    "SoftMDP",
    "SoftSolution",
    "exact_hypergradient",
    "implicit_policy_vjp",
    "policy_evaluation",
    "random_mdp",
    "rollout",
    "soft_bellman",
    "soft_value_iteration",
    "solve_soft",
    "unrolled_hypergradient",
]
