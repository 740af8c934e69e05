"""What a follower can do, what a leader rule needs, and the one check that compares them.

Followers *declare* their capabilities (:meth:`bilevel_rl.followers.base.Follower.declared_capabilities`, from the
config alone, before anything is built; and :attr:`~bilevel_rl.followers.base.Follower.capabilities` on a live
instance). Rules declare their *requirements* for given hyperparameters
(:meth:`bilevel_rl.upper.base.UpperRule.requirements`): each required capability comes with the reason, i.e. the
setting that needs it and what to change instead. :func:`check_compatible` compares the two and raises one line;
config validation calls it before the run directory is written, and :meth:`UpperRule.attach` calls it again on the
live follower.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from enum import Enum


class Capability(str, Enum):
    """One thing a follower may be able to do."""

    TEMPERATURE = "temperature"
    """A positive entropy temperature (SAC α, soft DQN λ, PPO/A2C ``ent_coef > 0``, tabular τ):
    ``Follower.temperature``."""
    GAMMA = "gamma"
    """A discount factor: ``Follower.gamma``."""
    ACTION_DIST = "action_dist"
    """The current policy as a torch distribution: ``Follower.action_dist``."""
    PARAMETRIC_POLICY = "parametric_policy"
    """``action_dist(obs, grad=True)`` is differentiable in the policy parameters."""
    EXTRA_POLICY_LOSS = "extra_policy_loss"
    """A leader term can be added to the policy loss: ``Follower.set_extra_policy_loss``."""
    SPAWN = "spawn"
    """A second follower of the same configuration can be made: ``Follower.spawn``."""
    GENERATIVE_MODEL = "generative_model"
    """The simulator restarts from any observed state: ``Follower.rollouts_from``."""
    TRUE_REWARD = "true_reward"
    """It can train on the environment's own reward: ``Follower.set_reward_model_to_true_reward``."""
    VIDEO = "video"
    """It can render an evaluation episode: ``Follower.record_video``."""
    POLICY_LOOKAHEAD = "policy_lookahead"
    """Its policy's log-probabilities at substituted parameters: ``Follower.policy_parameters`` and
    ``Follower.policy_log_prob`` (a one-step lookahead through its own policy-gradient update)."""

    @property
    def description(self) -> str:
        """Words for error messages."""
        return _DESCRIPTIONS[self]


_DESCRIPTIONS = {
    Capability.TEMPERATURE: "an entropy temperature > 0 (SAC alpha; PPO/A2C: follower.algo_kwargs.ent_coef > 0)",
    Capability.GAMMA: "a discount factor",
    Capability.ACTION_DIST: "its action distribution",
    Capability.PARAMETRIC_POLICY: "a policy differentiable in its parameters",
    Capability.EXTRA_POLICY_LOSS: "an extra policy-loss term",
    Capability.SPAWN: "a second (best-response) follower",
    Capability.GENERATIVE_MODEL: "a generative model (reset to an arbitrary state)",
    Capability.TRUE_REWARD: "training on the environment's own reward",
    Capability.VIDEO: "video recording",
    Capability.POLICY_LOOKAHEAD: "a functional policy (log pi at substituted parameters; PPO, A2C)",
}

Requirements = Mapping[Capability, str]
"""Required capability → why (the setting that needs it, and what to change instead); ``""`` when always needed."""


class CapabilityError(ValueError):
    """A rule and a follower that cannot work together; the message is one line."""


def check_compatible(rule: str, required: Requirements, follower: str, provided: Iterable[Capability]) -> None:
    """Refuse a (rule, follower) pair whose follower lacks something the rule needs.

    Args:
        rule: the rule's config name (``upper.name``).
        required: :meth:`UpperRule.requirements` for the rule's hyperparameters.
        follower: the follower's config name (``follower.name``) or class name.
        provided: the follower's capabilities.

    Raises:
        CapabilityError: one line naming the first missing capability, the setting that needs it and the fix.
    """
    have = set(provided)
    for cap, why in required.items():
        if cap not in have:
            reason = f" ({why})" if why else ""
            raise CapabilityError(f"upper={rule} needs {cap.description}, which follower={follower} lacks{reason}")
