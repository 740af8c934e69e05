"""Stochastic hypergradient / penalty-gradient estimators on finite soft MDPs, each with its exact target.

Every estimator samples with the core sampler (:mod:`bilevel_rl.tabular.core.sampling`, an explicit
``torch.Generator``) and is tested in ``tests/test_tabular_estimators*.py`` against the exact quantity it
estimates (estimator → exact target; bias):

* SoBiRL eq. 14 / Alg. 3, :func:`sobirl_estimate` → :func:`sobirl_exact` (the plug-in ``∇̃φ(x, π)``; at ``π*`` the
  exact ``∇φ`` of Prop. 5.2 = ``exact_hypergradient``); unbiased with geometric truncation, ``O(γ^T)`` otherwise.
* SoBiRL eq. 99, :func:`sobirl_practical_estimate` → :func:`sobirl_practical_exact`; the depth-1 truncation is a
  *biased* estimator of ``∇φ`` (exact at ``γ = 0``; its bias is measured in the tests).
* HPGD Alg. 5 (Prop. 1), :func:`hpgd_decomposable_estimate` → :func:`hpgd_decomposable_exact` = ``∇F``; unbiased.
* HPGD Alg. 1 + 2 (Thm. 1), :func:`hpgd_estimate` → ``∇F`` for any ``f(x, π)``; unbiased.
* HPGD critic/VJP form (our construction, ``docs/theory/hpgd_four_rooms.md`` §3.5), :func:`hpgd_critic_vjp_estimate`
  → ``∇F``; unbiased up to ``O(Lγ^L)`` with the exact leader advantage.
* PBRL value / Bellman penalty, :func:`value_penalty_grad_estimate` / :func:`bellman_penalty_grad_estimate` →
  :func:`value_penalty_grad_exact` / :func:`bellman_penalty_grad_exact` (``= ∇_x p`` at ``π̂ = π*``); unbiased with
  geometric truncation.
* Hessian-free penalty method, :func:`hessian_free_grad_estimate` → :func:`hessian_free_grad_exact` ``= ∇Φ_σ``
  (sign of Alg. 1 l. 15 corrected); unbiased for ``∇Φ_σ``, ``O(σ)``-biased for ``∇φ``.
* PPA-BRL implicit term with the corrected Hessian, :func:`ppa_implicit_estimate` → :func:`ppa_implicit_gradient`
  of :func:`ppa_exact_terms` (projected solve = the exact hypergradient; damped solve = a damped target);
  consistent (plug-in of a matrix inverse), not unbiased.

Implementations live in :mod:`.sobirl`, :mod:`.hpgd` (with the Four-Rooms trajectory form in
:mod:`.hpgd_trajectory`), :mod:`.penalty` and :mod:`.ppa`; the samplers, occupancy measures and trajectory
enumeration they share are in :mod:`bilevel_rl.tabular.core`. This package re-exports the estimators' public API.
"""

from bilevel_rl.tabular.checks.hpgd import (
    CriticVJPConfig,
    GradientWeights,
    HPGDEstimatorConfig,
    advantage_gradient_visits,
    alg5_weights,
    decomposable_objective,
    hpgd_critic_vjp_estimate,
    hpgd_decomposable_estimate,
    hpgd_decomposable_exact,
    hpgd_estimate,
    leader_values,
)
from bilevel_rl.tabular.checks.hpgd_trajectory import (
    discounted_from_start,
    discounted_to_go,
    pooled_estimator,
    run_envs,
)
from bilevel_rl.tabular.checks.penalty import (
    HessianFreeEstimatorConfig,
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
    value_gradient_difference,
    value_penalty,
    value_penalty_grad_estimate,
    value_penalty_grad_exact,
)
from bilevel_rl.tabular.checks.ppa import (
    IFTTerms,
    PPAEstimatorConfig,
    follower_objective,
    ppa_exact_terms,
    ppa_implicit_estimate,
    ppa_implicit_gradient,
    ppa_sampled_terms,
    principal_utility,
)
from bilevel_rl.tabular.checks.sobirl import (
    BradleyTerryLoss,
    HypergradientEstimate,
    PracticalSoBiRLConfig,
    SoBiRLEstimatorConfig,
    TrajectoryLoss,
    UtilityLoss,
    expected_trajectory_loss,
    sample_loss_tuples,
    score_rollouts,
    sobirl_estimate,
    sobirl_exact,
    sobirl_practical_estimate,
    sobirl_practical_exact,
)

__all__ = [
    "BradleyTerryLoss",
    "CriticVJPConfig",
    "GradientWeights",
    "HPGDEstimatorConfig",
    "HessianFreeEstimatorConfig",
    "HypergradientEstimate",
    "IFTTerms",
    "PPAEstimatorConfig",
    "PenalisedFollowerConfig",
    "PenaltyConfig",
    "PracticalSoBiRLConfig",
    "SoBiRLEstimatorConfig",
    "TrajectoryLoss",
    "UtilityLoss",
    "advantage_gradient_visits",
    "alg5_weights",
    "bellman_penalty",
    "bellman_penalty_grad_estimate",
    "bellman_penalty_grad_exact",
    "decomposable_objective",
    "discounted_from_start",
    "discounted_reward_gradient_table",
    "discounted_to_go",
    "expected_trajectory_loss",
    "follower_objective",
    "follower_value",
    "hessian_free_grad_estimate",
    "hessian_free_grad_exact",
    "hessian_free_proxy",
    "hpgd_critic_vjp_estimate",
    "hpgd_decomposable_estimate",
    "hpgd_decomposable_exact",
    "hpgd_estimate",
    "leader_values",
    "penalised_follower",
    "pooled_estimator",
    "ppa_exact_terms",
    "ppa_implicit_estimate",
    "ppa_implicit_gradient",
    "ppa_sampled_terms",
    "principal_utility",
    "run_envs",
    "sample_loss_tuples",
    "score_rollouts",
    "sobirl_estimate",
    "sobirl_exact",
    "sobirl_practical_estimate",
    "sobirl_practical_exact",
    "value_gradient_difference",
    "value_penalty",
    "value_penalty_grad_estimate",
    "value_penalty_grad_exact",
]
