"""Time HPGD's batched Four-Rooms rollouts: the compiled kernel against the step-by-step torch loop.

One HPGD outer iteration of Table 3 simulates ``num_envs × steps_per_env`` (5 × 2,000) steps for every run of a
batch; this script times that for ``--runs`` runs with both implementations, alternated ``--repeats`` times (one
torch thread), checks that they return the same steps, and prints the median times and their ratio.

    python scripts/bench_four_rooms_rollouts.py --runs 50 --repeats 5
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from bilevel_rl.tabular.core.soft_mdp import DTYPE
from bilevel_rl.tabular.repro.four_rooms import FourRooms, FourRoomsConfig
from bilevel_rl.tabular.repro.four_rooms_batch import BatchFourRooms


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--num-envs", type=int, default=5)
    parser.add_argument("--steps-per-env", type=int, default=2000)
    args = parser.parse_args()
    torch.set_num_threads(1)
    cfg = FourRoomsConfig(slip_prob=4.0 / 9.0, cost_over_actions=False, mask_goal_penalty=True)  # the authors' model
    problem = BatchFourRooms(FourRooms(cfg), sim_slip_prob=1.0 / 3.0)
    gen = torch.Generator().manual_seed(0)
    pi = torch.softmax(torch.randn(args.runs, problem.S, problem.A, generator=gen, dtype=DTYPE), -1)
    ctx = torch.randint(2, (args.runs,), generator=gen)
    shape = (args.num_envs, args.steps_per_env, 200)
    problem.rollouts(pi, ctx, 1, 10, 200, torch.Generator())  # compile (or load the cached kernel) before timing
    times: dict[str, list[float]] = {"compiled": [], "stepwise": []}
    for i in range(args.repeats):
        for name, fn in (("compiled", problem.rollouts), ("stepwise", problem.rollouts_stepwise)):
            t0 = time.perf_counter()
            out = fn(pi, ctx, *shape, torch.Generator().manual_seed(i))
            times[name].append(time.perf_counter() - t0)
            if name == "compiled":
                first = out
        same = all(torch.equal(first[k], out[k]) for k in ("s", "a", "tau", "done"))
        if not same:
            raise SystemExit("the two implementations returned different steps")
    med = {k: statistics.median(v) for k, v in times.items()}
    steps = args.runs * args.num_envs * args.steps_per_env
    print(f"{args.runs} runs x {args.num_envs} envs x {args.steps_per_env} steps, {args.repeats} alternated repeats:")
    for k, v in med.items():
        print(f"  {k:9s} median {v * 1e3:8.1f} ms  ({steps / v / 1e6:.2f} M steps/s)")
    print(f"  stepwise / compiled = {med['stepwise'] / med['compiled']:.1f}x (same steps: yes)")


if __name__ == "__main__":
    main()
