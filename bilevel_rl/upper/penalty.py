"""Components of the penalty-based rules (PBRL value / Bellman penalty, the Hessian-free method).

A penalty rule descends ``F = G(x) + c_x · p̂(x)`` in the leader's parameters and trains two followers: the main one
gets the extra policy loss ``c_y · L_up`` (:class:`PreferencePolicyLoss`, installed through
``Follower.set_extra_policy_loss``), the best response ``π̂ ≈ π*(x)`` is a spawned follower trained on ``r_x`` only
(:class:`BestResponse`). ``∇_x p̂`` for the value penalty is the difference of the two followers' discounted
reward-gradient sums (PBRL Lemma 7(a) with App. C.1; Hessian-free eq. (12)). Each rule *has* these components;
:class:`PenaltyRule` wires them into the minibatch loop.
"""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from typing_extensions import override

from bilevel_rl.capabilities import Capability, Requirements
from bilevel_rl.data.preference_buffer import PreferenceBuffer
from bilevel_rl.data.segments import PreferencePairs
from bilevel_rl.data.trajectories import TrajectoryBatch
from bilevel_rl.followers.base import Follower
from bilevel_rl.objectives.leader_reward import LeaderBatch, LeaderData, follower_scale
from bilevel_rl.reward_models.base import RewardModel
from bilevel_rl.upper.base import LeaderStep
from bilevel_rl.upper.estimators import discounted_return_surrogate, pair_losses, rule_discount
from bilevel_rl.upper.preference_rule import LeaderOptimConfig, PreferenceRule, Surrogate, positive
from bilevel_rl.upper.shaping import direct_cost_loss, normalised_advantages


@dataclass
class PenaltyFollowerConfig(LeaderOptimConfig):
    """Settings shared by the two-follower penalty rules (PBRL, Hessian-free).

    Attributes:
        best_response_steps: env steps of the best response per outer iteration (``None``: keep pace with the main
            follower, i.e. train it up to the main follower's step count).
        best_response_seed: seed of the spawned best response (``None``: the follower's seed + 1).
        policy_loss_pairs: pairs per call of the follower's extra policy loss (redrawn at each call).
        policy_loss_steps: ``objective=leader_reward``: steps of the newest batch per call of that loss.
        policy_loss_source: ``latest`` (pairs of the newest phase) or ``buffer`` (all stored pairs).
        policy_loss_scale: multiplies the extra loss's coefficient (units of the follower's policy loss).
        baseline: ``batch_mean`` (``b`` = mean loss of the drawn pairs) or ``none``.
        gamma: discount of the penalty's returns (``None``: the follower's own ``γ``).
        log_prob_min: per-step floor on ``log π(a|s)`` inside the extra loss (``None``: none). Not in the papers: the
            score-function loss on *stored* segments is unbounded below (pushing a pair's actions to zero density
            sends ``log π → −∞``), and on SAC/Hopper it drove the actor to NaN within two iterations; below the floor
            the step contributes no gradient. Tabular checks use ``None`` (exact score function).
        penalty_hinge: use ``max(p̂, 0)`` in the leader loss, i.e. drop ``λ∇p`` on a minibatch whose penalty estimate
            is ``≤ 0`` (not in the papers). ``p ≥ 0`` by definition (the best response is at least as good as the
            follower); a negative estimate means the trained best response is *worse* than the follower, and
            descending on it makes ``p̂`` more negative without bound: on SAC/Hopper at λ = 2 it swamped the
            preference loss (BT loss 0.3 → 11.8, corr(r_φ, r) → −0.77 within 5 iterations). Default ``False``
            (the exact penalty); the deep configs set it.
        policy_loss_clip: ``objective=leader_reward``: PPO's clipped form of the extra loss with this ``ε``
            (``None``: the plain score function ``−Ā log π``). Not in the papers: the plain form on a stale batch is
            unbounded below for a Gaussian policy (shrinking the std around a positive-advantage action sends
            ``log π → +∞``); on PPO/Hopper it collapsed the std from 1.0 to 0.08 in 35k steps and to 1e-5 by 400k.
            The clipped form has the same gradient at the policy of the leader update (``ρ = 1``), and none for a
            step once its ratio has left ``[1 − ε, 1 + ε]`` in the advantage's direction.
    """

    best_response_steps: int | None = None
    best_response_seed: int | None = None
    policy_loss_pairs: int = 16
    policy_loss_steps: int = 256
    policy_loss_source: Literal["latest", "buffer"] = "latest"
    policy_loss_scale: float = 1.0
    baseline: Literal["batch_mean", "none"] = "batch_mean"
    gamma: float | None = None
    log_prob_min: float | None = None
    penalty_hinge: bool = False
    policy_loss_clip: float | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        positive(self, "best_response_steps", "policy_loss_pairs", "policy_loss_steps", "policy_loss_clip")
        positive(self, "policy_loss_scale", strict=False)
        if self.gamma is not None and not 0.0 <= self.gamma < 1.0:
            raise ValueError(f"upper.gamma: must be in [0, 1) or null, got {self.gamma}")


class BestResponse:
    """A second follower ``π̂ ≈ π*(x)`` trained on the leader's reward only, warm-started across iterations.

    Args:
        follower: the main follower (spawned from).
        reward_model: the reward it trains on.
        seed: its seed (``None``: the main follower's seed + 1).
        steps: env steps per outer iteration (``None``: keep pace with the main follower).
    """

    def __init__(self, follower: Follower, reward_model: RewardModel, seed: int | None, steps: int | None) -> None:
        self.main = follower
        self.follower = follower.spawn(int(getattr(follower, "seed", 0)) + 1 if seed is None else seed)
        self.follower.set_reward_model(reward_model, follower.reward_mix)
        self.steps = steps

    def train(self) -> tuple[TrajectoryBatch, dict[str, float]]:
        """Continue training; return its newest on-policy batch and ``upper/best_response/*`` metrics."""
        br, steps = self.follower, self.steps
        steps = max(self.main.num_timesteps - br.num_timesteps, br.num_envs) if steps is None else steps
        metrics = br.learn(steps)
        batch = br.collect(max(1, steps // br.num_envs))
        out = {f"upper/best_response/{k.split('/', 1)[-1]}": v for k, v in metrics.items()}
        return batch, out | {
            "upper/best_response/env_steps": float(br.num_timesteps),
            "upper/best_response/steps": steps,
        }


class PreferencePolicyLoss:
    """The main follower's extra policy loss ``coef · mean_j sg(ℓ_j − b) Σ_{(s,a) ∈ d0_j ∪ d1_j} log π_y(a|s)``.

    Its policy gradient is ``coef · ∇_y f`` for the Bradley–Terry upper loss ``f`` (score function: ``f`` depends on
    ``y`` only through the segments' distribution, PBRL eq. 2.5; docs/theory/penalty_methods.md §1.5). Pairs are
    redrawn at every call with its own generator (checkpointed), from the newest phase's pairs (``latest``) or the
    whole buffer.

    Args:
        config: the penalty settings.
        coefficient: ``() -> coef`` read at every call (λ_k moves between leader updates).
    """

    def __init__(self, config: PenaltyFollowerConfig, coefficient: Any) -> None:
        self.config = config
        self.coefficient = coefficient
        self.buffer: PreferenceBuffer | None = None
        self.follower: Follower | None = None
        self.reward_model: RewardModel | None = None
        self.indices = np.zeros(0, dtype=np.int64)
        self.rng = np.random.default_rng(0)

    def install(self, follower: Follower, reward_model: RewardModel, buffer: PreferenceBuffer | None) -> None:
        """Hook into ``follower``'s policy update (the buffer is the objective's live one, restored in place)."""
        self.follower, self.reward_model, self.buffer = follower, reward_model, buffer
        follower.set_extra_policy_loss(self)

    def refresh(self, step: LeaderStep) -> None:
        """Re-select the pairs and re-seed the draws at a leader update."""
        buffer = self.buffer = step.preferences
        self.indices = np.arange(len(buffer))
        if self.config.policy_loss_source == "latest" and len(buffer):
            its = buffer.get(self.indices).iteration
            self.indices = self.indices[its == its.max()]
        self.rng = np.random.default_rng(int(step.rng.integers(2**63)))

    def log_probs(self, follower: Follower, pairs: PreferencePairs, grad: bool) -> torch.Tensor:
        """``(B,)`` ``Σ_{(s,a) ∈ d0 ∪ d1} mask · log π(a|s)`` under ``follower``'s current policy."""
        assert self.reward_model is not None
        dev, b = self.reward_model.device, len(pairs)
        obs = torch.as_tensor(pairs.obs, device=dev).flatten(0, 2)
        logp = follower.action_dist(obs, grad=grad).log_prob(torch.as_tensor(pairs.actions, device=dev).flatten(0, 2))
        if self.config.log_prob_min is not None:
            logp = logp.clamp_min(self.config.log_prob_min)
        keep = torch.as_tensor(pairs.mask, device=logp.device).reshape(-1) > 0
        return torch.where(keep, logp, torch.zeros_like(logp)).reshape(b, -1).sum(1)

    def __call__(self) -> torch.Tensor:
        """The loss value with its graph in the follower's policy parameters."""
        coef = self.coefficient() * self.config.policy_loss_scale
        if self.buffer is None or len(self.indices) == 0 or coef == 0.0 or self.follower is None:
            return torch.zeros((), requires_grad=True)
        assert self.reward_model is not None
        draw = self.rng.integers(len(self.indices), size=self.config.policy_loss_pairs)
        pairs = self.buffer.get(self.indices[draw])
        with torch.no_grad():
            ell = pair_losses(self.reward_model, pairs)[0]
            ell = ell - ell.mean() if self.config.baseline == "batch_mean" else ell
        score = self.log_probs(self.follower, pairs, grad=True)
        return coef * (ell.to(score.device, score.dtype) * score).mean()

    def state_dict(self) -> dict[str, Any]:
        """The draw generator and the selected pairs."""
        return {"rng": self.rng.bit_generator.state, "indices": self.indices.copy()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        self.rng.bit_generator.state = state["rng"]
        self.indices = np.asarray(state["indices"], dtype=np.int64)


class LeaderPolicyLoss:
    """``objective=leader_reward``: the main follower's extra loss ``coef · (−mean_j Ā_j log π_y(a_j|s_j))``.

    Its policy gradient is ``coef · ∇_y f`` for the leader's loss ``f = −J̄`` (the policy-gradient theorem with the
    leader's advantages from the objective's critic), so the main follower descends ``F_λ / λ`` as in the RLHF case.
    The newest leader batch's steps and advantages (scaled to unit standard deviation, as PPO scales its own) are
    kept from the last leader update (checkpointed) and ``policy_loss_steps`` of them are redrawn at every call.

    With ``policy_loss_clip = ε`` the loss is PPO's clipped surrogate ``−coef · mean_j min(ρ_j Ā_j,
    clip(ρ_j, 1 − ε, 1 + ε) Ā_j)``, ``ρ_j = π_y(a_j|s_j) / π_old(a_j|s_j)`` with ``π_old`` the policy at the leader
    update (as PPO's own ratio is taken against the policy at the start of its update phase): the same gradient at
    ``ρ = 1``, bounded afterwards.

    Args:
        config: the penalty settings.
        coefficient: ``() -> coef`` read at every call.
    """

    def __init__(self, config: PenaltyFollowerConfig, coefficient: Any) -> None:
        self.config = config
        self.coefficient = coefficient
        self.follower: Follower | None = None
        self.obs = np.zeros(0)
        self.actions = np.zeros(0)
        self.advantages = np.zeros(0)
        self.old_log_probs = np.zeros(0)
        self.rng = np.random.default_rng(0)

    def install(self, follower: Follower, reward_model: RewardModel, data: Any) -> None:
        """Hook into ``follower``'s policy update."""
        self.follower = follower
        follower.set_extra_policy_loss(self)

    def refresh(self, step: LeaderStep) -> None:
        """Keep the newest batch's steps, scaled advantages and current log-probabilities; re-seed the draws."""
        latest = step.leader.require("pbrl")
        self.obs, self.actions = latest.batch.flat_obs(), latest.batch.flat_actions()
        self.advantages = normalised_advantages(latest).reshape(-1)
        self.old_log_probs = np.zeros(0)
        if self.config.policy_loss_clip is not None and self.follower is not None and len(self.obs):
            with torch.no_grad():
                old = self.follower.action_dist(self.obs, grad=False).log_prob(torch.as_tensor(self.actions))
            self.old_log_probs = old.detach().cpu().numpy()
        self.rng = np.random.default_rng(int(step.rng.integers(2**63)))

    def __call__(self) -> torch.Tensor:
        """The loss value with its graph in the follower's policy parameters."""
        coef = self.coefficient() * self.config.policy_loss_scale
        if self.follower is None or len(self.advantages) == 0 or coef == 0.0:
            return torch.zeros((), requires_grad=True)
        idx = self.rng.integers(len(self.advantages), size=self.config.policy_loss_steps)
        logp = self.follower.action_dist(self.obs[idx], grad=True).log_prob(torch.as_tensor(self.actions[idx]))
        if self.config.log_prob_min is not None:
            logp = logp.clamp_min(self.config.log_prob_min)
        adv = torch.as_tensor(self.advantages[idx], device=logp.device, dtype=logp.dtype)
        eps = self.config.policy_loss_clip
        if eps is None:
            return -coef * (adv * logp).mean()
        ratio = torch.exp(logp - torch.as_tensor(self.old_log_probs[idx], device=logp.device, dtype=logp.dtype))
        return -coef * torch.min(ratio * adv, ratio.clamp(1.0 - eps, 1.0 + eps) * adv).mean()

    def state_dict(self) -> dict[str, Any]:
        """The kept steps and the draw generator."""
        return {
            "rng": self.rng.bit_generator.state,
            "obs": self.obs,
            "actions": self.actions,
            "adv": self.advantages,
            "old_log_probs": self.old_log_probs,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        self.rng.bit_generator.state = state["rng"]
        self.obs, self.actions = np.asarray(state["obs"]), np.asarray(state["actions"])
        self.advantages, self.old_log_probs = np.asarray(state["adv"]), np.asarray(state["old_log_probs"])


@dataclass
class PenaltyInputs:
    """What one penalty update computes before its minibatches.

    Attributes:
        follower_batch: the main follower's on-policy batch.
        best_response_batch: the best response's newest on-policy batch.
        generator: the leader's torch generator (policy samples inside the estimate).
        extra: rule-specific samples (Bellman states, mixed rollouts).
    """

    follower_batch: TrajectoryBatch
    best_response_batch: TrajectoryBatch
    generator: torch.Generator
    extra: Any = None


class PenaltyRule(PreferenceRule):
    """A penalised leader with a best response and an extra policy loss on the main follower.

    Subclasses give the two coefficients and may replace the penalty estimate (:meth:`penalty_surrogate`) or the
    ``G`` part of the leader loss (:meth:`upper_loss`).
    """

    config: PenaltyFollowerConfig
    separate_best_response = True

    def __init__(self) -> None:
        super().__init__()
        self.best_response: BestResponse | None = None
        self.policy_loss: PreferencePolicyLoss | LeaderPolicyLoss = PreferencePolicyLoss(
            self.config, self.policy_loss_coefficient
        )
        self.gamma = 0.99
        self.iteration = 0  # read by the coefficients between leader updates (λ_k of the current iteration)

    @classmethod
    @override
    def requirements(cls, params: Any) -> Requirements:
        req = {
            Capability.ACTION_DIST: "the extra policy loss needs log pi",
            Capability.EXTRA_POLICY_LOSS: "the follower's update gets the penalty's policy term",
        }
        if params is None or getattr(params, "best_response", "separate") == "separate":
            req[Capability.SPAWN] = "the best response is a second follower"
        if params is None or params.gamma is None:
            req[Capability.GAMMA] = "upper.gamma=null; set upper.gamma"
        return req

    @classmethod
    @override
    def objective_problem(cls, params: Any, objective: str) -> str | None:
        if objective != "leader_reward" and params is not None and params.policy_loss_clip is not None:
            return "upper.policy_loss_clip clips the objective=leader_reward extra loss only; set it to null"
        return super().objective_problem(params, objective)

    @abstractmethod
    def penalty_coefficient(self) -> float:
        """Factor of ``∇_x p̂`` in the leader direction at the current iteration."""

    @abstractmethod
    def policy_loss_coefficient(self) -> float:
        """Factor of ``L_up`` in the main follower's policy loss."""

    @override
    def attach(self, follower: Follower, reward_model: RewardModel, data: Any = None) -> None:
        super().attach(follower, reward_model, data)
        self.gamma = rule_discount(follower, self.config.gamma)
        if self.separate_best_response:
            self.best_response = BestResponse(
                follower, reward_model, self.config.best_response_seed, self.config.best_response_steps
            )
        if isinstance(data, LeaderData):
            self.policy_loss = LeaderPolicyLoss(self.config, self.policy_loss_coefficient)
        self.policy_loss.install(follower, reward_model, data if isinstance(data, PreferenceBuffer) else None)

    @override
    def auxiliary_followers(self) -> dict[str, Follower]:
        return {"best_response": self.best_response.follower} if self.best_response is not None else {}

    def penalty_surrogate(self, inputs: PenaltyInputs) -> torch.Tensor:
        """``DR_φ(π̂ episodes) − DR_φ(π_y episodes)``; its φ-gradient is ``∇_φ p_V`` (PBRL Lemma 7(a), App. C.1)."""
        assert self.reward_model is not None
        m, g = self.reward_model, self.gamma
        return discounted_return_surrogate(m, inputs.best_response_batch, g) - discounted_return_surrogate(
            m, inputs.follower_batch, g
        )

    def penalty_samples(self, step: LeaderStep, batch: TrajectoryBatch) -> tuple[Any, dict[str, float]]:
        """Rule-specific samples of the penalty estimate (``PenaltyInputs.extra``)."""
        return None, {}

    def upper_loss(self, pairs: PreferencePairs, step: LeaderStep) -> Surrogate:
        """The ``f`` (or ``G``) part of the leader loss: the mean Bradley–Terry loss of the minibatch."""
        return self.bt_surrogate(pairs)

    @override
    def update(self, step: LeaderStep) -> dict[str, float]:
        self.iteration = step.iteration
        self.policy_loss.refresh(step)
        return super().update(step)

    @override
    def prepare(self, step: LeaderStep) -> tuple[PenaltyInputs | None, dict[str, float]]:
        out = {"upper/policy_loss_coef": self.policy_loss_coefficient() * self.config.policy_loss_scale}
        if self.best_response is None or self.penalty_coefficient() == 0.0:
            return None, out
        batch = step.on_policy_batch(self.name)
        br_batch, br_metrics = self.best_response.train()
        extra, extra_metrics = self.penalty_samples(step, batch)
        inputs = PenaltyInputs(batch, br_batch, step.generator, extra)
        assert self.reward_model is not None
        value = self.penalty_surrogate(inputs)
        params = [p for p in self.reward_model.parameters() if p.requires_grad]
        grads = torch.autograd.grad(value, params, allow_unused=True)
        out |= br_metrics | extra_metrics
        out["upper/penalty_estimate"] = float(value.detach())
        out["upper/penalty_grad_norm"] = sum(float((g**2).sum()) for g in grads if g is not None) ** 0.5
        return inputs, out

    @override
    def surrogate(self, pairs: PreferencePairs, step: LeaderStep, prepared: PenaltyInputs | None) -> Surrogate:
        s = self.upper_loss(pairs, step)
        if prepared is not None:
            pen = self.penalty_surrogate(prepared)
            active = not (self.config.penalty_hinge and float(pen.detach()) <= 0.0)
            s.terms["upper/penalty_active"] = float(active)
            if active:
                s.loss = s.loss + self.penalty_coefficient() * pen
        return s

    @override
    def leader_loss(
        self, data: LeaderBatch, step: LeaderStep, prepared: PenaltyInputs | None
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """``objective=leader_reward``: ``∂_x f + λ ∇_x p̂``; ``f = −J̄`` depends on ``x`` only through a cost.

        ``x`` moves through the penalty (the follower receives ``σ r̃``, so ``p̂`` carries ``σ``) and the direct cost
        term (discounted from the episode start, as the penalty's returns).
        """
        assert self.reward_model is not None
        model = self.reward_model
        omega, norm = data.state_weights(discounted=True)
        loss = direct_cost_loss(model, data, step.leader, omega) / norm
        terms: dict[str, float] = {"upper/cost": float(loss.detach())}
        if prepared is not None:
            pen = follower_scale(model, step.leader.mix) * self.penalty_surrogate(prepared)
            active = not (self.config.penalty_hinge and float(pen.detach()) <= 0.0)
            terms["upper/penalty_active"] = float(active)
            if active:
                loss = loss + self.penalty_coefficient() * pen
        return loss, terms

    @override
    def rule_state(self) -> dict[str, Any]:
        state: dict[str, Any] = {"policy_loss": self.policy_loss.state_dict(), "iteration": self.iteration}
        if self.best_response is not None:
            state["best_response"] = self.best_response.follower.state_dict()
        return state

    @override
    def load_rule_state(self, state: dict[str, Any]) -> None:
        self.policy_loss.load_state_dict(state["policy_loss"])
        self.iteration = int(state["iteration"])
        if self.best_response is not None:
            self.best_response.follower.load_state_dict(state["best_response"])
