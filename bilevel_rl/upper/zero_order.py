"""The Zero-Order baseline of HPGD (Thoma et al., NeurIPS 2024, App. C Alg. 10) for environment parameters.

The leader's parameters enter the environment (``reward_model=tax``).

Each outer iteration ``t`` draws ``z ~ N(0, I)`` over the leader's raw parameter vector ``w`` and compares the
leader's objective at ``w`` and at ``w + u_t z`` (``u_t = C/t``):

    ĝ = (f̂(w + u_t z) − f̂(w)) / u_t · z,        w ← w + α ĝ     (ascent; the optimiser descends ``−ĝ·w``).

``f̂(w)`` is the discounted leader return per episode start on the main follower's newest batch (the objective's
gather, ``Σ_t ω_t r̄_t / N_ep``); ``f̂(w + u_t z)`` the same on a *probe* follower: a copy of the main follower
(its full state), given the perturbed parameters (its environments read them, its reward is the perturbed model's),
trained ``probe_steps`` more steps and then measured on ``probe_steps`` collected steps. The paper's oracle retrains
both followers from scratch (its tax-design code: 300k steps each); the CPU budget fine-tunes a copy instead (our
choice, like the continuing follower of the other rules). Like the authors' code, ``z`` perturbs the raw
pre-activation parameters (``w`` with ``tax = 2·sigmoid(w)``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from typing_extensions import override

from bilevel_rl.capabilities import Capability, Requirements
from bilevel_rl.objectives.leader_reward import LeaderBatch
from bilevel_rl.reward_models.base import EnvParameterModel
from bilevel_rl.upper.base import LeaderStep
from bilevel_rl.upper.preference_rule import LeaderOptimConfig, PreferenceRule, Surrogate, positive


@dataclass
class ZeroOrderRuleConfig(LeaderOptimConfig):
    """Hyperparameters of the Zero-Order leader (optimiser fields: :class:`LeaderOptimConfig`).

    Attributes:
        smoothing: ``C`` of the perturbation radius ``u_t = C/t`` (App. F.3: tuned; the tax-design code uses 50).
        min_smoothing: floor of ``u_t`` (``None``: none).
        probe_steps: env steps the probe follower trains, and then collects, at ``w + u_t z``.
    """

    name: str = "zero_order"
    smoothing: float = 50.0
    min_smoothing: float | None = None
    probe_steps: int = 4000

    def __post_init__(self) -> None:
        super().__post_init__()
        positive(self, "smoothing", "min_smoothing", "probe_steps")


def discounted_leader_return(model: EnvParameterModel, data_or_batch: Any, gamma: float) -> float:
    """``Σ_t γ^t r̄_x(s_t, a_t)`` per episode start of a batch (steps before the first start carry no weight)."""
    batch = data_or_batch.batch if isinstance(data_or_batch, LeaderBatch) else data_or_batch
    with torch.no_grad():
        r = model.leader_reward(torch.as_tensor(batch.flat_obs()), torch.as_tensor(batch.flat_actions()))
    w, episodes = batch.start_discounts(gamma)
    if episodes == 0:
        raise ValueError("the batch holds no episode start; increase trainer.steps_per_iter or upper.probe_steps")
    w = w.reshape(-1)
    return float((w * r.double().cpu().numpy()).sum() / episodes)


class ZeroOrder(PreferenceRule):
    """HPGD's Zero-Order baseline (module docstring)."""

    name = "zero_order"
    objectives: ClassVar[tuple[str, ...]] = ("leader_reward",)
    config: ZeroOrderRuleConfig

    def __init__(self, config: ZeroOrderRuleConfig) -> None:
        super().__init__()
        self.config = config
        self.probes = 0

    @classmethod
    @override
    def requirements(cls, params: Any) -> Requirements:
        return {Capability.SPAWN: "the perturbed parameters are measured on a copy of the follower"}

    @override
    def attach(self, follower: Any, reward_model: Any, data: Any = None) -> None:
        if not isinstance(reward_model, EnvParameterModel):
            raise ValueError("upper=zero_order perturbs environment parameters; use reward_model=tax")
        super().attach(follower, reward_model, data)

    @override
    def surrogate(self, pairs: Any, step: LeaderStep, prepared: Any) -> Surrogate:
        raise NotImplementedError("upper=zero_order optimises objective=leader_reward only")

    @override
    def prepare(self, step: LeaderStep) -> tuple[Any, dict[str, float]]:
        """Measure ``f̂(w)`` on the newest batch and ``f̂(w + u z)`` on a fine-tuned probe; return ``ĝ``."""
        model, follower, c = self.reward_model, self.follower, self.config
        assert isinstance(model, EnvParameterModel) and follower is not None
        data = step.leader.require(self.name)
        self.probes += 1
        u = c.smoothing / self.probes
        u = max(u, c.min_smoothing) if c.min_smoothing is not None else u
        n = sum(p.numel() for p in model.parameters())
        z = torch.randn(n, generator=step.generator, dtype=torch.float64)
        probe_model = model.perturbed(z, u)
        probe = follower.spawn(int(step.rng.integers(2**31)))
        try:
            probe.load_state_dict(follower.state_dict())
            probe.set_reward_model(probe_model, follower.reward_mix)
            probe.set_leader_source(probe_model.env_parameters)
            probe.learn(c.probe_steps)
            probe_batch = probe.collect(max(1, c.probe_steps // probe.num_envs))
        finally:
            probe.close()
        base = discounted_leader_return(model, data, data.gamma)
        perturbed = discounted_leader_return(probe_model, probe_batch, data.gamma)
        grad = (perturbed - base) / u * z
        return grad, {"upper/zo_radius": u, "upper/zo_base": base, "upper/zo_probe": perturbed}

    @override
    def leader_loss(self, data: LeaderBatch, step: LeaderStep, prepared: Any) -> tuple[torch.Tensor, dict[str, float]]:
        """``−ĝ · w``: its gradient is ``−ĝ``, so the optimiser's step ascends along the estimate."""
        assert self.reward_model is not None
        params = list(self.reward_model.parameters())
        flat = torch.nn.utils.parameters_to_vector(params)
        g = prepared.to(flat)
        return -(g * flat).sum(), {"upper/zo_grad_norm": float(g.norm())}

    @override
    def rule_state(self) -> dict[str, Any]:
        return {"probes": self.probes}

    @override
    def load_rule_state(self, state: dict[str, Any]) -> None:
        self.probes = int(state.get("probes", 0))
