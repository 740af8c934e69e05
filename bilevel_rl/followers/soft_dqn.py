"""Regularised (soft) DQN: SB3 DQN with the soft Bellman target and a Boltzmann policy at temperature λ.

The follower of the HPGD paper's tax-design households (Thoma et al. 2024, §5.2 and App. F.3: "regularised deep
Q-learning"). With temperature λ > 0 the critic regresses onto the entropy-regularised (soft) Bellman target

    y = r + γ (1 − d) · λ · logsumexp_a' (Q_target(s', a') / λ),

whose fixed point is the soft-optimal ``Q*`` of SoBiRL eqs. 5–7 / HPGD eq. 2 with τ = λ
(:func:`bilevel_rl.tabular.core.soft_mdp.soft_bellman`), and it acts with the Boltzmann policy
``π(a|s) = softmax(Q(s, ·)/λ)``, as the HPGD authors' code samples ``Categorical(logits=q / reg_lambda)``. ``d`` is 1
only for true terminations: SB3's replay buffer (``handle_timeout_termination``) stores time-limit truncations as
non-terminal, so the target bootstraps through them. As λ → 0 the target tends to DQN's ``max_a' Q_target``.

We subclass SB3's :class:`~stable_baselines3.DQN` (rollouts, replay buffers, target updates every
``target_update_interval`` env steps with Polyak coefficient ``tau``, gradient clipping, save/load are SB3's own) and
change only the target of ``train`` and the action selection: ε-greedy is off (ε = 0; the Boltzmann sampling is the
exploration, and SB3's uniform random actions before ``learning_starts`` are kept), non-deterministic actions are
sampled from ``softmax(Q/λ)`` with torch's global stream, deterministic ones are ``argmax Q``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
import torch as th
import torch.nn.functional as F
from stable_baselines3 import DQN
from stable_baselines3.common.buffers import ReplayBuffer
from stable_baselines3.common.policies import BasePolicy
from stable_baselines3.common.type_aliases import GymEnv, PyTorchObs, Schedule
from stable_baselines3.dqn.policies import CnnPolicy, DQNPolicy
from typing_extensions import override

from bilevel_rl.capabilities import Capability
from bilevel_rl.followers.frame_buffer import SupportsRelabel
from bilevel_rl.followers.off_policy import FlatActionRewards, OffPolicyFollower
from bilevel_rl.followers.sb3_base import SB3_CAPABILITIES
from bilevel_rl.followers.sb3_parts import GlobalProgressMixin
from bilevel_rl.reward_models.base import RewardModel

LOSSES = ("huber", "mse")
"""The regression losses of :class:`SoftDQN` (``huber``: SB3 DQN's ``smooth_l1_loss``)."""


def soft_value(q: th.Tensor, temperature: float) -> th.Tensor:
    """``V(s) = λ · logsumexp_a(Q(s, a)/λ)`` over the last dimension (SoBiRL eq. 9 with τ = λ)."""
    return temperature * th.logsumexp(q / temperature, dim=-1)


def _boltzmann_predict(q: th.Tensor, temperature: float, deterministic: bool) -> th.Tensor:
    """``argmax_a Q`` (deterministic) or a sample of ``Categorical(logits=Q/λ)``, shape ``(B,)``."""
    if deterministic:
        return q.argmax(dim=1).reshape(-1)
    return th.distributions.Categorical(logits=q / temperature).sample()


class SoftQPolicy(DQNPolicy):
    """SB3's DQN policy (Q-network and target copy) acting with ``softmax(Q/λ)``; :class:`SoftDQN` sets λ."""

    temperature: float = 1.0

    @override
    def _predict(self, obs: PyTorchObs, deterministic: bool = True) -> th.Tensor:
        return _boltzmann_predict(self.q_net(obs), self.temperature, deterministic)


class CnnSoftQPolicy(CnnPolicy):
    """SB3's DQN ``CnnPolicy`` (Nature CNN) acting with ``softmax(Q/λ)``; :class:`SoftDQN` sets λ."""

    temperature: float = 1.0

    @override
    def _predict(self, obs: PyTorchObs, deterministic: bool = True) -> th.Tensor:
        return _boltzmann_predict(self.q_net(obs), self.temperature, deterministic)


class SoftDQN(GlobalProgressMixin, DQN):
    """Regularised (soft) DQN at a fixed temperature λ (module docstring), with run-level learning-rate progress.

    Per gradient step, as SB3 ``DQN.train``: sample a batch, regress ``Q(s, a)`` onto the soft target
    (:meth:`soft_target`, from the target network) with the Huber loss (SB3's default) or the MSE, clip the
    gradient norm to ``max_grad_norm``, step the Q-network's optimizer (its step-pre-hooks, e.g. an extra policy
    loss, run after the clipping).

    Args:
        policy: ``"MlpPolicy"``, ``"CnnPolicy"`` or a :class:`SoftQPolicy` subclass.
        env: environment with a ``Discrete`` action space.
        learning_rate: lr (float or schedule of the remaining progress).
        buffer_size: replay capacity.
        learning_starts: env steps of uniform random actions before learning.
        batch_size: minibatch size.
        tau: Polyak coefficient of the target update (1.0 = hard copy).
        gamma: discount.
        train_freq: update every ``train_freq`` env steps (or ``(n, "episode")``).
        gradient_steps: gradient steps per update (-1: as many as env steps collected).
        target_update_interval: env steps between target updates.
        temperature: λ > 0, the entropy temperature of the target and of the Boltzmann policy.
        loss: ``"huber"`` (SB3 DQN's ``smooth_l1_loss``) or ``"mse"``.
        max_grad_norm: gradient-norm clipping.
        replay_buffer_class: replay buffer class (e.g. a reward-relabelling buffer).
        replay_buffer_kwargs: its keyword arguments.
        optimize_memory_usage: SB3's memory-efficient replay buffer.
        stats_window_size: episodes in SB3's rollout statistics.
        tensorboard_log: tensorboard directory.
        policy_kwargs: keyword arguments of the policy (``net_arch``, ``optimizer_class``, ...).
        verbose: SB3 verbosity.
        seed: random seed.
        device: torch device.

    Raises:
        ValueError: a temperature ≤ 0 or an unknown loss (one line).
    """

    policy_aliases: ClassVar[dict[str, type[BasePolicy]]] = {
        "MlpPolicy": SoftQPolicy,
        "CnnPolicy": CnnSoftQPolicy,
    }
    policy: SoftQPolicy

    def __init__(
        self,
        policy: str | type[SoftQPolicy],
        env: GymEnv | str,
        learning_rate: float | Schedule = 1e-4,
        buffer_size: int = 1_000_000,
        learning_starts: int = 100,
        batch_size: int = 32,
        tau: float = 1.0,
        gamma: float = 0.99,
        train_freq: int | tuple[int, str] = 4,
        gradient_steps: int = 1,
        target_update_interval: int = 10_000,
        temperature: float = 1.0,
        loss: str = "huber",
        max_grad_norm: float = 10,
        replay_buffer_class: type[ReplayBuffer] | None = None,
        replay_buffer_kwargs: dict[str, Any] | None = None,
        optimize_memory_usage: bool = False,
        stats_window_size: int = 100,
        tensorboard_log: str | None = None,
        policy_kwargs: dict[str, Any] | None = None,
        verbose: int = 0,
        seed: int | None = None,
        device: th.device | str = "auto",
        _init_setup_model: bool = True,
    ) -> None:
        if not float(temperature) > 0:
            raise ValueError(f"SoftDQN: temperature must be > 0, got {temperature}")
        if loss not in LOSSES:
            raise ValueError(f"SoftDQN: loss must be one of {', '.join(LOSSES)}, got {loss!r}")
        super().__init__(
            policy,
            env,
            learning_rate=learning_rate,
            buffer_size=buffer_size,
            learning_starts=learning_starts,
            batch_size=batch_size,
            tau=tau,
            gamma=gamma,
            train_freq=train_freq,
            gradient_steps=gradient_steps,
            replay_buffer_class=replay_buffer_class,
            replay_buffer_kwargs=replay_buffer_kwargs,
            optimize_memory_usage=optimize_memory_usage,
            n_steps=1,
            target_update_interval=target_update_interval,
            exploration_fraction=1.0,  # ε ≡ 0: Boltzmann sampling explores
            exploration_initial_eps=0.0,
            exploration_final_eps=0.0,
            max_grad_norm=max_grad_norm,
            stats_window_size=stats_window_size,
            tensorboard_log=tensorboard_log,
            policy_kwargs=policy_kwargs,
            verbose=verbose,
            seed=seed,
            device=device,
            _init_setup_model=False,
        )
        self._temperature = float(temperature)
        self.loss = loss
        if _init_setup_model:
            self._setup_model()

    @property
    def temperature(self) -> float:
        """λ; setting it also sets the policy's sampling temperature."""
        return self._temperature

    @temperature.setter
    def temperature(self, value: float) -> None:
        if not float(value) > 0:
            raise ValueError(f"SoftDQN: temperature must be > 0, got {value}")
        self._temperature = float(value)
        if getattr(self, "policy", None) is not None:
            self.policy.temperature = self._temperature

    @override
    def _setup_model(self) -> None:
        super()._setup_model()
        self.policy.temperature = self._temperature

    def soft_target(
        self, rewards: th.Tensor, next_observations: th.Tensor, dones: th.Tensor, discounts: th.Tensor | float
    ) -> th.Tensor:
        """``r + (1 − d) · discount · λ · logsumexp(Q_target(s', ·)/λ)`` as a ``(B, 1)`` tensor (no graph).

        Args:
            rewards: ``(B, 1)`` (``(B,)`` is reshaped).
            next_observations: ``(B, *obs_shape)``.
            dones: ``(B, 1)``, 1 for a true termination.
            discounts: γ (or per-sample discounts ``(B, 1)``).
        """
        with th.no_grad():
            next_v = soft_value(self.q_net_target(next_observations), self._temperature).reshape(-1, 1)
            return rewards.reshape(-1, 1) + (1 - dones.reshape(-1, 1)) * discounts * next_v

    @override
    def train(self, gradient_steps: int, batch_size: int = 100) -> None:
        self.policy.set_training_mode(True)
        self._update_learning_rate(self.policy.optimizer)

        losses, entropies = [], []
        for _ in range(gradient_steps):
            assert self.replay_buffer is not None
            replay_data = self.replay_buffer.sample(batch_size, env=self._vec_normalize_env)
            discounts = replay_data.discounts if replay_data.discounts is not None else self.gamma
            target_q_values = self.soft_target(
                replay_data.rewards, replay_data.next_observations, replay_data.dones, discounts
            )
            q_all = self.q_net(replay_data.observations)
            current_q_values = th.gather(q_all, dim=1, index=replay_data.actions.long())
            if self.loss == "mse":
                loss = F.mse_loss(current_q_values, target_q_values)
            else:
                loss = F.smooth_l1_loss(current_q_values, target_q_values)
            losses.append(loss.item())

            self.policy.optimizer.zero_grad()
            loss.backward()
            th.nn.utils.clip_grad_norm_(self.policy.parameters(), self.max_grad_norm)
            self.policy.optimizer.step()  # step-pre-hooks (extra policy losses) run here
            with th.no_grad():
                log_pi = F.log_softmax(q_all / self._temperature, dim=1)
                entropies.append(float(-(log_pi.exp() * log_pi).sum(dim=1).mean()))

        self._n_updates += gradient_steps
        self.logger.record("train/n_updates", self._n_updates, exclude="tensorboard")
        self.logger.record("train/loss", np.mean(losses))
        self.logger.record("train/entropy", np.mean(entropies))

    @override
    def predict(
        self,
        observation: np.ndarray | dict[str, np.ndarray],
        state: tuple[np.ndarray, ...] | None = None,
        episode_start: np.ndarray | None = None,
        deterministic: bool = False,
    ) -> tuple[np.ndarray, tuple[np.ndarray, ...] | None]:
        """The policy's action: ``argmax Q`` or a ``softmax(Q/λ)`` sample; no ε-greedy (nor its numpy draw)."""
        return self.policy.predict(observation, state, episode_start, deterministic)


class SoftDQNFollower(OffPolicyFollower):
    """Soft DQN (:class:`SoftDQN`) on a Discrete action space; its temperature is λ (``algo_kwargs.temperature``)."""

    name = "soft_dqn"
    algorithm = SoftDQN
    algorithm_name = "SoftDQN"
    action_spaces = (gym.spaces.Discrete,)
    action_space_need = "a Discrete action space"
    STATE_ATTRS: ClassVar[tuple[str, ...]] = (
        *OffPolicyFollower.STATE_ATTRS,
        "_n_calls",  # env-step calls since the start: when the target network is next updated
        "exploration_rate",  # always 0 (kept so that the state is SB3 DQN's whole state)
    )

    @override
    @classmethod
    def declared_capabilities(cls, params: Mapping[str, Any] | None = None) -> frozenset[Capability]:
        """Every SB3 capability and ``TEMPERATURE``: λ > 0 always (a temperature ≤ 0 is refused)."""
        return SB3_CAPABILITIES | {Capability.TEMPERATURE}

    @override
    def _relabeler(self, reward_model: RewardModel) -> SupportsRelabel:
        return FlatActionRewards(reward_model)

    @override
    def _policy_optimizer(self) -> th.optim.Optimizer:
        """The Q-network's optimizer (the policy is ``softmax(Q/λ)``)."""
        return self.model.policy.optimizer

    @override
    @property
    def temperature(self) -> float:
        """λ."""
        return float(self.model.temperature)  # type: ignore[attr-defined]

    @override
    def action_dist(self, obs: np.ndarray | th.Tensor, grad: bool = False) -> th.distributions.Distribution:
        """``Categorical(logits=Q(s, ·)/λ)``; with ``grad`` differentiable in the Q-network's parameters."""
        o = th.as_tensor(obs, device=self.model.device)
        with th.set_grad_enabled(grad):
            q = self.model.q_net(o)  # type: ignore[attr-defined]
            return th.distributions.Categorical(logits=q / self.temperature)

    @override
    def soft_state_values(self, obs: np.ndarray) -> np.ndarray:
        """``λ logsumexp(Q(s, ·)/λ)`` of the online Q-network (the soft value the Boltzmann policy is optimal for)."""
        lam = self.temperature
        with th.no_grad():
            q = self.model.q_net(th.as_tensor(obs, device=self.model.device))  # type: ignore[attr-defined]
            return (lam * th.logsumexp(q / lam, dim=-1)).double().cpu().numpy()
