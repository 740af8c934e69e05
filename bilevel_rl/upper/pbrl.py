"""PBRL: penalty-based bilevel RL for RLHF (Shen, Yang, Chen, JMLR 2025, §3–4, App. E.2).

The lower-level constraint is replaced by a penalty (eq. 3.1, §3) and Alg. 1 (§4.3, update 4.4) descends

    F_λ(x, y) = f(x, y) + λ p(x, y),        f = E_{d0, d1 ~ π_y}[ℓ_x(d0, d1)]   (Bradley–Terry, eq. 2.5)

in both variables, with the penalty gradients in closed form at a best response ``π̂ ≈ π*(x)``
(App. C.7, eqs. C.29, C.31; the reasoning behind the choices below is in docs/theory/penalty_methods.md §1):

* **Leader**: ``x ← x − η (∇_x f + w λ_k ∇_x p̂)`` (``w = penalty_weight_x``; E.2's λ = 1/β = 1000 would swamp BT).
  Value penalty (eq. 3.2; Lemma 7(a), §4.1, with eq. C.1): ``∇_x p_V = E_π̂[Σ γ^t ∇r_x] − E_{π_y}[Σ γ^t ∇r_x]``
  from both followers' on-policy episodes (``γ^t`` from the episode start, so that ``s_0 ~ ρ``). Bellman penalty
  (eqs. 3.5–3.7; Lemma 9(a), §4.2): ``∇_x p_B = E_{s~ρ}[(E_{a~π̂} − E_{a~π_y}) ∇_x Q^π̂(s, a)]``. **Choice**
  ``bellman_estimator=depth1`` truncates ``∇_x Q^π̂(s, a) = ∇r_x(s, a) + γ E ∇_x V^π̂(s')`` after its first term
  (dropping an ``O(γ‖π̂ − π_y‖)`` continuation), on the follower's batch states (``bellman_states=all``: ``π_y``'s
  visitation instead of ``ρ``; ``start``: episode starts, ``s ~ ρ``); ``mixed`` is the untruncated estimator
  (``a_0 ~ π_y`` then ``π̂`` vs all-``π̂`` rollouts from episode starts, via ``rollouts_from``: tabular only).
* **Follower**: ``∇_y F_λ / λ = −∇_y V^{π_y}_{r_x} + β ∇_y f`` with ``β = 1/λ_k``: its own RL step on ``r_x``
  plus the extra policy loss ``β L_up``, ``L_up = mean_j sg(ℓ_j − b) Σ_{(s,a) ∈ d0_j ∪ d1_j} log π_y(a|s)``
  (score function: ``f`` depends on ``y`` only through the segments, §2.2, eq. 2.5) on ``policy_loss_pairs``
  pairs redrawn at every call, by default from the newest phase's pairs (E.2: "16 new pairs per epoch"; older ones are
  off-policy and the paper gives no correction). ``policy_loss_scale`` converts units: 1 for a follower whose loss is
  ``−V(ρ)`` (tabular :class:`SoftPolicyGradient`); SB3's per-sample policy losses are ≈ ``(1 − γ)·(−V(ρ))``, and a
  score-function loss on stored segments is unbounded below (it can push their actions' log-probabilities to −∞), so
  the deep config uses 0.01 (the paper found learning "very sensitive" to β, App. E.2). The Bellman y-step is the
  same RL step (``p_B(x, ·)`` has the same minimiser ``π*(x)``), not ``∇_y g`` with ``π̂``'s critic.
* **Best response** (``best_response=separate``): ``follower.spawn(seed + 1)`` trained on ``r_x`` only, continued
  (warm start) each iteration; ``shared`` aliases ``π̂ := π_y`` so ``∇_x p = 0`` (our reading of the deep run,
  whose App. E.2 describes one A2C policy; degenerate for reward shaping: docs/theory/penalty_methods.md §1.6).

Alg. 1's "penalty constant γ" (line 1) is λ and its line 6 lost the minus sign of (4.4): we descend ``F_λ``.
The two-follower machinery is :mod:`bilevel_rl.upper.penalty` (shared with the Hessian-free method).

``objective=leader_reward`` (reward shaping, the case in which ``x`` moves only through the penalty): the same
descent on ``F_λ = f + λ p_V`` with ``f = −J̄`` (the leader's return of its own reward): the leader steps on
``λ σ (∇DR(π̂) − ∇DR(π_y))`` plus a shaping cost's direct term, the main follower ``π_y`` trains on its shaped
reward plus the extra loss ``(1/λ)·(−Ā log π_y)`` with the leader's advantages, and the best response ``π̂``
trains on the shaped reward only: ``π̂`` is the follower a shaping designer would deploy (its training return is
logged as ``upper/best_response/ep_true_return``), ``π_y`` also sees the leader's reward through its extra loss.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
from typing_extensions import override

from bilevel_rl.capabilities import Capability, Requirements
from bilevel_rl.data.trajectories import TrajectoryBatch
from bilevel_rl.schedules import penalty_constant
from bilevel_rl.upper.base import LeaderStep
from bilevel_rl.upper.estimators import expected_policy_reward, rollout_return_surrogate, sample_actions
from bilevel_rl.upper.penalty import PenaltyFollowerConfig, PenaltyInputs, PenaltyRule
from bilevel_rl.upper.preference_rule import positive


@dataclass
class PBRLConfig(PenaltyFollowerConfig):
    """Hyperparameters of PBRL (defaults: value penalty, λ = 2 as in SoBiRL's comparison and PBRL E.1).

    Attributes:
        penalty: ``value`` (eq. 3.2) or ``bellman`` (eqs. 3.5–3.7).
        lam: penalty constant λ (E.1: 2 value, 7 Bellman; E.2: 1/β_0 = 1000).
        lam_schedule: ``constant`` (Thm 11), ``linear`` (``λ + lam_growth·(k−1)``) or ``geometric``
            (``λ·lam_growth^⌊(k−1)/lam_every⌋``) over outer iterations ``k ≥ 1``, capped at ``lam_max``.
        lam_growth: slope (linear) or factor (geometric).
        lam_every: iterations per geometric step (E.2 decays β every 3000 gradient steps, factor unspecified).
        lam_max: cap of λ (``None``: none).
        penalty_weight_x: ``w`` in the leader's ``∇_x f + w λ ∇_x p`` (1: faithful).
        beta: the follower's extra-loss coefficient (``None``: ``1/λ_k``), times ``policy_loss_scale``.
        best_response: ``separate`` (faithful) or ``shared`` (``π̂ := π_y``, ``∇_x p = 0``).
        bellman_estimator: ``depth1`` (truncated, any follower) or ``mixed`` (generative model: tabular).
        bellman_states: ``all`` batch states or ``start`` (episode starts, ``s ~ ρ``) for ``depth1``.
        bellman_max_states: at most this many states per update (``depth1``).
        bellman_rollouts: rollouts per policy (``mixed``).
        bellman_horizon: their length (truncation bias ``O(γ^H)``).
        num_action_samples: actions per state for ``E_{a~π}[r]`` with continuous actions (exact when discrete).
    """

    name: str = "pbrl"
    penalty: Literal["value", "bellman"] = "value"
    lam: float = 2.0
    lam_schedule: Literal["constant", "linear", "geometric"] = "constant"
    lam_growth: float = 1.0
    lam_every: int = 1
    lam_max: float | None = None
    penalty_weight_x: float = 1.0
    beta: float | None = None
    best_response: Literal["separate", "shared"] = "separate"
    bellman_estimator: Literal["depth1", "mixed"] = "depth1"
    bellman_states: Literal["all", "start"] = "all"
    bellman_max_states: int = 2048
    bellman_rollouts: int = 1024
    bellman_horizon: int = 20
    num_action_samples: int = 8

    def __post_init__(self) -> None:
        super().__post_init__()
        positive(self, "lam", "lam_every", "bellman_max_states", "bellman_rollouts", "bellman_horizon")
        positive(self, "num_action_samples")
        if self.lam_growth < 0 or (self.lam_schedule == "geometric" and self.lam_growth == 0):
            raise ValueError(f"upper.lam_growth must be >= 0 (> 0 for geometric), got {self.lam_growth}")
        if self.lam_max is not None and self.lam_max < self.lam:
            raise ValueError(f"upper.lam_max must be >= upper.lam or null, got {self.lam_max}")
        if self.penalty_weight_x < 0 or (self.beta is not None and self.beta < 0):
            raise ValueError("upper.penalty_weight_x and upper.beta must be >= 0")

    def lam_at(self, k: int) -> float:
        """λ_k at outer iteration ``k ≥ 1`` (the schedule shared with the tabular PBRL reproduction)."""
        return penalty_constant(k - 1, self.lam, self.lam_schedule, self.lam_growth, self.lam_every, self.lam_max)


class PBRL(PenaltyRule):
    """PBRL with the value or the Bellman penalty (see the module docstring)."""

    name = "pbrl"
    objectives = ("preferences", "leader_reward")
    config: PBRLConfig

    @classmethod
    @override
    def objective_problem(cls, params: Any, objective: str) -> str | None:
        if objective == "leader_reward" and params is not None and params.penalty != "value":
            return "upper.penalty=bellman is for objective=preferences; use upper.penalty=value (reward shaping)"
        if objective == "leader_reward" and params is not None and params.penalty_hinge:
            return "upper.penalty_hinge=true reads the sign of the shaping part of p only; use upper=pbrl_shaping"
        if objective == "leader_reward" and params is not None and params.best_response == "shared":
            return "upper.best_response=shared makes the penalty's gradient zero; use upper.best_response=separate"
        return super().objective_problem(params, objective)

    def __init__(self, config: PBRLConfig) -> None:
        self.config = config
        super().__init__()
        self.separate_best_response = config.best_response == "separate"

    @classmethod
    @override
    def requirements(cls, params: Any) -> Requirements:
        req = dict(super().requirements(params))
        if params is not None and params.penalty == "bellman" and params.bellman_estimator == "mixed":
            req[Capability.GENERATIVE_MODEL] = "upper.bellman_estimator=mixed; use upper.bellman_estimator=depth1"
        return req

    def lam(self) -> float:
        """λ_k of the current outer iteration."""
        return self.config.lam_at(self.iteration)

    @override
    def penalty_coefficient(self) -> float:
        return self.config.penalty_weight_x * self.lam() if self.best_response is not None else 0.0

    @override
    def policy_loss_coefficient(self) -> float:
        return self.config.beta if self.config.beta is not None else 1.0 / self.lam()

    @override
    def prepare(self, step: LeaderStep) -> tuple[PenaltyInputs | None, dict[str, float]]:
        self.iteration = step.iteration
        prepared, out = super().prepare(step)
        return prepared, {"upper/lambda": self.lam(), "upper/beta": self.policy_loss_coefficient()} | out

    @override
    def penalty_samples(self, step: LeaderStep, batch: TrajectoryBatch) -> tuple[Any, dict[str, float]]:
        c, br, main = self.config, self.best_response, self.follower
        if c.penalty == "value":
            return None, {}
        assert br is not None and main is not None and self.reward_model is not None
        starts = batch.obs[batch.episode_starts.astype(bool)]
        if c.bellman_estimator == "mixed":
            if len(starts) == 0:
                raise ValueError("the follower batch holds no episode start; increase trainer.steps_per_iter")
            obs0 = starts[step.rng.integers(len(starts), size=c.bellman_rollouts)]
            first = sample_actions(main.action_dist(obs0), 1, step.generator)[0].cpu().numpy()
            h = c.bellman_horizon
            hat = br.follower.rollouts_from(obs0, None, h, step.rng)
            return (hat, br.follower.rollouts_from(obs0, first, h, step.rng)), {}
        states = starts if c.bellman_states == "start" else batch.flat_obs()
        if len(states) > c.bellman_max_states:
            states = states[step.rng.choice(len(states), c.bellman_max_states, replace=False)]
        return torch.as_tensor(states, device=self.reward_model.device), {"upper/bellman_states": float(len(states))}

    @override
    def penalty_surrogate(self, inputs: PenaltyInputs) -> torch.Tensor:
        """``∇_φ`` of this is ``∇_φ p̂`` of the configured penalty and estimator."""
        c, model, br, main = self.config, self.reward_model, self.best_response, self.follower
        if c.penalty == "value":
            return super().penalty_surrogate(inputs)
        assert model is not None and br is not None and main is not None
        if c.bellman_estimator == "mixed":
            hat, mix = inputs.extra
            return rollout_return_surrogate(model, hat, self.gamma) - rollout_return_surrogate(model, mix, self.gamma)
        k, states, g = c.num_action_samples, inputs.extra, inputs.generator
        return (
            expected_policy_reward(model, br.follower, states, k, g) - expected_policy_reward(model, main, states, k, g)
        ).mean()
