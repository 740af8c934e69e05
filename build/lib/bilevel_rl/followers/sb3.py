"""SB3 followers: SAC, discrete SAC, PPO and A2C on vector-observation envs and on Atari.

Atari envs get the DeepMind wrappers and channels-first 4×84×84 stacks (:mod:`bilevel_rl.envs.atari`). On-policy
followers get the learned reward from a vec-env wrapper.

We subclass SB3 (never patch it): ``BilevelSAC``/``BilevelDiscreteSAC``/``BilevelPPO``/``BilevelA2C`` only change
how learning-rate progress is measured (over the whole run, not per ``learn`` call). The off-policy followers'
replay buffers relabel rewards with the current reward model whenever a batch is sampled, so stored rewards never
go stale: :class:`~bilevel_rl.followers.relabel.RelabelingReplayBuffer` for vector observations,
:class:`~bilevel_rl.followers.frame_buffer.FrameStackReplayBuffer` (each Atari frame stored once) for images.
"""

from __future__ import annotations

from collections import deque
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from stable_baselines3 import A2C, PPO, SAC
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.logger import configure
from stable_baselines3.common.preprocessing import is_image_space
from stable_baselines3.common.save_util import recursive_getattr
from stable_baselines3.common.vec_env import DummyVecEnv, VecEnv, VecEnvWrapper
from typing_extensions import override

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
from bilevel_rl.envs.make import LearnedRewardVecEnv, make_eval_env, make_train_env, torch_reward_fn
from bilevel_rl.envs.state import get_env_state, set_env_state
from bilevel_rl.followers.atari_policies import resolve_policy_kwargs
from bilevel_rl.followers.base import ExtraPolicyLoss, Follower, TransitionRecorder
from bilevel_rl.followers.buffer_io import buffer_state, load_buffer_state
from bilevel_rl.followers.discrete_sac import DiscreteSAC
from bilevel_rl.followers.frame_buffer import FrameStackReplayBuffer
from bilevel_rl.followers.relabel import RelabelingReplayBuffer
from bilevel_rl.reward_models.base import RewardModel

__all__ = ["RelabelingReplayBuffer", "SB3Follower", "make_follower", "squashed_gaussian"]


class _FlatActionRewards:
    """A reward model seen through flat discrete actions: replay buffers store them as ``(B, 1)``."""

    def __init__(self, model: RewardModel) -> None:
        self.model = model

    def relabel(self, obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        return self.model.relabel(obs, torch.as_tensor(actions).reshape(-1).long())

    def fingerprint(self) -> Any:
        return self.model.fingerprint()


class _ClampedSquash(torch.distributions.TransformedDistribution):
    """Tanh-squashed Gaussian whose ``log_prob`` clamps actions just inside the bounds (atanh(±1) = ∞)."""

    def __init__(self, base: torch.distributions.Distribution, low: torch.Tensor, high: torch.Tensor) -> None:
        loc, scale = (high + low) / 2, (high - low) / 2
        transforms = [
            torch.distributions.TanhTransform(cache_size=1),
            torch.distributions.AffineTransform(loc=loc, scale=scale, event_dim=1),
        ]
        super().__init__(base, transforms)
        self._lo, self._hi = low + 1e-5 * scale, high - 1e-5 * scale

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return super().log_prob(torch.maximum(torch.minimum(value, self._hi), self._lo))


def squashed_gaussian(
    mean: torch.Tensor, std: torch.Tensor, low: np.ndarray, high: np.ndarray
) -> torch.distributions.Distribution:
    """SAC's policy ``a = low + (tanh(u) + 1)(high − low)/2``, ``u ~ N(mean, std)``, as a torch distribution."""
    lo = torch.as_tensor(low, dtype=mean.dtype, device=mean.device)
    hi = torch.as_tensor(high, dtype=mean.dtype, device=mean.device)
    base = torch.distributions.Independent(torch.distributions.Normal(mean, std), 1)
    return _ClampedSquash(base, lo, hi)


class _GlobalProgressMixin:
    """Learning-rate progress over ``lr_horizon`` env steps instead of per ``learn()`` call."""

    lr_horizon: int | None = None
    _current_progress_remaining: float

    def _update_current_progress_remaining(self, num_timesteps: int, total_timesteps: int) -> None:
        horizon = self.lr_horizon or total_timesteps
        self._current_progress_remaining = max(0.0, 1.0 - float(num_timesteps) / float(horizon))


class BilevelSAC(_GlobalProgressMixin, SAC):
    """SAC with an optional separate actor learning rate (SoBiRL J.2: critic/α 1e-3, actor 3e-4)."""

    actor_lr_scale: float = 1.0

    def _update_learning_rate(self, optimizers: Any) -> None:
        super()._update_learning_rate(optimizers)
        if self.actor_lr_scale != 1.0:
            lr = self.lr_schedule(self._current_progress_remaining) * self.actor_lr_scale
            for group in self.actor.optimizer.param_groups:
                group["lr"] = lr


class BilevelDiscreteSAC(_GlobalProgressMixin, DiscreteSAC):
    """Discrete SAC (Christodoulou 2019; SoBiRL J.2 / code) with run-level learning-rate progress."""


class _FrozenStartMixin:
    """On-policy followers: no gradient updates until ``learning_starts`` env steps (``follower.freeze_initial``).

    The trainer's iteration 0 then records the *initial* policy for the warm-up pairs, as PBRL E.2 and Christiano
    et al. 2017 do, instead of training it on the untrained reward model (with the E.2 CNN's per-action head that
    reward prefers some actions outright, and A2C collapsed onto them within 25k Seaquest steps: entropy 1e-4).
    """

    learning_starts: int = 0
    num_timesteps: int
    n_steps: int
    n_envs: int

    def train(self) -> None:
        if self.num_timesteps - self.n_steps * self.n_envs < self.learning_starts:  # the rollout began before it
            return
        super().train()  # type: ignore[misc]


class BilevelPPO(_FrozenStartMixin, _GlobalProgressMixin, PPO):
    """PPO with run-level learning-rate progress."""


class BilevelA2C(_FrozenStartMixin, _GlobalProgressMixin, A2C):
    """A2C with run-level learning-rate progress."""


class _RecorderCallback(BaseCallback):
    """Feeds every environment step into a :class:`TransitionRecorder`."""

    def __init__(self, recorder: TransitionRecorder) -> None:
        super().__init__()
        self.recorder = recorder
        self.game_returns: list[float] = []  # Monitor's full-episode returns (Atari: whole game, unclipped)

    def _on_step(self) -> bool:
        loc = self.locals
        actions = loc["clipped_actions"] if "clipped_actions" in loc else loc["actions"]
        infos = loc["infos"]
        true_r = np.array([info.get("true_reward", np.nan) for info in infos], dtype=np.float32)
        truncated = np.array([bool(info.get("TimeLimit.truncated", False)) for info in infos])
        self.game_returns += [float(info["episode"]["r"]) for info in infos if "episode" in info]
        # SB3 updates model._last_obs only after the callback, so it still holds the pre-step observation.
        self.recorder.add(
            np.asarray(self.model._last_obs).copy(),
            np.asarray(actions).copy(),
            true_r,
            np.asarray(loc["dones"]),
            truncated,
        )
        return True


def _schedule(lr: float, kind: str) -> Any:
    if kind == "constant":
        return lr
    if kind == "linear":
        return lambda progress: lr * progress
    raise ValueError(f"follower.lr_schedule: unknown schedule {kind!r} (choose constant or linear)")


_ALGOS: dict[str, type[BaseAlgorithm]] = {
    "sac": BilevelSAC,
    "dsac": BilevelDiscreteSAC,
    "ppo": BilevelPPO,
    "a2c": BilevelA2C,
}
_OFF_POLICY = ("sac", "dsac")
_STATE_ATTRS = (
    "num_timesteps",
    "_n_updates",
    "_episode_num",
    "_last_obs",
    "_last_original_obs",
    "_last_episode_starts",
    "_current_progress_remaining",
    "_last_target_update",  # discrete SAC: when the target critics were last copied
)


class SB3Follower(Follower):
    """A follower backed by an SB3 algorithm.

    Args:
        algo: ``sac``, ``dsac`` (discrete SAC), ``ppo`` or ``a2c``.
        env_id: gymnasium id (Box observation space); ALE ids get the DeepMind wrapper stack.
        n_envs: parallel environments.
        seed: seed for SB3, the envs and the action space.
        algo_kwargs: keyword arguments for the SB3 constructor (``policy_kwargs.features_extractor_class`` may
            name a registered extractor, e.g. ``pbrl_cnn``).
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
    """

    def __init__(
        self,
        algo: str,
        env_id: str,
        n_envs: int,
        seed: int,
        algo_kwargs: dict[str, Any],
        lr_schedule: str = "constant",
        lr_horizon: int | None = None,
        actor_lr: float | None = None,
        record_steps: int = 5000,
        env_kwargs: dict[str, Any] | None = None,
        device: str = "cpu",
        atari: dict[str, Any] | None = None,
        eval_deterministic: bool = True,
        reward_clip: float | None = None,
        learning_starts: int = 0,
    ) -> None:
        self._init_kwargs: dict[str, Any] = {
            "algo": algo,
            "env_id": env_id,
            "n_envs": n_envs,
            "seed": seed,
            "algo_kwargs": algo_kwargs,
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
        }
        if algo not in _ALGOS:
            raise ValueError(f"follower.name: unknown follower {algo!r} (choose {', '.join(_ALGOS)})")
        self.algo = algo
        self.env_id = env_id
        self.env_kwargs = env_kwargs or {}
        self.eval_deterministic = eval_deterministic
        self.atari: AtariConfig | None = None
        if atari is not None or is_atari(env_id):
            self.atari = AtariConfig.from_dict(dict(atari or {}))
            venv: VecEnv = make_atari_train_env(env_id, n_envs, seed, self.env_kwargs, self.atari)
        else:
            venv = make_train_env(env_id, n_envs, seed, self.env_kwargs)
        if algo == "sac" and not isinstance(venv.action_space, gym.spaces.Box):
            venv.close()
            raise ValueError(f"follower=sac needs a continuous (Box) action space; {env_id} has {venv.action_space}")
        if algo == "dsac" and not isinstance(venv.action_space, gym.spaces.Discrete):
            venv.close()
            raise ValueError(f"follower=dsac needs a Discrete action space; {env_id} has {venv.action_space}")
        self.reward_wrapper: LearnedRewardVecEnv | None = None
        if algo not in _OFF_POLICY:
            self.reward_wrapper = LearnedRewardVecEnv(venv)
            venv = self.reward_wrapper
        self.image_obs = is_image_space(venv.observation_space)
        kwargs = dict(algo_kwargs)
        lr = float(kwargs.pop("learning_rate", 3e-4))
        kwargs["policy_kwargs"] = resolve_policy_kwargs(dict(kwargs.get("policy_kwargs") or {}))
        if algo in _OFF_POLICY:
            if self.image_obs:
                kwargs["replay_buffer_class"] = FrameStackReplayBuffer
                kwargs["replay_buffer_kwargs"] = {"reward_clip": reward_clip}
            else:
                kwargs["replay_buffer_class"] = RelabelingReplayBuffer
        cls = _ALGOS[algo]
        self.model: BaseAlgorithm = cls(
            "CnnPolicy" if self.image_obs else "MlpPolicy",
            venv,
            learning_rate=_schedule(lr, lr_schedule),
            seed=seed,
            device=device,
            verbose=0,
            **kwargs,
        )
        self.model.lr_horizon = lr_horizon  # type: ignore[attr-defined]
        if algo not in _OFF_POLICY:
            self.model.learning_starts = learning_starts  # type: ignore[attr-defined]
        if algo == "sac" and actor_lr is not None:
            self.model.actor_lr_scale = actor_lr / lr  # type: ignore[attr-defined]
        self.model.set_logger(configure(None, []))
        self.observation_space = venv.observation_space
        self.action_space = venv.action_space
        self.recorder = TransitionRecorder(record_steps, n_envs)
        self._callback = _RecorderCallback(self.recorder)
        self._eval_env: gym.Env | None = None
        self._eval_venv: VecEnv | None = None
        self.seed = seed
        self.reward_model: RewardModel | None = None
        self.true_reward_only = False
        self._extra_loss: ExtraPolicyLoss | None = None
        self._extra_hook: Any = None
        self.extra_loss_sum, self.extra_loss_count = 0.0, 0

    # ------------------------------------------------------------------ reward
    @override
    def set_reward_model(self, reward_model: RewardModel) -> None:
        self.reward_model = reward_model
        if self.algo == "dsac":
            self.model.replay_buffer.reward_model = _FlatActionRewards(reward_model)  # type: ignore[attr-defined]
        elif self.algo == "sac":
            buf = self.model.replay_buffer  # type: ignore[attr-defined]
            buf.reward_model = reward_model
            space = self.action_space
            assert isinstance(space, gym.spaces.Box)
            buf.action_low = torch.as_tensor(space.low, dtype=torch.float32, device=self.model.device)
            buf.action_high = torch.as_tensor(space.high, dtype=torch.float32, device=self.model.device)
        else:
            assert self.reward_wrapper is not None
            self.reward_wrapper.reward_fn = torch_reward_fn(reward_model)

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
    @property
    def temperature(self) -> float:
        m = self.model
        if self.algo in _OFF_POLICY:
            if getattr(m, "log_ent_coef", None) is not None:
                return float(torch.exp(m.log_ent_coef.detach()).item())  # type: ignore[attr-defined]
            return float(m.ent_coef_tensor.item())  # type: ignore[attr-defined]
        return float(m.ent_coef)  # type: ignore[attr-defined]

    @override
    def action_dist(self, obs: np.ndarray | torch.Tensor, grad: bool = False) -> torch.distributions.Distribution:
        """``π(·|s)`` in env action units.

        SAC: tanh-squashed and rescaled to ``[low, high]``; discrete SAC: categorical over the actor's logits;
        PPO/A2C: Gaussian (the env clips its samples) or categorical.
        """
        o = torch.as_tensor(obs, device=self.model.device)
        with torch.set_grad_enabled(grad):
            if self.algo == "dsac":
                logits = self.model.policy.action_logits(o)  # type: ignore[operator]
                return torch.distributions.Categorical(logits=logits)
            if self.algo == "sac":
                actor = self.model.actor  # type: ignore[attr-defined]
                mean, log_std, _ = actor.get_action_dist_params(o)
                space = self.action_space
                assert isinstance(space, gym.spaces.Box)
                return squashed_gaussian(mean, log_std.exp(), space.low, space.high)
            dist = self.model.policy.get_distribution(o).distribution  # type: ignore[operator]
            if isinstance(self.action_space, gym.spaces.Box):
                return torch.distributions.Independent(dist, 1)
            return dist

    @override
    def set_extra_policy_loss(self, fn: ExtraPolicyLoss | None) -> None:
        self._extra_loss = fn
        if self._extra_hook is None and fn is not None:
            m = self.model
            opt: Any = m.policy.actor.optimizer if self.algo in _OFF_POLICY else m.policy.optimizer  # type: ignore[union-attr]
            self._extra_hook = opt.register_step_pre_hook(self._apply_extra_loss)

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
    def spawn(self, seed: int) -> SB3Follower:
        return SB3Follower(**{**self._init_kwargs, "seed": seed})

    @override
    def set_reward_model_to_true_reward(self) -> None:
        self.reward_model = None
        self.true_reward_only = True
        if self.algo in _OFF_POLICY:
            self.model.replay_buffer.reward_model = None  # type: ignore[attr-defined]
        else:
            assert self.reward_wrapper is not None
            self.reward_wrapper.reward_fn = None

    # ------------------------------------------------------------------ evaluation
    def _predict(self, obs: np.ndarray) -> np.ndarray:
        action, _ = self.model.predict(obs, deterministic=self.eval_deterministic)
        return action

    @override
    def evaluate(self, episodes: int, seed: int) -> dict[str, float]:
        """True-reward evaluation; a stochastic policy samples from its own torch RNG stream seeded by ``seed``.

        Training's RNG streams are left untouched, so whether (and how often) a run evaluates never changes its
        training (a resumed run evaluates at the end of the part before the stop, the uninterrupted one may not).
        """
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self._evaluate(episodes, seed)

    def _evaluate(self, episodes: int, seed: int) -> dict[str, float]:
        if self.atari is not None:  # whole games, unclipped score, no life-loss termination
            if self._eval_venv is None:
                self._eval_venv = make_atari_eval_env(self.env_id, self.env_kwargs, self.atari, seed)
            return evaluate_atari(self._predict, self._eval_venv, episodes, seed, self.atari.eval_max_steps)
        if self._eval_env is None:
            self._eval_env = make_eval_env(self.env_id, self.env_kwargs)
        env = self._eval_env
        returns, lengths = [], []
        for i in range(episodes):
            obs, _ = env.reset(seed=seed + i)
            done, ret, length = False, 0.0, 0
            while not done:
                obs, reward, terminated, truncated, _ = env.step(self._predict(obs))
                ret += float(reward)
                length += 1
                done = terminated or truncated
            returns.append(ret)
            lengths.append(length)
        return {
            "eval/true_return": float(np.mean(returns)),
            "eval/true_return_std": float(np.std(returns)),
            "eval/episode_length": float(np.mean(lengths)),
        }

    def record_video(self, seed: int, max_steps: int = 1000) -> np.ndarray:
        """Frames ``(T, H, W, 3)`` of one evaluation episode (MuJoCo needs a render backend, e.g. ``MUJOCO_GL=egl``)."""
        if self.atari is not None:
            venv = make_atari_eval_env(self.env_id, self.env_kwargs, self.atari, seed, render=True)
            try:
                vobs = venv.reset()
                images = [venv.get_images()[0]]
                for _ in range(max_steps):
                    vobs, _, dones, _ = venv.step(self._predict(np.asarray(vobs)))
                    images.append(venv.get_images()[0])
                    if dones[0]:
                        break
            finally:
                venv.close()
            return np.stack([np.asarray(f) for f in images])
        env = make_eval_env(self.env_id, self.env_kwargs, render=True)
        try:
            obs, _ = env.reset(seed=seed)
            frames = [env.render()]
            for _ in range(max_steps):
                obs, _, terminated, truncated, _ = env.step(self._predict(obs))
                frames.append(env.render())
                if terminated or truncated:
                    break
        finally:
            env.close()
        return np.stack([np.asarray(f) for f in frames])

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
        m = self.model
        state: dict[str, Any] = {
            "algo": self.algo,
            "params": m.get_parameters(),
            # get_parameters() leaves out SB3's "pytorch variables" (SAC's log_ent_coef): keep them too
            "torch_vars": {name: recursive_getattr(m, name).detach().clone() for name in m._get_torch_save_params()[1]},
            "attrs": {k: getattr(m, k) for k in _STATE_ATTRS if hasattr(m, k)},
            "ep_info_buffer": list(m.ep_info_buffer or []),
            "ep_success_buffer": list(m.ep_success_buffer or []),
            "action_space_rng": m.action_space.np_random.bit_generator.state,
            "recorder": self.recorder.state_dict(),
            # per-layer env state incl. MuJoCo physics: a resumed run continues mid-episode exactly
            "envs": [get_env_state(env) for env in self._vec_env().envs],
        }
        if self.reward_wrapper is not None:
            state["wrapper_prev_obs"] = self.reward_wrapper.prev_obs
        if self.atari is not None:
            state["frame_stack"] = get_vec_stack_state(self._train_venv())
        if self.algo in _OFF_POLICY and isinstance(m.replay_buffer, FrameStackReplayBuffer):  # type: ignore[attr-defined]
            state["replay_buffer"] = m.replay_buffer.state_dict()  # type: ignore[attr-defined]
        elif self.algo in _OFF_POLICY:
            buf = m.replay_buffer  # type: ignore[attr-defined]
            # the reward cache is not trusted after a restore (_fingerprint is dropped): the first sample
            # recomputes it, exactly as the uninterrupted run does after the leader step before the checkpoint
            skip = {"reward_model", "action_low", "action_high", "device", "_fingerprint"}
            state["replay_buffer"] = buffer_state(buf, skip)
        return state

    @override
    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["algo"] != self.algo:
            raise ValueError(f"checkpoint follower is {state['algo']!r}, config asks for {self.algo!r}")
        m = self.model
        m.set_parameters(state["params"], exact_match=True, device=m.device)
        with torch.no_grad():
            for name, value in state["torch_vars"].items():
                recursive_getattr(m, name).copy_(value)  # in place: the optimizer holds this tensor
        for k, v in state["attrs"].items():
            setattr(m, k, v)
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
        if self.reward_wrapper is not None:
            self.reward_wrapper.prev_obs = state.get("wrapper_prev_obs")
        if "frame_stack" in state:
            set_vec_stack_state(self._train_venv(), state["frame_stack"])
        if self.algo in _OFF_POLICY and isinstance(m.replay_buffer, FrameStackReplayBuffer):  # type: ignore[attr-defined]
            m.replay_buffer.load_state_dict(state["replay_buffer"])  # type: ignore[attr-defined]
        elif self.algo in _OFF_POLICY:
            buf = m.replay_buffer  # type: ignore[attr-defined]
            load_buffer_state(buf, state["replay_buffer"])
            buf._fingerprint = None

    @override
    def close(self) -> None:
        self.model.get_env().close()  # type: ignore[union-attr]
        if self._eval_env is not None:
            self._eval_env.close()
        if self._eval_venv is not None:
            self._eval_venv.close()


def make_follower(
    name: str,
    env_id: str,
    n_envs: int,
    seed: int,
    algo_kwargs: dict[str, Any],
    **kwargs: Any,
) -> SB3Follower:
    """Build a follower by config name."""
    return SB3Follower(name, env_id, n_envs, seed, algo_kwargs, **kwargs)
