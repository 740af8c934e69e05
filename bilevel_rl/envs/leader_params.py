"""Environments that read the leader's current parameters (incentive design: taxes that enter the dynamics).

An environment opts in by defining ``set_leader_parameters(params)`` on its unwrapped class (``TaxDesign-v0``
does). The training and evaluation envs of such an environment carry a :class:`LeaderParameters` wrapper; the
follower gives every one of them a *source* (a callable returning the current parameters, e.g. the leader module's
``env_parameters``), and the wrapper pushes its value into the environment before each reset and step, so the
dynamics follow each leader update at once. Spawned followers get their own source (the Zero-Order baseline
probes perturbed parameters that way).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import gymnasium as gym
import numpy as np

LeaderSource = Callable[[], np.ndarray]
"""``() -> parameters``, read before every reset and step."""


def reads_leader_parameters(env: gym.Env) -> bool:
    """Whether the unwrapped environment defines ``set_leader_parameters``."""
    return callable(getattr(env.unwrapped, "set_leader_parameters", None))


class LeaderParameters(gym.Wrapper):
    """Push ``source()`` into the environment before every reset and step (no source: the env's own values)."""

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        if not reads_leader_parameters(env):
            raise ValueError(f"env {env.spec.id if env.spec else env}: defines no set_leader_parameters")
        self.source: LeaderSource | None = None

    def _push(self) -> None:
        if self.source is not None:
            self.env.unwrapped.set_leader_parameters(self.source())  # type: ignore[attr-defined]

    def reset(self, **kwargs: Any) -> tuple[Any, dict[str, Any]]:
        """Apply the current parameters, then reset."""
        self._push()
        return self.env.reset(**kwargs)

    def step(self, action: Any) -> tuple[Any, Any, bool, bool, dict[str, Any]]:
        """Apply the current parameters, then step."""
        self._push()
        return self.env.step(action)


def with_leader_parameters(env: gym.Env) -> gym.Env:
    """``env`` wrapped in :class:`LeaderParameters` when it reads leader parameters, else unchanged."""
    return LeaderParameters(env) if reads_leader_parameters(env) else env


def attach_source(env: gym.Env, source: LeaderSource | None) -> int:
    """Give every :class:`LeaderParameters` in ``env``'s wrapper chain ``source``; return how many there were."""
    count, layer = 0, env
    while True:
        if isinstance(layer, LeaderParameters):
            layer.source = source
            count += 1
        if not isinstance(layer, gym.Wrapper):
            return count
        layer = layer.env
