"""Stoc-SoBiRL: SoBiRL's hypergradient with STORM-type momentum (SoBiRL Algorithms 3 and 4, App. I).

Each leader step ``k`` draws fresh samples ``D_k`` (a minibatch of pairs plus the estimator's action samples or
rollouts, :meth:`~bilevel_rl.upper.score_term.ScoreTerm.draw`), and with ``g(x; D)`` the SoBiRL estimate (eq. 99 or
eq. 14, see :mod:`bilevel_rl.upper.score_term`) forms, eq. (81) (§6 and App. I.1)::

    h_k = g(x_k; D_k) + (1 − η_k)(h_{k−1} − g(x_{k−1}; D_k)),         x_{k+1} = x_k − β_k h_k

(the paper's ``μ_k`` is ``η_k`` here). The correction re-evaluates the *new* samples at the *previous* reward
parameters: a copy of ``x_{k−1}`` is kept and the surrogate is evaluated there with
``torch.func.functional_call``. For fixed samples the estimate depends on ``(x, π)`` only through
``l(·; x)``, ``∇l(·; x)`` and ``∇r(x)`` (Lemma I.3, App. I.3), so ``π_{k−1}`` enters only through the samples;
with the exact discrete expectation the weights ``π_k(a'|s)`` count as part of ``D_k`` and ``τ_k`` is used in both
evaluations (choice; identical within one leader update, where the follower does not move). ``h_1 = g(x_1; D_1)``
(Algorithm 4 leaves the input ``h_0`` open). The warm-up (iteration 0) is plain Bradley–Terry and does not count.

The step direction ``h_k`` is handed to the optimiser as the gradient: the surrogate returned to the minibatch loop
is ``⟨sg(h_k), x⟩`` shifted to the value of SoBiRL's surrogate. Clipping (``max_grad_norm``) acts on the applied
step only; the momentum keeps the unclipped ``h_k``.

Schedules (eq. 93, Theorem I.7): ``schedule=paper`` uses ``β_k = lr · ((n_β + 1)/(n_β + k))^{1/3}`` (the paper's
``β_k = (n_β + k)^{-1/3}`` rescaled so that ``β_1 = lr``) and ``η_k = max{eta, 1 − β̂_{k−1}²}`` with
``β̂_k = (n_β + k)^{-1/3}``, which is eq. 93 at ``eta = 15/16``. Note that eq. 93 makes ``η_k ≥ 15/16``, i.e. a
momentum weight ``1 − η_k ≤ 1/16`` that tends to 0 (the theory pairs it with ``M = O(K^{4/3})`` samples per
step). ``schedule=constant`` keeps ``lr`` and ``eta`` fixed; ``eta = 1`` is SoBiRL exactly.

Optimiser (choice): AdamW with SoBiRL's J.2 values by default, i.e. ``h_k`` replaces the gradient fed to Adam.
Algorithm 4, line 5, is a plain step ``x ← x − β_k h_k``: that is ``optimizer=sgd`` (used by the exact tests). The
paper has no deep Stoc-SoBiRL experiment; on a tiny Pendulum run plain SGD at ``lr = 1e-2`` diverged within two
iterations (the score term is linear in ``r`` and scaled by ``σ/τ ≈ 10`` there), while AdamW's normalised step
stays bounded. Adam's own first moment then averages ``h_k`` further.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch.func import functional_call
from typing_extensions import override

from bilevel_rl.data.segments import PreferencePairs
from bilevel_rl.schedules import storm_step, storm_weight
from bilevel_rl.upper.base import LeaderStep
from bilevel_rl.upper.preference_rule import Surrogate
from bilevel_rl.upper.score_term import ScoreTermConfig, ScoreTermRule, surrogate_loss


@dataclass
class StocSoBiRLConfig(ScoreTermConfig):
    """Hyperparameters of Stoc-SoBiRL; the estimator settings are :class:`ScoreTermConfig`'s.

    Attributes:
        eta: STORM weight ``η`` (the paper's ``μ``) in ``(0, 1]``; the floor of ``η_k`` under ``schedule=paper``.
        schedule: ``paper`` (eq. 93: decaying ``β_k`` and ``1 − η_k``) or ``constant``.
        n_beta: ``n_β`` of eq. 93 (the paper needs an integer ``n_β ≥ 3``).
    """

    name: str = "stoc_sobirl"
    eta: float = 15 / 16
    schedule: Literal["paper", "constant"] = "paper"
    n_beta: int = 3

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 < self.eta <= 1.0:
            raise ValueError(f"upper.eta must be in (0, 1], got {self.eta}")
        if int(self.n_beta) != self.n_beta or self.n_beta < 3:
            raise ValueError(f"upper.n_beta must be an integer >= 3 (SoBiRL eq. 93), got {self.n_beta}")


def _norm(tensors: list[torch.Tensor]) -> float:
    """Global Euclidean norm of a list of tensors."""
    return float(torch.sqrt(torch.stack([(t.detach() ** 2).sum() for t in tensors]).sum()))


class StocSoBiRL(ScoreTermRule):
    """SoBiRL's score-term estimator with the STORM momentum of Algorithm 4."""

    name = "stoc_sobirl"
    config: StocSoBiRLConfig

    def __init__(self, config: StocSoBiRLConfig) -> None:
        super().__init__(config)
        self.steps_taken = 0  # leader steps k taken after the warm-up
        self.momentum: dict[str, torch.Tensor] | None = None  # h_{k-1}
        self.prev_params: dict[str, torch.Tensor] | None = None  # x_{k-1}
        self._pending: tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]] | None = None

    def schedule(self, k: int) -> tuple[float, float]:
        """``(β_k, η_k)`` for leader step ``k ≥ 1``."""
        c = self.config
        if c.schedule == "constant":
            return c.lr, c.eta
        return storm_step(k, c.lr, c.n_beta), storm_weight(k, c.n_beta, floor=c.eta)

    @override
    def surrogate(self, pairs: PreferencePairs, step: LeaderStep, prepared: Any) -> Surrogate:
        assert self.reward_model is not None and self.optimizer is not None and self.follower is not None
        model = self.reward_model
        params = dict(model.named_parameters())
        s = self.score.draw(pairs, step, self.follower, model)
        loss, returns, terms = surrogate_loss(model, s, self.config.baseline)
        grads = torch.autograd.grad(loss, list(params.values()), allow_unused=True)
        g = {n: torch.zeros_like(p) if d is None else d for (n, p), d in zip(params.items(), grads, strict=True)}
        beta, eta = self.schedule(self.steps_taken + 1)
        h = g
        if self.momentum is not None and self.prev_params is not None and eta < 1.0:
            prev = {n: t.detach().clone().requires_grad_(True) for n, t in self.prev_params.items()}
            prev_loss, _, _ = surrogate_loss(lambda o, a: functional_call(model, prev, (o, a)), s, self.config.baseline)
            prev_grads = torch.autograd.grad(prev_loss, list(prev.values()), allow_unused=True)
            h = {}
            for (n, gn), pg in zip(g.items(), prev_grads, strict=True):
                correction = self.momentum[n] - (torch.zeros_like(gn) if pg is None else pg)
                h[n] = gn + (1.0 - eta) * correction
            terms["upper/correction_norm"] = _norm([h[n] - g[n] for n in g]) / (1.0 - eta)
        for group in self.optimizer.param_groups:
            group["lr"] = beta
        self._pending = (
            {n: t.detach().clone() for n, t in h.items()},
            {n: p.detach().clone() for n, p in params.items()},
        )
        linear = torch.stack([(h[n].detach() * p).sum() for n, p in params.items()]).sum()
        terms.update(
            {
                "upper/eta": eta,
                "upper/lr": beta,
                "upper/momentum_norm": _norm(list(h.values())),
            }
        )
        return Surrogate(linear - linear.detach() + loss.detach(), returns.detach(), s.labels, terms)

    @override
    def after_step(self, step: LeaderStep) -> None:
        if self._pending is None:
            return
        self.momentum, self.prev_params = self._pending
        self._pending = None
        self.steps_taken += 1

    @override
    def rule_state(self) -> dict[str, Any]:
        return {"step": self.steps_taken, "momentum": self.momentum, "prev_params": self.prev_params}

    @override
    def load_rule_state(self, state: dict[str, Any]) -> None:
        self.steps_taken = int(state.get("step", 0))
        self.momentum = state.get("momentum")
        self.prev_params = state.get("prev_params")
