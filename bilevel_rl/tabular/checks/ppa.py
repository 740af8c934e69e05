"""PPA-BRL implicit hypergradient term (Chakraborty et al., ICML 2023 workshop; the θ-space IFT), corrected.

The follower is a tabular softmax policy ``π_θ = softmax(θ)`` (``θ ∈ R^{S×A}``, ``d = S·A``) maximising
``V(ν, θ) = E_{s_0~ρ}[Σ_t γ^t (r_ν(s_t, a_t) − τ log π_θ(a_t|s_t))]``; the entropy term (not in the paper) gives a
finite, unique-up-to-shift maximiser ``θ*(ν) = Q*/τ`` (an unregularised softmax optimum is deterministic, so
its logits diverge, and the paper's Assumption 4, §4, cannot hold for it). The principal's utility is
``D(π) = E_{τ~π}[U(τ)]`` with ``U(τ) = Σ_{h<H_u} u(s_h, a_h)`` from ``ρ`` (undiscounted, eq. 6–7), ``ν``-free.

Implicit term (eqs. 12–13, §3): the factor ``−∇²_{νθ}V [∇²_θ V]^{-1}`` of eq. (13) does not depend on the
trajectory, so it can be taken out of the expectation (the paper does not say so). With ``g_U = ∇_θ D``,
``H = ∇²_θ V`` and ``J = ∇²_{νθ} V`` (n × d), the IFT gives ``∇_ν D(π_{θ*(ν)}) = −J H^{-1} g_U = J (−H)^{-1} g_U``.
Since ``J = Σ_{s,a} ∇_ν r(s, a) X[(s, a), :]`` for an ``(S·A) × d`` matrix ``X``, the whole term is one VJP of
``W = X v`` through ``r_ν`` with ``v = (−H)^{-1} g_U``.

Corrections of the printed estimator:

* Eq. (28) (appendix Section 9) writes ``∇²_θ V = E[(Σ_h γ^h r)(Σ_j ∇²_θ log π)]``; the Hessian of an expectation over a
  ``θ``-dependent distribution also has the outer-product term ``(Σ_j ∇ log π)(Σ_j ∇ log π)^T``.
  :func:`ppa_sampled_terms` uses the full (DiCE) form; ``hessian="paper_eq28"`` drops the outer product.
* Softmax logits are shift-invariant per state, so ``H`` is singular even with entropy (against Assumption 4).
  ``solver="damped"`` solves ``(−H + δI) v = g_U``; ``solver="projected"`` solves on the complement of the per-state
  shift directions (the exact Moore–Penrose solution, since ``g_U`` and the rows of ``J`` are orthogonal to the
  shifts).
* The estimators use causal (reward-to-go) forms of eqs. (27)–(29): a term at step ``t`` is multiplied only by the
  scores of actions up to ``t``; this is unbiased like the full-trajectory form but has lower variance.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from bilevel_rl.tabular.core.reward import RewardFn, reward_vjp
from bilevel_rl.tabular.core.sampling import Simulator, sample_trajectories
from bilevel_rl.tabular.core.soft_mdp import DTYPE, SoftMDP, policy_evaluation


def principal_utility(pi: torch.Tensor, utility: torch.Tensor, horizon: int, mdp: SoftMDP) -> torch.Tensor:
    """Exact ``D(π) = E_{s_0~ρ, π}[Σ_{h<H_u} u(s_h, a_h)]`` by a forward recursion (differentiable in ``π``)."""
    mu = mdp.rho
    total = torch.zeros((), dtype=DTYPE)
    for _ in range(horizon):
        total = total + (mu[:, None] * pi * utility).sum()
        mu = mu @ mdp.policy_transition(pi)
    return total


def follower_objective(theta: torch.Tensor, r: torch.Tensor, mdp: SoftMDP) -> torch.Tensor:
    """``V(ν, θ) = ρ · V^{softmax θ}_{soft}(r_ν)``, exact and twice differentiable in ``θ`` and ``r``."""
    return (mdp.rho * policy_evaluation(torch.softmax(theta, dim=1), r, mdp)[1]).sum()


@dataclass
class IFTTerms:
    """The three pieces of the implicit term at ``θ``.

    Attributes:
        hessian: ``H = ∇²_θ V (d, d)``.
        mixed: ``X ((S·A), d)`` with ``∇²_{νθ} V = Σ_{s,a} ∇_ν r(s, a) X[(s, a), :]``.
        utility_grad: ``g_U = ∇_θ D(π_θ) (d,)``.
    """

    hessian: torch.Tensor
    mixed: torch.Tensor
    utility_grad: torch.Tensor


def ppa_exact_terms(
    r: torch.Tensor, theta: torch.Tensor, mdp: SoftMDP, utility: torch.Tensor, utility_horizon: int
) -> IFTTerms:
    """Exact ``H``, ``X`` and ``g_U`` by autograd through the exact policy evaluation."""
    r = r.detach()
    theta = theta.detach()
    d = theta.numel()
    H = torch.autograd.functional.hessian(lambda th: follower_objective(th.reshape(theta.shape), r, mdp), theta)

    def grad_theta(rr: torch.Tensor) -> torch.Tensor:
        th = theta.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(follower_objective(th, rr, mdp), th, create_graph=True)
        return g.reshape(-1)

    X = torch.autograd.functional.jacobian(grad_theta, r).reshape(d, -1).T
    th = theta.clone().requires_grad_(True)
    (gU,) = torch.autograd.grad(principal_utility(torch.softmax(th, 1), utility, utility_horizon, mdp), th)
    return IFTTerms(H.reshape(d, d), X, gU.reshape(-1))


HessianForm = Literal["full", "paper_eq28"]
Solver = Literal["damped", "projected"]


@dataclass
class PPAEstimatorConfig:
    """Sampling and solver settings of the PPA-BRL implicit-term estimator.

    Attributes:
        num_trajectories: trajectories in each of the independent ``H`` and ``X`` batches (independent batches,
            our choice: the plug-in ``Ĵ Ĥ^{-1} ĝ_U`` is biased anyway, and independence keeps the batches'
            errors from multiplying).
        utility_trajectories: trajectories of the (short, ``H_u``-step) ``g_U`` batch; default ``num_trajectories``.
        horizon: length ``H_ℓ`` of the lower-level trajectories (truncation bias ``O(γ^{H_ℓ})``).
        damping: ``δ`` of the damped solve.
        solver: ``"damped"`` (``(−H + δI)^{-1}``) or ``"projected"`` (pseudo-inverse on the shift complement).
        hessian: ``"full"`` (corrected) or ``"paper_eq28"`` (drops the outer-product term; ablation only).
        chunk: trajectories processed at once (memory bound ``chunk · H_ℓ · d``).
    """

    num_trajectories: int = 8192
    utility_trajectories: int | None = None
    horizon: int = 25
    damping: float = 1e-3
    solver: Solver = "damped"
    hessian: HessianForm = "full"
    chunk: int = 4096


def _scores(states: torch.Tensor, actions: torch.Tensor, pi: torch.Tensor) -> torch.Tensor:
    """Per-step scores ``∇_θ log π(a_t|s_t) = e_{s_t} ⊗ (e_{a_t} − π(·|s_t))`` as ``(N, L, d)``."""
    S, A = pi.shape
    u = F.one_hot(states, S).to(DTYPE)[..., None] * (F.one_hot(actions, A).to(DTYPE) - pi[states])[..., None, :]
    return u.reshape(*states.shape, S * A)


def _policy_curvature(pi: torch.Tensor) -> torch.Tensor:
    """``B (S, d, d)``: ``−∇²_θ log π(a|s) = blockdiag_s(diag π_s − π_s π_sᵀ)`` (the same for every ``a``)."""
    S, A = pi.shape
    B = torch.zeros(S, S * A, S * A, dtype=DTYPE)
    for s in range(S):
        B[s, s * A : (s + 1) * A, s * A : (s + 1) * A] = torch.diag(pi[s]) - torch.outer(pi[s], pi[s])
    return B


def ppa_sampled_terms(
    r: torch.Tensor,
    theta: torch.Tensor,
    mdp: SoftMDP,
    utility: torch.Tensor,
    utility_horizon: int,
    cfg: PPAEstimatorConfig,
    generator: torch.Generator,
) -> IFTTerms:
    """Monte-Carlo estimates of ``H``, ``X`` and ``g_U`` from on-policy rollouts of ``π_θ`` (eqs. 27–29, corrected).

    With ``c_t = r(s_t, a_t) − τ log π(a_t|s_t)``, per-step scores ``u_t`` and prefix scores ``G_t = Σ_{k≤t} u_k``:

    * ``Ĥ = mean Σ_t γ^t [c_t (G_t G_tᵀ − Σ_{k≤t} B_{s_k}) − τ (u_t G_tᵀ + G_t u_tᵀ) + τ B_{s_t}]`` — the DiCE
      Hessian of ``E[Σ γ^t c_t]`` (``c_t`` itself depends on ``θ`` through the entropy term);
      ``paper_eq28`` omits ``c_t G_t G_tᵀ``.
    * ``X̂ = mean Σ_t γ^t e_{(s_t, a_t)} G_tᵀ`` (eq. 29, causal form).
    * ``ĝ_U = mean Σ_{h<H_u} u(s_h, a_h) G_h`` (REINFORCE with reward-to-go).

    Each uses its own batch of on-policy trajectories from ``ρ``.
    """
    pi = torch.softmax(theta.detach(), dim=1)
    sim = Simulator(mdp, pi)
    r = r.detach()
    S, A = pi.shape
    d, N, L = S * A, cfg.num_trajectories, cfg.horizon
    tau, disc = mdp.tau, mdp.gamma ** torch.arange(L, dtype=DTYPE)
    curv = _policy_curvature(pi)
    H = torch.zeros(d, d, dtype=DTYPE)
    state_coef = torch.zeros(S, dtype=DTYPE)
    X = torch.zeros(d, d, dtype=DTYPE)
    gU = torch.zeros(d, dtype=DTYPE)
    for start in range(0, N, cfg.chunk):
        n = min(cfg.chunk, N - start)
        # Hessian batch
        ro = sample_trajectories(sim, mdp.rho, n, L, generator)
        u = _scores(ro.states, ro.actions, pi)
        G = u.cumsum(1)
        c = r[ro.states, ro.actions] - tau * torch.log(pi[ro.states, ro.actions])
        w = disc * c
        if cfg.hessian == "full":
            H += (G * w[..., None]).reshape(-1, d).T @ G.reshape(-1, d)
        elif cfg.hessian != "paper_eq28":
            raise ValueError(f"unknown hessian form {cfg.hessian!r}")
        cross = (u * disc[:, None]).reshape(-1, d).T @ G.reshape(-1, d)
        H -= tau * (cross + cross.T)
        visits = F.one_hot(ro.states, S).to(DTYPE)
        state_coef -= (w[..., None] * visits.cumsum(1)).sum((0, 1))
        state_coef += tau * (disc[:, None] * visits).sum((0, 1))
        # mixed-Jacobian batch
        ro = sample_trajectories(sim, mdp.rho, n, L, generator)
        G = _scores(ro.states, ro.actions, pi).cumsum(1)
        flat = (ro.states * A + ro.actions).reshape(-1)
        X.index_add_(0, flat, (G * disc[:, None]).reshape(-1, d))
    H += torch.einsum("s,sij->ij", state_coef, curv)
    NU = N if cfg.utility_trajectories is None else cfg.utility_trajectories
    for start in range(0, NU, cfg.chunk):
        n = min(cfg.chunk, NU - start)
        ro = sample_trajectories(sim, mdp.rho, n, utility_horizon, generator)
        G = _scores(ro.states, ro.actions, pi).cumsum(1)
        gU += (utility[ro.states, ro.actions][..., None] * G).sum((0, 1))
    return IFTTerms(H / N, X / N, gU / NU)


def _shift_complement_basis(num_states: int, num_actions: int) -> torch.Tensor:
    """Orthonormal basis ``(d, S(A−1))`` of the logits orthogonal to every per-state shift ``e_s ⊗ 1``."""
    q, _ = torch.linalg.qr(torch.cat([torch.ones(num_actions, 1), torch.eye(num_actions)], 1).to(DTYPE))
    block = q[:, 1:num_actions]
    return torch.block_diag(*[block] * num_states)


def ppa_implicit_gradient(
    terms: IFTTerms, x: torch.Tensor, reward_fn: RewardFn, solver: Solver = "damped", damping: float = 1e-3
) -> torch.Tensor:
    """``∇_ν D(π_{θ*(ν)}) ≈ J v`` with ``v = (−H + δI)^{-1} g_U`` (damped) or ``(−H)^+ g_U`` (projected).

    Args:
        terms: exact or sampled ``H``, ``X``, ``g_U``.
        x: leader variable ``ν``.
        reward_fn: ``ν ↦ r_ν (S, A)``.
        solver: ``"damped"`` or ``"projected"``.
        damping: ``δ >= 0`` for the damped solve.

    Returns:
        The implicit term (gradient of the principal's utility ``D``; use ``−`` for a loss).
    """
    H, g = terms.hessian, terms.utility_grad
    S, A = reward_fn(x.detach()).shape
    if solver == "damped":
        v = torch.linalg.solve(-H + damping * torch.eye(S * A, dtype=DTYPE), g)
    elif solver == "projected":
        basis = _shift_complement_basis(S, A)
        v = basis @ torch.linalg.solve(-basis.T @ H @ basis, basis.T @ g)
    else:
        raise ValueError(f"unknown solver {solver!r}")
    return reward_vjp(x, reward_fn, (terms.mixed @ v).reshape(S, A))


def ppa_implicit_estimate(
    x: torch.Tensor,
    reward_fn: RewardFn,
    theta: torch.Tensor,
    mdp: SoftMDP,
    utility: torch.Tensor,
    utility_horizon: int,
    cfg: PPAEstimatorConfig,
    generator: torch.Generator,
) -> torch.Tensor:
    """The corrected PPA-BRL implicit term from samples at the follower's logits ``θ`` (eq. 26 with θ^K = θ).

    A plug-in of unbiased ``Ĥ``, ``X̂``, ``ĝ_U`` into ``X̂ (−Ĥ + δI)^{-1} ĝ_U``: consistent but not unbiased
    (the inverse is nonlinear), so it is tested at a stated sample size rather than by averaging.
    """
    terms = ppa_sampled_terms(reward_fn(x.detach()), theta, mdp, utility, utility_horizon, cfg, generator)
    return ppa_implicit_gradient(terms, x, reward_fn, cfg.solver, cfg.damping)
