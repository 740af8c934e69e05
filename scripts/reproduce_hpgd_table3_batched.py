"""HPGD Table 3 (Four-Rooms, HPGD §5.1) at the paper's budget, every run of a method in one batch.

One invocation runs one method over every (cell, seed, learning rate[, C]) with
:mod:`bilevel_rl.tabular.repro.four_rooms_batch` and stores it in a JSON file (methods can run in parallel processes,
each with its own ``--method``); ``--report`` turns the JSON into the Markdown table against the paper, with a
per-entry ``within_2se`` in a companion JSON.

    python scripts/reproduce_hpgd_table3_batched.py --method amd --out runs/table3/amd.json
    python scripts/reproduce_hpgd_table3_batched.py --method zero_order --out runs/table3/zero_order.json
    python scripts/reproduce_hpgd_table3_batched.py --method hpgd --out runs/table3/hpgd.json
    python scripts/reproduce_hpgd_table3_batched.py --report runs/table3/*.json  # -> hpgd_four_rooms_table3.md

An interrupted run continues from its checkpoint (``<out>.ckpt``, every ``--checkpoint-every`` iterations) when the
same command is run again. On a cluster, one job per method and cell
(``--cells 0.001:1 --out runs/table3/hpgd_0.001_1.json``, ...): the report merges the files of a method.

Conventions (``--convention``): ``authors`` (default) is what the authors' code computes behind the table: the oracle
and the metric use their dynamic-programming model (chosen direction with probability 1 − 4/3·0.33 = 0.56, each other
0.1467, from the configs' ``fail_prob: 0.33``), HPGD's trajectories come from their simulator (0.67, 0.11 each), the
cost is charged per state and the active goal carries no penalty. (Run files written before this convention took the
configs' 0.33 used 1/3, i.e. 5/9 and 2/3; they carry no ``slips`` field and read as ``authors-fail=1/3``.)
``paper`` is §5.1 as printed (2/3 everywhere, ``Σ_{s,a}`` cost, goal penalised). ``--model-slip``,
``--sim-slip``, ``--cost`` and ``--goal`` change one convention at a time (the ablation). The metric (``--metric``):
``sampled`` (the authors' logged value, ``V̄`` of the iteration's sampled context) or ``average`` (both contexts).
AMD's follower (``--amd-follower``): ``exact`` (solved and differentiated exactly every step) or ``sweeps``
(Algorithm 9 as printed, ``--amd-sweeps`` warm-started sweeps per step, the authors' ``train_amd.py``).
``--hpgd-partial-episodes`` lets HPGD's statistics use each environment's unfinished last episode, and
``--hpgd-direct start-state`` estimates the direct ``∇r̄`` term by the every-visit average of its reward-to-go at the
start state, as the authors' estimator does (both together: their estimator). ``--leader-float32`` keeps the
leader's logits in float32, as the authors' JAX code does (everything else float64). ``--zo-numerics float32``
computes Zero-Order's two values per step as the authors' code does, by float32 dynamic programming from zero
(``bilevel_rl.tabular.repro.authors_float32``), whose rounding noise the late difference quotients divide by ``C/t``.
Scores: each run's metric averaged over the last ``--window`` iterations; per cell and method the (lr[, C]) with the
best mean over seeds; mean ± standard error with ``std(ddof=0)/√n`` (numpy's default, the authors' notebook).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import argparse  # noqa: E402
import datetime  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import platform  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from bilevel_rl.reporting import write_keeping_analysis  # noqa: E402
from bilevel_rl.tabular.repro.authors_float32 import ZO_NUMERICS  # noqa: E402
from bilevel_rl.tabular.repro.four_rooms import TABLE3, TABLE3_CELLS, FourRooms, FourRoomsConfig  # noqa: E402
from bilevel_rl.tabular.repro.four_rooms_batch import (  # noqa: E402
    AUTHORS_CS,
    AUTHORS_LRS,
    BatchConfig,
    BatchFourRooms,
    run_batch,
)

LABEL = {"hpgd": "HPGD", "amd": "AMD", "zero_order": "Zero-Order"}
# convention suffixes of the HPGD-only estimator options (--hpgd-partial-episodes, --hpgd-direct start-state)
HPGD_ONLY = ("+partial-episodes", "+direct=start-state")
AUTHORS_ESTIMATOR = "".join(HPGD_ONLY)  # both: HPGD's estimator exactly as the authors' code computes it
ZO_FLOAT32 = "+zo-float32"  # Zero-Order's values in the authors' float32 arithmetic (--zo-numerics float32)


def without_method_only(convention: str) -> str:
    """The convention without its one-method suffixes (HPGD's estimator, Zero-Order's numerics): they change no
    other method's runs."""
    for suffix in (*HPGD_ONLY, ZO_FLOAT32):
        convention = convention.replace(suffix, "")
    return convention


AUTHORS_FAIL_PROB = 0.33  # fail_prob of data/experiment_reg_lambda_*/config.yaml
CONVENTIONS = {
    # model slip, simulator slip, cost over (s, a), goal penalised
    # the authors' configs: fail_prob 0.33; their model moves as chosen w.p. 1 - 4/3 * 0.33 = 0.56 (slip 0.44), their
    # simulator w.p. 1 - 0.33 = 0.67 (slip 0.33)
    "authors": (AUTHORS_FAIL_PROB * 4.0 / 3.0, AUTHORS_FAIL_PROB, False, False),
    "paper": (1.0 / 3.0, 1.0 / 3.0, True, True),
}


def environment_for(args: argparse.Namespace) -> tuple[str, FourRoomsConfig, float]:
    """The environment of ``--convention`` with the one-at-a-time overrides (``--model-slip`` ... ``--goal``)."""
    model_slip, sim_slip, over_actions, goal_paid = CONVENTIONS[args.convention]
    parts = [args.convention]
    if args.model_slip is not None:
        model_slip = args.model_slip
        parts.append(f"model-slip={args.model_slip:g}")
    if args.sim_slip is not None:
        sim_slip = args.sim_slip
        parts.append(f"sim-slip={args.sim_slip:g}")
    if args.cost is not None:
        over_actions = args.cost == "state-action"
        parts.append(f"cost={args.cost}")
    if args.goal is not None:
        goal_paid = args.goal == "penalised"
        parts.append(f"goal={args.goal}")
    cfg = FourRoomsConfig(slip_prob=model_slip, cost_over_actions=over_actions, mask_goal_penalty=not goal_paid)
    return "+".join(parts), cfg, sim_slip


LEGACY_AUTHORS = "authors-fail=1/3"


def load_record(path: str | Path) -> dict:
    """A run file. Files without a ``slips`` field were written when the ``authors`` convention used a fail
    probability of 1/3 (model slip 4/9, simulator 1/3) instead of the configs' 0.33: their convention is renamed
    ``authors-fail=1/3…`` so that a report never mixes them with files of the current one."""
    record = json.loads(Path(path).read_text())
    if "slips" not in record and record["convention"].startswith("authors"):
        record["convention"] = LEGACY_AUTHORS + record["convention"][len("authors") :]
    return record


def parse_cells(text: str) -> tuple[tuple[float, float], ...]:
    if text == "all":
        return TABLE3_CELLS
    return tuple((float(a), float(b)) for a, b in (item.split(":") for item in text.split(",")))


def run(args: argparse.Namespace) -> int:
    torch.set_num_threads(1)
    name, env_cfg, sim_slip = environment_for(args)
    problem = BatchFourRooms(FourRooms(env_cfg), sim_slip_prob=sim_slip)
    config = BatchConfig(
        method=args.method,
        cells=parse_cells(args.cells),
        seeds=tuple(range(args.seeds)),
        lrs=tuple(args.lrs),
        Cs=tuple(args.Cs),
        iterations=args.iterations,
        window=args.window,
        metric=args.metric,
        num_envs=args.num_envs,
        steps_per_env=args.steps_per_env,
        amd_follower=args.amd_follower,
        amd_sweeps=args.amd_sweeps,
        leader_float32=args.leader_float32,
        zo_numerics=args.zo_numerics,
        hpgd_partial_episodes=args.hpgd_partial_episodes,
        hpgd_direct=args.hpgd_direct.replace("-", "_"),
        progress_every=args.progress_every,
    )
    if args.method == "amd" and args.amd_follower == "sweeps":
        name += f"+amd-sweeps={args.amd_sweeps}"
    if args.leader_float32:
        name += "+leader-float32"
    if args.hpgd_partial_episodes and args.method == "hpgd":
        name += HPGD_ONLY[0]
    if args.hpgd_direct == "start-state" and args.method == "hpgd":
        name += HPGD_ONLY[1]
    if args.zo_numerics == "float32" and args.method == "zero_order":
        name += ZO_FLOAT32
    print(f"{args.method}: {len(config.runs())} runs x {args.iterations} iterations ({name})", flush=True)
    slips = [env_cfg.slip_prob, sim_slip]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    ckpt = out.with_suffix(".ckpt")  # resumed from when the command is run again after an interruption
    generator = torch.Generator().manual_seed(args.seed)
    result = run_batch(problem, config, generator, checkpoint=ckpt, checkpoint_every=args.checkpoint_every)
    record = {
        "method": args.method,
        "convention": name,
        "slips": slips,
        "metric_kind": args.metric,
        "batch_seed": args.seed,
        "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in result.config.items()},
        "runs": [
            {**r, "metric": m, "budget_used": b, "curve": c}
            for r, m, b, c in zip(result.runs, result.metric, result.budget_used, result.curves, strict=True)
        ],
        "cpu_seconds": result.cpu_seconds,
        "rounds_per_solve": result.rounds_per_solve,
        "date": datetime.date.today().isoformat(),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, one thread",
    }
    out.write_text(json.dumps(record))
    print(f"wrote {out} ({result.cpu_seconds / 60:.1f} CPU-min, {result.rounds_per_solve:.2f} PI rounds per solve)")
    return 0


def mean_se(values: list[float]) -> tuple[float, float]:
    """Mean and ``std(ddof=0)/√n``."""
    arr = np.asarray(values, dtype=float)
    return float(arr.mean()), float(arr.std() / math.sqrt(len(arr)))


def best_group(runs: list[dict], lam: float, beta: float) -> tuple[tuple[float, float], list[dict]]:
    """The (lr, C) with the best mean metric over seeds in this cell, and its runs."""
    groups: dict[tuple[float, float], list[dict]] = {}
    for r in runs:
        if r["lam"] == lam and r["beta"] == beta:
            groups.setdefault((r["lr"], r["C"]), []).append(r)
    key = max(groups, key=lambda k: float(np.mean([r["metric"] for r in groups[k]])))
    return key, groups[key]


def budget_line(label: str, cfg: dict) -> str:
    """One method's budget as a Markdown bullet."""
    hpgd = f", {cfg['num_envs']} × {cfg['steps_per_env']:,} simulator steps per gradient"
    if cfg.get("hpgd_partial_episodes"):
        hpgd += ", statistics over finished and unfinished episodes"
    if cfg.get("hpgd_direct") == "start_state":
        hpgd += ", the direct term averaged over every visit of the start state"
    if cfg.get("hpgd_partial_episodes") and cfg.get("hpgd_direct") == "start_state":
        hpgd += " (the authors' estimator)"
    zo = f", C {cfg['Cs']}"
    if cfg.get("zo_numerics") == "float32":
        zo += ", both values per step computed in the authors' float32 arithmetic (their dynamic programming from zero)"
    extra = {"Zero-Order": zo, "HPGD": hpgd}
    return (
        f"- {label}: {cfg['iterations']:,} outer iterations, {len(cfg['seeds'])} seeds, learning rates {cfg['lrs']}"
        f"{extra.get(label, '')}."
    )


def tolerance(se: float, paper_se: float) -> float:
    """The within-2-SE test's allowance: ``2·sqrt(SE² + SE_paper²) + 0.005`` (the paper prints two decimals)."""
    return 2 * math.sqrt(se**2 + paper_se**2) + 0.005


def merge_methods(records: list[dict]) -> dict[str, dict]:
    """Method → one record; files of one method (e.g. one per cell, from a cluster, or one per C) are merged.

    The merged config's ``lrs`` and ``Cs`` are the union of the files' grids (the grid the best entry is chosen from).
    """
    by_method: dict[str, dict] = {}
    for r in records:
        merged = by_method.setdefault(r["method"], {**r, "runs": [], "cpu_seconds": 0.0, "config": {**r["config"]}})
        merged["runs"] = merged["runs"] + r["runs"]
        merged["cpu_seconds"] += r["cpu_seconds"]
        cfg = merged["config"]
        cfg["lrs"] = sorted(set(cfg["lrs"]) | set(r["config"]["lrs"]), reverse=True)
        cfg["Cs"] = sorted(set(cfg.get("Cs", [])) | set(r["config"].get("Cs", [])))
    return by_method


def diagnose(entry: dict, group: list[dict], cfg: dict, averaged: bool = False) -> list[str]:
    """Measured facts about an entry that misses the paper, from its own runs.

    * the sign and size of the gap, and the test's :func:`tolerance`;
    * whether the chosen learning rate (or C) lies at the edge of the grid;
    * whether the runs were still moving: the mean over seeds of (mean of the curve over the last window − mean
      over the window before), reported when it exceeds 2 SE over seeds and 0.005; only with ≥ 5 curve points
      per window and ≥ 3 seeds (a curve point of HPGD or Zero-Order is one sampled context's value);
    * with ``averaged`` (curve points are context averages: AMD, or ``--metric average``), whether the value still
      swings within runs over the last window: the mean over seeds of its std there, when above the tolerance.
    """
    gap = entry["mean"] - entry["paper_mean"]
    tol = tolerance(entry["se"], entry["paper_se"])
    facts = [f"ours {'above' if gap > 0 else 'below'} the paper by {abs(gap):.3f} (tolerance {tol:.3f})"]
    lrs = cfg["lrs"]
    if len(lrs) > 1 and entry["lr"] in (min(lrs), max(lrs)):
        facts.append(f"best lr {entry['lr']:g} at the edge of the grid {lrs}")
    C = entry["C"]
    if entry["method"] == "Zero-Order" and len(cfg["Cs"]) > 1 and C in (min(cfg["Cs"]), max(cfg["Cs"])):
        facts.append(f"best C {C:g} at the edge of the grid {cfg['Cs']}")
    n = cfg["window"] // cfg["curve_every"]
    curves = [r["curve"] for r in group if len(r["curve"]) >= 2 * n]
    if n >= 5 and len(curves) >= 3:  # fewer points or seeds: one sampled context's value is too noisy to say
        arr = np.asarray(curves, dtype=float)
        moved = arr[:, -n:].mean(1) - arr[:, -2 * n : -n].mean(1)
        m, s = float(moved.mean()), float(moved.std() / math.sqrt(len(moved)))
        if abs(m) > max(2 * s, 0.005):
            facts.append(f"still {'rising' if m > 0 else 'falling'}: {m:+.3f} from the previous window to the last")
        wobble = float(arr[:, -n:].std(1).mean())
        if averaged and wobble > tol:
            span = float((arr[:, -n:].max(1) - arr[:, -n:].min(1)).mean())
            facts.append(f"not converged: the value swings within each run over the last window (std {wobble:.3f}, "
                         f"max − min {span:.3f})")  # fmt: skip
    return facts


def restrict_grid(record: dict, lrs: list[float] | None, Cs: list[float] | None, allow_empty: bool = False) -> dict:
    """The record with only the runs whose lr (and, for Zero-Order, C) lie in the given grids; its config says so.

    A grid that leaves no run is refused, unless ``allow_empty`` (the report's other files of the method may have some).

    Selecting the best (lr[, C]) from a smaller grid is how the authors' code grid (lr {0.5, 0.1, 0.05, 0.01}, C
    {0.01, 0.1, 0.5, 1.0}) is compared with the paper's (App. F: lr {1.0, 0.5, 0.1, 0.05, 0.01}) without new runs.
    """
    runs = [
        r
        for r in record["runs"]
        if (lrs is None or r["lr"] in lrs) and (Cs is None or r["C"] is None or math.isnan(r["C"]) or r["C"] in Cs)
    ]
    if not runs and not allow_empty:
        raise SystemExit(f"--only-lrs/--only-Cs: no run of {record['method']} is left in the grid {lrs} / {Cs}")
    cfg = {**record["config"], "lrs": sorted({r["lr"] for r in runs}, reverse=True)}
    if record["method"] == "zero_order":
        cfg["Cs"] = sorted({r["C"] for r in runs})
    return {**record, "runs": runs, "config": cfg}


def report(paths: list[str], md: Path, lrs: list[float] | None = None, Cs: list[float] | None = None) -> int:
    records = [restrict_grid(load_record(p), lrs, Cs, allow_empty=True) for p in paths]
    for method in {r["method"] for r in records}:  # a file may fall outside the grid, a whole method may not
        if not any(r["runs"] for r in records if r["method"] == method):
            raise SystemExit(f"--only-lrs/--only-Cs: no run of {method} is left in the grid {lrs} / {Cs}")
    records = [r for r in records if r["runs"]]
    # HPGD's estimator option changes no other method's runs: it does not split the convention across methods,
    # but the files of one method must agree on everything
    conventions = {(without_method_only(r["convention"]), r["metric_kind"]) for r in records}
    for method in {r["method"] for r in records}:
        if len({r["convention"] for r in records if r["method"] == method}) > 1:
            raise SystemExit(f"--report: the {method} files mix conventions; report one at a time")
    if len(conventions) != 1:
        raise SystemExit(f"--report: the files mix conventions/metrics {sorted(conventions)}; report one at a time")
    convention, metric_kind = conventions.pop()
    entries: list[dict] = []
    rows: list[str] = []
    hits = total = 0
    by_method = merge_methods(records)
    methods = [m for m in ("hpgd", "amd", "zero_order") if m in by_method]
    for lam, beta in TABLE3_CELLS:
        cells = [f"{lam:g}", f"{beta:g}"]
        for m in methods:
            rec = by_method[m]
            if not any(r["lam"] == lam and r["beta"] == beta for r in rec["runs"]):
                cells += ["–", "–", "–"]
                continue
            (lr, C), group = best_group(rec["runs"], lam, beta)
            mean, se = mean_se([r["metric"] for r in group])
            p_mean, p_se = TABLE3[(lam, beta)][LABEL[m]]
            ok = abs(mean - p_mean) <= tolerance(se, p_se)
            hits, total = hits + ok, total + 1
            budget = float(np.mean([r["budget_used"] for r in group]))
            hp = f"lr {lr:g}" + ("" if C is None or (isinstance(C, float) and math.isnan(C)) else f", C {C:g}")
            cells += [
                f"{mean:.3f} ± {se:.3f} ({hp}; budget {budget:.0%})",
                f"{p_mean:.2f} ± {p_se:.3f}",
                "yes" if ok else "no",
            ]
            entries.append(
                {
                    "lam": lam, "beta": beta, "method": LABEL[m], "mean": mean, "se": se, "lr": lr, "C": C,
                    "seeds": len(group), "paper_mean": p_mean, "paper_se": p_se, "within_2se": bool(ok),
                    "budget_used": budget,
                }
            )  # fmt: skip
            averaged = m == "amd" or metric_kind == "average"
            entries[-1]["diagnosis"] = [] if ok else diagnose(entries[-1], group, rec["config"], averaged)
        rows.append("| " + " | ".join(cells) + " |")
    head = ["λ", "β"] + [x for m in methods for x in (f"{LABEL[m]} ours", f"{LABEL[m]} paper", "2SE?")]
    cpu = {LABEL[m]: by_method[m]["cpu_seconds"] / 60 for m in methods}
    cfg, first = records[0]["config"], records[0]
    command = f"python scripts/reproduce_hpgd_table3_batched.py --report {' '.join(paths)} --md {md}"
    command += "".join(f" --only-{k} " + " ".join(f"{v:g}" for v in g) for k, g in (("lrs", lrs), ("Cs", Cs)) if g)
    runs_of = f"--method <m>, convention {convention}, --metric {metric_kind}"
    lines = [
        "# HPGD Table 3 (Four-Rooms, HPGD §5.1) at the paper's budget, batched runs",
        "",
        f"Generated by `{command}` from runs of `{runs_of}` ({first['date']}; {first['machine']}).",
        "",
        *[budget_line(LABEL[m], by_method[m]["config"]) for m in methods],
        f"- Metric: each run's `{metric_kind}` value averaged over the last {cfg['window']:,} iterations; "
        "best (lr[, C]) per cell and method by mean over seeds; mean ± std(ddof=0)/√n.",
        "- CPU time (one thread): " + ", ".join(f"{k} {v:.0f} min" for k, v in cpu.items()) + ".",
        "- Entries within 2 SE of the paper (|ours − paper| ≤ 2·sqrt(SE² + SE_paper²) + 0.005): "
        f"**{hits} of {total}**.",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
        *rows,
        "",
    ]
    misses = [e for e in entries if not e["within_2se"]]
    if misses:
        lines += ["## The misses, with what their runs show", ""]
        lines += [
            f"- {e['method']}, λ {e['lam']:g}, β {e['beta']:g}: {e['mean']:.3f} ± {e['se']:.3f} against "
            f"{e['paper_mean']:.2f} ± {e['paper_se']:.3f}; " + "; ".join(e["diagnosis"]) + "."
            for e in misses
        ]
        lines.append("")
    write_keeping_analysis(md, "\n".join(lines))
    md.with_suffix(".json").write_text(
        json.dumps({"convention": convention, "metric": metric_kind, "entries": entries})
    )
    print(f"wrote {md}: {hits} of {total} within 2 SE")
    return 0


def cell_scores(rec: dict) -> dict[tuple[float, float], tuple[float, float]]:
    """(λ, β) → (mean, SE) of the best (lr[, C]) group, for every cell the record ran."""
    cells = sorted({(r["lam"], r["beta"]) for r in rec["runs"]})
    return {cell: mean_se([r["metric"] for r in best_group(rec["runs"], *cell)[1]]) for cell in cells}


def ablation(paths: list[str], md: Path) -> int:
    """One table of every variant (convention × metric × budget) in ``paths`` against the paper and the baseline.

    The baseline is the ``authors`` convention with the ``sampled`` metric at the smallest budget given (the
    variants' reduced budget; a full-budget ``authors`` file then shows the budget's effect); each variant's
    column holds its value per entry, and the summary its hits, its mean signed gap to the paper and its mean shift
    from the baseline, so the effect of each one-at-a-time change can be read off.
    """
    records = [load_record(p) for p in paths]
    groups: dict[tuple[str, str, int, int], list[dict]] = {}
    for r in records:  # HPGD with the authors' estimator joins its convention's AMD and Zero-Order files
        name = r["convention"].replace(AUTHORS_ESTIMATOR, "")
        key = (name, r["metric_kind"], r["config"]["iterations"], len(r["config"]["seeds"]))
        groups.setdefault(key, []).append(r)
    authors = ("authors", LEGACY_AUTHORS)
    variants = sorted(groups, key=lambda k: (k[0] not in authors or k[1] != "sampled", k[0], k[1], k[2]))
    scores = {v: {m: cell_scores(rec) for m, rec in merge_methods(groups[v]).items()} for v in variants}
    name = {v: f"{v[0]}, {v[1]}, {v[2]:,} it, {v[3]} seeds" for v in variants}
    base = next((v for v in variants if v[0] in authors and v[1] == "sampled"), variants[0])
    head = ["entry", "paper", *[name[v] for v in variants]]
    rows, summary = [], []
    for m in ("hpgd", "amd", "zero_order"):
        for cell in TABLE3_CELLS:
            p_mean, p_se = TABLE3[cell][LABEL[m]]
            vals = []
            for v in variants:
                got = scores[v].get(m, {}).get(cell)
                vals.append("–" if got is None else f"{got[0]:.3f} ± {got[1]:.3f}")
            rows.append(
                f"| {LABEL[m]} λ {cell[0]:g} β {cell[1]:g} | {p_mean:.2f} ± {p_se:.3f} | " + " | ".join(vals) + " |"
            )
    for v in variants:
        hits = total = 0
        gaps, shifts = [], []
        for m, cells in scores[v].items():
            for cell, (mean, se) in cells.items():
                p_mean, p_se = TABLE3[cell][LABEL[m]]
                hits += abs(mean - p_mean) <= tolerance(se, p_se)
                total += 1
                gaps.append(mean - p_mean)
                if cell in scores[base].get(m, {}):
                    shifts.append(mean - scores[base][m][cell][0])
        shift = f"{np.mean(shifts):+.3f}" if shifts and v != base else "–"
        summary.append(
            f"| {name[v]} | {hits} of {total} | {np.mean(gaps):+.3f} | {np.mean(np.abs(gaps)):.3f} | {shift} |"
        )
    command = f"python scripts/reproduce_hpgd_table3_batched.py --ablation {' '.join(paths)} --md {md}"
    lines = [
        "# HPGD Table 3: one convention at a time",
        "",
        f"Generated by `{command}` ({records[0]['date']}; {records[0]['machine']}).",
        f"Baseline: {name[base]}. Variants differ from it in one convention (or the metric, or the budget).",
        "",
        "| variant | within 2 SE | mean gap to paper | mean abs gap | mean shift from baseline |",
        "|---|---|---|---|---|",
        *summary,
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
        *rows,
        "",
    ]
    write_keeping_analysis(md, "\n".join(lines))
    print(f"wrote {md}: {len(variants)} variants")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--method", choices=sorted(LABEL))
    ap.add_argument("--out", help="JSON file of the method's runs")
    ap.add_argument("--report", nargs="+", help="JSON files to tabulate (one convention)")
    ap.add_argument("--only-lrs", type=float, nargs="+", help="--report: choose the best lr from these only")
    ap.add_argument("--only-Cs", type=float, nargs="+", help="--report: choose the best C from these only")
    ap.add_argument("--ablation", nargs="+", help="JSON files of several conventions/budgets: one table of all")
    ap.add_argument("--md", type=Path, default=Path("docs/results/hpgd_four_rooms_table3.md"))
    ap.add_argument("--convention", choices=sorted(CONVENTIONS), default="authors")
    ap.add_argument("--model-slip", type=float, help="override: slip of the oracle's and the metric's model")
    ap.add_argument("--sim-slip", type=float, help="override: slip of HPGD's trajectory simulator")
    ap.add_argument("--cost", choices=["state", "state-action"], help="override: Σ_s or Σ_{s,a} cost")
    ap.add_argument("--goal", choices=["masked", "penalised"], help="override: penalty in the active goal")
    ap.add_argument("--metric", choices=["sampled", "average"], default="sampled")
    ap.add_argument("--cells", default="all", help="'all' or e.g. 0.001:1,0.005:3")
    ap.add_argument("--seeds", type=int, default=10)
    grid = "(default: the authors' configs; App. F prints {})"
    ap.add_argument("--lrs", type=float, nargs="+", default=list(AUTHORS_LRS), help=grid.format("1 0.5 0.1 0.05 0.01"))
    ap.add_argument("--Cs", type=float, nargs="+", default=list(AUTHORS_CS), help=grid.format("0.1 0.5 1 2 5"))
    ap.add_argument("--iterations", type=int, default=10_000)
    ap.add_argument("--window", type=int, default=1_000)
    ap.add_argument("--num-envs", type=int, default=5)
    ap.add_argument("--steps-per-env", type=int, default=2_000)
    ap.add_argument(
        "--amd-follower",
        choices=["exact", "sweeps"],
        default="exact",
        help="AMD: exact follower and gradient every step, or Alg. 9 as printed (K warm-started sweeps)",
    )
    ap.add_argument("--amd-sweeps", type=int, default=100, help="AMD with --amd-follower sweeps: K per step")
    ap.add_argument(
        "--leader-float32", action="store_true", help="keep the leader's logits in float32 (the authors' JAX dtype)"
    )
    ap.add_argument(
        "--hpgd-partial-episodes",
        action="store_true",
        help="HPGD: also use each environment's unfinished last episode (the authors' estimator)",
    )
    ap.add_argument(
        "--hpgd-direct",
        choices=["episodes", "start-state"],
        default="episodes",
        help="HPGD: the direct term's estimator: per-episode sums over finished episodes, or the every-visit "
        "average of the reward-to-go at the start state (the authors' estimator)",
    )
    ap.add_argument(
        "--zo-numerics",
        choices=ZO_NUMERICS,
        default="float64",
        help="Zero-Order's values: our exact float64 solver, or the authors' float32 dynamic programming",
    )
    ap.add_argument("--seed", type=int, default=0, help="seed of the batch's random stream")
    ap.add_argument("--progress-every", type=int, default=100)
    ap.add_argument("--checkpoint-every", type=int, default=250, help="iterations between checkpoints (<out>.ckpt)")
    args = ap.parse_args(argv)
    if args.report:
        return report(args.report, args.md, args.only_lrs, args.only_Cs)
    if args.ablation:
        return ablation(args.ablation, args.md)
    if not (args.method and args.out):
        ap.error("--method and --out are required (or --report)")
    return run(args)


if __name__ == "__main__":
    raise SystemExit(main())
