"""Snapshot and restore the mid-episode state of a gymnasium env for exact resume.

``pickle.dumps(env)`` is not enough: gymnasium's MuJoCo envs pickle through ``EzPickle``, which keeps only the
constructor arguments and rebuilds a fresh env. We walk the wrapper chain instead and keep, per layer, every
attribute that pickles (step counters, ``np_random``, Monitor accumulators, ...). For MuJoCo the physics is
saved with ``mj_getState(mjSTATE_INTEGRATION)`` into the existing ``MjData``. For ALE (Atari) the emulator
is saved with ``ale.cloneState(include_rng=True)`` (RAM, CPU, frame counters and the sticky-action RNG) as
serialised bytes and put back with ``restoreState``; the wrapper layers' attributes (``EpisodicLifeEnv.lives``,
``MaxAndSkipEnv``'s frame buffer, Monitor accumulators, ``np_random`` for no-op starts) go through the generic
path. The frame stack lives in SB3's ``VecFrameStack`` (see ``bilevel_rl.envs.atari.get_vec_stack_state``).
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
        if _is_ale(layer):
            entry["ale_state"] = layer.ale.cloneState(include_rng=True).serialize()
        states.append(entry)
    return states


def _is_ale(layer: Any) -> bool:
    return hasattr(layer, "ale") and type(layer).__module__.startswith("ale_py")


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
        if "ale_state" in entry:
            import ale_py

            layer.ale.restoreState(ale_py.ALEState(entry["ale_state"]))
