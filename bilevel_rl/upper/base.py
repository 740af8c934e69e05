"""The `UpperRule` seam and the preference loss shared by the RLHF rules."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.nn import functional as F  # noqa: N812

if TYPE_CHECKING:
    from bilevel_rl.data.preference_buffer import PreferenceBuffer
    from bilevel_rl.data.segments import PreferencePairs
    from bilevel_rl.data.trajectories import TrajectoryBatch
    from bilevel_rl.followers.base import Follower
    from bilevel_rl.reward_models.base import RewardModel

SB3_FOLLOWERS = ("sac", "dsac", "ppo", "a2c")
"""Follower names backed by SB3 algorithms (no generative model: they cannot restart from an arbitrary state)."""


def bradley_terry_loss(returns: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-pair Bradley–Terry cross-entropy (SoBiRL eq. 101 with the BCE of L117).

    ``P(d0 ≻ d1) = exp(R0) / (exp(R0) + exp(R1)) = sigmoid(R0 - R1)`` and
    ``l = -y log P(d0 ≻ d1) - (1 - y) log P(d1 ≻ d0)``.

    Args:
        returns: ``(B, 2)`` predicted segment returns ``Σ_h r_φ(s_h, a_h)``.
        labels: ``(B,)`` probability that segment 0 is preferred (0.5 = tie).

    Returns:
        ``(B,)`` losses.
    """
    logits = returns[:, 0] - returns[:, 1]
    return F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype), reduction="none")


@torch.no_grad()
def predicted_segment_returns(reward_model: RewardModel, pairs: PreferencePairs, batch_size: int = 256) -> np.ndarray:
    """Predicted returns ``(N, 2)`` of each pair's segments, in eval mode (raw ``r_φ``, not the follower's scale)."""
    was_training = reward_model.training
    reward_model.eval()
    out = []
    try:
        dev = reward_model.device
        for start in range(0, len(pairs.labels), batch_size):
            sl = slice(start, start + batch_size)
            ret = reward_model.segment_returns(
                torch.as_tensor(pairs.obs[sl], device=dev),
                torch.as_tensor(pairs.actions[sl], device=dev),
                torch.as_tensor(pairs.mask[sl], device=dev),
            )
            out.append(ret.float().cpu().numpy())
    finally:
        reward_model.train(was_training)
    return np.concatenate(out) if out else np.zeros((0, 2), dtype=np.float32)


@torch.no_grad()
def preference_accuracy(reward_model: RewardModel, pairs: PreferencePairs, batch_size: int = 256) -> float:
    """Fraction of non-tied pairs whose preferred segment gets the higher predicted return."""
    decided = pairs.labels != 0.5
    if not decided.any():
        return float("nan")
    was_training = reward_model.training
    reward_model.eval()
    correct = 0
    try:
        idx = np.nonzero(decided)[0]
        for start in range(0, len(idx), batch_size):
            sl = idx[start : start + batch_size]
            dev = reward_model.device
            ret = reward_model.segment_returns(
                torch.as_tensor(pairs.obs[sl], device=dev),
                torch.as_tensor(pairs.actions[sl], device=dev),
                torch.as_tensor(pairs.mask[sl], device=dev),
            )
            pred_first = (ret[:, 0] > ret[:, 1]).cpu().numpy()
            correct += int((pred_first == (pairs.labels[sl] > 0.5)).sum())
    finally:
        reward_model.train(was_training)
    return correct / len(idx)


class UpperRule(ABC):
    """A leader update rule. It must not know which follower class it talks to.

    Lifecycle: construct with its hyperparameter dataclass, :meth:`attach` to a follower and a reward model,
    then call :meth:`update` once per outer iteration.

    Class attributes:
        name: the config name (``upper.name``).
        uses_preferences: ``False`` for the true-reward baseline (no labels are queried, no leader steps).
        needs_temperature: the rule divides by the follower's entropy temperature; config validation refuses
            PPO/A2C with ``ent_coef <= 0`` before anything is written (``attach`` re-checks the live value).
    """

    name: str = "base"
    uses_preferences: bool = True
    needs_temperature: bool = False

    def __init__(self) -> None:
        self.follower: Follower | None = None
        self.reward_model: RewardModel | None = None

    @classmethod
    def check_follower(cls, follower_name: str, params: dict[str, Any]) -> str | None:
        """Why this rule cannot run with the named follower under ``params`` (``None``: it can)."""
        return None

    def attach(self, follower: Follower, reward_model: RewardModel) -> None:
        """Connect the rule to the follower and reward model it updates (and install any hooks)."""
        self.follower = follower
        self.reward_model = reward_model

    @abstractmethod
    def update(
        self,
        buffer: PreferenceBuffer,
        epochs: int,
        rng: np.random.Generator,
        batch: TrajectoryBatch | None = None,
        iteration: int = 0,
    ) -> dict[str, float]:
        """Run ``epochs`` leader epochs over the buffer; return namespaced metrics (``upper/...``).

        Args:
            buffer: the labelled preference pairs.
            epochs: full passes over the buffer.
            rng: the trainer's generator (minibatch order, any sampling).
            batch: the follower's on-policy transitions of the phase just finished (with within-episode time
                indices); rules whose estimators need fresh rollouts read them here.
            iteration: the outer iteration; ``0`` is the warm-up on the initial pairs.
        """

    def bind_buffer(self, buffer: PreferenceBuffer) -> None:  # noqa: B027 - optional hook
        """The trainer's preference buffer, given once at construction (before any resume restores it in place).

        Rules whose hooks read pairs between leader updates (PBRL's extra policy loss) keep it, so a resumed run
        continues exactly.
        """

    def auxiliary_followers(self) -> dict[str, Follower]:
        """Followers the rule owns besides the main one (best responses); the trainer checkpoints them."""
        return {}

    @abstractmethod
    def state_dict(self) -> dict[str, Any]:
        """Rule state (optimizer, schedules) for checkpoints: tensors and plain python values only."""

    @abstractmethod
    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore from :meth:`state_dict`."""


RULES: dict[str, tuple[str, str, str]] = {
    "drlhf": ("bilevel_rl.upper.drlhf", "DRLHF", "DRLHFConfig"),
    "true_reward": ("bilevel_rl.upper.true_reward", "TrueReward", "TrueRewardConfig"),
    "sobirl": ("bilevel_rl.upper.sobirl", "SoBiRL", "SoBiRLConfig"),
    "stoc_sobirl": ("bilevel_rl.upper.stoc_sobirl", "StocSoBiRL", "StocSoBiRLConfig"),
    "pbrl": ("bilevel_rl.upper.pbrl", "PBRL", "PBRLConfig"),
    "hpgd": ("bilevel_rl.upper.hpgd", "HPGD", "HPGDConfig"),
    "ppa": ("bilevel_rl.upper.ppa", "PPA", "PPAConfig"),
    "hessian_free": ("bilevel_rl.upper.hessian_free", "HessianFree", "HessianFreeConfig"),
}
"""Config name → (module, rule class, hyperparameter dataclass)."""


def rule_classes(name: str) -> tuple[type[UpperRule], type]:
    """The rule class and its config dataclass for ``upper.name``."""
    import importlib

    if name not in RULES:
        raise ValueError(f"upper.name: unknown upper rule {name!r} (available: {', '.join(sorted(RULES))})")
    module, cls, conf = RULES[name]
    mod = importlib.import_module(module)
    return getattr(mod, cls), getattr(mod, conf)


def make_rule(name: str, params: dict[str, Any]) -> UpperRule:
    """Build an upper rule from its config name and hyperparameters."""
    rule_cls, conf_cls = rule_classes(name)
    try:
        config = conf_cls(**params)
    except TypeError as exc:
        raise ValueError(f"upper: bad hyperparameters for {name}: {exc}") from None
    return rule_cls(config)  # type: ignore[call-arg]
