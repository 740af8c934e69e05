"""AMD as HPGD Algorithm 9 prints it: ``K`` warm-started sweeps per outer step, for a batch of Four-Rooms runs.

Algorithm 9 (App. F.1.1, "(Modified) Adaptive Model Design") does not solve the follower. It carries four tables
per context from one outer step to the next and applies ``K`` synchronous sweeps to them (``K = 100`` in the
authors' released configs, ``n_policy_iter``), all from the values of the previous sweep:

    π_k    = softmax(Q_k / λ)
    V_k    = Σ_a π_k Q_k − λ Σ_a π_k log π_k         ∇V_k = Σ_a π_k ∇Q_k         A_k = Q_k − V_k,  ∇A_k = ∇Q_k − ∇V_k
    V^u_k  = Σ_a π_k Q^u_k                            A^u_k = Q^u_k − V^u_k        Ṽ_k = Σ_a π_k Q̃_k
    Q_{k+1}   = r_x + γ P V_k                         ∇Q_{k+1} = ∇_x r_x + γ P ∇V_k
    Q^u_{k+1} = r̄_x + γ P V^u_k                      Q̃_{k+1}  = ∇_x r̄_x + A^u_k ∇A_k / λ + γ P Ṽ_k

(``∇ log P = 0``: the leader shapes the reward only; the printed ``exp(λQ)`` and ``λ A^u ∇A`` are extraction typos
for ``softmax(Q/λ)`` and ``A^u ∇A / λ``, which the authors' code uses.) The step ascends ``ĝ = Σ_s μ(s) Ṽ_K(ξ, s)``
for the sampled context ``ξ``, with ``Ṽ_K`` taken under ``π_K = softmax(Q_K / λ)``. At a fixed ``x`` the sweeps
contract (rate ``γ``) to the soft optimum, its value and derivative tables, where ``ĝ`` is the exact
hypergradient that :meth:`~bilevel_rl.tabular.repro.four_rooms_batch.BatchFourRooms.exact_gradient` computes
(tested); with ``K = 100`` and ``γ = 0.99`` each step removes only ``1 − 0.99^100 ≈ 63 %`` of the tables' error, so
the follower and the leader's value lag a moving ``x``. The value the authors log is the lagged table's,
``Σ_ξ P(ξ) Σ_a π_K Q^u_K(ξ, S, a)``, at the step's ``x`` before the update.

**Initialisation (our choice).** The authors start ``Q`` near the soft optimum at ``x_0`` and the other tables
under the uniform policy; we start all four at their fixed point at ``x_0`` (sweeps before the first step, until no
entry moves by 1e-12), so the first gradients are exact. The difference is forgotten within tens of steps
(``0.99^{100 t}``).

Both contexts' tables are swept every step (the authors' ``update_values`` runs over all goals); the context only
selects which ``Ṽ`` the step ascends.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING

import numba
import numpy as np
import torch

from bilevel_rl.tabular.repro.four_rooms import CONTEXTS

if TYPE_CHECKING:  # four_rooms_batch runs this class
    from bilevel_rl.tabular.repro.four_rooms_batch import BatchFourRooms


def _run_sum(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """``Σ_r fn(x)[r]``: its Jacobian is the per-run one, since run ``r``'s table depends on ``x[r]`` only."""
    return fn(x).sum(0)


class SweptAMD:
    """The four Algorithm 9 tables of ``R`` runs (``(contexts, S, A, R[, d])``) and the step that sweeps them.

    Args:
        problem: the batched Four-Rooms rewards and model (``P`` of each context, dense).
        lam: follower temperatures ``(R,)``.
        beta: leader cost weights ``(R,)``.
        sweeps: ``K``, sweeps per outer step (the authors: 100).
    """

    def __init__(self, problem: BatchFourRooms, lam: torch.Tensor, beta: torch.Tensor, sweeps: int = 100) -> None:
        if sweeps < 1:
            raise ValueError(f"amd_sweeps: must be >= 1, got {sweeps}")
        self.problem, self.lam, self.beta, self.sweeps = problem, lam, beta, sweeps
        self.R, self.C = lam.shape[0], len(CONTEXTS)
        P = problem.P.reshape(self.C, problem.S, problem.A, problem.S)
        K = int((P > 0).sum(-1).max())
        probs, nxt = torch.sort(P, dim=-1, descending=True)  # the at most K successors of every (s, a)
        self._next, self._prob = nxt[..., :K].contiguous().numpy(), probs[..., :K].contiguous().numpy()
        self.tables: dict[str, torch.Tensor] = {}

    # ------------------------------------------------------------------ rewards at x and their derivatives
    def rewards(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """``r_x, ∇_x r_x, r̄_x, ∇_x r̄_x`` per context and run: ``(C, S, A, R)`` and ``(C, S, A, R, d)``.

        Each run's tables depend on its own ``x`` only, so the Jacobian of the run-summed tables is the per-run one.
        (Runs are the next-to-last axis so that ``P`` applies to all runs and directions in one product.)
        """
        pb = self.problem
        out: dict[str, list[torch.Tensor]] = {"r": [], "dr": [], "ru": [], "dru": []}
        for k in range(self.C):
            ctx = torch.full((self.R,), k, dtype=torch.long)
            tables = {
                "r": partial(pb.follower_reward, ctx=ctx, lam=self.lam),
                "ru": partial(pb.leader_reward, ctx=ctx, beta=self.beta),
            }
            for name, fn in tables.items():
                out[name].append(fn(x).permute(1, 2, 0))
                out["d" + name].append(torch.autograd.functional.jacobian(partial(_run_sum, fn), x, vectorize=True))
        return {name: torch.stack(v).contiguous() for name, v in out.items()}

    # ------------------------------------------------------------------ one sweep
    def policy(self, Q: torch.Tensor) -> torch.Tensor:
        """``softmax(Q / λ)`` over actions, ``Q: (C, S, A, R)``."""
        return torch.softmax(Q / self.lam, 2)

    def sweep(self, rw: dict[str, torch.Tensor]) -> None:
        """One synchronous sweep of all four tables (module docstring), every context, in place (compiled)."""
        T = {k: v.numpy() for k, v in self.tables.items()}
        R = {k: v.numpy() for k, v in rw.items()}
        _sweep(T["Q"], T["dQ"], T["Qu"], T["Qt"], R["r"], R["dr"], R["ru"], R["dru"],
               self._next, self._prob, self.lam.numpy(), self.problem.gamma)  # fmt: skip

    # ------------------------------------------------------------------ the outer step
    def start(self, x: torch.Tensor, tol: float = 1e-12, max_sweeps: int = 10_000) -> int:
        """Tables at their fixed point for ``x_0``: sweeps from zero until no entry moves by ``tol``; returns the count.

        (``γ = 0.99`` needs about 3,000 sweeps.)
        """
        pb = self.problem
        zeros = torch.zeros(self.C, pb.S, pb.A, self.R, dtype=x.dtype)
        self.tables = {"Q": zeros, "dQ": zeros[..., None].expand(-1, -1, -1, -1, pb.d).clone(), "Qu": zeros.clone()}
        self.tables["Qt"] = self.tables["dQ"].clone()
        rw = self.rewards(x)
        for n in range(1, max_sweeps + 1):
            before = {k: v.clone() for k, v in self.tables.items()} if n % 50 == 0 else None
            self.sweep(rw)
            if before is not None and all(float((self.tables[k] - v).abs().max()) < tol for k, v in before.items()):
                return n
        raise RuntimeError(f"amd_sweeps: the tables did not reach their fixed point in {max_sweeps} sweeps")

    def step(self, x: torch.Tensor, ctx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``K`` sweeps at ``x``, then ``(ĝ, logged value)``: ``Ṽ_K(ξ, S)`` and ``E_ξ V^u_K(ξ, S)`` per run."""
        rw = self.rewards(x)
        for _ in range(self.sweeps):
            self.sweep(rw)
        T, s0 = self.tables, self.problem.env.start
        pi = self.policy(T["Q"])
        Vt = torch.einsum("car,card->crd", pi[:, s0], T["Qt"][:, s0])  # (C, R, d) at the start state
        Vu = (pi[:, s0] * T["Qu"][:, s0]).sum(1)  # (C, R)
        g = Vt[ctx, torch.arange(self.R)]
        return g, Vu.mean(0)  # contexts are uniform (HPGD §5.1)

    def policies(self) -> list[torch.Tensor]:
        """The current ``π_K`` of each context, ``(R, S, A)`` each (warm starts for exact solves of the metric)."""
        pi = self.policy(self.tables["Q"])
        return [pi[k].permute(2, 0, 1).contiguous() for k in range(self.C)]


@numba.njit(cache=True, nogil=True)
def _sweep(
    Q: np.ndarray,
    dQ: np.ndarray,
    Qu: np.ndarray,
    Qt: np.ndarray,
    r: np.ndarray,
    dr: np.ndarray,
    ru: np.ndarray,
    dru: np.ndarray,
    nxt: np.ndarray,
    prob: np.ndarray,
    lam: np.ndarray,
    gamma: float,
) -> None:  # pragma: no cover - compiled; tested through SweptAMD against the exact hypergradient
    """One Algorithm 9 sweep in place: ``(C, S, A, R)`` tables ``Q, Q^u``, ``(C, S, A, R, d)`` tables ``∇Q, Q̃``.

    First every state's ``π = softmax(Q/λ)``, ``V, ∇V, V^u, Ṽ`` from the old tables; then every ``(s, a)`` entry
    from its own old entries (``∇A``, ``A^u``) and the successors' values, so updating in place is synchronous.
    """
    C, S, A, R, D = dQ.shape
    K = nxt.shape[-1]
    pi = np.empty((C, S, A, R))
    V, Vu = np.zeros((C, S, R)), np.zeros((C, S, R))
    dV, Vt = np.zeros((C, S, R, D)), np.zeros((C, S, R, D))
    for c in range(C):
        for s in range(S):
            for i in range(R):
                m = Q[c, s, 0, i]
                for a in range(1, A):
                    m = max(m, Q[c, s, a, i])
                z = 0.0
                for a in range(A):
                    pi[c, s, a, i] = np.exp((Q[c, s, a, i] - m) / lam[i])
                    z += pi[c, s, a, i]
                for a in range(A):
                    p = pi[c, s, a, i] / z
                    pi[c, s, a, i] = p
                    V[c, s, i] += p * Q[c, s, a, i] - (lam[i] * p * np.log(p) if p > 0.0 else 0.0)
                    Vu[c, s, i] += p * Qu[c, s, a, i]
                    for j in range(D):
                        dV[c, s, i, j] += p * dQ[c, s, a, i, j]
                        Vt[c, s, i, j] += p * Qt[c, s, a, i, j]
    for c in range(C):
        for s in range(S):
            for a in range(A):
                for i in range(R):
                    w = (Qu[c, s, a, i] - Vu[c, s, i]) / lam[i]  # A^u / λ, from the old Q^u
                    q, qu = r[c, s, a, i], ru[c, s, a, i]
                    for j in range(D):  # ∇r̄ + A^u ∇A / λ (old ∇Q) and ∇r
                        Qt[c, s, a, i, j] = dru[c, s, a, i, j] + w * (dQ[c, s, a, i, j] - dV[c, s, i, j])
                        dQ[c, s, a, i, j] = dr[c, s, a, i, j]
                    for k in range(K):
                        p = gamma * prob[c, s, a, k]
                        n = nxt[c, s, a, k]
                        q += p * V[c, n, i]
                        qu += p * Vu[c, n, i]
                        for j in range(D):
                            dQ[c, s, a, i, j] += p * dV[c, n, i, j]
                            Qt[c, s, a, i, j] += p * Vt[c, n, i, j]
                    Q[c, s, a, i], Qu[c, s, a, i] = q, qu
