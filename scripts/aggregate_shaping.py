"""Aggregate delayed-reward shaping runs into a markdown table, rliable IQM with 95% CIs, and a PNG of the curves.

Usage:
    python scripts/aggregate_shaping.py runs/shaping [more roots ...] [--out docs/results/shaping_delayed_mujoco.md]

Reads every ``metrics.csv`` under the directory whose ``run_config.yaml`` names the env, rule and seed (the layout of
``scripts/run_shaping_jobs.sh``; several roots are read together). A setting is the env, the follower and the
budget (``trainer.total_steps``: ``Hopper-v5, PPO, 1M``), so runs of one env at two budgets stay apart. Rows:
``dense`` (``upper=true_reward`` on the dense reward: the ceiling), ``delayed`` (``upper=true_reward`` on the delayed
reward, no shaping: the floor) and one row per shaping rule.
Two scores per run, both on ``eval/true_return`` (dense reward, deterministic policy): the *final* return, the mean
of the last ``--last`` evaluations, and the mean over *all* evaluations (the area under the learning curve divided by
its length: learning speed, and far less noisy than a final PPO evaluation on Hopper). Each is normalised per setting
as the fraction of the floor-to-ceiling gap recovered, ``(R − R_delayed) / (R_dense − R_delayed)`` with the
two baselines' mean scores, and rliable's stratified bootstrap gives IQM and mean with 95% CIs over all runs of a row.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from bilevel_rl.reporting import archive_runs, complete_only, iqm_and_mean, mean_se, plot_curves, write_keeping_analysis

ORDER = ["dense", "delayed", "meta_gradient", "hpgd", "sobirl", "pbrl", "pbrl_unclipped"]


def row_label(cfg: dict) -> str:
    """``dense`` / ``delayed`` for the baselines, else the rule's name (``sobirl_shaping`` → ``sobirl``).

    PBRL runs without ``upper.policy_loss_clip`` are ``pbrl_unclipped`` (the plain score-function extra loss).
    """
    name = cfg["upper"]["name"]
    if name == "true_reward":
        return "dense" if cfg["env"]["visible_reward"]["kind"] == "dense" else "delayed"
    if name == "pbrl" and cfg["upper"].get("policy_loss_clip") is None:
        return "pbrl_unclipped"  # runs before upper.policy_loss_clip existed (the plain extra loss collapsed PPO)
    return name


def budget(steps: int) -> str:
    """``1000000`` → ``1M``, ``500000`` → ``500k``, ``3000`` → ``3k``, ``1500`` → ``1500``."""
    if steps % 1_000_000 == 0:
        return f"{steps // 1_000_000}M"
    return f"{steps // 1000}k" if steps % 1000 == 0 else str(steps)


def load_runs(root: Path, last: int) -> tuple[pd.DataFrame, dict[tuple[str, str], list[pd.DataFrame]]]:
    """One row per run (score, completeness, wall time) and the eval curves by (setting, row)."""
    rows, curves = [], {}
    for metrics in sorted([*root.rglob("metrics.csv"), *root.rglob("metrics.csv.gz")]):
        cfg_path = metrics.parent / "run_config.yaml"
        if not cfg_path.exists():
            continue
        cfg = yaml.safe_load(cfg_path.read_text())
        df = pd.read_csv(metrics)
        if df.empty or "eval/true_return" not in df:
            continue
        evals = df.dropna(subset=["eval/true_return"])
        total = int(cfg["trainer"]["total_steps"])
        env = f"{cfg['env']['id']}, {cfg['follower']['name'].upper()}, {budget(total)}"
        label = row_label(cfg)
        br = "upper/best_response/ep_true_return"
        rows.append(
            {
                "row": label,
                "env": env,
                "seed": int(cfg["seed"]),
                "steps": int(df["env_steps"].max()),
                "complete": int(df["env_steps"].max()) >= total,
                "score": float(evals["eval/true_return"].iloc[-last:].mean()),
                "auc": float(evals["eval/true_return"].mean()),
                "best_response": float(df[br].dropna().iloc[-last:].mean())
                if br in df and df[br].notna().any()
                else np.nan,
                "shaping_abs": float(df["shaping/mean_abs"].dropna().iloc[-1]) if "shaping/mean_abs" in df else np.nan,
                "shaping_corr": float(df["shaping/dense_reward_corr"].dropna().iloc[-1])
                if "shaping/dense_reward_corr" in df and df["shaping/dense_reward_corr"].notna().any()
                else np.nan,
                "wall_min": float(df["time/total_s"].iloc[-1]) / 60,
                "dir": str(metrics.parent),
            }
        )
        curves.setdefault((env, label), []).append(evals[["env_steps", "eval/true_return"]])
    return pd.DataFrame(rows), curves


def order_key(row: str) -> int:
    return ORDER.index(row) if row in ORDER else len(ORDER)


def gap_fractions(runs: pd.DataFrame, column: str) -> pd.Series:
    """``(R − R_delayed) / (R_dense − R_delayed)`` per run, with the baseline means of its env and follower."""
    out = pd.Series(np.nan, index=runs.index)
    for _env, sub in runs.groupby("env"):
        floor = sub.loc[sub["row"] == "delayed", column].mean()
        ceiling = sub.loc[sub["row"] == "dense", column].mean()
        if np.isfinite(floor) and np.isfinite(ceiling) and ceiling != floor:
            out[sub.index] = (sub[column] - floor) / (ceiling - floor)
    return out


def tables(runs: pd.DataFrame, reps: int) -> tuple[str, dict]:
    """Markdown tables and a JSON-able summary."""
    runs = runs.assign(gap=gap_fractions(runs, "score"), gap_auc=gap_fractions(runs, "auc"))
    lines, summary = [], {}
    for env in sorted(runs["env"].unique()):
        sub = runs[runs["env"] == env]
        lines += [
            f"### {env}",
            "",
            "| row | seeds | env steps | final return | gap recovered (final) | mean return, all evals | "
            "gap recovered (all evals) | best response (pbrl) | mean abs shaping | corr(shaping, dense) | "
            "wall min/run |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for row in sorted(sub["row"].unique(), key=order_key):
            r = sub[sub["row"] == row]
            lines.append(
                f"| {row} | {len(r)} | {int(r['steps'].min())} | {mean_se(r['score'], 0)} | {mean_se(r['gap'], 2)} | "
                f"{mean_se(r['auc'], 0)} | {mean_se(r['gap_auc'], 2)} | {mean_se(r['best_response'], 0)} | "
                f"{r['shaping_abs'].mean():.3g} | {r['shaping_corr'].mean():.2f} | "
                f"{r['wall_min'].mean():.0f} |"
            )
            summary.setdefault(env, {})[row] = {
                "seeds": sorted(r["seed"].tolist()),
                "scores": r["score"].tolist(),
                "gap_recovered": r["gap"].tolist(),
                "mean_over_evals": r["auc"].tolist(),
                "gap_recovered_over_evals": r["gap_auc"].tolist(),
            }
        lines.append("")
    for column, title in (("gap", "final return"), ("gap_auc", "mean return over all evaluations")):
        scores = {
            row: runs.loc[runs["row"] == row, column].dropna().to_numpy()[:, None]
            for row in sorted(runs["row"].unique(), key=order_key)
        }
        scores = {k: v for k, v in scores.items() if len(v) >= 2}
        if not scores:
            continue
        point, ci = iqm_and_mean(scores, reps)
        lines += [
            f"### Fraction of the delayed-to-dense gap recovered, {title} (rliable, all settings; 95% CIs)",
            "",
            "| row | runs | IQM | IQM 95% CI | mean | mean 95% CI |",
            "|---|---|---|---|---|---|",
        ]
        for row in scores:
            p, c = point[row], ci[row]
            lines.append(
                f"| {row} | {len(scores[row])} | {p[0]:.2f} | [{c[0, 0]:.2f}, {c[1, 0]:.2f}] | {p[1]:.2f} | "
                f"[{c[0, 1]:.2f}, {c[1, 1]:.2f}] |"
            )
            summary.setdefault(f"aggregate_{column}", {})[row] = {"iqm": float(p[0]), "iqm_ci": c[:, 0].tolist()}
        lines.append("")
    return "\n".join(lines), summary


def main(argv: list[str] | None = None) -> int:
    """CLI entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "roots", type=Path, nargs="+", help="directories holding the runs (scripts/run_shaping_jobs.sh layout)"
    )
    parser.add_argument("--out", type=Path, default=None, help="write the markdown here (and .png, .json beside it)")
    parser.add_argument("--reps", type=int, default=2000, help="bootstrap repetitions")
    parser.add_argument("--last", type=int, default=3, help="evaluations averaged into a run's score")
    parser.add_argument("--partial", action="store_true", help="include runs that have not reached total_steps")
    parser.add_argument(
        "--archive",
        type=Path,
        default=None,
        help="copy each complete run's metrics (gzipped) and run_config.yaml here, by env dir and row, to aggregate "
        "later together with new runs (checkpoints are not copied)",
    )
    args = parser.parse_args(argv)
    if args.archive is not None and len(args.roots) > 1:
        parser.error("--archive: give one root (runs of two roots may share paths below them)")
    loaded = [load_runs(root, args.last) for root in args.roots]
    runs = pd.concat([frame for frame, _ in loaded], ignore_index=True)
    curves: dict[tuple[str, str], list[pd.DataFrame]] = {}
    for _, by_row in loaded:
        for key, frames in by_row.items():
            curves.setdefault(key, []).extend(frames)
    roots = " ".join(str(r) for r in args.roots)
    if runs.empty:
        print(f"no runs with metrics.csv and run_config.yaml under {roots}", file=sys.stderr)
        return 1
    if not args.partial:
        runs, curves = complete_only(runs, curves, "row", ["row", "env", "seed", "steps"])
        if runs.empty:
            print("no complete runs (--partial includes the others)", file=sys.stderr)
            return 1
    if args.archive is not None:
        archive_runs(runs.loc[runs["complete"], "dir"], args.roots[0], args.archive)
    text, summary = tables(runs.reset_index(drop=True), args.reps)
    print(text)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        png = args.out.with_suffix(".png")
        plot_curves(curves, png, order_key, lambda env: f"{env} steps, delayed reward (20 steps)")
        args.out.with_suffix(".json").write_text(json.dumps(summary, indent=1))
        head = [
            "# Learned reward shaping on delayed-reward MuJoCo",
            "",
            f"Generated by `python scripts/aggregate_shaping.py {roots} --out {args.out}` on "
            f"{datetime.date.today()} ({platform.machine()}, {os.cpu_count()} CPUs); runs made by "
            "`scripts/run_shaping_jobs.sh` (one torch thread each). Score: mean `eval/true_return` (dense reward, "
            f"deterministic policy, 5 episodes) of the last {args.last} evaluations; curves: `{png.name}`.",
            "",
        ]
        write_keeping_analysis(args.out, "\n".join(head) + "\n" + text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
