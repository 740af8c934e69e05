"""PPA-BRL §5 (Chakraborty et al., ICML 2023 workshop): cost-effective navigation, goal placement by bilevel RL.

**Task (§5, Fig. 1).** An ``N × N`` grid world; the agent starts at ``(0, 0)`` (``ρ = δ_{(0,0)}``) and has the five
deterministic actions stay / ±x / ±y (a move into the border leaves it in place). The design variable is the goal
position ``ν = (G_x, G_y) ∈ [0, N−1]²``, continuous so that ``∇_ν`` exists. §5 only says that the agent "receives a
reward r_ν based on its speed in reaching the goal"; we use the squared-distance form of §2.1 Example 1
(``r_ν(s_h, a_h) = −λ_1 ‖s_h − ν‖² …``, eq. 6's inner reward without the velocity term)

    r_ν(s, a) = −κ ‖p(s) − ν‖²,                                                                       (R)

a cost paid at every step, so that the cumulated cost grows with the time the agent needs to reach the goal and
stay there. It is smooth in ``ν`` (``∇_ν r = 2κ (p(s) − ν)``) and, unlike a bounded bump (whose cumulated reward
falls about linearly with the goal's distance, so that ``G`` is maximised at the start or at ``T``), it makes the inner
cost grow faster than linearly with the distance, so each λ has its own interior optimum (our choice).

**Follower (eq. 3, with entropy).** The exact soft-optimal tabular softmax policy ``π_θ = softmax(θ)``,
``θ*(ν) = Q*_ν/τ``, of ``V(ν, θ) = E_ρ[Σ_t γ^t (r_ν(s_t, a_t) − τ log π_θ(a_t|s_t))]`` (infinite horizon; the sampled
estimators truncate at ``H_ℓ``). The temperature ``τ > 0`` is not in the paper: without it the optimal softmax
policy is deterministic, its logits diverge, and the unique finite ``θ*(ν)`` that §2 and Assumption 4 (§4) need does
not exist. ``θ*`` is unique only up to a per-state shift (the Hessian is singular, see :mod:`..checks.ppa`).

**Leader (eqs. 4–5, 8, 13).** §5: ``R_outer = R_inner + λ R_util`` with ``R_util(ν) = −‖T − ν‖`` (``T`` the target,
here the far corner ``(N−1, N−1)``). In the notation of eq. (4): ``Z(ν) = λ R_util(ν)`` and
``D(π) = E_{τ~π}[U(τ; ν)]`` (eq. 5) with the undiscounted ``H_u``-step inner return of eqs. (6)–(7)

    U(τ; ν) = Σ_{h<H_u} r_ν(s_h, a_h),      G(ν) = E_{π_{θ*(ν)}}[U(τ; ν)] + λ R_util(ν).

``U`` depends on ``ν``, so eq. (8), derived for a ``ν``-free ``U``, needs a direct term:

    ∇_ν G = E[Σ_{h<H_u} ∇_ν r_ν(s_h, a_h)]  +  J (−H)^{-1} g_U  +  λ ∇_ν R_util,                        (13')

with ``H = ∇²_θ V``, ``J = ∇²_{νθ} V`` (eq. 29) and ``g_U = ∇_θ E_{π_θ}[U]``; the middle term is eq. (13) with the
trajectory-independent factor ``−∇²_{νθ}V [∇²_θ V]^{-1}`` taken out of the expectation. It is estimated by the
corrected estimators of :mod:`bilevel_rl.tabular.checks.ppa` (the full DiCE Hessian instead of eq. 28, causal
forms of eqs. 27–29; Tikhonov, damped or projected solve) at the follower's exact ``θ*(ν_t)`` (the plug-in ``θ^K`` of
eq. 26 with ``K = ∞``); the direct term from its own batch of ``H_u``-step on-policy trajectories; ``∇ R_util`` in
closed form. The reference is the exact hypergradient by implicit differentiation of the soft Bellman fixed point
(:func:`~bilevel_rl.tabular.core.soft_mdp.exact_hypergradient`), which equals (13') with exact terms and the
pseudo-inverse (tested).

**Outer loop (Alg. 1, line 7, as ascent).** ``ν_{t+1} = Π(ν_t + α_u ∇̂_ν G(ν_t))`` where ``Π`` projects onto the grid
``[0, N−1]²`` (the paper does not say how ``ν`` is kept in the grid; ``outside="error"`` refuses a step that leaves
it instead). All randomness comes from an explicit ``torch.Generator``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import torch

from bilevel_rl.tabular.checks.ppa import (
    IFTTerms,
    PPAEstimatorConfig,
    ppa_exact_terms,
    ppa_implicit_gradient,
    ppa_sampled_terms,
    principal_utility,
)
from bilevel_rl.tabular.core.reward import reward_vjp
from bilevel_rl.tabular.core.sampling import Simulator, sample_trajectories, visit_table
from bilevel_rl.tabular.core.soft_mdp import (
    DTYPE,
    SoftMDP,
    SoftSolution,
    check_discount_and_temperature,
    exact_hypergradient,
    solve_soft,
)

MOVES = ((0, 0), (1, 0), (-1, 0), (0, 1), (0, -1))
"""The actions: stay, +x, −x, +y, −y."""

Estimator = Literal["sampled", "exact"]
Outside = Literal["project", "error"]
Solver = Literal["normal", "damped", "projected"]


@dataclass(frozen=True)
class NavigationConfig:
    """The grid world, the inner reward (R) and the upper horizon (module docstring; none of them is in the paper).

    Attributes:
        size: grid side ``N`` (``>= 2``); states are the ``N²`` cells, ``p(s) = (x, y)``.
        target: ``T`` of ``R_util``; ``None`` is the far corner ``(N−1, N−1)``.
        gamma: the follower's discount ``γ ∈ [0, 1)``.
        tau: the follower's entropy temperature ``τ > 0``.
        kappa: the cost scale ``κ > 0`` of (R).
        utility_horizon: ``H_u`` of ``U(τ; ν)`` (eqs. 5–7, undiscounted).
    """

    size: int = 6
    target: tuple[float, float] | None = None
    gamma: float = 0.8
    tau: float = 1.0
    kappa: float = 0.5
    utility_horizon: int = 12

    def __post_init__(self) -> None:
        if self.size < 2:
            raise ValueError(f"size must be >= 2, got {self.size}")
        check_discount_and_temperature(self.gamma, self.tau)
        if not self.kappa > 0:
            raise ValueError(f"kappa must be > 0, got {self.kappa}")
        if self.utility_horizon < 1:
            raise ValueError(f"utility_horizon must be >= 1, got {self.utility_horizon}")
        if self.target is not None:
            check_in_grid(torch.tensor(self.target, dtype=DTYPE), self.size, "target")


def check_in_grid(nu: torch.Tensor, size: int, name: str = "nu") -> None:
    """Refuse (one line, naming ``name``) a point that is not a finite 2-vector in the grid ``[0, size−1]²``."""
    if nu.shape != (2,) or not bool(torch.isfinite(nu).all()):
        raise ValueError(f"{name} must be a finite 2-vector (x, y), got {nu.tolist()}")
    if bool((nu < 0).any() or (nu > size - 1).any()):
        raise ValueError(
            f"{name} must lie in the grid [0, {size - 1}]^2, got {tuple(round(v, 4) for v in nu.tolist())}"
        )


class NavigationTask:
    """The §5 grid world: dynamics, the reward ``r_ν`` (R), ``R_inner``, ``R_util``, ``G`` and the soft follower."""

    def __init__(self, cfg: NavigationConfig | None = None) -> None:
        """Build the deterministic grid dynamics with ``ρ = δ_{(0,0)}``."""
        self.cfg = cfg = cfg or NavigationConfig()
        N = cfg.size
        xy = torch.stack(torch.meshgrid(torch.arange(N), torch.arange(N), indexing="ij"), -1).reshape(-1, 2)
        self.positions = xy.to(DTYPE)  # (S, 2); state index s = x·N + y
        S, A = N * N, len(MOVES)
        P = torch.zeros(S, A, S, dtype=DTYPE)
        for a, move in enumerate(MOVES):
            nxt = (xy + torch.tensor(move)).clamp(0, N - 1)
            P[torch.arange(S), a, nxt[:, 0] * N + nxt[:, 1]] = 1.0
        rho = torch.zeros(S, dtype=DTYPE)
        rho[0] = 1.0  # the agent starts at (0, 0) (§5)
        self.mdp = SoftMDP(P, rho, cfg.gamma, cfg.tau)
        self.start = torch.zeros(2, dtype=DTYPE)
        self.target = torch.tensor(cfg.target if cfg.target is not None else (N - 1.0, N - 1.0), dtype=DTYPE)

    @property
    def num_actions(self) -> int:
        """|A| = 5."""
        return len(MOVES)

    def reward(self, nu: torch.Tensor) -> torch.Tensor:
        """``r_ν (S, A)`` of (R): ``−κ ‖p(s) − ν‖²`` for every action (differentiable in ``ν``)."""
        cost = ((self.positions - nu) ** 2).sum(-1)
        return (-self.cfg.kappa * cost)[:, None].expand(-1, self.num_actions)

    def follower(self, nu: torch.Tensor, pi0: torch.Tensor | None = None) -> SoftSolution:
        """The follower's exact soft optimum ``π_{θ*(ν)}`` (``pi0``: warm start of the policy iteration)."""
        return solve_soft(self.reward(nu.detach()), self.mdp, pi0=pi0)

    def inner_return(self, nu: torch.Tensor, pi: torch.Tensor) -> torch.Tensor:
        """``R_inner = E_π[Σ_{h<H_u} r_ν(s_h, a_h)]`` (eq. 5 with ``U`` of eqs. 6–7), exact, differentiable."""
        return principal_utility(pi, self.reward(nu), self.cfg.utility_horizon, self.mdp)

    def utility(self, nu: torch.Tensor) -> torch.Tensor:
        """``R_util(ν) = −‖T − ν‖`` (§5)."""
        return -torch.linalg.norm(self.target - nu)

    def utility_grad(self, nu: torch.Tensor) -> torch.Tensor:
        """``∇_ν R_util = (T − ν)/‖T − ν‖`` (the zero subgradient at ``ν = T``)."""
        diff = self.target - nu.detach()
        dist = torch.linalg.norm(diff)
        return diff / dist if float(dist) > 0 else torch.zeros_like(diff)

    def outer(self, nu: torch.Tensor, pi: torch.Tensor, lam: float) -> torch.Tensor:
        """``G = R_outer = R_inner + λ R_util`` (eq. 4 with §5's ``R_outer``)."""
        return self.inner_return(nu, pi) + lam * self.utility(nu)

    def project(self, nu: torch.Tensor) -> torch.Tensor:
        """``Π``: the nearest point of the grid ``[0, N−1]²``."""
        return nu.clamp(0.0, self.cfg.size - 1.0)


def check_lambda(lam: float) -> None:
    """Refuse a negative or non-finite weight ``λ`` of ``R_util``."""
    if not (math.isfinite(lam) and lam >= 0):
        raise ValueError(f"lam must be a finite number >= 0, got {lam}")


@dataclass
class HypergradientParts:
    """The three terms of (13') and their sum (all ``(2,)``).

    Attributes:
        direct: ``E[Σ_{h<H_u} ∇_ν r_ν(s_h, a_h)]`` (``U`` depends on ``ν`` here; eq. 8, for a ``ν``-free ``U``,
            has none).
        implicit: ``J (−H)^{-1} g_U``, the IFT term of eqs. (12)–(13).
        regulariser: ``λ ∇_ν R_util`` (``∇_ν Z`` of eq. 4).
    """

    direct: torch.Tensor
    implicit: torch.Tensor
    regulariser: torch.Tensor

    @property
    def total(self) -> torch.Tensor:
        """``∇_ν G``."""
        return self.direct + self.implicit + self.regulariser


def exact_hypergradient_nav(task: NavigationTask, nu: torch.Tensor, lam: float) -> tuple[torch.Tensor, SoftSolution]:
    """Exact ``∇_ν G(ν)`` and ``π_{θ*(ν)}`` by implicit differentiation of the soft Bellman fixed point (reference).

    The core's adjoint of the soft Bellman equation (SoBiRL eq. 8 / Prop. 4.1), with ``∂G/∂ν`` at fixed ``π``.
    """
    check_lambda(lam)

    def upper(x: torch.Tensor, pi: torch.Tensor) -> torch.Tensor:
        return task.outer(x, pi, lam)

    return exact_hypergradient(nu.detach().to(DTYPE), task.reward, upper, task.mdp)


def direct_term_exact(task: NavigationTask, nu: torch.Tensor, pi: torch.Tensor) -> torch.Tensor:
    """``∇_ν R_inner`` at a fixed policy: the exact direct term of (13')."""
    x = nu.detach().clone().requires_grad_(True)
    (g,) = torch.autograd.grad(task.inner_return(x, pi.detach()), x)
    return g


def exact_parts(
    task: NavigationTask,
    nu: torch.Tensor,
    lam: float,
    sol: SoftSolution,
    solver: Solver = "projected",
    damping: float = 0.0,
) -> HypergradientParts:
    """(13') with exact ``H``, ``X``, ``g_U`` (:func:`~bilevel_rl.tabular.checks.ppa.ppa_exact_terms`) and solve.

    With ``solver="projected"`` (the pseudo-inverse on the complement of the softmax shifts) the sum equals
    :func:`exact_hypergradient_nav`; ``"normal"`` / ``"damped"`` with ``damping = δ`` is the exact target of the
    estimator with that solve (its damping bias, without sampling error).
    """
    check_lambda(lam)
    r = task.reward(nu.detach())
    terms = ppa_exact_terms(r, torch.log(sol.pi), task.mdp, r, task.cfg.utility_horizon)
    implicit = implicit_term(terms, task, nu, solver, damping)
    return HypergradientParts(direct_term_exact(task, nu, sol.pi), implicit, lam * task.utility_grad(nu))


@dataclass
class NavEstimatorConfig:
    """Sample sizes, horizon and solve of the sampled (13') (none of them is in the paper).

    Attributes:
        num_trajectories: trajectories in each of the independent ``H`` and ``X`` batches.
        utility_trajectories: trajectories of the ``g_U`` batch and of the direct-term batch (``H_u`` steps each);
            ``None``: ``num_trajectories``.
        horizon: ``H_ℓ`` of the ``H`` / ``X`` trajectories (truncation bias ``O(γ^{H_ℓ})``).
        solver: ``"normal"`` (Tikhonov least squares ``(H² + δ²I) v = −H g_U``, as ``solver=normal`` of the deep
            rule :mod:`bilevel_rl.upper.ppa`: defined for the indefinite sampled ``Ĥ``, ``‖v‖ <= ‖g_U‖/(2δ)``),
            ``"damped"`` (``(−H + δI) v = g_U``) or ``"projected"`` (pseudo-inverse on the shift complement; needs
            every state visited, so it is meant for exact terms).
        damping: ``δ`` (``> 0`` for ``normal`` and ``damped``).
        hessian: ``"full"`` (corrected DiCE Hessian) or ``"paper_eq28"`` (eq. 28 as printed; ablation).
        chunk: trajectories processed at once (memory ``chunk · H_ℓ · |S||A|`` floats).
    """

    num_trajectories: int = 2000
    utility_trajectories: int | None = None
    horizon: int = 20
    solver: Solver = "normal"
    damping: float = 1e-2
    hessian: Literal["full", "paper_eq28"] = "full"
    chunk: int = 1000

    def __post_init__(self) -> None:
        for name in ("num_trajectories", "horizon", "chunk"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.utility_trajectories is not None and self.utility_trajectories < 1:
            raise ValueError(f"utility_trajectories must be >= 1, got {self.utility_trajectories}")
        if self.solver not in ("normal", "damped", "projected"):
            raise ValueError(f"solver must be 'normal', 'damped' or 'projected', got {self.solver!r}")
        if self.hessian not in ("full", "paper_eq28"):
            raise ValueError(f"hessian must be 'full' or 'paper_eq28', got {self.hessian!r}")
        if not (math.isfinite(self.damping) and self.damping >= 0) or (
            self.solver != "projected" and self.damping == 0
        ):
            raise ValueError(f"damping must be > 0 (>= 0 for the projected solver), got {self.damping}")

    @property
    def num_utility(self) -> int:
        """Trajectories of the ``g_U`` and direct-term batches."""
        return self.num_trajectories if self.utility_trajectories is None else self.utility_trajectories

    def ppa(self) -> PPAEstimatorConfig:
        """The sampling settings as the check module's config (its solver fields are unused here)."""
        return PPAEstimatorConfig(
            num_trajectories=self.num_trajectories,
            utility_trajectories=self.num_utility,
            horizon=self.horizon,
            hessian=self.hessian,
            chunk=self.chunk,
        )


def implicit_term(
    terms: IFTTerms, task: NavigationTask, nu: torch.Tensor, solver: Solver, damping: float
) -> torch.Tensor:
    """``J v`` with ``v ≈ (−H)^{-1} g_U`` (eqs. 12–13): ``normal`` here, ``damped`` / ``projected`` by the check module.

    ``normal`` solves ``(H² + δ²I) v = −H g_U`` (the Tikhonov least-squares solution, ``→ (−H)^+ g_U`` as ``δ → 0``).
    """
    if solver == "normal":
        H, g = terms.hessian, terms.utility_grad
        v = torch.linalg.solve(H @ H + damping**2 * torch.eye(H.shape[0], dtype=DTYPE), -H @ g)
        W = (terms.mixed @ v).reshape(task.mdp.num_states, task.num_actions)
        return reward_vjp(nu.detach(), task.reward, W)
    return ppa_implicit_gradient(terms, nu.detach(), task.reward, solver, damping)


def sampled_parts(
    task: NavigationTask,
    nu: torch.Tensor,
    lam: float,
    sol: SoftSolution,
    cfg: NavEstimatorConfig,
    generator: torch.Generator,
) -> HypergradientParts:
    """(13') from on-policy trajectories of ``π_{θ*(ν)}`` (Alg. 1 line 7 / eq. 26 at ``θ^K = θ*``).

    * implicit: :func:`~bilevel_rl.tabular.checks.ppa.ppa_sampled_terms` (independent ``H``, ``X`` batches of
      ``num_trajectories`` trajectories of ``H_ℓ`` steps and a ``g_U`` batch of ``H_u``-step ones, with the utility
      table ``u = r_ν`` held fixed), then :func:`implicit_term`;
    * direct: ``(1/M) Σ_m Σ_{h<H_u} ∇_ν r_ν(s^m_h, a^m_h)`` on its own batch of ``M`` ``H_u``-step trajectories,
      one VJP through ``r_ν``;
    * regulariser: ``λ ∇_ν R_util`` in closed form.
    """
    check_lambda(lam)
    nu = nu.detach()
    r = task.reward(nu)
    H_u = task.cfg.utility_horizon
    terms = ppa_sampled_terms(r, torch.log(sol.pi), task.mdp, r, H_u, cfg.ppa(), generator)
    implicit = implicit_term(terms, task, nu, cfg.solver, cfg.damping)
    M = cfg.num_utility
    ro = sample_trajectories(Simulator(task.mdp, sol.pi), task.mdp.rho, M, H_u, generator)
    one = torch.ones((), dtype=DTYPE)
    W = visit_table(ro.states, ro.actions, one, task.mdp.num_states, task.num_actions) / M
    return HypergradientParts(reward_vjp(nu, task.reward, W), implicit, lam * task.utility_grad(nu))


def cosine_and_relative_error(estimate: torch.Tensor, exact: torch.Tensor) -> tuple[float, float]:
    """``(cos(est, exact), ‖est − exact‖ / ‖exact‖)``."""
    cos = torch.nn.functional.cosine_similarity(estimate.reshape(1, -1), exact.reshape(1, -1)).item()
    return cos, float((estimate - exact).norm() / exact.norm())


@dataclass
class NavigationLeaderConfig:
    """The outer loop (Alg. 1, line 7, as ascent with the projection ``Π``); not specified in the paper.

    Attributes:
        lam: weight ``λ >= 0`` of ``R_util`` (§5 uses 1, 10, 15, 30).
        iterations: outer iterations ``T``.
        step_size: ``α_u > 0``.
        nu0: the initial goal ``ν_0`` (must lie in the grid).
        estimator: ``"sampled"`` (PPA estimators of (13')) or ``"exact"`` (the reference hypergradient).
        estimator_cfg: sample sizes, ``H_ℓ``, solver and damping of the sampled estimator.
        outside: ``"project"`` (``ν ← Π(ν)`` after each step) or ``"error"`` (refuse a step leaving the grid).
    """

    lam: float
    iterations: int = 40
    step_size: float = 0.05
    nu0: tuple[float, float] = (5.0, 0.0)
    estimator: Estimator = "sampled"
    estimator_cfg: NavEstimatorConfig = field(default_factory=NavEstimatorConfig)
    outside: Outside = "project"

    def __post_init__(self) -> None:
        check_lambda(self.lam)
        if self.iterations < 1:
            raise ValueError(f"iterations must be >= 1, got {self.iterations}")
        if not (math.isfinite(self.step_size) and self.step_size > 0):
            raise ValueError(f"step_size must be > 0, got {self.step_size}")
        if self.estimator not in ("sampled", "exact"):
            raise ValueError(f"estimator must be 'sampled' or 'exact', got {self.estimator!r}")
        if self.outside not in ("project", "error"):
            raise ValueError(f"outside must be 'project' or 'error', got {self.outside!r}")


@dataclass
class NavigationRun:
    """One outer run: per-iteration rows (iteration 0 is ``ν_0``) and the final goal.

    Each row holds ``iteration, nu_x, nu_y, dist_start, dist_target, r_inner, r_util, r_outer`` (exact values at
    the follower's ``π_{θ*(ν_t)}``), and, for ``t < T``, the step's ``grad_x, grad_y`` and its cosine with the exact
    hypergradient ``grad_cos`` (1 for the exact estimator).
    """

    rows: list[dict[str, float]]
    nu: torch.Tensor


def _row(task: NavigationTask, t: int, nu: torch.Tensor, sol: SoftSolution, lam: float) -> dict[str, float]:
    with torch.no_grad():
        r_inner = float(task.inner_return(nu, sol.pi))
        r_util = float(task.utility(nu))
    return {
        "iteration": float(t),
        "nu_x": float(nu[0]),
        "nu_y": float(nu[1]),
        "dist_start": float(torch.linalg.norm(nu - task.start)),
        "dist_target": float(torch.linalg.norm(nu - task.target)),
        "r_inner": r_inner,
        "r_util": r_util,
        "r_outer": r_inner + lam * r_util,
    }


def run_ppa_navigation(task: NavigationTask, cfg: NavigationLeaderConfig, generator: torch.Generator) -> NavigationRun:
    """Projected hypergradient ascent on ``G(ν)`` with the exact soft-optimal follower at every ``ν_t``.

    Each iteration: ``θ*(ν_t)`` (warm-started soft policy iteration), the estimate ``ĝ_t`` of (13') (sampled or
    exact), the exact hypergradient for the logged cosine, and ``ν_{t+1} = Π(ν_t + α_u ĝ_t)``.
    """
    nu = torch.tensor(cfg.nu0, dtype=DTYPE)
    check_in_grid(nu, task.cfg.size, "nu0")
    sol = task.follower(nu)
    rows = []
    for t in range(cfg.iterations):
        row = _row(task, t, nu, sol, cfg.lam)
        exact, _ = exact_hypergradient_nav(task, nu, cfg.lam)
        if cfg.estimator == "exact":
            grad = exact
        else:
            grad = sampled_parts(task, nu, cfg.lam, sol, cfg.estimator_cfg, generator).total
        row |= {"grad_x": float(grad[0]), "grad_y": float(grad[1])}
        row["grad_cos"] = cosine_and_relative_error(grad, exact)[0] if float(exact.norm()) > 0 else float("nan")
        rows.append(row)
        step = nu + cfg.step_size * grad
        if cfg.outside == "error":
            check_in_grid(step, task.cfg.size, "nu")
        nu = task.project(step)
        sol = task.follower(nu, pi0=sol.pi)
    rows.append(_row(task, cfg.iterations, nu, sol, cfg.lam))
    return NavigationRun(rows, nu)


def grid_optimum(task: NavigationTask, lam: float, resolution: int = 41) -> tuple[torch.Tensor, float]:
    """The best ``ν`` of ``G`` on a ``resolution × resolution`` lattice of the grid (a global reference).

    Returns:
        ``(ν̂*, G(ν̂*))``.
    """
    check_lambda(lam)
    if resolution < 2:
        raise ValueError(f"resolution must be >= 2, got {resolution}")
    ticks = torch.linspace(0.0, task.cfg.size - 1.0, resolution, dtype=DTYPE)
    best, best_val, pi = torch.zeros(2, dtype=DTYPE), -math.inf, None
    for gx in ticks:
        for gy in ticks:
            nu = torch.stack([gx, gy])
            sol = task.follower(nu, pi0=pi)
            pi = sol.pi
            with torch.no_grad():
                val = float(task.outer(nu, sol.pi, lam))
            if val > best_val:
                best, best_val = nu, val
    return best, best_val
