"""AMD as HPGD Algorithm 9 prints it (K warm-started sweeps per step) against the exact AMD hypergradient."""

import pytest
import torch

from bilevel_rl.tabular.core.soft_mdp import DTYPE
from bilevel_rl.tabular.repro.amd_sweeps import SweptAMD
from bilevel_rl.tabular.repro.four_rooms import FourRooms, FourRoomsConfig
from bilevel_rl.tabular.repro.four_rooms_batch import BatchConfig, BatchFourRooms, context_average, run_batch

# the authors' conventions at γ = 0.9, so the sweeps contract fast enough for a unit test
FAST = FourRoomsConfig(gamma=0.9, slip_prob=4.0 / 9.0, cost_over_actions=False, mask_goal_penalty=True)


@pytest.fixture(scope="module")
def problem():
    return BatchFourRooms(FourRooms(FAST))


def _exact(problem, x, ctx, lam, beta):
    uniform = torch.full((x.shape[0], problem.S, problem.A), 1.0 / problem.A, dtype=DTYPE)
    pi, lu = problem.solve(problem.follower_reward(x, ctx, lam), ctx, lam, uniform)
    g, _ = problem.exact_gradient(x, ctx, lam, beta, pi, lu)
    return g, context_average(problem, x, lam, beta, [uniform, uniform], 1e-12)


def test_at_a_fixed_leader_the_sweeps_give_the_exact_hypergradient(problem):
    """Three runs (λ, β, context differ): at the tables' fixed point ĝ = Ṽ(ξ, S) is the implicit-differentiation
    hypergradient of the sampled context, and the logged value is the exact context-averaged leader value."""
    x = torch.randn(3, problem.d, generator=torch.Generator().manual_seed(0), dtype=DTYPE)
    lam = torch.tensor([0.005, 0.003, 0.01], dtype=DTYPE)
    beta = torch.tensor([1.0, 3.0, 5.0], dtype=DTYPE)
    ctx = torch.tensor([0, 1, 1])
    amd = SweptAMD(problem, lam, beta, sweeps=10)
    assert 100 < amd.start(x) < 1000  # γ = 0.9: ~260 sweeps to 1e-12
    g, value = amd.step(x, ctx)
    g_exact, v_exact = _exact(problem, x, ctx, lam, beta)
    assert g.norm(dim=1).min() > 1e-4  # a non-trivial gradient (γ = 0.9 discounts the distant goals)
    torch.testing.assert_close(g, g_exact, rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(value, v_exact, rtol=1e-9, atol=1e-10)


def test_the_tables_lag_a_moving_leader_and_catch_up_with_more_sweeps(problem):
    """Tables at their fixed point for x_0, then one step at x_1: with K = 5 sweeps the gradient is visibly the
    lagged one (≥ 5 % off), with K = 100 it is within 1e-3 of the exact one (γ^95 ≈ 5e-5 of the initial error)."""
    gen = torch.Generator().manual_seed(1)
    x0 = torch.randn(2, problem.d, generator=gen, dtype=DTYPE)
    x1 = x0 + torch.randn(2, problem.d, generator=gen, dtype=DTYPE)
    lam, beta, ctx = torch.full((2,), 0.005, dtype=DTYPE), torch.tensor([1.0, 3.0], dtype=DTYPE), torch.tensor([0, 1])
    g_exact, _ = _exact(problem, x1, ctx, lam, beta)
    errors = {}
    for K in (5, 100):
        amd = SweptAMD(problem, lam, beta, sweeps=K)
        amd.start(x0)
        g, _ = amd.step(x1, ctx)
        errors[K] = float(((g - g_exact).norm(dim=1) / g_exact.norm(dim=1)).max())
    assert errors[5] > 0.05 and errors[100] < 1e-3, errors


def _config(follower, sweeps, iterations=12):
    return BatchConfig(method="amd", cells=((0.005, 1.0),), seeds=(0, 1), lrs=(0.5,), iterations=iterations,
                       window=6, curve_every=3, amd_follower=follower, amd_sweeps=sweeps)  # fmt: skip


def test_with_enough_sweeps_the_printed_algorithm_is_the_exact_amd_run(problem):
    """Same contexts drawn, same updates: K = 200 sweeps (γ^200 ≈ 7e-10) reproduce the exact-follower run's metric
    and final budget; K = 3 sweeps give another run (the follower lags)."""
    exact = run_batch(problem, _config("exact", 1), torch.Generator().manual_seed(3))
    swept = run_batch(problem, _config("sweeps", 200), torch.Generator().manual_seed(3))
    lagged = run_batch(problem, _config("sweeps", 3), torch.Generator().manual_seed(3))
    assert swept.metric == pytest.approx(exact.metric, rel=1e-6)
    assert swept.budget_used == pytest.approx(exact.budget_used, rel=1e-6)
    assert lagged.metric != pytest.approx(exact.metric, rel=1e-3)


def test_a_resumed_swept_amd_batch_continues_exactly(problem, tmp_path):
    """The lagging tables are part of the checkpoint: stopped at iteration 6 and resumed, the same metrics, curves
    and budgets as one uninterrupted run."""
    full = run_batch(problem, _config("sweeps", 20), torch.Generator().manual_seed(1))
    ckpt = tmp_path / "amd.ckpt"
    run_batch(problem, _config("sweeps", 20), torch.Generator().manual_seed(1), checkpoint=ckpt, checkpoint_every=6)
    assert torch.load(ckpt, weights_only=False)["t"] == 6
    resumed = run_batch(
        problem, _config("sweeps", 20), torch.Generator().manual_seed(5), checkpoint=ckpt, checkpoint_every=6
    )
    assert resumed.metric == full.metric and resumed.curves == full.curves and resumed.budget_used == full.budget_used


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"amd_follower": "lagged"}, "amd_follower: expected exact or sweeps"), ({"amd_sweeps": 0}, "amd_sweeps: must")],
)
def test_a_bad_amd_follower_setting_is_refused_with_its_key(kwargs, message):
    with pytest.raises(ValueError, match=message):
        BatchConfig(method="amd", **kwargs)
