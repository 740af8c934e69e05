"""Cost of Zero-Order in the authors' float32 arithmetic against our float64 solver: CPU per run and outer iteration.

One Table 3 cell (10 seeds × 4 learning rates × 4 C = 160 runs, the authors' conventions), ``--iterations`` outer
iterations after a warm-up that compiles the kernels, with ``zo_numerics`` ``float64`` and ``float32``, alternated
``--repeats`` times in one process; prints each one's median and their ratio.

    python scripts/bench_zo_float32.py --repeats 5
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from bilevel_rl.tabular.repro.four_rooms import FourRooms, FourRoomsConfig
from bilevel_rl.tabular.repro.four_rooms_batch import BatchConfig, BatchFourRooms, run_batch


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--iterations", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    cfg = FourRoomsConfig(slip_prob=0.44, cost_over_actions=False, mask_goal_penalty=True)
    problem = BatchFourRooms(FourRooms(cfg), sim_slip_prob=0.33)
    cell = ((0.003, 5.0),)
    times: dict[str, list[float]] = {"float64": [], "float32": []}
    for numerics in times:  # warm-up: compile the kernels
        run_batch(problem, BatchConfig(method="zero_order", cells=cell, iterations=2, window=1, zo_numerics=numerics),
                  torch.Generator().manual_seed(0))  # fmt: skip
    for _ in range(args.repeats):
        for numerics in times:
            config = BatchConfig(method="zero_order", cells=cell, iterations=args.iterations, window=1,
                                 zo_numerics=numerics)  # fmt: skip
            t0 = time.process_time()
            result = run_batch(problem, config, torch.Generator().manual_seed(0))
            times[numerics].append((time.process_time() - t0) / args.iterations / len(result.metric) * 1e3)
    med = {k: statistics.median(v) for k, v in times.items()}
    for k, v in times.items():
        print(f"{k}: median {med[k]:.3f} ms per run-iteration ({', '.join(f'{t:.3f}' for t in v)})")
    print(f"float32 / float64: {med['float32'] / med['float64']:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
