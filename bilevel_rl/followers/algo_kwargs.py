"""Checks of ``follower.algo_kwargs`` against the SB3 algorithm, for config validation (before anything is built)."""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable, Mapping
from numbers import Integral, Real
from typing import Any

from bilevel_rl.followers.registry import follower_class

RESERVED: dict[str, str] = {
    "policy": "the follower picks MlpPolicy or CnnPolicy from the observations; use policy_kwargs",
    "env": "the follower builds the env from env.id",
    "seed": "set by the top-level seed",
    "device": "set by the top-level device",
    "verbose": "set by the follower",
    "learning_rate": "set follower.learning_rate",
    "replay_buffer_class": "the follower uses its relabelling replay buffer",
    "replay_buffer_kwargs": "the follower uses its relabelling replay buffer",
    "tensorboard_log": "not supported (metrics go to the run's logger)",
    "_init_setup_model": "private to SB3",
}
"""SB3 constructor arguments the follower sets itself, and why they cannot be given."""


def _is_int(v: Any) -> bool:
    return isinstance(v, Integral) and not isinstance(v, bool)


def _is_real(v: Any) -> bool:
    return isinstance(v, Real) and not isinstance(v, bool)


def _int_at_least(low: int) -> tuple[str, Callable[[Any], bool]]:
    return f"an integer >= {low}", lambda v: _is_int(v) and v >= low


def _real(text: str, ok: Callable[[float], bool]) -> tuple[str, Callable[[Any], bool]]:
    return f"a number {text}", lambda v: _is_real(v) and ok(float(v))


def _train_freq(v: Any) -> bool:
    if _is_int(v):
        return v >= 1
    return isinstance(v, list | tuple) and len(v) == 2 and _is_int(v[0]) and v[0] >= 1 and v[1] in ("step", "episode")


def _auto_ent_coef(v: Any) -> bool:
    if v == "auto":
        return True
    if not isinstance(v, str) or not v.startswith("auto_"):
        return False
    try:
        return float(v[len("auto_") :]) > 0
    except ValueError:
        return False


_RULES: dict[str, tuple[str, Callable[[Any], bool]]] = {
    "batch_size": _int_at_least(1),
    "buffer_size": _int_at_least(1),
    "learning_starts": _int_at_least(0),
    "n_steps": _int_at_least(1),
    "n_epochs": _int_at_least(1),
    "target_update_interval": _int_at_least(1),
    "gradient_steps": ("an integer >= 1 or -1", lambda v: _is_int(v) and (v >= 1 or v == -1)),
    "train_freq": ("an integer >= 1 or [n, 'step' | 'episode']", _train_freq),
    "gamma": _real("in (0, 1]", lambda v: 0 < v <= 1),
    "tau": _real("in (0, 1]", lambda v: 0 < v <= 1),
    "gae_lambda": _real("in [0, 1]", lambda v: 0 <= v <= 1),
    "clip_range": _real("> 0", lambda v: v > 0),
    "max_grad_norm": _real("> 0", lambda v: v > 0),
    "vf_coef": _real(">= 0", lambda v: v >= 0),
    "temperature": _real("> 0", lambda v: v > 0),
    "loss": ("'huber' or 'mse'", lambda v: v in ("huber", "mse")),
}
"""Range checks of the common numeric arguments: ``key → (what it must be, check)``."""


def check_algo_kwargs(name: str, algo_kwargs: Mapping[str, Any]) -> None:
    """Refuse ``follower.algo_kwargs`` that the SB3 algorithm of follower ``name`` would reject or misuse.

    Checks that every key is an argument of the algorithm's constructor (and not one the follower sets itself),
    and the range and type of the common numeric ones (``batch_size``, ``buffer_size``, ``gamma``, ``tau``,
    ``ent_coef``, soft DQN's ``temperature`` and ``loss``, ...). Cross-key constraints (e.g. PPO's
    ``batch_size <= n_steps * n_envs``) are not checked.

    Args:
        name: ``follower.name``.
        algo_kwargs: ``follower.algo_kwargs`` as plain python values.

    Raises:
        ValueError: one line naming the key as ``follower.algo_kwargs.<key>``, or an unknown follower name.
    """
    cls = follower_class(name)
    algo = cls.algorithm_name
    params = inspect.signature(cls.algorithm).parameters
    accepted = [p for p in params if p not in RESERVED]
    for key, value in algo_kwargs.items():
        where = f"follower.algo_kwargs.{key}"
        if key in RESERVED and key in params:
            raise ValueError(f"{where}: cannot be given ({RESERVED[key]})")
        if key not in params:
            close = difflib.get_close_matches(str(key), accepted, n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise ValueError(f"{where}: not an argument of {algo}{hint}")
        if key in _RULES:
            what, ok = _RULES[key]
            if not ok(value):
                raise ValueError(f"{where}: must be {what}, got {value!r}")
        elif key == "ent_coef":
            learned = isinstance(params["ent_coef"].default, str)  # SAC-like: "auto" learns the temperature
            if not (_is_real(value) and value >= 0) and not (learned and _auto_ent_coef(value)):
                what = "a number >= 0, 'auto' or 'auto_<init > 0>'" if learned else "a number >= 0"
                raise ValueError(f"{where}: {algo} takes {what}, got {value!r}")
