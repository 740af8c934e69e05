"""The leader's reward parameterisation on a finite MDP and its vector–Jacobian products.

The leader variable ``x`` (any shape) enters the lower level only through a differentiable reward table
``r_x (S, A)``. Every gradient of the tabular lab that is linear in ``∇_x r`` is therefore ``Σ_{s,a} W[s, a] ∇_x
r(s, a)`` for some weight table ``W`` and costs one vector–Jacobian product (:func:`reward_vjp`); the ``(S, A, d)``
Jacobian is never formed.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

RewardFn = Callable[[torch.Tensor], torch.Tensor]
"""``x ↦ r_x``, a differentiable ``(S, A)`` reward table."""


def linear_reward(x: torch.Tensor, features: torch.Tensor | None) -> torch.Tensor:
    """``r_x = x`` (the full ``(S, A)`` table) or ``r_x(s, a) = φ(s, a)·x`` for ``features`` ``φ (S, A, d)``."""
    return x if features is None else features @ x


def grad_or_zeros(output: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``∇_x output`` for a scalar ``output`` (detached), or zeros when ``output`` does not depend on ``x``."""
    if not output.requires_grad:
        return torch.zeros_like(x)
    (g,) = torch.autograd.grad(output, x, allow_unused=True)
    return torch.zeros_like(x) if g is None else g.detach()


def reward_vjp(x: torch.Tensor, reward_fn: RewardFn, W: torch.Tensor) -> torch.Tensor:
    """``Σ_{s,a} W[s, a] ∇_x r(s, a)`` by one vector–Jacobian product (zero if ``r`` does not depend on ``x``)."""
    x = x.detach().requires_grad_(True)
    r = reward_fn(x)
    if not r.requires_grad:
        return torch.zeros_like(x)
    (g,) = torch.autograd.grad(r, x, grad_outputs=W.detach().to(r.dtype), allow_unused=True)
    return torch.zeros_like(x) if g is None else g.detach()
