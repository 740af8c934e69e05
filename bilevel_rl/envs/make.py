"""Gymnasium vector envs for any Box-observation id, with the true reward kept in ``info["true_reward"]``.

Ids are gymnasium's: a registered id (``Hopper-v5``) or ``module:EnvId`` for an env that ``module`` registers
when imported (an env of one's own, outside this package).
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.vec_env import VecEnv, VecEnvWrapper
from stable_baselines3.common.vec_env.base_vec_env import VecEnvStepReturn
from typing_extensions import override

from bilevel_rl.envs.leader_params import with_leader_parameters
from bilevel_rl.envs.visible_reward import VisibleRewardConfig, wrap_visible

RewardFn = Callable[[np.ndarray, np.ndarray], np.ndarray]


def _register_optional_envs() -> None:
    """Register ALE envs when ale-py is installed (gymnasium >= 1.0 needs it explicit)."""
    try:
        import ale_py

        gym.register_envs(ale_py)
        ale_py.ALEInterface.setLoggerMode(ale_py.LoggerMode.Error)  # no banner on stderr at every env creation
    except ImportError:
        pass


def _split_module(env_id: str) -> tuple[str | None, str]:
    """Split gymnasium's ``"module:EnvId"`` syntax into ``(module, EnvId)``; ``(None, env_id)`` without a colon.

    Module paths never contain a colon, so the first colon separates them from the id.
    """
    module, sep, name = env_id.partition(":")
    return (module, name) if sep else (None, env_id)


def _registered_by(module: str) -> list[str]:
    """Ids in gymnasium's registry whose entry point lives in ``module`` or one of its submodules."""
    ids = []
    for spec_id, spec in gym.registry.items():
        entry = spec.entry_point
        where = entry.partition(":")[0] if isinstance(entry, str) else getattr(entry, "__module__", "")
        if where == module or where.startswith(f"{module}."):
            ids.append(spec_id)
    return sorted(ids)


def resolve_env_id(env_id: str) -> str:
    """The registered gymnasium id behind ``env_id``, importing its module first for ``"module:EnvId"``.

    ``"my_pkg.envs:MyEnv-v0"`` imports ``my_pkg.envs`` (which calls ``gymnasium.register(id="MyEnv-v0", ...)``
    at import time) and returns ``"MyEnv-v0"``; a plain id is returned unchanged once found in the registry.
    ``gymnasium.make`` accepts both forms; ``gymnasium.spec`` only the plain one.

    Args:
        env_id: The ``env.id`` of the config.

    Returns:
        The id under which the environment is registered.

    Raises:
        ValueError: A one-line message naming ``env.id`` when the module cannot be imported, registers no such
            id, or the plain id is unknown.
    """
    _register_optional_envs()
    module, name = _split_module(env_id)
    if module is None:
        check_env_id(env_id)
        return env_id
    if not module or not name:
        raise ValueError(f"env.id={env_id}: expected 'module:EnvId' (e.g. my_envs:PointMass-v0)")
    try:
        importlib.import_module(module)
    except Exception as exc:  # noqa: BLE001 - any import-time failure of user code is reported the same way
        detail = str(exc).splitlines()[0] if str(exc) else ""
        raise ValueError(f"env.id={env_id}: cannot import module {module!r} ({type(exc).__name__}: {detail})") from None
    if name in gym.registry:
        return name
    # the module's own ids, most similar first; else close ids from any module
    own = _registered_by(module)
    hints = difflib.get_close_matches(name, own, n=5, cutoff=0.0) or difflib.get_close_matches(name, list(gym.registry))
    hint = (
        f"close matches: {', '.join(hints)}"
        if hints
        else "it registers none; call gymnasium.register(id=..., entry_point=...) at import time"
    )
    raise ValueError(f"env.id={env_id}: module {module!r} registers no environment {name!r} ({hint})")


def check_env_id(env_id: str) -> gym.envs.registration.EnvSpec:
    """Return the spec of a registered id (or of ``"module:EnvId"``), or raise a one-line ``ValueError``.

    Args:
        env_id: A registered gymnasium id, or ``"module:EnvId"`` whose module registers ``EnvId`` on import.

    Returns:
        The registered ``EnvSpec``.

    Raises:
        ValueError: A one-line message naming ``env.id`` (see ``resolve_env_id``).
    """
    _register_optional_envs()
    if _split_module(env_id)[0] is not None:
        env_id = resolve_env_id(env_id)
    try:
        return gym.spec(env_id)
    except Exception as exc:  # gymnasium raises several error types here
        raise ValueError(f"env.id: unknown gymnasium environment {env_id!r} ({type(exc).__name__})") from None


class TrueRewardInfo(gym.Wrapper):
    """Copy the environment's own reward into ``info["true_reward"]`` at every step."""

    @override
    def step(self, action: Any) -> tuple[Any, Any, bool, bool, dict[str, Any]]:
        obs, reward, terminated, truncated, info = self.env.step(action)
        info["true_reward"] = float(reward)
        return obs, reward, terminated, truncated, info


def _train_wrappers(env: gym.Env, visible: VisibleRewardConfig | None = None) -> gym.Env:
    return wrap_visible(TrueRewardInfo(with_leader_parameters(env)), visible)


def make_train_env(
    env_id: str,
    n_envs: int,
    seed: int,
    env_kwargs: dict[str, Any] | None = None,
    visible: VisibleRewardConfig | None = None,
) -> VecEnv:
    """Vectorised training env: ``env → Monitor → TrueRewardInfo → visible reward``, SB3-seeded.

    The Monitor's episode returns and ``info["true_reward"]`` are the dense reward; the reward returned by ``step``
    is what ``visible`` says (dense, delayed or sparse: :mod:`bilevel_rl.envs.visible_reward`).

    ``env_id`` may be ``module:EnvId``: it is passed to ``gym.make`` as is, which imports the module (in
    any worker process too) before making the env.
    """
    check_env_id(env_id)
    return make_vec_env(
        env_id,
        n_envs=n_envs,
        seed=seed,
        env_kwargs=env_kwargs or {},
        wrapper_class=_train_wrappers,
        wrapper_kwargs={"visible": visible},
    )


def make_eval_env(env_id: str, env_kwargs: dict[str, Any] | None = None, render: bool = False) -> gym.Env:
    """A single un-vectorised env for evaluation on the true reward (``env_id`` may be ``module:EnvId``)."""
    check_env_id(env_id)
    kwargs = dict(env_kwargs or {})
    if render:
        kwargs["render_mode"] = "rgb_array"
    return with_leader_parameters(gym.make(env_id, **kwargs))


class EnvRewardScale(VecEnvWrapper):
    """Multiply the environment's (visible) reward by ``coef`` before the follower stores it.

    On-policy followers add the leader's reward for a whole rollout after collecting it
    (:mod:`bilevel_rl.followers.on_policy`); ``coef = 0`` makes that reward replace the environment's (RLHF),
    ``coef = 1`` keeps it (the true-reward baseline). The true reward stays in ``info["true_reward"]`` and in the
    Monitor's episode statistics, which sit below this wrapper.
    """

    def __init__(self, venv: VecEnv, coef: float = 1.0) -> None:
        super().__init__(venv)
        self.coef = coef

    @override
    def reset(self) -> Any:
        return self.venv.reset()

    @override
    def step_wait(self) -> VecEnvStepReturn:
        obs, rewards, dones, infos = self.venv.step_wait()
        return obs, (self.coef * np.asarray(rewards, dtype=np.float32)), dones, infos


def torch_reward_fn(reward_model: torch.nn.Module, coef: float = 1.0) -> RewardFn:
    """Wrap ``coef ·`` a reward model's ``relabel`` as a numpy → numpy function."""

    def fn(obs: np.ndarray, actions: np.ndarray) -> np.ndarray:
        r = reward_model.relabel(obs, actions).cpu().numpy()  # type: ignore[operator]
        return r if coef == 1.0 else coef * r

    return fn
