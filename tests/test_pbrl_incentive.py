"""PBRL incentive design (§5, §6.3): the NI penalty against closed forms, the Monte-Carlo estimators against exact
gradients, and short runs of both methods."""

from __future__ import annotations

import pytest
import torch

from bilevel_rl.tabular.core.soft_mdp import DTYPE
from bilevel_rl.tabular.repro import incentive as inc
from tests.helpers import one_thread  # noqa: F401


def small_game(seed: int = 0, shape: tuple[int, int, int] = (4, 3, 2), gamma: float = 0.5) -> inc.IncentiveGame:
    return inc.random_incentive_game(*shape, gamma, 0.1, torch.Generator().manual_seed(seed))


def random_point(game: inc.IncentiveGame, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    S, A1, A2 = game.shape
    return tuple(torch.randn(shape, generator=gen, dtype=DTYPE) for shape in ((S, A1, A2), (S, A1), (S, A2)))  # type: ignore[return-value]


def test_ni_function_of_a_matrix_game_matches_its_closed_form():
    """One state, γ = 0: ψ = τ lse(R π_2/τ) + τ lse(−R^T π_1/τ) + τ h(π_1) + τ h(π_2) (eq. 5.6 by hand)."""
    gen = torch.Generator().manual_seed(3)
    r = torch.rand((1, 3, 4), generator=gen, dtype=DTYPE)
    P = torch.ones((1, 3, 4, 1), dtype=DTYPE)
    tau = 0.2
    game = inc.IncentiveGame(P, P, r, r, torch.ones(1, dtype=DTYPE), 0.0, tau)
    x = torch.randn((1, 3, 4), generator=gen, dtype=DTYPE)
    pi1 = torch.softmax(torch.randn((1, 3), generator=gen, dtype=DTYPE), 1)
    pi2 = torch.softmax(torch.randn((1, 4), generator=gen, dtype=DTYPE), 1)
    R = game.reward(x)[0]

    def h(p: torch.Tensor) -> torch.Tensor:
        return (p * p.log()).sum()

    closed = (
        tau * torch.logsumexp(R @ pi2[0] / tau, 0)
        + tau * torch.logsumexp(-R.T @ pi1[0] / tau, 0)
        + tau * h(pi1[0])
        + tau * h(pi2[0])
    )
    torch.testing.assert_close(inc.ni_function(game, x, pi1, pi2), closed, rtol=1e-9, atol=1e-10)


def test_ni_gradient_of_lemma_13_matches_finite_differences_and_vanishes_at_the_equilibrium():
    game = small_game(1)
    x, t1, t2 = random_point(game, 2)
    params = [x.clone().requires_grad_(True), t1.clone().requires_grad_(True), t2.clone().requires_grad_(True)]
    psi = inc.ni_function(game, params[0], torch.softmax(params[1], 1), torch.softmax(params[2], 1))
    grads = torch.autograd.grad(psi, params)
    assert float(psi.detach()) > 0.01
    gen = torch.Generator().manual_seed(5)
    for i, g in enumerate(grads):
        d = torch.randn(g.shape, generator=gen, dtype=DTYPE)
        vals = []
        for sign in (1.0, -1.0):
            point = [p.detach().clone() for p in params]
            point[i] = point[i] + sign * 1e-5 * d
            vals.append(float(inc.ni_function(game, point[0], torch.softmax(point[1], 1), torch.softmax(point[2], 1))))
        fd = (vals[0] - vals[1]) / 2e-5
        assert abs(fd - float((g * d).sum())) < 1e-6 * max(1.0, abs(fd)), (i, fd, float((g * d).sum()))
    th1, th2 = inc.exact_equilibrium(game, x)
    assert float(inc.ni_function(game, x, torch.softmax(th1, 1), torch.softmax(th2, 1))) < 1e-9


@pytest.mark.parametrize("which", ["value_theta1", "value_theta2", "value_x", "designer_theta1", "designer_theta2"])
def test_monte_carlo_gradients_match_the_exact_ones(which):
    """100 000 trajectories of length 40 (truncation γ^40 ≈ 1e-12): cosine ≥ 0.995, rel. error ≤ 0.1 (measured
    0.003–0.06 at this size, shrinking as 1/√n: 0.003–0.025 at 800 000)."""
    game = small_game(0)
    x, t1, t2 = random_point(game, 1)
    xv, t1v, t2v = (z.clone().requires_grad_(True) for z in (x, t1, t2))
    p1, p2 = torch.softmax(t1v, 1), torch.softmax(t2v, 1)
    target = inc.designer_return(game, p1, p2) if which.startswith("designer") else inc.game_value(game, xv, p1, p2)
    wrt = {"theta1": t1v, "theta2": t2v, "x": xv}[which.split("_")[1]]
    (exact,) = torch.autograd.grad(target, wrt)
    gen = torch.Generator().manual_seed(7)
    pi1, pi2 = torch.softmax(t1, 1), torch.softmax(t2, 1)
    est = torch.zeros_like(exact)
    for _ in range(100):
        ro = inc.sample(game, pi1, pi2, 1000, 40, gen, designer=which.startswith("designer"))
        if which.startswith("value_theta"):
            est += inc.value_pg(game, x, pi1, pi2, ro, int(which[-1])) / 100
        elif which == "value_x":
            est += inc.value_x_grad(game, x, ro) / 100
        else:
            est += inc.designer_pg(game, pi1 if which.endswith("1") else pi2, ro, int(which[-1])) / 100
    cos = float((est * exact).sum() / est.norm() / exact.norm())
    rel = float((est - exact).norm() / exact.norm())
    assert cos >= 0.995 and rel <= 0.1, (cos, rel)


def test_meta_gradient_differentiates_the_players_step_in_x():
    """``value_pg`` is affine in ``σ(x)``: its autograd JVP in ``x`` equals a finite difference."""
    game = small_game(2)
    x, t1, t2 = random_point(game, 3)
    pi1, pi2 = torch.softmax(t1, 1), torch.softmax(t2, 1)
    ro = inc.sample(game, pi1, pi2, 50, 5, torch.Generator().manual_seed(0))
    d = torch.randn(x.shape, generator=torch.Generator().manual_seed(1), dtype=DTYPE)
    w = torch.randn(t1.shape, generator=torch.Generator().manual_seed(2), dtype=DTYPE)
    xv = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad((inc.value_pg(game, xv, pi1, pi2, ro, 1) * w).sum(), xv)
    plus = (inc.value_pg(game, x + 1e-6 * d, pi1, pi2, ro, 1) * w).sum()
    minus = (inc.value_pg(game, x - 1e-6 * d, pi1, pi2, ro, 1) * w).sum()
    assert float((g * d).sum()) != 0.0
    torch.testing.assert_close((g * d).sum(), (plus - minus) / 2e-6, rtol=1e-6, atol=1e-9)


def test_short_runs_close_the_ne_gap_and_pbrl_raises_the_designer_return():
    """§6.3 game (10 × 5 × 5), 240k environment steps: every method lowers ψ; PBRL-NI moves x and raises −f."""
    game = inc.random_incentive_game(10, 5, 5, 0.5, 0.1, torch.Generator().manual_seed(0))
    runs = {
        m: inc.run(game, inc.IncentiveConfig(method=m, env_steps=240_000, log_every=10_000)) for m in ("pbrl", "none")
    }
    for method, result in runs.items():
        first, last = result.rows[0], result.rows[-1]
        assert last["env_steps"] >= 240_000
        assert last["ne_gap"] < 0.8 * first["ne_gap"], (method, first, last)
    pbrl = runs["pbrl"].rows
    assert pbrl[-1]["designer_return"] > pbrl[0]["designer_return"] + 0.03
    assert pbrl[-1]["incentive_std"] > 1e-4 and runs["none"].rows[-1]["incentive_std"] < 1e-12  # x frozen at 0


@pytest.mark.parametrize(
    ("kwargs", "key"), [({"method": "ppo"}, "method"), ({"lam": 0.0}, "lam"), ({"batch": 0}, "batch")]
)
def test_bad_settings_are_refused_with_one_line(kwargs, key):
    with pytest.raises(ValueError, match=key):
        inc.IncentiveConfig(**kwargs)
