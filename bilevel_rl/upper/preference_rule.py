"""The minibatch loop of every preference-based leader rule, and the optimiser settings they share.

Under ``objective=leader_reward`` (reward shaping) the same rule classes take full-batch steps on
:meth:`PreferenceRule.leader_loss` instead (:func:`~bilevel_rl.upper.shaping.leader_reward_update`); a rule that
lists ``leader_reward`` in ``objectives`` implements it.

A rule implements :meth:`PreferenceRule.surrogate` — one minibatch's loss whose gradient w.r.t. the reward
parameters is the rule's update direction — and, when it needs per-update work (train a best response, build a
Hessian graph), :meth:`PreferenceRule.prepare`, whose result is handed to every ``surrogate`` call of that update.
The warm-up (iteration 0, on the initial pairs of an untrained policy) uses the plain Bradley–Terry loss: the
extra terms of the bilevel rules describe the follower's *current* policy, and at warm-up there is none yet.
"""

from __future__ import annotations

import logging
from abc import abstractmethod
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from typing_extensions import override

from bilevel_rl.data.segments import PreferencePairs
from bilevel_rl.followers.base import Follower
from bilevel_rl.objectives.leader_reward import LeaderBatch, LeaderData
from bilevel_rl.reward_models.base import RewardModel
from bilevel_rl.schema import check_dataclass, check_range
from bilevel_rl.upper.base import LeaderStep, UpperRule
from bilevel_rl.upper.estimators import pair_losses
from bilevel_rl.upper.shaping import leader_reward_update

log = logging.getLogger(__name__)


def positive(config: object, *keys: str, strict: bool = True) -> None:
    """Refuse ``upper.<key>`` values ``<= 0`` (``< 0`` when not ``strict``); ``None`` passes."""
    check_range(config, "upper", *keys, strict=strict)


@dataclass
class LeaderOptimConfig:
    """Leader optimiser settings shared by all preference rules (defaults: SoBiRL App. J.2).

    Attributes:
        name: the rule's config name (``upper.name``).
        lr: reward-model learning rate.
        weight_decay: decoupled weight decay (AdamW); L2 for SGD.
        betas: Adam moments.
        eps: Adam epsilon.
        batch_size: pairs per minibatch.
        max_grad_norm: clip the global gradient norm of each leader step (``None``: no clipping).
        optimizer: ``adamw`` or ``sgd`` (plain gradient steps, e.g. for checks against exact gradients).
    """

    name: str = ""
    lr: float = 3e-4
    weight_decay: float = 1e-2
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    batch_size: int = 32
    max_grad_norm: float | None = None
    optimizer: Literal["adamw", "sgd"] = "adamw"

    def __post_init__(self) -> None:
        check_dataclass(self, "upper")
        self.betas = (float(self.betas[0]), float(self.betas[1]))
        positive(self, "lr", "batch_size", "max_grad_norm")
        positive(self, "weight_decay", strict=False)


@dataclass
class Surrogate:
    """One minibatch's leader loss.

    Attributes:
        loss: scalar whose gradient w.r.t. the reward parameters is the rule's update direction.
        returns: ``(B, 2)`` predicted segment returns (for the training accuracy).
        labels: ``(B,)`` label probabilities.
        terms: per-term diagnostics (``upper/...`` names, floats).
    """

    loss: torch.Tensor
    returns: torch.Tensor
    labels: torch.Tensor
    terms: dict[str, float] = field(default_factory=dict)


class PreferenceRule(UpperRule):
    """A leader that takes minibatch steps on a surrogate over the preference buffer.

    Subclasses set ``config`` (a :class:`LeaderOptimConfig` subclass) and implement :meth:`surrogate`.
    """

    config: LeaderOptimConfig

    def __init__(self) -> None:
        super().__init__()
        self.optimizer: torch.optim.Optimizer | None = None
        self.nonfinite_steps = 0

    @override
    def attach(self, follower: Follower, reward_model: RewardModel, data: Any = None) -> None:
        super().attach(follower, reward_model, data)
        c = self.config
        params = list(reward_model.parameters())
        if c.optimizer == "sgd":
            self.optimizer = torch.optim.SGD(params, lr=c.lr, weight_decay=c.weight_decay)
        else:
            # fused: one kernel per step instead of a Python loop over tensors (same update; 10% of a DRLHF step on CPU)
            fused = all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params)
            self.optimizer = torch.optim.AdamW(
                params, lr=c.lr, betas=c.betas, eps=c.eps, weight_decay=c.weight_decay, fused=fused or None
            )

    def prepare(self, step: LeaderStep) -> tuple[Any, dict[str, float]]:
        """Per-update work before the epochs; its first value is passed to every :meth:`surrogate` call."""
        return None, {}

    @abstractmethod
    def surrogate(self, pairs: PreferencePairs, step: LeaderStep, prepared: Any) -> Surrogate:
        """The loss of one minibatch of pairs (``step.batch``: the follower's latest on-policy transitions)."""

    def leader_loss(self, data: LeaderBatch, step: LeaderStep, prepared: Any) -> tuple[torch.Tensor, dict[str, float]]:
        """The loss of one full-batch leader step under ``objective=leader_reward`` and its diagnostics.

        Descending it ascends the leader's objective (HPGD eq. (7)); ``prepared`` is :meth:`prepare`'s result.
        """
        raise NotImplementedError(f"upper={self.name} has no objective=leader_reward form")

    def after_step(self, step: LeaderStep) -> None:  # noqa: B027 - optional hook
        """Hook run after each optimiser step."""

    def bt_surrogate(self, pairs: PreferencePairs) -> Surrogate:
        """The plain Bradley–Terry surrogate (DRLHF; every rule's warm-up)."""
        assert self.reward_model is not None
        bce, returns, labels = pair_losses(self.reward_model, pairs)
        loss = bce.mean()
        return Surrogate(loss, returns, labels, {"upper/bt_loss": float(loss.detach())})

    @override
    def update(self, step: LeaderStep) -> dict[str, float]:
        if self.reward_model is None or self.optimizer is None:
            raise RuntimeError(f"{type(self).__name__}.update called before attach()")
        if isinstance(step.data, LeaderData):
            prepared, out = self.prepare(step)
            return out | leader_reward_update(self, step, lambda data: self.leader_loss(data, step, prepared))
        buffer, model, opt = step.preferences, self.reward_model, self.optimizer
        model.train()
        prepared, out = (None, {}) if step.warmup else self.prepare(step)
        losses: list[float] = []
        grad_norms: list[float] = []
        terms: dict[str, list[float]] = {}
        correct = total = 0
        max_norm = self.config.max_grad_norm if self.config.max_grad_norm is not None else float("inf")
        epochs_run = 0
        for _ in range(step.epochs):  # metrics describe the last epoch
            if epochs_run and step.stop_accuracy is not None and total and correct / total > step.stop_accuracy:
                break  # B-Pref's early stop (buffer.stop_accuracy), on the accuracy of the epoch just run
            epochs_run += 1
            losses.clear()
            grad_norms.clear()
            terms.clear()
            correct = total = 0
            for idx in buffer.minibatches(self.config.batch_size, step.rng):
                pairs = buffer.get(idx)
                s = self.bt_surrogate(pairs) if step.warmup else self.surrogate(pairs, step, prepared)
                opt.zero_grad(set_to_none=True)
                s.loss.backward()
                gn = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
                if not torch.isfinite(gn):  # never let one bad estimate poison the reward model (and the follower)
                    opt.zero_grad(set_to_none=True)
                    self.nonfinite_steps += 1
                    log.warning(
                        "%s: non-finite leader gradient, step skipped (%d so far)", self.name, self.nonfinite_steps
                    )
                    continue
                opt.step()
                if not step.warmup:
                    self.after_step(step)
                losses.append(float(s.loss.detach()))
                grad_norms.append(float(gn))
                for k, v in s.terms.items():
                    terms.setdefault(k, []).append(v)
                with torch.no_grad():
                    decided = s.labels != 0.5
                    pred = s.returns[:, 0] > s.returns[:, 1]
                    correct += int((pred == (s.labels > 0.5))[decided].sum())
                    total += int(decided.sum())
        out.update({k: float(np.mean(v)) for k, v in terms.items()})
        out.update(
            {
                "upper/loss": float(np.mean(losses)) if losses else float("nan"),
                "upper/grad_norm": float(np.mean(grad_norms)) if grad_norms else float("nan"),
                "reward_model/train_accuracy": correct / total if total else float("nan"),
                "upper/nonfinite_steps": float(self.nonfinite_steps),
                "upper/epochs": float(epochs_run),
            }
        )
        return out

    def rule_state(self) -> dict[str, Any]:
        """Extra rule state for checkpoints (tensors / plain values); override with :meth:`load_rule_state`."""
        return {}

    def load_rule_state(self, state: dict[str, Any]) -> None:  # noqa: B027 - optional hook
        """Restore :meth:`rule_state`."""

    @override
    def state_dict(self) -> dict[str, Any]:
        return {
            "config": asdict(self.config),
            "optimizer": self.optimizer.state_dict() if self.optimizer else None,
            "rule": self.rule_state(),
            "nonfinite_steps": self.nonfinite_steps,
        }

    @override
    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.optimizer is not None and state.get("optimizer") is not None:
            self.optimizer.load_state_dict(state["optimizer"])
        self.load_rule_state(state.get("rule", {}))
        self.nonfinite_steps = int(state.get("nonfinite_steps", 0))
