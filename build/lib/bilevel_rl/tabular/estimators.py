"""Stochastic hypergradient / penalty-gradient estimators on finite soft MDPs, each with its exact target.

Every estimator samples trajectories with an explicit ``torch.Generator`` and is tested in
``tests/test_tabular_estimators*.py`` against the exact quantity it estimates (estimator → exact target; bias):

* SoBiRL eq. 14 / Alg. 3, :func:`sobirl_estimate` → :func:`sobirl_exact` (the plug-in ``∇̃φ(x, π)``; at ``π*`` the
  exact ``∇φ`` of Prop. 5.2 = ``exact_hypergradient``); unbiased with geometric truncation, ``O(γ^T)`` otherwise.
* SoBiRL eq. 99, :func:`sobirl_practical_estimate` → :func:`sobirl_practical_exact`; the depth-1 truncation is a
  *biased* estimator of ``∇φ`` (exact at ``γ = 0``; its bias is measured in the tests).
* HPGD Alg. 5 (Prop. 1), :func:`hpgd_decomposable_estimate` → :func:`hpgd_decomposable_exact` = ``∇F``; unbiased.
* HPGD Alg. 1 + 2 (Thm. 1), :func:`hpgd_estimate` → ``∇F`` for any ``f(x, π)``; unbiased.
* HPGD critic/VJP form (digest §5.3), :func:`hpgd_critic_vjp_estimate` → ``∇F``; unbiased up to ``O(Lγ^L)``
  with the exact leader advantage.
* PBRL value / Bellman penalty, :func:`value_penalty_grad_estimate` / :func:`bellman_penalty_grad_estimate` →
  :func:`value_penalty_grad_exact` / :func:`bellman_penalty_grad_exact` (``= ∇_x p`` at ``π̂ = π*``); unbiased with
  geometric truncation.
* Hessian-free penalty method, :func:`hessian_free_grad_estimate` → :func:`hessian_free_grad_exact` ``= ∇Φ_σ``
  (sign of Alg. 1 l. 15 corrected); unbiased for ``∇Φ_σ``, ``O(σ)``-biased for ``∇φ``.
* PPA-BRL implicit term with the corrected Hessian, :func:`ppa_implicit_estimate` → :func:`ppa_implicit_gradient`
  of :func:`ppa_exact_terms` (projected solve = the exact hypergradient; damped solve = a damped target);
  consistent (plug-in of a matrix inverse), not unbiased.

Implementations live in ``estimators_sampling`` (samplers, occupancy measures, enumeration), ``estimators_sobirl``,
``estimators_hpgd``, ``estimators_penalty`` and ``estimators_ppa``; this module re-exports the public API.
"""

from bilevel_rl.tabular.estimators_hpgd import (
    CriticVJPConfig,
    HPGDConfig,
    advantage_gradient_visits,
    decomposable_objective,
    hpgd_critic_vjp_estimate,
    hpgd_decomposable_estimate,
    hpgd_decomposable_exact,
    hpgd_estimate,
    leader_values,
)
from bilevel_rl.tabular.estimators_penalty import (
    HessianFreeConfig,
    PenalisedFollowerConfig,
    PenaltyConfig,
    bellman_penalty,
    bellman_penalty_grad_estimate,
    bellman_penalty_grad_exact,
    discounted_reward_gradient_table,
    follower_value,
    hessian_free_grad_estimate,
    hessian_free_grad_exact,
    hessian_free_proxy,
    penalised_follower,
    value_penalty,
    value_penalty_grad_estimate,
    value_penalty_grad_exact,
)
from bilevel_rl.tabular.estimators_ppa import (
    IFTTerms,
    PPAConfig,
    follower_objective,
    ppa_exact_terms,
    ppa_implicit_estimate,
    ppa_implicit_gradient,
    ppa_sampled_terms,
    principal_utility,
)
from bilevel_rl.tabular.estimators_sampling import (
    CategoricalTable,
    RolloutConfig,
    Rollouts,
    Simulator,
    Visits,
    enumerate_trajectories,
    gradient_return_visits,
    occupancy,
    reward_vjp,
    rollout,
    rollout_until,
    sample_geometric,
    sample_states,
    state_action_resolvent,
    state_resolvent,
    visit_table,
)
from bilevel_rl.tabular.estimators_sobirl import (
    BradleyTerryLoss,
    HypergradientEstimate,
    PracticalSoBiRLConfig,
    SoBiRLConfig,
    TrajectoryLoss,
    UtilityLoss,
    expected_trajectory_loss,
    sample_tuples,
    sobirl_estimate,
    sobirl_exact,
    sobirl_practical_estimate,
    sobirl_practical_exact,
)

__all__ = [
    "BradleyTerryLoss",
    "CategoricalTable",
    "CriticVJPConfig",
    "HPGDConfig",
    "HessianFreeConfig",
    "HypergradientEstimate",
    "IFTTerms",
    "PPAConfig",
    "PenalisedFollowerConfig",
    "PenaltyConfig",
    "PracticalSoBiRLConfig",
    "RolloutConfig",
    "Rollouts",
    "Simulator",
    "SoBiRLConfig",
    "TrajectoryLoss",
    "UtilityLoss",
    "Visits",
    "advantage_gradient_visits",
    "bellman_penalty",
    "bellman_penalty_grad_estimate",
    "bellman_penalty_grad_exact",
    "decomposable_objective",
    "discounted_reward_gradient_table",
    "enumerate_trajectories",
    "expected_trajectory_loss",
    "follower_objective",
    "follower_value",
    "gradient_return_visits",
    "hessian_free_grad_estimate",
    "hessian_free_grad_exact",
    "hessian_free_proxy",
    "hpgd_critic_vjp_estimate",
    "hpgd_decomposable_estimate",
    "hpgd_decomposable_exact",
    "hpgd_estimate",
    "leader_values",
    "occupancy",
    "penalised_follower",
    "ppa_exact_terms",
    "ppa_implicit_estimate",
    "ppa_implicit_gradient",
    "ppa_sampled_terms",
    "principal_utility",
    "reward_vjp",
    "rollout",
    "rollout_until",
    "sample_geometric",
    "sample_states",
    "sample_tuples",
    "sobirl_estimate",
    "sobirl_exact",
    "sobirl_practical_estimate",
    "sobirl_practical_exact",
    "state_action_resolvent",
    "state_resolvent",
    "value_penalty",
    "value_penalty_grad_estimate",
    "value_penalty_grad_exact",
    "visit_table",
]
