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

import warnings
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING

import torch

from bilevel_rl.tabular.repro.four_rooms import CONTEXTS

if TYPE_CHECKING:  # four_rooms_batch runs this class
    from bilevel_rl.tabular.repro.four_rooms_batch import BatchFourRooms


def _run_sum(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """``Σ_r fn(x)[r]``: its Jacobian is the per-run one, since run ``r``'s table depends on ``x[r]`` only."""
    return fn(x).sum(0)


class SweptAMD:
    """The four Algorithm 9 tables of ``R`` runs (``(R, contexts, S, A[, d])``) and the step that sweeps them.

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
        S, A = problem.S, problem.A
        with warnings.catch_warnings():  # "sparse CSR support is in beta": sparse @ dense is all we use
            warnings.simplefilter("ignore", UserWarning)
            self._P = [problem.P[k].reshape(S * A, S).to_sparse_csr() for k in range(self.C)]
        self.tables: dict[str, torch.Tensor] = {}

    # ------------------------------------------------------------------ rewards at x and their derivatives
    def rewards(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """``r_x, ∇_x r_x, r̄_x, ∇_x r̄_x`` per run and context: ``(R, C, S, A)`` and ``(R, C, S, A, d)``.

        Each run's tables depend on its own ``x`` only, so the Jacobian of the run-summed tables is the per-run one.
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
                out[name].append(fn(x))
                jac = torch.autograd.functional.jacobian(partial(_run_sum, fn), x, vectorize=True)  # (S, A, R, d)
                out["d" + name].append(jac.permute(2, 0, 1, 3))
        return {name: torch.stack(v, 1) for name, v in out.items()}

    # ------------------------------------------------------------------ one sweep
    def _expect_next(self, V: torch.Tensor) -> torch.Tensor:
        """``Σ_{s'} P_ξ(s' | s, a) V(ξ, s', ...)`` for ``V: (R, C, S, *rest)`` → ``(R, C, S, A, *rest)``."""
        R, C, S = V.shape[:3]
        rest = V.shape[3:]
        out = []
        for k in range(C):
            Vk = V[:, k].reshape(R, S, -1).transpose(0, 1).reshape(S, -1)  # (S, R * rest)
            PV = (self._P[k] @ Vk).reshape(S, self.problem.A, R, -1)
            out.append(PV.permute(2, 0, 1, 3).reshape(R, S, self.problem.A, *rest))
        return torch.stack(out, 1)

    def policy(self, Q: torch.Tensor) -> torch.Tensor:
        """``softmax(Q / λ)`` per run."""
        return torch.softmax(Q / self.lam[:, None, None, None], -1)

    def sweep(self, rw: dict[str, torch.Tensor]) -> None:
        """One synchronous sweep of all four tables (module docstring), every context."""
        T, lam, gamma = self.tables, self.lam[:, None, None, None], self.problem.gamma
        pi = self.policy(T["Q"])
        V = (pi * T["Q"]).sum(-1) - lam[..., 0] * torch.xlogy(pi, pi).sum(-1)
        dV = (pi[..., None] * T["dQ"]).sum(-2)
        dA = T["dQ"] - dV[:, :, :, None]
        Vu = (pi * T["Qu"]).sum(-1)
        Au = T["Qu"] - Vu[..., None]
        Vt = (pi[..., None] * T["Qt"]).sum(-2)
        T["Q"] = rw["r"] + gamma * self._expect_next(V)
        T["dQ"] = rw["dr"] + gamma * self._expect_next(dV)
        T["Qu"] = rw["ru"] + gamma * self._expect_next(Vu)
        T["Qt"] = rw["dru"] + dA * (Au / lam)[..., None] + gamma * self._expect_next(Vt)

    # ------------------------------------------------------------------ the outer step
    def start(self, x: torch.Tensor, tol: float = 1e-12, max_sweeps: int = 10_000) -> int:
        """Tables at their fixed point for ``x_0``: sweeps from zero until no entry moves by ``tol``; returns the count.

        (``γ = 0.99`` needs about 3,000 sweeps.)
        """
        pb = self.problem
        zeros = torch.zeros(self.R, self.C, pb.S, pb.A, dtype=x.dtype)
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
        Vt = (pi[..., None] * T["Qt"]).sum(-2)  # (R, C, S, d)
        Vu = (pi * T["Qu"]).sum(-1)  # (R, C, S)
        g = Vt[torch.arange(self.R), ctx, s0]
        return g, Vu[:, :, s0].mean(1)  # contexts are uniform (HPGD §5.1)

    def policies(self) -> list[torch.Tensor]:
        """The current ``π_K`` of each context, ``(R, S, A)`` each (warm starts for exact solves of the metric)."""
        pi = self.policy(self.tables["Q"])
        return [pi[:, k].clone() for k in range(self.C)]
