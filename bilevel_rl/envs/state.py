"""Snapshot and restore the mid-episode state of a gymnasium env for exact resume.

``pickle.dumps(env)`` is not enough: gymnasium's MuJoCo envs pickle through ``EzPickle``, which keeps only the
constructor arguments and rebuilds a fresh env. We walk the wrapper chain instead and keep, per layer, every
attribute that pickles (step counters, ``np_random``, Monitor accumulators, ...). For MuJoCo the physics is
saved with ``mj_getState(mjSTATE_INTEGRATION)`` into the existing ``MjData``.
"""

from __future__ import annotations

import logging
import pickle
from typing import Any

import gymnasium as gym
import numpy as np

log = logging.getLogger(__name__)

_SKIP = {"env", "model", "data", "mujoco_renderer", "viewer", "_viewers", "renderer", "ale"}


def _layers(env: gym.Env) -> list[Any]:
    out: list[Any] = [env]
    while hasattr(out[-1], "env") and out[-1].env is not None and out[-1] is not out[-1].unwrapped:
        out.append(out[-1].env)
    return out


def get_env_state(env: gym.Env) -> list[dict[str, Any]]:
    """Per-layer picklable state of ``env`` (outermost wrapper first)."""
    states: list[dict[str, Any]] = []
    for layer in _layers(env):
        attrs: dict[str, bytes] = {}
        for key, value in layer.__dict__.items():
            if key in _SKIP:
                continue
            try:
                attrs[key] = pickle.dumps(value)
            except Exception:  # noqa: BLE001 - unpicklable attributes (locks, renderers) are skipped
                log.debug("env state: skipping unpicklable %s.%s", type(layer).__name__, key)
        entry: dict[str, Any] = {"type": type(layer).__name__, "attrs": attrs}
        if (
            hasattr(layer, "model")
            and hasattr(layer, "data")
            and type(layer).__module__.startswith("gymnasium.envs.mujoco")
        ):
            import mujoco

            spec = mujoco.mjtState.mjSTATE_INTEGRATION
            buf = np.empty(mujoco.mj_stateSize(layer.model, spec))
            mujoco.mj_getState(layer.model, layer.data, buf, spec)
            entry["mujoco_state"] = buf
        states.append(entry)
    return states


def set_env_state(env: gym.Env, states: list[dict[str, Any]]) -> None:
    """Restore a state from :func:`get_env_state` into an env built the same way."""
    layers = _layers(env)
    if [type(x).__name__ for x in layers] != [s["type"] for s in states]:
        raise ValueError("env state does not match the env's wrapper chain")
    for layer, entry in zip(layers, states, strict=True):
        for key, blob in entry["attrs"].items():
            layer.__dict__[key] = pickle.loads(blob)
        if "mujoco_state" in entry:
            import mujoco

            mujoco.mj_setState(layer.model, layer.data, entry["mujoco_state"], mujoco.mjtState.mjSTATE_INTEGRATION)
            mujoco.mj_forward(layer.model, layer.data)
