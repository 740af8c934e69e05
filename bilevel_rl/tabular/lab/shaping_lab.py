"""A tabular reward-shaping problem on which the deep ``leader_reward`` rules run unchanged, with its exact gradient.

The follower plays the soft-optimal policy of ``r_env + σ r̃_x`` (``r̃_x(s, a) = φ(s, a)·x``, a
:class:`TabularRewardModel`; ``RewardMix(env=1, model=σ)``); the leader's objective is its unregularised discounted
return ``J(x) = ρᵀ V^{π*(x)}_{r̄}`` of ``r̄ = r_env − β cost(σ r̃_x)`` (HPGD eq. (7)). Its exact gradient comes from
implicit differentiation of the soft Bellman fixed point (:func:`~bilevel_rl.tabular.core.soft_mdp.exact_hypergradient`,
cross-checked there against unrolled value iteration). The objective's critic is exact
(:class:`ExactLeaderCritic`: ``Ā = Q̄^π − V̄^π`` of the follower's current policy), so what a check measures is the
rules' estimators, not a critic's error.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from bilevel_rl.data.trajectories import TrajectoryBatch
from bilevel_rl.followers.base import RewardMix
from bilevel_rl.objectives.leader_reward import LeaderCritic, LeaderRewardConfig, LeaderRewardObjective, shaping_cost
from bilevel_rl.tabular.core.reward import linear_reward
from bilevel_rl.tabular.core.soft_mdp import DTYPE, SoftMDP, exact_hypergradient, policy_evaluation, random_mdp
from bilevel_rl.tabular.lab.followers import SoftVIOracle, TabularEnvConfig, TabularFollower
from bilevel_rl.tabular.lab.reward_model import TabularRewardModel


class ExactLeaderCritic(LeaderCritic):
    """``Ā(s, a) = Q̄^π(s, a) − V̄^π(s)`` of the leader's reward table under the follower's current policy (exact).

    Args:
        follower: the tabular follower whose policy ``pi`` is evaluated.
        leader_table: ``() -> (S, A)`` the leader's per-step reward at the current parameters.
    """

    def __init__(self, follower: TabularFollower, leader_table: object) -> None:
        self.follower = follower
        self.leader_table = leader_table

    def advantages(self, batch: TrajectoryBatch, rewards: np.ndarray, gamma: float) -> tuple[np.ndarray, np.ndarray]:
        """Exact advantages at the batch's ``(s_t, a_t)`` (``rewards`` and ``gamma``: the MDP's own)."""
        f = self.follower
        Q, V = policy_evaluation(f.pi, self.leader_table(), f.mdp, regularised=False)  # type: ignore[operator]
        s = batch.obs.argmax(-1)
        a = batch.actions.astype(np.int64)
        q = Q.numpy()[s, a]
        return q - V.numpy()[s], q

    def fit(self, batch: TrajectoryBatch, targets: np.ndarray, rng: np.random.Generator) -> dict[str, float]:
        """Nothing to fit."""
        return {}


@dataclass
class ShapingLab:
    """A small reward-shaping problem with exact answers.

    Attributes:
        mdp: dynamics, ``ρ``, ``γ`` and the follower's temperature.
        env_reward: ``(S, A)`` the environment's reward (what the follower sees besides the shaping; also ``r̄``).
        model: the shaping model ``r̃_x``.
        follower: the tabular follower (trains on ``env_reward + σ r̃_x``).
        objective: the deep :class:`LeaderRewardObjective` with an exact critic.
    """

    mdp: SoftMDP
    env_reward: torch.Tensor
    model: TabularRewardModel
    follower: TabularFollower
    objective: LeaderRewardObjective

    @property
    def config(self) -> LeaderRewardConfig:
        """The objective's settings."""
        return self.objective.config

    def leader_table(self, x: torch.Tensor | None = None) -> torch.Tensor:
        """``r̄ = r_env − β cost(σ r̃_x)`` as an ``(S, A)`` table (differentiable in ``x``)."""
        c = self.config
        x = self.model.x if x is None else x
        paid = c.shaping_coef * linear_reward(x, self.model.features)
        return self.env_reward - c.cost_coef * shaping_cost(paid, c.cost) if c.cost != "none" else self.env_reward

    def exact_gradient(self) -> torch.Tensor:
        """``∇J(x)`` by implicit differentiation of the follower's soft optimum."""
        c, feats = self.config, self.model.features

        def reward_fn(z: torch.Tensor) -> torch.Tensor:
            return c.env_reward_coef * self.env_reward + c.shaping_coef * linear_reward(z, feats)

        def upper_fn(z: torch.Tensor, pi: torch.Tensor) -> torch.Tensor:
            return self.mdp.rho @ policy_evaluation(pi, self.leader_table(z), self.mdp, regularised=False)[1]

        return exact_hypergradient(self.model.x.detach(), reward_fn, upper_fn, self.mdp)[0]


def make_shaping_lab(
    num_states: int = 5,
    num_actions: int = 3,
    gamma: float = 0.6,
    tau: float = 0.5,
    num_features: int = 4,
    seed: int = 0,
    n_envs: int = 64,
    episode_length: int = 30,
    config: LeaderRewardConfig | None = None,
    follower_cls: type[TabularFollower] = SoftVIOracle,
    **follower_kwargs: object,
) -> ShapingLab:
    """A random :class:`ShapingLab` whose follower already plays ``π*(x)`` at random shaping parameters ``x``."""
    g = torch.Generator().manual_seed(seed)
    mdp = random_mdp(num_states, num_actions, gamma, tau, g)
    feats = torch.randn(num_states, num_actions, num_features, generator=g, dtype=DTYPE)
    model = TabularRewardModel(num_states, num_actions, features=feats, init_scale=0.5, generator=g)
    env_reward = torch.randn(num_states, num_actions, generator=g, dtype=DTYPE)
    env = TabularEnvConfig(n_envs=n_envs, episode_length=episode_length, record_steps=4000)
    follower = follower_cls(mdp, env_reward, env, seed, **follower_kwargs)  # type: ignore[arg-type]
    config = config or LeaderRewardConfig()
    follower.set_reward_model(model, RewardMix(env=config.env_reward_coef, model=config.shaping_coef))
    lab: ShapingLab
    critic = ExactLeaderCritic(follower, lambda: lab.leader_table().detach())
    objective = LeaderRewardObjective(config, critic, follower_gamma=gamma)
    lab = ShapingLab(mdp, env_reward, model, follower, objective)
    follower.learn(n_envs)
    return lab
