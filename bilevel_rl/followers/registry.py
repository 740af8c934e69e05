"""Follower names (``follower.name``) and their classes."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from bilevel_rl.followers.on_policy import A2CFollower, PPOFollower
from bilevel_rl.followers.sac import DiscreteSACFollower, SACFollower
from bilevel_rl.followers.sb3_base import SB3Follower
from bilevel_rl.followers.soft_dqn import SoftDQNFollower

FOLLOWERS: dict[str, type[SB3Follower]] = {
    cls.name: cls for cls in (SACFollower, DiscreteSACFollower, SoftDQNFollower, PPOFollower, A2CFollower)
}
"""``follower.name`` → class: ``sac``, ``dsac`` (discrete SAC), ``soft_dqn`` (regularised DQN), ``ppo``, ``a2c``."""


def follower_class(name: str) -> type[SB3Follower]:
    """The follower class registered as ``name``.

    Raises:
        ValueError: one line listing the choices, for an unknown name.
    """
    try:
        return FOLLOWERS[name]
    except KeyError:
        raise ValueError(f"follower.name: unknown follower {name!r} (choose {', '.join(FOLLOWERS)})") from None


def make_follower(
    name: str,
    env_id: str,
    n_envs: int,
    seed: int,
    algo_kwargs: Mapping[str, Any],
    **kwargs: Any,
) -> SB3Follower:
    """Build a follower by config name; ``kwargs`` are the other arguments of :class:`SB3Follower`."""
    return follower_class(name)(env_id, n_envs, seed, algo_kwargs, **kwargs)
