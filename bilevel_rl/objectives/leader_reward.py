"""The reward-shaping objective: the leader maximises its own return on the follower's trajectories (HPGD eq. (7)).

The leader's per-step reward is ``r̄(s, a) = base(s, a) − β · cost(σ r̃_φ(s, a))``:

* ``base`` is the environment's dense reward (default; the ``true_rewards`` of the follower's batch, never the
  delayed reward the follower may see) or a user function ``objective.reward_fn=my_module:my_reward`` called as
  ``fn(obs, actions, env_reward) -> (N,)`` on flat numpy batches;
* the optional cost ``β · |σ r̃|`` (``cost=l1``) or ``β · (σ r̃)²`` (``cost=l2``) charges the leader for the shaping
  reward it pays, ``σ r̃`` being the reward as the follower receives it. It is part of ``r̄`` (HPGD eq. (7) with a
  leader reward that depends on ``x``), so it enters the leader's advantages *and* the direct term ``dr̄/dx`` of
  eq. (8); the Four-Rooms experiment of HPGD §5.1 has such a cost.

The follower trains on ``env_reward_coef · r_visible + shaping_coef · r̃_φ``
(:class:`~bilevel_rl.followers.base.RewardMix`). Each outer iteration :meth:`LeaderRewardObjective.gather` turns the
follower's newest on-policy batch into a :class:`LeaderBatch`: the leader rewards, the leader's advantages
``Ā(s_t, a_t)`` under the follower's current policy (from a :class:`LeaderCritic`) and the within-episode time
indices, which is what the rules' estimators of eq. (8) need. Iteration 0 only fits the critic (no leader step:
its advantages would come from an untrained critic).
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from bilevel_rl.data.trajectories import TrajectoryBatch
from bilevel_rl.followers.base import LeaderStepReward, RewardMix
from bilevel_rl.objectives.base import Objective
from bilevel_rl.objectives.preferences import pearson
from bilevel_rl.reward_models.base import EnvParameterModel, RewardModel
from bilevel_rl.schema import check_dataclass, check_range

LeaderRewardFn = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]
"""``(obs (N, ...), actions (N, ...), env_reward (N,)) -> (N,)`` the leader's base reward of each step."""


@dataclass
class LeaderRewardConfig:
    """Config option ``objective=leader_reward`` (reward shaping, incentive design).

    Attributes:
        name: ``leader_reward``.
        reward_fn: ``module:function`` computing the leader's base reward (``null``: the environment's dense reward).
        cost: ``none``, ``l1`` (``β|σ r̃|`` per step) or ``l2`` (``β (σ r̃)²``).
        cost_coef: ``β``.
        env_reward_coef: weight of the (visible) environment reward in the follower's reward.
        shaping_coef: weight of the leader's shaping reward ``r̃_φ`` in the follower's reward.
        gamma: the leader's discount ``γ_L`` (``null``: the follower's).
        gae_lambda: ``λ`` of the critic's generalised advantage estimate (1: Monte Carlo returns).
        critic_hidden_sizes: the leader critic's hidden layers.
        critic_lr: its Adam learning rate.
        critic_epochs: passes over each batch when fitting it.
        critic_batch_size: its minibatch size.
        epochs_per_iter: leader steps per outer iteration after the first (full-batch steps).
        follower_temperature: the ``λ`` the rules assume for a follower that has no entropy temperature (PPO/A2C
            with ``ent_coef = 0``: not soft-optimal, so ``λ`` is the leader's model of it; with Adam it only sets the
            clipping and the balance against a shaping cost). ``null``: the follower's own, required.
        state_weighting: ``discounted`` (step ``t`` weighs ``γ_L^t`` per episode, HPGD eq. (8)) or ``uniform``
            (every step alike, the state weighting of practical policy gradients).
    """

    name: Literal["leader_reward"] = "leader_reward"
    reward_fn: str | None = None
    cost: Literal["none", "l1", "l2"] = "none"
    cost_coef: float = 0.0
    env_reward_coef: float = 1.0
    shaping_coef: float = 1.0
    gamma: float | None = None
    gae_lambda: float = 0.95
    critic_hidden_sizes: tuple[int, ...] = (64, 64)
    critic_lr: float = 1e-3
    critic_epochs: int = 5
    critic_batch_size: int = 256
    epochs_per_iter: int = 1
    follower_temperature: float | None = None
    state_weighting: Literal["discounted", "uniform"] = "discounted"

    def __post_init__(self) -> None:
        check_dataclass(self, "objective")
        check_range(self, "objective", "cost_coef", "env_reward_coef", strict=False)
        check_range(self, "objective", "shaping_coef", "critic_lr", "critic_epochs", "critic_batch_size")
        check_range(self, "objective", "epochs_per_iter", strict=False)
        check_range(self, "objective", "follower_temperature")
        if self.gamma is not None and not 0.0 <= self.gamma < 1.0:
            raise ValueError(f"objective.gamma: must be in [0, 1) or null, got {self.gamma}")
        if not 0.0 <= self.gae_lambda <= 1.0:
            raise ValueError(f"objective.gae_lambda: must be in [0, 1], got {self.gae_lambda}")
        if self.cost != "none" and self.cost_coef == 0:
            raise ValueError(f"objective.cost_coef: cost={self.cost} needs cost_coef > 0")
        if not self.critic_hidden_sizes or any(int(h) < 1 for h in self.critic_hidden_sizes):
            raise ValueError(f"objective.critic_hidden_sizes: must be positive widths, got {self.critic_hidden_sizes}")
        if self.reward_fn is not None:
            load_reward_fn(self.reward_fn)

    @property
    def mix(self) -> RewardMix:
        """The follower's reward coefficients."""
        return RewardMix(env=self.env_reward_coef, model=self.shaping_coef)


def load_reward_fn(path: str) -> LeaderRewardFn:
    """The function named by ``module:function`` (one-line errors naming ``objective.reward_fn``)."""
    module, _, attr = path.partition(":")
    if not module or not attr:
        raise ValueError(f"objective.reward_fn: expected module:function, got {path!r}")
    try:
        fn = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"objective.reward_fn: cannot load {path!r} ({type(exc).__name__}: {exc})") from None
    if not callable(fn):
        raise ValueError(f"objective.reward_fn: {path!r} is not callable")
    return fn  # type: ignore[no-any-return]


def shaping_cost(reward: torch.Tensor, kind: str) -> torch.Tensor:
    """Per-step cost of paying ``reward``: ``|r|`` (l1), ``r²`` (l2) or 0 (none)."""
    if kind == "l1":
        return reward.abs()
    if kind == "l2":
        return reward.square()
    return torch.zeros_like(reward)


def follower_scale(model: RewardModel, mix: RewardMix) -> float:
    """``σ``: the follower receives ``σ · r̃_φ`` (shaping coefficient times the model's own output scale)."""
    return mix.model * (float(model.reward_scale) if model.normalize else 1.0)


# ---------------------------------------------------------------------------------------------------- data
@dataclass
class LeaderBatch:
    """One outer iteration's leader data (time-major ``(T, E)`` like the follower's batch).

    Attributes:
        batch: the follower's on-policy transitions.
        leader_rewards: ``r̄_t`` (base minus cost, the cost at the model before this iteration's leader step).
        advantages: ``Ā(s_t, a_t)`` of ``r̄`` under the follower's current policy.
        returns: the critic's targets (``Ā + V̄``).
        gamma: the leader's discount ``γ_L``.
        iteration: the outer iteration that gathered it.
    """

    batch: TrajectoryBatch
    leader_rewards: np.ndarray
    advantages: np.ndarray
    returns: np.ndarray
    gamma: float
    iteration: int

    def state_weights(self, discounted: bool) -> tuple[np.ndarray, float]:
        """Per-step weights and their normaliser for estimating the leader objective's gradient.

        ``discounted``: ``γ_L^t`` (``t`` the within-episode index) over the number of episode starts, so that sums
        estimate ``E_{s_0~μ}[Σ_t γ^t ·]`` as in HPGD eq. (8); otherwise 1 over the number of steps (the
        state-weighting of practical policy gradients, which drops ``γ^t``). Steps whose index is unknown (an
        episode begun before recording) get weight 0 in the discounted form.
        """
        if not discounted:
            return np.ones_like(self.leader_rewards, dtype=np.float64), float(self.leader_rewards.size)
        w, episodes = self.batch.start_discounts(self.gamma)
        if episodes == 0:
            raise ValueError("the follower batch holds no episode start; increase trainer.steps_per_iter")
        return w, float(episodes)


class LeaderData:
    """The live handle rules keep from ``attach``: the newest :class:`LeaderBatch` and the objective's settings.

    Attributes:
        config: the objective's settings (cost, coefficients).
        gamma: the leader's discount.
        latest: the newest batch (``None`` before the first gather).
    """

    def __init__(self, config: LeaderRewardConfig, gamma: float) -> None:
        self.config = config
        self.gamma = gamma
        self.latest: LeaderBatch | None = None

    @property
    def mix(self) -> RewardMix:
        """The follower's reward coefficients."""
        return self.config.mix

    def require(self, rule: str) -> LeaderBatch:
        """``latest``, or a one-line error naming the rule."""
        if self.latest is None:
            raise ValueError(f"upper={rule}: no leader batch gathered yet (the first leader step is at iteration 1)")
        return self.latest


# ---------------------------------------------------------------------------------------------------- critics
class LeaderCritic(ABC):
    """Estimates the leader's advantages ``Ā(s_t, a_t)`` of ``r̄`` under the follower's current policy."""

    @abstractmethod
    def advantages(self, batch: TrajectoryBatch, rewards: np.ndarray, gamma: float) -> tuple[np.ndarray, np.ndarray]:
        """``(advantages, critic targets)``, each ``(T, E)``."""

    @abstractmethod
    def fit(self, batch: TrajectoryBatch, targets: np.ndarray, rng: np.random.Generator) -> dict[str, float]:
        """Improve the critic on the batch; return ``upper/critic_*`` metrics."""

    def state_dict(self) -> dict[str, Any]:
        """Critic state for checkpoints."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:  # noqa: B027 - stateless critics
        """Restore :meth:`state_dict`."""


def gae(
    rewards: np.ndarray, values: np.ndarray, batch: TrajectoryBatch, gamma: float, lam: float
) -> tuple[np.ndarray, np.ndarray]:
    """Generalised advantage estimation over a time-major batch (Schulman et al. 2016).

    ``δ_t = r_t + γ V(s_{t+1}) − V(s_t)`` with ``V(s_{t+1}) = 0`` after a terminal step; after a time-limit
    truncation and at the batch's last step the next observation is not recorded, so ``V(s_t)`` stands in for it
    (our choice; it biases those few steps' advantages by ``(γ − 1) V(s_t)``).
    """
    num_steps = rewards.shape[0]
    adv = np.zeros_like(rewards, dtype=np.float64)
    last = np.zeros(rewards.shape[1], dtype=np.float64)
    for t in reversed(range(num_steps)):
        end = batch.dones[t] | (t == num_steps - 1)
        next_v = values[t] if t == num_steps - 1 else np.where(batch.dones[t], values[t], values[t + 1])
        next_v = np.where(batch.terminated[t], 0.0, next_v)
        delta = rewards[t] + gamma * next_v - values[t]
        last = delta + gamma * lam * np.where(end, 0.0, last)
        adv[t] = last
    return adv, adv + values


class GAECritic(LeaderCritic):
    """An MLP state-value critic ``V̄(s)`` of the leader's reward with GAE advantages (LIRPG's extrinsic critic).

    Inputs are standardised with statistics fitted on the first batch, then frozen.

    Args:
        obs_dim: flattened observation size.
        hidden_sizes: hidden widths (tanh).
        lr: Adam learning rate.
        epochs: passes per fit.
        batch_size: minibatch size.
        gae_lambda: GAE's ``λ``.
    """

    def __init__(
        self, obs_dim: int, hidden_sizes: Sequence[int], lr: float, epochs: int, batch_size: int, gae_lambda: float
    ) -> None:
        layers: list[nn.Module] = []
        last = obs_dim
        for width in hidden_sizes:
            layers += [nn.Linear(last, int(width)), nn.Tanh()]
            last = int(width)
        self.net = nn.Sequential(*layers, nn.Linear(last, 1))
        self.optimizer = torch.optim.Adam(self.net.parameters(), lr=lr)
        self.epochs, self.batch_size, self.gae_lambda = epochs, batch_size, gae_lambda
        self.mean = torch.zeros(obs_dim)
        self.std = torch.ones(obs_dim)
        self.fitted = False

    def _values(self, obs: np.ndarray) -> torch.Tensor:
        x = torch.as_tensor(obs, dtype=torch.float32).reshape(len(obs), -1)
        return self.net((x - self.mean) / self.std).squeeze(-1)

    def advantages(self, batch: TrajectoryBatch, rewards: np.ndarray, gamma: float) -> tuple[np.ndarray, np.ndarray]:
        """GAE with the critic as it is (before this batch's fit)."""
        if not self.fitted:
            flat = torch.as_tensor(batch.flat_obs(), dtype=torch.float32).reshape(len(batch), -1)
            self.mean, self.std = flat.mean(0), flat.std(0).clamp_min(1e-3)
            self.fitted = True
        with torch.no_grad():
            values = self._values(batch.flat_obs()).double().numpy().reshape(rewards.shape)
        return gae(rewards, values, batch, gamma, self.gae_lambda)

    def fit(self, batch: TrajectoryBatch, targets: np.ndarray, rng: np.random.Generator) -> dict[str, float]:
        """Regress ``V̄`` on the targets (MSE, ``epochs`` shuffled passes); returns the explained variance before."""
        obs = batch.flat_obs()
        y = torch.as_tensor(targets.reshape(-1), dtype=torch.float32)
        with torch.no_grad():
            before = self._values(obs)
        explained = 1.0 - float((y - before).var() / y.var().clamp_min(1e-8))
        losses = []
        for _ in range(self.epochs):
            for idx in np.array_split(rng.permutation(len(y)), max(1, len(y) // self.batch_size)):
                loss = (self._values(obs[idx]) - y[idx]).square().mean()
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                self.optimizer.step()
                losses.append(float(loss.detach()))
        return {"upper/critic_loss": float(np.mean(losses)), "upper/critic_explained_variance": explained}

    def state_dict(self) -> dict[str, Any]:
        """Network, optimizer and input statistics."""
        return {
            "net": self.net.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "mean": self.mean.clone(),
            "std": self.std.clone(),
            "fitted": self.fitted,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        self.net.load_state_dict(state["net"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.mean, self.std, self.fitted = state["mean"].clone(), state["std"].clone(), bool(state["fitted"])


# ---------------------------------------------------------------------------------------------------- objective
class LeaderRewardObjective(Objective):
    """The leader's own return of ``r̄`` on the follower's trajectories; no teacher, no pairs.

    Args:
        config: the objective's settings.
        critic: estimates the leader's advantages (deep runs: :class:`GAECritic`; the tabular lab: exact ones).
        follower_gamma: the follower's discount (``γ_L`` when ``config.gamma`` is ``null``).
    """

    name = "leader_reward"

    def __init__(self, config: LeaderRewardConfig, critic: LeaderCritic, follower_gamma: float) -> None:
        self.config = config
        self.critic = critic
        self.gamma = float(config.gamma if config.gamma is not None else follower_gamma)
        self.reward_fn = load_reward_fn(config.reward_fn) if config.reward_fn is not None else None
        self.leader_data = LeaderData(config, self.gamma)
        self.mix = config.mix

    @property
    def data(self) -> LeaderData:
        """The live :class:`LeaderData` (its ``latest`` is replaced by every gather)."""
        return self.leader_data

    @property
    def latest(self) -> LeaderBatch | None:
        """The newest batch."""
        return self.leader_data.latest

    def base_rewards(self, obs: np.ndarray, actions: np.ndarray, env_rewards: np.ndarray) -> np.ndarray:
        """The leader's base reward of flat steps (the env's dense reward, or ``reward_fn``)."""
        if self.reward_fn is None:
            return env_rewards.astype(np.float64)
        out = np.asarray(self.reward_fn(obs, actions, env_rewards), dtype=np.float64).reshape(-1)
        if out.shape != env_rewards.shape:
            raise ValueError(
                f"objective.reward_fn: returned {out.size} rewards for a batch of {env_rewards.size} steps"
            )
        return out

    @torch.no_grad()
    def step_costs(
        self, model: RewardModel, obs: np.ndarray, actions: np.ndarray, mix: RewardMix | None = None
    ) -> np.ndarray:
        """``β · cost(σ r̃)`` of flat steps at the current model (``mix``: the follower's; default the config's)."""
        scale = follower_scale(model, mix or self.mix)
        if self.config.cost == "none" or scale == 0.0:
            return np.zeros(len(obs))
        paid = scale * _raw(model, obs, actions)
        return self.config.cost_coef * shaping_cost(paid, self.config.cost).double().cpu().numpy()

    def leader_rewards(self, batch: TrajectoryBatch, model: RewardModel) -> np.ndarray:
        """``r̄_t`` of every step of ``batch``, ``(T, E)`` (an :class:`EnvParameterModel`'s own leader reward)."""
        obs, actions = batch.flat_obs(), batch.flat_actions()
        if self.reward_fn is None and isinstance(model, EnvParameterModel):
            with torch.no_grad():
                base = model.leader_reward(torch.as_tensor(obs), torch.as_tensor(actions)).double().cpu().numpy()
        else:
            base = self.base_rewards(obs, actions, batch.true_rewards.reshape(-1))
        return (base - self.step_costs(model, obs, actions)).reshape(batch.true_rewards.shape)

    def gather(
        self, batch: TrajectoryBatch, iteration: int, rng: np.random.Generator, reward_model: RewardModel
    ) -> dict[str, float]:
        """Leader rewards, advantages with the critic as it is, then one critic fit on this batch."""
        rewards = self.leader_rewards(batch, reward_model)
        advantages, returns = self.critic.advantages(batch, rewards, self.gamma)
        self.leader_data.latest = LeaderBatch(batch, rewards, advantages, returns, self.gamma, iteration)
        metrics = self.critic.fit(batch, returns, rng)
        episodes = _episode_sums(batch, rewards)
        if episodes:
            metrics["follower/leader_return"] = float(np.mean(episodes))
        metrics["upper/leader_reward_mean"] = float(rewards.mean())
        metrics["upper/advantage_std"] = float(advantages.std())
        return metrics

    def baseline_metrics(self, batch: TrajectoryBatch, reward_model: RewardModel) -> dict[str, float]:
        """Adds ``follower/leader_return``, the leader's return of the follower's episodes.

        Baseline rows then have the same training curve as the leader rules' (e.g. welfare at fixed taxes).
        """
        metrics = super().baseline_metrics(batch, reward_model)
        episodes = _episode_sums(batch, self.leader_rewards(batch, reward_model))
        if episodes:
            metrics["follower/leader_return"] = float(np.mean(episodes))
        return metrics

    def epochs(self, iteration: int) -> int:
        """No leader step at iteration 0 (the critic's first fit); ``epochs_per_iter`` after."""
        return 0 if iteration == 0 or self.latest is None else self.config.epochs_per_iter

    @torch.no_grad()
    def diagnose(self, batch: TrajectoryBatch, reward_model: RewardModel) -> dict[str, float]:
        """``shaping/*``: the shaping reward as the follower receives it, against the dense and the leader reward."""
        paid = follower_scale(reward_model, self.mix) * _raw(reward_model, batch.flat_obs(), batch.flat_actions())
        shaped = paid.double().cpu().numpy()
        dense = batch.true_rewards.reshape(-1)
        out = {
            "shaping/mean_abs": float(np.abs(shaped).mean()),
            "shaping/mean": float(shaped.mean()),
            "shaping/std": float(shaped.std()),
            "shaping/dense_reward_corr": pearson(shaped, dense),
            "follower/true_reward_mean": float(dense.mean()),
        }
        latest = self.latest
        if latest is not None and latest.batch is batch:
            out["shaping/leader_advantage_corr"] = pearson(shaped, latest.advantages.reshape(-1))
        if isinstance(reward_model, EnvParameterModel):
            out |= reward_model.parameter_metrics()
        return out

    @property
    def reward_mix(self) -> RewardMix:
        """``env_reward_coef · r_visible + shaping_coef · r̃_φ``."""
        return self.mix

    def eval_reward_fn(self, model: RewardModel, mix: RewardMix) -> LeaderStepReward | None:
        """Per-step ``r̄`` for evaluation episodes (``None`` when ``r̄`` is the dense reward: ``eval/true_return``)."""
        if self.reward_fn is None and isinstance(model, EnvParameterModel):

            def own(obs: np.ndarray, action: np.ndarray, env_reward: float) -> float:
                with torch.no_grad():
                    o, a = torch.as_tensor(np.asarray(obs)[None]), torch.as_tensor(np.asarray(action)[None])
                    return float(model.leader_reward(o, a)[0])

            return own
        if self.reward_fn is None and self.config.cost == "none":
            return None

        def fn(obs: np.ndarray, action: np.ndarray, env_reward: float) -> float:
            o, a = np.asarray(obs)[None], np.asarray(action)[None]
            base = self.base_rewards(o, a, np.asarray([env_reward], dtype=np.float64))
            return float(base[0] - self.step_costs(model, o, a, mix)[0])

        return fn

    def state_dict(self) -> dict[str, Any]:
        """The critic (the latest batch is rebuilt by the next gather)."""
        return {"critic": self.critic.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the critic."""
        self.critic.load_state_dict(state["critic"])


def _raw(model: RewardModel, obs: np.ndarray, actions: np.ndarray) -> torch.Tensor:
    """Raw model output on flat numpy steps, in eval mode."""
    was = model.training
    model.eval()
    try:
        return model(torch.as_tensor(obs, device=model.device), torch.as_tensor(actions, device=model.device))
    finally:
        model.train(was)


def _episode_sums(batch: TrajectoryBatch, rewards: np.ndarray) -> list[float]:
    """Undiscounted sums of ``rewards`` over the episodes that start and end inside the batch."""
    shadow = TrajectoryBatch(
        obs=batch.true_rewards[..., None],
        actions=batch.true_rewards[..., None],
        true_rewards=rewards.astype(np.float32),
        dones=batch.dones,
        terminated=batch.terminated,
        episode_starts=batch.episode_starts,
        timesteps=batch.timesteps,
    )
    return shadow.episode_returns()
