"""PPA-BRL (Chakraborty et al., ICML 2023 workshop; PARL): the θ-space implicit hypergradient as an RLHF leader rule.

The follower's policy ``π_θ`` maximises ``V(φ, θ) = E_{s_0~ρ}[Σ_t γ^t (r_φ(s_t, a_t) − λ log π_θ(a_t|s_t))]`` (eq. 3
with an entropy term: without it the optimal softmax policy is deterministic, its logits diverge and the finite,
unique ``θ*`` that §2 and Assumption 4 (§4) take for granted does not exist). The upper loss is the Bradley–Terry
loss on pairs drawn by the follower, ``G(φ) = E_{d ~ π_{θ*(φ)}}[ℓ_φ(d)]``. The log-derivative trick (eq. 8), the
chain rule (eq. 9) and the implicit function theorem on ``∇_θ V(φ, θ*(φ)) = 0`` (eqs. 10–12) give eq. 13, in which
``J (−H)^{-1}`` does not depend on the trajectory and factors out of the expectation:

    ∇_φ G = E[∇_φ ℓ]  +  J (−H)^{-1} g_U,                                                          (PPA-RLHF)
    g_U = E[(ℓ − b) Σ_{j,t} ∇_θ log π_θ(a^j_t|s^j_t)],   H = ∇²_θ V,   J = ∇²_{φθ} V  (n × d).

The direct term is absent from the paper's eq. 8 (its utility does not depend on φ); RLHF needs it
(``include_direct_term``, default on). Estimation at the follower's current ``θ`` (plug-in θ^K, eq. 26), from the
follower's on-policy batch of the last phase with within-episode times ``t < horizon`` (steps of episodes that
began before the record are left out):

* ``H·p``: double backward through the DiCE surrogate ``(1/N_ep) Σ_t γ^t c_t(θ) exp(G_t − ⊥G_t)`` with
  ``c_t = scale·r_φ(s_t, a_t) − λ log π_θ(a_t|s_t)`` and causal score sums ``G_t = Σ_{k≤t} log π_θ(a_k|s_k)``:
  the full Hessian ``E[Σ γ^t (c_t (G'G'^T + ∇²G) + ∇c_t G'^T + G' ∇c_t^T + ∇²c_t)]``. The paper's eq. 28 drops the
  outer product ``c_t G'G'^T`` (``hessian=paper_eq28`` keeps that error, for ablation only).
* ``v ≈ (−H)^{-1} g_U`` by conjugate gradients (``cg_iters``) with damping ``δ``: softmax-type policies have an
  exactly singular ``H`` (logits are shift-invariant per state), so ``δ > 0``. ``solver=damped`` solves
  ``(−H + δI) v = g_U`` (the plain damped form; CG stops at the first direction of non-positive curvature, which
  a sampled ``H`` away from the optimum often has, leaving ``v = 0``); ``solver=normal`` (default) solves the
  Tikhonov least-squares problem ``(H² + δ²I) v = −H g_U``, defined for indefinite ``H`` with
  ``‖v‖ ≤ ‖g_U‖/(2δ)`` and equal to ``(−H)^+ g_U`` as ``δ → 0`` (two Hessian-vector products per iteration).
* ``J v = ∇_φ (1/N_ep) Σ_t γ^t scale·r_φ(s_t, a_t) Σ_{k≤t} ∇_θ log π_θ(a_k|s_k)·v`` (eq. 29, causal form): the
  per-step directional derivatives come from one double backward, then one VJP through the reward model.

``θ`` is whatever :meth:`Follower.action_dist` with ``grad=True`` is differentiable in: the leaves of its autograd
graph (SB3: the actor/policy network; tabular: the logits of SoftPolicyGradient). A follower without such leaves
(the soft-VI oracle) is refused. ``H``'s graph is built once per update (``θ`` does not move during leader steps);
``g_U``, the solve and ``J v`` are redone for every minibatch. As for HPGD: ``λ`` is read live, ``scale`` is the
reward normalisation the follower sees, the score term uses the current iteration's (on-policy) pairs, and
segments that start mid-episode drop the shift of their start-state distribution.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from typing_extensions import override

from bilevel_rl.capabilities import Capability, Requirements
from bilevel_rl.data.segments import PreferencePairs
from bilevel_rl.data.trajectories import TrajectoryBatch
from bilevel_rl.followers.base import Follower
from bilevel_rl.reward_models.base import RewardModel
from bilevel_rl.upper import estimators as est
from bilevel_rl.upper.base import LeaderStep
from bilevel_rl.upper.preference_rule import LeaderOptimConfig, PreferenceRule, Surrogate


@dataclass
class PPAConfig(LeaderOptimConfig):
    """Hyperparameters of PPA (see the module docstring); leader optimiser fields: :class:`LeaderOptimConfig`.

    Attributes:
        max_grad_norm: global gradient-norm clipping (not in the paper; guards the ``1/δ`` amplification).
        include_direct_term: add ``E[∇_φ ℓ]`` (absent from eq. 8, whose utility does not depend on φ; needed for RLHF).
        damping: ``δ`` in ``(−H + δI)`` (damped) or ``(H² + δ²I)`` (normal).
        cg_iters: conjugate-gradient iterations per solve.
        solver: ``normal`` (Tikhonov least squares, any ``H``) or ``damped`` (needs ``−H + δI`` positive definite).
        horizon: within-episode steps of the follower batch used for ``H`` and ``J`` (truncation ``O(γ^horizon)``).
        gamma: the follower's discount; ``None`` reads it from the follower.
        hessian: ``full`` (corrected, DiCE) or ``paper_eq28`` (drops the outer product; ablation).
        baseline: subtract the leave-one-out mean loss of the other pairs from ``ℓ`` in ``g_U``.
        implicit_pairs: ``current`` (pairs queried this iteration, on-policy) or ``all``.
    """

    name: str = "ppa"
    max_grad_norm: float | None = 1.0
    include_direct_term: bool = True
    damping: float = 1e-2
    cg_iters: int = 10
    solver: Literal["normal", "damped"] = "normal"
    horizon: int = 200
    gamma: float | None = None
    hessian: Literal["full", "paper_eq28"] = "full"
    baseline: bool = True
    implicit_pairs: Literal["current", "all"] = "current"

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.damping > 0:
            raise ValueError(f"upper.damping must be > 0 (the softmax Hessian is singular), got {self.damping}")
        for key in ("cg_iters", "horizon"):
            if int(getattr(self, key)) <= 0:
                raise ValueError(f"upper.{key} must be > 0, got {getattr(self, key)}")
        if self.gamma is not None and not 0.0 <= self.gamma < 1.0:
            raise ValueError(f"upper.gamma must be in [0, 1) or null, got {self.gamma}")


def graph_leaves(out: torch.Tensor) -> list[torch.Tensor]:
    """The leaf tensors ``out`` is differentiable in (the policy parameters behind ``action_dist(grad=True)``)."""
    leaves: dict[int, torch.Tensor] = {}
    stack, seen = [out.grad_fn], set()
    while stack:
        fn = stack.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        variable = getattr(fn, "variable", None)
        if isinstance(variable, torch.Tensor):
            leaves.setdefault(id(variable), variable)
        stack.extend(nxt for nxt, _ in fn.next_functions)
    return list(leaves.values())


def conjugate_gradient(
    matvec: Callable[[torch.Tensor], torch.Tensor], b: torch.Tensor, iters: int
) -> tuple[torch.Tensor, dict[str, float]]:
    """Solve ``A x = b`` for symmetric ``A`` from ``x = 0``; stops at convergence or non-positive curvature."""
    x, r = torch.zeros_like(b), b.clone()
    p, rs, b_norm = r.clone(), float(r @ r), float(b.norm())
    used, negative = 0, 0.0
    for _ in range(iters):
        if rs <= (1e-10 * b_norm) ** 2:
            break
        ap = matvec(p)
        curvature = float(p @ ap)
        if curvature <= 0:
            negative = 1.0
            break
        alpha = rs / curvature
        x, r = x + alpha * p, r - alpha * ap
        rs_new = float(r @ r)
        p, rs, used = r + (rs_new / rs) * p, rs_new, used + 1
    return x, {
        "upper/cg_iters": float(used),
        "upper/cg_residual": rs**0.5 / max(b_norm, 1e-30),
        "upper/cg_negative": negative,
    }


@dataclass
class _EpisodeSteps:
    """Steps of the follower batch whose episode starts inside it, ordered episode by episode."""

    obs: np.ndarray
    actions: np.ndarray
    discount: torch.Tensor  # γ^t
    first: torch.Tensor  # index (in this ordering) of each step's episode start
    episodes: int

    def prefix(self, values: torch.Tensor) -> torch.Tensor:
        """``Σ_{k ≤ t, same episode} values_k`` (differentiable)."""
        total = torch.cumsum(values, 0)
        return total - torch.cat([total.new_zeros(1), total])[self.first]


def episode_steps(batch: TrajectoryBatch, horizon: int, gamma: float, device: torch.device) -> _EpisodeSteps:
    """Select the steps with a known episode start and within-episode time ``t < horizon``."""
    starts = batch.episode_starts.astype(bool)
    ok = np.maximum.accumulate(starts, axis=0) & (batch.timesteps >= 0) & (batch.timesteps < horizon)
    e_idx, t_idx = np.nonzero(ok.T)  # env-major: each episode's steps are contiguous and in time order
    if len(t_idx) == 0:
        raise ValueError("upper=ppa: the follower batch holds no episode start; increase trainer.steps_per_iter")
    episode = np.cumsum(starts, axis=0)[t_idx, e_idx] + e_idx * (batch.num_steps + 1)
    _, first_pos, inverse = np.unique(episode, return_index=True, return_inverse=True)
    t = batch.timesteps[t_idx, e_idx]
    return _EpisodeSteps(
        obs=batch.obs[t_idx, e_idx],
        actions=batch.actions[t_idx, e_idx],
        discount=torch.as_tensor(gamma ** t.astype(np.float64), device=device),
        first=torch.as_tensor(first_pos[inverse], device=device),
        episodes=len(first_pos),
    )


@dataclass
class _HessianGraph:
    """What one PPA update builds once on the follower batch and every minibatch reuses."""

    params: list[torch.Tensor]
    steps: _EpisodeSteps
    value_grad: torch.Tensor  # ∇_θ of the DiCE surrogate, with its graph
    score_dirs: tuple[torch.Tensor, torch.Tensor]  # (Σ_n u_n ∇lp_n, u) for JVPs

    def hvp(self, vec: torch.Tensor) -> torch.Tensor:
        """``H vec``."""
        out = torch.autograd.grad(self.value_grad @ vec, self.params, retain_graph=True, allow_unused=True)
        return _flat(out, self.params)


class PPA(PreferenceRule):
    """PPA-BRL's IFT hypergradient with the corrected (DiCE) Hessian, damping and CG (module docstring)."""

    name = "ppa"

    def __init__(self, config: PPAConfig) -> None:
        super().__init__()
        self.config: PPAConfig = config
        self.gamma = 0.0

    @classmethod
    @override
    def requirements(cls, params: Any) -> Requirements:
        req = {
            Capability.TEMPERATURE: "the follower's objective has an entropy term (PPA eq. 3 with entropy)",
            Capability.PARAMETRIC_POLICY: "H and J are derivatives in the policy parameters",
        }
        if params is None or params.gamma is None:
            req[Capability.GAMMA] = "upper.gamma=null; set upper.gamma"
        return req

    @override
    def attach(self, follower: Follower, reward_model: RewardModel, data: Any = None) -> None:
        super().attach(follower, reward_model, data)
        est.live_temperature(follower, self.name)
        self.gamma = est.rule_discount(follower, self.config.gamma)

    @override
    def prepare(self, step: LeaderStep) -> tuple[_HessianGraph, dict[str, float]]:
        """Build ``H``'s graph and the per-step score directions on the follower batch (once per update)."""
        assert self.follower is not None and self.reward_model is not None
        c, model = self.config, self.reward_model
        lam = est.live_temperature(self.follower, self.name)
        steps = episode_steps(step.on_policy_batch(self.name), c.horizon, self.gamma, model.device)
        dist = self.follower.action_dist(steps.obs, grad=True)
        lp = dist.log_prob(torch.as_tensor(steps.actions, device=model.device))
        params = [p for p in graph_leaves(lp) if p.requires_grad]
        if not params:
            raise ValueError(
                f"upper=ppa needs a parametric policy: {type(self.follower).__name__}.action_dist(obs, grad=True) "
                "is not differentiable in any parameter"
            )
        reward = model.relabel(steps.obs, steps.actions).to(lp.dtype)  # what the follower maximises (scaled)
        cost = reward - lam * lp  # c_t(θ)
        score_sum = steps.prefix(lp)  # G_t
        if c.hessian == "full":
            magic = torch.exp(score_sum - score_sum.detach())  # DiCE: value 1, derivatives of the sampling law
        else:
            magic = 1.0 + score_sum - score_sum.detach()  # drops the outer product (paper eq. 28)
        value = (steps.discount.to(lp.dtype) * cost * magic).sum() / steps.episodes
        grads = torch.autograd.grad(value, params, create_graph=True, allow_unused=True)
        probe = torch.ones_like(lp, requires_grad=True)
        score_grads = torch.autograd.grad(lp, params, grad_outputs=probe, create_graph=True, allow_unused=True)
        graph = _HessianGraph(params, steps, _flat(grads, params), (_flat(score_grads, params), probe))
        return graph, {"upper/hessian_steps": float(len(lp)), "upper/hessian_episodes": float(steps.episodes)}

    @override
    def surrogate(self, pairs: PreferencePairs, step: LeaderStep, prepared: _HessianGraph) -> Surrogate:
        assert self.reward_model is not None and self.follower is not None
        model, c, steps, graph = self.reward_model, self.config, prepared.steps, prepared
        bce, returns, labels = est.pair_losses(model, pairs)
        direct = bce.mean() if c.include_direct_term else bce.sum() * 0.0
        lam = est.live_temperature(self.follower, self.name)
        keep = est.kept_pairs(pairs, c.implicit_pairs, step.iteration, model.device)
        mask = torch.as_tensor(pairs.mask, device=model.device)
        w = (est.implicit_weights(bce, keep, c.baseline)[:, None, None] * mask).reshape(-1)
        active = w != 0
        terms = {"upper/bt_loss": float(bce.mean().detach()), "upper/temperature": lam}
        implicit = torch.zeros((), device=model.device)
        if bool(active.any()):
            # g_U: REINFORCE gradient of the upper loss in θ on the pairs' own steps
            idx = active.cpu().numpy()
            obs = pairs.obs.reshape(-1, *pairs.obs.shape[3:])[idx]
            actions = torch.as_tensor(pairs.actions.reshape(-1, *pairs.actions.shape[3:])[idx], device=model.device)
            lp = self.follower.action_dist(obs, grad=True).log_prob(actions)
            grads = torch.autograd.grad((w[active].to(lp.dtype) * lp).sum(), graph.params, allow_unused=True)
            g_u = _flat(grads, graph.params)
            if c.solver == "damped":
                v, info = conjugate_gradient(lambda p: -graph.hvp(p) + c.damping * p, g_u, c.cg_iters)
            else:
                normal = lambda p: graph.hvp(graph.hvp(p)) + c.damping**2 * p  # noqa: E731
                v, info = conjugate_gradient(normal, -graph.hvp(g_u), c.cg_iters)
            # J v: per-step ∇ log π · v, summed causally, as weights on the follower's rewards
            dirs, probe = graph.score_dirs
            (jvp,) = torch.autograd.grad(dirs @ v, probe, retain_graph=True)
            coef = (steps.discount * steps.prefix(jvp.detach().to(steps.discount.dtype))) * (
                est.reward_scale(model) / steps.episodes
            )
            r = model(
                torch.as_tensor(steps.obs, device=model.device), torch.as_tensor(steps.actions, device=model.device)
            )
            implicit = (coef.to(r.dtype) * r).sum()
            terms.update(info)
            terms.update({"upper/score_grad_norm": float(g_u.norm()), "upper/solve_norm": float(v.norm())})
        params = [p for p in model.parameters() if p.requires_grad]
        terms["upper/implicit_pairs"] = float(keep.sum())
        terms["upper/direct_grad_norm"] = est.grad_norm(direct, params)
        terms["upper/implicit_grad_norm"] = est.grad_norm(implicit, params)
        return Surrogate(direct + implicit, returns, labels, terms)


def _flat(grads: tuple[torch.Tensor | None, ...], params: list[torch.Tensor]) -> torch.Tensor:
    """Concatenate gradients (zeros for unused parameters) into one vector."""
    return torch.cat(
        [(torch.zeros_like(p) if g is None else g).reshape(-1) for g, p in zip(grads, params, strict=True)]
    )
