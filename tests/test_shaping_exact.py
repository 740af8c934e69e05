"""The reward-shaping estimators (objective=leader_reward) against the exact hypergradient on a tabular soft MDP.

The deep rule classes run unchanged on a ShapingLab (exact leader critic, fixed follower policy pi*(x)); each
estimate is the mean over independent on-policy batches of minus the rule's leader-loss gradient.
"""

import pytest

from bilevel_rl.objectives.leader_reward import LeaderRewardConfig
from bilevel_rl.tabular.checks.shaping import first_step_expectation, penalty_step_samples, sample_gradients
from bilevel_rl.tabular.lab.shaping_lab import make_shaping_lab
from bilevel_rl.upper.hpgd import HPGD, HPGDConfig
from bilevel_rl.upper.sobirl import SoBiRL, SoBiRLConfig
from tests.tabular_helpers import assert_matches, compare


@pytest.mark.parametrize("seed", [0, 1])
def test_hpgd_full_trace_matches_exact_hypergradient(seed):
    """HPGD eq. (8), trace kappa = 1 with exact advantages: unbiased (up to 30-step truncation at gamma = 0.6)."""
    lab = make_shaping_lab(seed=seed)
    g = sample_gradients(lab, HPGD(HPGDConfig(trace=1.0, optimizer="sgd")), batches=160, steps_per_env=100, seed=seed)
    assert_matches(g.mean(0), lab.exact_gradient(), cos_min=0.99, rel_max=0.05)


def test_hpgd_full_trace_with_l2_cost_matches_exact():
    """The cost enters r-bar: through the advantages and as eq. (8)'s direct term."""
    config = LeaderRewardConfig(cost="l2", cost_coef=0.5)
    lab = make_shaping_lab(seed=2, config=config)
    g = sample_gradients(lab, HPGD(HPGDConfig(trace=1.0, optimizer="sgd")), batches=160, steps_per_env=100, seed=2)
    exact = lab.exact_gradient()
    assert_matches(g.mean(0), exact, cos_min=0.99, rel_max=0.05)
    no_cost = make_shaping_lab(seed=2).exact_gradient()
    assert compare(no_cost, exact)[1] > 0.2  # the cost changes the answer: the check is not vacuous


@pytest.mark.parametrize("seed", [0, 1])
def test_first_step_estimators_match_their_expectation_and_their_bias_is_measured(seed):
    """HPGD kappa = 0 and SoBiRL's truncated eq. (99) estimate one first-step quantity, 19-23% off the exact one."""
    lab = make_shaping_lab(seed=seed)
    first = first_step_expectation(lab)
    exact = lab.exact_gradient()
    cos, rel = compare(first, exact)
    assert cos >= 0.97 and 0.1 <= rel <= 0.3, (cos, rel)  # the bias (dropped continuation of dA), as documented
    hpgd = sample_gradients(lab, HPGD(HPGDConfig(trace=0.0, optimizer="sgd")), batches=120, steps_per_env=100)
    assert_matches(hpgd.mean(0), first, cos_min=0.99, rel_max=0.05)
    sobirl = SoBiRL(SoBiRLConfig(optimizer="sgd", baseline="mean"))
    g = sample_gradients(lab, sobirl, batches=240, steps_per_env=100, seed=seed)
    se = float((g.std(0) / len(g) ** 0.5).norm() / first.norm())
    cos, rel = compare(g.mean(0), first)
    assert cos >= 0.98 and rel <= max(0.08, 3 * se), (cos, rel, se)


def test_pbrl_value_penalty_direction_matches_exact():
    """PBRL's leader step (x moves only through the penalty) against lambda*sigma*(grad V^br - grad V^y) exactly."""
    samples, exact = penalty_step_samples(seed=3)
    assert_matches(samples.mean(0), exact)
