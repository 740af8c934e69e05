"""HPGD: Hyper Policy Gradient Descent (Thoma et al., NeurIPS 2024) as an RLHF leader rule.

The follower plays the soft-optimal policy ``π*_φ ∝ exp(Q*/λ)`` of the reward it sees, so (Prop. 2, App. E.7)

    ∇_φ log π*_φ(a|s) = (1/λ) ∂_φ A^{π*}(s, a),      ∂_φ A = ∂_φ Q − E_{a'~π} ∂_φ Q(s, a')   (π held fixed)
    ∂_φ Q(s, a) = E^π[Σ_{k≥0} γ^k ∇_φ r_φ(s_k, a_k) | s_0 = s, a_0 = a]                        (Thm. 2, §3.1)

and the RLHF hyper-objective ``E_{(d_0, d_1) ~ π*_φ}[ℓ_φ]`` (App. B; ℓ = Bradley–Terry loss) has gradient
(the log-derivative trick with Prop. 2; derivation in docs/theory/hpgd_rlhf.md)

    ∇ E[ℓ] = E[∇_φ ℓ] + E[(ℓ − b) Σ_{j∈{0,1}} Σ_t (1/λ) ∂_φ A(s^j_t, a^j_t)].                        (HPGD-RLHF)

A constant baseline ``b`` is free because ``E_{a~π}[∂A(s, a)] = 0``; we use the leave-one-out mean of the other
pairs' losses, so ``b`` is independent of the pair it multiplies. Everything is linear in ``∇r``, so the whole
update is the gradient of one surrogate (detached weights times rewards). Two estimators of ``∂A``:

* ``generative`` (Alg. 2, App. D): ``∂̂Q(s, a) = (1/J) Σ_j Σ_{k=0}^{T_j} ∇r(s^j_k, a^j_k)`` along ``J``
  continuations from ``(s, a)`` with ``T_j ~ Geo(1 − γ)``, and ``∂̂V(s)`` the same with ``a_0 ~ π``, drawn with
  :meth:`Follower.rollouts_from` independently of ``ℓ``: unbiased (Prop. 3; no ``∇ log P`` tails, the
  dynamics do not depend on ``φ``). ``rollout_horizon=T`` instead uses ``Σ_{k<T} γ^k ∇r`` (the Rao–Blackwellised
  form, bias ``O(γ^T)``; SoBiRL's eq. 14 estimator). Needs a simulator that resets to any state: tabular
  followers only; SB3 followers are refused.
* ``trajectory`` (one vector–Jacobian product, no simulator reset): along each preference segment,
  ``∂̂A_t = Σ_{k=t}^{H−1} (γκ)^{k−t} ∇r(s_k, a_k) − E_{a'~π}∇r(s_t, a')`` with trace ``κ ∈ [0, 1]``; the weights
  ``w_t = (ℓ − b)/λ`` enter as ``Σ_k c_k r(s_k, a_k) − Σ_t w_t E_{a'} r(s_t, a')`` with the forward discounted sum
  ``c_k = w_k + γκ c_{k−1}`` inside each segment. Its bias (our choice, measured in tests/test_upper_hpgd.py):
  ``κ = 0`` keeps the exact first step ``∇r(s, a) − E_{a'}∇r(s, a')`` of ``∂A`` and drops its continuation
  ``γ (E_{s'|s,a} − E_{s'|s}) ∂V(s')``; ``κ = 1`` adds the segment's own reward-gradient-to-go, which
  correlates with ``ℓ`` through the same segment's later actions and carries the state-dependent part of ``∂Q``
  that a constant baseline cannot remove (docs/theory/hpgd_rlhf.md §3.2). On the tabular lab ``κ = 0`` is the
  less biased (exact expectations: cosine ≥ 0.996 on Dirichlet MDPs where ``κ = 1`` falls to 0.46, both worse
  on slow-mixing chains), so it is the default; with it this estimator coincides with SoBiRL's eq. 99. Segments
  that begin mid-episode also drop the shift of their start-state distribution (the pairs do not hold the steps
  before them).

Under ``objective=leader_reward`` (reward shaping) the rule follows eq. (8) directly (:mod:`bilevel_rl.upper.shaping`):
with the leader's advantages ``Ā_t`` from the objective's critic and ``ω_t = γ_L^t`` (``discount_states``; else 1
and the mean over steps, the usual policy-gradient state weighting: ``objective.state_weighting``),

    ∇J ≈ (1/n) Σ_t ω_t [(σ/λ) Ā_t ∂̂Q_f(s_t, a_t)/σ − β ∇cost(σ r̃_t)],
    ∂̂Q_f/σ = Σ_{k≥t} (γ_F κ)^{k−t} ∇r̃_k − E_{a'}∇r̃(s_t, a'),

the trajectory form (HPGD §5.3-style vector–Jacobian product: one surrogate ``Σ_k c_k r̃_k``). With an exact ``Ā``
and ``κ = 1`` it is unbiased up to the episode truncation (the tabular check); ``κ = 0`` keeps only the first step of
``∂Q_f`` (bias measured in tests/test_shaping_exact.py); a critic's ``Ā`` built from the same trajectory (GAE)
correlates with the trace and adds a bias that the paper avoids with independent rollouts (Alg. 5).

Choices (not in the paper): ``λ`` is read from ``follower.temperature`` at every leader step (SAC's α moves);
when the reward model normalises its output the follower sees ``scale · r_φ``, so the weight is ``scale/λ``; the
implicit term uses only the pairs of the current iteration (``implicit_pairs=current``: the correction is
on-policy) while the Bradley–Terry term uses the whole buffer; global gradient-norm clipping at 1.0
(App. F.2.2); see docs/theory/hpgd_rlhf.md §4.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from typing_extensions import override

from bilevel_rl.capabilities import Capability, Requirements
from bilevel_rl.data.segments import PreferencePairs
from bilevel_rl.followers.base import Follower
from bilevel_rl.objectives.leader_reward import LeaderBatch, LeaderData, follower_scale
from bilevel_rl.reward_models.base import EnvParameterModel, RewardModel
from bilevel_rl.upper.base import LeaderStep
from bilevel_rl.upper.estimators import (
    expected_policy_reward,
    grad_norm,
    implicit_weights,
    kept_pairs,
    live_temperature,
    pair_losses,
    reward_scale,
    rule_discount,
    rule_temperature,
)
from bilevel_rl.upper.preference_rule import LeaderOptimConfig, PreferenceRule, Surrogate, positive
from bilevel_rl.upper.shaping import direct_cost_loss, environment_loss, score_surrogate


@dataclass
class HPGDConfig(LeaderOptimConfig):
    """Hyperparameters of HPGD (see the module docstring); leader optimiser fields: :class:`LeaderOptimConfig`.

    Attributes:
        max_grad_norm: global gradient-norm clipping (paper App. F.2.2: 1.0; the 1/λ factor makes it essential).
        estimator: ``trajectory`` (segment-only, any follower) or ``generative`` (Alg. 2 rollouts, tabular).
        trace: ``κ`` of the trajectory estimator (0: first step of ∂A only; 1: within-segment gradient-to-go).
        gamma: the follower's discount; ``None`` reads it from the follower.
        baseline: subtract the leave-one-out mean loss of the other pairs from ``ℓ`` in the implicit term.
        implicit_pairs: ``current`` (pairs queried this iteration, on-policy) or ``all`` (the whole minibatch).
        action_samples: samples of ``a' ~ π`` for ``E_{a'} r(s, a')`` with continuous actions (discrete: exact).
        num_rollouts: ``J``, independent continuations per segment step (generative).
        rollout_horizon: generative: ``None`` = Alg. 2's truncation ``T ~ Geo(1 − γ)`` per continuation with
            undiscounted sums (unbiased); an integer ``T`` = fixed horizon with ``γ^t`` weights (bias ``O(γ^T)``).
        transition_response: leader parameters that enter the dynamics (``reward_model=tax``): keep the
            follower-response part of the transition term, ``∂_x Q_f ∋ γ_F E[V_f(s') ∇_x log P_x]`` (Thm. 1);
            ``false`` drops it, as the authors' tax-design code does for the income tax.
    """

    name: str = "hpgd"
    max_grad_norm: float | None = 1.0
    estimator: Literal["trajectory", "generative"] = "trajectory"
    trace: float = 0.0
    gamma: float | None = None
    baseline: bool = True
    implicit_pairs: Literal["current", "all"] = "current"
    action_samples: int = 8
    num_rollouts: int = 1
    rollout_horizon: int | None = None
    transition_response: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 <= self.trace <= 1.0:
            raise ValueError(f"upper.trace must be in [0, 1], got {self.trace}")
        if self.gamma is not None and not 0.0 <= self.gamma < 1.0:
            raise ValueError(f"upper.gamma must be in [0, 1) or null, got {self.gamma}")
        positive(self, "action_samples", "num_rollouts", "rollout_horizon")


# ---------------------------------------------------------------------------------------------------- the rule
class HPGD(PreferenceRule):
    """HPGD's hypergradient on the Bradley–Terry hyper-objective (module docstring, eq. HPGD-RLHF)."""

    name = "hpgd"
    objectives = ("preferences", "leader_reward")

    def __init__(self, config: HPGDConfig) -> None:
        super().__init__()
        self.config: HPGDConfig = config
        self.gamma = 0.0

    @staticmethod
    def _needs_gamma(config: HPGDConfig) -> bool:
        return config.estimator == "generative" or config.trace > 0

    @classmethod
    @override
    def requirements(cls, params: Any) -> Requirements:
        req = {
            Capability.TEMPERATURE: "the hypergradient is scaled by 1/lambda (HPGD Prop. 2)",
            Capability.ACTION_DIST: "E_{a'~pi}[r(s, a')] needs the policy",
        }
        if params is not None and params.estimator == "generative":
            req[Capability.GENERATIVE_MODEL] = "upper.estimator=generative; use upper.estimator=trajectory"
        if params is not None and params.gamma is None and cls._needs_gamma(params):
            req[Capability.GAMMA] = "upper.gamma=null; set upper.gamma"
        return req

    @classmethod
    @override
    def objective_problem(cls, params: Any, objective: str) -> str | None:
        if objective == "leader_reward" and params is not None and params.estimator == "generative":
            return "upper.estimator=generative is for objective=preferences; use upper.estimator=trajectory"
        return super().objective_problem(params, objective)

    @override
    def attach(self, follower: Follower, reward_model: RewardModel, data: Any = None) -> None:
        super().attach(follower, reward_model, data)
        leader = data if isinstance(data, LeaderData) else None
        rule_temperature(follower, leader.config.follower_temperature if leader else None, self.name)
        self.gamma = rule_discount(follower, self.config.gamma) if self._needs_gamma(self.config) else 0.0
        if isinstance(reward_model, EnvParameterModel) and reward_model.enters_transitions:
            rule_discount(follower, self.config.gamma)  # the transition term needs γ_F: refuse early without one
            if self.config.transition_response:
                try:
                    follower.soft_state_values(np.zeros((1, *(follower.observation_space.shape or ())), np.float32))
                except NotImplementedError:
                    raise ValueError(
                        f"upper.transition_response=true needs the follower's soft values V_f; "
                        f"{type(follower).__name__} has none (use follower=soft_dqn or upper.transition_response=false)"
                    ) from None

    @override
    def surrogate(self, pairs: PreferencePairs, step: LeaderStep, prepared: Any) -> Surrogate:
        assert self.reward_model is not None and self.follower is not None
        model, c = self.reward_model, self.config
        bce, returns, labels = pair_losses(model, pairs)
        direct = bce.mean()
        lam = live_temperature(self.follower, self.name)
        keep = kept_pairs(pairs, c.implicit_pairs, step.iteration, model.device)
        w_pair = implicit_weights(bce, keep, c.baseline) * (reward_scale(model) / lam)  # (B,)
        mask = torch.as_tensor(pairs.mask, device=model.device)  # (B, 2, H)
        w = w_pair[:, None, None] * mask
        term = self._trajectory_term if c.estimator == "trajectory" else self._generative_term
        implicit = term(pairs, w, step)
        params = [p for p in model.parameters() if p.requires_grad]
        terms = {
            "upper/bt_loss": float(direct.detach()),
            "upper/temperature": lam,
            "upper/implicit_pairs": float(keep.sum()),
            "upper/direct_grad_norm": grad_norm(direct, params),
            "upper/implicit_grad_norm": grad_norm(implicit, params),
        }
        return Surrogate(direct + implicit, returns, labels, terms)

    @override
    def leader_loss(self, data: LeaderBatch, step: LeaderStep, prepared: Any) -> tuple[torch.Tensor, dict[str, float]]:
        """Minus the eq. (8) surrogate (module docstring), plus the direct cost term."""
        assert self.reward_model is not None and self.follower is not None
        model, c = self.reward_model, self.config
        objective = step.leader.config
        lam = rule_temperature(self.follower, objective.follower_temperature, self.name)
        sigma = follower_scale(model, self.follower.reward_mix)
        omega, norm = data.state_weights(objective.state_weighting == "discounted")
        weights = omega * data.advantages * (sigma / lam)
        implicit = (
            score_surrogate(model, self.follower, data, weights, self.gamma * c.trace, c.action_samples, step.generator)
            / norm
        )
        cost = direct_cost_loss(model, data, step.leader, omega) / norm
        params = [p for p in model.parameters() if p.requires_grad]
        terms = {
            "upper/temperature": lam,
            "upper/implicit_grad_norm": grad_norm(implicit, params),
            "upper/cost": float(cost.detach()),
        }
        loss = cost - implicit
        if isinstance(model, EnvParameterModel):  # x enters the environment: direct and transition terms
            response = omega * data.advantages / lam if c.transition_response else None
            follower_gamma = rule_discount(self.follower, c.gamma)
            env_loss, env_terms = environment_loss(
                model, self.follower, data, omega, response, follower_gamma * c.trace, follower_gamma
            )
            loss = loss + env_loss / norm
            terms |= env_terms
        return loss, terms

    def _trajectory_term(self, pairs: PreferencePairs, w: torch.Tensor, step: LeaderStep) -> torch.Tensor:
        """``Σ_k c_k r(s_k, a_k) − Σ_t w_t E_{a'~π} r(s_t, a')`` with ``c_k = w_k + γκ c_{k−1}`` per segment."""
        assert self.reward_model is not None and self.follower is not None
        model = self.reward_model
        decay = self.gamma * self.config.trace
        coef = w.clone()
        for k in range(1, w.shape[-1]):
            coef[..., k] = w[..., k] + decay * coef[..., k - 1]
        active = w.reshape(-1) != 0
        if not bool(active.any()):
            return torch.zeros((), device=model.device)
        obs = torch.as_tensor(pairs.obs, device=model.device).reshape(-1, *pairs.obs.shape[3:])
        actions = torch.as_tensor(pairs.actions, device=model.device).reshape(-1, *pairs.actions.shape[3:])
        rows = coef.reshape(-1) != 0  # with a trace the cumulated weight outlives the step's own weight
        taken = (coef.reshape(-1)[rows] * model(obs[rows], actions[rows])).sum()
        expected = expected_policy_reward(model, self.follower, obs[active], self.config.action_samples, step.generator)
        return taken - (w.reshape(-1)[active] * expected).sum()

    def _generative_term(self, pairs: PreferencePairs, w: torch.Tensor, step: LeaderStep) -> torch.Tensor:
        """``Σ_t w_t (∂̂Q − ∂̂V)`` with independent continuations from every weighted segment step (Alg. 2)."""
        assert self.reward_model is not None
        model, c = self.reward_model, self.config
        active = (w.reshape(-1) != 0).cpu().numpy()
        if not active.any():
            return torch.zeros((), device=model.device)
        reps = c.num_rollouts
        obs = np.repeat(pairs.obs.reshape(-1, *pairs.obs.shape[3:])[active], reps, axis=0)
        actions = np.repeat(pairs.actions.reshape(-1, *pairs.actions.shape[3:])[active], reps, axis=0)
        weights = (w.reshape(-1)[torch.as_tensor(active, device=model.device)] / reps).repeat_interleave(reps)
        # ∂Q: forced first action; ∂V: a_0 ~ π; each with its own continuations (and truncation times)
        return self._continuations(obs, actions, weights, step.rng) - self._continuations(obs, None, weights, step.rng)

    def _continuations(
        self, obs: np.ndarray, first: np.ndarray | None, weights: torch.Tensor, rng: np.random.Generator
    ) -> torch.Tensor:
        """``Σ_n weights_n Σ_t d_{n,t} r(s^n_t, a^n_t)`` along fresh rollouts, ``d`` = ``γ^t`` or ``1{t ≤ T_n}``."""
        assert self.reward_model is not None and self.follower is not None
        model, horizon, n = self.reward_model, self.config.rollout_horizon, len(obs)
        if horizon is None:  # Alg. 2: T_n ~ Geo(1 − γ) on {0, 1, ...}, so P(T_n ≥ t) = γ^t (unbiased)
            stop = rng.geometric(1.0 - self.gamma, size=n) - 1
            order = np.argsort(stop, kind="stable")
        else:
            stop, order = np.full(n, horizon - 1), np.arange(n)
        total = torch.zeros((), device=model.device)
        for chunk in np.array_split(order, max(1, n // 4096)):  # sorted stops: short rollouts stay short
            length = int(stop[chunk].max()) + 1
            ro = self.follower.rollouts_from(obs[chunk], None if first is None else first[chunk], length, rng)
            dev = model.device
            r = model.rewards(torch.as_tensor(ro.obs, device=dev), torch.as_tensor(ro.actions, device=dev))
            t = np.arange(length)[None, :]
            disc = (t <= stop[chunk][:, None]) if horizon is None else np.broadcast_to(self.gamma**t, ro.mask.shape)
            step = torch.as_tensor(disc * ro.mask, device=dev, dtype=r.dtype) * weights[chunk][:, None].to(r.dtype)
            total = total + (step * r).sum()
        return total
