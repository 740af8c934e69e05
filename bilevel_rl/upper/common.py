"""Shared plumbing of the preference-based leader rules: the minibatch loop, the optimiser, and estimator pieces.

Every RLHF rule here minimises a *surrogate* whose gradient w.r.t. the reward parameters is the rule's update
direction (SoBiRL §4.6's "implementation identity": all estimator terms are linear in ``∇r``, so detached
weights times rewards give them in one ``backward``). :class:`PreferenceRule` owns the loop over the preference
buffer; a rule implements :meth:`PreferenceRule.surrogate` and, when it needs them, the hooks
:meth:`PreferenceRule.before_update` (train a best response, draw rollouts) and
:meth:`PreferenceRule.after_step` (momentum bookkeeping).
"""

from __future__ import annotations

import logging
from abc import abstractmethod
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from typing_extensions import override

from bilevel_rl.data.preference_buffer import PreferenceBuffer
from bilevel_rl.data.segments import PreferencePairs
from bilevel_rl.data.trajectories import TrajectoryBatch
from bilevel_rl.followers.base import Follower
from bilevel_rl.reward_models.base import RewardModel
from bilevel_rl.upper.base import UpperRule, bradley_terry_loss

log = logging.getLogger(__name__)


@dataclass
class LeaderOptimConfig:
    """Leader optimiser settings shared by all preference rules (defaults: SoBiRL App. J.2).

    Attributes:
        lr: reward-model learning rate.
        weight_decay: decoupled weight decay (AdamW); L2 for SGD.
        betas: Adam moments.
        eps: Adam epsilon.
        batch_size: pairs per minibatch.
        max_grad_norm: clip the global gradient norm of each leader step (``None``: no clipping).
        optimizer: ``adamw`` or ``sgd`` (plain gradient steps, e.g. for checks against exact gradients).
    """

    lr: float = 3e-4
    weight_decay: float = 1e-2
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    batch_size: int = 32
    max_grad_norm: float | None = None
    optimizer: str = "adamw"

    def __post_init__(self) -> None:
        self.betas = (float(self.betas[0]), float(self.betas[1]))
        if self.lr <= 0:
            raise ValueError(f"upper.lr must be > 0, got {self.lr}")
        if self.batch_size <= 0:
            raise ValueError(f"upper.batch_size must be > 0, got {self.batch_size}")
        if self.weight_decay < 0:
            raise ValueError(f"upper.weight_decay must be >= 0, got {self.weight_decay}")
        if self.max_grad_norm is not None and self.max_grad_norm <= 0:
            raise ValueError(f"upper.max_grad_norm must be > 0 or null, got {self.max_grad_norm}")
        if self.optimizer not in ("adamw", "sgd"):
            raise ValueError(f"upper.optimizer must be adamw or sgd, got {self.optimizer!r}")


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


def pair_tensors(model: RewardModel, pairs: PreferencePairs) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(obs, actions, mask)`` of a pair batch as tensors on the model's device: ``(B, 2, H, ...)``."""
    dev = model.device
    return (
        torch.as_tensor(pairs.obs, device=dev),
        torch.as_tensor(pairs.actions, device=dev),
        torch.as_tensor(pairs.mask, device=dev),
    )


def pair_losses(model: RewardModel, pairs: PreferencePairs) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-pair Bradley–Terry losses ``(B,)``, predicted returns ``(B, 2)`` and labels ``(B,)``."""
    obs, actions, mask = pair_tensors(model, pairs)
    returns = model.segment_returns(obs, actions, mask)
    labels = torch.as_tensor(pairs.labels, device=model.device)
    return bradley_terry_loss(returns, labels), returns, labels


def expected_policy_reward(model: RewardModel, follower: Follower, obs: torch.Tensor, num_samples: int) -> torch.Tensor:
    """``E_{a'~π(·|s)}[r_φ(s, a')]`` for a flat batch ``(N, *obs_shape)`` → ``(N,)``, differentiable in ``φ``.

    Discrete actions: the exact sum ``Σ_a π(a|s) r_φ(s, a)``. Continuous: the mean over ``num_samples`` actions
    drawn from the follower's current policy (no gradient flows to the policy; SoBiRL digest §6 item 3).
    """
    dist = follower.action_dist(obs)
    if isinstance(dist, torch.distributions.Categorical):
        probs = dist.probs.to(obs.dtype if obs.is_floating_point() else torch.float32)
        n, num_actions = probs.shape
        per_action = model.action_rewards(obs)  # one pass for per-action-head models (the papers' Atari CNNs)
        if per_action is not None:
            return (probs.to(per_action.dtype) * per_action).sum(dim=1)
        all_actions = torch.arange(num_actions, device=obs.device).repeat(n)
        rewards = model(obs.repeat_interleave(num_actions, dim=0), all_actions).reshape(n, num_actions)
        return (probs.to(rewards.dtype) * rewards).sum(dim=1)
    with torch.no_grad():
        samples = dist.sample((num_samples,))  # (K, N, *act_shape)
    k, n = samples.shape[:2]
    rep = obs.unsqueeze(0).expand(k, *obs.shape).reshape(k * n, *obs.shape[1:])
    rewards = model(rep, samples.reshape(k * n, *samples.shape[2:]).to(obs.dtype)).reshape(k, n)
    return rewards.mean(dim=0)


def discounted_from_start_weights(batch: TrajectoryBatch, gamma: float) -> tuple[np.ndarray, int]:
    """Weights ``γ^t`` for steps whose episode start lies in the batch, and the number of such episodes.

    ``t`` is the within-episode index. ``Σ_steps w·r / episodes`` estimates ``E_{s_0~ρ}[Σ_t γ^t r(s_t, a_t)]``
    (episodes cut by the end of the batch lose their tail; PBRL digest §6 item 12: weights count from the episode
    start).
    """
    t = batch.timesteps.astype(np.float64)
    known = t >= 0
    w = np.where(known, gamma ** np.where(known, t, 0.0), 0.0)
    episodes = int(batch.episode_starts.sum())
    return w.astype(np.float32), episodes


def discounted_return_surrogate(model: RewardModel, batch: TrajectoryBatch, gamma: float) -> torch.Tensor:
    """``(1/#episodes) Σ_steps γ^t r_φ(s_t, a_t)``: its φ-gradient estimates ``∇_φ V^π_{r_φ}(ρ)`` (PBRL C.1)."""
    w, episodes = discounted_from_start_weights(batch, gamma)
    if episodes == 0:
        raise ValueError("the follower batch holds no episode start; increase trainer.steps_per_iter")
    dev = model.device
    obs = torch.as_tensor(batch.flat_obs(), device=dev)
    actions = torch.as_tensor(batch.flat_actions(), device=dev)
    weights = torch.as_tensor(w.reshape(-1), device=dev)
    keep = weights > 0
    return (model(obs[keep], actions[keep]) * weights[keep]).sum() / episodes


class PreferenceRule(UpperRule):
    """A leader that takes minibatch steps on a surrogate over the preference buffer.

    Subclasses set ``config`` (a :class:`LeaderOptimConfig` subclass) and implement :meth:`surrogate`. The
    warm-up (iteration 0, on the initial pairs of a random policy) uses the plain Bradley–Terry loss: the extra
    terms describe the follower's *current* policy, and at warm-up there is none yet (the SoBiRL code gates its
    hyper-term off for the first 1e5 steps for the same reason).
    """

    config: LeaderOptimConfig

    def __init__(self) -> None:
        super().__init__()
        self.optimizer: torch.optim.Optimizer | None = None
        self.iteration = 0
        self.batch: TrajectoryBatch | None = None
        self.rng: np.random.Generator = np.random.default_rng(0)
        self.nonfinite_steps = 0

    @override
    def attach(self, follower: Follower, reward_model: RewardModel) -> None:
        super().attach(follower, reward_model)
        c = self.config
        params = list(reward_model.parameters())
        if c.optimizer == "sgd":
            self.optimizer = torch.optim.SGD(params, lr=c.lr, weight_decay=c.weight_decay)
        else:
            self.optimizer = torch.optim.AdamW(params, lr=c.lr, betas=c.betas, eps=c.eps, weight_decay=c.weight_decay)

    @property
    def warmup(self) -> bool:
        """Whether the current update is the warm-up on the initial pairs (plain Bradley–Terry)."""
        return self.iteration == 0

    def before_update(self) -> dict[str, float]:
        """Hook run once per :meth:`update` before the epochs (``self.batch``, ``self.rng`` are set)."""
        return {}

    def after_step(self) -> None:  # noqa: B027 - optional hook
        """Hook run after each optimiser step."""

    @abstractmethod
    def surrogate(self, pairs: PreferencePairs) -> Surrogate:
        """The loss of one minibatch of pairs (``self.batch``: the follower's latest on-policy transitions)."""

    def bt_surrogate(self, pairs: PreferencePairs) -> Surrogate:
        """The plain Bradley–Terry surrogate (DRLHF; every rule's warm-up)."""
        assert self.reward_model is not None
        bce, returns, labels = pair_losses(self.reward_model, pairs)
        loss = bce.mean()
        return Surrogate(loss, returns, labels, {"upper/bt_loss": float(loss.detach())})

    @override
    def update(
        self,
        buffer: PreferenceBuffer,
        epochs: int,
        rng: np.random.Generator,
        batch: TrajectoryBatch | None = None,
        iteration: int = 0,
    ) -> dict[str, float]:
        if self.reward_model is None or self.optimizer is None:
            raise RuntimeError(f"{type(self).__name__}.update called before attach()")
        self.batch, self.iteration, self.rng = batch, iteration, rng
        model, opt = self.reward_model, self.optimizer
        model.train()
        out = self.before_update()
        losses: list[float] = []
        grad_norms: list[float] = []
        terms: dict[str, list[float]] = {}
        correct = total = 0
        max_norm = self.config.max_grad_norm if self.config.max_grad_norm is not None else float("inf")
        for _ in range(epochs):
            losses.clear()
            grad_norms.clear()
            terms.clear()
            correct = total = 0
            for idx in buffer.minibatches(self.config.batch_size, rng):
                pairs = buffer.get(idx)
                s = self.bt_surrogate(pairs) if self.warmup else self.surrogate(pairs)
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
                self.after_step()
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
