"""Tabular followers behind the deep `Follower` seam: soft-VI oracle, soft Q-learning, PMD and soft policy gradient.

All of them act in a vectorised tabular environment (the core sampler's
:class:`~bilevel_rl.tabular.core.sampling.EnvBatch`: ``E`` copies of a :class:`SoftMDP`, episodes truncated after
``episode_length`` steps, one-hot observations), train on the leader's *current* reward model (evaluated on every
(s, a) pair whenever they learn), record their transitions for :meth:`collect`, and report the exact value of
their policy on the true reward as ``eval/true_return``. The trainer, teachers, buffers and upper rules of the
deep side therefore run on them unchanged. Each declares its capabilities (:data:`TABULAR_CAPABILITIES`, plus
``EXTRA_POLICY_LOSS`` and ``PARAMETRIC_POLICY`` for :class:`SoftPolicyGradient`); none trains on the true reward
or records videos. Randomness: one ``torch.Generator`` per follower; the numpy generator that the seam passes to
:meth:`~TabularFollower.rollouts_from` seeds a torch one.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from typing_extensions import override

from bilevel_rl.capabilities import Capability
from bilevel_rl.data.trajectories import TrajectoryBatch
from bilevel_rl.followers.base import (
    ExtraPolicyLoss,
    Follower,
    LeaderStepReward,
    RewardMix,
    Rollouts,
    TransitionRecorder,
)
from bilevel_rl.reward_models.base import RewardModel
from bilevel_rl.schedules import polynomial_decay
from bilevel_rl.tabular.core.sampling import CategoricalTable, EnvBatch, Simulator, generator_from, rollout
from bilevel_rl.tabular.core.soft_mdp import DTYPE, SoftMDP, policy_evaluation, solve_soft
from bilevel_rl.tabular.lab.reward_model import one_hot_space

OnStep = Callable[[np.ndarray, np.ndarray, np.ndarray], None]
"""``(s, a, s')`` of one vectorised step (numpy integer arrays)."""

TABULAR_CAPABILITIES = frozenset(
    {
        Capability.TEMPERATURE,
        Capability.GAMMA,
        Capability.ACTION_DIST,
        Capability.SPAWN,
        Capability.GENERATIVE_MODEL,
    }
)
"""What every tabular follower can do: τ > 0, its own γ, ``π(·|s)``, a second follower, exact restarts."""


@dataclass
class TabularEnvConfig:
    """Sampling set-up of a tabular follower.

    Attributes:
        n_envs: parallel environment copies.
        episode_length: steps before an episode is truncated (time limit) and restarted from ``rho``.
        record_steps: steps per env kept for :meth:`Follower.collect`.
    """

    n_envs: int = 4
    episode_length: int = 50
    record_steps: int = 1000


class TabularFollower(Follower):
    """Shared machinery: sampling, recording, exact evaluation, checkpoints.

    Args:
        mdp: dynamics, initial distribution, discount and temperature τ.
        true_reward: ``(S, A)`` the environment's own reward (teacher and evaluation only).
        config: sampling set-up.
        seed: seed of the follower's ``torch.Generator`` (environments and initial states).
    """

    def __init__(self, mdp: SoftMDP, true_reward: torch.Tensor, config: TabularEnvConfig, seed: int) -> None:
        self.mdp = mdp
        self.true_reward = true_reward.to(DTYPE)
        self.config = config
        self.generator = torch.Generator().manual_seed(seed)
        self.observation_space = one_hot_space(mdp.num_states)
        self.action_space = gym.spaces.Discrete(mdp.num_actions)
        self.pi = torch.full((mdp.num_states, mdp.num_actions), 1.0 / mdp.num_actions, dtype=DTYPE)
        self.reward_model: RewardModel | None = None
        self.recorder = TransitionRecorder(config.record_steps, config.n_envs)
        self.simulator = Simulator(mdp)
        self.envs = EnvBatch(self.simulator, mdp.rho, config.n_envs, config.episode_length, self.generator)
        self._one_hot = np.eye(mdp.num_states, dtype=np.float32)
        self._steps = 0

    # ------------------------------------------------------------------ capabilities
    @classmethod
    @override
    def declared_capabilities(cls, params: Mapping[str, Any] | None = None) -> frozenset[Capability]:
        return TABULAR_CAPABILITIES

    @property
    @override
    def capabilities(self) -> frozenset[Capability]:
        """The declared set, without ``TEMPERATURE`` while the temperature is not positive (as SB3 followers)."""
        caps = type(self).declared_capabilities()
        return caps if self.temperature > 0 else caps - {Capability.TEMPERATURE}

    @property
    @override
    def gamma(self) -> float:
        return float(self.mdp.gamma)

    # ------------------------------------------------------------------ seam
    @override
    def set_reward_model(self, reward_model: RewardModel, mix: RewardMix | None = None) -> None:
        self.reward_model = reward_model
        self._reward_mix = mix or RewardMix()

    def reward_table(self) -> torch.Tensor:
        """The reward the follower trains on, on every (s, a): ``mix.model · relabel + mix.env · true_reward``.

        The tabular environment's own reward is its true reward (no delay wrapper), so ``r_visible = true_reward``.
        """
        if self.reward_model is None:
            raise RuntimeError("set_reward_model() must be called before learning")
        S, A = self.mdp.num_states, self.mdp.num_actions
        obs = torch.eye(S, dtype=torch.float32).repeat_interleave(A, dim=0)
        actions = torch.arange(A).repeat(S)
        mix = self.reward_mix
        learned = self.reward_model.relabel(obs, actions).to(DTYPE).reshape(S, A)
        return mix.model * learned + mix.env * self.true_reward if mix != RewardMix() else learned

    @override
    def collect(self, steps: int) -> TrajectoryBatch:
        return self.recorder.batch(steps)

    @property
    @override
    def num_timesteps(self) -> int:
        return self._steps

    @property
    @override
    def num_envs(self) -> int:
        return self.config.n_envs

    @property
    @override
    def temperature(self) -> float:
        return float(self.mdp.tau)

    @override
    def action_dist(self, obs: np.ndarray | torch.Tensor, grad: bool = False) -> torch.distributions.Categorical:
        """Categorical ``π(·|s)`` for one-hot (or distribution-valued) observations ``(B, S)``."""
        weights = torch.as_tensor(obs, dtype=DTYPE).reshape(-1, self.mdp.num_states)
        return torch.distributions.Categorical(probs=weights @ self.pi)

    def _spawn_kwargs(self) -> dict[str, Any]:
        return {}

    @override
    def spawn(self, seed: int) -> TabularFollower:
        new = type(self)(self.mdp, self.true_reward, self.config, seed, **self._spawn_kwargs())
        if self.reward_model is not None:
            new.set_reward_model(self.reward_model, self.reward_mix)
        return new

    @override
    def rollouts_from(
        self, obs: np.ndarray, first_actions: np.ndarray | None, horizon: int, rng: np.random.Generator
    ) -> Rollouts:
        """Exact simulator restarts: one-hot ``obs`` name the states; actions follow the current policy.

        The core sampler draws from a torch generator seeded by one draw of ``rng``.
        """
        s0 = torch.from_numpy(np.asarray(obs).reshape(-1, self.mdp.num_states).argmax(axis=1))
        a0 = None if first_actions is None else torch.as_tensor(np.asarray(first_actions, dtype=np.int64)).reshape(-1)
        ro = rollout(self.simulator.with_policy(self.pi), s0, horizon, generator_from(rng), a0)
        states = ro.states.numpy()
        return Rollouts(
            obs=self._one_hot[states], actions=ro.actions.numpy(), mask=np.ones(states.shape, dtype=np.float32)
        )

    @override
    def evaluate(self, episodes: int, seed: int, leader_reward: LeaderStepReward | None = None) -> dict[str, float]:
        """Exact values of the current policy (no sampling; ``episodes`` and ``seed`` are unused)."""
        if leader_reward is not None:
            raise NotImplementedError("tabular followers evaluate the true reward only (no leader reward function)")
        _, v_true = policy_evaluation(self.pi, self.true_reward, self.mdp, regularised=False)
        opt = solve_soft(self.true_reward, self.mdp)
        return {
            "eval/true_return": float(self.mdp.rho @ v_true),  # discounted, entropy-free, exact
            "eval/soft_optimal_gap": float(
                self.mdp.rho @ (opt.V - policy_evaluation(self.pi, self.true_reward, self.mdp)[1])
            ),
        }

    # ------------------------------------------------------------------ sampling
    def _rollout(
        self, steps: int, on_step: OnStep | None = None, behaviour: Callable[[], torch.Tensor] | None = None
    ) -> None:
        """``steps`` vectorised, recorded steps (``on_step(s, a, s2)`` after each).

        Actions come from the current policy, or from ``behaviour()`` (a ``(S, A)`` table) when given; both are
        read again after every ``on_step``.
        """

        def acting() -> CategoricalTable:
            return CategoricalTable(behaviour() if behaviour is not None else self.pi)

        table = acting()
        true_reward = self.true_reward.numpy()
        for _ in range(steps):
            step = self.envs.step(table, self.generator)
            s, a, done = step.states.numpy(), step.actions.numpy(), step.done.numpy()
            self.recorder.add(self._one_hot[s], a, true_reward[s, a], done, done)
            if on_step is not None:
                on_step(s, a, step.next_states.numpy())
                table = acting()
            self._steps += len(s)

    def sample(self, steps_per_env: int) -> TrajectoryBatch:
        """``steps_per_env`` recorded steps of the current policy without learning; return them."""
        self._rollout(steps_per_env)
        return self.recorder.batch(steps_per_env)

    @override
    def learn(self, steps: int) -> dict[str, float]:
        per_env = max(1, steps // self.num_envs)
        metrics = self._learn(per_env)
        metrics["follower/temperature"] = self.temperature
        returns = self.recorder.batch(per_env).episode_returns()
        if returns:
            metrics["follower/ep_true_return"] = float(np.mean(returns))
        return metrics

    @abstractmethod
    def _learn(self, steps_per_env: int) -> dict[str, float]:
        """Improve the policy on the current reward and take ``steps_per_env`` recorded steps."""

    # ------------------------------------------------------------------ checkpoints
    @override
    def state_dict(self) -> dict[str, Any]:
        return {
            "pi": self.pi.clone(),
            "generator": self.generator.get_state(),
            "states": self.envs.states.clone(),
            "t": self.envs.time.clone(),
            "steps": self._steps,
            "recorder": self.recorder.state_dict(),
            "extra": self._extra_state(),
        }

    @override
    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.pi = state["pi"].clone()
        self.generator.set_state(state["generator"])
        self.envs.states, self.envs.time = state["states"].clone(), state["t"].clone()
        self._steps = int(state["steps"])
        self.recorder.load_state_dict(state["recorder"])
        self._load_extra_state(state["extra"])

    def _extra_state(self) -> dict[str, Any]:
        return {}

    def _load_extra_state(self, state: dict[str, Any]) -> None:
        pass


class SoftVIOracle(TabularFollower):
    """The exact best response: ``π ← π*(r_φ)`` (soft-optimal for the current reward), then sampling."""

    @override
    def _learn(self, steps_per_env: int) -> dict[str, float]:
        self.pi = solve_soft(self.reward_table(), self.mdp).pi
        self._rollout(steps_per_env)
        return {}


class SoftQLearning(TabularFollower):
    """Online soft Q-learning (HPGD Alg. 4, without truncation) on the learned reward.

    After every sampled transition ``Q(s,a) ← Q(s,a) + α_n (r_φ(s,a) + γ τ logsumexp(Q(s',·)/τ) − Q(s,a))``
    (time-limit truncations bootstrap). The target does not depend on the behaviour policy, so we act with
    ``(1−ε)·softmax(Q/τ) + ε·uniform``: with a small τ the pure softmax stops visiting actions whose Q is still at
    its initial value and the iteration stalls. Step sizes: ``α_n = lr`` if ``lr`` is given, else the
    count-based ``1 / n(s,a)^0.7`` (convergent: Σα = ∞, Σα² < ∞). The follower's policy is ``softmax(Q/τ)``.
    """

    def __init__(self, *args: Any, lr: float | None = None, epsilon: float = 0.2, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if lr is not None and lr <= 0:
            raise ValueError("follower.lr must be > 0")
        if not 0.0 <= epsilon <= 1.0:
            raise ValueError("follower.epsilon must be in [0, 1]")
        self.lr, self.epsilon = lr, epsilon
        self._kwargs = {"lr": lr, "epsilon": epsilon}
        self.Q = np.zeros((self.mdp.num_states, self.mdp.num_actions))
        self.visits = np.zeros_like(self.Q)

    @override
    def _spawn_kwargs(self) -> dict[str, Any]:
        return dict(self._kwargs)

    def _behaviour(self) -> torch.Tensor:
        return (1.0 - self.epsilon) * self.pi + self.epsilon / self.mdp.num_actions

    @override
    def _learn(self, steps_per_env: int) -> dict[str, float]:
        table = self.reward_table().numpy()
        tau, gamma = self.mdp.tau, self.mdp.gamma
        q, visits = self.Q, self.visits

        def update(s: np.ndarray, a: np.ndarray, s2: np.ndarray) -> None:
            for i in range(len(s)):  # sequential: a repeated (s, a) within one vector step updates twice
                z = q[s2[i]] / tau
                v_next = tau * (z.max() + np.log(np.exp(z - z.max()).sum()))
                visits[s[i], a[i]] += 1
                alpha = self.lr if self.lr is not None else polynomial_decay(visits[s[i], a[i]], 1.0, 0.7)
                q[s[i], a[i]] += alpha * (table[s[i], a[i]] + gamma * v_next - q[s[i], a[i]])
            z = q / tau
            e = np.exp(z - z.max(axis=1, keepdims=True))
            self.pi = torch.as_tensor(e / e.sum(axis=1, keepdims=True))

        self._rollout(steps_per_env, on_step=update, behaviour=self._behaviour)
        return {"follower/q_max": float(np.abs(q).max())}

    @override
    def _extra_state(self) -> dict[str, Any]:
        return {"Q": self.Q.copy(), "visits": self.visits.copy()}

    @override
    def _load_extra_state(self, state: dict[str, Any]) -> None:
        self.Q, self.visits = state["Q"].copy(), state["visits"].copy()


class PolicyMirrorDescent(TabularFollower):
    """Exact policy mirror descent for the entropy-regularised MDP (Cen et al. 2021; Lan 2022).

    Update:

    ``π_{k+1}(a|s) ∝ π_k(a|s)^{1/(1+ητ)} exp(η Q^{π_k}(s,a) / (1+ητ))`` with exact soft evaluation ``Q^{π_k}``
    under the current learned reward; ``updates`` iterations per :meth:`learn` call, then sampling.
    """

    def __init__(self, *args: Any, eta: float = 1.0, updates: int = 10, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if eta <= 0 or updates <= 0:
            raise ValueError("follower.eta and follower.updates must be > 0")
        self.eta, self.updates = eta, updates

    @override
    def _spawn_kwargs(self) -> dict[str, Any]:
        return {"eta": self.eta, "updates": self.updates}

    @override
    def _learn(self, steps_per_env: int) -> dict[str, float]:
        table = self.reward_table()
        tau, eta = self.mdp.tau, self.eta
        for _ in range(self.updates):
            q, _ = policy_evaluation(self.pi, table, self.mdp)
            logits = (torch.log(self.pi.clamp_min(1e-300)) + eta * q) / (1.0 + eta * tau)
            self.pi = torch.softmax(logits, dim=1)
        self._rollout(steps_per_env)
        return {}


class SoftPolicyGradient(TabularFollower):
    """Exact soft policy gradient on softmax logits ``θ`` (Adam), with an optional extra policy loss.

    Each :meth:`learn` call takes ``updates`` Adam steps on ``−V^{π_θ}_{r_φ,τ}(ρ) + fn()`` (exact, differentiable
    soft policy evaluation), where ``fn`` is the leader's extra policy loss (:meth:`set_extra_policy_loss`,
    PBRL's ``(1/λ)·f``). Without ``fn`` it converges to the soft-optimal policy; with it, to the minimiser of the
    penalised lower objective, which is what the penalty rules need from a tabular follower.
    """

    def __init__(self, *args: Any, lr: float = 0.1, updates: int = 50, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if lr <= 0 or updates <= 0:
            raise ValueError("follower.lr and follower.updates must be > 0")
        self.lr, self.updates = lr, updates
        self.theta = torch.zeros(self.mdp.num_states, self.mdp.num_actions, dtype=DTYPE, requires_grad=True)
        self.optimizer = torch.optim.Adam([self.theta], lr=lr)
        self._extra: ExtraPolicyLoss | None = None

    @classmethod
    @override
    def declared_capabilities(cls, params: Mapping[str, Any] | None = None) -> frozenset[Capability]:
        """Also an extra policy loss, and ``action_dist(grad=True)`` differentiable in the logits ``θ``."""
        return TABULAR_CAPABILITIES | {Capability.EXTRA_POLICY_LOSS, Capability.PARAMETRIC_POLICY}

    @override
    def _spawn_kwargs(self) -> dict[str, Any]:
        return {"lr": self.lr, "updates": self.updates}

    @override
    def set_extra_policy_loss(self, fn: ExtraPolicyLoss | None) -> None:
        self._extra = fn

    @override
    def action_dist(self, obs: np.ndarray | torch.Tensor, grad: bool = False) -> torch.distributions.Categorical:
        weights = torch.as_tensor(obs, dtype=DTYPE).reshape(-1, self.mdp.num_states)
        with torch.set_grad_enabled(grad):
            logits = weights @ (self.theta if grad else self.theta.detach())
            return torch.distributions.Categorical(logits=logits)

    def penalised_objective(self) -> torch.Tensor:
        """``−V^{π_θ}(ρ)`` plus the extra policy loss, differentiable in ``θ``."""
        table = self.reward_table()
        pi = torch.softmax(self.theta, dim=1)
        _, v = policy_evaluation(pi, table, self.mdp)
        loss = -(self.mdp.rho @ v)
        if self._extra is not None:
            loss = loss + self._extra().to(DTYPE)
        return loss

    @override
    def _learn(self, steps_per_env: int) -> dict[str, float]:
        loss = torch.zeros(())
        for _ in range(self.updates):
            loss = self.penalised_objective()
            self.optimizer.zero_grad()
            loss.backward()
            self.optimizer.step()
        self.pi = torch.softmax(self.theta.detach(), dim=1)
        self._rollout(steps_per_env)
        return {"follower/penalised_objective": float(loss.detach())}

    @override
    def _extra_state(self) -> dict[str, Any]:
        return {"theta": self.theta.detach().clone(), "optimizer": self.optimizer.state_dict()}

    @override
    def _load_extra_state(self, state: dict[str, Any]) -> None:
        with torch.no_grad():
            self.theta.copy_(state["theta"])
        self.optimizer.load_state_dict(state["optimizer"])
