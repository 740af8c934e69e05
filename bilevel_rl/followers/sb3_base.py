"""The shared base of the SB3 followers: env building (incl. Atari), recording, evaluation, video, checkpoints.

Atari envs get the DeepMind wrappers and channels-first 4×84×84 stacks (:mod:`bilevel_rl.envs.atari`). What
differs between algorithms lives in subclasses: :class:`~bilevel_rl.followers.off_policy.OffPolicyFollower`
(relabelling replay buffers) and :class:`~bilevel_rl.followers.on_policy.OnPolicyFollower` (a learned-reward
vec-env wrapper), then one concrete class per SB3 algorithm.

We subclass SB3 (never patch it): the ``Bilevel*`` algorithm classes only change how learning-rate progress is
measured (over the whole run, not per ``learn`` call) and, per algorithm, a few documented details.
"""

from __future__ import annotations

import copy
import inspect
from abc import abstractmethod
from collections import deque
from collections.abc import Mapping
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
import torch
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.logger import configure
from stable_baselines3.common.preprocessing import is_image_space
from stable_baselines3.common.save_util import recursive_getattr
from stable_baselines3.common.vec_env import DummyVecEnv, VecEnv, VecEnvWrapper
from typing_extensions import override

from bilevel_rl.capabilities import Capability
from bilevel_rl.data.trajectories import TrajectoryBatch
from bilevel_rl.envs.atari import (
    AtariConfig,
    evaluate_atari,
    get_vec_stack_state,
    is_atari,
    make_atari_eval_env,
    make_atari_train_env,
    set_vec_stack_state,
)
from bilevel_rl.envs.leader_params import LeaderSource, attach_source
from bilevel_rl.envs.make import make_eval_env, make_train_env
from bilevel_rl.envs.state import get_env_state, set_env_state
from bilevel_rl.envs.visible_reward import VisibleRewardConfig
from bilevel_rl.followers.atari_policies import resolve_policy_kwargs
from bilevel_rl.followers.base import ExtraPolicyLoss, Follower, LeaderStepReward, TransitionRecorder
from bilevel_rl.followers.sb3_parts import (
    RecorderCallback,
    evaluate_episodes,
    learning_rate_schedule,
    positive_ent_coef,
    record_episode,
)
from bilevel_rl.reward_models.base import RewardModel

SB3_CAPABILITIES = frozenset(
    {
        Capability.GAMMA,
        Capability.ACTION_DIST,
        Capability.PARAMETRIC_POLICY,
        Capability.EXTRA_POLICY_LOSS,
        Capability.SPAWN,
        Capability.TRUE_REWARD,
        Capability.VIDEO,
    }
)
"""What every SB3 follower can do; ``TEMPERATURE`` depends on ``ent_coef`` (no SB3 env has a generative model)."""


class SB3Follower(Follower):
    """A follower backed by an SB3 algorithm; concrete classes fix the algorithm (:data:`FOLLOWERS`).

    Args:
        env_id: gymnasium id (Box observation space); ALE ids get the DeepMind wrapper stack.
        n_envs: parallel environments.
        seed: seed for SB3, the envs and the action space.
        algo_kwargs: keyword arguments for the SB3 constructor (``policy_kwargs.features_extractor_class`` may
            name a registered extractor, e.g. ``pbrl_cnn``).
        learning_rate: the learning rate (``None``: ``algo_kwargs["learning_rate"]``, else 3e-4).
        lr_schedule: ``constant`` or ``linear`` (decays to 0 at ``lr_horizon`` env steps).
        lr_horizon: env steps over which the schedule runs (SoBiRL: 8e6).
        actor_lr: SAC only, a separate actor learning rate (``None``: same as ``learning_rate``).
        record_steps: how many recent steps per env :meth:`collect` can return.
        env_kwargs: extra ``gym.make`` keyword arguments.
        device: torch device.
        atari: the ``env.atari`` block (:class:`~bilevel_rl.envs.atari.AtariConfig` fields); ``None`` for an ALE id
            means the defaults.
        eval_deterministic: evaluate the greedy policy (``False``: sample from it, as the SoBiRL code reports
            training-episode scores; a greedy Atari policy can stall after losing a life).
        reward_clip: off-policy image followers: clamp relabelled rewards to ``[-c, c]`` (SoBiRL code: 1).
        learning_starts: PPO/A2C only: no gradient updates during the first ``learning_starts`` env steps (the
            trainer passes ``trainer.initial_steps`` when ``follower.freeze_initial``; SAC has its own key).
        visible_reward: the environment reward the follower sees when it trains on it (``env.visible_reward``:
            dense, delayed or sparse); the true (dense) reward is always kept for the teacher and evaluation.
    """

    name: ClassVar[str]
    """The config name (``follower.name``)."""
    algorithm: ClassVar[type[BaseAlgorithm]]
    """The SB3 algorithm class."""
    algorithm_name: ClassVar[str]
    """The SB3 algorithm's name in messages (``SAC``, ``PPO``, ...)."""
    action_spaces: ClassVar[tuple[type[gym.spaces.Space], ...]] = (gym.spaces.Box, gym.spaces.Discrete)
    """The action spaces the algorithm acts in."""
    action_space_need: ClassVar[str] = "a Box or Discrete action space"
    """``action_spaces`` in words, for :meth:`action_space_problem`."""
    STATE_ATTRS: ClassVar[tuple[str, ...]] = (
        "num_timesteps",
        "_n_updates",
        "_episode_num",
        "_last_obs",
        "_last_original_obs",
        "_last_episode_starts",
        "_current_progress_remaining",
    )
    """Attributes of the SB3 model saved by :meth:`state_dict` (besides parameters and optimizers)."""

    def __init__(
        self,
        env_id: str,
        n_envs: int,
        seed: int,
        algo_kwargs: Mapping[str, Any],
        learning_rate: float | None = None,
        lr_schedule: str = "constant",
        lr_horizon: int | None = None,
        actor_lr: float | None = None,
        record_steps: int = 5000,
        env_kwargs: Mapping[str, Any] | None = None,
        device: str = "cpu",
        atari: Mapping[str, Any] | None = None,
        eval_deterministic: bool = True,
        reward_clip: float | None = None,
        learning_starts: int = 0,
        visible_reward: VisibleRewardConfig | None = None,
    ) -> None:
        self._init_kwargs: dict[str, Any] = {
            "env_id": env_id,
            "n_envs": n_envs,
            "seed": seed,
            "algo_kwargs": algo_kwargs,
            "learning_rate": learning_rate,
            "lr_schedule": lr_schedule,
            "lr_horizon": lr_horizon,
            "actor_lr": actor_lr,
            "record_steps": record_steps,
            "env_kwargs": env_kwargs,
            "device": device,
            "atari": atari,
            "eval_deterministic": eval_deterministic,
            "reward_clip": reward_clip,
            "learning_starts": learning_starts,
            "visible_reward": visible_reward,
        }
        kwargs = dict(algo_kwargs)
        if learning_rate is not None and "learning_rate" in kwargs:
            raise ValueError("follower.algo_kwargs.learning_rate: give the learning rate once (follower.learning_rate)")
        lr = float(learning_rate if learning_rate is not None else kwargs.pop("learning_rate", 3e-4))
        kwargs.pop("learning_rate", None)
        self._params: dict[str, Any] = {
            "name": self.name,
            "learning_rate": lr,
            "actor_lr": actor_lr,
            "lr_schedule": lr_schedule,
            "lr_horizon": lr_horizon,
            "eval_deterministic": eval_deterministic,
            "reward_clip": reward_clip,
            "algo_kwargs": dict(algo_kwargs),
        }
        self.env_id = env_id
        self.env_kwargs = dict(env_kwargs or {})
        self.eval_deterministic = eval_deterministic
        self.seed = seed
        self.atari: AtariConfig | None = None
        if atari is not None or is_atari(env_id):
            if visible_reward is not None and visible_reward.kind != "dense":
                raise ValueError("env.visible_reward.kind: delayed and sparse rewards are for vector envs, not Atari")
            self.atari = AtariConfig.from_dict(dict(atari or {}))
            venv: VecEnv = make_atari_train_env(env_id, n_envs, seed, self.env_kwargs, self.atari)
        else:
            venv = make_train_env(env_id, n_envs, seed, self.env_kwargs, visible_reward)
        problem = self.action_space_problem(venv.action_space)
        if problem:
            venv.close()
            raise ValueError(f"follower={self.name}: env.id={env_id} {problem}")
        venv = self._wrap_env(venv)
        self.image_obs = is_image_space(venv.observation_space)
        kwargs["policy_kwargs"] = resolve_policy_kwargs(dict(kwargs.get("policy_kwargs") or {}))
        kwargs.update(self._extra_algo_kwargs(reward_clip))
        self.model: BaseAlgorithm = self.algorithm(
            "CnnPolicy" if self.image_obs else "MlpPolicy",
            venv,
            learning_rate=learning_rate_schedule(lr, lr_schedule),
            seed=seed,
            device=device,
            verbose=0,
            **kwargs,
        )
        self.model.lr_horizon = lr_horizon  # type: ignore[attr-defined]
        self._configure_model(lr=lr, actor_lr=actor_lr, learning_starts=learning_starts)
        self.model.set_logger(configure(None, []))
        self.observation_space = venv.observation_space
        self.action_space = venv.action_space
        self.recorder = TransitionRecorder(record_steps, n_envs)
        self._callback = RecorderCallback(self.recorder)
        self._eval_env: gym.Env | None = None
        self._eval_venv: VecEnv | None = None
        self._leader_source: LeaderSource | None = None
        self.reward_model: RewardModel | None = None
        self.true_reward_only = False
        self._extra_loss: ExtraPolicyLoss | None = None
        self._extra_hook: Any = None
        self.extra_loss_sum, self.extra_loss_count = 0.0, 0

    # ------------------------------------------------------------------ hooks of the subclasses
    @classmethod
    def action_space_problem(cls, space: gym.spaces.Space) -> str | None:
        """Why this follower cannot act in ``space`` (``None``: it can); the words follow ``env.id=<id>``."""
        if isinstance(space, cls.action_spaces):
            return None
        return f"has action space {space}; {cls.algorithm_name} needs {cls.action_space_need}"

    def _wrap_env(self, venv: VecEnv) -> VecEnv:
        """The training vec env as the algorithm sees it."""
        return venv

    def _extra_algo_kwargs(self, reward_clip: float | None) -> dict[str, Any]:
        """Keyword arguments the follower adds to ``algo_kwargs`` (e.g. the replay buffer class)."""
        return {}

    def _configure_model(self, lr: float, actor_lr: float | None, learning_starts: int) -> None:
        """Adjust the freshly built SB3 model (``self.model``)."""

    @abstractmethod
    def _policy_optimizer(self) -> torch.optim.Optimizer:
        """The optimizer whose steps update the policy (:meth:`set_extra_policy_loss` hooks it)."""

    # ------------------------------------------------------------------ capabilities
    @override
    @classmethod
    def declared_capabilities(cls, params: Mapping[str, Any] | None = None) -> frozenset[Capability]:
        """Every SB3 capability, plus ``TEMPERATURE`` when ``algo_kwargs.ent_coef`` (or SB3's default) is > 0."""
        algo_kwargs = (params or {}).get("algo_kwargs") or {}
        default = inspect.signature(cls.algorithm).parameters["ent_coef"].default
        if positive_ent_coef(algo_kwargs.get("ent_coef", default)):
            return SB3_CAPABILITIES | {Capability.TEMPERATURE}
        return SB3_CAPABILITIES

    @override
    @property
    def config_params(self) -> Mapping[str, Any]:
        return self._params

    @override
    @property
    def capabilities(self) -> frozenset[Capability]:
        """Live: ``TEMPERATURE`` exactly while :attr:`temperature` is > 0."""
        return (SB3_CAPABILITIES | {Capability.TEMPERATURE}) if self.temperature > 0 else SB3_CAPABILITIES

    @override
    @property
    def gamma(self) -> float:
        return float(self.model.gamma)  # type: ignore[attr-defined]

    # ------------------------------------------------------------------ learning
    @override
    def learn(self, steps: int) -> dict[str, float]:
        if self.reward_model is None and not self.true_reward_only:
            raise RuntimeError("set_reward_model() must be called before learn()")
        if steps <= 0:
            return {}
        self.model.learn(
            steps,
            callback=self._callback,
            reset_num_timesteps=False,
            log_interval=None,  # type: ignore[arg-type]  # None: SB3 never dumps (we read its logger values)
            progress_bar=False,
        )
        metrics: dict[str, float] = {}
        logger = self.model.logger
        for key, value in logger.name_to_value.items():
            if key.startswith("train/") and isinstance(value, int | float | np.floating):
                metrics["follower/" + key.split("/", 1)[1]] = float(value)
        logger.name_to_value.clear()
        metrics["follower/temperature"] = self.temperature
        if self.extra_loss_count:
            metrics["follower/extra_policy_loss"] = self.extra_loss_sum / self.extra_loss_count
            self.extra_loss_sum, self.extra_loss_count = 0.0, 0
        batch = self.recorder.batch(max(1, steps // self.num_envs))
        # Atari: Monitor's whole-game unclipped scores (the recorder's episodes end at every lost life)
        returns = self._callback.game_returns if self.atari is not None else batch.episode_returns()
        self._callback.game_returns = []
        if returns:
            metrics["follower/ep_true_return"] = float(np.mean(returns))
        return metrics

    @override
    def collect(self, steps: int) -> TrajectoryBatch:
        return self.recorder.batch(steps)

    @override
    @property
    def num_timesteps(self) -> int:
        return int(self.model.num_timesteps)

    @override
    @property
    def num_envs(self) -> int:
        return int(self.model.n_envs)

    @override
    def set_extra_policy_loss(self, fn: ExtraPolicyLoss | None) -> None:
        self._extra_loss = fn
        if self._extra_hook is None and fn is not None:
            self._extra_hook = self._policy_optimizer().register_step_pre_hook(self._apply_extra_loss)

    def _apply_extra_loss(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        """Runs right before each policy optimizer step: adds ``∇ fn()`` to the gradients SB3 just computed.

        PPO/A2C clip the gradient norm before stepping, so the extra term is not clipped.
        """
        if self._extra_loss is None:
            return
        with torch.enable_grad():
            extra = self._extra_loss()
        extra.backward()
        self.extra_loss_sum += float(extra.detach())
        self.extra_loss_count += 1

    @override
    def set_leader_source(self, source: LeaderSource | None) -> None:
        """Give every training env (and the evaluation env) ``source``; refuse if no env reads parameters."""
        found = sum(attach_source(env, source) for env in self._vec_env().envs)
        if found == 0:
            raise ValueError(f"env.id={self.env_id}: the environment reads no leader parameters")
        self._leader_source = source
        if self._eval_env is not None:
            attach_source(self._eval_env, source)

    @override
    def spawn(self, seed: int) -> SB3Follower:
        return type(self)(**{**self._init_kwargs, "seed": seed})

    # ------------------------------------------------------------------ evaluation
    def _predict(self, obs: np.ndarray) -> np.ndarray:
        action, _ = self.model.predict(obs, deterministic=self.eval_deterministic)
        return action

    @override
    def evaluate(self, episodes: int, seed: int, leader_reward: LeaderStepReward | None = None) -> dict[str, float]:
        """True-reward evaluation; a stochastic policy samples from its own torch RNG stream seeded by ``seed``.

        Training's RNG streams are left untouched, so whether (and how often) a run evaluates never changes its
        training (a resumed run evaluates at the end of the part before the stop, the uninterrupted one may not).
        """
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self._evaluate(episodes, seed, leader_reward)

    def _evaluate(self, episodes: int, seed: int, leader_reward: LeaderStepReward | None) -> dict[str, float]:
        if self.atari is not None:  # whole games, unclipped score, no life-loss termination
            if leader_reward is not None:
                raise ValueError("objective.reward_fn / objective.cost: evaluating a leader reward needs a vector env")
            if self._eval_venv is None:
                self._eval_venv = make_atari_eval_env(self.env_id, self.env_kwargs, self.atari, seed)
            return evaluate_atari(self._predict, self._eval_venv, episodes, seed, self.atari.eval_max_steps)
        if self._eval_env is None:
            self._eval_env = make_eval_env(self.env_id, self.env_kwargs)
            attach_source(self._eval_env, self._leader_source)
        return evaluate_episodes(self._predict, self._eval_env, episodes, seed, leader_reward)

    @override
    def record_video(self, seed: int, max_steps: int = 1000) -> np.ndarray:
        """Frames ``(T, H, W, 3)`` of one evaluation episode (MuJoCo needs a render backend, e.g. ``MUJOCO_GL=egl``)."""
        return record_episode(self._predict, self.env_id, self.env_kwargs, self.atari, seed, max_steps)

    # ------------------------------------------------------------------ checkpoints
    def _train_venv(self) -> VecEnv:
        venv = self.model.get_env()
        assert venv is not None
        return venv

    def _vec_env(self) -> DummyVecEnv:
        venv = self.model.get_env()
        while isinstance(venv, VecEnvWrapper):  # learned reward, Atari frame stack / transposition
            venv = venv.venv
        if not isinstance(venv, DummyVecEnv):
            raise TypeError("checkpointing needs a DummyVecEnv")
        return venv

    @override
    def state_dict(self) -> dict[str, Any]:
        """Model parameters and optimizers (copies), SB3 counters, env and RNG states, the recorder.

        Subclasses add their own entries (replay buffer, reward wrapper). Replay-buffer arrays are views of the
        live buffer (a copy would double the memory of an Atari buffer): store the dict before learning again.
        """
        m = self.model
        state: dict[str, Any] = {
            "name": self.name,
            "params": copy.deepcopy(m.get_parameters()),
            # get_parameters() leaves out SB3's "pytorch variables" (SAC's log_ent_coef): keep them too
            "torch_vars": {name: recursive_getattr(m, name).detach().clone() for name in m._get_torch_save_params()[1]},
            "attrs": copy.deepcopy({k: getattr(m, k) for k in self.STATE_ATTRS if hasattr(m, k)}),
            "ep_info_buffer": list(m.ep_info_buffer or []),
            "ep_success_buffer": list(m.ep_success_buffer or []),
            "action_space_rng": copy.deepcopy(m.action_space.np_random.bit_generator.state),
            "recorder": self.recorder.state_dict(),
            # per-layer env state incl. MuJoCo physics: a resumed run continues mid-episode exactly
            "envs": [get_env_state(env) for env in self._vec_env().envs],
        }
        if self.atari is not None:
            state["frame_stack"] = get_vec_stack_state(self._train_venv())
        return state

    @override
    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["name"] != self.name:
            raise ValueError(f"checkpoint follower is {state['name']!r}, config asks for {self.name!r}")
        m = self.model
        m.set_parameters(state["params"], exact_match=True, device=m.device)
        with torch.no_grad():
            for name, value in state["torch_vars"].items():
                recursive_getattr(m, name).copy_(value)  # in place: the optimizer holds this tensor
        for k, v in state["attrs"].items():
            setattr(m, k, copy.deepcopy(v))
        maxlen = m.ep_info_buffer.maxlen if m.ep_info_buffer is not None else 100
        m.ep_info_buffer = deque(state["ep_info_buffer"], maxlen=maxlen)
        m.ep_success_buffer = deque(state["ep_success_buffer"], maxlen=maxlen)
        m.action_space.np_random.bit_generator.state = state["action_space_rng"]
        self.recorder.load_state_dict(state["recorder"])
        venv = self._vec_env()
        if len(venv.envs) != len(state["envs"]):
            raise ValueError(f"checkpoint has {len(state['envs'])} envs, config asks for {len(venv.envs)}")
        for env, env_state in zip(venv.envs, state["envs"], strict=True):
            set_env_state(env, env_state)
        if "frame_stack" in state:
            set_vec_stack_state(self._train_venv(), state["frame_stack"])

    @override
    def close(self) -> None:
        self.model.get_env().close()  # type: ignore[union-attr]
        if self._eval_env is not None:
            self._eval_env.close()
        if self._eval_venv is not None:
            self._eval_venv.close()
