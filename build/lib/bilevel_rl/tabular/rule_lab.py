"""A tabular RLHF problem on which the *deep* upper rules run unchanged, with its exact hypergradient.

The pieces are the deep seams' tabular implementations: a :class:`TabularRewardModel` with linear features
``r_x(s, a) = φ(s, a)·x``, a tabular follower (the soft-VI oracle gives ``π = π*(x)``), and preference pairs of
``H``-step segments started from ``ρ`` and drawn by the follower's policy, each labelled with the *expected*
Bradley–Terry label ``p = σ((R(d_0) − R(d_1)) / T)`` of a fixed true reward ``R``. The upper objective is then
``φ(x) = E_{d_0, d_1 ~ π*(x)}[l(d_0, d_1; x)]`` (SoBiRL eq. 11 with ``l = E_y[l_h]``) and its exact gradient is
:func:`~bilevel_rl.tabular.estimators_sobirl.sobirl_exact` at ``π*(x)`` (SoBiRL Prop. 5.2), cross-checked there
against implicit differentiation of the soft Bellman fixed point.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from bilevel_rl.data.preference_buffer import PreferenceBuffer
from bilevel_rl.data.segments import PreferencePairs
from bilevel_rl.data.trajectories import TrajectoryBatch
from bilevel_rl.tabular.estimators_sobirl import BradleyTerryLoss, sample_tuples, sobirl_exact
from bilevel_rl.tabular.followers import SoftVIOracle, TabularEnvConfig, TabularFollower
from bilevel_rl.tabular.reward import TabularRewardModel
from bilevel_rl.tabular.soft_mdp import DTYPE, SoftMDP, random_mdp, solve_soft


@dataclass
class RuleLab:
    """A small RLHF problem with exact answers.

    Attributes:
        mdp: dynamics, ``ρ``, ``γ`` and the follower's temperature ``τ``.
        reward_model: ``r_x = φ·x`` (its parameter ``x`` is what the rules move).
        follower: the tabular follower attached to ``reward_model``.
        true_reward: ``(S, A)`` the labeller's reward.
        loss: the expected Bradley–Terry loss on ``H``-step pairs.
    """

    mdp: SoftMDP
    reward_model: TabularRewardModel
    follower: TabularFollower
    true_reward: torch.Tensor
    loss: BradleyTerryLoss

    @property
    def x(self) -> torch.Tensor:
        """The reward parameters."""
        return self.reward_model.x

    def reward_fn(self, x: torch.Tensor) -> torch.Tensor:
        """``x ↦ r_x`` as an ``(S, A)`` table."""
        feats = self.reward_model.features
        return x if feats is None else feats @ x

    def optimal_policy(self) -> torch.Tensor:
        """``π*(x)`` at the current parameters."""
        return solve_soft(self.reward_fn(self.x.detach()), self.mdp).pi

    def pairs(self, num_pairs: int, generator: torch.Generator, pi: torch.Tensor | None = None) -> PreferencePairs:
        """``num_pairs`` on-policy pairs from ``ρ`` (default policy: the follower's), with expected labels."""
        pi = self.follower.pi if pi is None else pi
        states, actions = sample_tuples(pi, self.mdp, self.loss, num_pairs, generator)
        s, a = states.numpy(), actions.numpy()
        true = self.true_reward.numpy()[s, a].astype(np.float32)
        returns = true.sum(-1)
        labels = 1.0 / (1.0 + np.exp(-(returns[:, 0] - returns[:, 1]) / self.loss.label_temperature))
        eye = np.eye(self.mdp.num_states, dtype=np.float32)
        return PreferencePairs(
            obs=eye[s],
            actions=a.astype(np.int64),
            true_rewards=true,
            mask=np.ones(s.shape, dtype=np.float32),
            labels=labels.astype(np.float32),
            iteration=np.ones(num_pairs, dtype=np.int64),
        )

    def buffer(self, num_pairs: int, generator: torch.Generator) -> PreferenceBuffer:
        """A preference buffer holding ``num_pairs`` fresh on-policy pairs."""
        buf = PreferenceBuffer(capacity=num_pairs)
        buf.add(self.pairs(num_pairs, generator))
        return buf

    def on_policy_batch(self, steps_per_env: int) -> TrajectoryBatch:
        """Let the follower learn on the current reward and return its on-policy transitions."""
        self.follower.learn(steps_per_env * self.follower.num_envs)
        return self.follower.collect(steps_per_env)

    def exact_hypergradient(self) -> torch.Tensor:
        """``∇φ(x)`` (SoBiRL Prop. 5.2 at ``π*(x)``)."""
        x = self.x.detach()
        return sobirl_exact(x, self.reward_fn, self.optimal_policy(), self.mdp, self.loss).grad

    def objective(self) -> float:
        """``φ(x)`` exactly (trajectory enumeration at ``π*(x)``)."""
        from bilevel_rl.tabular.estimators_sobirl import expected_trajectory_loss

        x = self.x.detach()
        return float(expected_trajectory_loss(x, self.optimal_policy(), self.reward_fn, self.mdp, self.loss))


def make_rule_lab(
    num_states: int = 4,
    num_actions: int = 2,
    gamma: float = 0.5,
    tau: float = 0.5,
    horizon: int = 3,
    num_features: int = 3,
    seed: int = 0,
    follower_cls: type[TabularFollower] = SoftVIOracle,
    episode_length: int = 20,
    n_envs: int = 8,
    **follower_kwargs: object,
) -> RuleLab:
    """A random RuleLab; the follower is attached to the reward model and has not learned yet."""
    g = torch.Generator().manual_seed(seed)
    mdp = random_mdp(num_states, num_actions, gamma, tau, g)
    feats = torch.randn(num_states, num_actions, num_features, generator=g, dtype=DTYPE)
    model = TabularRewardModel(num_states, num_actions, features=feats, init_scale=0.5, generator=g)
    true_reward = torch.randn(num_states, num_actions, generator=g, dtype=DTYPE)
    config = TabularEnvConfig(n_envs=n_envs, episode_length=episode_length, record_steps=2000)
    follower = follower_cls(mdp, true_reward, config, seed, **follower_kwargs)  # type: ignore[arg-type]
    follower.set_reward_model(model)
    return RuleLab(mdp, model, follower, true_reward, BradleyTerryLoss(true_reward, horizon))
