"""Exact soft optimum and exact hypergradient against finite differences and unrolled autograd."""

import pytest
import torch

from bilevel_rl.tabular.core.soft_mdp import (
    DTYPE,
    SoftMDP,
    exact_hypergradient,
    policy_evaluation,
    random_mdp,
    soft_bellman,
    solve_soft,
    unrolled_hypergradient,
)

CASES = [(4, 3, 0.5, 1.0), (10, 5, 0.9, 0.3), (6, 2, 0.95, 2.0), (15, 4, 0.99, 0.1)]


def _problem(S, A, gamma, tau, seed):
    g = torch.Generator().manual_seed(seed)
    mdp = random_mdp(S, A, gamma, tau, g)
    F = torch.randn(S, A, 7, generator=g, dtype=DTYPE)
    target = torch.rand(S, A, generator=g, dtype=DTYPE)
    x = torch.randn(7, generator=g, dtype=DTYPE)

    def reward_fn(x):
        return torch.tanh(F @ x)

    def upper_fn(x, pi):
        return ((pi - target) ** 2).sum() + 0.1 * (x**2).sum()

    return mdp, reward_fn, upper_fn, x


@pytest.mark.parametrize(("S", "A", "gamma", "tau"), CASES)
def test_solution_is_the_soft_bellman_fixed_point(S, A, gamma, tau):
    mdp, reward_fn, _, x = _problem(S, A, gamma, tau, 0)
    r = reward_fn(x)
    sol = solve_soft(r, mdp)
    torch.testing.assert_close(soft_bellman(sol.Q, r, mdp), sol.Q, atol=1e-10, rtol=0)
    # pi* is optimal: its exact soft value equals V*, and no single-state deviation improves it
    Q_pi, V_pi = policy_evaluation(sol.pi, r, mdp)
    torch.testing.assert_close(V_pi, sol.V, atol=1e-9, rtol=0)
    other = torch.softmax(torch.randn(S, A, dtype=DTYPE), dim=1)
    assert (policy_evaluation(other, r, mdp)[1] <= sol.V + 1e-10).all()


# tolerance: central differences with eps = 1e-6 in float64 have error ~1e-9 relative; we ask for 1e-6
@pytest.mark.parametrize(("S", "A", "gamma", "tau"), CASES)
def test_exact_hypergradient_matches_finite_differences(S, A, gamma, tau):
    mdp, reward_fn, upper_fn, x = _problem(S, A, gamma, tau, 1)
    hg, _ = exact_hypergradient(x, reward_fn, upper_fn, mdp)

    def phi(z):
        return upper_fn(z, solve_soft(reward_fn(z), mdp).pi)

    eps = 1e-6
    fd = torch.stack([(phi(x + eps * e) - phi(x - eps * e)) / (2 * eps) for e in torch.eye(len(x), dtype=DTYPE)])
    assert (hg - fd).norm() <= 1e-6 * fd.norm()


@pytest.mark.parametrize(("S", "A", "gamma", "tau"), CASES[:3])
def test_exact_hypergradient_matches_unrolled_autograd(S, A, gamma, tau):
    mdp, reward_fn, upper_fn, x = _problem(S, A, gamma, tau, 2)
    hg, _ = exact_hypergradient(x, reward_fn, upper_fn, mdp)
    un = unrolled_hypergradient(x, reward_fn, upper_fn, mdp, iterations=int(40 / (1 - gamma)))
    assert (hg - un).norm() <= 1e-8 * un.norm()


def test_bad_mdp_is_refused():
    P = torch.full((2, 2, 2), 0.5, dtype=DTYPE)
    rho = torch.tensor([0.5, 0.5], dtype=DTYPE)
    with pytest.raises(ValueError, match="gamma"):
        SoftMDP(P, rho, 1.0, 1.0)
    with pytest.raises(ValueError, match="tau"):
        SoftMDP(P, rho, 0.5, 0.0)
    with pytest.raises(ValueError, match="sum to one"):
        SoftMDP(P * 2, rho, 0.5, 1.0)
