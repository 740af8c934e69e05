"""HPGD (HPGD paper Algorithm 1) on Four-Rooms, plus the outer loop shared with the AMD and Zero-Order baselines.

Each outer iteration draws a context ``ξ ~ Uniform{1, 2}``, queries the follower oracle for ``π^o_{x,ξ}`` (here the
exact soft optimum, ``δ ≈ 0`` in Assumption 3.2, as in the authors' code), estimates the hypergradient from
*trajectories only* (:mod:`bilevel_rl.tabular.checks.hpgd_trajectory`), clips its global norm to 1.0 (F.2.2) and steps.

**Sign convention** (``docs/theory/hpgd_four_rooms.md`` §1). ``F`` of Eq. 4 is a loss and Algorithm 1 descends it,
``x ← x - α dF/dx``. Eq. 8 / Algorithm 5 (and the baselines, Algorithms 9-10, which step with ``+α``) produce the
gradient of the leader's *return* ``-F``. Every estimator here returns that ascent direction ``ĝ ≈ -dF/dx`` and
every method steps ``x ← x + α clip(ĝ)``, which is exactly Algorithm 1's descent on ``F``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from bilevel_rl.tabular.checks.hpgd import GradientWeights, alg5_weights
from bilevel_rl.tabular.checks.hpgd_trajectory import pooled_estimator
from bilevel_rl.tabular.core.soft_mdp import DTYPE, solve_soft
from bilevel_rl.tabular.repro.four_rooms import CONTEXTS, FourRooms, FourRoomsConfig


@dataclass
class LeaderConfig:
    """Hyperparameters shared by the three leaders (HPGD §5.1, F.2.2).

    Attributes:
        lam: follower temperature ``λ`` (Table 3: 0.001, 0.003, 0.005).
        beta: leader cost weight ``β`` (Table 3: 1, 3, 5).
        iterations: outer iterations (the paper's figures run 10,000).
        lr: constant step size ``α`` (the paper picks the best of {1.0, 0.5, 0.1, 0.05, 0.01} per algorithm).
        clip_norm: global gradient-norm clipping (1.0 in F.2.2).
        init_scale: std of the initial logits ``x_0 ~ N(0, init_scale²)`` (0.01 in the authors' code).
        metric_fraction: the reported metric averages the last ``metric_fraction`` of the iterations
            (the authors average the last 1,000 of 10,000).
        metric_every: evaluate the metric every ``metric_every`` iterations inside that window.
        curve_points: number of evenly spaced learning-curve evaluations kept for reports.
    """

    lam: float = 0.001
    beta: float = 1.0
    iterations: int = 10_000
    lr: float = 0.1
    clip_norm: float = 1.0
    init_scale: float = 0.01
    metric_fraction: float = 0.1
    metric_every: int = 1
    curve_points: int = 50


@dataclass
class TabularHPGDConfig(LeaderConfig):
    """Every HPGD hyperparameter (Algorithm 1 with the estimator of Algorithm 5 / Prop. 1).

    Attributes:
        estimator: ``"pooled"`` (Prop. 1 with tabular every-visit Monte Carlo over one on-policy batch, the form
            behind the paper's Table 3, ``docs/theory/hpgd_four_rooms.md`` §3.4) or ``"alg5"`` (the mean of
            independent Algorithm-5 samples, each with two Algorithm-2 restarts; unbiased but, at ``λ = 10⁻³``, far
            too noisy at this budget).
        steps_per_gradient: environment steps per hypergradient (10,000 in F.2.2).
        num_envs: parallel auto-resetting environments of the pooled batch (``steps_per_gradient / num_envs`` each).
        max_episode_steps: episode cap of the pooled batch (the authors' 200; treated as ``done``).
        alg5_chunk: Algorithm-5 samples drawn per chunk until ``steps_per_gradient`` is spent.
    """

    estimator: str = "pooled"
    steps_per_gradient: int = 10_000
    num_envs: int = 50
    max_episode_steps: int = 200
    alg5_chunk: int = 64


@dataclass
class RunResult:
    """Outcome of one (method, λ, β, seed) run.

    Attributes:
        metric: mean over the metric window of the ξ-averaged exact leader value ``E_ξ V̄^{π*_{x,ξ}}(S)``.
        curve: ``(iteration, value)`` pairs of the same quantity along training.
        budget_used: fraction of the ``-0.2`` penalty budget allocated to cells at the end (``1 - softmax(x)_last``).
        cpu_seconds: process CPU time of the run.
        env_steps: environment steps sampled by the leader (HPGD only).
        oracle_calls: follower best-response computations used by the update rule (metric evaluations excluded).
    """

    method: str
    lam: float
    beta: float
    seed: int
    metric: float
    curve: list[tuple[int, float]]
    budget_used: float
    cpu_seconds: float
    env_steps: int = 0
    oracle_calls: int = 0
    config: dict = field(default_factory=dict)


class WarmSoftSolver:
    """Exact soft policy iteration (:func:`~bilevel_rl.tabular.core.soft_mdp.solve_soft`), warm-started per context.

    Each context keeps its previous soft optimum as the start of the next solve; at ``λ = 10⁻³`` that converges in a
    few rounds. Warm starts only shorten the iteration, they do not change the answer (the soft optimum is unique).
    Used as the follower oracle ``π^o`` (δ ≈ 0) and for the exact evaluation of the metric.
    """

    def __init__(self, env: FourRooms, lam: float, tol: float = 1e-12, max_iter: int = 200) -> None:
        self.env, self.lam, self.tol, self.max_iter = env, lam, tol, max_iter
        self.pi: dict[int, torch.Tensor] = {}

    def solve(self, x: torch.Tensor, xi: int) -> torch.Tensor:
        """``π*_{x,ξ}`` as an ``(S, A)`` table."""
        r = self.env.follower_reward(x.detach(), xi, self.lam)
        sol = solve_soft(r, self.env.mdp(xi, self.lam), self.tol, self.max_iter, pi0=self.pi.get(xi))
        self.pi[xi] = sol.pi
        return sol.pi

    def leader_value(self, pi: torch.Tensor, x: torch.Tensor, xi: int) -> float:
        """Exact unregularised leader value ``V̄^π(S)`` (Eq. 7 as a return)."""
        with torch.no_grad():
            return float(self.env.leader_value(pi, x.detach(), xi))

    def objective(self, x: torch.Tensor) -> float:
        """The Table 3 metric ``E_ξ V̄^{π*_{x,ξ}}(S)`` at ``x`` (ξ-averaged, ``docs/theory/hpgd_four_rooms.md`` §4)."""
        return float(np.mean([self.leader_value(self.solve(x, xi), x, xi) for xi in CONTEXTS]))


def clip_global_norm(g: torch.Tensor, max_norm: float) -> torch.Tensor:
    """``g · min(1, max_norm / ‖g‖)`` (optax ``clip_by_global_norm``; one leader tensor)."""
    norm = float(g.norm())
    return g * (max_norm / norm) if norm > max_norm else g


GradFn = Callable[[torch.Tensor, int, int], tuple[torch.Tensor, int, int]]
"""``(x, ξ, t) ↦ (ascent direction ĝ, env steps used, oracle calls used)``."""


def run_leader(
    method: str, config: LeaderConfig, seed: int, env: FourRooms, grad_fn: GradFn, generator: torch.Generator
) -> RunResult:
    """The common outer loop ``x_{t+1} = x_t + α clip(ĝ_t)`` with ``ξ_t ~ Uniform{1, 2}`` (Alg. 1, 9, 10).

    The metric (``docs/theory/hpgd_four_rooms.md`` §4) is the exact ξ-averaged leader value, averaged over the last
    ``metric_fraction`` of the iterations; it uses its own warm solver so that it never touches the update's randomness.
    """
    start_cpu = time.process_time()
    x = config.init_scale * torch.randn(env.x_dim, generator=generator, dtype=DTYPE)
    evaluator = WarmSoftSolver(env, config.lam)
    n = config.iterations
    window_start = n - max(1, int(round(config.metric_fraction * n)))
    curve_at = set(np.linspace(0, n, config.curve_points, dtype=int).tolist()) if config.curve_points else set()
    curve: list[tuple[int, float]] = []
    window: list[float] = []
    steps = calls = 0
    for t in range(n + 1):
        in_window = t > window_start and (t - window_start) % config.metric_every == 0
        if t in curve_at or in_window:
            value = evaluator.objective(x)
            if t in curve_at:
                curve.append((t, value))
            if in_window:
                window.append(value)
        if t == n:
            break
        xi = CONTEXTS[int(torch.randint(len(CONTEXTS), (), generator=generator))]
        g, used_steps, used_calls = grad_fn(x, xi, t)
        steps, calls = steps + used_steps, calls + used_calls
        x = x + config.lr * clip_global_norm(g, config.clip_norm)
    budget_used = float(1.0 - torch.softmax(x, 0)[-1])
    return RunResult(
        method=method,
        lam=config.lam,
        beta=config.beta,
        seed=seed,
        metric=float(np.mean(window)),
        curve=curve,
        budget_used=budget_used,
        cpu_seconds=time.process_time() - start_cpu,
        env_steps=steps,
        oracle_calls=calls,
        config=asdict(config),
    )


def make_env(config: LeaderConfig, env_config: FourRoomsConfig | None = None) -> FourRooms:
    """Four-Rooms with the run's ``β`` (other environment constants from ``env_config`` or the paper)."""
    base = env_config or FourRoomsConfig()
    return FourRooms(FourRoomsConfig(**{**asdict(base), "beta": config.beta}))


def hpgd_gradient_fn(env: FourRooms, config: TabularHPGDConfig, generator: torch.Generator) -> GradFn:
    """HPGD's per-iteration estimate: oracle ``π^o_{x,ξ}`` then trajectories → ``ĝ ≈ -dF/dx`` (Alg. 1 + Alg. 5)."""
    solver = WarmSoftSolver(env, config.lam)
    terminal = env.terminal()
    if config.estimator not in ("pooled", "alg5"):
        raise ValueError(f"unknown estimator {config.estimator!r}")

    def grad(x: torch.Tensor, xi: int, t: int) -> tuple[torch.Tensor, int, int]:
        pi = solver.solve(x, xi)
        mdp = env.mdp(xi, config.lam)
        rbar = env.leader_reward(x.detach(), xi)
        if config.estimator == "pooled":
            steps_per_env = max(1, config.steps_per_gradient // config.num_envs)
            w = pooled_estimator(
                mdp, pi, rbar, config.num_envs, steps_per_env, config.max_episode_steps, generator, terminal
            )
        else:
            chunks: list[GradientWeights] = []
            while sum(c.env_steps for c in chunks) < config.steps_per_gradient:
                chunks.append(alg5_weights(mdp, pi, rbar, config.alg5_chunk, generator, terminal))
            w = GradientWeights(
                torch.stack([c.W_r for c in chunks]).mean(0),
                torch.stack([c.W_rbar for c in chunks]).mean(0),
                sum(c.env_steps for c in chunks),
            )
        g = w.ascent(x, lambda z: env.follower_reward(z, xi, config.lam), lambda z: env.leader_reward(z, xi))
        return g, w.env_steps, 1

    return grad


def run_hpgd(config: TabularHPGDConfig, seed: int, env_config: FourRoomsConfig | None = None) -> RunResult:
    """One HPGD run on Four-Rooms (Algorithm 1; every hyperparameter in ``config``; seed → one torch Generator)."""
    env = make_env(config, env_config)
    generator = torch.Generator().manual_seed(seed)
    return run_leader("HPGD", config, seed, env, hpgd_gradient_fn(env, config, generator), generator)
