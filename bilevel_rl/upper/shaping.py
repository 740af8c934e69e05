"""Estimator pieces of the rules under ``objective=leader_reward`` (reward shaping; HPGD eq. (7)–(8)).

The leader maximises ``J(φ) = E^{π*_φ}_{s_0~μ}[Σ_t γ_L^t r̄_φ(s_t, a_t)]`` where the follower plays the soft-optimal
policy of ``r_f = c_env r_visible + σ r̃_φ`` at temperature ``λ``. HPGD eq. (8) (Prop. 1; no ``∇ log P`` term, the
dynamics do not depend on ``φ``) with Prop. 2's ``∇_φ log π*_φ = (1/λ) ∂_φ A_f`` gives

    ∇J = E[Σ_t γ_L^t ((1/λ) ∂_φ A_f(s_t, a_t) Q̄(s_t, a_t) + ∂_φ r̄_φ(s_t, a_t))],
    ∂_φ A_f(s, a) = ∂_φ Q_f(s, a) − E_{a'~π} ∂_φ Q_f(s, a'),   ∂_φ Q_f(s, a) = σ E[Σ_k γ_F^k ∇r̃(s_k, a_k) | s, a].

Because ``E_{a~π}[∂_φ A_f(s, a)] = 0`` and ``E_{a~π}[Ā(s, a)] = 0``, ``Q̄`` can be replaced by the leader's advantage
``Ā`` and ``∂_φ A_f`` by ``∂_φ Q_f``. Every term is linear in ``∇r̃``, so each rule's update is the gradient of a
surrogate (detached weights times ``r̃``). The functions here build those surrogates; the rules (``hpgd``,
``sobirl``, ``pbrl``, ``meta_gradient``) combine them, and :func:`leader_reward_update` takes the steps.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from bilevel_rl.objectives.leader_reward import LeaderBatch, LeaderData, follower_scale, shaping_cost
from bilevel_rl.reward_models.base import EnvParameterModel, RewardModel
from bilevel_rl.upper.estimators import expected_policy_reward

if TYPE_CHECKING:
    from bilevel_rl.followers.base import Follower
    from bilevel_rl.upper.base import LeaderStep
    from bilevel_rl.upper.preference_rule import PreferenceRule

log = logging.getLogger(__name__)

LeaderLoss = Callable[[LeaderBatch], tuple[torch.Tensor, dict[str, float]]]
"""One leader loss on the newest batch (descending it ascends the leader objective) and its diagnostics."""


def forward_trace(weights: np.ndarray, starts: np.ndarray, decay: float) -> np.ndarray:
    """``c_k = w_k + decay · c_{k−1}`` along time ``(T, E)``, reset at episode starts.

    ``Σ_t w_t Σ_{k≥t} decay^{k−t} x_k = Σ_k c_k x_k`` within each episode.
    """
    if decay == 0.0:
        return weights.copy()
    out = np.zeros_like(weights, dtype=np.float64)
    carry = np.zeros(weights.shape[1], dtype=np.float64)
    for t in range(weights.shape[0]):
        carry = weights[t] + decay * np.where(starts[t], 0.0, carry)
        out[t] = carry
    return out


def flat_tensors(model: RewardModel, data: LeaderBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """The batch's observations and actions, flat, on the model's device."""
    dev = model.device
    return torch.as_tensor(data.batch.flat_obs(), device=dev), torch.as_tensor(data.batch.flat_actions(), device=dev)


def score_surrogate(
    model: RewardModel,
    follower: Follower,
    data: LeaderBatch,
    weights: np.ndarray,
    trace_decay: float,
    action_samples: int,
    generator: torch.Generator,
) -> torch.Tensor:
    """``Σ_t w_t ∂̂A_f(s_t, a_t) / σ`` as a surrogate: ``Σ_k c_k r̃(s_k, a_k) − Σ_t w_t E_{a'~π} r̃(s_t, a')``.

    ``∂̂Q_f(s_t, a_t) = σ Σ_{k≥t} trace_decay^{k−t} ∇r̃(s_k, a_k)`` within the episode (``trace_decay = γ_F κ``: 0 keeps
    only the first step, ``γ_F`` the Monte-Carlo sum to the end of the recorded episode); ``c`` is
    :func:`forward_trace` of ``w``. The ``E_{a'}`` term is ``∂V_f``'s first step; it has mean zero against an exact
    advantage and lowers the variance.
    """
    obs, actions = flat_tensors(model, data)
    c = forward_trace(weights, data.batch.episode_starts.astype(bool), trace_decay).reshape(-1)
    w = weights.reshape(-1)
    rows, active = np.flatnonzero(c != 0), np.flatnonzero(w != 0)
    total = torch.zeros((), device=model.device)
    if len(rows):
        coef = torch.as_tensor(c[rows], device=model.device, dtype=torch.float32)
        total = total + (coef * model(obs[rows], actions[rows])).sum()
    if len(active):
        expected = expected_policy_reward(model, follower, obs[active], action_samples, generator)
        total = total - (torch.as_tensor(w[active], device=model.device, dtype=expected.dtype) * expected).sum()
    return total


def direct_cost_loss(
    model: RewardModel, data: LeaderBatch, leader: LeaderData, state_weights: np.ndarray
) -> torch.Tensor:
    """``Σ_t ω_t β cost(σ r̃(s_t, a_t))``: minus the direct term ``∂_φ r̄`` of eq. (8) (zero without a cost)."""
    config = leader.config
    if config.cost == "none":
        return torch.zeros((), device=model.device)
    obs, actions = flat_tensors(model, data)
    paid = follower_scale(model, leader.mix) * model(obs, actions)
    omega = torch.as_tensor(state_weights.reshape(-1), device=model.device, dtype=paid.dtype)
    return config.cost_coef * (omega * shaping_cost(paid, config.cost)).sum()


def environment_loss(
    model: EnvParameterModel,
    follower: Follower,
    data: LeaderBatch,
    omega: np.ndarray,
    response_weights: np.ndarray | None,
    trace_decay: float,
    follower_gamma: float,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Minus the terms of the leader's gradient that exist because ``x`` enters the environment (HPGD Thm. 1, eq. 8).

    With ``J(x) = E^{π*_x, P_x}[Σ_t γ_L^t r̄_x(s_t, a_t)]`` the log-derivative of the trajectory density adds, to the
    policy term of eq. (8), the direct and the transition terms

        Σ_t ω_t ∇_x r̄_x(s_t, a_t)  +  Σ_t γ_L ω_t (V̄(s_{t+1}) − V̄(s_t)) ∇_x log P_x(s_{t+1}|s_t, a_t),

    (``V̄(s_t)`` a baseline: ``E[∇ log P(·|s, a)] = 0``), and ``∂_x Q_f`` of the policy term gains
    ``γ_F E[V_f(s') ∇_x log P_x(s'|s, a)]`` at every step of the follower's future (the soft Bellman equation
    ``Q_f = r_x + γ_F E_{P_x} V_f`` differentiated in ``x``): with the forward trace ``c`` of the response weights
    ``ω_t Ā_t / λ`` that is ``Σ_k c_k γ_F (V_f(s_{k+1}) − V_f(s_k)) ∇_x log P_x(s_{k+1}|s_k, a_k)``.
    ``response_weights=None`` leaves that follower-response part out (what the HPGD authors' tax-design code
    computes for the income tax). Transitions whose successor is not in the batch (episode ends, the last row) are
    skipped. ``V̄`` are the critic's values of the gather (``returns − advantages``).
    """
    batch, dev = data.batch, model.device
    obs, actions = flat_tensors(model, data)
    leader_values = (data.returns - data.advantages).reshape(-1)
    direct = (torch.as_tensor(omega.reshape(-1), device=dev) * model.leader_reward(obs, actions).double()).sum()
    terms = {"upper/direct_reward_term": float(direct.detach())}
    loss = -direct
    if not model.enters_transitions:
        return loss, terms
    num_steps, num_envs = batch.true_rewards.shape
    has_next = ~batch.dones.astype(bool)
    has_next[-1] = False
    idx = np.flatnonzero(has_next.reshape(-1))
    if len(idx) == 0:
        return loss, terms
    nxt = idx + num_envs  # time-major flat index of (t + 1, e)
    log_p = model.transition_log_prob(obs[idx], actions[idx], obs[nxt]).double()
    coef = data.gamma * omega.reshape(-1)[idx] * (leader_values[nxt] - leader_values[idx])
    if response_weights is not None:
        c = forward_trace(response_weights, batch.episode_starts.astype(bool), trace_decay).reshape(-1)
        v_f = follower.soft_state_values(batch.flat_obs())
        coef = coef + c[idx] * follower_gamma * (v_f[nxt] - v_f[idx])
    transition = (torch.as_tensor(coef, device=dev) * log_p).sum()
    terms["upper/transition_term"] = float(transition.detach())
    return loss - transition, terms


def segment_weights(data: LeaderBatch, length: int | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cut the batch into segments (whole episodes when ``length`` is ``None``) that start at a known index.

    Returns:
        ``(segment id (T, E), -1 for steps outside any segment; within-segment discount γ_L^h (T, E);
        discounted segment returns of r̄ (num_segments,))``.
    """
    batch = data.batch
    num_steps, num_envs = data.leader_rewards.shape
    seg = np.full((num_steps, num_envs), -1, dtype=np.int64)
    disc = np.zeros((num_steps, num_envs))
    returns: list[float] = []
    for e in range(num_envs):
        current, h = -1, 0
        for t in range(num_steps):
            if batch.episode_starts[t, e] or (current >= 0 and length is not None and h == length):
                current, h = len(returns), 0
                returns.append(0.0)
            if current >= 0:
                seg[t, e] = current
                disc[t, e] = data.gamma**h
                returns[current] += disc[t, e] * float(data.leader_rewards[t, e])
                h += 1
                if batch.dones[t, e]:
                    current = -1
    return seg, disc, np.asarray(returns, dtype=np.float64)


def leader_reward_update(rule: PreferenceRule, step: LeaderStep, loss_fn: LeaderLoss) -> dict[str, float]:
    """``step.epochs`` full-batch leader steps on ``loss_fn`` (the rule's optimiser; global-norm clipping).

    A step whose gradient is not finite is skipped and counted, as in the preference rules.
    """
    assert rule.reward_model is not None and rule.optimizer is not None
    model, opt = rule.reward_model, rule.optimizer
    data = step.leader.require(rule.name)
    model.train()
    max_norm = rule.config.max_grad_norm if rule.config.max_grad_norm is not None else float("inf")
    losses, norms = [], []
    terms: dict[str, float] = {}
    for _ in range(step.epochs):
        loss, terms = loss_fn(data)
        if not loss.requires_grad:  # nothing depends on the model this step (e.g. no weighted step in the batch)
            continue
        opt.zero_grad(set_to_none=True)
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
        if not torch.isfinite(norm):
            opt.zero_grad(set_to_none=True)
            rule.nonfinite_steps += 1
            log.warning("%s: non-finite leader gradient, step skipped (%d so far)", rule.name, rule.nonfinite_steps)
            continue
        opt.step()
        losses.append(float(loss.detach()))
        norms.append(float(norm))
    return terms | {
        "upper/loss": float(np.mean(losses)) if losses else float("nan"),
        "upper/grad_norm": float(np.mean(norms)) if norms else float("nan"),
        "upper/nonfinite_steps": float(rule.nonfinite_steps),
    }


def normalised_advantages(data: LeaderBatch) -> np.ndarray:
    """The leader's advantages scaled to unit standard deviation over the batch (as PPO scales its own)."""
    adv = data.advantages
    return adv / max(float(adv.std()), 1e-8)


def check_leader_data(data: Any, rule: str) -> LeaderData:
    """``data`` as :class:`LeaderData`, or a one-line error naming the rule."""
    if not isinstance(data, LeaderData):
        raise TypeError(f"upper={rule}: this path needs objective=leader_reward, got data {type(data).__name__}")
    return data
