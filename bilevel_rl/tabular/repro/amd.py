"""AMD baseline (HPGD paper Algorithm 9, "(modified) Adaptive Model Design" of Chen et al. 2022) on Four-Rooms.

Algorithm 9 propagates soft value iteration together with its forward-mode derivatives (``∇Q``, ``Q̃``) for ``K``
warm-started sweeps per outer step and ascends ``Ṽ_K``, the derivative of the leader's return. Run to convergence
(the authors use 100 sweeps per step) those recursions give the exact hypergradient of ``f(x, π*_{x,ξ}, ξ)`` for
the sampled ``ξ``; we compute that fixed point directly with the core's implicit differentiation
(the adjoint of :func:`bilevel_rl.tabular.core.soft_mdp.exact_hypergradient`, via
:func:`~bilevel_rl.tabular.core.soft_mdp.implicit_policy_vjp`, at the warm-started exact soft optimum of
:class:`~bilevel_rl.tabular.repro.hpgd.WarmSoftSolver`; full model access, one oracle query per step). The
extraction typos of the printed Algorithm 9 (App. F.1.1: ``exp(λQ)`` for ``softmax(Q/λ)``, ``λ A^u ∇A`` for
``A^u ∇A / λ``) do not arise in this form. Update: ``x ← x + α clip(ĝ)`` (ascent on the return = descent on ``F``,
``docs/theory/hpgd_four_rooms.md`` §1).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from bilevel_rl.tabular.core.soft_mdp import SoftSolution, implicit_policy_vjp
from bilevel_rl.tabular.repro.four_rooms import FourRooms, FourRoomsConfig
from bilevel_rl.tabular.repro.hpgd import GradFn, LeaderConfig, RunResult, WarmSoftSolver, make_env, run_leader


@dataclass
class AMDConfig(LeaderConfig):
    """Every AMD hyperparameter: the shared leader settings (``λ, β``, iterations, ``α``, clipping, metric window).

    AMD has no estimator settings: its hypergradient is exact (deterministic given ``ξ``).
    """


def exact_leader_gradient(env: FourRooms, solver: WarmSoftSolver, x: torch.Tensor, xi: int) -> torch.Tensor:
    """``d/dx V̄^{π*_{x,ξ}}(S)`` by implicit differentiation (same adjoint as ``exact_hypergradient``).

    ``∂f/∂x`` (the cost term of ``r̄``) plus ``Σ_{s,a} W(s, a) ∇_x r_x(s, a)`` with ``W`` the adjoint weights of
    :func:`~bilevel_rl.tabular.core.soft_mdp.implicit_policy_vjp` (SoBiRL eq. 8-10 / HPGD Thm. 1 with ``ν`` summed out).
    """
    lam = solver.lam
    mdp = env.mdp(xi, lam)
    pi = solver.solve(x, xi).clone().requires_grad_(True)
    xx = x.detach().clone().requires_grad_(True)
    f = env.leader_value(pi, xx, xi)
    g_x, g_pi = torch.autograd.grad(f, [xx, pi])
    W = implicit_policy_vjp(g_pi, SoftSolution(torch.empty(0), torch.empty(0), pi.detach()), mdp)
    (g_r,) = torch.autograd.grad(env.follower_reward(xx, xi, lam), xx, grad_outputs=W)
    return (g_x + g_r).detach()


def amd_gradient_fn(env: FourRooms, config: AMDConfig) -> GradFn:
    """``ĝ = d/dx V̄^{π*_{x,ξ}}(S)`` exactly, for the sampled context (Algorithm 9 at its fixed point)."""
    solver = WarmSoftSolver(env, config.lam)

    def grad(x: torch.Tensor, xi: int, t: int) -> tuple[torch.Tensor, int, int]:
        return exact_leader_gradient(env, solver, x, xi), 0, 1

    return grad


def run_amd(config: AMDConfig, seed: int, env_config: FourRoomsConfig | None = None) -> RunResult:
    """One AMD run on Four-Rooms (seed → one torch Generator for ``x_0`` and the contexts)."""
    env = make_env(config, env_config)
    return run_leader("AMD", config, seed, env, amd_gradient_fn(env, config), torch.Generator().manual_seed(seed))
