"""Batched policy evaluation on a sparse MDP: banded LU of ``I − γ P^π`` without pivoting, compiled with numba.

Soft policy iteration (the oracle of the batched Four-Rooms runs, :mod:`~bilevel_rl.tabular.repro.four_rooms_batch`)
solves ``(I − γ P^π) V = b`` once per run and round, and AMD's exact gradient solves with the transpose. A dense LU
(``torch.linalg.lu_factor``, one LAPACK call per 105 × 105 matrix) costs ``O(S³)`` and dominated the batch. Here:

* **No pivoting is needed.** ``M = I − γ P^π`` is strictly row diagonally dominant: ``|M_ss| − Σ_{t≠s} |M_st| =
  1 − γ > 0`` because each row of ``P^π`` is a distribution. Gaussian elimination without pivoting is then well
  defined and stable (every Schur complement stays strictly diagonally dominant; growth factor ≤ 2), and a
  symmetric permutation ``Π M Πᵀ`` keeps the property.
* **The matrix is banded after reordering.** ``P`` is sparse (a grid world: each ``(s, a)`` reaches a few
  neighbours); the reverse Cuthill–McKee order of the union of its transition graphs (all contexts and actions)
  gives a half-bandwidth ``b`` (11 for Four-Rooms' 105 states, where the index order has 97 because of the
  absorbing state), and LU fill-in stays inside the band: ``O(S b²)`` per factorisation instead of ``O(S³)``.

Factors are stored per run as ``(S, 2b + 1)`` bands in the permuted order (``band[i, j − i + b] = M[i, j]``,
unit-lower ``L`` below the diagonal, ``U`` on and above it); right-hand sides and solutions are in the original
state order. Tested against dense solves in ``tests/test_four_rooms_batch.py``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np


def cuthill_mckee_order(adjacency: np.ndarray) -> np.ndarray:
    """Reverse Cuthill–McKee order of a symmetric boolean adjacency matrix (``order[i]`` = the state at place ``i``).

    Breadth-first from a lowest-degree unvisited state, neighbours taken by increasing degree; reversed.
    """
    n = adjacency.shape[0]
    degree = adjacency.sum(1)
    visited = np.zeros(n, dtype=bool)
    order: list[int] = []
    while len(order) < n:
        unvisited = np.flatnonzero(~visited)
        start = int(unvisited[np.argmin(degree[unvisited])])
        visited[start] = True
        queue = [start]
        while queue:
            node = queue.pop(0)
            order.append(node)
            nbrs = [int(t) for t in np.flatnonzero(adjacency[node] & ~visited)]
            for t in sorted(nbrs, key=lambda t: (degree[t], t)):
                visited[t] = True
                queue.append(t)
    return np.asarray(order[::-1], dtype=np.int64)


@dataclass(frozen=True)
class BandedModel:
    """A sparse transition model ``P: (K, S, A, S)`` (``K`` contexts) in the form the compiled kernels read.

    Attributes:
        order: ``order[i]``: the state at place ``i`` of the banded order; ``place`` is its inverse.
        place: ``place[s]``: the place of state ``s``.
        half_bandwidth: ``b``, with ``M[i, j] = 0`` for ``|i − j| > b`` in the banded order.
        next_place: ``(K, S, A, m)`` places of the successors of ``(s, a)`` (padded with ``s``'s own place).
        prob: ``(K, S, A, m)`` their probabilities (padding: 0).
        gamma: the discount.
    """

    order: np.ndarray
    place: np.ndarray
    half_bandwidth: int
    next_place: np.ndarray
    prob: np.ndarray
    gamma: float

    @classmethod
    def from_dense(cls, P: np.ndarray, gamma: float) -> BandedModel:
        """Reorder and compress a dense ``(K, S, A, S)`` model."""
        K, S, A, _ = P.shape
        pattern = (P > 0).any(axis=(0, 2))
        order = cuthill_mckee_order(pattern | pattern.T | np.eye(S, dtype=bool))
        place = np.empty(S, dtype=np.int64)
        place[order] = np.arange(S)
        rows, cols = np.nonzero(pattern)
        half_bandwidth = int(np.abs(place[rows] - place[cols]).max()) if len(rows) else 0
        m = max(1, int((P > 0).sum(-1).max()))
        next_place = np.repeat(place[None, :, None, None], K, 0).repeat(A, 2).repeat(m, 3)
        prob = np.zeros((K, S, A, m))
        for k in range(K):
            for s in range(S):
                for a in range(A):
                    succ = np.flatnonzero(P[k, s, a] > 0)
                    next_place[k, s, a, : len(succ)] = place[succ]
                    prob[k, s, a, : len(succ)] = P[k, s, a, succ]
        return cls(order, place, half_bandwidth, next_place, prob, float(gamma))

    def factor(self, pi: np.ndarray, ctx: np.ndarray) -> np.ndarray:
        """Banded LU factors of ``I − γ P^π`` per run (``pi: (R, S, A)``, ``ctx: (R,)``) → ``(R, S, 2b + 1)``."""
        out = np.zeros((pi.shape[0], len(self.order), 2 * self.half_bandwidth + 1))
        _build_and_factor(
            np.ascontiguousarray(pi), np.ascontiguousarray(ctx, dtype=np.int64), self.order, self.next_place,
            self.prob, self.gamma, self.half_bandwidth, out,
        )  # fmt: skip
        return out

    def solve(self, lu: np.ndarray, rhs: np.ndarray, transposed: bool = False) -> np.ndarray:
        """``M⁻¹ rhs`` (or ``M⁻ᵀ rhs``) per run from :meth:`factor`'s bands; ``rhs: (R, S)`` in state order."""
        x = np.ascontiguousarray(rhs[:, self.order], dtype=np.float64)
        if transposed:
            _solve_transposed(lu, x, self.half_bandwidth)
        else:
            _solve(lu, x, self.half_bandwidth)
        return x[:, self.place]

    def soft_policy_iteration(
        self, r: np.ndarray, ctx: np.ndarray, lam: np.ndarray, pi0: np.ndarray, tol: float, max_iter: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Soft policy iteration per run, each until ``max |ΔQ| < tol`` or ``max_iter`` rounds.

        Args:
            r: ``(R, S, A)`` rewards.
            ctx: ``(R,)`` contexts (which transition model).
            lam: ``(R,)`` temperatures.
            pi0: ``(R, S, A)`` warm starts (not modified).
            tol: tolerance on the change of ``Q^π`` between rounds.
            max_iter: rounds at most.

        Returns:
            ``(π, lu, rounds)``: the last *evaluated* policy per run, the factors of its ``I − γP^π`` and the rounds
            each run took.
        """
        pi = np.array(pi0, dtype=np.float64, order="C")
        lu = np.empty((pi.shape[0], len(self.order), 2 * self.half_bandwidth + 1))
        rounds = np.zeros(pi.shape[0], dtype=np.int64)
        _soft_policy_iteration(
            np.ascontiguousarray(r, dtype=np.float64), np.ascontiguousarray(ctx, dtype=np.int64),
            np.ascontiguousarray(lam, dtype=np.float64), pi, self.order, self.next_place, self.prob, self.gamma,
            self.half_bandwidth, tol, max_iter, lu, rounds,
        )  # fmt: skip
        return pi, lu, rounds


@numba.njit(cache=True, nogil=True)
def _factor_one(
    band: np.ndarray,
    p: np.ndarray,
    k: int,
    order: np.ndarray,
    next_place: np.ndarray,
    prob: np.ndarray,
    gamma: float,
    b: int,
) -> None:  # pragma: no cover - compiled; tested through BandedModel
    """``band`` ← the band of ``I − γ P^π`` (policy ``p: (S, A)``, context ``k``), overwritten by its LU factors."""
    S, A, m = p.shape[0], p.shape[1], next_place.shape[3]
    band[:] = 0.0
    for i in range(S):
        s = order[i]
        band[i, b] += 1.0
        for a in range(A):
            w = gamma * p[s, a]
            for j in range(m):
                band[i, next_place[k, s, a, j] - i + b] -= w * prob[k, s, a, j]
    for q in range(S):  # Gaussian elimination inside the band, no pivoting
        pivot = band[q, b]
        last = min(S - 1, q + b)
        for i in range(q + 1, last + 1):
            if band[i, q - i + b] == 0.0:  # the band is sparse too: most of it stays zero
                continue
            f = band[i, q - i + b] / pivot
            band[i, q - i + b] = f
            for j in range(q + 1, last + 1):
                band[i, j - i + b] -= f * band[q, j - q + b]


@numba.njit(cache=True, nogil=True)
def _solve_one(band: np.ndarray, v: np.ndarray, b: int) -> None:  # pragma: no cover - compiled
    """``v ← U⁻¹ L⁻¹ v`` (banded order), in place."""
    S = v.shape[0]
    for i in range(S):
        acc = v[i]
        for j in range(max(0, i - b), i):
            acc -= band[i, j - i + b] * v[j]
        v[i] = acc
    for i in range(S - 1, -1, -1):
        acc = v[i]
        for j in range(i + 1, min(S, i + b + 1)):
            acc -= band[i, j - i + b] * v[j]
        v[i] = acc / band[i, b]


@numba.njit(cache=True, nogil=True)
def _solve_transposed_one(band: np.ndarray, v: np.ndarray, b: int) -> None:  # pragma: no cover - compiled
    """``v ← L⁻ᵀ U⁻ᵀ v`` (``Mᵀ = Uᵀ Lᵀ``; banded order), in place."""
    S = v.shape[0]
    for i in range(S):  # Uᵀ is lower triangular: column i of U
        acc = v[i]
        for j in range(max(0, i - b), i):
            acc -= band[j, i - j + b] * v[j]
        v[i] = acc / band[i, b]
    for i in range(S - 1, -1, -1):  # Lᵀ is unit upper triangular: column i of L
        acc = v[i]
        for j in range(i + 1, min(S, i + b + 1)):
            acc -= band[j, i - j + b] * v[j]
        v[i] = acc


@numba.njit(cache=True, nogil=True)
def _build_and_factor(
    pi: np.ndarray,
    ctx: np.ndarray,
    order: np.ndarray,
    next_place: np.ndarray,
    prob: np.ndarray,
    gamma: float,
    b: int,
    out: np.ndarray,
) -> None:  # pragma: no cover - compiled; tested through BandedModel
    """``out[r]``: the LU factors of ``I − γ P^{π_r}`` in the banded order."""
    for r in range(pi.shape[0]):
        _factor_one(out[r], pi[r], ctx[r], order, next_place, prob, gamma, b)


@numba.njit(cache=True, nogil=True)
def _solve(lu: np.ndarray, x: np.ndarray, b: int) -> None:  # pragma: no cover - compiled; tested through BandedModel
    """``x[r] ← M_r⁻¹ x[r]`` per run, in place (banded order)."""
    for r in range(x.shape[0]):
        _solve_one(lu[r], x[r], b)


@numba.njit(cache=True, nogil=True)
def _solve_transposed(lu: np.ndarray, x: np.ndarray, b: int) -> None:  # pragma: no cover - compiled
    """``x[r] ← M_r⁻ᵀ x[r]`` per run, in place (banded order)."""
    for r in range(x.shape[0]):
        _solve_transposed_one(lu[r], x[r], b)


@numba.njit(cache=True, nogil=True)
def _soft_policy_iteration(
    r: np.ndarray,
    ctx: np.ndarray,
    lam: np.ndarray,
    pi: np.ndarray,
    order: np.ndarray,
    next_place: np.ndarray,
    prob: np.ndarray,
    gamma: float,
    b: int,
    tol: float,
    max_iter: int,
    lu: np.ndarray,
    rounds: np.ndarray,
) -> None:  # pragma: no cover - compiled; tested through BatchFourRooms.solve
    """Soft policy iteration per run (``pi`` in place; ``lu[r]``: the factors of the last evaluated policy).

    A round: ``V = (I − γP^π)⁻¹ Σ_a π (r − λ log π)``, ``Q = r + γ P V``; stop when ``max |Q − Q_prev| < tol``,
    else ``π ← softmax(Q / λ)``.
    """
    R, S, A = r.shape
    m = next_place.shape[3]
    v = np.empty(S)
    q_prev = np.empty((S, A))
    q = np.empty((S, A))
    for n in range(R):
        k, lam_n, p = ctx[n], lam[n], pi[n]
        q_prev[:] = np.inf
        for _ in range(max_iter):
            _factor_one(lu[n], p, k, order, next_place, prob, gamma, b)
            rounds[n] += 1
            for i in range(S):
                s = order[i]
                acc = 0.0
                for a in range(A):
                    acc += p[s, a] * (r[n, s, a] - lam_n * np.log(max(p[s, a], 1e-300)))
                v[i] = acc
            _solve_one(lu[n], v, b)
            diff = 0.0
            for s in range(S):
                for a in range(A):
                    acc = 0.0
                    for j in range(m):
                        acc += prob[k, s, a, j] * v[next_place[k, s, a, j]]
                    q[s, a] = r[n, s, a] + gamma * acc
                    d = abs(q[s, a] - q_prev[s, a])
                    if not d <= diff:  # NaN propagates: a NaN round never counts as converged
                        diff = d
            if diff < tol:
                break
            q_prev[:] = q
            for s in range(S):  # π ← softmax(Q / λ)
                top = q[s, 0] / lam_n
                for a in range(1, A):
                    top = max(top, q[s, a] / lam_n)
                z = 0.0
                for a in range(A):
                    p[s, a] = np.exp(q[s, a] / lam_n - top)
                    z += p[s, a]
                for a in range(A):
                    p[s, a] /= z
