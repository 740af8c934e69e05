"""The tax designer of HPGD §5.2 as a leader module whose parameters enter the environment.

:class:`TaxModel` is an :class:`~bilevel_rl.reward_models.base.EnvParameterModel`: ``tax = (x, y_1, y_2, y_3) =
2·sigmoid(w)`` (the authors' parameterisation,
initialised at 0.3, App. F.3.1), the household utility as the follower's reward, the social welfare as the leader's
reward, and the truncated-normal asset transition — the torch twins of the numpy functions of
:mod:`bilevel_rl.envs.tax_design` (tests check they agree).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from bilevel_rl.envs import tax_design as td
from bilevel_rl.reward_models.base import EnvParameterModel


def _logit(p: float) -> float:
    return math.log(p / (1.0 - p))


class TaxModel(EnvParameterModel):
    """The tax designer of HPGD §5.2: ``tax = max_tax · sigmoid(w)`` with ``w ∈ R^4`` (income tax, 3 VATs).

    Observations are ``(assets, household group)`` and actions flat indices of ``TaxDesign-v0``.

    Args:
        initial_tax: every rate at the start (App. F.3.1: 0.3).
        max_tax: the upper end of the tax domain (App. F.3.1 and the authors' code: 2).
        noise_std: the asset noise ``ς`` of the environment (5).
    """

    preferences: torch.Tensor
    hours_grid: torch.Tensor
    goods_grid: torch.Tensor

    def __init__(self, initial_tax: float = 0.3, max_tax: float = td.MAX_TAX, noise_std: float = td.NOISE_STD) -> None:
        super().__init__()
        if not 0.0 < initial_tax < max_tax:
            raise ValueError(f"reward_model.initial_tax: must be in (0, {max_tax}), got {initial_tax}")
        self.max_tax, self.noise_std = float(max_tax), float(noise_std)
        self.w = nn.Parameter(torch.full((1 + td.N_GOODS,), _logit(initial_tax / max_tax), dtype=torch.float64))
        self.normalize = False
        self.register_buffer("preferences", torch.as_tensor(td.CONTEXTS, dtype=torch.float64))
        self.register_buffer("hours_grid", td.HOURS_STEP * torch.arange(td.HOURS_LEVELS, dtype=torch.float64))
        goods = td.CONSUMPTION_STEP * torch.arange(td.CONSUMPTION_LEVELS, dtype=torch.float64)
        self.register_buffer("goods_grid", goods)

    @property
    def action_ndim(self) -> int:
        """Flat discrete actions."""
        return 0

    def tax(self) -> torch.Tensor:
        """``(x, y_1, y_2, y_3)``, differentiable."""
        return self.max_tax * torch.sigmoid(self.w)

    def env_parameters(self) -> np.ndarray:
        """The tax vector the environment applies."""
        return self.tax().detach().cpu().numpy().astype(np.float64)

    def parameter_metrics(self) -> dict[str, float]:
        """``upper/tax/income_tax``, ``upper/tax/vat_1`` … (HPGD Fig. 3b's curves)."""
        return {f"upper/tax/{name}": float(v) for name, v in zip(td.TAX_NAMES, self.env_parameters(), strict=True)}

    def _decode(self, obs: torch.Tensor, actions: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """``(assets, α, hours, consumption)`` of flat steps."""
        obs = obs.reshape(len(obs), -1).to(torch.float64)
        a = actions.reshape(-1).long()
        goods = []
        for _ in range(td.N_GOODS):
            goods.append(self.goods_grid[a % td.CONSUMPTION_LEVELS])
            a = a // td.CONSUMPTION_LEVELS
        hours = self.hours_grid[a]
        consumption = torch.stack(goods[::-1], dim=-1)  # C order: the last index is good 3
        alpha = self.preferences[obs[:, 1].round().long()]
        return obs[:, 0], alpha, hours, consumption

    def forward(self, obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """The household utility ``u = σ(s) − θ n² + Π_i (c_i / (1 + y_i))^{α_i}`` (§5.2; prices 1)."""
        s, alpha, n, c = self._decode(obs, actions)
        vat = self.tax()[1:]
        asset_utility = torch.where(s > 0, torch.log(s.clamp_min(0.0) / 20.0 + 1.0), s)
        # Π_i q_i^α_i as exp(Σ α log q) where every good is bought, else 0 (and a zero gradient: no 0·∞ = NaN)
        bought = (c > 0).all(-1)
        log_q = torch.log(c.clamp_min(1e-12)) - torch.log1p(vat)
        cobb_douglas = torch.where(bought, torch.exp((alpha * log_q).sum(-1)), torch.zeros_like(s))
        return (asset_utility - td.WORK_DISUTILITY * n**2 + cobb_douglas).to(torch.float32)

    def leader_reward(self, obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """The social welfare ``v = min(s, 0) + Σ_i c_i/(1 + y_i) + ϕ log(1 + Σ_i c_i y_i/(1 + y_i) + w x n)``."""
        s, _, n, c = self._decode(obs, actions)
        tax = self.tax()
        x, vat = tax[0], tax[1:]
        revenue = (c * vat / (1.0 + vat)).sum(-1) + td.WAGE * x * n
        return s.clamp_max(0.0) + (c / (1.0 + vat)).sum(-1) + td.WELFARE_TAX_WEIGHT * torch.log1p(revenue)

    def transition_log_prob(self, obs: torch.Tensor, actions: torch.Tensor, next_obs: torch.Tensor) -> torch.Tensor:
        """``log`` of the truncated normal ``N(m, ς²)`` on ``[−100, 100]`` at ``s'``, ``m = clip(s + (1−x) w n − Σc)``.

        Inside the clip range ``∂m/∂x = −w n``; where the mean is clipped the gradient is zero (as the clip's).
        """
        s, _, n, c = self._decode(obs, actions)
        s_next = next_obs.reshape(len(next_obs), -1)[:, 0].to(torch.float64)
        m = (s + (1.0 - self.tax()[0]) * td.WAGE * n - c.sum(-1)).clamp(td.ASSET_LOW, td.ASSET_HIGH)
        std = self.noise_std
        normal = torch.distributions.Normal(torch.zeros(()), torch.ones(()))
        mass = normal.cdf((td.ASSET_HIGH - m) / std) - normal.cdf((td.ASSET_LOW - m) / std)
        z = (s_next - m) / std
        return -0.5 * z**2 - math.log(std * math.sqrt(2.0 * math.pi)) - torch.log(mass)

    @property
    def enters_transitions(self) -> bool:
        """The income tax enters the asset dynamics."""
        return True
