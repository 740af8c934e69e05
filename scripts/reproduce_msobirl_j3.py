"""Reproduce SoBiRL Figure 4 (appendix J.3): M-SoBiRL and Stoc-SoBiRL on the synthetic bilevel RL problem.

Writes ``<out>/msobirl_j3.md`` (summary), ``<out>/msobirl_j3.csv`` (per-iteration curves) and, when matplotlib is
available, ``<out>/msobirl_j3.png``.

    .venv/bin/python scripts/reproduce_msobirl_j3.py            # K = 3000 for every run (about 2 CPU-minutes)
"""

from __future__ import annotations

import argparse
import csv
import datetime
import math
import os
import platform
import shlex
import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from bilevel_rl.tabular.repro.msobirl import J3Config, MSoBiRLConfig, RunLog, make_j3_problem, run_msobirl
from bilevel_rl.tabular.repro.stoc_sobirl import TabularStocSoBiRLConfig, j3_trajectory_objective, run_stoc_sobirl

CHECKPOINTS = (1, 10, 100, 300, 1000, 3000)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--problem-seed", type=int, default=0, help="seed of the J.3 draw (P, M, c, x_1)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the algorithms' generators (w_0, samples)")
    parser.add_argument("--msobirl-iters", type=int, default=3000, help="K for M-SoBiRL (paper: 3000)")
    parser.add_argument("--stoc-iters", type=int, default=3000, help="K for Stoc-SoBiRL")
    parser.add_argument("--stoc-tuples", type=int, default=1000, help="M trajectory tuples per Stoc-SoBiRL estimate")
    parser.add_argument("--no-ablation", action="store_true", help="skip Stoc-SoBiRL without momentum")
    parser.add_argument("--out", type=Path, default=Path("docs/results"), help="output directory")
    return parser.parse_args()


def timed(fn: Callable[..., RunLog], *args: Any, **kwargs: Any) -> tuple[RunLog, float]:
    start = time.process_time()
    log = fn(*args, **kwargs)
    return log, time.process_time() - start


def fmt(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.4g}"


def write_csv(path: Path, runs: dict[str, RunLog]) -> None:
    columns: list[tuple[str, list[float]]] = []
    for name, log in runs.items():
        columns += [
            (f"{name}_estimate_norm", log.estimate_norm),
            (f"{name}_exact_grad_norm", log.exact_grad_norm),
            (f"{name}_f", log.f),
            (f"{name}_phi", log.phi),
        ]
        columns += [(f"{name}_{key}", values) for key, values in log.extra.items()]
    length = max(len(values) for _, values in columns)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["iteration"] + [name for name, _ in columns])
        for i in range(length):
            writer.writerow([i + 1] + [f"{values[i]:.10g}" if i < len(values) else "" for _, values in columns])


def write_plot(path: Path, runs: dict[str, RunLog], labels: dict[str, str], optimum: float) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, (ax_g, ax_f) = plt.subplots(1, 2, figsize=(11, 4))
    styles = {"msobirl": ("C0", "-"), "stoc": ("C1", "-"), "stoc_nomom": ("C2", "--")}
    for name, log in runs.items():
        color, ls = styles[name]
        its = range(1, len(log.f) + 1)
        ax_g.semilogy(its, log.exact_grad_norm, color=color, ls=ls, label=f"{labels[name]}: exact ‖∇φ(x_k)‖")
        ax_g.semilogy(its, log.estimate_norm, color=color, ls=":", alpha=0.5, label=f"{labels[name]}: estimate")
        ax_f.semilogy(its, [max(f - optimum, 1e-16) for f in log.f], color=color, ls=ls, label=labels[name])
    ax_g.set(xlabel="outer iteration k", ylabel="hypergradient norm", title="‖∇φ(x_k)‖ (lines) and estimator (dotted)")
    ax_f.set(
        xlabel="outer iteration k",
        ylabel="f(x_k, π_k) − f*",
        title=f"upper-level loss minus f* = {optimum:g} (floored at 1e-16)",
    )
    ax_g.legend(fontsize=7)
    ax_f.legend(fontsize=7)
    fig.suptitle("SoBiRL appendix J.3 synthetic problem (cf. paper Figure 4)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def main() -> None:
    args = parse_args()
    torch.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    problem_cfg = J3Config(seed=args.problem_seed)
    problem = make_j3_problem(problem_cfg)
    objective = j3_trajectory_objective(problem)

    ms_cfg = MSoBiRLConfig(iterations=args.msobirl_iters, seed=args.seed)
    stoc_cfg = TabularStocSoBiRLConfig(iterations=args.stoc_iters, num_tuples=args.stoc_tuples, seed=args.seed)
    configs: dict[str, MSoBiRLConfig | TabularStocSoBiRLConfig] = {"msobirl": ms_cfg, "stoc": stoc_cfg}
    labels = {"msobirl": "M-SoBiRL", "stoc": "Stoc-SoBiRL", "stoc_nomom": "Stoc-SoBiRL, no momentum"}

    runs: dict[str, RunLog] = {}
    cpu: dict[str, float] = {}
    runs["msobirl"], cpu["msobirl"] = timed(run_msobirl, problem.x0, problem.reward, problem.upper, problem.mdp, ms_cfg)
    print(f"M-SoBiRL: {cpu['msobirl']:.1f} s CPU", flush=True)
    runs["stoc"], cpu["stoc"] = timed(
        run_stoc_sobirl, problem.x0, problem.reward, problem.upper, objective, problem.mdp, stoc_cfg
    )
    print(f"Stoc-SoBiRL: {cpu['stoc']:.1f} s CPU", flush=True)
    if not args.no_ablation:
        nomom_cfg = TabularStocSoBiRLConfig(
            iterations=args.stoc_iters, num_tuples=args.stoc_tuples, seed=args.seed, momentum=False
        )
        configs["stoc_nomom"] = nomom_cfg
        runs["stoc_nomom"], cpu["stoc_nomom"] = timed(
            run_stoc_sobirl, problem.x0, problem.reward, problem.upper, objective, problem.mdp, nomom_cfg
        )
        print(f"Stoc-SoBiRL without momentum: {cpu['stoc_nomom']:.1f} s CPU", flush=True)

    write_csv(args.out / "msobirl_j3.csv", runs)
    has_png = write_plot(args.out / "msobirl_j3.png", runs, labels, problem.optimum)

    command = " ".join([".venv/bin/python", shlex.quote(sys.argv[0])] + [shlex.quote(a) for a in sys.argv[1:]])
    stoc = runs["stoc"]
    lines = [
        "# M-SoBiRL and Stoc-SoBiRL on the SoBiRL appendix J.3 synthetic problem",
        "",
        "Generated by `scripts/reproduce_msobirl_j3.py`; every number below was measured in this run.",
        "",
        f"* Command: `{command}`",
        f"* Machine: {os.cpu_count()}-core {platform.machine()} CPU, torch {torch.__version__}, 1 torch thread, "
        "shared with other jobs (CPU time, not wall time, is reported).",
        f"* Date: {datetime.date.today().isoformat()}",
        f"* Problem: {asdict(problem_cfg)}; `f(x, π) = ½‖x‖² + ½‖π‖²`, `r_sa(x) = c_sa xᵀMx`; known optimum "
        f"f* = {problem.optimum:g} at x = 0.",
        "",
        "| run | config | CPU time (s) |",
        "|---|---|---|",
    ]
    for name in runs:
        lines.append(f"| {labels[name]} | `{asdict(configs[name])}` | {cpu[name]:.1f} |")
    lines += [
        "",
        "CPU time includes the per-iteration exact hypergradient `exact_hypergradient(x_k)` used only for logging.",
        "",
        "`‖∇̂φ‖` is the norm of the update direction (M-SoBiRL: estimator of Alg. 2, what the authors' code logs; "
        "Stoc-SoBiRL: momentum estimate `h_k`). `‖∇φ‖` is the exact hypergradient norm at `x_k`; `f` is "
        "`f(x_k, π_k)` with the algorithm's own policy `π_k`.",
        "",
    ]
    for name, log in runs.items():
        lines += [f"**{labels[name]}**", "", "| k | ‖∇̂φ‖ | ‖∇φ(x_k)‖ | f(x_k, π_k) |", "|---|---|---|---|"]
        for k in (k for k in CHECKPOINTS if k <= len(log.f)):
            i = k - 1
            lines.append(f"| {k} | {fmt(log.estimate_norm[i])} | {fmt(log.exact_grad_norm[i])} | {log.f[i]:.10g} |")
        lines.append("")
    lines += ["Last iteration K:", "", "| run | K | ‖∇φ(x_K)‖ | f(x_K, π_K) | f − f* | ‖x_{K+1}‖ (returned) |"]
    lines.append("|---|---|---|---|---|---|")
    for name, log in runs.items():
        lines.append(
            f"| {labels[name]} | {len(log.f)} | {fmt(log.exact_grad_norm[-1])} | {log.f[-1]:.10g} | "
            f"{log.f[-1] - problem.optimum:.3g} | {float(log.x.norm()) if log.x is not None else math.nan:.3g} |"
        )
    ms = runs["msobirl"]
    peak = max(range(len(ms.f)), key=lambda i: ms.f[i])
    late = range(min(100, len(ms.f) - 1), len(ms.f))
    gap = max(late, key=lambda i: abs(ms.estimate_norm[i] - ms.exact_grad_norm[i]) / ms.exact_grad_norm[i])
    lines += [
        "",
        f"M-SoBiRL's `f` is non-monotone: it peaks at {runs['msobirl'].f[peak]:.4g} (iteration {peak + 1}) and then "
        f"decreases to {runs['msobirl'].f[-1]:.10g} at k = K; the training logs in the authors' code show the same "
        "overshoot.",
        f"For k ≥ 100 the M-SoBiRL estimator is furthest from the exact hypergradient at k = {gap + 1}: "
        f"‖∇̂φ‖ = {ms.estimate_norm[gap]:.4g} vs ‖∇φ‖ = {ms.exact_grad_norm[gap]:.4g}, with w-tracking error "
        f"‖w_k − A_k⁻¹b_k‖ = {ms.extra['w_error'][gap]:.3g} (one w step per iteration, so w_k lags its target "
        "while π_k moves)"
        + (
            f"; the step taken there raises f from {ms.f[gap]:.4g} to {ms.f[gap + 1]:.4g}."
            if gap + 1 < len(ms.f) and ms.f[gap + 1] > ms.f[gap]
            else "."
        ),
        f"Stoc-SoBiRL used {stoc.extra['inner_steps'][0]:.0f} inner steps at k = 1 and "
        f"{stoc.extra['inner_steps'][-1]:.0f} at k = K (certified ‖π_k − π*‖² ≤ ε_k); momentum weight 1 − μ_k "
        f"went from {stoc.extra['momentum_weight'][1]:.3g} (k = 2) to {stoc.extra['momentum_weight'][-1]:.3g}.",
        "",
        "Files: `msobirl_j3.csv` (per-iteration curves, including the `extra` logs: M-SoBiRL `w_error`; "
        "Stoc-SoBiRL `sample_grad_norm` = ‖∇̄φ_k‖, `beta`, `momentum_weight` = 1 − μ_k, `inner_steps`, "
        f"`certified_bound`){', `msobirl_j3.png` (plot)' if has_png else ''}.",
        "",
    ]
    (args.out / "msobirl_j3.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
