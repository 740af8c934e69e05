"""Aggregate a rule-comparison sweep into a markdown table (mean ± SE per env) and rliable IQM with 95% CIs.

Usage:
    python scripts/aggregate_rules.py multirun/rules_cpu [--out docs/results/rules_mujoco.md] [--reps 2000]
    python scripts/aggregate_rules.py runs/table2 --preset table2_hopper_100k --title "..." \
        --out docs/results/table2_hopper_100k.md --archive docs/results/table2_runs

Reads every ``metrics.csv`` under the sweep directory whose ``run_config.yaml`` names the rule, env and seed.
Per run it takes: the final ``eval/true_return`` (deterministic policy, true reward), its mean over all evaluations
(the area under the learning curve over its length: learning speed, less noisy than one final evaluation), the
held-out preference
accuracy (``reward_model/pref_accuracy``, on pairs the leader has not trained on yet) averaged over the run's
post-warm-up iterations, and the final Pearson correlation of ``r_φ`` with the true reward on the follower's
latest transitions. For the aggregate, returns are normalised per env as ``(R − R_min) / (R_max − R_min)`` with
the D4RL reference scores (random and expert policies; Fu et al. 2020, ``d4rl/infos.py``) for Hopper,
HalfCheetah and Walker2d, and otherwise ``R_min`` = the mean return of all runs at iteration 0 and ``R_max`` = the
mean final return of ``upper=true_reward``. (A run-based reference is degenerate at small budgets: SAC on
HalfCheetah's true reward is still below its iteration-0 return at 8k steps.) rliable's stratified bootstrap
then gives IQM and mean with 95% CIs over all runs and envs (seeded: a regenerated table has the same intervals).
A row is the rule's name, ``-<penalty>`` for PBRL's penalty and ``-gated`` for SoBiRL with ``upper.hyper_term_after``
(the authors' code's gate of the score term); with ``--by-teacher`` also ``@<teacher>`` (B-Pref's teachers;
``noisy`` is the Bradley–Terry teacher). With ``--out`` a PNG of the mean ± SE learning curves is written beside
the table.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from bilevel_rl.reporting import archive_runs, complete_only, iqm_and_mean, mean_se, plot_curves, write_keeping_analysis

REFERENCE = {"Hopper": (-20.272305, 3234.3), "HalfCheetah": (-280.178953, 12135.0), "Walker2d": (1.629008, 4592.3)}
"""D4RL random / expert returns (d4rl/infos.py REF_MIN_SCORE / REF_MAX_SCORE) by env name."""

ORDER = ["true_reward", "drlhf", "sobirl", "stoc_sobirl", "pbrl", "hpgd", "ppa", "hessian_free"]


def rule_label(cfg: dict, by_teacher: bool = False) -> str:
    """The row of a run: the rule's name, ``-<penalty>`` for PBRL, ``-gated`` for a gated SoBiRL score term, and
    with ``by_teacher`` ``@<teacher>`` (``bradley_terry`` is B-Pref's ``noisy`` teacher)."""
    upper = cfg["upper"]
    label = upper["name"] + (f"-{upper['penalty']}" if "penalty" in upper else "")
    label += "-gated" if upper.get("hyper_term_after") else ""
    if by_teacher:
        teacher = cfg.get("teacher", {}).get("name", "oracle")
        label += "@" + ("noisy" if teacher == "bradley_terry" else teacher)
    return label


def load_runs(root: Path, by_teacher: bool = False) -> tuple[pd.DataFrame, dict[tuple[str, str], list[pd.DataFrame]]]:
    """One row per run (rule, env, seed, returns, accuracy, correlation, steps, wall time) and the eval curves."""
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
        later = df[df["iteration"] > 0]
        total = int(cfg["trainer"]["total_steps"])
        rows.append(
            {
                "rule": rule_label(cfg, by_teacher),
                "env": cfg["env"]["id"],
                "seed": int(cfg["seed"]),
                "complete": int(df["env_steps"].max()) >= total,
                "ret_init": float(evals["eval/true_return"].iloc[0]),
                "ret_final": float(evals["eval/true_return"].iloc[-1]),
                "ret_mean": float(evals["eval/true_return"].mean()),
                "acc": float(later["reward_model/pref_accuracy"].mean())
                if "reward_model/pref_accuracy" in df
                else np.nan,
                "corr": float(df["reward_model/true_reward_corr"].dropna().iloc[-1])
                if "reward_model/true_reward_corr" in df and df["reward_model/true_reward_corr"].notna().any()
                else np.nan,
                "wall_s": float(df["time/total_s"].iloc[-1]),
                "aux_steps": float(df["time/aux_env_steps"].dropna().iloc[-1])
                if "time/aux_env_steps" in df and df["time/aux_env_steps"].notna().any()
                else 0.0,
                "dir": str(metrics.parent),
            }
        )
        curves.setdefault((cfg["env"]["id"], rows[-1]["rule"]), []).append(evals[["env_steps", "eval/true_return"]])
    return pd.DataFrame(rows), curves


TEACHERS = ["oracle", "noisy", "mistake", "myopic", "skip", "equal"]


def rule_key(rule: str) -> tuple[int, int, str]:
    """Rows in :data:`ORDER`, then by teacher (:data:`TEACHERS`), then by name."""
    base, _, teacher = rule.partition("@")
    name = base.split("-")[0]
    return (
        ORDER.index(name) if name in ORDER else len(ORDER),
        TEACHERS.index(teacher) if teacher in TEACHERS else -1,
        rule,
    )


def aggregate(runs: pd.DataFrame, reps: int) -> tuple[str, pd.DataFrame]:
    """The markdown tables and the per-rule normalised score matrix."""
    lines = []
    envs = sorted(runs["env"].unique())
    rules = sorted(runs["rule"].unique(), key=rule_key)
    for env in envs:
        sub = runs[runs["env"] == env]
        lines += [
            f"### {env}",
            "",
            "| rule | seeds | true return (final) | true return (mean, all evals) | held-out pref. accuracy | "
            "corr(r_φ, r) | aux env steps | wall s/run |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for rule in rules:
            r = sub[sub["rule"] == rule]
            if r.empty:
                continue
            lines.append(
                f"| {rule} | {len(r)} | {mean_se(r['ret_final'])} | {mean_se(r['ret_mean'])} | {mean_se(r['acc'])} | "
                f"{mean_se(r['corr'])} | "
                f"{r['aux_steps'].mean():.0f} | {r['wall_s'].mean():.0f} |"
            )
        lines.append("")
    # normalised scores for rliable: rows = seeds, columns = envs
    base = runs.groupby("env")["ret_init"].mean()
    top = runs[runs["rule"] == "true_reward"].groupby("env")["ret_final"].mean()
    refs: dict[str, tuple[float, float]] = {}
    for env in envs:
        name = env.split("-")[0]
        refs[env] = REFERENCE.get(name, (float(base[env]), float(top.get(env, np.nan))))
    scores: dict[str, np.ndarray] = {}
    for rule in rules:
        cols = []
        for env in envs:
            r = runs[(runs["rule"] == rule) & (runs["env"] == env)].sort_values("seed")
            lo, hi = refs[env]
            cols.append(((r["ret_final"] - lo) / (hi - lo)).to_numpy())
        n = min(len(c) for c in cols)
        if n > 0:
            scores[rule] = np.stack([c[:n] for c in cols], axis=1)
    lines += [
        "Normalisation (R − R_min) / (R_max − R_min): "
        + ", ".join(f"{e}: R_min {lo:.1f}, R_max {hi:.1f}" for e, (lo, hi) in refs.items()),
        "",
    ]
    table = pd.DataFrame()
    if scores and not np.isnan(np.concatenate([s.ravel() for s in scores.values()])).all():
        point, ci = iqm_and_mean(scores, reps)
        lines += [
            "### Aggregate over envs (rliable; normalised final return; 95% stratified-bootstrap CIs)",
            "",
            "| rule | runs | IQM | IQM 95% CI | mean | mean 95% CI |",
            "|---|---|---|---|---|---|",
        ]
        for rule in scores:
            p, c = point[rule], ci[rule]
            lines.append(
                f"| {rule} | {scores[rule].size} | {p[0]:.3f} | [{c[0, 0]:.3f}, {c[1, 0]:.3f}] | {p[1]:.3f} | "
                f"[{c[0, 1]:.3f}, {c[1, 1]:.3f}] |"
            )
        lines.append("")
        table = pd.DataFrame({r: point[r] for r in scores}, index=["iqm", "mean"]).T
    return "\n".join(lines), table


def main(argv: list[str] | None = None) -> int:
    """CLI entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweep", type=Path, help="directory holding the runs (a sweep dir or a job-file root)")
    parser.add_argument("--out", type=Path, default=None, help="write the tables (markdown) here, the curves beside")
    parser.add_argument("--reps", type=int, default=2000, help="bootstrap repetitions")
    parser.add_argument("--by-teacher", action="store_true", help="one row per rule and teacher")
    parser.add_argument("--preset", default="rules_cpu", help="the runs' preset, named in the header")
    parser.add_argument("--title", default="Upper rules on MuJoCo at a CPU budget", help="the file's title")
    parser.add_argument(
        "--archive",
        type=Path,
        default=None,
        help="copy each complete run's metrics (gzipped) and run_config.yaml here, to aggregate later with new runs",
    )
    args = parser.parse_args(argv)
    runs, curves = load_runs(args.sweep, args.by_teacher)
    if runs.empty:
        print(f"no runs with metrics.csv and run_config.yaml under {args.sweep}", file=sys.stderr)
        return 1
    runs, curves = complete_only(runs, curves, "rule", ["rule", "env", "seed"])
    if runs.empty:
        print("no complete runs", file=sys.stderr)
        return 1
    if args.archive is not None:
        archive_runs(runs["dir"], args.sweep, args.archive)
    text, _ = aggregate(runs, args.reps)
    print(text)
    if args.out is not None:
        png = args.out.with_suffix(".png")
        args.out.parent.mkdir(parents=True, exist_ok=True)
        plot_curves(curves, png, rule_key, lambda env: f"{env}: eval true return (mean ± SE over seeds)")
        write_keeping_analysis(args.out, header(args, runs, png.name) + text + "\n")
    return 0


def header(args: argparse.Namespace, runs: pd.DataFrame, png: str) -> str:
    """Title, provenance (command, machine, date) and the budget read from the runs' configs."""
    cfg = yaml.safe_load((Path(runs["dir"].iloc[0]) / "run_config.yaml").read_text())
    t, b = cfg["trainer"], cfg["buffer"]
    iters = (int(t["total_steps"]) - int(t["initial_steps"])) // int(t["steps_per_iter"])
    labels = int(b["initial_pairs"]) + iters * int(b["pairs_per_iter"])
    teacher = "teacher: see the rows" if args.by_teacher else f"{cfg.get('teacher', {}).get('name', 'oracle')} teacher"
    extra = "" if args.preset == "rules_cpu" else f" --preset {args.preset} --title '{args.title}'"
    extra += " --by-teacher" if args.by_teacher else ""
    return (
        f"# {args.title}\n\n"
        f"Generated by `python scripts/aggregate_rules.py {args.sweep}{extra} --out <this file>` on "
        f"{datetime.date.today().isoformat()} ({platform.machine()}, {os.cpu_count()} CPU cores, no GPU) from "
        f"{len(runs)} complete runs of `exp={args.preset}` (commands: see the preset "
        f"`configs/exp/{args.preset}.yaml` and README); curves: `{png}`.\n\n"
        f"Budget per run: {t['total_steps']} env steps of the main SAC follower ({t['initial_steps']} random-action "
        f"steps, then {iters} outer iterations of {t['steps_per_iter']}), {labels} labelled pairs "
        f"({b['initial_pairs']} initial + {b['pairs_per_iter']} per iteration, {b.get('segment_length', 25)}-step "
        f"segments, {teacher}), {b['warmup_epochs']} warm-up and {b['epochs_per_iter']} per-iteration leader "
        f"epochs, evaluation: {t['eval_episodes']} deterministic episodes on the true reward. Rules with a second "
        "follower (pbrl, hessian_free) also spend the 'aux env steps' column on it. SE = std/sqrt(n) over seeds.\n\n"
    )


if __name__ == "__main__":
    raise SystemExit(main())
