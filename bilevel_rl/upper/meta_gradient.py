"""Meta-gradient reward shaping (LIRPG, Zheng, Oh & Singh, NeurIPS 2018; the baseline of reward-shaping papers).

The leader differentiates its own objective through one step of the follower's policy-gradient update on the shaped
reward. With the follower's parameters ``θ``, its surrogate ``L_in(θ, φ) = −mean_t log π_θ(a_t|s_t) Â^mix_t(φ)`` and
the leader's importance-weighted surrogate ``L_ex(θ') = −mean_t (π_θ'(a_t|s_t) / π_θ(a_t|s_t)) Ā_t`` (LIRPG eq. (4)–(6),
with the leader's advantages ``Ā`` from the objective's critic, scaled to unit standard deviation as PPO scales its
own):

    θ'(φ) = θ − α ∇_θ L_in(θ, φ),      φ ← φ − β ∇_φ L_ex(θ'(φ))   (plus a shaping cost's direct term).

``Â^mix`` is the follower's GAE advantage of ``c_env r_visible + σ r̃_φ``; with its critic held fixed its
``φ``-derivative is ``σ Σ_{k≥t} (γ λ_GAE)^{k−t} ∇r̃(s_k, a_k)`` within the episode, which is all the update needs
(the constant part of ``Â^mix`` moves ``θ'`` but does not change the derivative at first order, so the lookahead is
linearised at the follower's current ``θ``: ``θ' = θ`` numerically, ``∂θ'/∂φ`` exact). The whole thing is one double
backward through the policy network (``torch.func.functional_call`` at substituted parameters), so it needs a follower
with ``Capability.POLICY_LOOKAHEAD`` (PPO, A2C). Choices: ``α`` is the follower's current learning rate (plain SGD
step; PPO's Adam and clipping are not differentiated), the recorded (clipped) actions stand for the sampled ones.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from typing_extensions import override

from bilevel_rl.capabilities import Capability, Requirements
from bilevel_rl.followers.base import Follower
from bilevel_rl.objectives.leader_reward import LeaderBatch, follower_scale
from bilevel_rl.reward_models.base import RewardModel
from bilevel_rl.upper.base import LeaderStep
from bilevel_rl.upper.estimators import rule_discount
from bilevel_rl.upper.preference_rule import LeaderOptimConfig, PreferenceRule, Surrogate, positive
from bilevel_rl.upper.shaping import direct_cost_loss, flat_tensors, normalised_advantages


@dataclass
class MetaGradientConfig(LeaderOptimConfig):
    """Hyperparameters of the meta-gradient leader (optimiser fields: :class:`LeaderOptimConfig`).

    Attributes:
        lookahead_lr: ``α`` of the lookahead step (``None``: the follower's current learning rate).
        gae_lambda: ``λ`` of the follower's GAE, for ``∂Â^mix/∂φ`` (PPO/A2C default 0.95 / 1.0: set it to match).
        gamma: the follower's discount (``None``: its own).
        max_steps: at most this many steps of the batch per update (``None``: all).
    """

    name: str = "meta_gradient"
    lookahead_lr: float | None = None
    gae_lambda: float = 0.95
    gamma: float | None = None
    max_steps: int | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        positive(self, "lookahead_lr", "max_steps")
        if not 0.0 <= self.gae_lambda <= 1.0:
            raise ValueError(f"upper.gae_lambda: must be in [0, 1], got {self.gae_lambda}")
        if self.gamma is not None and not 0.0 <= self.gamma < 1.0:
            raise ValueError(f"upper.gamma: must be in [0, 1) or null, got {self.gamma}")


def discounted_sums(values: torch.Tensor, dones: np.ndarray, decay: float) -> torch.Tensor:
    """``G_t = Σ_{k≥t} decay^{k−t} x_k`` within each episode, time-major ``(T, E)`` (differentiable in ``x``)."""
    out = []
    carry = torch.zeros(values.shape[1], dtype=values.dtype, device=values.device)
    for t in reversed(range(values.shape[0])):
        keep = torch.as_tensor(~dones[t], dtype=values.dtype, device=values.device)
        carry = values[t] + decay * keep * carry
        out.append(carry)
    return torch.stack(out[::-1])


class MetaGradient(PreferenceRule):
    """LIRPG's meta-gradient through one linearised policy-gradient step of the follower (module docstring)."""

    name = "meta_gradient"
    objectives: ClassVar[tuple[str, ...]] = ("leader_reward",)
    config: MetaGradientConfig

    def __init__(self, config: MetaGradientConfig) -> None:
        super().__init__()
        self.config = config
        self.gamma = 0.99

    @classmethod
    @override
    def requirements(cls, params: Any) -> Requirements:
        req = {Capability.POLICY_LOOKAHEAD: "the update differentiates through the follower's policy (PPO, A2C)"}
        if params is None or params.gamma is None:
            req[Capability.GAMMA] = "upper.gamma=null; set upper.gamma"
        return req

    @override
    def attach(self, follower: Follower, reward_model: RewardModel, data: Any = None) -> None:
        super().attach(follower, reward_model, data)
        self.gamma = rule_discount(follower, self.config.gamma)

    @override
    def surrogate(self, pairs: Any, step: LeaderStep, prepared: Any) -> Surrogate:
        raise NotImplementedError("upper=meta_gradient optimises objective=leader_reward only")

    @override
    def leader_loss(self, data: LeaderBatch, step: LeaderStep, prepared: Any) -> tuple[torch.Tensor, dict[str, float]]:
        """``L_ex(θ'(φ))`` plus the direct cost term."""
        assert self.reward_model is not None and self.follower is not None
        model, follower, c = self.reward_model, self.follower, self.config
        alpha = c.lookahead_lr if c.lookahead_lr is not None else follower.policy_learning_rate()
        batch = data.batch
        obs, actions = flat_tensors(model, data)
        # ∂Â^mix/∂φ: σ Σ_{k≥t} (γλ)^{k−t} ∇r̃_k (the detached part of Â^mix has no φ-derivative)
        shaped = follower_scale(model, follower.reward_mix) * model(obs, actions).reshape(batch.true_rewards.shape)
        sums = discounted_sums(shaped, batch.dones, self.gamma * c.gae_lambda)
        adv_mix = (sums - sums.detach()).reshape(-1)
        rows = np.arange(len(adv_mix))
        if c.max_steps is not None and len(rows) > c.max_steps:
            rows = np.sort(step.rng.choice(len(rows), c.max_steps, replace=False))
        idx = torch.as_tensor(rows, device=obs.device)
        o, a = obs[idx].float(), actions[idx]
        theta = {k: v.detach().requires_grad_(True) for k, v in follower.policy_parameters().items()}
        logp = follower.policy_log_prob(o, a, theta)
        inner = -(logp * adv_mix[idx].to(logp.dtype)).mean()
        names = list(theta)
        grads = torch.autograd.grad(inner, [theta[k] for k in names], create_graph=True, allow_unused=True)
        theta_new = {k: theta[k] - alpha * g if g is not None else theta[k] for k, g in zip(names, grads, strict=True)}
        ratio = torch.exp(follower.policy_log_prob(o, a, theta_new) - logp.detach())
        adv = torch.as_tensor(normalised_advantages(data).reshape(-1)[rows], device=ratio.device, dtype=ratio.dtype)
        outer = -(ratio * adv).mean()
        omega, norm = data.state_weights(step.leader.config.state_weighting == "discounted")
        cost = direct_cost_loss(model, data, step.leader, omega) / norm
        return outer + cost, {"upper/lookahead_lr": alpha, "upper/cost": float(cost.detach()), "upper/steps": len(rows)}

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"config": asdict(self.config), "optimizer": self.optimizer.state_dict() if self.optimizer else None}

    @override
    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.optimizer is not None and state.get("optimizer") is not None:
            self.optimizer.load_state_dict(state["optimizer"])
