"""Helpers shared by the result-aggregation scripts (``scripts/aggregate_*.py``).

Mean ± SE, rliable intervals, learning curves, archives of finished runs, and regeneration that keeps a hand-written
analysis.
"""

from __future__ import annotations

import gzip
import shutil
import sys
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import pandas as pd

ANALYSIS = "## Analysis"
"""Marker of the hand-written part of a generated result file; everything from it on survives regeneration."""


def mean_se(x: pd.Series, digits: int | None = None) -> str:
    """``mean ± SE`` over the non-missing values (SE = std / √n, ddof 1; ``nan`` for one value), or ``n/a``.

    Args:
        x: the values (one per run).
        digits: decimals of both numbers; ``None``: three significant digits below 1 in magnitude, else one decimal.
    """
    x = x.dropna()
    if len(x) == 0:
        return "n/a"
    se = x.std(ddof=1) / np.sqrt(len(x)) if len(x) > 1 else float("nan")
    if digits is not None:
        return f"{x.mean():.{digits}f} ± {se:.{digits}f}"
    return f"{x.mean():.3g} ± {se:.2g}" if abs(x.mean()) < 1 else f"{x.mean():.1f} ± {se:.1f}"


def iqm_and_mean(
    scores: dict[str, np.ndarray], reps: int, seed: int = 0
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """IQM and mean with rliable's 95% stratified-bootstrap CIs per row (``scores[row]``: runs × tasks).

    Its bootstrap draws its indices from numpy's global generator whatever ``random_state`` it is given
    (``StratifiedBootstrap.update_indices``, rliable 1.2), so this seeds the global generator with ``seed`` for the
    call and restores its previous state afterwards: a regenerated table has the same intervals, and no caller's
    random stream moves.

    Returns:
        ``(point, ci)``: ``point[row] = [iqm, mean]``, ``ci[row]`` of shape ``(2, 2)`` (lower/upper × iqm/mean).
    """
    from rliable import library as rly
    from rliable import metrics

    def fn(x: np.ndarray) -> np.ndarray:
        return np.array([metrics.aggregate_iqm(x), metrics.aggregate_mean(x)])

    state = np.random.get_state()
    np.random.seed(seed)
    try:
        return rly.get_interval_estimates(scores, fn, reps=reps)
    finally:
        np.random.set_state(state)


def complete_only(
    runs: pd.DataFrame, curves: dict[tuple[str, str], list[pd.DataFrame]], row: str, shown: list[str]
) -> tuple[pd.DataFrame, dict[tuple[str, str], list[pd.DataFrame]]]:
    """The runs that reached their budget (column ``complete``) and the curves of their ``(env, row)`` groups.

    The others are named on stderr by their ``shown`` columns, so a table is never silently made from fewer runs.
    """
    incomplete = runs[~runs["complete"]]
    if not incomplete.empty:
        print(
            f"warning: {len(incomplete)} incomplete run(s) left out: {incomplete[shown].to_dict('records')}",
            file=sys.stderr,
        )
    runs = runs[runs["complete"]].reset_index(drop=True)
    keep = set(zip(runs["env"], runs[row], strict=True))
    return runs, {k: v for k, v in curves.items() if k in keep}


def plot_curves(
    curves: dict[tuple[str, str], list[pd.DataFrame]],
    path: Path,
    order: Callable[[str], int],
    title: Callable[[str], str],
    y: str = "eval/true_return",
) -> None:
    """Mean ± SE over runs of ``y`` against ``env_steps``, one panel per setting, one line per row.

    Args:
        curves: ``(setting, row)`` → one frame per run with columns ``env_steps`` and ``y``; runs are interpolated
            onto the union of their steps (``nan`` past a run's end, so a shorter run stops its line's average).
        path: the PNG written.
        order: sort key of the rows in a panel.
        title: a panel's title from its setting.
        y: the plotted column.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    settings = sorted({s for s, _ in curves})
    fig, axes = plt.subplots(1, len(settings), figsize=(6 * len(settings), 4), squeeze=False)
    for ax, setting in zip(axes[0], settings, strict=True):
        for row in sorted({r for s, r in curves if s == setting}, key=order):
            runs = curves[(setting, row)]
            grid = np.unique(np.concatenate([c["env_steps"].to_numpy() for c in runs]))
            ys = np.stack([np.interp(grid, c["env_steps"], c[y], right=np.nan) for c in runs])
            mean, n = np.nanmean(ys, 0), np.sum(~np.isnan(ys), 0)
            se = np.nanstd(ys, 0, ddof=1) / np.sqrt(np.maximum(n, 1)) if len(runs) > 1 else np.zeros_like(mean)
            ax.plot(grid, mean, label=f"{row} ({len(runs)})")
            ax.fill_between(grid, mean - se, mean + se, alpha=0.2)
        ax.set_title(title(setting))
        ax.set_xlabel("env steps")
        ax.set_ylabel(y.split("/")[-1].replace("_", " "))
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def archive_runs(run_dirs: Iterable[str | Path], root: Path, dest: Path) -> None:
    """Copy each run's ``metrics.csv`` (gzipped) and ``run_config.yaml`` to ``dest``, keeping paths below ``root``.

    Checkpoints are not copied; an archive aggregates like the original runs (``metrics.csv.gz`` is read alike).
    """
    for run_dir in run_dirs:
        src = Path(run_dir)
        target = dest / src.relative_to(root)
        if target.resolve() == src.resolve():
            continue
        target.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src / "run_config.yaml", target / "run_config.yaml")
        csv = src / "metrics.csv"
        if csv.exists():
            with csv.open("rb") as f_in, gzip.GzipFile(target / "metrics.csv.gz", "wb", mtime=0) as f_out:
                shutil.copyfileobj(f_in, f_out)
        else:
            shutil.copy2(src / "metrics.csv.gz", target / "metrics.csv.gz")


def write_keeping_analysis(path: Path, generated: str) -> None:
    """Write ``generated`` to ``path``, followed by the old file's hand-written part (from :data:`ANALYSIS` on)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    analysis = ""
    if path.exists():
        old = path.read_text()
        if ANALYSIS in old:
            analysis = old[old.index(ANALYSIS) :]
    path.write_text(generated.rstrip("\n") + "\n\n" + analysis if analysis else generated)
