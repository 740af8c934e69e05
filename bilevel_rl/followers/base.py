"""The `Follower` seam and the transition recorder shared by implementations."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from bilevel_rl.capabilities import Capability
from bilevel_rl.data.trajectories import TrajectoryBatch
from bilevel_rl.reward_models.base import RewardModel

ExtraPolicyLoss = Callable[[], torch.Tensor]
"""A leader-supplied term added to the follower's policy loss at every policy gradient step (PBRL)."""


LeaderStepReward = Callable[[np.ndarray, np.ndarray, float], float]
"""``(obs, action, env_reward) -> r̄`` of one evaluation step: the leader's own reward (``eval/leader_return``)."""


@dataclass(frozen=True)
class RewardMix:
    """What a follower trains on: ``env · r_visible + model · r_φ``.

    ``r_visible`` is the environment's reward as the follower sees it (``env.visible_reward``: dense, delayed or
    sparse), ``r_φ`` the leader's model as :meth:`RewardModel.relabel` returns it. RLHF replaces the environment's
    reward (``env = 0, model = 1``, the default); reward shaping adds the leader's shaping reward to it
    (``env = 1``; ``objective.env_reward_coef`` and ``objective.shaping_coef``).

    Attributes:
        env: coefficient of the visible environment reward.
        model: coefficient of the leader's reward.
    """

    env: float = 0.0
    model: float = 1.0


@dataclass
class Rollouts:
    """Generative-model rollouts: ``N`` trajectories of ``T`` steps started at given observations.

    Attributes:
        obs: ``(N, T, *obs_shape)``.
        actions: ``(N, T, *act_shape)`` in the environment's own action units.
        mask: ``(N, T)`` 1 while the trajectory is alive (0 after a terminal state).
    """

    obs: np.ndarray
    actions: np.ndarray
    mask: np.ndarray


class Follower(ABC):
    """The lower level: an agent that learns a policy on the leader's current reward ``r_φ``.

    Implementations must train on the *current* reward model (off-policy: relabel at replay-sample time;
    on-policy: a reward wrapper), keep the environment's true reward for the teacher and evaluation, and
    record the transitions of their last :meth:`learn` call for :meth:`collect`.

    The abstract methods are the seam every follower provides. The other methods are optional; a follower states
    which ones it implements through its capabilities (:meth:`declared_capabilities` from the config before
    anything is built, :attr:`capabilities` live), and each :class:`~bilevel_rl.capabilities.Capability` it lists
    guarantees:

    * ``TEMPERATURE``: :attr:`temperature` is ``> 0`` (every follower has the property; without the capability
      it may be 0, e.g. PPO/A2C with ``ent_coef = 0``).
    * ``GAMMA``: :attr:`gamma` returns the follower's own discount factor.
    * ``ACTION_DIST``: :meth:`action_dist` with ``grad=False``.
    * ``PARAMETRIC_POLICY``: :meth:`action_dist` with ``grad=True`` is differentiable in the policy parameters.
    * ``EXTRA_POLICY_LOSS``: :meth:`set_extra_policy_loss`.
    * ``SPAWN``: :meth:`spawn`.
    * ``GENERATIVE_MODEL``: :meth:`rollouts_from`.
    * ``TRUE_REWARD``: :meth:`set_reward_model_to_true_reward`.
    * ``VIDEO``: :meth:`record_video`.
    * ``POLICY_LOOKAHEAD``: :meth:`policy_parameters`, :meth:`policy_log_prob` and :meth:`policy_learning_rate`.

    A method whose capability is not listed raises ``NotImplementedError`` with a one-line reason.
    """

    observation_space: gym.spaces.Space
    action_space: gym.spaces.Space

    # ------------------------------------------------------------------ capabilities
    @classmethod
    def declared_capabilities(cls, params: Mapping[str, Any] | None = None) -> frozenset[Capability]:
        """What a follower of this class built from ``params`` can do; used by config validation before building.

        Args:
            params: the ``follower.*`` config keys (e.g. ``{"name": "ppo", "algo_kwargs": {"ent_coef": 0.0}}``);
                ``None``: the class defaults.

        The base declares nothing; subclasses list exactly what they implement (see the class docstring).
        """
        return frozenset()

    @property
    def config_params(self) -> Mapping[str, Any] | None:
        """The ``follower.*`` config keys this follower was built from (``None``: the class defaults)."""
        return None

    @property
    def capabilities(self) -> frozenset[Capability]:
        """What this follower can do now; by default :meth:`declared_capabilities` of :attr:`config_params`."""
        return type(self).declared_capabilities(self.config_params)

    # ------------------------------------------------------------------ seam
    @abstractmethod
    def set_reward_model(self, reward_model: RewardModel, mix: RewardMix | None = None) -> None:
        """Train on ``mix.env · r_visible + mix.model · reward_model`` from now on (``None``: ``RewardMix()``)."""

    @property
    def reward_mix(self) -> RewardMix:
        """The coefficients of the reward the follower trains on (:meth:`set_reward_model`)."""
        return getattr(self, "_reward_mix", RewardMix())

    @abstractmethod
    def learn(self, steps: int) -> dict[str, float]:
        """Take ``steps`` environment steps of learning; return ``follower/...`` metrics."""

    @abstractmethod
    def collect(self, steps: int) -> TrajectoryBatch:
        """The on-policy transitions of the most recent :meth:`learn` phase (at most ``steps`` per env).

        No extra environment steps are taken (as in the SoBiRL code, which pairs the most recent trajectories).
        """

    @abstractmethod
    def evaluate(self, episodes: int, seed: int, leader_reward: LeaderStepReward | None = None) -> dict[str, float]:
        """Deterministic episodes on the environment's own reward; returns ``eval/...`` metrics.

        With ``leader_reward`` the episodes' sums of it are reported too, as ``eval/leader_return``.
        """

    @property
    @abstractmethod
    def num_timesteps(self) -> int:
        """Environment steps taken so far (all envs together)."""

    @property
    @abstractmethod
    def num_envs(self) -> int:
        """Number of parallel environments."""

    @property
    @abstractmethod
    def temperature(self) -> float:
        """Entropy temperature: SAC α, the entropy coefficient of PPO/A2C, or τ of a tabular follower."""

    @property
    def gamma(self) -> float:
        """The follower's own discount factor (``Capability.GAMMA``)."""
        raise NotImplementedError(
            f"{type(self).__name__} has no discount factor of its own (Capability.GAMMA); configure the rule's gamma"
        )

    def set_reward_model_to_true_reward(self) -> None:
        """Train on the environment's own reward (the SAC-on-true-reward baseline); no reward model is used."""
        raise NotImplementedError(f"{type(self).__name__} cannot train on the true reward")

    def action_dist(self, obs: np.ndarray | torch.Tensor, grad: bool = False) -> torch.distributions.Distribution:
        """The current policy ``π(·|s)`` at a batch of observations ``(B, *obs_shape)``.

        The distribution is over the environment's own action units, i.e. the units of
        ``TrajectoryBatch.actions`` and of the reward model's input: ``Categorical`` for discrete actions, a
        ``(B,)``-batched distribution with event shape ``act_shape`` for Box actions (SAC: tanh-squashed and
        rescaled to ``[low, high]``). ``log_prob``, ``sample`` and (discrete) ``probs`` are what rules use.

        Args:
            obs: observations.
            grad: build it with gradients w.r.t. the policy parameters (for extra policy losses).
        """
        raise NotImplementedError(f"{type(self).__name__} does not expose its action distribution")

    def set_extra_policy_loss(self, fn: ExtraPolicyLoss | None) -> None:
        """Add ``fn()`` to the policy loss at every policy gradient step from now on (``None`` removes it).

        ``fn`` must build its value through :meth:`action_dist` with ``grad=True``; only the policy parameters
        receive its gradient. PBRL puts ``(1/λ)·(upper loss)`` here (docs/theory/penalty_methods.md §1.5).
        """
        raise NotImplementedError(f"{type(self).__name__} does not support an extra policy loss")

    def set_leader_source(self, source: Callable[[], np.ndarray] | None) -> None:
        """Make the follower's environments read the leader's parameters from ``source`` before every step.

        Only environments that define ``set_leader_parameters`` read them (:mod:`bilevel_rl.envs.leader_params`);
        incentive design (leader parameters that enter the dynamics) needs a follower that implements this.
        """
        raise NotImplementedError(f"{type(self).__name__} cannot pass leader parameters to its environments")

    def soft_state_values(self, obs: np.ndarray) -> np.ndarray:
        """``V_f(s) = λ log Σ_a exp(Q(s, a)/λ)``, the follower's soft value at a batch of observations ``(B,)``.

        HPGD's transition term (``∂_x Q_f`` through ``∇_x log P_x``, Thm. 1) weighs each transition by it.
        """
        raise NotImplementedError(f"{type(self).__name__} exposes no soft state value")

    def spawn(self, seed: int) -> Follower:
        """A fresh follower of the same configuration with its own environments and seed.

        Rules that need a best-response policy distinct from the follower (PBRL, Hessian-free) train one.
        """
        raise NotImplementedError(f"{type(self).__name__} cannot spawn a second follower")

    def rollouts_from(
        self,
        obs: np.ndarray,
        first_actions: np.ndarray | None,
        horizon: int,
        rng: np.random.Generator,
    ) -> Rollouts:
        """On-policy rollouts of ``horizon`` steps from given observations (a generative model).

        Args:
            obs: ``(N, *obs_shape)`` start observations (the simulator is reset to the state behind each).
            first_actions: ``(N, *act_shape)`` actions forced at step 0 (``None``: drawn from the policy).
            horizon: steps per rollout.
            rng: randomness of the rollouts.

        Only simulators that can be reset to an arbitrary state support this (tabular followers); the
        untruncated SoBiRL eq. 14 and HPGD Alg. 2 estimators need it.
        """
        raise NotImplementedError(
            f"{type(self).__name__} has no generative model (reset to an arbitrary state); "
            "use an estimator that needs only on-policy trajectories"
        )

    def policy_parameters(self) -> dict[str, torch.Tensor]:
        """The policy's named parameters (live tensors; a lookahead differentiates through copies of them)."""
        raise NotImplementedError(f"{type(self).__name__} does not expose a functional policy")

    def policy_log_prob(
        self, obs: torch.Tensor, actions: torch.Tensor, params: dict[str, torch.Tensor]
    ) -> torch.Tensor:
        """``log π_θ(a|s)`` ``(N,)`` with the policy's parameters replaced by ``params`` (differentiable in them)."""
        raise NotImplementedError(f"{type(self).__name__} does not expose a functional policy")

    def policy_learning_rate(self) -> float:
        """The step size of the follower's policy update now."""
        raise NotImplementedError(f"{type(self).__name__} does not expose its learning rate")

    def record_video(self, seed: int, max_steps: int = 1000) -> np.ndarray:
        """Frames ``(T, H, W, 3)`` of one evaluation episode of at most ``max_steps`` steps."""
        raise NotImplementedError(f"{type(self).__name__} cannot record a video")

    @abstractmethod
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue exactly: networks, optimizers, replay buffer, env and RNG states.

        One self-contained nested dict (tensors, numpy arrays and plain python values may sit anywhere in it);
        the caller stores it as it is and hands the same dict back to :meth:`load_state_dict`.
        """

    @abstractmethod
    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore from :meth:`state_dict`."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release environments."""


class TransitionRecorder:
    """Ring buffer of the last ``capacity`` time steps of a vectorised environment.

    Tracks episode starts and the within-episode time index itself, so it is independent of which algorithm
    drives the environment.
    """

    def __init__(self, capacity: int, num_envs: int) -> None:
        if capacity <= 0:
            raise ValueError("recorder capacity must be positive")
        self.capacity = capacity
        self.num_envs = num_envs
        self._buf: dict[str, np.ndarray] = {}
        self.pos = 0
        self.filled = 0
        self.next_start = np.ones(num_envs, dtype=bool)
        self.t_in_episode = np.zeros(num_envs, dtype=np.int64)

    def add(
        self,
        obs: np.ndarray,
        actions: np.ndarray,
        true_rewards: np.ndarray,
        dones: np.ndarray,
        truncated: np.ndarray,
    ) -> None:
        """Record one vectorised step (``obs`` is the observation *before* the step)."""
        row = {
            "obs": obs,
            "actions": actions,
            "true_rewards": true_rewards.astype(np.float32),
            "dones": dones.astype(bool),
            "terminated": dones.astype(bool) & ~truncated.astype(bool),
            "episode_starts": self.next_start.copy(),
            "timesteps": self.t_in_episode.copy(),
        }
        if not self._buf:
            for k, v in row.items():
                self._buf[k] = np.zeros((self.capacity, *np.shape(v)), dtype=np.asarray(v).dtype)
        for k, v in row.items():
            self._buf[k][self.pos] = v
        self.pos = (self.pos + 1) % self.capacity
        self.filled = min(self.filled + 1, self.capacity)
        done = dones.astype(bool)
        self.t_in_episode = np.where(done, 0, self.t_in_episode + 1)
        self.next_start = done.copy()

    def batch(self, steps: int) -> TrajectoryBatch:
        """The last ``min(steps, filled)`` steps in time order."""
        n = min(steps, self.filled)
        if n == 0:
            raise RuntimeError("no transitions recorded yet: call learn() before collect()")
        idx = (self.pos - n + np.arange(n)) % self.capacity
        return TrajectoryBatch(**{k: v[idx] for k, v in self._buf.items()})

    def state_dict(self) -> dict[str, Any]:
        """Recorder state for checkpoints."""
        return {
            "buf": {k: v.copy() for k, v in self._buf.items()},
            "pos": self.pos,
            "filled": self.filled,
            "next_start": self.next_start.copy(),
            "t_in_episode": self.t_in_episode.copy(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore from :meth:`state_dict`."""
        self._buf = {k: np.asarray(v).copy() for k, v in state["buf"].items()}
        self.pos, self.filled = int(state["pos"]), int(state["filled"])
        self.next_start = np.asarray(state["next_start"]).copy()
        self.t_in_episode = np.asarray(state["t_in_episode"]).copy()
