"""Atari (ALE) environments with the DeepMind wrappers, the game score kept in ``info["true_reward"]``.

Wrapper order of one training env (SoBiRL App. J.2 and the authors' code; Mnih et al. 2015 pre-processing as in SB3's
``AtariWrapper``, rebuilt from its blocks so the raw reward can be captured after frame skipping but before
clipping)::

    gym.make(frameskip=1) → Monitor (full-game, unclipped score) → NoopResetEnv(noop_max) → MaxAndSkipEnv(skip)
    → EpisodicLifeEnv (if terminal_on_life_loss) → FireResetEnv (if FIRE is an action) → WarpFrame(84)
    → AtariTrueReward (info["true_reward"]: raw or clipped) → ClipRewardEnv (if clip_reward)

then ``DummyVecEnv`` (seeded as ``make_vec_env`` does) → ``VecFrameStack(frame_stack)`` → ``VecTransposeImage``:
observations are channels-first uint8 stacks ``(4, 84, 84)``, newest frame last on axis 0, zero-padded at the
start of an episode.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np
from stable_baselines3.common.atari_wrappers import (
    ClipRewardEnv,
    EpisodicLifeEnv,
    FireResetEnv,
    MaxAndSkipEnv,
    NoopResetEnv,
    WarpFrame,
)
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.vec_env import VecEnv, VecEnvWrapper, VecFrameStack, VecTransposeImage
from typing_extensions import override

from bilevel_rl.envs.make import check_env_id

TEACHER_REWARDS = ("raw", "clipped")


def is_atari(env_id: str) -> bool:
    """Whether ``env_id`` is registered with ale-py's ``AtariEnv`` entry point (``ALE/*-v5``, ``*NoFrameskip-v4``).

    Unknown ids are not Atari (``check_env_id`` reports them).
    """
    try:
        spec = check_env_id(env_id)
    except ValueError:
        return False
    entry = spec.entry_point
    if isinstance(entry, str):
        return entry.replace(":", ".").startswith("ale_py.") and entry.endswith("AtariEnv")
    return getattr(entry, "__name__", "") == "AtariEnv" and getattr(entry, "__module__", "").startswith("ale_py")


@dataclass
class AtariConfig:
    """Atari pre-processing (config block ``env.atari``).

    Defaults follow Mnih et al. (2015) as used by SoBiRL (App. J.2 and the authors' code) and PBRL (App. E.2, after
    Christiano et al. 2017): 30 no-op starts, 4-frame skip with max-pooling, 84×84 grey frames, 4-frame stack,
    end-of-life = end-of-episode for training, rewards clipped to {-1, 0, 1} for the follower.

    Attributes:
        noop_max: Up to this many no-op actions at reset (random start state).
        frame_skip: Emulator frames per agent step (``MaxAndSkipEnv``; the ALE env itself runs frameskip=1).
        screen_size: Side of the square grey-scale frame (``WarpFrame``).
        terminal_on_life_loss: Training episodes end on a life loss (``EpisodicLifeEnv``); never for eval.
        clip_reward: The follower's reward is ``sign(r)`` (``ClipRewardEnv``); never for eval.
        frame_stack: Frames stacked on the channel axis (``VecFrameStack``).
        teacher_reward: Which reward goes into ``info["true_reward"]``, i.e. what the preference teacher sums
            and what diagnostics correlate with. Default ``"raw"`` (the game score after frame skipping) is the
            SoBiRL paper (App. J: "higher accumulated ground-truth reward") and PBRL (§6.2); the SoBiRL
            code compared clipped returns, which is ``"clipped"``.
        eval_max_steps: Agent steps per evaluation episode at most (27 000 = 108 000 frames / 4).
    """

    noop_max: int = 30
    frame_skip: int = 4
    screen_size: int = 84
    terminal_on_life_loss: bool = True
    clip_reward: bool = True
    frame_stack: int = 4
    teacher_reward: str = "raw"
    eval_max_steps: int = 27_000

    def __post_init__(self) -> None:
        for key, low in (("noop_max", 0), ("frame_skip", 1), ("screen_size", 8), ("frame_stack", 1)):
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ValueError(f"env.atari.{key}: must be an integer >= {low}, got {value!r}")
        value = self.eval_max_steps
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"env.atari.eval_max_steps: must be an integer >= 1, got {value!r}")
        for key in ("terminal_on_life_loss", "clip_reward"):
            if not isinstance(getattr(self, key), bool):
                raise ValueError(f"env.atari.{key}: must be true or false, got {getattr(self, key)!r}")
        if self.teacher_reward not in TEACHER_REWARDS:
            raise ValueError(f"env.atari.teacher_reward: must be one of {TEACHER_REWARDS}, got {self.teacher_reward!r}")

    @classmethod
    def from_dict(cls, d: Mapping[Any, Any] | None) -> AtariConfig:
        """Build from a plain config dict; unknown keys are refused with a one-line ``ValueError``."""
        d = dict(d or {})
        known = {f.name for f in dataclasses.fields(cls)}
        for key in d:
            if key not in known:
                raise ValueError(f"env.atari.{key}: unknown key (known: {', '.join(sorted(known))})")
        return cls(**d)


def atari_make_kwargs(env_id: str, env_kwargs: Mapping[Any, Any] | None) -> dict[str, Any]:
    """``gym.make`` kwargs for an Atari id: ``frameskip=1`` so that ``MaxAndSkipEnv`` alone skips frames.

    ``ALE/*-v5`` ids skip 4 frames inside the emulator by default; stacked with ``MaxAndSkipEnv`` that would be
    16 frames per agent step. Sticky actions (``repeat_action_probability``) are left to ``env.kwargs``; the
    presets set 0.0 (Mnih 2015 / ``NoFrameskip-v4``, as the SoBiRL code).

    Raises:
        ValueError: (one line) an explicit ``env.kwargs.frameskip`` other than 1, or ``obs_type`` other than rgb.
    """
    spec = check_env_id(env_id)
    if not is_atari(env_id):
        raise ValueError(f"env.id: {env_id!r} is not an ALE Atari environment")
    kwargs = dict(env_kwargs or {})
    if "frameskip" in kwargs and kwargs["frameskip"] != 1:
        raise ValueError(
            f"env.kwargs.frameskip: must be 1 for Atari (got {kwargs['frameskip']!r}); "
            "frames are skipped by env.atari.frame_skip"
        )
    if kwargs.get("obs_type", "rgb") != "rgb":
        raise ValueError(f"env.kwargs.obs_type: must be 'rgb' for Atari (got {kwargs['obs_type']!r})")
    if spec.kwargs.get("frameskip", 1) != 1:
        kwargs["frameskip"] = 1
    return kwargs


class AtariTrueReward(gym.Wrapper):
    """Put the reward of the layer below (game score after frame skip) into ``info["true_reward"]``.

    With ``clipped=True`` the teacher's reward is ``sign(r)`` instead (``AtariConfig.teacher_reward``).
    """

    def __init__(self, env: gym.Env, clipped: bool = False) -> None:
        super().__init__(env)
        self.clipped = clipped

    @override
    def step(self, action: Any) -> tuple[Any, Any, bool, bool, dict[str, Any]]:
        obs, reward, terminated, truncated, info = self.env.step(action)
        r = float(reward)
        info["true_reward"] = float(np.sign(r)) if self.clipped else r
        return obs, reward, terminated, truncated, info


def _wrap(env: gym.Env, atari: AtariConfig, train: bool) -> gym.Env:
    """Wrap a Monitor-ed ALE env (see the module docstring for the order)."""
    if atari.noop_max > 0:
        env = NoopResetEnv(env, noop_max=atari.noop_max)
    env = MaxAndSkipEnv(env, skip=atari.frame_skip)
    if train and atari.terminal_on_life_loss:
        env = EpisodicLifeEnv(env)
    if "FIRE" in env.unwrapped.get_action_meanings():  # type: ignore[attr-defined]
        env = FireResetEnv(env)
    env = WarpFrame(env, width=atari.screen_size, height=atari.screen_size)
    env = AtariTrueReward(env, clipped=train and atari.teacher_reward == "clipped")
    if train and atari.clip_reward:
        env = ClipRewardEnv(env)
    return env


def _build(
    env_id: str, n_envs: int, seed: int | None, env_kwargs: Mapping[Any, Any] | None, atari: AtariConfig, train: bool
) -> VecEnv:
    kwargs = atari_make_kwargs(env_id, env_kwargs)
    wrapper = functools.partial(_wrap, atari=atari, train=train)
    venv = make_vec_env(env_id, n_envs=n_envs, seed=seed, env_kwargs=kwargs, wrapper_class=wrapper)
    venv = VecFrameStack(venv, n_stack=atari.frame_stack)
    return VecTransposeImage(venv)


def make_atari_train_env(
    env_id: str, n_envs: int, seed: int, env_kwargs: Mapping[Any, Any] | None = None, atari: AtariConfig | None = None
) -> VecEnv:
    """Vectorised training env: life-loss termination and reward clipping as configured, obs ``(4, 84, 84)`` uint8.

    ``info["true_reward"]`` holds the teacher's reward (raw or clipped game score per agent step); the Monitor's
    ``info["episode"]`` holds the full-game unclipped score at the end of a game (not of a life), with its
    length ``"l"`` in emulator frames (the Monitor sits below ``MaxAndSkipEnv``, as the SoBiRL code's
    ``RecordEpisodeStatistics`` sits below ``AtariWrapper``).
    """
    return _build(env_id, n_envs, seed, env_kwargs, atari or AtariConfig(), train=True)


def make_atari_eval_env(
    env_id: str,
    env_kwargs: Mapping[Any, Any] | None = None,
    atari: AtariConfig | None = None,
    seed: int | None = None,
    render: bool = False,
) -> VecEnv:
    """One-env evaluation ``VecEnv``: full games (no life-loss termination), unclipped game score as reward.

    Same no-op starts, frame skip, warping and frame stack as training; ``info["true_reward"]`` is always the
    raw score here (``teacher_reward`` only concerns training). ``FireResetEnv`` presses FIRE only at the start
    of a game, so a greedy policy that never fires can stall after a lost life until ``max_steps``. The
    Monitor sits below the frame skip: its ``info["episode"]["l"]`` counts emulator frames. ``render=True`` makes
    ``venv.render()`` / ``venv.get_images()`` return RGB frames (``make_vec_env`` already asks ALE for
    ``render_mode="rgb_array"``, so it is only documented intent here).
    """
    kwargs = dict(env_kwargs or {})
    if render:
        kwargs["render_mode"] = "rgb_array"
    return _build(env_id, 1, seed, kwargs, atari or AtariConfig(), train=False)


def evaluate_atari(
    model_predict: Callable[[np.ndarray], np.ndarray],
    venv: VecEnv,
    episodes: int,
    seed: int,
    max_steps: int = 27_000,
    on_step: Callable[[int, np.ndarray, int, float], None] | None = None,
) -> dict[str, float]:
    """Mean full-game score of a deterministic policy on an env from :func:`make_atari_eval_env`.

    Episode ``i`` is reset with seed ``seed + i`` (reproducible no-op starts) and cut after ``max_steps`` agent
    steps. The score is the sum of the eval env's (unclipped) rewards, equal to the Monitor's episode return
    for a game that ends within the cap. ``on_step(episode, obs, action, reward)``, when given, sees every step
    (the stacked observation the action was chosen on, without the env axis).

    Returns:
        ``eval/true_return`` (mean), ``eval/true_return_std`` and ``eval/episode_length`` (mean agent steps).
    """
    if venv.num_envs != 1:
        raise ValueError(f"evaluate_atari needs a single-env VecEnv, got {venv.num_envs} envs")
    returns: list[float] = []
    lengths: list[int] = []
    for ep in range(episodes):
        venv.seed(seed + ep)
        obs = venv.reset()
        total, steps, done = 0.0, 0, False
        while not done and steps < max_steps:
            actions = np.asarray(model_predict(np.asarray(obs))).reshape(1)
            last_obs = obs
            obs, rewards, dones, _ = venv.step(actions)
            if on_step is not None:
                on_step(ep, np.asarray(last_obs)[0], int(actions[0]), float(rewards[0]))
            total += float(rewards[0])
            steps += 1
            done = bool(dones[0])
        returns.append(total)
        lengths.append(steps)
    return episode_metrics(returns, lengths)


def episode_metrics(returns: list[float], lengths: list[int]) -> dict[str, float]:
    """``eval/true_return`` (mean), ``eval/true_return_std`` and ``eval/episode_length`` of evaluation episodes."""
    return {
        "eval/true_return": float(np.mean(returns)),
        "eval/true_return_std": float(np.std(returns)),
        "eval/episode_length": float(np.mean(lengths)),
    }


def atari_spaces(
    env_id: str, env_kwargs: Mapping[Any, Any] | None = None, atari: AtariConfig | None = None
) -> tuple[gym.spaces.Box, gym.spaces.Discrete]:
    """Observation and action space of the wrapped, stacked, transposed env (built, never stepped or reset)."""
    venv = _build(env_id, 1, None, env_kwargs, atari or AtariConfig(), train=True)
    try:
        obs_space, act_space = venv.observation_space, venv.action_space
    finally:
        venv.close()
    assert isinstance(obs_space, gym.spaces.Box) and isinstance(act_space, gym.spaces.Discrete)
    return obs_space, act_space


def _frame_stacks(venv: VecEnv) -> list[VecFrameStack]:
    out: list[VecFrameStack] = []
    layer: Any = venv
    while isinstance(layer, VecEnvWrapper):
        if isinstance(layer, VecFrameStack):
            out.append(layer)
        layer = layer.venv
    return out


def get_vec_stack_state(venv: VecEnv) -> list[np.ndarray]:
    """Copies of the stacked frames of every ``VecFrameStack`` layer of ``venv`` (outermost first).

    The frame stack lives in the vec-env wrapper, not in the gym layers that
    :func:`bilevel_rl.envs.state.get_env_state` saves.
    """
    return [fs.stacked_obs.stacked_obs.copy() for fs in _frame_stacks(venv)]  # type: ignore[union-attr]


def set_vec_stack_state(venv: VecEnv, state: list[np.ndarray]) -> None:
    """Restore :func:`get_vec_stack_state` into a ``venv`` built the same way."""
    stacks = _frame_stacks(venv)
    if len(stacks) != len(state):
        raise ValueError(f"frame-stack state has {len(state)} layers, the env has {len(stacks)}")
    for fs, arr in zip(stacks, state, strict=True):
        current = fs.stacked_obs.stacked_obs
        if current.shape != arr.shape:  # type: ignore[union-attr]
            raise ValueError(f"frame-stack state has shape {arr.shape}, the env has {current.shape}")  # type: ignore[union-attr]
        fs.stacked_obs.stacked_obs = np.array(arr, copy=True)
