"""Estimator pieces shared by the leader rules (no rule imports another rule; they all import from here).

Every hypergradient estimator here is linear in ``∇r_φ``, so each is the gradient of a *surrogate*: detached
weights times rewards, summed, one ``backward`` (SoBiRL App. J.1, the practical estimator eq. (99); HPGD Prop. 2).
Leader-side samples of the follower's actions are drawn with the leader's own ``torch.Generator``
(:func:`sample_actions`), never from the global torch stream the follower trains with.
"""

from __future__ import annotations

from collections.abc import Sequence

import gymnasium as gym
import numpy as np
import torch

from bilevel_rl.capabilities import Capability
from bilevel_rl.data.segments import PreferencePairs
from bilevel_rl.data.trajectories import TrajectoryBatch
from bilevel_rl.followers.base import Follower, Rollouts
from bilevel_rl.objectives.preferences import bradley_terry_loss
from bilevel_rl.reward_models.base import RewardModel

Dist = torch.distributions.Distribution


def sample_actions(dist: Dist, num: int, generator: torch.Generator) -> torch.Tensor:
    """``num`` samples ``(num, B, *act)`` of a policy distribution, drawn with ``generator`` (CPU).

    Supports what followers return from ``action_dist``: ``Categorical``, ``Normal`` / ``Independent(Normal)``, and a
    ``TransformedDistribution`` over one of those (SAC's squashed Gaussian).
    """
    if isinstance(dist, torch.distributions.Categorical):
        probs = dist.probs.detach()
        idx = torch.multinomial(probs.cpu().double(), num, replacement=True, generator=generator)
        return idx.T.to(probs.device)
    transforms: list[torch.distributions.Transform] = []
    base: Dist = dist
    if isinstance(base, torch.distributions.TransformedDistribution):
        transforms = list(base.transforms)
        base = base.base_dist
    if isinstance(base, torch.distributions.Independent):
        base = base.base_dist
    if not isinstance(base, torch.distributions.Normal):
        raise TypeError(f"cannot sample {type(dist).__name__} with an explicit generator")
    loc, scale = base.loc.detach(), base.scale.detach()
    eps = torch.randn((num, *loc.shape), generator=generator, dtype=loc.dtype)
    x = loc + scale * eps.to(loc.device)
    for t in transforms:
        x = t(x)
    return x


def pair_tensors(model: RewardModel, pairs: PreferencePairs) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(obs, actions, mask)`` of a pair batch as tensors on the model's device: ``(B, 2, H, ...)``."""
    dev = model.device
    return (
        torch.as_tensor(pairs.obs, device=dev),
        torch.as_tensor(pairs.actions, device=dev),
        torch.as_tensor(pairs.mask, device=dev),
    )


def pair_losses(model: RewardModel, pairs: PreferencePairs) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-pair Bradley–Terry losses ``(B,)``, predicted returns ``(B, 2)`` and labels ``(B,)``."""
    obs, actions, mask = pair_tensors(model, pairs)
    returns = model.segment_returns(obs, actions, mask)
    labels = torch.as_tensor(pairs.labels, device=model.device)
    return bradley_terry_loss(returns, labels), returns, labels


def expected_policy_reward(
    model: RewardModel, follower: Follower, obs: torch.Tensor, num_samples: int, generator: torch.Generator
) -> torch.Tensor:
    """``E_{a'~π(·|s)}[r_φ(s, a')]`` for a flat batch ``(N, *obs_shape)`` → ``(N,)``, differentiable in ``φ``.

    Discrete actions: the exact sum ``Σ_a π(a|s) r_φ(s, a)``. Continuous: the mean over ``num_samples`` actions
    drawn from the follower's current policy with ``generator`` (no gradient flows to the policy), clipped to the
    action space as the environment clips them.
    """
    dist = follower.action_dist(obs)
    if isinstance(dist, torch.distributions.Categorical):
        probs = dist.probs.to(obs.dtype if obs.is_floating_point() else torch.float32)
        n, num_actions = probs.shape
        per_action = model.action_rewards(obs)  # one pass for per-action-head models (the papers' Atari CNNs)
        if per_action is not None:
            return (probs.to(per_action.dtype) * per_action).sum(dim=1)
        all_actions = torch.arange(num_actions, device=obs.device).repeat(n)
        rewards = model(obs.repeat_interleave(num_actions, dim=0), all_actions).reshape(n, num_actions)
        return (probs.to(rewards.dtype) * rewards).sum(dim=1)
    samples = sample_actions(dist, num_samples, generator)  # (K, N, *act_shape)
    space = follower.action_space
    if isinstance(space, gym.spaces.Box):  # the env executes clipped actions (PPO/A2C Gaussians are unbounded)
        low = torch.as_tensor(space.low, device=samples.device, dtype=samples.dtype)
        high = torch.as_tensor(space.high, device=samples.device, dtype=samples.dtype)
        samples = torch.maximum(torch.minimum(samples, high), low)
    k, n = samples.shape[:2]
    rep = obs.unsqueeze(0).expand(k, *obs.shape).reshape(k * n, *obs.shape[1:])
    rewards = model(rep, samples.reshape(k * n, *samples.shape[2:]).to(obs.dtype)).reshape(k, n)
    return rewards.mean(dim=0)


def discounted_return_surrogate(model: RewardModel, batch: TrajectoryBatch, gamma: float) -> torch.Tensor:
    """``(1/#episodes) Σ_steps γ^t r_φ(s_t, a_t)``: its φ-gradient estimates ``∇_φ V^π_{r_φ}(ρ)`` (PBRL C.1)."""
    w, episodes = batch.start_discounts(gamma)
    if episodes == 0:
        raise ValueError("the follower batch holds no episode start; increase trainer.steps_per_iter")
    dev = model.device
    obs = torch.as_tensor(batch.flat_obs(), device=dev)
    actions = torch.as_tensor(batch.flat_actions(), device=dev)
    weights = torch.as_tensor(w.reshape(-1), dtype=torch.float32, device=dev)
    keep = weights > 0
    return (model(obs[keep], actions[keep]) * weights[keep]).sum() / episodes


def rollout_return_surrogate(model: RewardModel, rollouts: Rollouts, gamma: float) -> torch.Tensor:
    """``mean_j Σ_t γ^t mask r_φ(s_jt, a_jt)`` of generative-model rollouts (its φ-gradient estimates ``∇_φ V``)."""
    n, horizon = rollouts.mask.shape
    obs = torch.as_tensor(rollouts.obs, device=model.device).flatten(0, 1)
    rewards = model(obs, torch.as_tensor(rollouts.actions, device=model.device).flatten(0, 1))
    weights = torch.as_tensor(rollouts.mask * gamma ** np.arange(horizon), dtype=rewards.dtype, device=model.device)
    return (rewards * weights.reshape(-1)).sum() / n


def reward_scale(model: RewardModel) -> float:
    """The factor the follower sees on the raw reward (``relabel`` multiplies by it when normalising)."""
    return float(model.reward_scale) if model.normalize else 1.0


def live_temperature(follower: Follower, rule: str) -> float:
    """The follower's entropy temperature read now (SAC's α moves while it learns); must stay > 0."""
    lam = float(follower.temperature)
    if not (lam > 0 and np.isfinite(lam)):
        raise ValueError(
            f"upper={rule} needs a follower temperature > 0, got {lam} "
            "(SAC alpha, PPO/A2C follower.algo_kwargs.ent_coef, tabular tau)"
        )
    return lam


def rule_temperature(follower: Follower, configured: float | None, rule: str) -> float:
    """The ``λ`` a rule divides by: ``configured`` when set, else the follower's live temperature (must be > 0).

    ``objective.follower_temperature`` configures it for followers without an entropy temperature (PPO/A2C with
    ``ent_coef = 0``) under ``objective=leader_reward``.
    """
    return float(configured) if configured is not None else live_temperature(follower, rule)


def rule_discount(follower: Follower, configured: float | None) -> float:
    """``configured`` (``upper.gamma``), else the follower's own discount (requires Capability.GAMMA)."""
    if configured is not None:
        return float(configured)
    if Capability.GAMMA not in follower.capabilities:
        raise ValueError(f"upper.gamma: {type(follower).__name__} has no discount of its own; set upper.gamma")
    return float(follower.gamma)


def implicit_weights(losses: torch.Tensor, keep: torch.Tensor, baseline: bool) -> torch.Tensor:
    """``(ℓ_p − b_p) / n`` on the kept pairs (0 elsewhere), ``b_p`` the leave-one-out mean of the other kept pairs."""
    ell = losses.detach() * keep
    n = int(keep.sum())
    if n == 0:
        return torch.zeros_like(ell)
    if baseline and n > 1:
        ell = (ell - (ell.sum() - ell) / (n - 1)) * keep
    return ell / n


def kept_pairs(pairs: PreferencePairs, mode: str, iteration: int, device: torch.device) -> torch.Tensor:
    """``(B,)`` 0/1 mask of the pairs that enter an implicit (score) term: ``all``, or those of ``iteration``."""
    keep = np.ones(len(pairs)) if mode == "all" else (pairs.iteration == iteration).astype(np.float64)
    return torch.as_tensor(keep, device=device)


def grad_norm(value: torch.Tensor, params: Sequence[torch.Tensor]) -> float:
    """``‖∇ value‖`` over ``params`` (keeps the graph); 0 when ``value`` does not depend on them."""
    if not value.requires_grad:
        return 0.0
    grads = torch.autograd.grad(value, list(params), retain_graph=True, allow_unused=True)
    return float(sum(float((g.detach().double() ** 2).sum()) for g in grads if g is not None) ** 0.5)
