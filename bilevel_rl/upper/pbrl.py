"""PBRL: penalty-based bilevel RL for RLHF (Shen, Yang, Chen, JMLR 2025, §3–4, App. E.2).

The lower-level constraint is replaced by a penalty (eq. 3.1, L151) and Alg. 1 (L343–351, update 4.4 L336) descends

    F_λ(x, y) = f(x, y) + λ p(x, y),        f = E_{d0, d1 ~ π_y}[ℓ_x(d0, d1)]   (Bradley–Terry, eq. 2.5)

in both variables, with the penalty gradients in closed form at a best response ``π̂ ≈ π*(x)`` (eqs. C.29, C.31):

* **Leader**: ``x ← x − η (∇_x f + w λ_k ∇_x p̂)`` (``w = penalty_weight_x``; E.2's λ = 1/β = 1000 would swamp BT).
  Value penalty (eq. 3.2 L164; Lemma 7(a) L266–277 with C.1 L911): ``∇_x p_V = E_π̂[Σ γ^t ∇r_x] − E_{π_y}[Σ γ^t ∇r_x]``
  from both followers' on-policy episodes (``γ^t`` from the episode start, digest §6.12). Bellman penalty
  (eqs. 3.5–3.7; Lemma 9(a) L304–326): ``∇_x p_B = E_{s~ρ}[(E_{a~π̂} − E_{a~π_y}) ∇_x Q^π̂(s, a)]``. **Choice**
  ``bellman_estimator=depth1`` truncates ``∇_x Q^π̂(s, a) = ∇r_x(s, a) + γ E ∇_x V^π̂(s')`` after its first term
  (dropping an ``O(γ‖π̂ − π_y‖)`` continuation), on the follower's batch states (``bellman_states=all``: ``π_y``'s
  visitation instead of ``ρ``; ``start``: episode starts, ``s ~ ρ``); ``mixed`` is the untruncated estimator of digest
  §2.4 (``a_0 ~ π_y`` then ``π̂`` vs all-``π̂`` rollouts from episode starts, via ``rollouts_from``: tabular only).
* **Follower**: ``∇_y F_λ / λ = −∇_y V^{π_y}_{r_x} + β ∇_y f`` with ``β = 1/λ_k`` (digest §3.4): its own RL step on
  ``r_x`` plus the extra policy loss ``β L_up``, ``L_up = mean_j sg(ℓ_j − b) Σ_{(s,a) ∈ d0_j ∪ d1_j} log π_y(a|s)``
  (score function: ``f`` depends on ``y`` only through the segments, L128–137) on ``policy_loss_pairs`` pairs redrawn
  at every call, by default from the newest phase's pairs (E.2: "16 new pairs per epoch"; older ones are
  off-policy and the paper gives no correction). ``policy_loss_scale`` converts units: 1 for a follower whose loss is
  ``−V(ρ)`` (tabular :class:`SoftPolicyGradient`); SB3's per-sample policy losses are ≈ ``(1 − γ)·(−V(ρ))``, and a
  score-function loss on stored segments is unbounded below (it can push their actions' log-probabilities to −∞), so
  the deep config uses 0.01 (the paper found learning "very sensitive" to β, L1486). The Bellman y-step is the
  same RL step (``p_B(x, ·)`` has the same minimiser ``π*(x)``), not ``∇_y g`` with ``π̂``'s critic.
* **Best response** (``best_response=separate``): ``follower.spawn(seed + 1)`` trained on ``r_x`` only, continued
  (warm start) each iteration; ``shared`` aliases ``π̂ := π_y`` so ``∇_x p = 0`` (the digest's reading of the deep
  run; degenerate for reward shaping, §5.1).

Alg. 1's "penalty constant γ" (L345) is λ and L350 lost the minus sign of (4.4): we descend ``F_λ``.
:class:`PenaltyRule` is shared with :mod:`bilevel_rl.upper.hessian_free` (PBRL-value with λ = 1/σ).
"""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from typing_extensions import override

from bilevel_rl.data.preference_buffer import PreferenceBuffer
from bilevel_rl.data.segments import PreferencePairs
from bilevel_rl.data.trajectories import TrajectoryBatch
from bilevel_rl.followers.base import Follower, Rollouts
from bilevel_rl.reward_models.base import RewardModel
from bilevel_rl.upper.base import SB3_FOLLOWERS
from bilevel_rl.upper.common import (
    LeaderOptimConfig,
    PreferenceRule,
    Surrogate,
    discounted_return_surrogate,
    expected_policy_reward,
    pair_losses,
)


def choice(key: str, value: str, options: tuple[str, ...]) -> None:
    """Refuse ``upper.<key>`` values outside ``options``."""
    if value not in options:
        raise ValueError(f"upper.{key} must be one of {'|'.join(options)}, got {value!r}")


def positive(config: object, *keys: str) -> None:
    """Refuse non-positive ``upper.<key>`` values (``None`` passes)."""
    for key in keys:
        value = getattr(config, key)
        if value is not None and value <= 0:
            raise ValueError(f"upper.{key} must be > 0, got {value}")


@dataclass
class PenaltyFollowerConfig(LeaderOptimConfig):
    """Settings shared by the two-follower penalty rules (PBRL, Hessian-free).

    Attributes:
        best_response_steps: env steps of the best response per outer iteration (``None``: keep pace with the main
            follower, i.e. train it up to the main follower's step count).
        best_response_seed: seed of the spawned best response (``None``: the follower's seed + 1).
        policy_loss_pairs: pairs per call of the follower's extra policy loss (redrawn at each call).
        policy_loss_source: ``latest`` (pairs of the newest phase) or ``buffer`` (all stored pairs).
        policy_loss_scale: multiplies the extra loss's coefficient (units of the follower's policy loss).
        baseline: ``batch_mean`` (``b`` = mean loss of the drawn pairs) or ``none``.
        gamma: discount of the penalty's returns (``None``: the follower's own ``γ``).
        log_prob_min: per-step floor on ``log π(a|s)`` inside the extra loss (``None``: none). Not in the papers: the
            score-function loss on *stored* segments is unbounded below (pushing a pair's actions to zero density
            sends ``log π → −∞``), and on SAC/Hopper it drove the actor to NaN within two iterations; below the floor
            the step contributes no gradient. Tabular checks use ``None`` (exact score function).
        penalty_hinge: use ``max(p̂, 0)`` in the leader loss, i.e. drop ``λ∇p`` on a minibatch whose penalty estimate
            is ``≤ 0`` (not in the papers). ``p ≥ 0`` by definition (the best response is at least as good as the
            follower); a negative estimate means the trained best response is *worse* than the follower, and
            descending on it makes ``p̂`` more negative without bound: on SAC/Hopper at λ = 2 it swamped the
            preference loss (BT loss 0.3 → 11.8, corr(r_φ, r) → −0.77 within 5 iterations). Default ``False``
            (the exact penalty); the deep configs set it.
    """

    best_response_steps: int | None = None
    best_response_seed: int | None = None
    policy_loss_pairs: int = 16
    policy_loss_source: str = "latest"
    policy_loss_scale: float = 1.0
    baseline: str = "batch_mean"
    gamma: float | None = None
    log_prob_min: float | None = None
    penalty_hinge: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        positive(self, "best_response_steps", "policy_loss_pairs")
        choice("policy_loss_source", self.policy_loss_source, ("latest", "buffer"))
        choice("baseline", self.baseline, ("batch_mean", "none"))
        if self.policy_loss_scale < 0:
            raise ValueError(f"upper.policy_loss_scale must be >= 0, got {self.policy_loss_scale}")
        if self.gamma is not None and not 0.0 <= self.gamma < 1.0:
            raise ValueError(f"upper.gamma must be in [0, 1) or null, got {self.gamma}")


@dataclass
class PBRLConfig(PenaltyFollowerConfig):
    """Hyperparameters of PBRL (defaults: value penalty, λ = 2 as in SoBiRL's comparison and PBRL E.1).

    Attributes:
        penalty: ``value`` (eq. 3.2) or ``bellman`` (eqs. 3.5–3.7).
        lam: penalty constant λ (E.1: 2 value, 7 Bellman; E.2: 1/β_0 = 1000).
        lam_schedule: ``constant`` (Thm 11), ``linear`` (``λ + lam_growth·(k−1)``) or ``geometric``
            (``λ·lam_growth^⌊(k−1)/lam_every⌋``) over outer iterations ``k ≥ 1``, capped at ``lam_max``.
        lam_growth: slope (linear) or factor (geometric).
        lam_every: iterations per geometric step (E.2 decays β every 3000 gradient steps, factor unspecified).
        lam_max: cap of λ (``None``: none).
        penalty_weight_x: ``w`` in the leader's ``∇_x f + w λ ∇_x p`` (1: faithful).
        beta: the follower's extra-loss coefficient (``None``: ``1/λ_k``), times ``policy_loss_scale``.
        best_response: ``separate`` (faithful) or ``shared`` (``π̂ := π_y``, ``∇_x p = 0``).
        bellman_estimator: ``depth1`` (truncated, any follower) or ``mixed`` (generative model: tabular).
        bellman_states: ``all`` batch states or ``start`` (episode starts, ``s ~ ρ``) for ``depth1``.
        bellman_max_states: at most this many states per update (``depth1``).
        bellman_rollouts: rollouts per policy (``mixed``).
        bellman_horizon: their length (truncation bias ``O(γ^H)``).
        num_action_samples: actions per state for ``E_{a~π}[r]`` with continuous actions (exact when discrete).
    """

    penalty: str = "value"
    lam: float = 2.0
    lam_schedule: str = "constant"
    lam_growth: float = 1.0
    lam_every: int = 1
    lam_max: float | None = None
    penalty_weight_x: float = 1.0
    beta: float | None = None
    best_response: str = "separate"
    bellman_estimator: str = "depth1"
    bellman_states: str = "all"
    bellman_max_states: int = 2048
    bellman_rollouts: int = 1024
    bellman_horizon: int = 20
    num_action_samples: int = 8

    def __post_init__(self) -> None:
        super().__post_init__()
        choice("penalty", self.penalty, ("value", "bellman"))
        choice("lam_schedule", self.lam_schedule, ("constant", "linear", "geometric"))
        choice("best_response", self.best_response, ("separate", "shared"))
        choice("bellman_estimator", self.bellman_estimator, ("depth1", "mixed"))
        choice("bellman_states", self.bellman_states, ("all", "start"))
        positive(self, "lam", "lam_every", "bellman_max_states", "bellman_rollouts", "bellman_horizon")
        positive(self, "num_action_samples")
        if self.lam_growth < 0 or (self.lam_schedule == "geometric" and self.lam_growth == 0):
            raise ValueError(f"upper.lam_growth must be >= 0 (> 0 for geometric), got {self.lam_growth}")
        if self.lam_max is not None and self.lam_max < self.lam:
            raise ValueError(f"upper.lam_max must be >= upper.lam or null, got {self.lam_max}")
        if self.penalty_weight_x < 0 or (self.beta is not None and self.beta < 0):
            raise ValueError("upper.penalty_weight_x and upper.beta must be >= 0")

    def lam_at(self, k: int) -> float:
        """λ_k at outer iteration ``k ≥ 1``."""
        steps = max(k - 1, 0)
        lam = self.lam
        if self.lam_schedule == "linear":
            lam = self.lam + self.lam_growth * steps
        elif self.lam_schedule == "geometric":
            lam = self.lam * self.lam_growth ** (steps // self.lam_every)
        return lam if self.lam_max is None else min(lam, self.lam_max)


def follower_discount(follower: Follower) -> float:
    """The follower's own discount: SB3 ``model.gamma`` or a tabular ``mdp.gamma``."""
    for owner in ("model", "mdp"):
        gamma = getattr(getattr(follower, owner, None), "gamma", None)
        if gamma is not None:
            return float(gamma)
    raise ValueError(f"upper.gamma: cannot read the discount of {type(follower).__name__}; set upper.gamma")


def rollout_return_surrogate(model: RewardModel, rollouts: Rollouts, gamma: float) -> torch.Tensor:
    """``mean_j Σ_t γ^t mask r_φ(s_jt, a_jt)`` of generative-model rollouts (its φ-gradient estimates ``∇_φ V``)."""
    n, horizon = rollouts.mask.shape
    obs = torch.as_tensor(rollouts.obs, device=model.device).flatten(0, 1)
    rewards = model(obs, torch.as_tensor(rollouts.actions, device=model.device).flatten(0, 1))
    weights = torch.as_tensor(rollouts.mask * gamma ** np.arange(horizon), dtype=rewards.dtype, device=model.device)
    return (rewards * weights.reshape(-1)).sum() / n


class PenaltyRule(PreferenceRule):
    """Two followers and a penalised leader: the plumbing PBRL and the Hessian-free method share.

    Subclasses give the coefficients; the main follower gets ``coef · L_up`` as its extra policy loss (installed in
    :meth:`attach`, fed with the buffer each :meth:`update`) and the best response is spawned in :meth:`attach`, so
    every checkpoint holds it. After a resume the extra loss is idle until the first leader update.
    """

    config: PenaltyFollowerConfig
    needs = ("extra_policy_loss", "spawn")
    separate_best_response = True

    def __init__(self) -> None:
        super().__init__()
        self.best_response: Follower | None = None
        self.buffer: PreferenceBuffer | None = None
        self.loss_idx = np.zeros(0, dtype=np.int64)
        self.br_batch: TrajectoryBatch | None = None
        self.gamma = 0.99
        self.loss_rng = np.random.default_rng(0)

    @abstractmethod
    def penalty_coefficient(self) -> float:
        """Factor of ``∇_x p̂`` in the leader direction at the current iteration."""

    @abstractmethod
    def policy_loss_coefficient(self) -> float:
        """Factor of ``L_up`` in the main follower's policy loss."""

    @override
    def attach(self, follower: Follower, reward_model: RewardModel) -> None:
        super().attach(follower, reward_model)
        self.gamma = self.config.gamma if self.config.gamma is not None else follower_discount(follower)
        if self.separate_best_response:
            seed = self.config.best_response_seed
            self.best_response = follower.spawn(int(getattr(follower, "seed", 0)) + 1 if seed is None else seed)
            self.best_response.set_reward_model(reward_model)
        follower.set_extra_policy_loss(self.policy_loss)

    @override
    def auxiliary_followers(self) -> dict[str, Follower]:
        return {"best_response": self.best_response} if self.best_response is not None else {}

    @override
    def update(
        self,
        buffer: PreferenceBuffer,
        epochs: int,
        rng: np.random.Generator,
        batch: TrajectoryBatch | None = None,
        iteration: int = 0,
    ) -> dict[str, float]:
        self.buffer, self.loss_idx = buffer, np.arange(len(buffer))
        if self.config.policy_loss_source == "latest" and len(buffer):
            its = buffer.get(self.loss_idx).iteration
            self.loss_idx = self.loss_idx[its == its.max()]
        self.loss_rng = np.random.default_rng(int(rng.integers(2**63)))
        return super().update(buffer, epochs, rng, batch=batch, iteration=iteration)

    # ------------------------------------------------------------------ the follower's extra loss (coef · L_up)
    def pair_log_probs(self, follower: Follower, pairs: PreferencePairs, grad: bool) -> torch.Tensor:
        """``(B,)`` ``Σ_{(s,a) ∈ d0 ∪ d1} mask · log π(a|s)`` under ``follower``'s current policy."""
        assert self.reward_model is not None
        dev, b = self.reward_model.device, len(pairs)
        obs = torch.as_tensor(pairs.obs, device=dev).flatten(0, 2)
        logp = follower.action_dist(obs, grad=grad).log_prob(torch.as_tensor(pairs.actions, device=dev).flatten(0, 2))
        if self.config.log_prob_min is not None:
            logp = logp.clamp_min(self.config.log_prob_min)
        keep = torch.as_tensor(pairs.mask, device=logp.device).reshape(-1) > 0
        return torch.where(keep, logp, torch.zeros_like(logp)).reshape(b, -1).sum(1)

    def policy_loss(self) -> torch.Tensor:
        """``coef · mean_j sg(ℓ_j − b) Σ log π_y(a|s)``; its policy gradient is ``coef · ∇_y f`` (score function)."""
        coef = self.policy_loss_coefficient() * self.config.policy_loss_scale
        if self.buffer is None or len(self.loss_idx) == 0 or coef == 0.0 or self.follower is None:
            return torch.zeros((), requires_grad=True)
        assert self.reward_model is not None
        pairs = self.buffer.get(
            self.loss_idx[self.loss_rng.integers(len(self.loss_idx), size=self.config.policy_loss_pairs)]
        )
        with torch.no_grad():
            ell = pair_losses(self.reward_model, pairs)[0]
            ell = ell - ell.mean() if self.config.baseline == "batch_mean" else ell
        score = self.pair_log_probs(self.follower, pairs, grad=True)
        return coef * (ell.to(score.device, score.dtype) * score).mean()

    # ------------------------------------------------------------------ the leader's penalty term
    def train_best_response(self) -> dict[str, float]:
        """Continue the best response on ``r_x`` only; keep its on-policy batch in ``br_batch``."""
        br, main = self.best_response, self.follower
        assert br is not None and main is not None
        steps = self.config.best_response_steps
        steps = max(main.num_timesteps - br.num_timesteps, br.num_envs) if steps is None else steps
        metrics = br.learn(steps)
        self.br_batch = br.collect(max(1, steps // br.num_envs))
        out = {f"upper/best_response/{k.split('/', 1)[-1]}": v for k, v in metrics.items()}
        return out | {"upper/best_response/env_steps": float(br.num_timesteps), "upper/best_response/steps": steps}

    def penalty_surrogate(self) -> torch.Tensor:
        """``DR_φ(π̂ episodes) − DR_φ(π_y episodes)``; its φ-gradient is ``∇_φ p_V`` (Lemma 7(a), C.1)."""
        if self.batch is None or self.br_batch is None or self.reward_model is None:
            raise ValueError("the penalty needs the follower's on-policy batch (rule.update(..., batch=...))")
        m, g = self.reward_model, self.gamma
        return discounted_return_surrogate(m, self.br_batch, g) - discounted_return_surrogate(m, self.batch, g)

    def prepare_penalty(self) -> dict[str, float]:
        """Per-update set-up of :meth:`penalty_surrogate` (rollouts, state samples)."""
        return {}

    def upper_loss(self, pairs: PreferencePairs) -> Surrogate:
        """The ``f`` (or ``G``) part of the leader loss: the mean Bradley–Terry loss of the minibatch."""
        return self.bt_surrogate(pairs)

    @override
    def before_update(self) -> dict[str, float]:
        out = {"upper/policy_loss_coef": self.policy_loss_coefficient() * self.config.policy_loss_scale}
        if self.warmup or self.best_response is None or self.penalty_coefficient() == 0.0:
            return out
        out |= self.train_best_response() | self.prepare_penalty()
        assert self.reward_model is not None
        value = self.penalty_surrogate()
        params = [p for p in self.reward_model.parameters() if p.requires_grad]
        grads = torch.autograd.grad(value, params, allow_unused=True)
        out["upper/penalty_estimate"] = float(value.detach())
        out["upper/penalty_grad_norm"] = sum(float((g**2).sum()) for g in grads if g is not None) ** 0.5
        return out

    @override
    def surrogate(self, pairs: PreferencePairs) -> Surrogate:
        s = self.upper_loss(pairs)
        if self.best_response is not None and self.penalty_coefficient() != 0.0:
            pen = self.penalty_surrogate()
            active = not (self.config.penalty_hinge and float(pen.detach()) <= 0.0)
            s.terms["upper/penalty_active"] = float(active)
            if active:
                s.loss = s.loss + self.penalty_coefficient() * pen
        return s

    @override
    def rule_state(self) -> dict[str, Any]:
        return {"loss_rng": self.loss_rng.bit_generator.state, "loss_idx": torch.as_tensor(self.loss_idx)}

    @override
    def load_rule_state(self, state: dict[str, Any]) -> None:
        if "loss_rng" in state:
            self.loss_rng.bit_generator.state = state["loss_rng"]
        if "loss_idx" in state:
            self.loss_idx = state["loss_idx"].numpy().astype(np.int64)

    @override
    def bind_buffer(self, buffer: PreferenceBuffer) -> None:
        self.buffer = buffer  # a resumed run's extra policy loss draws from the restored pairs at once


class PBRL(PenaltyRule):
    """PBRL with the value or the Bellman penalty (see the module docstring)."""

    name = "pbrl"

    def __init__(self, config: PBRLConfig) -> None:
        super().__init__()
        self.config: PBRLConfig = config
        self.separate_best_response = config.best_response == "separate"
        self.states: torch.Tensor | None = None
        self.mixed: tuple[Rollouts, Rollouts] | None = None

    @classmethod
    @override
    def check_follower(cls, follower_name: str, params: dict[str, Any]) -> str | None:
        mixed = params.get("penalty") == "bellman" and params.get("bellman_estimator") == "mixed"
        if mixed and follower_name in SB3_FOLLOWERS:
            return "upper.bellman_estimator=mixed needs a generative model (tabular followers only); use depth1"
        return None

    def lam(self) -> float:
        """λ_k of the current outer iteration."""
        return self.config.lam_at(self.iteration)

    @override
    def penalty_coefficient(self) -> float:
        return self.config.penalty_weight_x * self.lam() if self.best_response is not None else 0.0

    @override
    def policy_loss_coefficient(self) -> float:
        return self.config.beta if self.config.beta is not None else 1.0 / self.lam()

    @override
    def before_update(self) -> dict[str, float]:
        return {"upper/lambda": self.lam(), "upper/beta": self.policy_loss_coefficient()} | super().before_update()

    @override
    def prepare_penalty(self) -> dict[str, float]:
        c, batch, br, main = self.config, self.batch, self.best_response, self.follower
        if c.penalty == "value":
            return {}
        assert batch is not None and br is not None and main is not None and self.reward_model is not None
        starts = batch.obs[batch.episode_starts.astype(bool)]
        if c.bellman_estimator == "mixed":
            if len(starts) == 0:
                raise ValueError("the follower batch holds no episode start; increase trainer.steps_per_iter")
            obs0 = starts[self.rng.integers(len(starts), size=c.bellman_rollouts)]
            first = main.action_dist(obs0).sample().cpu().numpy()
            h = c.bellman_horizon
            self.mixed = (br.rollouts_from(obs0, None, h, self.rng), br.rollouts_from(obs0, first, h, self.rng))
            return {}
        states = starts if c.bellman_states == "start" else batch.flat_obs()
        if len(states) > c.bellman_max_states:
            states = states[self.rng.choice(len(states), c.bellman_max_states, replace=False)]
        self.states = torch.as_tensor(states, device=self.reward_model.device)
        return {"upper/bellman_states": float(len(states))}

    @override
    def penalty_surrogate(self) -> torch.Tensor:
        """``∇_φ`` of this is ``∇_φ p̂`` of the configured penalty and estimator."""
        c, model, br, main = self.config, self.reward_model, self.best_response, self.follower
        if c.penalty == "value":
            return super().penalty_surrogate()
        assert model is not None and br is not None and main is not None
        if c.bellman_estimator == "mixed":
            assert self.mixed is not None
            hat, mix = self.mixed
            return rollout_return_surrogate(model, hat, self.gamma) - rollout_return_surrogate(model, mix, self.gamma)
        assert self.states is not None
        k = c.num_action_samples
        return (
            expected_policy_reward(model, br, self.states, k) - expected_policy_reward(model, main, self.states, k)
        ).mean()
