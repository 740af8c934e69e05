"""Hessian-free penalty method (Gaur, Bedi, Pasupathy, Aggarwal, arXiv 2503.17644 v1, Alg. 1 corrected).

The hyper-objective ``Φ(φ) = G(φ, λ*(φ))`` (eq. 7) is replaced by the value-penalty proxy (eq. 10, §3.1)

    Φ_σ(φ) = min_λ G(φ, λ) + (J(φ, λ*(φ)) − J(φ, λ)) / σ,      λ*_σ(φ) = argmax_λ h_σ,  h_σ = J − σ G  (§3.1)

whose gradient by Danskin's theorem is (eq. 11, with ``∇_φ G`` at ``λ*_σ``; docs/theory/penalty_methods.md §2.1)

    d = ∇_φ G(φ, λ') + (1/σ) (∇_φ J(φ, λ) − ∇_φ J(φ, λ')),     ∇_φ J(φ, λ) = E_{π_λ}[Σ_i γ^{i−1} ∇_φ r_φ(s_i, a_i)]

(eq. 12, Lemma 5), with two followers: ``λ ≈ λ*(φ)`` trained on ``r_φ`` and ``λ' ≈ λ*_σ(φ)`` trained on ``r_φ`` with the
extra policy loss ``σ L_up`` (``L_up``: the score-function surrogate of ``G``, so ``λ'`` ascends ``J − σ G``).
``G`` is the Bradley–Terry loss on segment pairs (eq. 6's linear probability of the correct label replaced by the
BCE of every other rule here; the analysis only needs unbiased ``∇G``, Assumption 5).

**This is PBRL's value penalty with λ_PBRL = 1/σ**: the plumbing (best-response follower, extra policy loss,
discounted-return surrogates) is :mod:`bilevel_rl.upper.penalty`.

Choices (each configurable where the paper is inconsistent):

* **Main follower = λ'** (the penalised follower; evaluated on the true reward and labelled by the trainer), the
  best response **λ** is the auxiliary follower ``follower.spawn(seed + 1)``. The trainer's pairs therefore come from
  ``λ'``, which is exactly where Danskin evaluates ``∇_φ G`` (``grad_G_at=sigma_follower``, no extra labels).
  ``grad_G_at=star_follower`` (eq. 11 / Alg. 1 l.15) reweights the same pairs to ``λ`` by self-normalised importance
  weights ``Π_{(s,a) ∈ d0 ∪ d1} π_λ(a|s) / π_λ'(a|s)`` (both O(σ)-consistent with ``∇Φ``; ESS is logged).
* **Sign**: Alg. 1 l.15 (§4) and Alg. 3 l.9 (§6) print ``−(1/σ)(…)``; eq. (11), Danskin and PBRL give
  ``+``. ``penalty_sign=corrected`` (default) uses ``+``; ``printed`` reproduces the misprint, which ascends the
  penalty and diverges (docs/theory/penalty_methods.md §2.2; :mod:`bilevel_rl.tabular.repro.hessian_free`), and
  warns.
* Alg. 1 l.7–8 route ``d'_k``, ``Q`` and ``λ_t^k`` where ``d_k``, ``Q'`` and ``λ'_t^k`` are meant (Alg. 3 l.6
  updates ``λ`` with ``d_k``); we follow the derivation: ``λ`` is trained on ``J`` only, ``λ'`` on ``J − σ G``
  with its own critic and ``∇_λ G`` at ``λ'`` (docs/theory/penalty_methods.md §2.3). Both followers are
  warm-started across outer iterations (Alg. 1 gives no initial ``λ'``). Deviation: the followers use their own
  optimisers (SB3's Adam), not Alg. 1's normalised ``τ_1/k`` steps.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal

import torch
from typing_extensions import override

from bilevel_rl.data.segments import PreferencePairs
from bilevel_rl.upper.base import LeaderStep
from bilevel_rl.upper.estimators import pair_losses
from bilevel_rl.upper.penalty import PenaltyFollowerConfig, PenaltyInputs, PenaltyRule, PreferencePolicyLoss
from bilevel_rl.upper.preference_rule import Surrogate

log = logging.getLogger(__name__)


@dataclass
class HessianFreeConfig(PenaltyFollowerConfig):
    """Hyperparameters of the Hessian-free penalty method (see the module docstring and :class:`PenaltyFollowerConfig`).

    Attributes:
        sigma: penalty constant ``σ > 0`` (proxy bias O(σ), variance O(1/σ²); 0.5 = PBRL's λ = 2).
        penalty_sign: ``corrected`` (eq. 11) or ``printed`` (Alg. 1 l.15; diverges, reproduction only).
        grad_G_at: ``sigma_follower`` (``λ'``, Danskin-exact) or ``star_follower`` (``λ``, importance-weighted).
    """

    name: str = "hessian_free"
    sigma: float = 0.5
    penalty_sign: Literal["corrected", "printed"] = "corrected"
    grad_G_at: Literal["sigma_follower", "star_follower"] = "sigma_follower"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.sigma <= 0:
            raise ValueError(f"upper.sigma: must be > 0, got {self.sigma}")


class HessianFree(PenaltyRule):
    """Two followers (λ: best response, λ': maximiser of ``J − σG``) and the first-order reward step ``d``."""

    name = "hessian_free"
    config: HessianFreeConfig

    def __init__(self, config: HessianFreeConfig) -> None:
        self.config = config
        super().__init__()
        if config.penalty_sign == "printed":
            log.warning(
                "upper.penalty_sign=printed: Alg. 1 l.15's sign makes the reward ascend the penalty and diverges "
                "(docs/theory/penalty_methods.md §2.2); use it only to reproduce the misprint"
            )

    @override
    def penalty_coefficient(self) -> float:
        return (1.0 if self.config.penalty_sign == "corrected" else -1.0) / self.config.sigma

    @override
    def policy_loss_coefficient(self) -> float:
        return self.config.sigma

    @override
    def prepare(self, step: LeaderStep) -> tuple[PenaltyInputs | None, dict[str, float]]:
        prepared, out = super().prepare(step)
        return prepared, {"upper/sigma": self.config.sigma} | out

    @override
    def upper_loss(self, pairs: PreferencePairs, step: LeaderStep) -> Surrogate:
        if self.config.grad_G_at == "sigma_follower":
            return self.bt_surrogate(pairs)
        assert self.reward_model is not None and self.best_response is not None and self.follower is not None
        bce, returns, labels = pair_losses(self.reward_model, pairs)
        assert isinstance(self.policy_loss, PreferencePolicyLoss)
        with torch.no_grad():
            log_w = self.policy_loss.log_probs(self.best_response.follower, pairs, grad=False)
            log_w = log_w - self.policy_loss.log_probs(self.follower, pairs, grad=False)
            w = torch.softmax(log_w.to(bce.device, bce.dtype), dim=0)  # self-normalised, sums to 1
        loss = (w * bce).sum()
        terms = {
            "upper/bt_loss": float(bce.mean().detach()),
            "upper/bt_loss_weighted": float(loss.detach()),
            "upper/is_ess_fraction": float(1.0 / (w**2).sum() / len(w)),
        }
        return Surrogate(loss, returns, labels, terms)
