"""DRLHF: reward learning from preferences (Christiano et al. 2017), the papers' baseline.

The leader minimises the Bradley–Terry cross-entropy over the preference buffer ``D``:

    φ ← φ − β ∇_φ (1/|B|) Σ_{(d0,d1,y)∈B} l_h(d0, d1, y; φ),
    l_h = −y log σ(R_φ(d0) − R_φ(d1)) − (1−y) log σ(R_φ(d1) − R_φ(d0)),   R_φ(d) = Σ_h r_φ(s_h, a_h)

(SoBiRL eq. 101 and L117; PBRL eq. 2.5). This is SoBiRL's practical update (eq. 99) with the hyper-gradient
term removed. One "epoch" is a full shuffled pass over the buffer in minibatches, optimised with AdamW
(SoBiRL J.2: lr 3e-4, weight decay 1e-2, batch 32).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from typing_extensions import override

from bilevel_rl.data.preference_buffer import PreferenceBuffer
from bilevel_rl.followers.base import Follower
from bilevel_rl.reward_models.base import RewardModel
from bilevel_rl.upper.base import UpperRule, bradley_terry_loss


@dataclass
class DRLHFConfig:
    """Hyperparameters of DRLHF (defaults: SoBiRL App. J.2)."""

    lr: float = 3e-4
    weight_decay: float = 1e-2
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    batch_size: int = 32
    max_grad_norm: float | None = None

    def __post_init__(self) -> None:
        self.betas = (float(self.betas[0]), float(self.betas[1]))
        if self.lr <= 0:
            raise ValueError(f"upper.lr must be > 0, got {self.lr}")
        if self.batch_size <= 0:
            raise ValueError(f"upper.batch_size must be > 0, got {self.batch_size}")
        if self.weight_decay < 0:
            raise ValueError(f"upper.weight_decay must be >= 0, got {self.weight_decay}")


class DRLHF(UpperRule):
    """Bradley–Terry preference learning with AdamW."""

    name = "drlhf"

    def __init__(self, config: DRLHFConfig) -> None:
        super().__init__()
        self.config = config
        self.optimizer: torch.optim.Optimizer | None = None

    @override
    def attach(self, follower: Follower, reward_model: RewardModel) -> None:
        super().attach(follower, reward_model)
        c = self.config
        self.optimizer = torch.optim.AdamW(
            reward_model.parameters(), lr=c.lr, betas=c.betas, eps=c.eps, weight_decay=c.weight_decay
        )

    @override
    def update(self, buffer: PreferenceBuffer, epochs: int, rng: np.random.Generator) -> dict[str, float]:
        if self.reward_model is None or self.optimizer is None:
            raise RuntimeError("DRLHF.update called before attach()")
        model, opt = self.reward_model, self.optimizer
        model.train()
        losses: list[float] = []
        grad_norms: list[float] = []
        correct = total = 0
        for _ in range(epochs):
            losses.clear()
            grad_norms.clear()
            correct = total = 0
            for idx in buffer.minibatches(self.config.batch_size, rng):
                pairs = buffer.get(idx)
                dev = model.device
                returns = model.segment_returns(
                    torch.as_tensor(pairs.obs, device=dev),
                    torch.as_tensor(pairs.actions, device=dev),
                    torch.as_tensor(pairs.mask, device=dev),
                )
                labels = torch.as_tensor(pairs.labels, device=dev)
                loss = bradley_terry_loss(returns, labels).mean()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                max_norm = self.config.max_grad_norm if self.config.max_grad_norm is not None else float("inf")
                gn = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
                opt.step()
                losses.append(loss.item())
                grad_norms.append(float(gn))
                with torch.no_grad():
                    decided = labels != 0.5
                    pred = returns[:, 0] > returns[:, 1]
                    correct += int((pred == (labels > 0.5))[decided].sum())
                    total += int(decided.sum())
        return {
            "upper/loss": float(np.mean(losses)) if losses else float("nan"),
            "upper/grad_norm": float(np.mean(grad_norms)) if grad_norms else float("nan"),
            "reward_model/train_accuracy": correct / total if total else float("nan"),
        }

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"config": asdict(self.config), "optimizer": self.optimizer.state_dict() if self.optimizer else None}

    @override
    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.optimizer is not None and state.get("optimizer") is not None:
            self.optimizer.load_state_dict(state["optimizer"])
