"""Aggregate tax-design runs (HPGD §5.2, Fig. 3) into docs/results/tax_design.md, a PNG and a JSON summary.

Usage:
    python scripts/aggregate_tax_design.py runs/tax [--out docs/results/tax_design.md] [--archive DIR]

Reads every ``metrics.csv`` (or archived ``metrics.csv.gz``) under the directory whose ``run_config.yaml`` is an
``exp=tax_design*`` run. Rows are the leader rules (``hpgd``, ``zero_order``) and ``true_reward`` (taxes held at their
initial 0.3: the no-design line). Social welfare per outer iteration is ``follower/leader_return``, the mean
undiscounted welfare of the episodes in the iteration's batch (Fig. 3a plots a rolling mean against the outer
iteration); the evaluation's ``eval/leader_return`` is reported beside it. The paper's claims are checked one by one:
≈ +25 % welfare for HPGD, faster than Zero-Order; HPGD raises the income tax; it keeps the VAT on good 2 (the most
preferred on average) low and raises the one on good 3 (the least preferred); Zero-Order does not tell the goods apart.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from bilevel_rl.reporting import ANALYSIS, archive_runs

TAXES = ("income_tax", "vat_1", "vat_2", "vat_3")
LABELS = {"hpgd": "HPGD", "zero_order": "Zero-Order", "true_reward": "no design (taxes fixed at 0.3)"}
WINDOW = 10  # iterations in the rolling mean of the welfare curve


def load_runs(root: Path) -> tuple[pd.DataFrame, dict[str, pd.DataFrame]]:
    """One row per run and its per-iteration curve (welfare, taxes) by run directory."""
    rows: list[dict] = []
    curves: dict[str, pd.DataFrame] = {}
    for metrics in sorted([*root.rglob("metrics.csv"), *root.rglob("metrics.csv.gz")]):
        cfg_path = metrics.parent / "run_config.yaml"
        if not cfg_path.exists():
            continue
        cfg = yaml.safe_load(cfg_path.read_text())
        if cfg.get("reward_model", {}).get("name") != "tax":
            continue
        df = pd.read_csv(metrics)
        if df.empty or "follower/leader_return" not in df:
            continue
        rule = cfg["upper"]["name"]
        it = df.dropna(subset=["follower/leader_return"])
        n = len(it)
        welfare, tenth = it["follower/leader_return"], max(1, n // 10)
        head, tail = welfare.iloc[:tenth], welfare.iloc[-tenth:]
        evals = df["eval/leader_return"].dropna() if "eval/leader_return" in df else pd.Series(dtype=float)
        taxes = {t: float(df[f"upper/tax/{t}"].dropna().iloc[-1]) for t in TAXES if f"upper/tax/{t}" in df}
        rows.append(
            {
                "rule": rule,
                "seed": int(cfg["seed"]),
                "steps": int(df["env_steps"].max()),
                "complete": int(df["env_steps"].max()) >= int(cfg["trainer"]["total_steps"]),
                "iterations": n,
                "welfare_first": float(head.mean()),
                "welfare_last": float(tail.mean()),
                "eval_welfare": float(evals.iloc[-3:].mean()) if len(evals) else np.nan,
                **taxes,
                "dir": str(metrics.parent),
            }
        )
        keep = ["iteration", "follower/leader_return", *[f"upper/tax/{t}" for t in TAXES if f"upper/tax/{t}" in df]]
        curves[str(metrics.parent)] = it[keep].reset_index(drop=True)
    return pd.DataFrame(rows), curves


def mean_se(x: pd.Series, digits: int = 1) -> str:
    """``mean ± SE`` over runs (SE 0 for one run)."""
    a = np.asarray(x, dtype=float)
    se = a.std(ddof=1) / np.sqrt(len(a)) if len(a) > 1 else 0.0
    return f"{a.mean():.{digits}f} ± {se:.{digits}f}"


def claims(runs: pd.DataFrame) -> list[str]:
    """The paper's Fig. 3 claims with the numbers that decide them."""
    by = {r: d for r, d in runs.groupby("rule")}
    out = []
    hpgd, zo, fixed = by.get("hpgd"), by.get("zero_order"), by.get("true_reward")
    if hpgd is not None:
        own = (hpgd.welfare_last - hpgd.welfare_first) / hpgd.welfare_first.abs()
        line = f"HPGD's welfare, last vs first tenth of its iterations: {100 * own.mean():+.1f} % (per run: "
        line += ", ".join(f"{100 * v:+.1f} %" for v in own) + ")"
        if fixed is not None:
            rel = (hpgd.welfare_last.mean() - fixed.welfare_last.mean()) / abs(fixed.welfare_last.mean())
            line += f"; against fixed taxes at the end: {100 * rel:+.1f} %"
        out.append(f"**≈ +25 % social welfare (HPGD)**: {line}.")
        x = hpgd.income_tax
        out.append(
            f"**HPGD raises the income tax**: final x = {mean_se(x, 3)} (start 0.3); raised in "
            f"{int((x > 0.3).sum())}/{len(x)} runs."
        )
        low = (hpgd.vat_2 < hpgd[["vat_1", "vat_3"]].min(axis=1)).sum()
        high = (hpgd.vat_3 > hpgd[["vat_1", "vat_2"]].max(axis=1)).sum()
        out.append(
            f"**HPGD keeps VAT 2 low and raises VAT 3**: y1 = {mean_se(hpgd.vat_1, 3)}, y2 = {mean_se(hpgd.vat_2, 3)}, "
            f"y3 = {mean_se(hpgd.vat_3, 3)}; y2 the lowest VAT in {low}/{len(hpgd)} runs, y3 the highest in "
            f"{high}/{len(hpgd)}."
        )
    if hpgd is not None and zo is not None:
        out.append(
            f"**HPGD converges faster than Zero-Order, which ends at an equivalent level**: welfare in the first tenth "
            f"{mean_se(hpgd.welfare_first)} vs {mean_se(zo.welfare_first)}, in the last tenth "
            f"{mean_se(hpgd.welfare_last)} vs {mean_se(zo.welfare_last)}."
        )
        spread = zo[["vat_1", "vat_2", "vat_3"]].std(axis=1, ddof=0)
        out.append(
            f"**Zero-Order does not tell the goods apart**: spread (std) of its three VATs {mean_se(spread, 3)}, "
            f"HPGD's {mean_se(hpgd[['vat_1', 'vat_2', 'vat_3']].std(axis=1, ddof=0), 3)}."
        )
    return out


def plot(curves: dict[str, list[pd.DataFrame]], path: Path) -> None:
    """Fig. 3: (a) welfare per outer iteration (rolling mean, mean ± SE over seeds), (b) tax rates of each rule."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for rule, frames in sorted(curves.items()):
        n = min(len(f) for f in frames)
        w = np.stack([f["follower/leader_return"].rolling(WINDOW, min_periods=1).mean().to_numpy()[:n] for f in frames])
        m = w.mean(0)
        se = w.std(0, ddof=1) / np.sqrt(len(w)) if len(w) > 1 else np.zeros_like(m)
        axes[0].plot(np.arange(n), m, label=LABELS.get(rule, rule))
        axes[0].fill_between(np.arange(n), m - se, m + se, alpha=0.2)
        if rule == "true_reward":
            continue
        for t, ls in zip(TAXES, ("-", "--", ":", "-."), strict=True):
            col = f"upper/tax/{t}"
            if col in frames[0]:
                mean_tax = np.mean([f[col].to_numpy()[:n] for f in frames], 0)
                axes[1].plot(mean_tax, ls=ls, label=f"{LABELS.get(rule, rule)} {t}")
    axes[0].set(xlabel="outer iteration", ylabel=f"social welfare per episode ({WINDOW}-iteration mean)")
    axes[1].set(xlabel="outer iteration", ylabel="tax rate")
    axes[0].legend(fontsize=7)
    axes[1].legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("root", type=Path, help="directory holding the runs")
    parser.add_argument("--out", type=Path, default=None, help="write the markdown here (and .png, .json beside it)")
    parser.add_argument("--partial", action="store_true", help="include runs that have not reached total_steps")
    parser.add_argument("--archive", type=Path, default=None, help="copy the runs' metrics (gzipped) and configs here")
    args = parser.parse_args(argv)
    runs, curves = load_runs(args.root)
    if runs.empty:
        print(f"no tax-design runs under {args.root}", file=sys.stderr)
        return 1
    if not args.partial:
        runs = runs[runs.complete]
    by_rule = {rule: [curves[d] for d in group.dir] for rule, group in runs.groupby("rule")}
    table = [
        "| rule | runs | outer iterations | welfare, first tenth | welfare, last tenth | eval welfare "
        "| x | y1 | y2 | y3 |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for rule, d in runs.groupby("rule"):
        table.append(
            f"| {LABELS.get(rule, rule)} | {len(d)} | {int(d.iterations.mean())} | {mean_se(d.welfare_first)} | "
            f"{mean_se(d.welfare_last)} | {mean_se(d.eval_welfare)} | "
            + " | ".join(mean_se(d[t], 3) if t in d else "–" for t in TAXES)
            + " |"
        )
    text = "\n".join(
        [
            "# Tax design (HPGD §5.2, Fig. 3)",
            "",
            f"Made by `python scripts/aggregate_tax_design.py {args.root}` on {datetime.date.today().isoformat()} "
            f"({platform.machine()}); runs: `exp=tax_design` (see `configs/exp/tax_design.yaml` for the budget).",
            "",
            *table,
            "",
            "Welfare: mean undiscounted social welfare per 200-step episode of the household's batch at each outer "
            "iteration (first and last tenth of the iterations); eval welfare: mean of the last 3 evaluations. "
            "Taxes: final values (x income tax, y VATs), mean ± SE over seeds.",
            "",
            f"![curves]({(args.out.stem if args.out else 'tax_design')}.png)",
            "",
            "## The paper's claims",
            "",
            *[f"* {c}" for c in claims(runs)],
            "",
        ]
    )
    if args.archive is not None:
        archive_runs(runs["dir"], args.root, args.archive)
    if args.out is None:
        print(text)
        return 0
    old = args.out.read_text() if args.out.exists() else ""
    keep = old[old.index(ANALYSIS) :] if ANALYSIS in old else f"{ANALYSIS}\n\n(to be written)\n"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text + "\n" + keep)
    plot(by_rule, args.out.with_suffix(".png"))
    args.out.with_suffix(".json").write_text(json.dumps(runs.drop(columns="dir").to_dict("records"), indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
