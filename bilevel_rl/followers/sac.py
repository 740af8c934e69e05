"""The SAC followers: SB3 SAC (Box actions) and our discrete SAC (Discrete actions, Atari)."""

from __future__ import annotations

from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
import torch
from stable_baselines3 import SAC
from typing_extensions import override

from bilevel_rl.followers.base import RewardMix
from bilevel_rl.followers.discrete_sac import DiscreteSAC
from bilevel_rl.followers.frame_buffer import SupportsRelabel
from bilevel_rl.followers.off_policy import FlatActionRewards, OffPolicyFollower
from bilevel_rl.followers.sb3_parts import GlobalProgressMixin
from bilevel_rl.reward_models.base import RewardModel


class _ClampedSquash(torch.distributions.TransformedDistribution):
    """Tanh-squashed Gaussian whose ``log_prob`` clamps actions just inside the bounds (atanh(±1) = ∞)."""

    def __init__(self, base: torch.distributions.Distribution, low: torch.Tensor, high: torch.Tensor) -> None:
        loc, scale = (high + low) / 2, (high - low) / 2
        transforms = [
            torch.distributions.TanhTransform(cache_size=1),
            torch.distributions.AffineTransform(loc=loc, scale=scale, event_dim=1),
        ]
        super().__init__(base, transforms)
        self._lo, self._hi = low + 1e-5 * scale, high - 1e-5 * scale

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return super().log_prob(torch.maximum(torch.minimum(value, self._hi), self._lo))


def squashed_gaussian(
    mean: torch.Tensor, std: torch.Tensor, low: np.ndarray, high: np.ndarray
) -> torch.distributions.Distribution:
    """SAC's policy ``a = low + (tanh(u) + 1)(high − low)/2``, ``u ~ N(mean, std)``, as a torch distribution."""
    lo = torch.as_tensor(low, dtype=mean.dtype, device=mean.device)
    hi = torch.as_tensor(high, dtype=mean.dtype, device=mean.device)
    base = torch.distributions.Independent(torch.distributions.Normal(mean, std), 1)
    return _ClampedSquash(base, lo, hi)


class BilevelSAC(GlobalProgressMixin, SAC):
    """SAC with an optional separate actor learning rate (SoBiRL App. J.2: critic/α 1e-3, actor 3e-4)."""

    actor_lr_scale: float = 1.0

    def _update_learning_rate(self, optimizers: Any) -> None:
        super()._update_learning_rate(optimizers)
        if self.actor_lr_scale != 1.0:
            lr = self.lr_schedule(self._current_progress_remaining) * self.actor_lr_scale
            for group in self.actor.optimizer.param_groups:
                group["lr"] = lr


class BilevelDiscreteSAC(GlobalProgressMixin, DiscreteSAC):
    """Discrete SAC (Christodoulou 2019; SoBiRL App. J.2 and code) with run-level learning-rate progress."""


class SACFollower(OffPolicyFollower):
    """SB3 SAC on a continuous (Box) action space; ``actor_lr`` sets a separate actor learning rate."""

    name = "sac"
    algorithm = BilevelSAC
    algorithm_name = "SAC"
    action_spaces = (gym.spaces.Box,)
    action_space_need = "a continuous (Box) action space"

    @override
    def _configure_model(self, lr: float, actor_lr: float | None, learning_starts: int) -> None:
        if actor_lr is not None:
            self.model.actor_lr_scale = actor_lr / lr  # type: ignore[attr-defined]

    @override
    def set_reward_model(self, reward_model: RewardModel, mix: RewardMix | None = None) -> None:
        super().set_reward_model(reward_model, mix)
        buf = self.replay_buffer  # the buffer stores actions scaled to [-1, 1]: it rescales them for the model
        space = self.action_space
        assert isinstance(space, gym.spaces.Box)
        buf.action_low = torch.as_tensor(space.low, dtype=torch.float32, device=self.model.device)  # type: ignore[union-attr]
        buf.action_high = torch.as_tensor(space.high, dtype=torch.float32, device=self.model.device)  # type: ignore[union-attr]

    @override
    @property
    def temperature(self) -> float:
        """SAC's α: learned (``ent_coef="auto..."``) or fixed."""
        m = self.model
        if getattr(m, "log_ent_coef", None) is not None:
            return float(torch.exp(m.log_ent_coef.detach()).item())  # type: ignore[attr-defined]
        return float(m.ent_coef_tensor.item())  # type: ignore[attr-defined]

    @override
    def action_dist(self, obs: np.ndarray | torch.Tensor, grad: bool = False) -> torch.distributions.Distribution:
        """``π(·|s)`` tanh-squashed and rescaled to ``[low, high]`` (env action units)."""
        o = torch.as_tensor(obs, device=self.model.device)
        with torch.set_grad_enabled(grad):
            mean, log_std, _ = self.model.actor.get_action_dist_params(o)  # type: ignore[attr-defined]
            space = self.action_space
            assert isinstance(space, gym.spaces.Box)
            return squashed_gaussian(mean, log_std.exp(), space.low, space.high)


class DiscreteSACFollower(OffPolicyFollower):
    """Discrete SAC (:class:`~bilevel_rl.followers.discrete_sac.DiscreteSAC`) on a Discrete action space."""

    name = "dsac"
    algorithm = BilevelDiscreteSAC
    algorithm_name = "DiscreteSAC"
    action_spaces = (gym.spaces.Discrete,)
    action_space_need = "a Discrete action space"
    STATE_ATTRS: ClassVar[tuple[str, ...]] = (
        *OffPolicyFollower.STATE_ATTRS,
        "_last_target_update",  # when the target critics were last copied
    )

    @override
    def _relabeler(self, reward_model: RewardModel) -> SupportsRelabel:
        return FlatActionRewards(reward_model)

    @override
    @property
    def temperature(self) -> float:
        """Discrete SAC's α."""
        return float(self.model.current_ent_coef().item())  # type: ignore[attr-defined]

    @override
    def action_dist(self, obs: np.ndarray | torch.Tensor, grad: bool = False) -> torch.distributions.Distribution:
        """Categorical over the actor's logits."""
        o = torch.as_tensor(obs, device=self.model.device)
        with torch.set_grad_enabled(grad):
            return torch.distributions.Categorical(logits=self.model.policy.action_logits(o))  # type: ignore[operator]
