"""Print a run's learning curve as a markdown table (docs/results/atari_cpu.md).

Reads ``metrics.csv`` of a ``bilevel-rl`` run directory (or of ``scripts/atari_true_reward_baselines.py``) and
prints one row per evaluation: env steps, eval true return ± std, and, where the run has them, the learned reward's
Pearson correlation with the true reward, the held-out preference accuracy and the follower's env steps/s.

    python scripts/atari_table.py runs/atari_a2c_cpu_drlhf/ALE-Seaquest-v5/<date>_seed0
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

COLUMNS = {
    "reward_model/true_reward_corr": "corr(r_φ, r)",
    "reward_model/pref_accuracy": "held-out pref. acc.",
    "follower/ep_true_return": "training game score",
    "time/sps": "env steps/s",
}


def table(run_dir: Path) -> str:
    df = pd.read_csv(run_dir / "metrics.csv")
    step = "env_steps" if "env_steps" in df.columns else "step"
    cols = [c for c in COLUMNS if c in df.columns]
    head = ["env steps", "eval return (mean ± std)", *(COLUMNS[c] for c in cols)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for _, row in df.iterrows():
        ret = row.get("eval/true_return")
        ev = "" if pd.isna(ret) else f"{ret:.1f} ± {row['eval/true_return_std']:.1f}"
        cells = [f"{int(row[step]):,}", ev, *("" if pd.isna(row[c]) else f"{row[c]:.3g}" for c in cols)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("run_dirs", nargs="+", type=Path)
    for run_dir in ap.parse_args().run_dirs:
        print(f"### {run_dir}\n\n{table(run_dir)}\n")


if __name__ == "__main__":
    main()
