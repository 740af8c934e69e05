"""M-SoBiRL (SoBiRL Algorithm 2) and the synthetic bilevel RL problem of SoBiRL appendix J.3.

Problem (SoBiRL eq. 4): ``min_x φ(x) = f(x, π*(x))`` where ``π*(x)`` is the optimal policy of the soft MDP
``M_τ(x) = (S, A, P, r(x), γ, τ)``.

Model-based hypergradient estimator (SoBiRL §4 and Lemma G.11, App. G.5)::

    A_k = (I − γ P^{π_k})^T,          b_k = U^T diag(π_k) ∇_π f(x_k, π_k),   U_{sa,s'} = δ_{ss'} − γ P(s'|s, a)
    V_k(s) = τ log Σ_a exp(Q_k(s, a)/τ)                                                          (eq. 9)
    w_k = w_{k−1} − η (A_k^T A_k w_{k−1} − A_k^T b_k)                    (one GD step on ½‖A_k w − b_k‖²)
    ∇̂φ(x_k, π_k, V_k, w_k) = ∇_x f(x_k, π_k) + τ^{-1} ∇r(x_k)^T diag(π_k) ∇_π f(x_k, π_k)
                             − τ^{-1} ∇_x ϕ(x_k, V_k)^T w_k,
    ∇_x ϕ_s(x, v) = Σ_a ∇r_{sa}(x) softmax_a((r_{sa}(x) + γ P_{sa·} v)/τ)       (proof of Lemma G.10, App. G.5)

Note the weights of ``∇_x ϕ(x_k, V_k)`` are ``softmax((r + γ P V_k)/τ)``, one soft Bellman backup ahead of
``π_k = softmax(Q_k/τ)``, not ``π_k`` itself. With ``V_k = V*`` and ``w_k = w* = A^{-1} b`` the estimator equals
the exact hypergradient, SoBiRL eq. (24).

Algorithm 2 (§4), ``k = 1..K``: the ``w`` step, ``x_{k+1} = x_k − β ∇̂φ``, then ``N`` soft Bellman steps
``Q_{k,n} = T_{M_τ(x_{k+1})}(Q_{k,n−1})`` warm-started at ``Q_{k,0} = Q_k``; ``Q_{k+1} = Q_{k,N}``,
``π_{k+1} = softmax(Q_{k+1}/τ)``. Since ``V = τ logsumexp(Q/τ)``, ``N`` Q-iterations from ``Q_k`` give exactly
``V_{k+1} = ϕ^N(x_{k+1}, V_k)``, i.e. ``N`` warm-started soft value iterations on ``V`` as in the authors' code.
Two small differences from that code, both following the paper instead: the code's policy is
``softmax((r + γ P V_{k+1})/τ)`` (one backup ahead of ``softmax(Q_{k+1}/τ)``, so it coincides with the ``∇_x ϕ``
weights), and it starts from ``V_1 = 0`` rather than ``V_1 = τ log Σ_a exp(Q_1/τ) = τ log |A|`` for ``Q_1 = 0`` (both
give the uniform ``π_1``). ``MSoBiRLConfig.inner_tol`` reproduces the code's early stop of the inner loop.

J.3 problem (SoBiRL App. J.3; generator details from the authors' ``SyntheticProblem/RanMDP.py``)::

    |S| = 10, |A| = 5, n = 100, γ = 0.5, τ = 1,
    f(x, π) = ½‖x‖² + ½‖π‖²,    r_{sa}(x) = c_{sa} xᵀ M x,   c_{sa} = u_{sa} u'_{sa},  u, u' ~ U(0, 1),
    M_{ij} ~ N(0, 1),   x_1 ~ N(0, I),   P(·|s, a): support of uniform size in {1..|S|−1} on a random subset,
    U(0, 1) weights normalised.

Its global optimum is ``f* = 1`` at ``x = 0`` (``r ≡ 0``, ``π*`` uniform, ``½‖π‖² ≥ |S|/(2|A|) = 1``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from bilevel_rl.tabular.core.reward import RewardFn
from bilevel_rl.tabular.core.soft_mdp import (
    DTYPE,
    SoftMDP,
    UpperFn,
    exact_hypergradient,
    soft_bellman,
    soft_value,
    upper_partials,
)

# ----------------------------------------------------------------------------------------------- J.3 problem


@dataclass(frozen=True)
class J3Config:
    """The synthetic problem of SoBiRL appendix J.3 (all randomness from one seeded generator).

    Attributes:
        num_states: |S| (paper: 10).
        num_actions: |A| (paper: 5).
        dim: dimension ``n`` of the leader variable ``x`` (paper: 100).
        gamma: discount γ (paper: 0.5).
        tau: entropy temperature τ (paper: 1).
        seed: seed of the generator that draws ``P``, ``M``, ``c`` and ``x_1``.
    """

    num_states: int = 10
    num_actions: int = 5
    dim: int = 100
    gamma: float = 0.5
    tau: float = 1.0
    seed: int = 0


@dataclass
class J3Problem:
    """One draw of the J.3 problem: dynamics, reward ``r(x) = c · xᵀMx``, ``f = ½‖x‖² + ½‖π‖²``, start ``x_1``."""

    config: J3Config
    mdp: SoftMDP
    quad: torch.Tensor
    coef: torch.Tensor
    x0: torch.Tensor

    def reward(self, x: torch.Tensor) -> torch.Tensor:
        """``r_{sa}(x) = c_{sa} xᵀ M x`` as an ``(S, A)`` table (differentiable in ``x``)."""
        return self.coef * (x @ self.quad @ x)

    def upper(self, x: torch.Tensor, pi: torch.Tensor) -> torch.Tensor:
        """``f(x, π) = ½‖x‖² + ½‖π‖²`` (authors' ``f_function``)."""
        return 0.5 * (x * x).sum() + 0.5 * (pi * pi).sum()

    @property
    def optimum(self) -> float:
        """``f* = |S| / (2|A|)``, attained at ``x = 0`` with the uniform policy (equals 1 for the paper's sizes)."""
        return self.config.num_states / (2.0 * self.config.num_actions)


def random_sparse_transitions(num_states: int, num_actions: int, generator: torch.Generator) -> torch.Tensor:
    """``P(·|s, a)`` with a support of uniform size in ``{1..|S|−1}`` on a random subset, U(0, 1) weights normalised."""
    P = torch.zeros(num_states, num_actions, num_states, dtype=DTYPE)
    for s in range(num_states):
        for a in range(num_actions):
            k = int(torch.randint(1, num_states, (1,), generator=generator))
            support = torch.randperm(num_states, generator=generator)[:k]
            weights = torch.rand(k, generator=generator, dtype=DTYPE)
            P[s, a, support] = weights / weights.sum()
    return P


def make_j3_problem(config: J3Config | None = None) -> J3Problem:
    """Draw the J.3 problem from ``torch.Generator().manual_seed(config.seed)`` (reproducible, unlike the original)."""
    cfg = config or J3Config()
    g = torch.Generator().manual_seed(cfg.seed)
    P = random_sparse_transitions(cfg.num_states, cfg.num_actions, g)
    rho = torch.full((cfg.num_states,), 1.0 / cfg.num_states, dtype=DTYPE)
    mdp = SoftMDP(P, rho, cfg.gamma, cfg.tau)
    quad = torch.randn(cfg.dim, cfg.dim, generator=g, dtype=DTYPE)
    u = torch.rand(2, cfg.num_states, cfg.num_actions, generator=g, dtype=DTYPE)
    coef = u[0] * u[1]
    x0 = torch.randn(cfg.dim, generator=g, dtype=DTYPE)
    return J3Problem(cfg, mdp, quad, coef, x0)


# ----------------------------------------------------------------------------------------------- estimator


def linear_system(pi: torch.Tensor, g_pi: torch.Tensor, mdp: SoftMDP) -> tuple[torch.Tensor, torch.Tensor]:
    """``A = (I − γ P^π)^T`` and ``b = U^T diag(π) ∇_π f``.

    ``b`` contracts over ``(s, a)``: ``b_{s'} = Σ_a (π g)_{s'a} − γ Σ_{sa} (π g)_{sa} P_{sas'}`` with ``g = ∇_π f``.

    Args:
        pi: ``(S, A)`` policy.
        g_pi: ``(S, A)`` gradient ``∇_π f(x, π)``.
        mdp: lower-level dynamics.

    Returns:
        ``(A, b)`` with shapes ``(S, S)`` and ``(S,)``.
    """
    eye = torch.eye(mdp.num_states, dtype=pi.dtype)
    A = (eye - mdp.gamma * mdp.policy_transition(pi)).T
    pg = pi * g_pi
    b = pg.sum(1) - mdp.gamma * torch.einsum("sa,sat->t", pg, mdp.P)
    return A, b


def model_based_hypergradient(
    x: torch.Tensor,
    pi: torch.Tensor,
    V: torch.Tensor,
    w: torch.Tensor,
    reward_fn: RewardFn,
    upper_fn: UpperFn,
    mdp: SoftMDP,
) -> torch.Tensor:
    """``∇̂φ(x, π, V, w)`` of SoBiRL §4 (Algorithm 2 line 5; restated in Lemma G.11).

    ``∇_x f + τ^{-1} ∇r^T diag(π) ∇_π f − τ^{-1} ∇_x ϕ(x, V)^T w`` with ``∇_x ϕ`` weighted by
    ``softmax((r(x) + γ P V)/τ)``. Both ``r``-terms are one vector–Jacobian product through ``r(x)``:
    ``∇r^T G`` with ``G_{sa} = τ^{-1} (π_{sa} ∂f/∂π_{sa} − w_s σ_{sa})``.

    Args:
        x: ``(n,)`` leader variable.
        pi: ``(S, A)`` current policy ``π_k``.
        V: ``(S,)`` current value ``V_k``.
        w: ``(S,)`` current linear-system iterate ``w_k``.
        reward_fn: ``x ↦ r(x)``.
        upper_fn: ``(x, π) ↦ f(x, π)``.
        mdp: lower-level dynamics.

    Returns:
        ``(n,)`` estimate of ``∇φ(x)``.
    """
    g_x, g_pi = upper_partials(x, pi, upper_fn)
    xr = x.detach().requires_grad_(True)
    r = reward_fn(xr)
    with torch.no_grad():
        sigma = torch.softmax((r + mdp.gamma * torch.einsum("sat,t->sa", mdp.P, V)) / mdp.tau, dim=1)
        G = (pi * g_pi - w[:, None] * sigma) / mdp.tau
    (g_r,) = torch.autograd.grad(r, xr, grad_outputs=G)
    return (g_x + g_r).detach()


# ----------------------------------------------------------------------------------------------- algorithm


@dataclass(frozen=True)
class MSoBiRLConfig:
    """Every hyperparameter of M-SoBiRL (SoBiRL Algorithm 2) with the J.3 defaults (App. J.3 and the authors' code).

    Attributes:
        iterations: outer iterations ``K`` (paper/code: 3000).
        inner_steps: soft Bellman steps ``N`` per outer iteration (code: 10).
        beta: upper-level step size β (paper: 0.008).
        eta: step size η of the ``w`` tracking step (paper: 0.5).
        inner_tol: stop the inner loop early once ``‖ΔV‖_∞ < inner_tol`` (code: 1e-6; paper and default: 0, no
            early stop).
        w0: ``"normal"`` (code: ``w_0 ~ N(0, I)``) or ``"zeros"``.
        seed: seed of the generator drawing ``w_0``.
        log_exact: also compute the exact ``∇φ(x_k)`` and ``φ(x_k)`` each iteration (one exact soft solve).
    """

    iterations: int = 3000
    inner_steps: int = 10
    beta: float = 0.008
    eta: float = 0.5
    inner_tol: float = 0.0
    w0: str = "normal"
    seed: int = 0
    log_exact: bool = True


@dataclass
class RunLog:
    """Per-iteration curves (index ``k − 1`` holds iteration ``k``) and the final iterate.

    Attributes:
        estimate_norm: ``‖∇̂φ(x_k, ·)‖`` of the estimator actually used in the step (what the authors log).
        exact_grad_norm: ``‖∇φ(x_k)‖`` from :func:`exact_hypergradient` (NaN when not logged).
        f: ``f(x_k, π_k)`` with the algorithm's current policy.
        phi: ``φ(x_k) = f(x_k, π*(x_k))`` (NaN when not logged).
        policy_error: ``‖π_k − π*(x_k)‖_2`` (NaN when not logged).
        extra: algorithm-specific curves.
        x: final leader variable ``x_{K+1}``.
    """

    estimate_norm: list[float] = field(default_factory=list)
    exact_grad_norm: list[float] = field(default_factory=list)
    f: list[float] = field(default_factory=list)
    phi: list[float] = field(default_factory=list)
    policy_error: list[float] = field(default_factory=list)
    extra: dict[str, list[float]] = field(default_factory=dict)
    x: torch.Tensor | None = None

    def log_exact(
        self, x: torch.Tensor, pi: torch.Tensor, reward_fn: RewardFn, upper_fn: UpperFn, mdp: SoftMDP, on: bool
    ) -> None:
        """Append ``f(x, π)`` and, if ``on``, the exact ``‖∇φ(x)‖``, ``φ(x)`` and ``‖π − π*(x)‖``."""
        self.f.append(float(upper_fn(x, pi)))
        if on:
            grad, sol = exact_hypergradient(x, reward_fn, upper_fn, mdp)
            self.exact_grad_norm.append(float(grad.norm()))
            self.phi.append(float(upper_fn(x, sol.pi)))
            self.policy_error.append(float((pi - sol.pi).norm()))
        else:
            self.exact_grad_norm.append(math.nan)
            self.phi.append(math.nan)
            self.policy_error.append(math.nan)


def inner_soft_iterations(Q: torch.Tensor, r: torch.Tensor, mdp: SoftMDP, steps: int, tol: float) -> torch.Tensor:
    """``steps`` warm-started soft Bellman steps ``Q ← T(Q)``, stopping early once ``‖ΔV‖_∞ < tol``."""
    for _ in range(steps):
        Q_new = soft_bellman(Q, r, mdp)
        done = tol > 0 and float((soft_value(Q_new, mdp.tau) - soft_value(Q, mdp.tau)).abs().max()) < tol
        Q = Q_new
        if done:
            break
    return Q


def run_msobirl(
    x0: torch.Tensor, reward_fn: RewardFn, upper_fn: UpperFn, mdp: SoftMDP, config: MSoBiRLConfig | None = None
) -> RunLog:
    """Run M-SoBiRL (SoBiRL Algorithm 2) from ``x_1 = x0``, ``Q_1 = 0`` (uniform ``π_1``), ``w_0`` per ``config``.

    Args:
        x0: ``(n,)`` initial leader variable.
        reward_fn: ``x ↦ r(x)``, an ``(S, A)`` table.
        upper_fn: ``(x, π) ↦ f(x, π)``.
        mdp: lower-level dynamics (``P``, ``γ``, ``τ``).
        config: hyperparameters.

    Returns:
        The per-iteration log; ``log.extra["w_error"]`` holds ``‖w_k − A_k^{-1} b_k‖`` (tracking error).
    """
    cfg = config or MSoBiRLConfig()
    g = torch.Generator().manual_seed(cfg.seed)
    S, A = mdp.num_states, mdp.num_actions
    if cfg.w0 == "normal":
        w = torch.randn(S, generator=g, dtype=DTYPE)
    elif cfg.w0 == "zeros":
        w = torch.zeros(S, dtype=DTYPE)
    else:
        raise ValueError(f"w0 must be 'normal' or 'zeros', got {cfg.w0!r}")
    x = x0.detach().to(DTYPE).clone()
    with torch.no_grad():
        Q = torch.zeros(S, A, dtype=DTYPE)
    log = RunLog(extra={"w_error": []})
    for _ in range(cfg.iterations):
        with torch.no_grad():
            pi = torch.softmax(Q / mdp.tau, dim=1)
            V = soft_value(Q, mdp.tau)
        log.log_exact(x, pi, reward_fn, upper_fn, mdp, cfg.log_exact)
        _, g_pi = upper_partials(x, pi, upper_fn)
        A_k, b_k = linear_system(pi, g_pi, mdp)
        w = w - cfg.eta * (A_k.T @ (A_k @ w) - A_k.T @ b_k)
        log.extra["w_error"].append(float((w - torch.linalg.solve(A_k, b_k)).norm()))
        est = model_based_hypergradient(x, pi, V, w, reward_fn, upper_fn, mdp)
        log.estimate_norm.append(float(est.norm()))
        x = x - cfg.beta * est
        with torch.no_grad():
            Q = inner_soft_iterations(Q, reward_fn(x), mdp, cfg.inner_steps, cfg.inner_tol)
    log.x = x
    return log
