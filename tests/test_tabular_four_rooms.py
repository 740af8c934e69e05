"""Four-Rooms CB-RL (HPGD §5.1): environment, leader reward sign, oracle, HPGD estimators, baselines, reproduction."""

import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from bilevel_rl.tabular.checks.hpgd import alg5_weights
from bilevel_rl.tabular.checks.hpgd_trajectory import discounted_from_start, discounted_to_go, pooled_estimator
from bilevel_rl.tabular.core.sampling import Simulator
from bilevel_rl.tabular.core.soft_mdp import DTYPE, exact_hypergradient, random_mdp, soft_bellman, solve_soft
from bilevel_rl.tabular.repro.amd import AMDConfig, exact_leader_gradient, run_amd
from bilevel_rl.tabular.repro.four_rooms import CONTEXTS, FOUR_ROOMS_MAP, FourRooms, FourRoomsConfig
from bilevel_rl.tabular.repro.hpgd import TabularHPGDConfig, WarmSoftSolver, clip_global_norm, run_hpgd
from bilevel_rl.tabular.repro.zero_order import ZeroOrderConfig, run_zero_order

torch.set_num_threads(1)
UP, RIGHT, DOWN, LEFT = range(4)


@pytest.fixture(scope="module")
def env():
    return FourRooms()


def _cos(a, b):
    return float(a @ b / (a.norm() * b.norm()))


# ----------------------------------------------------------------------------------------------- environment
def test_layout_counts_and_special_cells(env):
    assert len(FOUR_ROOMS_MAP) == 13 and all(len(row) == 13 for row in FOUR_ROOMS_MAP)
    assert env.num_cells == 104 and env.num_states == 105 and env.x_dim == 105
    assert env.cells[env.start] == (4, 1) and env.cells[env.plus_one] == (8, 4)
    assert env.cells[env.goals[1]] == (1, 9) and env.cells[env.goals[2]] == (11, 11)
    for door in [(3, 6), (6, 2), (7, 9), (10, 6)]:  # the four doorways are free cells
        assert door in env.index


def test_walls_block_and_slip_probabilities(env):
    P = env.transitions(1)
    torch.testing.assert_close(P.sum(-1), torch.ones(105, 4, dtype=DTYPE))
    corner = env.index[(1, 1)]  # up and left are walls: the agent stays
    assert env.next_cell[corner, UP] == corner and env.next_cell[corner, LEFT] == corner
    assert env.next_cell[env.index[(1, 5)], RIGHT] == env.index[(1, 5)]  # wall between the top rooms
    assert env.next_cell[env.index[(3, 5)], RIGHT] == env.index[(3, 6)]  # the top door is open
    # an open cell: chosen direction 2/3, each other direction (1/3)/3 = 1/9 (HPGD §5.1 "random movement")
    c = env.index[(9, 3)]
    moves = [(-1, 0), (0, 1), (1, 0), (0, -1)]
    for a in range(4):
        for d, (ei, ej) in enumerate(moves):
            expected = 2 / 3 if a == d else 1 / 9
            assert P[c, a, env.index[(9 + ei, 3 + ej)]].item() == pytest.approx(expected)
    # next to a wall the blocked share stays in place: at (1,1), UP keeps 2/3 + 1/9 (left) in place
    assert P[corner, UP, corner].item() == pytest.approx(2 / 3 + 1 / 9)


def test_goal_is_absorbing_with_zero_continuation(env):
    lam = 0.003
    for xi in CONTEXTS:
        P = env.transitions(xi)
        g = env.goals[xi]
        assert torch.all(P[g, :, env.sink] == 1.0) and torch.all(P[env.sink, :, env.sink] == 1.0)
        other = env.goals[3 - xi]
        assert P[other, :, env.sink].sum() == 0  # the other goal is an ordinary cell in this context
        x = torch.zeros(env.x_dim, dtype=DTYPE)
        x[-1] = 50.0  # no penalty
        sol = solve_soft(env.follower_reward(x, xi, lam), env.mdp(xi, lam))
        assert abs(sol.V[env.sink].item()) < 1e-10  # no reward and no entropy after the episode ends
        # in G the follower collects 1 (plus the entropy of its uniform choice) and nothing after
        assert sol.V[g].item() == pytest.approx(1.0 + lam * math.log(4), abs=1e-9)


def test_penalty_parameterisation(env):
    x = torch.zeros(env.x_dim, dtype=DTYPE)
    pen = env.penalty(x)
    assert pen.shape == (104,) and torch.all(pen <= 0)
    assert pen.sum().item() == pytest.approx(-0.2 * 104 / 105)  # one share sits on the unused-budget logit
    x[-1] = 40.0
    assert env.penalty(x).abs().max().item() < 1e-15
    r = env.follower_reward(torch.zeros(env.x_dim, dtype=DTYPE), 1, 0.001)
    assert r[env.goals[1], 0].item() == pytest.approx(1.0 - 0.2 / 105)  # the paper does not mask the goal
    masked = FourRooms(FourRoomsConfig(mask_goal_penalty=True))
    assert masked.follower_reward(torch.zeros(105, dtype=DTYPE), 1, 0.001)[masked.goals[1], 0].item() == 1.0


# ----------------------------------------------------------------------------------------------- leader reward
def test_leader_reward_charges_a_cost():
    """Eq. 7 / §5.1: the β-term is a cost (≤ 0 at the goal), not the bonus the printed sign would give."""
    for beta in (1.0, 3.0):
        env = FourRooms(FourRoomsConfig(beta=beta))
        x = torch.randn(env.x_dim, generator=torch.Generator().manual_seed(0), dtype=DTYPE)
        for xi in CONTEXTS:
            rbar = env.leader_reward(x, xi)
            cost = env.cost(x).item()
            assert cost > 0
            assert rbar[env.goals[xi], 0].item() == pytest.approx(-beta * cost)
            assert rbar[env.plus_one, 0].item() == 1.0
            assert rbar[env.sink].abs().max().item() == 0.0
        # Σ_{s,a} as printed is |A| = 4 times the per-state L1 norm that the authors' code charges
        per_state = FourRooms(FourRoomsConfig(beta=beta, cost_over_actions=False)).cost(x).item()
        assert cost == pytest.approx(4 * per_state)
        assert per_state == pytest.approx(-env.penalty(x).sum().item())


def test_spending_budget_lowers_the_leader_value_at_a_fixed_policy(env):
    x_free = torch.zeros(env.x_dim, dtype=DTYPE)
    x_free[-1] = 40.0
    x_spent = torch.zeros(env.x_dim, dtype=DTYPE)
    for xi in CONTEXTS:
        pi = torch.full((105, 4), 0.25, dtype=DTYPE)
        assert env.leader_value(pi, x_spent, xi) < env.leader_value(pi, x_free, xi)
    # a cost-free x: the value is the discounted number of visits to s+1 (goal 2's shortest path passes nearby)
    solver = WarmSoftSolver(env, 0.001)
    assert solver.leader_value(solver.solve(x_free, 1), x_free, 1) == pytest.approx(0.0, abs=1e-3)  # slips only
    assert 0.5 < solver.leader_value(solver.solve(x_free, 2), x_free, 2) < 1.0


# ----------------------------------------------------------------------------------------------- oracle
@pytest.mark.parametrize("lam", [0.001, 0.003, 0.005])
def test_warm_solver_matches_core_solve_soft_at_tiny_temperatures(env, lam):
    gen = torch.Generator().manual_seed(1)
    solver = WarmSoftSolver(env, lam)
    for step in range(3):  # the warm start must not change the fixed point
        x = env.init_x(gen) + 0.5 * step * torch.randn(env.x_dim, generator=gen, dtype=DTYPE)
        for xi in CONTEXTS:
            r = env.follower_reward(x, xi, lam)
            ref = solve_soft(r, env.mdp(xi, lam))
            torch.testing.assert_close(soft_bellman(ref.Q, r, env.mdp(xi, lam)), ref.Q, atol=1e-10, rtol=0)
            torch.testing.assert_close(solver.solve(x, xi), ref.pi, atol=1e-9, rtol=0)
            pi = solver.pi[xi]
            assert solver.leader_value(pi, x, xi) == pytest.approx(env.leader_value(pi, x, xi).item())


# ----------------------------------------------------------------------------------------------- sampling helpers
def test_discounted_sums_match_loops():
    rng = np.random.default_rng(0)
    T, E = 41, 3
    tau = np.zeros((T, E), dtype=np.int64)
    for e in range(E):
        c = 0
        for t in range(T):
            c = 0 if (t > 0 and rng.random() < 0.15) else c
            tau[t, e] = c
            c += 1
    v = rng.normal(size=(T, E))
    for gamma in (0.99, 0.3):
        go, fr = np.zeros((T, E)), np.zeros((T, E))
        for e in range(E):
            for t in range(T):
                k = t
                while k < T and (k == t or tau[k, e] != 0):
                    go[t, e] += gamma ** (k - t) * v[k, e]
                    k += 1
                k = t
                while k >= 0:
                    fr[t, e] += gamma ** (t - k) * v[k, e]
                    if tau[k, e] == 0:
                        break
                    k -= 1
        vt, taut = torch.from_numpy(v), torch.from_numpy(tau)
        np.testing.assert_allclose(discounted_to_go(vt, taut, gamma).numpy(), go, atol=1e-12)
        np.testing.assert_allclose(discounted_from_start(vt, taut, gamma).numpy(), fr, atol=1e-12)


def test_sampler_reproduces_transition_frequencies(env):
    P = env.transitions(2)
    s = torch.full((200_000,), env.index[(9, 3)])
    a = torch.full((200_000,), RIGHT)
    nxt = Simulator(P).step(s, a, torch.Generator().manual_seed(0))
    freq = torch.bincount(nxt, minlength=105) / len(s)
    torch.testing.assert_close(freq.to(DTYPE), P[s[0], RIGHT], atol=5e-3, rtol=0)
    assert set(nxt.unique().tolist()) == set(torch.nonzero(P[s[0], RIGHT]).flatten().tolist())


# ----------------------------------------------------------------------------------------------- HPGD estimators
def _small_problem(seed=0):
    """A 4-state, 3-action soft MDP (γ = 0.5, λ = 1) with x-dependent follower and leader rewards."""
    gen = torch.Generator().manual_seed(seed)
    S, A, d = 4, 3, 3
    mdp = random_mdp(S, A, 0.5, 1.0, gen)
    F = torch.randn(S, A, d, generator=gen, dtype=DTYPE)
    G = torch.randn(S, A, d, generator=gen, dtype=DTYPE)
    Rb = torch.rand(S, A, generator=gen, dtype=DTYPE)
    x = torch.randn(d, generator=gen, dtype=DTYPE)

    def reward_fn(z):
        return torch.tanh(F @ z)

    def leader_reward_fn(z):
        return Rb + 0.2 * torch.tanh(G @ z)

    def leader_return(z, pi):
        V = torch.linalg.solve(
            torch.eye(S, dtype=DTYPE) - mdp.gamma * mdp.policy_transition(pi), (pi * leader_reward_fn(z)).sum(1)
        )
        return mdp.rho @ V

    return mdp, x, reward_fn, leader_reward_fn, leader_return


def test_alg5_estimator_is_unbiased_on_a_small_instance():
    """Mean of 1.6M Algorithm-5 samples vs the exact hypergradient of the leader's return (Prop. 4, Eq. 8)."""
    mdp, x, reward_fn, leader_reward_fn, leader_return = _small_problem()
    exact, sol = exact_hypergradient(x, reward_fn, leader_return, mdp)
    gen = torch.Generator().manual_seed(0)
    chunks = [alg5_weights(mdp, sol.pi, leader_reward_fn(x), 400_000, gen) for _ in range(4)]
    est = torch.stack([w.ascent(x, reward_fn, leader_reward_fn) for w in chunks]).mean(0)
    assert _cos(est, exact) >= 0.99
    assert (est - exact).norm() <= 0.05 * exact.norm()
    # the best-response part (Theorem 1) matters here: it is not just the direct ∇r̄ term
    direct, _ = exact_hypergradient(x, reward_fn, lambda z, pi: leader_return(z, pi.detach()), mdp)
    assert (exact - direct).norm() > 0.3 * exact.norm()


def test_pooled_estimator_converges_to_the_exact_hypergradient_on_four_rooms(env):
    """The Table-3 estimator (Prop. 1, tabular every-visit MC) at λ = 0.001 on one 6.4M-step batch."""
    lam, xi = 0.001, 2
    x = env.init_x(torch.Generator().manual_seed(0))
    exact, sol = exact_hypergradient(
        x, lambda z: env.follower_reward(z, xi, lam), lambda z, pi: env.leader_value(pi, z, xi), env.mdp(xi, lam)
    )
    rbar = env.leader_reward(x, xi)
    gen = torch.Generator().manual_seed(1)
    w = pooled_estimator(env.mdp(xi, lam), sol.pi, rbar, 32_000, 200, 200, gen, env.terminal())
    assert w.env_steps == 6_400_000
    est = w.ascent(x, lambda z: env.follower_reward(z, xi, lam), lambda z: env.leader_reward(z, xi))
    assert _cos(est, exact) >= 0.99
    assert (est - exact).norm() <= 0.05 * exact.norm()


def test_amd_gradient_is_the_core_exact_hypergradient_and_ascends(env):
    lam = 0.003
    solver = WarmSoftSolver(env, lam)
    x = 0.3 * torch.randn(env.x_dim, generator=torch.Generator().manual_seed(2), dtype=DTYPE)
    for xi in CONTEXTS:
        g = exact_leader_gradient(env, solver, x, xi)
        ref, _ = exact_hypergradient(
            x,
            lambda z, xi=xi: env.follower_reward(z, xi, lam),
            lambda z, pi, xi=xi: env.leader_value(pi, z, xi),
            env.mdp(xi, lam),
        )
        torch.testing.assert_close(g, ref, atol=1e-10, rtol=1e-8)
        # sign convention (docs/theory/hpgd_four_rooms.md §1): a small step along +ĝ raises the leader's return
        # (descends F)
        f0 = solver.leader_value(solver.solve(x, xi), x, xi)
        x1 = x + 1e-3 * clip_global_norm(g, 1.0)
        assert solver.leader_value(solver.solve(x1, xi), x1, xi) > f0


def test_clip_global_norm():
    g = torch.tensor([3.0, 4.0], dtype=DTYPE)
    torch.testing.assert_close(clip_global_norm(g, 1.0), torch.tensor([0.6, 0.8], dtype=DTYPE))
    torch.testing.assert_close(clip_global_norm(0.1 * g, 1.0), 0.1 * g)


# ----------------------------------------------------------------------------------------------- methods
def test_runs_are_seeded_and_report_the_metric():
    common = dict(lam=0.005, beta=1.0, iterations=12, lr=1.0, curve_points=3)
    a = run_hpgd(TabularHPGDConfig(**common, steps_per_gradient=1000, num_envs=10), seed=3)
    b = run_hpgd(TabularHPGDConfig(**common, steps_per_gradient=1000, num_envs=10), seed=3)
    assert a.metric == b.metric and a.env_steps == 12 * 1000 and a.oracle_calls == 12
    z = run_zero_order(ZeroOrderConfig(**common), seed=0)
    assert z.oracle_calls == 24 and math.isfinite(z.metric)
    m = run_amd(AMDConfig(**common), seed=0)
    assert 0.0 <= m.budget_used <= 1.0 and m.curve[0][0] == 0
    alg5 = run_hpgd(TabularHPGDConfig(**common, estimator="alg5", steps_per_gradient=500), seed=0)
    assert alg5.env_steps >= 12 * 500


def test_reproduction_script_one_cell_tiny_budget(tmp_path):
    spec = importlib.util.spec_from_file_location(
        "reproduce_hpgd_four_rooms", Path(__file__).parents[1] / "scripts" / "reproduce_hpgd_four_rooms.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "table.md"
    argv = ["--cells", "0.001:1", "--seeds", "2", "--iterations", "15", "--hpgd-steps", "1000", "--out", str(out)]
    assert module.main(argv) == 0
    text = out.read_text()
    row = next(line for line in text.splitlines() if line.startswith("| 0.001 | 1 |"))
    assert row.count("±") == 6  # ours and paper for the three methods
    assert "0.91 ± 0.088" in row and "0.58 ± 0.000" in row
    runs = json.loads(out.with_suffix(".json").read_text())["runs"]
    assert len(runs) == 6 and {r["method"] for r in runs} == {"HPGD", "AMD", "Zero-Order"}
    assert "Missing runs" not in text


@pytest.mark.slow
def test_hpgd_improves_on_the_initial_objective():
    res = run_hpgd(TabularHPGDConfig(lam=0.005, beta=1.0, iterations=300, lr=1.0), seed=0)
    assert res.metric > res.curve[0][1] + 0.3
