"""Hessian-free (first-order) penalty method for bilevel RL, with exact gradients.

Paper: Gaur, Bedi, Pasupathy, Aggarwal, "On the Sample Complexity Bounds in Bilevel Reinforcement Learning"
(arXiv 2503.17644 v1, 25 Mar 2025).

The method minimises the proxy (eq. 10) ``Φ_σ(φ) = min_λ G(φ, λ) + (J(φ, λ*(φ)) − J(φ, λ)) / σ`` of the
hyper-objective ``Φ(φ) = G(φ, λ*(φ))`` (eq. 7), where ``J`` is the follower's objective (maximised) and ``G`` the
upper-level loss (minimised). Two followers are kept for the reward parameter φ:

* ``λ ≈ λ*(φ) = argmax_λ J(φ, λ)``, the RL follower, and
* ``λ' ≈ λ*_σ(φ) = argmax_λ h_σ(φ, λ)``, ``h_σ = J − σ G`` (§3.1), the follower that leans towards the upper loss;

each tracked by ``K`` normalised ascent steps with step ``τ_k = τ_1 / k`` (Alg. 1 l.8–9 / Alg. 3 l.6–7, Thm 1's
``τ_k = 7 / (2k√μ)`` with the unknown ``μ`` folded into ``τ_1``), warm-started across outer iterations. The reward
step is the first-order, Hessian-free two-point difference

    d_t = ∇_φ G(φ, ·) + (1/σ) (∇_φ J(φ, λ) − ∇_φ J(φ, λ')),        φ ← φ − η d_t             (eq. 11)

with ``∇_φ J(φ, λ) = Σ_i γ^{i−1} E_{π_λ} ∇_φ r_φ(s_i, a_i)`` (eq. 12, Lemma 5).

**Corrections of the printed algorithms** (``docs/theory/penalty_methods.md`` §2.1–2.4), all configurable only
where the printed form is needed for reproduction:

* Sign: Alg. 1 l.15 (§4) and Alg. 3 l.9 (§6) print ``d_t = ∇_φ G − (1/σ)(∇_φ J(λ) − ∇_φ J(λ'))``.
  Danskin's theorem on eq. (10), eq. (11) itself and PBRL's value-penalty gradient (σ = 1/λ_PBRL) give ``+``;
  with exact followers the ``+`` form equals finite differences of eq. (10) (tested). ``sign="printed"``
  reproduces the printed line: on :class:`QuadraticBilevel` its direction ``cφ − A^T(Aφ − a)/(1 + σ)`` has an
  indefinite Jacobian and the iterates diverge; on :class:`TabularRewardShaping` it ascends the true loss and Φ
  climbs away from Φ* (both tested); ``sign="eq11"`` converges on both.
* Where ``∇_φ G`` is evaluated: Danskin evaluates it at ``λ'`` (``grad_G_at="sigma_follower"``, default); eq. (11)
  / l.15 use ``λ`` (``"star_follower"``). Both are O(σ)-close to ``∇Φ``.
* Follower routing: Alg. 1 l.8 updates ``λ`` with ``d'_k``; it must use ``d_k = ∇_λ J`` (as Alg. 3 l.6), or both
  followers chase ``h_σ`` and the penalty difference vanishes.
* Critic and ``∇_λ G`` of ``λ'``: Alg. 1 l.7 uses ``Q`` and ``∇_λ G(φ, λ_t^k)``; the ``λ'`` step needs ``λ'``'s own
  critic and ``∇_λ G(φ, λ')``.
* Direction of the inner steps: Alg. 3 l.4–7 descend on ``J`` and on ``J + σG``; we ascend ``J`` and
  ``h_σ = J − σG``.
* Step-size index: ``τ_k ∝ 1/k`` is undefined at ``k = 0`` (Alg. 1 l.3 starts at 0); inner steps are indexed
  from 1.

Deviations: gradients are exact (no Alg. 2 critic, no sampling; ``n, B, H → ∞``), which isolates the sign question
from the estimation error; the KL term (β) is off.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal, Protocol

import torch

from bilevel_rl.schedules import polynomial_decay
from bilevel_rl.tabular.core.soft_mdp import DTYPE, SoftMDP, exact_hypergradient, policy_evaluation, solve_soft
from bilevel_rl.tabular.repro.pbrl import softmax_pg

Sign = Literal["eq11", "printed"]
GradGAt = Literal["sigma_follower", "star_follower"]


class BilevelProblem(Protocol):
    """Exact first-order oracles of a bilevel problem ``min_φ G(φ, λ*(φ))``, ``λ*(φ) = argmax_λ J(φ, λ)``."""

    def initial(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(φ_0, λ_0)``."""
        ...

    def grads(self, phi: torch.Tensor, lam: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """``(∇_φ G, ∇_λ G, ∇_φ J, ∇_λ J)`` at ``(φ, λ)``."""
        ...

    def hyper_objective(self, phi: torch.Tensor) -> float:
        """``Φ(φ) = G(φ, λ*(φ))``."""
        ...

    def hypergradient(self, phi: torch.Tensor) -> torch.Tensor:
        """Exact ``∇Φ(φ)`` (eqs. 8–9)."""
        ...


_REFERENCE_A = (
    (0.1257302210933933, -0.1321048632913019, 0.6404226504432821),
    (0.10490011715303971, -0.535669373161111, 0.36159505490948474),
    (1.3040000451301372, 0.9470809631292422, -0.7037352358069926),
    (-1.2654214710460525, -0.6232744625373522, 0.0413259793472436),
)
_REFERENCE_a = (-2.3250307746388343, -0.21879166393254573, -1.2459109472530652, -0.7322673547034516)


@dataclass
class QuadraticBilevel:
    """The quadratic example of ``docs/theory/penalty_methods.md`` §2.2, read as a one-step bilevel RL problem.

    The follower is a Gaussian policy ``a ~ N(λ, I)`` on a single-state bandit with reward
    ``r_φ(a) = −½‖a − Aφ‖²``, so ``J(φ, λ) = E r_φ(a) = −½‖λ − Aφ‖² − d_λ/2``; the upper loss is
    ``G(φ, λ) = ½‖λ − a‖² + (c/2)‖φ‖²``. Then ``λ*(φ) = Aφ``, ``Φ(φ) = ½‖Aφ − a‖² + (c/2)‖φ‖²``,
    ``∇Φ = A^T(Aφ − a) + cφ``, ``λ*_σ = (Aφ + σa)/(1 + σ)``; eq. (11) gives ``cφ + A^T(Aφ − a)/(1 + σ)`` and the
    printed l.15 gives ``cφ − A^T(Aφ − a)/(1 + σ)``, whose Hessian ``c I − A^T A/(1 + σ)`` is indefinite when
    ``c < σ_max(A)² / (1 + σ)``: the printed iteration then diverges geometrically.
    """

    A: torch.Tensor
    a: torch.Tensor
    c: float = 0.1

    @classmethod
    def reference_instance(cls, c: float = 0.1) -> QuadraticBilevel:
        """The instance of the sign study in ``docs/results/hessian_free_sign.md`` (``d_φ = 3``, ``d_λ = 4``).

        ``A`` and ``a`` are the first 12 and next 4 standard normals of ``numpy.random.default_rng(0)``, written
        out so that the instance is data rather than a random stream.
        """
        return cls(torch.tensor(_REFERENCE_A, dtype=DTYPE), torch.tensor(_REFERENCE_a, dtype=DTYPE), c)

    @classmethod
    def random_instance(
        cls, generator: torch.Generator, d_phi: int = 3, d_lam: int = 4, c: float = 0.1
    ) -> QuadraticBilevel:
        """``A``, ``a`` with i.i.d. standard normal entries."""
        A = torch.randn(d_lam, d_phi, generator=generator, dtype=DTYPE)
        return cls(A, torch.randn(d_lam, generator=generator, dtype=DTYPE), c)

    def initial(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``φ_0 = 0``, ``λ_0 = 0``."""
        return torch.zeros(self.A.shape[1], dtype=DTYPE), torch.zeros(self.A.shape[0], dtype=DTYPE)

    def grads(self, phi: torch.Tensor, lam: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Closed-form ``(∇_φ G, ∇_λ G, ∇_φ J, ∇_λ J)``."""
        resid = lam - self.A @ phi
        return self.c * phi, lam - self.a, self.A.T @ resid, -resid

    def hyper_objective(self, phi: torch.Tensor) -> float:
        """``½‖Aφ − a‖² + (c/2)‖φ‖²``."""
        return float(0.5 * (self.A @ phi - self.a).square().sum() + 0.5 * self.c * phi.square().sum())

    def hypergradient(self, phi: torch.Tensor) -> torch.Tensor:
        """``A^T(Aφ − a) + cφ``."""
        return self.A.T @ (self.A @ phi - self.a) + self.c * phi

    def exact_followers(self, phi: torch.Tensor, sigma: float) -> tuple[torch.Tensor, torch.Tensor]:
        """``(λ*(φ), λ*_σ(φ)) = (Aφ, (Aφ + σa)/(1 + σ))``."""
        return self.A @ phi, (self.A @ phi + sigma * self.a) / (1 + sigma)

    def proxy_objective(self, phi: torch.Tensor, sigma: float) -> float:
        """Eq. (10) in closed form: ``Φ_σ(φ) = ‖Aφ − a‖² / (2(1 + σ)) + (c/2)‖φ‖²`` (``max_λ J = 0``)."""
        return float((self.A @ phi - self.a).square().sum() / (2 * (1 + sigma)) + 0.5 * self.c * phi.square().sum())


@dataclass
class TabularRewardShaping:
    """Reward shaping on a finite soft MDP (the core's :class:`~bilevel_rl.tabular.core.soft_mdp.SoftMDP`).

    The leader sets a reward table ``r_φ = φ ∈ R^{S×A}``; the follower is a softmax policy ``π_λ`` maximising the soft
    value ``J(φ, λ) = V^{π_λ}_{r_φ}(ρ)`` (unique maximiser ``π*(φ) = softmax(Q*_φ/τ)``). The upper loss is the
    negative soft return under a fixed true reward plus a ridge term,
    ``G(φ, λ) = −V^{π_λ}_{r_true}(ρ) + (c/2)‖φ‖²``. ``∇_φ J`` is the discounted state–action occupancy of ``π_λ``
    (eq. 12); gradients come from autograd through the exact :func:`policy_evaluation`, ``∇Φ`` from the core's
    :func:`exact_hypergradient`.
    """

    mdp: SoftMDP
    r_true: torch.Tensor
    c: float = 0.01
    phi0: torch.Tensor | None = field(default=None)

    def initial(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``φ_0`` (default zeros) and ``λ_0`` = logits of ``π*(φ_0)``."""
        phi = torch.zeros_like(self.r_true) if self.phi0 is None else self.phi0.clone()
        return phi, torch.log(solve_soft(phi, self.mdp).pi)

    def _upper(self, phi: torch.Tensor, pi: torch.Tensor) -> torch.Tensor:
        return -self.mdp.rho @ policy_evaluation(pi, self.r_true, self.mdp)[1] + 0.5 * self.c * phi.square().sum()

    def grads(self, phi: torch.Tensor, lam: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Closed-form ``(∇_φ G, ∇_λ G, ∇_φ J, ∇_λ J)`` (soft policy gradient and eq. 12; autograd-checked in tests).

        With the occupancy ``ν = (I − γ P^{π})^{-T} ρ``: ``∇_λ V^{π}_r(ρ) = ν(s) π(a|s) (A(s, a))`` for the soft
        advantage-like ``Q^π_r − τ log π`` centred under π, and ``∇_φ J = ν(s) π(a|s)`` (eq. 12 for ``r_φ = φ``).
        """
        pi = torch.softmax(lam, -1)
        eye = torch.eye(self.mdp.num_states, dtype=DTYPE)
        nu = torch.linalg.solve((eye - self.mdp.gamma * self.mdp.policy_transition(pi)).T, self.mdp.rho)
        ent = self.mdp.tau * torch.log(pi)
        grad_J = softmax_pg(pi, nu, policy_evaluation(pi, phi, self.mdp)[0] - ent)
        grad_V_true = softmax_pg(pi, nu, policy_evaluation(pi, self.r_true, self.mdp)[0] - ent)
        return self.c * phi, -grad_V_true, nu[:, None] * pi, grad_J

    def hyper_objective(self, phi: torch.Tensor) -> float:
        """``Φ(φ) = G(φ, π*(φ))``."""
        with torch.no_grad():
            return float(self._upper(phi, solve_soft(phi, self.mdp).pi))

    def hypergradient(self, phi: torch.Tensor) -> torch.Tensor:
        """Exact ``∇Φ`` by the core's implicit differentiation."""
        return exact_hypergradient(phi, lambda p: p, self._upper, self.mdp)[0]

    def _sigma_mdp(self, sigma: float) -> SoftMDP:
        return SoftMDP(self.mdp.P, self.mdp.rho, self.mdp.gamma, self.mdp.tau * (1 + sigma))

    def exact_followers(self, phi: torch.Tensor, sigma: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits of ``λ*(φ)`` and ``λ*_σ(φ)``.

        ``h_σ = J − σG = E Σ_t γ^t (φ + σ r_true − τ(1 + σ) log π) − σ(c/2)‖φ‖²``, so ``λ*_σ`` is the soft optimum for
        the reward ``φ + σ r_true`` at temperature ``τ(1 + σ)``.
        """
        star = solve_soft(phi, self.mdp).pi
        return torch.log(star), torch.log(solve_soft(phi + sigma * self.r_true, self._sigma_mdp(sigma)).pi)

    def proxy_objective(self, phi: torch.Tensor, sigma: float) -> float:
        """Eq. (10) exactly: ``Φ_σ(φ) = (max_λ J(φ, λ) − max_λ h_σ(φ, λ)) / σ``."""
        j_star = self.mdp.rho @ solve_soft(phi, self.mdp).V
        h_star = self.mdp.rho @ solve_soft(phi + sigma * self.r_true, self._sigma_mdp(sigma)).V
        return float((j_star - h_star) / sigma + 0.5 * self.c * phi.square().sum())


@dataclass
class TabularHessianFreeConfig:
    """Hyperparameters of the two-follower penalty method (defaults: the quadratic toy run of the sign study).

    The sign study is ``docs/results/hessian_free_sign.md``.

    Attributes:
        sigma: penalty constant σ (the proxy's O(σ) bias vs the 1/σ error amplification; Thm 1 takes σ² ~ ε).
        eta: outer step η.
        tau1: ``τ_1`` of the λ tracker's steps ``τ_1 / k``.
        tau1_sigma: ``τ'_1`` of the λ' tracker (defaults to ``tau1``).
        inner_steps: ``K`` normalised steps per follower per outer iteration (must grow like 1/σ).
        outer_steps: ``T``.
        sign: ``"eq11"`` (corrected) or ``"printed"`` (Alg. 1 l.15 / Alg. 3 l.9).
        grad_G_at: follower at which ``∇_φ G`` is evaluated (Danskin: ``λ'``; eq. 11: ``λ``).
        log_every: record diagnostics every this many outer iterations.
        blowup: stop once ``‖φ‖`` exceeds this (a diverged run; the last row records it).
    """

    sigma: float = 0.05
    eta: float = 0.02
    tau1: float = 2.0
    tau1_sigma: float | None = None
    inner_steps: int = 200
    outer_steps: int = 400
    sign: Sign = "eq11"
    grad_G_at: GradGAt = "sigma_follower"
    log_every: int = 10
    blowup: float = 1e12


@dataclass
class HessianFreeResult:
    """Final iterates and rows ``{t, phi_norm, hyper_objective, hypergrad_norm, follower_gap}``."""

    phi: torch.Tensor
    lam: torch.Tensor
    lam_sigma: torch.Tensor
    rows: list[dict[str, float]] = field(default_factory=list)

    @property
    def diverged(self) -> bool:
        """Whether the run stopped on the ``blowup`` guard or produced non-finite numbers."""
        last = self.rows[-1]
        return bool(last.get("stopped_on_blowup", 0.0)) or not math.isfinite(last["hypergrad_norm"])


def _normalised(d: torch.Tensor) -> torch.Tensor:
    return d / (d.norm() + 1e-12)


def reward_direction(
    problem: BilevelProblem,
    phi: torch.Tensor,
    lam: torch.Tensor,
    lam_sigma: torch.Tensor,
    cfg: TabularHessianFreeConfig,
) -> torch.Tensor:
    """``d_t = ∇_φ G + s (1/σ)(∇_φ J(φ, λ) − ∇_φ J(φ, λ'))`` with ``s = +1`` (eq. 11) or ``−1`` (printed l.15).

    With exact followers ``λ = λ*(φ)``, ``λ' = λ*_σ(φ)`` and ``grad_G_at="sigma_follower"``, the ``+`` form is
    ``∇Φ_σ(φ)`` by Danskin's theorem (checked against finite differences of eq. 10 in the tests).
    """
    grads_star = problem.grads(phi, lam)
    grads_sigma = problem.grads(phi, lam_sigma)
    g_phi_G = (grads_sigma if cfg.grad_G_at == "sigma_follower" else grads_star)[0]
    sign = 1.0 if cfg.sign == "eq11" else -1.0
    return g_phi_G + sign * (grads_star[2] - grads_sigma[2]) / cfg.sigma


def run_hessian_free(problem: BilevelProblem, cfg: TabularHessianFreeConfig) -> HessianFreeResult:
    """Algorithm 1 / 3 of the paper, corrected as in the module docstring, with exact gradients.

    Each outer iteration ``t``: ``K`` steps ``λ ← λ + (τ_1/k) d_k/‖d_k‖`` with ``d_k = ∇_λ J(φ, λ)`` and
    ``λ' ← λ' + (τ'_1/k) d'_k/‖d'_k‖`` with ``d'_k = ∇_λ J(φ, λ') − σ ∇_λ G(φ, λ')`` (both warm-started), then
    ``φ ← φ − η d_t`` with ``d_t`` of eq. (11) (or the printed sign).
    """
    phi, lam = problem.initial()
    lam_sigma = lam.clone()
    tau1_sigma = cfg.tau1 if cfg.tau1_sigma is None else cfg.tau1_sigma
    result = HessianFreeResult(phi, lam, lam_sigma)

    def log(t: int, stopped: bool = False) -> None:
        finite = bool(torch.isfinite(phi).all())
        row = {
            "t": float(t),
            "phi_norm": float(phi.norm()),
            "hyper_objective": problem.hyper_objective(phi) if finite else float("nan"),
            "hypergrad_norm": float(problem.hypergradient(phi).norm()) if finite else float("nan"),
            "follower_gap": float((lam - lam_sigma).norm()),
        }
        if stopped:
            row["stopped_on_blowup"] = 1.0
        result.rows.append(row)

    for t in range(cfg.outer_steps):
        if t % cfg.log_every == 0:
            log(t)
        for k in range(1, cfg.inner_steps + 1):
            d = problem.grads(phi, lam)[3]
            _, g_lam_G, _, g_lam_J = problem.grads(phi, lam_sigma)
            lam = lam + polynomial_decay(k, cfg.tau1) * _normalised(d)
            lam_sigma = lam_sigma + polynomial_decay(k, tau1_sigma) * _normalised(g_lam_J - cfg.sigma * g_lam_G)
        phi = phi - cfg.eta * reward_direction(problem, phi, lam, lam_sigma, cfg)
        if not bool(torch.isfinite(phi).all()) or float(phi.norm()) > cfg.blowup:
            log(t + 1, stopped=True)
            break
    else:
        log(cfg.outer_steps)
    result.phi, result.lam, result.lam_sigma = phi, lam, lam_sigma
    return result
