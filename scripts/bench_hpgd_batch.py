"""Time one HPGD Table-3 batch against another checkout of this project: CPU per run and outer iteration.

Both checkouts run the same batch (one cell, 10 seeds × 4 learning rates = 40 runs, the authors' estimator; the
first ``--iterations`` outer iterations, after a short warm-up that compiles the kernels) in fresh processes,
alternated ``--repeats`` times; the script prints each one's median, their ratio, and whether the two batches
returned the same metric (a speed-up that changes the numbers is reported as such).

    git worktree add /tmp/before <commit>
    python scripts/bench_hpgd_batch.py --against /tmp/before --repeats 5
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

CHILD = r"""
import json, sys, time, torch
torch.set_num_threads(1)
from bilevel_rl.tabular.repro.four_rooms import FourRooms, FourRoomsConfig
from bilevel_rl.tabular.repro.four_rooms_batch import BatchConfig, BatchFourRooms, run_batch
iterations = int(sys.argv[1])
cfg = FourRoomsConfig(slip_prob=4 / 9, cost_over_actions=False, mask_goal_penalty=True)
problem = BatchFourRooms(FourRooms(cfg), sim_slip_prob=1 / 3)
cell = ((0.005, 3.0),)
run_batch(problem, BatchConfig(method="hpgd", cells=cell, iterations=2, window=1), torch.Generator().manual_seed(0))
config = BatchConfig(method="hpgd", cells=cell, iterations=iterations, window=1, hpgd_partial_episodes=True)
t0 = time.process_time()
result = run_batch(problem, config, torch.Generator().manual_seed(0))
seconds = time.process_time() - t0
print(json.dumps({"ms": seconds / iterations / len(result.metric) * 1e3, "metric": sum(result.metric)}))
"""


def measure(root: Path, iterations: int) -> dict:
    env = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", CHILD, str(iterations)], env=env, check=True, capture_output=True,
                         text=True, cwd=root)  # fmt: skip
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--against", type=Path, required=True, help="the other checkout (e.g. a git worktree)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--iterations", type=int, default=30)
    args = parser.parse_args()
    here = Path(__file__).resolve().parents[1]
    roots = {"this checkout": here, "other": args.against.resolve()}
    for root in roots.values():
        measure(root, 2)  # compile (or load the cached kernels) before timing
    times: dict[str, list[float]] = {k: [] for k in roots}
    metrics: dict[str, float] = {}
    for _ in range(args.repeats):
        for name, root in roots.items():
            got = measure(root, args.iterations)
            times[name].append(got["ms"])
            metrics[name] = got["metric"]
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"HPGD batch, 40 runs x {args.iterations} iterations, {args.repeats} alternated repeats (CPU, one thread):")
    for name, value in med.items():
        print(f"  {name:14s} median {value:.3f} ms per run and iteration")
    same = "yes" if metrics["this checkout"] == metrics["other"] else "no"
    print(f"  other / this = {med['other'] / med['this checkout']:.2f}x (same metric: {same})")


if __name__ == "__main__":
    main()
