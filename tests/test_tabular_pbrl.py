"""PBRL on the tabular Stackelberg game: closed-form penalty gradients (Lemmas 6–9) against finite differences, the
game's hypergradient against FD and the core, MC estimators against exact values, and λ → ∞ consistency."""

import math

import pytest
import torch

from bilevel_rl.tabular.core.soft_mdp import DTYPE, SoftMDP, exact_hypergradient, policy_evaluation
from bilevel_rl.tabular.repro.pbrl import (
    TabularPBRLConfig,
    bellman_penalty,
    bellman_penalty_grads_exact,
    follower_pg_exact,
    hypergradient_descent,
    mc_bellman_grads,
    mc_cross_pg,
    mc_own_pg,
    run_pbrl,
    upper_grads_exact,
    value_penalty,
    value_penalty_grads_exact,
)
from bilevel_rl.tabular.repro.stackelberg import (
    GameBatch,
    StackelbergGame,
    best_response,
    follower_mdp,
    hyper_objective,
    hypergradient,
    random_stackelberg_game,
    sample_rollouts,
    value,
)

torch.set_num_threads(1)

# (S, A_l, A_f, gamma, tau)
CASES = [(4, 3, 2, 0.5, 0.3), (6, 2, 4, 0.9, 0.1), (3, 3, 3, 0.7, 1.0)]


def _setup(S, A_l, A_f, gamma, tau, seed):
    g = torch.Generator().manual_seed(seed)
    game = random_stackelberg_game(S, A_l, A_f, gamma, tau, g)
    x = torch.randn(S, A_l, generator=g, dtype=DTYPE)
    y = torch.randn(S, A_f, generator=g, dtype=DTYPE)
    return game, x, y


def _fd(fun, z, eps=1e-6):
    out = torch.zeros_like(z)
    for i in range(z.numel()):
        e = torch.zeros(z.numel(), dtype=DTYPE)
        e[i] = eps
        e = e.view_as(z)
        out.view(-1)[i] = (fun(z + e) - fun(z - e)) / (2 * eps)
    return out


def _rel(a, b):
    return float((a - b).norm() / b.norm())


def sm(z):
    return torch.softmax(z, -1)


# ---------------------------------------------------------------- the game and its reduction (Lemma 18)


def test_random_game_follows_the_paper_recipe():
    game = random_stackelberg_game(100, 5, 5, 0.5, 0.1, torch.Generator().manual_seed(0))
    assert game.P.shape == (100, 5, 5, 100) and game.r_l.shape == (100, 5, 5)
    for r in (game.r_l, game.r_f):
        assert ((r == 0) | (r >= 0.7)).all()
        assert 0.25 < float((r > 0).double().mean()) < 0.35  # P(U >= 0.7) = 0.3
    torch.testing.assert_close(game.P.sum(-1), torch.ones(100, 5, 5, dtype=DTYPE))


@pytest.mark.parametrize(("S", "A_l", "A_f", "gamma", "tau"), CASES)
def test_follower_mdp_reproduces_follower_value(S, A_l, A_f, gamma, tau):
    game, x, y = _setup(S, A_l, A_f, gamma, tau, 0)
    mdp, r_x = follower_mdp(game, sm(x))
    _, V = policy_evaluation(sm(y), r_x, mdp)
    torch.testing.assert_close(game.rho @ V, value(game, sm(x), sm(y), "follower"), atol=1e-12, rtol=0)
    # the soft best response is optimal among all follower policies
    pi_star = best_response(game, sm(x)).pi
    assert value(game, sm(x), pi_star, "follower") >= value(game, sm(x), sm(y), "follower")


# ---------------------------------------------------------------- closed-form gradients (PBRL §4.1–4.2)


@pytest.mark.parametrize(("S", "A_l", "A_f", "gamma", "tau"), CASES)
def test_value_penalty_gradients_equal_closed_form(S, A_l, A_f, gamma, tau):
    """Lemma 6 / 7(b) at π̂ = π*: ∇_x p_V and ∇_y p_V against central differences of p_V (re-solving π* each time)."""
    game, x, y = _setup(S, A_l, A_f, gamma, tau, 1)
    pi_star = best_response(game, sm(x)).pi
    gx, gy = value_penalty_grads_exact(game, sm(x), sm(y), pi_star)
    assert _rel(gx, _fd(lambda z: value_penalty(game, sm(z), sm(y)), x)) < 1e-6
    assert _rel(gy, _fd(lambda z: value_penalty(game, sm(x), sm(z)), y)) < 1e-6


@pytest.mark.parametrize(("S", "A_l", "A_f", "gamma", "tau"), CASES)
def test_bellman_penalty_gradients_equal_closed_form(S, A_l, A_f, gamma, tau):
    """Lemma 8 / 9(b) (mixed first action) and C.27 at π̂ = π*, against central differences of p_B."""
    game, x, y = _setup(S, A_l, A_f, gamma, tau, 2)
    pi_star = best_response(game, sm(x)).pi
    gx, gy = bellman_penalty_grads_exact(game, sm(x), sm(y), pi_star)
    assert _rel(gx, _fd(lambda z: bellman_penalty(game, sm(z), sm(y)), x)) < 1e-6
    assert _rel(gy, _fd(lambda z: bellman_penalty(game, sm(x), sm(z)), y)) < 1e-6


@pytest.mark.parametrize(("S", "A_l", "A_f", "gamma", "tau"), CASES)
def test_penalty_values_and_entropy_identity(S, A_l, A_f, gamma, tau):
    """p ≥ 0, p = 0 at π*, and p_B = τ E_ρ KL(π_y ‖ π*) (entropy case, docs/theory/penalty_methods.md §1.8)."""
    game, x, y = _setup(S, A_l, A_f, gamma, tau, 3)
    pi_y, pi_star = sm(y), best_response(game, sm(x)).pi
    assert value_penalty(game, sm(x), pi_y) > 0 and bellman_penalty(game, sm(x), pi_y) > 0
    assert abs(value_penalty(game, sm(x), pi_star)) < 1e-10 and abs(bellman_penalty(game, sm(x), pi_star)) < 1e-10
    kl = (pi_y * (torch.log(pi_y) - torch.log(pi_star))).sum(-1)
    assert bellman_penalty(game, sm(x), pi_y) == pytest.approx(tau * float(game.rho @ kl), abs=1e-10)


def test_upper_and_follower_gradients_match_autograd():
    game, x, y = _setup(5, 3, 4, 0.8, 0.2, 4)
    xr, yr = x.clone().requires_grad_(True), y.clone().requires_grad_(True)
    ax, ay = torch.autograd.grad(-value(game, sm(xr), sm(yr), "leader"), [xr, yr])
    fx, fy = upper_grads_exact(game, sm(x), sm(y))
    assert _rel(fx, ax) < 1e-10 and _rel(fy, ay) < 1e-10
    yr = y.clone().requires_grad_(True)
    (af,) = torch.autograd.grad(value(game, sm(x), sm(yr), "follower"), yr)
    assert _rel(follower_pg_exact(game, sm(x), sm(y)), af) < 1e-10


@pytest.mark.parametrize(("S", "A_l", "A_f", "gamma", "tau"), CASES)
def test_game_hypergradient_matches_finite_differences(S, A_l, A_f, gamma, tau):
    game, x, _ = _setup(S, A_l, A_f, gamma, tau, 5)
    g, _ = hypergradient(game, x)
    assert _rel(g, _fd(lambda z: hyper_objective(game, z), x)) < 1e-6


def test_game_hypergradient_reduces_to_the_core_when_dynamics_ignore_the_leader():
    game, x, _ = _setup(5, 3, 4, 0.9, 0.3, 6)
    P = game.P[:, :1].expand(-1, 3, -1, -1).clone()
    game = StackelbergGame(P, game.r_l, game.r_f, game.rho, game.gamma, game.tau)
    mdp = SoftMDP(P[:, 0], game.rho, game.gamma, game.tau)
    core, _ = exact_hypergradient(
        x,
        lambda z: torch.einsum("sl,slf->sf", sm(z), game.r_f),
        lambda z, pi: -value(game, sm(z), pi, "leader"),
        mdp,
    )
    assert _rel(hypergradient(game, x)[0], core) < 1e-10


# ---------------------------------------------------------------- Monte-Carlo estimators (App. E.1)


def test_mc_estimators_are_unbiased():
    """20 independent chunks of 4000 trajectories, H = 20 (γ^H ≈ 1e-6): every estimator's mean is within 4 standard
    errors of its closed form, and the standard error is < 25% of the closed form's norm."""
    game, x, y = _setup(3, 2, 3, 0.5, 0.3, 7)
    pi_x, pi_y = sm(x), sm(y)
    pi_hat = sm(torch.randn(3, 3, generator=torch.Generator().manual_seed(1), dtype=DTYPE))
    gen = torch.Generator().manual_seed(0)
    exact = [*upper_grads_exact(game, pi_x, pi_y)]
    exact += [
        *value_penalty_grads_exact(game, pi_x, pi_y, pi_hat),
        *bellman_penalty_grads_exact(game, pi_x, pi_y, pi_hat),
    ]
    chunks = []
    for _ in range(20):
        roll = sample_rollouts(game, pi_x, pi_y, 4000, 20, gen)
        hat = sample_rollouts(game, pi_x, pi_hat, 4000, 20, gen)
        mixed = sample_rollouts(game, pi_x, pi_hat, 4000, 20, gen, first_follower=pi_y)
        vx = mc_cross_pg(game, hat, pi_x, pi_hat, "follower") - mc_cross_pg(game, roll, pi_x, pi_y, "follower")
        chunks.append(
            [
                -mc_own_pg(game, roll, pi_x, "leader"),
                -mc_cross_pg(game, roll, pi_y, pi_x, "leader"),
                vx,
                -mc_own_pg(game, roll, pi_y, "follower"),
                *mc_bellman_grads(game, pi_x, pi_y, pi_hat, mixed, hat),
            ]
        )
    for i, ex in enumerate(exact):
        est = torch.stack([c[i] for c in chunks])
        mean, se = est.mean(0), est.std(0) / 20**0.5
        assert ((mean - ex).abs() <= 4 * se + 1e-12).all(), i
        assert float(se.norm()) < 0.25 * float(ex.norm()), i  # the check above is not vacuous


# ---------------------------------------------------------------- Algorithm 1


def test_penalty_schedules():
    assert TabularPBRLConfig(lam=2.0).penalty_coefficient(50) == 2.0
    assert TabularPBRLConfig(lam=1.0, lam_schedule="linear", lam_growth=0.5).penalty_coefficient(4) == 3.0
    cfg = TabularPBRLConfig(lam=1.0, lam_schedule="geometric", lam_growth=2.0, lam_every=10, lam_max=5.0)
    assert [cfg.penalty_coefficient(k) for k in (0, 9, 10, 25, 100)] == [1.0, 1.0, 2.0, 4.0, 5.0]
    assert TabularPBRLConfig.paper("bellman").lam == 7.0 and TabularPBRLConfig.paper("bellman").inner_steps == 10
    assert TabularPBRLConfig.paper("value").lam == 2.0 and TabularPBRLConfig.paper("value").inner_steps == 1


@pytest.mark.parametrize(("method", "rollouts_per_iter"), [("independent", 1), ("value", 3), ("bellman", 13)])
def test_mc_runs_count_environment_steps(method, rollouts_per_iter):
    game = random_stackelberg_game(6, 3, 3, 0.5, 0.1, torch.Generator().manual_seed(0))
    res = run_pbrl(game, TabularPBRLConfig.paper(method, iterations=4, log_every=2))
    assert [r["iteration"] for r in res.rows] == [0, 2, 4]
    assert res.rows[-1]["env_steps"] == 4 * rollouts_per_iter * 16 * 5
    assert all(math.isfinite(v) for r in res.rows for v in r.values() if v == v)


def test_schedule_is_applied_and_batched_games_run_independently():
    games = [random_stackelberg_game(4, 2, 3, 0.5, 0.2, torch.Generator().manual_seed(i)) for i in range(2)]
    cfg = TabularPBRLConfig(
        lam=1.0, lam_schedule="linear", lam_growth=0.5, estimator="exact", oracle="exact", iterations=4, log_every=1
    )
    batched = run_pbrl(GameBatch(games), cfg)
    assert [r["lam"] for r in batched.rows if r["game"] == 1] == [1.0, 1.0, 1.5, 2.0, 2.5]
    for g, game in enumerate(games):
        single = run_pbrl(game, cfg)
        torch.testing.assert_close(batched.x[4 * g : 4 * (g + 1)], single.x, atol=1e-13, rtol=0)
        torch.testing.assert_close(batched.y[4 * g : 4 * (g + 1)], single.y, atol=1e-13, rtol=0)


def test_pmd_oracle_reaches_the_best_response():
    game, x, _ = _setup(5, 3, 3, 0.7, 0.5, 8)
    cfg = TabularPBRLConfig(estimator="exact", oracle="pmd", inner_steps=60, inner_lr=1.0, iterations=1, lr=0.0)
    res = run_pbrl(game, cfg, x0=x)
    assert float((sm(res.y_hat) - best_response(game, sm(x)).pi).abs().max()) < 1e-8


def test_exact_pbrl_improves_the_leader_over_independent_pg():
    game = random_stackelberg_game(5, 3, 3, 0.5, 0.2, torch.Generator().manual_seed(3))
    common = {"estimator": "exact", "iterations": 300, "log_every": 300, "lr": 2.0}
    ind = run_pbrl(game, TabularPBRLConfig(method="independent", **common))
    val = run_pbrl(game, TabularPBRLConfig(method="value", lam=4.0, oracle="exact", lr_y=0.5, **common))
    assert val.rows[-1]["leader_value_at_best_response"] > ind.rows[-1]["leader_value_at_best_response"]


@pytest.fixture(scope="module")
def small_bilevel():
    """A 4-state game and its bilevel solution from x = 0 (exact hypergradient descent, ‖∇Φ‖ ≤ 1e-9)."""
    game = random_stackelberg_game(4, 2, 3, 0.5, 0.2, torch.Generator().manual_seed(0))
    x_star, norms = hypergradient_descent(game, torch.zeros(4, 2, dtype=DTYPE), lr=5.0, iterations=500, tol=1e-9)
    assert norms[-1] <= 1e-9
    return game, x_star


@pytest.mark.parametrize("method", ["value", "bellman"])
def test_outer_solution_approaches_bilevel_solution_as_lambda_grows(method, small_bilevel):
    """Stationary points of F_λ (Algorithm 1 with exact gradients and oracle, continuation in λ) approach the bilevel
    solution: follower gap, ‖π_x − π_x*‖, |Φ(x_λ) − Φ*| and ‖∇Φ(x_λ)‖ all shrink as λ grows."""
    game, x_star = small_bilevel
    phi_star, pi_star = hyper_objective(game, x_star), sm(x_star)
    x = y = None
    gaps, dists, phi_errs, hyper_norms = [], [], [], []
    for lam in (1.0, 3.0, 9.0):
        cfg = TabularPBRLConfig(
            method=method, lam=lam, estimator="exact", oracle="exact", lr=6.0 / lam, iterations=int(100 * lam)
        )
        res = run_pbrl(game, cfg, x0=x, y0=y)
        x, y = res.x, res.y
        assert res.rows[-1]["step_norm"] < 2e-3  # (near-)stationary point of F_λ
        gaps.append(res.rows[-1]["follower_gap"])
        dists.append(float((sm(x) - pi_star).norm()))
        phi_errs.append(hyper_objective(game, x) - phi_star)
        hyper_norms.append(float(hypergradient(game, x)[0].norm()))
    for seq in (gaps, dists, phi_errs, hyper_norms):
        assert seq[0] > seq[1] > seq[2] > 0
    assert hyper_norms[2] < hyper_norms[0] / 4 and dists[2] < dists[0] / 3
