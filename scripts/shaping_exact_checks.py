"""The reward-shaping estimators (``objective=leader_reward``) against exact hypergradients on tabular soft MDPs.

Runs the deep rule classes unchanged on :class:`~bilevel_rl.tabular.lab.shaping_lab.ShapingLab` (the checks of
``tests/test_shaping_exact.py``, with more seeds) and prints one markdown table: cosine and relative error of each
estimator's sample mean against its target, and the standard error of that mean.

    python scripts/shaping_exact_checks.py [--out docs/results/shaping_exact.md]
"""

from __future__ import annotations

import argparse
import datetime
import platform
import time
from pathlib import Path

import torch

from bilevel_rl.objectives.leader_reward import LeaderRewardConfig
from bilevel_rl.tabular.checks.shaping import first_step_expectation, penalty_step_samples, sample_gradients
from bilevel_rl.tabular.lab.shaping_lab import make_shaping_lab
from bilevel_rl.upper.hpgd import HPGD, HPGDConfig
from bilevel_rl.upper.sobirl import SoBiRL, SoBiRLConfig


def compare(estimate: torch.Tensor, target: torch.Tensor) -> tuple[float, float]:
    """Cosine and relative error ``‖estimate − target‖ / ‖target‖``."""
    cos = float(torch.nn.functional.cosine_similarity(estimate.flatten(), target.flatten(), dim=0))
    return cos, float((estimate - target).norm() / target.norm())


def row(name: str, seed: int, samples: torch.Tensor, target: torch.Tensor, target_name: str) -> str:
    """One table row: estimator, seed, batches, cosine, relative error, relative SE of the mean."""
    cos, rel = compare(samples.mean(0), target)
    se = float((samples.std(0) / len(samples) ** 0.5).norm() / target.norm())
    return f"| {name} | {target_name} | {seed} | {len(samples)} | {cos:.4f} | {rel:.3f} | {se:.3f} |"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=3, help="random MDPs per check")
    ap.add_argument("--out", type=Path, default=None, help="also write the table here (markdown)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    lines = [
        "| estimator | target | MDP seed | batches (100 steps × envs) | cosine | rel. error | rel. SE of the mean |",
        "|---|---|---|---|---|---|---|",
    ]
    for seed in range(args.seeds):
        lab = make_shaping_lab(seed=seed)
        exact, first = lab.exact_gradient(), first_step_expectation(lab)
        hpgd1 = sample_gradients(lab, HPGD(HPGDConfig(trace=1.0, optimizer="sgd")), 160, 100, seed=seed)
        lines.append(row("hpgd, trace κ = 1 (eq. 8)", seed, hpgd1, exact, "exact ∇J"))
        cos, rel = compare(first, exact)
        lines.append(f"| first-step expectation (exact) | exact ∇J | {seed} | — | {cos:.4f} | {rel:.3f} | — |")
        hpgd0 = sample_gradients(lab, HPGD(HPGDConfig(trace=0.0, optimizer="sgd")), 120, 100, seed=seed)
        lines.append(row("hpgd, trace κ = 0", seed, hpgd0, first, "first-step exp."))
        lines.append(row("hpgd, trace κ = 0", seed, hpgd0, exact, "exact ∇J"))
        sob = sample_gradients(lab, SoBiRL(SoBiRLConfig(optimizer="sgd", baseline="mean")), 240, 100, seed=seed)
        lines.append(row("sobirl (truncated eq. 99)", seed, sob, first, "first-step exp."))
        lines.append(row("sobirl (truncated eq. 99)", seed, sob, exact, "exact ∇J"))
        cost_lab = make_shaping_lab(seed=seed, config=LeaderRewardConfig(cost="l2", cost_coef=0.5))
        hpgd_cost = sample_gradients(cost_lab, HPGD(HPGDConfig(trace=1.0, optimizer="sgd")), 160, 100, seed=seed)
        lines.append(row("hpgd κ = 1, L2 cost β = 0.5", seed, hpgd_cost, cost_lab.exact_gradient(), "exact ∇J"))
        samples, target = penalty_step_samples(seed + 3)
        lines.append(row("pbrl value penalty (leader step)", seed + 3, samples, target, "exact λσ(∇V^br − ∇V^y)"))
    text = "\n".join(lines)
    head = (
        f"`python scripts/shaping_exact_checks.py --seeds {args.seeds}` on {datetime.date.today()} "
        f"({platform.machine()}, one torch thread, {time.perf_counter() - t0:.0f} s)\n\n"
    )
    print(head + text)
    if args.out is not None:
        args.out.write_text(head + text + "\n")


if __name__ == "__main__":
    main()
