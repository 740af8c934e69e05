"""Benchmark: the oracle's policy evaluation on Four-Rooms, banded LU (numba) against dense LU (torch), alternated.

    python scripts/bench_policy_evaluation.py [--runs 450] [--repeats 7]

One soft-policy-iteration round of ``--runs`` runs (HPGD Table 3's batch: 9 cells × 10 seeds × 5 learning rates =
450): factor ``I − γ P^π`` per run and solve once with it and once with its transpose (AMD's adjoint). ``dense`` is the
implementation the batch used before (``torch.linalg.lu_factor`` / ``lu_solve``, partial pivoting, ``O(S³)``);
``banded`` is :class:`bilevel_rl.tabular.repro.band_lu.BandedModel` (no pivoting, reverse Cuthill–McKee band). Same
random policies, contexts and right-hand sides; both are timed alternately ``--repeats`` times (CPU time, one
thread) and the medians and their ratio are printed, with the largest difference between the two solutions.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import torch  # noqa: E402

from bilevel_rl.tabular.core.soft_mdp import DTYPE  # noqa: E402
from bilevel_rl.tabular.repro.four_rooms import FourRooms, FourRoomsConfig  # noqa: E402
from bilevel_rl.tabular.repro.four_rooms_batch import BatchFourRooms  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=450)
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()
    torch.set_num_threads(1)
    problem = BatchFourRooms(FourRooms(FourRoomsConfig(slip_prob=4.0 / 9.0)))
    g = torch.Generator().manual_seed(0)
    R, S, A = args.runs, problem.S, problem.A
    pi = torch.softmax(3.0 * torch.randn(R, S, A, generator=g, dtype=DTYPE), -1)
    ctx = torch.randint(2, (R,), generator=g)
    rhs = torch.randn(R, S, generator=g, dtype=DTYPE)

    def dense() -> tuple[torch.Tensor, torch.Tensor]:
        M = torch.empty(R, S, S, dtype=DTYPE)
        for k in range(2):
            idx = (ctx == k).nonzero()[:, 0]
            M[idx] = torch.einsum("rsa,sat->rst", pi[idx], problem.P[k])
        M.mul_(-problem.gamma).diagonal(0, -2, -1).add_(1.0)
        lu = torch.linalg.lu_factor(M)
        return torch.linalg.lu_solve(*lu, rhs[..., None])[..., 0], torch.linalg.lu_solve(
            *lu, rhs[..., None], adjoint=True
        )[..., 0]

    def banded() -> tuple[torch.Tensor, torch.Tensor]:
        lu = torch.from_numpy(problem.banded.factor(pi.numpy(), ctx.numpy()))
        return problem.evaluate(lu, rhs), problem.evaluate(lu, rhs, transposed=True)

    banded()  # compile
    times: dict[str, list[float]] = {"dense": [], "banded": []}
    out = {}
    for _ in range(args.repeats):
        for name, fn in (("dense", dense), ("banded", banded)):
            t0 = time.process_time()
            out[name] = fn()
            times[name].append(time.process_time() - t0)
    diff = max(float((a - b).abs().max()) for a, b in zip(out["dense"], out["banded"], strict=True))
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"{R} runs, S = {S}, half-bandwidth {problem.banded.half_bandwidth}, {args.repeats} alternated repeats")
    for k in ("dense", "banded"):
        print(f"  {k:6s}  median {med[k] * 1e3:7.1f} ms  ({med[k] / R * 1e6:6.1f} µs per run)")
    print(f"  ratio dense / banded: {med['dense'] / med['banded']:.1f}x; max |difference| {diff:.1e}")


if __name__ == "__main__":
    main()
