"""The `UpperRule` seam: one leader update per outer iteration, its inputs in one frozen `LeaderStep`.

A rule is constructed from its hyperparameter dataclass, :meth:`UpperRule.attach`-ed once to a follower, the
leader's model and the objective's live data, then called with one :class:`LeaderStep` per outer iteration. It must
not know which follower class it talks to: it states what it needs (:meth:`UpperRule.requirements`, checked against
the follower's declared capabilities before anything runs) and uses only the `Follower` seam, which is how the same
rule class runs on the tabular lab against exact hypergradients.
"""

from __future__ import annotations

import dataclasses
import importlib
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch

from bilevel_rl.capabilities import Capability, Requirements, check_compatible

if TYPE_CHECKING:
    from bilevel_rl.data.preference_buffer import PreferenceBuffer
    from bilevel_rl.data.trajectories import TrajectoryBatch
    from bilevel_rl.followers.base import Follower
    from bilevel_rl.objectives.leader_reward import LeaderData
    from bilevel_rl.reward_models.base import RewardModel


@dataclass(frozen=True)
class LeaderStep:
    """Everything one leader update may read (nothing else reaches a rule between updates).

    Attributes:
        data: the objective's data (``preferences``: the :class:`PreferenceBuffer`; ``leader_reward``: the live
            :class:`~bilevel_rl.objectives.leader_reward.LeaderData`).
        batch: the follower's on-policy transitions of the phase just finished (within-episode time indices
            included); ``None`` only when a rule is driven without a follower phase (unit checks).
        iteration: the outer iteration; ``0`` is the warm-up.
        epochs: passes over the data (at most, when ``stop_accuracy`` is set).
        rng: numpy generator (minibatch order, pair draws, rollouts).
        generator: torch generator for every leader-side torch sample (policy actions), owned and checkpointed by
            the trainer, so the follower's global torch stream is never touched by the leader.
        stop_accuracy: preference rules stop after the first epoch whose training accuracy exceeds this
            (``buffer.stop_accuracy``); ``None`` runs all ``epochs``.
    """

    data: Any
    batch: TrajectoryBatch | None
    iteration: int
    epochs: int
    rng: np.random.Generator
    generator: torch.Generator
    stop_accuracy: float | None = None

    @property
    def preferences(self) -> PreferenceBuffer:
        """``data`` as a preference buffer (raises for another objective)."""
        from bilevel_rl.data.preference_buffer import PreferenceBuffer

        if not isinstance(self.data, PreferenceBuffer):
            raise TypeError(f"this rule needs objective=preferences; got data of type {type(self.data).__name__}")
        return self.data

    @property
    def leader(self) -> LeaderData:
        """``data`` as the leader-reward objective's live data (raises for another objective)."""
        from bilevel_rl.objectives.leader_reward import LeaderData

        if not isinstance(self.data, LeaderData):
            raise TypeError(
                f"this rule path needs objective=leader_reward; got data of type {type(self.data).__name__}"
            )
        return self.data

    @property
    def warmup(self) -> bool:
        """Whether this is the warm-up update on the initial data (iteration 0)."""
        return self.iteration == 0

    def on_policy_batch(self, rule: str) -> TrajectoryBatch:
        """``batch``, or a one-line error naming the rule that needs it."""
        if self.batch is None:
            raise ValueError(f"upper={rule} needs the follower's on-policy batch (LeaderStep.batch)")
        return self.batch


class UpperRule(ABC):
    """A leader update rule (one file per rule under ``bilevel_rl/upper/``, one hyperparameter dataclass).

    Class attributes:
        name: the config name (``upper.name``).
        objectives: the objectives it can optimise (``preferences``, ``leader_reward``).
        trains_leader: ``False`` for baselines whose leader does nothing (no data is gathered).
    """

    name: ClassVar[str] = "base"
    objectives: ClassVar[tuple[str, ...]] = ("preferences",)
    trains_leader: ClassVar[bool] = True

    def __init__(self) -> None:
        self.follower: Follower | None = None
        self.reward_model: RewardModel | None = None

    @classmethod
    def requirements(cls, params: Any) -> Requirements:
        """What this rule needs from a follower under the hyperparameters ``params`` (its config dataclass).

        Returns:
            Capability → the reason (the setting that needs it and what to change instead).
        """
        return {}

    @classmethod
    def objective_problem(cls, params: Any, objective: str) -> str | None:
        """Why this rule cannot optimise ``objective`` under ``params`` (``None``: it can); checked before building."""
        if objective not in cls.objectives:
            return f"upper={cls.name} optimises objective={' or objective='.join(cls.objectives)} only"
        return None

    def attach(self, follower: Follower, reward_model: RewardModel, data: Any = None) -> None:
        """Connect the rule to the follower, the leader's model and the objective's live data; install hooks.

        Raises:
            CapabilityError: the live follower lacks something :meth:`requirements` asks for.
        """
        required = dict(self.requirements(getattr(self, "config", None)))
        if configured_temperature(data) is not None:
            required.pop(Capability.TEMPERATURE, None)
        if required:
            check_compatible(self.name, required, type(follower).__name__, follower.capabilities)
        self.follower = follower
        self.reward_model = reward_model

    @abstractmethod
    def update(self, step: LeaderStep) -> dict[str, float]:
        """One leader update; returns namespaced metrics (``upper/...``, ``reward_model/...``)."""

    def auxiliary_followers(self) -> dict[str, Follower]:
        """Followers the rule owns besides the main one (best responses): for closing them and step counts."""
        return {}

    @abstractmethod
    def state_dict(self) -> dict[str, Any]:
        """Rule state (optimizer, schedules, owned followers) for checkpoints."""

    @abstractmethod
    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore from :meth:`state_dict`."""


def configured_temperature(data: Any) -> float | None:
    """``objective.follower_temperature`` when the objective's data carries one (it replaces the follower's own)."""
    config = getattr(data, "config", None)
    return getattr(config, "follower_temperature", None)


RULES: dict[str, tuple[str, str, str]] = {
    "drlhf": ("bilevel_rl.upper.drlhf", "DRLHF", "DRLHFConfig"),
    "true_reward": ("bilevel_rl.upper.true_reward", "TrueReward", "TrueRewardConfig"),
    "sobirl": ("bilevel_rl.upper.sobirl", "SoBiRL", "SoBiRLConfig"),
    "stoc_sobirl": ("bilevel_rl.upper.stoc_sobirl", "StocSoBiRL", "StocSoBiRLConfig"),
    "pbrl": ("bilevel_rl.upper.pbrl", "PBRL", "PBRLConfig"),
    "hpgd": ("bilevel_rl.upper.hpgd", "HPGD", "HPGDConfig"),
    "ppa": ("bilevel_rl.upper.ppa", "PPA", "PPAConfig"),
    "hessian_free": ("bilevel_rl.upper.hessian_free", "HessianFree", "HessianFreeConfig"),
    "meta_gradient": ("bilevel_rl.upper.meta_gradient", "MetaGradient", "MetaGradientConfig"),
    "zero_order": ("bilevel_rl.upper.zero_order", "ZeroOrder", "ZeroOrderRuleConfig"),
}
"""Config name → (module, rule class, hyperparameter dataclass)."""


def rule_classes(name: str) -> tuple[type[UpperRule], type]:
    """The rule class and its config dataclass for ``upper.name``."""
    if name not in RULES:
        raise ValueError(f"upper.name: unknown upper rule {name!r} (available: {', '.join(sorted(RULES))})")
    module, cls, conf = RULES[name]
    mod = importlib.import_module(module)
    return getattr(mod, cls), getattr(mod, conf)


def make_rule_config(name: str, params: dict[str, Any]) -> Any:
    """The hyperparameter dataclass of rule ``name`` from config keys (``name`` itself is dropped).

    Raises:
        ValueError: one line naming the key (unknown key, wrong type, out of range).
    """
    _, conf_cls = rule_classes(name)
    params = {**params, "name": name}
    fields = {f.name for f in dataclasses.fields(conf_cls)}
    for key in params:
        if key not in fields:
            import difflib

            close = difflib.get_close_matches(key, sorted(fields), n=1)
            hint = f" (did you mean upper.{close[0]}?)" if close else ""
            raise ValueError(f"upper.{key}: not a hyperparameter of upper={name}{hint}")
    return conf_cls(**params)


def make_rule(name: str, params: dict[str, Any]) -> UpperRule:
    """Build an upper rule from its config name and hyperparameters."""
    rule_cls, _ = rule_classes(name)
    return rule_cls(make_rule_config(name, params))  # type: ignore[call-arg]


__all__ = ["Capability", "LeaderStep", "RULES", "UpperRule", "make_rule", "make_rule_config", "rule_classes"]
