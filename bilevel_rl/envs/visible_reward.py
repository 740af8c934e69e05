"""What reward the follower sees from the environment: dense, delayed every ``k`` steps, or paid at episode end.

The delayed-reward protocol of Zheng, Oh and Singh (LIRPG, NeurIPS 2018; the benchmark of learned reward shaping):
the environment's reward is accumulated and paid out every ``k`` steps and at the end of the episode (termination or
truncation), zero in between; the sum over an episode is unchanged. ``sparse`` pays the whole episode's return at its
end only. The dense reward stays the *true* reward: :class:`~bilevel_rl.envs.make.TrueRewardInfo` sits below these
wrappers, so ``info["true_reward"]``, the Monitor's episode returns, the preference teacher and ``eval/true_return``
(evaluation envs are never wrapped) all use the dense reward; only what a follower trains on when it trains on the
environment's reward (``upper=true_reward``, and the visible part ``r_visible`` of a shaped reward) changes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import gymnasium as gym
from typing_extensions import override

from bilevel_rl.schema import check_dataclass, check_range


@dataclass
class VisibleRewardConfig:
    """Config block ``env.visible_reward``.

    Attributes:
        kind: ``dense`` (the env's reward), ``delayed`` (paid every ``delay`` steps and at episode end, LIRPG) or
            ``sparse`` (the episode's return, paid at its end).
        delay: ``k`` of ``delayed`` (LIRPG's MuJoCo experiments: 10, 20, 40).
    """

    kind: Literal["dense", "delayed", "sparse"] = "dense"
    delay: int = 20

    def __post_init__(self) -> None:
        check_dataclass(self, "env.visible_reward")
        check_range(self, "env.visible_reward", "delay", low=1, strict=False)


class DelayedReward(gym.Wrapper):
    """Accumulate the reward and pay it every ``delay`` steps and when the episode ends (``delay=None``: at the end).

    Args:
        env: the environment (its reward is the dense one).
        delay: steps between payments; ``None`` pays only at the end of an episode (a sparse reward).
    """

    def __init__(self, env: gym.Env, delay: int | None) -> None:
        super().__init__(env)
        if delay is not None and delay < 1:
            raise ValueError(f"env.visible_reward.delay: must be >= 1, got {delay}")
        self.delay = delay
        self.pending = 0.0
        self.steps = 0

    @override
    def reset(self, **kwargs: Any) -> tuple[Any, dict[str, Any]]:
        self.pending, self.steps = 0.0, 0
        return self.env.reset(**kwargs)

    @override
    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict[str, Any]]:
        obs, reward, terminated, truncated, info = self.env.step(action)
        self.pending += float(reward)
        self.steps += 1
        paid = 0.0
        if terminated or truncated or (self.delay is not None and self.steps % self.delay == 0):
            paid, self.pending = self.pending, 0.0
        return obs, paid, terminated, truncated, info


def wrap_visible(env: gym.Env, config: VisibleRewardConfig | None) -> gym.Env:
    """``env`` with the reward the follower should see (unchanged for ``dense``)."""
    if config is None or config.kind == "dense":
        return env
    return DelayedReward(env, config.delay if config.kind == "delayed" else None)
