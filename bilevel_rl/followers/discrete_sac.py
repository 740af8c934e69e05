"""Discrete-action SAC (Christodoulou 2019) as an SB3 off-policy algorithm.

This follows the lower-level solver of the SoBiRL code (SoBiRL App. J.2; ``sac_subroutine.py``,
"adapted from cleanrl sac_atari.py"): exact expectations over the finite action set instead of sampled actions,
two critics with separate encoders and target copies, automatic temperature tuning towards a target entropy of
``0.89 * log|A|``, hard target copies every 8000 env steps, one update every 4 env steps after 20 000 random
steps, Adam with ``eps=1e-4`` for actor, critics and temperature.

We subclass SB3's :class:`~stable_baselines3.common.off_policy_algorithm.OffPolicyAlgorithm` and
:class:`~stable_baselines3.common.policies.BasePolicy`, so rollouts, replay buffers (including a buffer that
relabels rewards at sample time), callbacks, logging, ``save``/``load`` and ``predict`` are SB3's own.
"""

from __future__ import annotations

from typing import Any, ClassVar, TypeVar

import numpy as np
import torch as th
import torch.nn.functional as F
from gymnasium import spaces
from stable_baselines3.common.buffers import ReplayBuffer
from stable_baselines3.common.off_policy_algorithm import OffPolicyAlgorithm
from stable_baselines3.common.policies import BaseModel, BasePolicy
from stable_baselines3.common.preprocessing import preprocess_obs
from stable_baselines3.common.torch_layers import (
    BaseFeaturesExtractor,
    FlattenExtractor,
    NatureCNN,
    create_mlp,
)
from stable_baselines3.common.type_aliases import GymEnv, MaybeCallback, PyTorchObs, Schedule
from stable_baselines3.common.utils import polyak_update
from torch import nn
from typing_extensions import override

SelfDiscreteSAC = TypeVar("SelfDiscreteSAC", bound="DiscreteSAC")

# SoBiRL code (cleanrl sac_atari.py): Adam(..., eps=1e-4) for the actor, the critics and log(alpha).
DEFAULT_OPTIMIZER_KWARGS: dict[str, Any] = {"eps": 1e-4}


def _refuse_non_discrete(action_space: spaces.Space) -> None:
    if not isinstance(action_space, spaces.Discrete):
        raise ValueError(f"DiscreteSAC needs a Discrete action space, got {action_space}")


def _kaiming_init(module: nn.Module) -> None:
    """Kaiming-normal weights and zero biases on every conv/linear layer (cleanrl ``layer_init``, SoBiRL code)."""
    for layer in module.modules():
        if isinstance(layer, (nn.Linear, nn.Conv2d)):
            nn.init.kaiming_normal_(layer.weight)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)


def _head(in_dim: int, n_actions: int, net_arch: list[int], activation_fn: type[nn.Module]) -> nn.Sequential:
    return nn.Sequential(*create_mlp(in_dim, n_actions, net_arch, activation_fn))


class DiscreteActor(BaseModel):
    """Features extractor -> MLP -> one logit per action.

    Args:
        observation_space: observation space.
        action_space: a ``Discrete`` action space.
        features_extractor: this network's own features extractor.
        features_dim: output size of ``features_extractor``.
        net_arch: hidden sizes of the MLP between the features and the logits.
        activation_fn: activation of that MLP.
        normalize_images: divide image observations by 255 (once, here).
    """

    def __init__(
        self,
        observation_space: spaces.Space,
        action_space: spaces.Discrete,
        features_extractor: BaseFeaturesExtractor,
        features_dim: int,
        net_arch: list[int],
        activation_fn: type[nn.Module] = nn.ReLU,
        normalize_images: bool = True,
    ) -> None:
        super().__init__(
            observation_space, action_space, features_extractor=features_extractor, normalize_images=normalize_images
        )
        self.logits_net = _head(features_dim, int(action_space.n), net_arch, activation_fn)

    @override
    def forward(self, obs: th.Tensor) -> th.Tensor:
        """Logits ``(B, |A|)``; ``obs`` may be raw (uint8 images are scaled by 1/255 here)."""
        assert self.features_extractor is not None
        return self.logits_net(self.extract_features(obs, self.features_extractor))


class DiscreteCritic(BaseModel):
    """``n_critics`` soft-Q networks, each with its OWN features extractor, each giving ``|A|`` Q-values.

    SB3's ``ContinuousCritic`` shares one extractor between its Q-networks; the SoBiRL code (cleanrl) gives every
    ``SoftQNetwork`` its own CNN, so we build one extractor per Q-network.

    Args:
        observation_space: observation space.
        action_space: a ``Discrete`` action space.
        features_extractors: one features extractor per Q-network.
        features_dim: output size of each extractor.
        net_arch: hidden sizes of each Q-head.
        activation_fn: activation of the heads.
        normalize_images: divide image observations by 255 (once, here).
    """

    def __init__(
        self,
        observation_space: spaces.Space,
        action_space: spaces.Discrete,
        features_extractors: list[BaseFeaturesExtractor],
        features_dim: int,
        net_arch: list[int],
        activation_fn: type[nn.Module] = nn.ReLU,
        normalize_images: bool = True,
    ) -> None:
        super().__init__(observation_space, action_space, normalize_images=normalize_images)
        self.q_networks = nn.ModuleList(
            nn.Sequential(extractor, _head(features_dim, int(action_space.n), net_arch, activation_fn))
            for extractor in features_extractors
        )

    @override
    def forward(self, obs: th.Tensor) -> tuple[th.Tensor, ...]:
        """One ``(B, |A|)`` tensor of Q-values per critic."""
        features_in = preprocess_obs(obs, self.observation_space, normalize_images=self.normalize_images)
        assert isinstance(features_in, th.Tensor)
        return tuple(q_net(features_in) for q_net in self.q_networks)


class DiscreteSACPolicy(BasePolicy):
    """Categorical actor, two critics with separate extractors, and their target copies.

    Args:
        observation_space: observation space.
        action_space: a ``Discrete`` action space (others raise ``ValueError``).
        lr_schedule: learning-rate schedule (initial value used to build the optimizers).
        net_arch: hidden sizes of the MLP after each features extractor (default ``[256, 256]``).
        activation_fn: activation of those MLPs.
        features_extractor_class: ``FlattenExtractor`` (vectors) or ``NatureCNN`` (images).
        features_extractor_kwargs: keyword arguments of the extractor.
        normalize_images: divide uint8 image observations by 255 inside the networks.
        optimizer_class: optimizer of actor and critics (the temperature uses the same).
        optimizer_kwargs: its keyword arguments (default ``{"eps": 1e-4}``, SoBiRL code).
        n_critics: number of Q-networks (2).
    """

    actor: DiscreteActor
    critic: DiscreteCritic
    critic_target: DiscreteCritic

    def __init__(
        self,
        observation_space: spaces.Space,
        action_space: spaces.Space,
        lr_schedule: Schedule,
        net_arch: list[int] | None = None,
        activation_fn: type[nn.Module] = nn.ReLU,
        features_extractor_class: type[BaseFeaturesExtractor] = FlattenExtractor,
        features_extractor_kwargs: dict[str, Any] | None = None,
        normalize_images: bool = True,
        optimizer_class: type[th.optim.Optimizer] = th.optim.Adam,
        optimizer_kwargs: dict[str, Any] | None = None,
        n_critics: int = 2,
    ) -> None:
        _refuse_non_discrete(action_space)
        if optimizer_kwargs is None:
            optimizer_kwargs = dict(DEFAULT_OPTIMIZER_KWARGS)
        super().__init__(
            observation_space,
            action_space,
            features_extractor_class,
            features_extractor_kwargs,
            optimizer_class=optimizer_class,
            optimizer_kwargs=optimizer_kwargs,
            normalize_images=normalize_images,
        )
        self.net_arch = [256, 256] if net_arch is None else list(net_arch)
        self.activation_fn = activation_fn
        self.n_critics = n_critics
        self._build(lr_schedule)

    def _build(self, lr_schedule: Schedule) -> None:
        assert isinstance(self.action_space, spaces.Discrete)
        extractor = self.make_features_extractor()
        self.actor = DiscreteActor(
            self.observation_space,
            self.action_space,
            extractor,
            extractor.features_dim,
            self.net_arch,
            self.activation_fn,
            self.normalize_images,
        )
        self.critic = self._make_critic()
        self.critic_target = self._make_critic()
        _kaiming_init(self.actor)
        _kaiming_init(self.critic)
        self.critic_target.load_state_dict(self.critic.state_dict())
        self.critic_target.set_training_mode(False)
        self.critic_target.requires_grad_(False)
        lr = lr_schedule(1)
        self.actor.optimizer = self.optimizer_class(self.actor.parameters(), lr=lr, **self.optimizer_kwargs)  # type: ignore[call-arg]
        self.critic.optimizer = self.optimizer_class(self.critic.parameters(), lr=lr, **self.optimizer_kwargs)  # type: ignore[call-arg]

    def _make_critic(self) -> DiscreteCritic:
        assert isinstance(self.action_space, spaces.Discrete)
        extractors = [self.make_features_extractor() for _ in range(self.n_critics)]
        return DiscreteCritic(
            self.observation_space,
            self.action_space,
            extractors,
            extractors[0].features_dim,
            self.net_arch,
            self.activation_fn,
            self.normalize_images,
        )

    @override
    def _get_constructor_parameters(self) -> dict[str, Any]:
        data = super()._get_constructor_parameters()
        data.update(
            {
                "net_arch": self.net_arch,
                "activation_fn": self.activation_fn,
                "n_critics": self.n_critics,
                "lr_schedule": self._dummy_schedule,
                "optimizer_class": self.optimizer_class,
                "optimizer_kwargs": self.optimizer_kwargs,
                "features_extractor_class": self.features_extractor_class,
                "features_extractor_kwargs": self.features_extractor_kwargs,
            }
        )
        return data

    def action_logits(self, obs: th.Tensor) -> th.Tensor:
        """Actor logits ``(B, |A|)`` for a batch of raw observations (uint8 images OK, scaled once inside).

        Gradients flow to the actor unless the caller uses ``torch.no_grad()``; wrap the result in
        ``torch.distributions.Categorical(logits=...)`` to get pi(.|s).
        """
        return self.actor(obs)

    @override
    def forward(self, obs: th.Tensor, deterministic: bool = False) -> th.Tensor:
        return self._predict(obs, deterministic=deterministic)

    @override
    def _predict(self, observation: PyTorchObs, deterministic: bool = False) -> th.Tensor:
        assert isinstance(observation, th.Tensor)
        logits = self.actor(observation)
        if deterministic:
            return logits.argmax(dim=1)
        return th.distributions.Categorical(logits=logits).sample()

    @override
    def set_training_mode(self, mode: bool) -> None:
        """Train/eval mode of actor and critics; the target critics always stay in eval mode.

        The recursive ``Module.train`` walk is skipped when the mode is already set (it cost ~15% of a CartPole
        update on one CPU thread).
        """
        if self.training != mode or self.actor.training != mode or self.critic.training != mode:
            self.actor.set_training_mode(mode)
            self.critic.set_training_mode(mode)
            self.training = mode


class CnnDiscreteSACPolicy(DiscreteSACPolicy):
    """Nature-CNN per network (Conv 8/4-4/2-3/1, FC512, ReLU) then a linear head (SoBiRL code / cleanrl)."""

    def __init__(
        self,
        observation_space: spaces.Space,
        action_space: spaces.Space,
        lr_schedule: Schedule,
        net_arch: list[int] | None = None,
        activation_fn: type[nn.Module] = nn.ReLU,
        features_extractor_class: type[BaseFeaturesExtractor] = NatureCNN,
        features_extractor_kwargs: dict[str, Any] | None = None,
        normalize_images: bool = True,
        optimizer_class: type[th.optim.Optimizer] = th.optim.Adam,
        optimizer_kwargs: dict[str, Any] | None = None,
        n_critics: int = 2,
    ) -> None:
        super().__init__(
            observation_space,
            action_space,
            lr_schedule,
            [] if net_arch is None else net_arch,
            activation_fn,
            features_extractor_class,
            features_extractor_kwargs,
            normalize_images,
            optimizer_class,
            optimizer_kwargs,
            n_critics,
        )


class DiscreteSAC(OffPolicyAlgorithm):
    """Discrete SAC (Christodoulou 2019) with the SoBiRL code's defaults (SoBiRL App. J.2).

    Updates, per gradient step, in the cleanrl/SoBiRL order (critic, actor, temperature), with
    ``pi = softmax(logits)`` and ``alpha = exp(log_alpha)`` taken before the step:

    * critic target ``y = r + gamma (1 - d) sum_a pi(a|s') [min_j Qtarg_j(s', a) - alpha log pi(a|s')]``;
      rewards are ``replay_data.rewards`` as the buffer returns them (a relabelling buffer may recompute them),
      and ``d`` excludes time-limit truncations when the buffer uses ``handle_timeout_termination``;
    * critic loss ``sum_j MSE(Q_j(s, a), y)`` (cleanrl sums the two MSEs, no 1/2);
    * actor loss ``mean_s sum_a pi(a|s) [alpha log pi(a|s) - min_j Q_j(s, a)]`` with Q detached, then
      ``actor.optimizer.step()`` (so optimizer step-pre-hooks can add an extra policy loss);
    * temperature loss ``mean_s sum_a pi(a|s) (-log_alpha (log pi(a|s) + target_entropy))`` with pi detached,
      whose gradient in ``log_alpha`` is ``H(pi) - target_entropy``: alpha falls when the entropy is above target.

    cleanrl writes the actor and temperature losses with ``.mean()`` over batch AND actions (an extra 1/|A|)
    and scales the temperature loss by ``alpha`` instead of ``log_alpha``; we use per-state sums over actions (the
    expectations of Christodoulou 2019) and SB3's ``log_alpha`` form. Both only rescale gradients (same sign),
    which Adam largely normalises away.

    Target critics are Polyak-updated with coefficient ``tau`` (1.0 = hard copy) whenever the env-step counter
    crosses a multiple of ``target_update_interval`` (at most once per ``train`` call).

    Args:
        policy: ``"MlpPolicy"``, ``"CnnPolicy"`` or a :class:`DiscreteSACPolicy` subclass.
        env: environment with a ``Discrete`` action space (others raise ``ValueError``).
        learning_rate: lr (float or schedule of the remaining progress) of actor, critics and temperature.
        buffer_size: replay capacity.
        learning_starts: env steps of uniform random actions before learning.
        batch_size: minibatch size.
        tau: Polyak coefficient of the target update (1.0 = hard copy).
        gamma: discount.
        train_freq: update every ``train_freq`` env steps (or ``(n, "episode")``).
        gradient_steps: gradient steps per update.
        target_update_interval: env steps between target updates.
        ent_coef: ``"auto"``, ``"auto_<init>"`` (learned, log alpha starts at log(init)) or a fixed float.
        target_entropy_scale: target entropy = ``target_entropy_scale * log|A|``.
        replay_buffer_class: replay buffer class (e.g. a reward-relabelling buffer).
        replay_buffer_kwargs: its keyword arguments.
        optimize_memory_usage: SB3's memory-efficient replay buffer.
        stats_window_size: episodes in SB3's rollout statistics.
        tensorboard_log: tensorboard directory.
        policy_kwargs: keyword arguments of the policy.
        verbose: SB3 verbosity.
        seed: random seed.
        device: torch device.
    """

    policy_aliases: ClassVar[dict[str, type[BasePolicy]]] = {
        "MlpPolicy": DiscreteSACPolicy,
        "CnnPolicy": CnnDiscreteSACPolicy,
    }
    policy: DiscreteSACPolicy
    actor: DiscreteActor
    critic: DiscreteCritic
    critic_target: DiscreteCritic

    def __init__(
        self,
        policy: str | type[DiscreteSACPolicy],
        env: GymEnv | str,
        learning_rate: float | Schedule = 1e-4,
        buffer_size: int = 1_000_000,
        learning_starts: int = 20_000,
        batch_size: int = 64,
        tau: float = 1.0,
        gamma: float = 0.99,
        train_freq: int | tuple[int, str] = 4,
        gradient_steps: int = 1,
        target_update_interval: int = 8000,
        ent_coef: str | float = "auto_1.0",
        target_entropy_scale: float = 0.89,
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
        super().__init__(
            policy,
            env,
            learning_rate,
            buffer_size,
            learning_starts,
            batch_size,
            tau,
            gamma,
            train_freq,
            gradient_steps,
            action_noise=None,
            replay_buffer_class=replay_buffer_class,
            replay_buffer_kwargs=replay_buffer_kwargs,
            optimize_memory_usage=optimize_memory_usage,
            policy_kwargs=policy_kwargs,
            stats_window_size=stats_window_size,
            tensorboard_log=tensorboard_log,
            verbose=verbose,
            device=device,
            seed=seed,
            sde_support=False,
            support_multi_env=True,
        )
        if getattr(self, "action_space", None) is not None:  # unset when loading without an env
            _refuse_non_discrete(self.action_space)
        if target_update_interval < 1:
            raise ValueError(f"DiscreteSAC: target_update_interval must be >= 1, got {target_update_interval}")
        self.target_update_interval = target_update_interval
        self.ent_coef = ent_coef
        self.target_entropy_scale = target_entropy_scale
        self.target_entropy = 0.0
        self.log_ent_coef: th.Tensor | None = None
        self.ent_coef_optimizer: th.optim.Optimizer | None = None
        self._last_target_update = 0
        if _init_setup_model:
            self._setup_model()

    @override
    def _setup_model(self) -> None:
        _refuse_non_discrete(self.action_space)
        super()._setup_model()
        self.actor = self.policy.actor
        self.critic = self.policy.critic
        self.critic_target = self.policy.critic_target
        assert isinstance(self.action_space, spaces.Discrete)
        # SoBiRL code / cleanrl: target entropy = 0.89 * log|A| (the uniform policy's entropy is log|A|).
        self.target_entropy = float(self.target_entropy_scale * np.log(int(self.action_space.n)))
        if isinstance(self.ent_coef, str):
            if not self.ent_coef.startswith("auto"):
                raise ValueError(
                    f"DiscreteSAC: ent_coef must be 'auto', 'auto_<init>' or a float, got {self.ent_coef!r}"
                )
            init_value = float(self.ent_coef.split("_")[1]) if "_" in self.ent_coef else 1.0
            if init_value <= 0.0:
                raise ValueError(f"DiscreteSAC: the initial ent_coef must be > 0, got {init_value}")
            self.log_ent_coef = th.full((1,), float(np.log(init_value)), device=self.device).requires_grad_(True)
            self.ent_coef_optimizer = self.policy.optimizer_class(  # type: ignore[call-arg]
                [self.log_ent_coef], lr=self.lr_schedule(1), **self.policy.optimizer_kwargs
            )
        else:
            self.ent_coef_tensor = th.tensor(float(self.ent_coef), device=self.device)

    def current_ent_coef(self) -> th.Tensor:
        """The temperature alpha (detached, shape ``(1,)`` or scalar)."""
        if self.log_ent_coef is not None:
            return th.exp(self.log_ent_coef.detach())
        return self.ent_coef_tensor

    def critic_loss(
        self,
        observations: th.Tensor,
        actions: th.Tensor,
        rewards: th.Tensor,
        next_observations: th.Tensor,
        dones: th.Tensor,
        ent_coef: th.Tensor,
    ) -> th.Tensor:
        """``sum_j MSE(Q_j(s, a), y)`` with the soft target ``y`` of the class docstring.

        Args:
            observations: ``(B, *obs_shape)``.
            actions: ``(B,)`` or ``(B, 1)`` integer actions.
            rewards: ``(B,)`` or ``(B, 1)``.
            next_observations: ``(B, *obs_shape)``.
            dones: ``(B,)`` or ``(B, 1)``, 1 for a true termination.
            ent_coef: the temperature alpha.
        """
        rewards, dones = rewards.reshape(-1), dones.reshape(-1)
        with th.no_grad():
            next_logits = self.actor(next_observations)
            next_probs, next_log_probs = F.softmax(next_logits, dim=1), F.log_softmax(next_logits, dim=1)
            next_q = th.min(th.stack(self.critic_target(next_observations), dim=0), dim=0).values
            next_v = (next_probs * (next_q - ent_coef * next_log_probs)).sum(dim=1)
            target = rewards + (1.0 - dones) * self.gamma * next_v
        index = actions.reshape(-1, 1).long()
        q_taken = [q.gather(1, index).squeeze(1) for q in self.critic(observations)]
        return sum((F.mse_loss(q, target) for q in q_taken), th.zeros((), device=target.device))

    def actor_loss(self, observations: th.Tensor, ent_coef: th.Tensor) -> tuple[th.Tensor, th.Tensor, th.Tensor]:
        """Actor loss ``mean_s sum_a pi(a|s) [alpha log pi(a|s) - min_j Q_j(s, a)]`` (Q detached).

        Returns:
            The loss, and pi ``(B, |A|)`` and log pi ``(B, |A|)`` (both still attached to the actor).
        """
        logits = self.actor(observations)
        probs, log_probs = F.softmax(logits, dim=1), F.log_softmax(logits, dim=1)
        with th.no_grad():
            min_q = th.min(th.stack(self.critic(observations), dim=0), dim=0).values
        loss = (probs * (ent_coef * log_probs - min_q)).sum(dim=1).mean()
        return loss, probs, log_probs

    def ent_coef_loss(self, probs: th.Tensor, log_probs: th.Tensor) -> th.Tensor:
        """Temperature loss ``mean_s sum_a pi(a|s) (-log_alpha (log pi(a|s) + target_entropy))``, pi detached."""
        assert self.log_ent_coef is not None
        probs, log_probs = probs.detach(), log_probs.detach()
        return (probs * (-self.log_ent_coef * (log_probs + self.target_entropy))).sum(dim=1).mean()

    @override
    def train(self, gradient_steps: int, batch_size: int = 64) -> None:
        self.policy.set_training_mode(True)
        optimizers: list[th.optim.Optimizer] = [self.actor.optimizer, self.critic.optimizer]
        if self.ent_coef_optimizer is not None:
            optimizers.append(self.ent_coef_optimizer)
        self._update_learning_rate(optimizers)

        actor_losses, critic_losses, ent_coef_losses, ent_coefs, entropies = [], [], [], [], []
        for _ in range(gradient_steps):
            assert self.replay_buffer is not None
            data = self.replay_buffer.sample(batch_size, env=self._vec_normalize_env)
            ent_coef = self.current_ent_coef()
            ent_coefs.append(float(ent_coef.item()))

            critic_loss = self.critic_loss(
                data.observations, data.actions, data.rewards, data.next_observations, data.dones, ent_coef
            )
            self.critic.optimizer.zero_grad()
            critic_loss.backward()
            self.critic.optimizer.step()
            critic_losses.append(float(critic_loss.item()))

            actor_loss, probs, log_probs = self.actor_loss(data.observations, ent_coef)
            self.actor.optimizer.zero_grad()
            actor_loss.backward()
            self.actor.optimizer.step()  # step-pre-hooks (extra policy losses) run here
            actor_losses.append(float(actor_loss.item()))
            entropies.append(float(-(probs * log_probs).sum(dim=1).mean().item()))

            if self.ent_coef_optimizer is not None:
                alpha_loss = self.ent_coef_loss(probs, log_probs)
                self.ent_coef_optimizer.zero_grad()
                alpha_loss.backward()
                self.ent_coef_optimizer.step()
                ent_coef_losses.append(float(alpha_loss.item()))

        self._n_updates += gradient_steps
        interval = self.target_update_interval
        if self.num_timesteps // interval != self._last_target_update // interval:  # `!=`: counters may reset
            polyak_update(self.critic.parameters(), self.critic_target.parameters(), self.tau)
            self._last_target_update = self.num_timesteps

        self.logger.record("train/n_updates", self._n_updates, exclude="tensorboard")
        self.logger.record("train/ent_coef", np.mean(ent_coefs))
        self.logger.record("train/actor_loss", np.mean(actor_losses))
        self.logger.record("train/critic_loss", np.mean(critic_losses))
        self.logger.record("train/entropy", np.mean(entropies))
        if ent_coef_losses:
            self.logger.record("train/ent_coef_loss", np.mean(ent_coef_losses))

    @override
    def learn(
        self: SelfDiscreteSAC,
        total_timesteps: int,
        callback: MaybeCallback = None,
        log_interval: int = 4,
        tb_log_name: str = "DiscreteSAC",
        reset_num_timesteps: bool = True,
        progress_bar: bool = False,
    ) -> SelfDiscreteSAC:
        return super().learn(
            total_timesteps=total_timesteps,
            callback=callback,
            log_interval=log_interval,
            tb_log_name=tb_log_name,
            reset_num_timesteps=reset_num_timesteps,
            progress_bar=progress_bar,
        )

    @override
    def _excluded_save_params(self) -> list[str]:
        return [*super()._excluded_save_params(), "actor", "critic", "critic_target"]

    @override
    def _get_torch_save_params(self) -> tuple[list[str], list[str]]:
        state_dicts = ["policy", "actor.optimizer", "critic.optimizer"]
        if self.ent_coef_optimizer is not None:
            state_dicts.append("ent_coef_optimizer")
            return state_dicts, ["log_ent_coef"]
        return state_dicts, ["ent_coef_tensor"]
