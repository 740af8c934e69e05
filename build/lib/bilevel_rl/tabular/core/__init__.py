"""The core of the tabular lab: finite soft MDPs, exact answers and the one sampler.

Finite soft MDPs, exact solutions and hypergradients, the reward parameterisation and the one sampler every other
tabular module draws from:

* :mod:`.soft_mdp`: :class:`SoftMDP`, soft value iteration, exact soft policy iteration, exact policy evaluation and
  the exact hypergradient by implicit differentiation of the soft Bellman fixed point (SoBiRL eq. 8, Prop. 4.1).
* :mod:`.occupancy`: exact discounted visit measures (resolvents, occupancy) and trajectory enumeration.
* :mod:`.reward`: ``x ↦ r_x`` (table or linear features) and its vector–Jacobian products.
* :mod:`.sampling`: the sampler (:class:`CategoricalTable`, :class:`Simulator`, rollouts, tuples, vectorised
  environments), always with an explicit ``torch.Generator``.
"""

from bilevel_rl.tabular.core.occupancy import (
    advantage_resolvent,
    enumerate_trajectories,
    occupancy,
    state_action_resolvent,
    state_resolvent,
)
from bilevel_rl.tabular.core.reward import RewardFn, grad_or_zeros, linear_reward, reward_vjp
from bilevel_rl.tabular.core.sampling import (
    CategoricalTable,
    EnvBatch,
    EnvStep,
    RolloutConfig,
    Simulator,
    Trajectories,
    Visits,
    generator_from,
    gradient_return_visits,
    rollout,
    rollout_until,
    sample_geometric,
    sample_states,
    sample_trajectories,
    sample_tuples,
    visit_table,
)
from bilevel_rl.tabular.core.soft_mdp import (
    DTYPE,
    SoftMDP,
    SoftSolution,
    check_discount_and_temperature,
    exact_hypergradient,
    implicit_policy_vjp,
    policy_evaluation,
    random_mdp,
    soft_bellman,
    soft_value,
    soft_value_iteration,
    solve_soft,
    unrolled_hypergradient,
)

__all__ = [
    "DTYPE",
    "CategoricalTable",
    "EnvBatch",
    "EnvStep",
    "RewardFn",
    "RolloutConfig",
    "Simulator",
    "SoftMDP",
    "SoftSolution",
    "Trajectories",
    "Visits",
    "advantage_resolvent",
    "check_discount_and_temperature",
    "enumerate_trajectories",
    "exact_hypergradient",
    "generator_from",
    "grad_or_zeros",
    "gradient_return_visits",
    "implicit_policy_vjp",
    "linear_reward",
    "occupancy",
    "policy_evaluation",
    "random_mdp",
    "reward_vjp",
    "rollout",
    "rollout_until",
    "sample_geometric",
    "sample_states",
    "sample_trajectories",
    "sample_tuples",
    "soft_bellman",
    "soft_value",
    "soft_value_iteration",
    "solve_soft",
    "state_action_resolvent",
    "state_resolvent",
    "unrolled_hypergradient",
    "visit_table",
]
