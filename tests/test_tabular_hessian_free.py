"""Hessian-free two-follower penalty method: eq. (11) is the gradient of the proxy (10), the printed Alg. 1 l.15 sign
is not, and on the toy problems the printed sign diverges while eq. (11) converges."""

import pytest
import torch

from bilevel_rl.tabular.core.soft_mdp import DTYPE, policy_evaluation, random_mdp
from bilevel_rl.tabular.repro.hessian_free import (
    QuadraticBilevel,
    TabularHessianFreeConfig,
    TabularRewardShaping,
    reward_direction,
    run_hessian_free,
)

torch.set_num_threads(1)


def _tabular(seed=0, c=0.01):
    g = torch.Generator().manual_seed(seed)
    mdp = random_mdp(5, 3, 0.9, 0.3, g)
    return TabularRewardShaping(mdp, torch.rand(5, 3, generator=g, dtype=DTYPE), c), g


def _fd(fun, z, eps=1e-6):
    out = torch.zeros_like(z)
    for i in range(z.numel()):
        e = torch.zeros(z.numel(), dtype=DTYPE)
        e[i] = eps
        out.view(-1)[i] = (fun(z + e.view_as(z)) - fun(z - e.view_as(z))) / (2 * eps)
    return out


def _rel(a, b):
    return float((a - b).norm() / b.norm())


def test_tabular_closed_form_gradients_match_autograd():
    """∇_λ J, ∇_λ G by the soft policy gradient and ∇_φ J as the discounted occupancy (eq. 12) against autograd."""
    prob, g = _tabular()
    phi = torch.randn(5, 3, generator=g, dtype=DTYPE).requires_grad_(True)
    lam = torch.randn(5, 3, generator=g, dtype=DTYPE).requires_grad_(True)
    pi = torch.softmax(lam, -1)
    G = -prob.mdp.rho @ policy_evaluation(pi, prob.r_true, prob.mdp)[1] + 0.5 * prob.c * phi.square().sum()
    J = prob.mdp.rho @ policy_evaluation(pi, phi, prob.mdp)[1]
    auto = [*torch.autograd.grad(G, [phi, lam], retain_graph=True), *torch.autograd.grad(J, [phi, lam])]
    for a, b in zip(auto, prob.grads(phi.detach(), lam.detach()), strict=True):
        assert float((a - b).norm()) < 1e-12


@pytest.mark.parametrize("sigma", [0.3, 0.05])
def test_eq11_is_the_gradient_of_the_proxy_and_the_printed_sign_is_not(sigma):
    """Danskin: with exact followers, eq. (11) equals ∇Φ_σ (finite differences of eq. 10); the printed l.15 does not."""
    prob, g = _tabular(1)
    phi = torch.randn(5, 3, generator=g, dtype=DTYPE)
    lam, lam_sigma = prob.exact_followers(phi, sigma)
    fd = _fd(lambda z: prob.proxy_objective(z, sigma), phi)
    for at in ("sigma_follower", "star_follower"):  # ∇_φG = cφ here, so where ∇_φG is evaluated does not matter here
        eq11 = reward_direction(prob, phi, lam, lam_sigma, TabularHessianFreeConfig(sigma=sigma, grad_G_at=at))
        printed = reward_direction(prob, phi, lam, lam_sigma, TabularHessianFreeConfig(sigma=sigma, sign="printed"))
        assert _rel(eq11, fd) < 1e-5
        assert _rel(printed, fd) > 1.0
    # ‖∇Φ_σ − ∇Φ‖ = O(σ)
    assert _rel(fd, prob.hypergradient(phi)) < sigma


def test_quadratic_directions_have_the_closed_forms():
    q = QuadraticBilevel.reference_instance()
    phi = torch.randn(3, generator=torch.Generator().manual_seed(0), dtype=DTYPE)
    sigma = 0.05
    lam, lam_sigma = q.exact_followers(phi, sigma)
    implicit = q.A.T @ (q.A @ phi - q.a) / (1 + sigma)
    eq11 = reward_direction(q, phi, lam, lam_sigma, TabularHessianFreeConfig(sigma=sigma))
    printed = reward_direction(q, phi, lam, lam_sigma, TabularHessianFreeConfig(sigma=sigma, sign="printed"))
    torch.testing.assert_close(eq11, q.c * phi + implicit, atol=1e-12, rtol=0)
    torch.testing.assert_close(printed, q.c * phi - implicit, atol=1e-12, rtol=0)
    torch.testing.assert_close(eq11, _fd(lambda z: q.proxy_objective(z, sigma), phi), atol=1e-7, rtol=0)


def test_printed_sign_diverges_and_eq11_converges_on_the_quadratic_toy():
    """Settings of the sign study (σ = 0.05, K = 200, η = 0.02, τ_1 = 2), 60 outer steps: eq. (11) cuts ‖∇Φ‖ by 2×
    while the printed sign blows ‖∇Φ‖ and ‖φ‖ up, monotonically."""
    q = QuadraticBilevel.reference_instance()
    good = run_hessian_free(q, TabularHessianFreeConfig(outer_steps=60, log_every=20))
    bad = run_hessian_free(q, TabularHessianFreeConfig(outer_steps=60, log_every=20, sign="printed"))
    g0 = good.rows[0]["hypergrad_norm"]
    assert good.rows[-1]["hypergrad_norm"] < 0.5 * g0
    assert good.rows[-1]["hyper_objective"] < good.rows[0]["hyper_objective"]
    norms = [r["hypergrad_norm"] for r in bad.rows]
    assert norms == sorted(norms) and norms[-1] > 50 * g0
    assert bad.rows[-1]["phi_norm"] > 10 and bad.rows[-1]["hyper_objective"] > 100 * bad.rows[0]["hyper_objective"]


def test_blowup_guard_stops_a_diverging_run():
    q = QuadraticBilevel.reference_instance()
    res = run_hessian_free(q, TabularHessianFreeConfig(outer_steps=400, inner_steps=20, sign="printed", blowup=50.0))
    assert res.diverged and res.rows[-1]["phi_norm"] > 50 and res.rows[-1]["t"] < 400
    assert not run_hessian_free(q, TabularHessianFreeConfig(outer_steps=5, inner_steps=20)).diverged


def test_tabular_printed_sign_moves_away_and_eq11_approaches_the_solution():
    """Reward shaping on a soft MDP: eq. (11) reaches Φ* within 1e-3; the printed sign drives Φ up, away from Φ*."""
    prob, _ = _tabular()
    phi_star = min(prob.hyper_objective(_descend(prob)), prob.hyper_objective(torch.zeros(5, 3, dtype=DTYPE)))
    cfg = {"sigma": 0.1, "eta": 0.2, "tau1": 0.3, "inner_steps": 40, "outer_steps": 30, "log_every": 10}
    good = run_hessian_free(prob, TabularHessianFreeConfig(**cfg))
    bad = run_hessian_free(prob, TabularHessianFreeConfig(**cfg, sign="printed"))
    phi0 = good.rows[0]["hyper_objective"]
    assert abs(good.rows[-1]["hyper_objective"] - phi_star) < 1e-3
    assert bad.rows[-1]["hyper_objective"] > phi0 + 2.0  # Φ0 − Φ* ≈ 0.27: the printed run goes the other way
    assert bad.rows[-1]["phi_norm"] > 3 * good.rows[-1]["phi_norm"]


def _descend(prob, steps=300, lr=0.2):
    x = torch.zeros(5, 3, dtype=DTYPE)
    for _ in range(steps):
        x = x - lr * prob.hypergradient(x)
    return x
