"""The `RewardModel` seam."""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod

import numpy as np
import torch
from torch import nn


class RewardModel(nn.Module, ABC):
    """A learned reward ``r_φ(s, a)``, batched over leading dimensions.

    Subclasses implement :meth:`forward` on flat batches ``(B, *obs_shape)``, ``(B, *act_shape)`` → ``(B,)``.
    The leader trains the *raw* output; followers are given :meth:`relabel`, which runs in eval mode under
    ``torch.no_grad`` and divides by a running scale (see :meth:`update_normalization`).
    """

    reward_scale: torch.Tensor
    reward_shift: torch.Tensor

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("reward_scale", torch.ones(()))
        self.register_buffer("reward_shift", torch.zeros(()))
        self.normalize = True
        self.center = False
        self.target_std = 1.0

    @abstractmethod
    def forward(self, obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """Raw rewards ``(B,)`` for a flat batch."""

    def fingerprint(self) -> tuple[tuple[int, int], ...]:
        """Changes whenever a parameter or buffer is replaced or modified in place.

        Built from each tensor's storage address and torch's in-place version counter; followers use it to know
        that cached rewards are stale.
        """
        return tuple((t.data_ptr(), t._version) for t in (*self.parameters(), *self.buffers()))

    @property
    def device(self) -> torch.device:
        """Device of the parameters."""
        return next(self.parameters()).device

    def rewards(self, obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """Raw rewards for any leading batch shape ``(..., *obs_shape)`` → ``(...)``."""
        lead = actions.shape[: actions.dim() - self.action_ndim]
        flat = self(obs.reshape(-1, *obs.shape[len(lead) :]), actions.reshape(-1, *actions.shape[len(lead) :]))
        return flat.reshape(lead)

    def segment_returns(self, obs: torch.Tensor, actions: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Sum of raw rewards over the valid steps of each segment: ``(..., H, ...)`` → ``(...)``."""
        return (self.rewards(obs, actions) * mask).sum(dim=-1)

    def action_rewards(self, obs: torch.Tensor) -> torch.Tensor | None:
        """Raw rewards of every discrete action, ``(B, |A|)``, in one pass; ``None`` if the model has no such head.

        Models with a per-action head (the papers' Atari CNNs) override this so ``Σ_a π(a|s) r(s, a)`` costs one
        forward pass, and BatchNorm statistics are those of the real batch, not of ``|A|`` repeated copies.
        """
        return None

    @property
    @abstractmethod
    def action_ndim(self) -> int:
        """Number of trailing dimensions of one action (0 for discrete, 1 for Box)."""

    relabel_batch_size: int = 2048
    """Flat batches larger than this are relabelled in chunks (bounded memory for 84×84×4 images)."""

    @torch.no_grad()
    def relabel(self, obs: np.ndarray | torch.Tensor, actions: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Rewards a follower trains on: eval mode, no grad, divided by the running scale. Shape ``(B,)``."""
        was_training = self.training
        self.eval()
        try:
            o = torch.as_tensor(obs, device=self.device)
            a = torch.as_tensor(actions, device=self.device)
            n, step = len(a), self.relabel_batch_size
            if a.dim() == self.action_ndim + 1 and n > step:
                r = torch.cat([self.rewards(o[i : i + step], a[i : i + step]) for i in range(0, n, step)])
            else:
                r = self.rewards(o, a)
            if self.normalize:
                r = (r - self.reward_shift) * self.reward_scale
            return r.float()
        finally:
            self.train(was_training)

    def fit_input_normalization(self, obs: np.ndarray) -> None:  # noqa: B027 - optional hook
        """Fit input statistics once on early transitions (no-op unless the model normalises inputs)."""

    @torch.no_grad()
    def update_normalization(self, obs: np.ndarray, actions: np.ndarray, batch_size: int = 4096) -> None:
        """Set the follower-facing scale to ``target_std / std`` of the raw rewards on the given transitions.

        By default only the scale is normalised, never the mean: with masked (absorbing) segments the Bradley–Terry
        loss identifies the reward's offset, and shifting it would change whether the follower wants episodes to
        end. With ``center`` (the Atari CNN presets) the mean is removed too, as Christiano et al. 2017 normalised
        r̂ for their Atari A2C agents ("zero mean and constant standard deviation"): a Bradley–Terry reward's
        offset is arbitrary there (Atari segments never end inside a pair) and a large constant per-step reward
        inflated A2C's value targets until its policy collapsed (Seaquest, 100k steps: entropy 1e-14).
        ``target_std`` sets the follower's reward scale: A2C's Atari settings were tuned on clipped rewards (std
        ≈ 0.09 for a random Seaquest policy); at std 1 a centred learned reward still collapsed A2C's policy
        (Seaquest, 75k steps: entropy 2e-4, no reward), so ``exp=atari_a2c_cpu`` uses 0.1.
        """
        was_training = self.training
        self.eval()
        try:
            outs = []
            for i in range(0, len(obs), batch_size):
                o = torch.as_tensor(obs[i : i + batch_size], device=self.device)
                a = torch.as_tensor(actions[i : i + batch_size], device=self.device)
                outs.append(self(o, a))
            raw = torch.cat(outs) if outs else torch.zeros(2)
            self.reward_scale.fill_(float(self.target_std / max(float(raw.std()), 1e-6)))
            self.reward_shift.fill_(float(raw.mean()) if self.center else 0.0)
        finally:
            self.train(was_training)


class EnvParameterModel(RewardModel):
    """A leader module whose parameters enter the environment (incentive design: taxes, incentives).

    Its ``forward`` is the follower's reward ``r_x(s, a)`` (so followers, relabelling and the rules' reward-gradient
    terms work unchanged); it adds :meth:`env_parameters` (what the environment reads through
    :class:`~bilevel_rl.envs.leader_params.LeaderParameters`), :meth:`leader_reward` (``r̄_x``, differentiable: HPGD
    eq. (8)'s direct term) and :meth:`transition_log_prob` (``log P_x(s'|s, a)``, differentiable: the ``∇_x log P``
    terms of HPGD Thm. 1 / eq. (8)). Example: :class:`~bilevel_rl.reward_models.tax.TaxModel`.
    """

    @abstractmethod
    def env_parameters(self) -> np.ndarray:
        """The current parameters as the environment reads them (``set_leader_parameters``)."""

    @abstractmethod
    def leader_reward(self, obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """``r̄_x(s, a)`` of flat steps, differentiable in the parameters."""

    def transition_log_prob(self, obs: torch.Tensor, actions: torch.Tensor, next_obs: torch.Tensor) -> torch.Tensor:
        """``log P_x(s'|s, a)`` of flat transitions, differentiable in the parameters (default: x-free dynamics)."""
        return torch.zeros(len(obs), device=self.device)

    @property
    def enters_transitions(self) -> bool:
        """Whether :meth:`transition_log_prob` depends on the parameters."""
        return False

    def parameter_metrics(self) -> dict[str, float]:
        """``upper/param/<i>`` of the environment parameters (subclasses name them)."""
        return {f"upper/param/{i}": float(v) for i, v in enumerate(self.env_parameters())}

    def perturbed(self, direction: torch.Tensor, scale: float) -> EnvParameterModel:
        """A copy with its raw parameter vector moved by ``scale · direction`` (the Zero-Order baseline's probe)."""
        probe = copy.deepcopy(self)
        with torch.no_grad():
            flat = nn.utils.parameters_to_vector(probe.parameters())
            nn.utils.vector_to_parameters(flat + scale * direction.to(flat), probe.parameters())
        return probe
