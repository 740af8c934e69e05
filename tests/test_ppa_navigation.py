"""PPA-BRL §5 navigation (tabular): the hypergradient (13') against the exact soft-Bellman IFT and finite differences,
the sampled PPA estimator against the exact value at stated sample sizes, short runs' directions, refusals.

Task defaults: 6 x 6 grid, start (0, 0), target (5, 5), r_ν = −0.5‖p(s) − ν‖², γ = 0.8, τ = 1, H_u = 12.
"""

import pytest
import torch

from bilevel_rl.tabular.repro.ppa_navigation import (
    NavEstimatorConfig,
    NavigationConfig,
    NavigationLeaderConfig,
    NavigationTask,
    check_lambda,
    cosine_and_relative_error,
    exact_hypergradient_nav,
    exact_parts,
    grid_optimum,
    run_ppa_navigation,
    sampled_parts,
)

torch.set_num_threads(1)
DT = torch.float64


def gen(seed):
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def task():
    return NavigationTask()


@pytest.fixture(scope="module")
def at_start(task):
    """ν_0 = (5, 0) with λ = 10 (the runs' start): follower, exact hypergradient, exact (13') parts."""
    nu = torch.tensor([5.0, 0.0], dtype=DT)
    sol = task.follower(nu)
    exact, _ = exact_hypergradient_nav(task, nu, 10.0)
    return (
        nu,
        sol,
        exact,
        exact_parts(task, nu, 10.0, sol, "projected"),
        exact_parts(task, nu, 10.0, sol, "normal", 1e-2),
    )


def test_exact_parts_equal_the_soft_bellman_hypergradient_and_finite_differences(task):
    nu, lam = torch.tensor([3.0, 1.5], dtype=DT), 15.0
    sol = task.follower(nu)
    exact, _ = exact_hypergradient_nav(task, nu, lam)
    parts = exact_parts(task, nu, lam, sol, "projected")
    assert (parts.total - exact).norm() <= 1e-8 * exact.norm()

    def G(z):
        return float(task.outer(z, task.follower(z).pi, lam))

    eps = 1e-5
    fd = torch.tensor([(G(nu + eps * e) - G(nu - eps * e)) / (2 * eps) for e in torch.eye(2, dtype=DT)], dtype=DT)
    assert (fd - exact).norm() <= 1e-6 * exact.norm()
    # the implicit (IFT) term is not negligible here: measured |implicit| / |direct| = 0.24
    assert parts.implicit.norm() > 0.15 * parts.direct.norm()


def test_sampled_hypergradient_matches_the_exact_one(task, at_start):
    # measured over seeds 0-7 at N = 2000 trajectories per batch (H/X: 20 steps, g_U and direct: H_u = 12 steps),
    # Tikhonov solve δ = 1e-2: total cosine >= 0.9999, relative error <= 0.031 (of which 0.017 is the δ bias);
    # direct term relative error <= 0.006
    nu, sol, exact, pinv, _ = at_start
    for seed in range(3):
        est = sampled_parts(task, nu, 10.0, sol, NavEstimatorConfig(num_trajectories=2000), gen(seed))
        cos, rel = cosine_and_relative_error(est.total, exact)
        assert cos >= 0.999 and rel <= 0.05, (seed, cos, rel)
        assert cosine_and_relative_error(est.direct, pinv.direct)[1] <= 0.015


def test_sampled_implicit_term_matches_its_exact_targets(task, at_start):
    # the IFT term alone is the hard part. measured over seeds 0-7 at N = 8000: against the exact Tikhonov target
    # (same δ) cosine >= 0.999, relative error median 0.045, max 0.098; against the pseudo-inverse (the exact
    # hypergradient's term) max 0.193 (the δ = 1e-2 bias is 0.11); at N = 2000 the errors are about twice as large
    nu, sol, _, pinv, tikhonov = at_start
    cos_t, rel_t = cosine_and_relative_error(tikhonov.implicit, pinv.implicit)
    assert cos_t > 0.9999 and 0.09 < rel_t < 0.13
    for seed in range(2):
        est = sampled_parts(task, nu, 10.0, sol, NavEstimatorConfig(num_trajectories=8000), gen(seed))
        cos, rel = cosine_and_relative_error(est.implicit, tikhonov.implicit)
        assert cos >= 0.99 and rel <= 0.15, (seed, cos, rel)
        cos, rel = cosine_and_relative_error(est.implicit, pinv.implicit)
        assert cos >= 0.99 and rel <= 0.25, (seed, cos, rel)


@pytest.mark.parametrize(("lam", "toward"), [(30.0, "target"), (1.0, "start")])
def test_short_sampled_run_moves_the_goal_toward_the_target_or_the_start(task, lam, toward):
    # 8 outer steps from the grid centre (distance 3.54 to both ends), N = 500, α_u = 0.05. measured, seeds 0-2:
    # λ = 30 ends 0.70-1.09 from the target (exact-gradient run 0.87) and 5.99-6.37 from the start; λ = 1 ends
    # 1.71-1.94 from the start (exact run 1.69) and 5.13-5.49 from the target
    est = NavEstimatorConfig(num_trajectories=500)
    cfg = NavigationLeaderConfig(lam=lam, iterations=8, nu0=(2.5, 2.5), estimator_cfg=est)
    run = run_ppa_navigation(task, cfg, gen(0))
    first, last = run.rows[0], run.rows[-1]
    assert first["dist_start"] == pytest.approx(3.5355, abs=1e-4)
    near, far = ("dist_target", "dist_start") if toward == "target" else ("dist_start", "dist_target")
    assert last[near] < 2.2 and last[far] > 5.0
    assert last["r_outer"] > first["r_outer"] + 5.0
    assert len(run.rows) == 9 and first["grad_cos"] > 0.99  # the first step: cosine with the exact hypergradient


def test_projection_keeps_the_goal_in_the_grid_and_error_mode_refuses_the_step(task):
    cfg = NavigationLeaderConfig(lam=10.0, iterations=3, step_size=10.0, estimator="exact")
    run = run_ppa_navigation(task, cfg, gen(0))
    assert all(0.0 <= r[k] <= 5.0 for r in run.rows for k in ("nu_x", "nu_y"))
    assert run.rows[1]["nu_x"] == 0.0 and run.rows[1]["nu_y"] == 5.0  # the step (−149, 101) is clipped to a corner
    with pytest.raises(ValueError, match=r"^nu must lie in the grid \[0, 5\]\^2"):
        run_ppa_navigation(
            task,
            NavigationLeaderConfig(lam=10.0, iterations=3, step_size=10.0, estimator="exact", outside="error"),
            gen(0),
        )


def test_grid_optimum_agrees_with_the_exact_run(task):
    best, _ = grid_optimum(task, 15.0, resolution=11)
    run = run_ppa_navigation(task, NavigationLeaderConfig(lam=15.0, iterations=25, estimator="exact"), gen(0))
    assert (best - run.nu).norm() < 0.5 * 2**0.5 and abs(run.nu[0] - run.nu[1]) < 0.05  # lattice step 0.5


def one_line(excinfo, key):
    msg = str(excinfo.value)
    assert "\n" not in msg and msg.startswith(key), msg


@pytest.mark.parametrize(
    ("make", "key"),
    [
        (lambda: check_lambda(-1.0), "lam"),
        (lambda: NavigationLeaderConfig(lam=-0.5), "lam"),
        (lambda: NavigationLeaderConfig(lam=float("nan")), "lam"),
        (lambda: NavigationLeaderConfig(lam=1.0, iterations=0), "iterations"),
        (lambda: NavigationLeaderConfig(lam=1.0, step_size=0.0), "step_size"),
        (lambda: NavigationLeaderConfig(lam=1.0, estimator="oracle"), "estimator"),
        (lambda: NavigationLeaderConfig(lam=1.0, outside="wrap"), "outside"),
        (lambda: NavEstimatorConfig(num_trajectories=0), "num_trajectories"),
        (lambda: NavEstimatorConfig(utility_trajectories=0), "utility_trajectories"),
        (lambda: NavEstimatorConfig(horizon=0), "horizon"),
        (lambda: NavEstimatorConfig(solver="cg"), "solver"),
        (lambda: NavEstimatorConfig(damping=0.0), "damping"),
        (lambda: NavEstimatorConfig(hessian="dice"), "hessian"),
        (lambda: NavigationConfig(size=1), "size"),
        (lambda: NavigationConfig(gamma=1.0), "gamma"),
        (lambda: NavigationConfig(tau=0.0), "tau"),
        (lambda: NavigationConfig(kappa=-1.0), "kappa"),
        (lambda: NavigationConfig(utility_horizon=0), "utility_horizon"),
        (lambda: NavigationConfig(target=(6.0, 5.0)), "target"),
    ],
)
def test_bad_arguments_are_refused_with_one_line(make, key):
    with pytest.raises(ValueError) as excinfo:
        make()
    one_line(excinfo, key)


@pytest.mark.parametrize("nu0", [(-0.1, 2.0), (2.0, 5.5), (float("nan"), 1.0)])
def test_initial_goal_outside_the_grid_is_refused(task, nu0):
    with pytest.raises(ValueError) as excinfo:
        run_ppa_navigation(task, NavigationLeaderConfig(lam=1.0, nu0=nu0, estimator="exact"), gen(0))
    one_line(excinfo, "nu0")
    with pytest.raises(ValueError) as excinfo:
        grid_optimum(task, -2.0)
    one_line(excinfo, "lam")
