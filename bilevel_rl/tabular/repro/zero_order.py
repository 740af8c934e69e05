"""Zero-Order baseline (HPGD paper Algorithm 10) on Four-Rooms.

Per outer step: ``ξ ~ P_ξ``, ``z ~ N(0, I_d)``, two oracle queries (``π*_{x_t,ξ}`` and ``π*_{x_t + u_t z,ξ}``) and

    ĝ = [f(x_t + u_t z, π*_{x_t+u_t z,ξ}, ξ) - f(x_t, π*_{x_t,ξ}, ξ)] / u_t · z,     x_{t+1} = x_t + α clip(ĝ),

with ``u_t = C / t`` (``t ≥ 1``) and ``f`` the leader's exact return ``V̄^{π*}(S)`` for the sampled context (the
authors' Four-Rooms code uses exact values). ``z`` perturbs the raw logits ``x``. The ``+α`` step of Algorithm 10
(App. F.1.2) ascends the return, i.e. descends ``F`` (``docs/theory/hpgd_four_rooms.md`` §1).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from bilevel_rl.schedules import polynomial_decay
from bilevel_rl.tabular.core.soft_mdp import DTYPE
from bilevel_rl.tabular.repro.four_rooms import FourRooms, FourRoomsConfig
from bilevel_rl.tabular.repro.hpgd import GradFn, LeaderConfig, RunResult, WarmSoftSolver, make_env, run_leader


@dataclass
class ZeroOrderConfig(LeaderConfig):
    """Every Zero-Order hyperparameter.

    Attributes:
        C: perturbation scale of ``u_t = C / t`` (the paper tunes it over {0.1, 0.5, 1.0, 2.0, 5.0}).
    """

    C: float = 1.0


def zero_order_gradient_fn(env: FourRooms, config: ZeroOrderConfig, generator: torch.Generator) -> GradFn:
    """Two-point Gaussian-smoothing estimate of ``d/dx V̄^{π*_{x,ξ}}(S)`` (Algorithm 10)."""
    solver = WarmSoftSolver(env, config.lam)

    def grad(x: torch.Tensor, xi: int, t: int) -> tuple[torch.Tensor, int, int]:
        u = polynomial_decay(t + 1, config.C)
        z = torch.randn(env.x_dim, generator=generator, dtype=DTYPE)
        f0 = solver.leader_value(solver.solve(x, xi), x, xi)
        x1 = x + u * z
        f1 = solver.leader_value(solver.solve(x1, xi), x1, xi)
        return (f1 - f0) / u * z, 0, 2

    return grad


def run_zero_order(config: ZeroOrderConfig, seed: int, env_config: FourRoomsConfig | None = None) -> RunResult:
    """One Zero-Order run on Four-Rooms (seed → one torch Generator for ``x_0``, contexts and ``z``)."""
    env = make_env(config, env_config)
    generator = torch.Generator().manual_seed(seed)
    return run_leader("Zero-Order", config, seed, env, zero_order_gradient_fn(env, config, generator), generator)
