"""Metric logging: ``metrics.csv`` and TensorBoard always, wandb when chosen. Logging never kills a run."""

from __future__ import annotations

import contextlib
import csv
import logging
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

TIME_PREFIX = "time/"


def _wandb_mode(mode: str) -> str:
    """``online`` without a configured key silently becomes ``offline`` (online would fail at once)."""
    if mode not in ("online", "offline", "disabled"):
        raise ValueError(f"logger.mode: unknown wandb mode {mode!r} (choose online, offline or disabled)")
    if mode == "online" and not (os.environ.get("WANDB_API_KEY") or _netrc_has_wandb()):
        log.warning("logger.mode=online but no wandb key is configured: logging offline instead")
        return "offline"
    return mode


def _netrc_has_wandb() -> bool:
    netrc = Path.home() / ".netrc"
    try:
        return netrc.exists() and "api.wandb.ai" in netrc.read_text()
    except OSError:
        return False


class MetricLogger:
    """Writes one row of namespaced metrics per outer iteration.

    Args:
        run_dir: the run directory (``metrics.csv`` and ``tb/`` go here).
        wandb_mode: ``online``, ``offline`` or ``disabled``.
        wandb_project: wandb project name.
        wandb_group: wandb group (e.g. the experiment name, to group seeds).
        run_name: display name.
        config: flat config dict sent to wandb.
        resume_step: when resuming, rows with ``env_steps`` above this are dropped from ``metrics.csv`` and
            TensorBoard events after it are purged, so the history equals an uninterrupted run's.
    """

    def __init__(
        self,
        run_dir: str | Path,
        wandb_mode: str = "disabled",
        wandb_project: str = "bilevel_rl",
        wandb_group: str | None = None,
        run_name: str | None = None,
        config: dict[str, Any] | None = None,
        resume_step: int | None = None,
    ) -> None:
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.csv_path = self.run_dir / "metrics.csv"
        self.columns: list[str] = ["iteration", "env_steps"]
        self.rows: list[dict[str, Any]] = []
        if resume_step is not None and self.csv_path.exists():
            with self.csv_path.open(newline="") as f:
                reader = csv.DictReader(f)
                self.columns = list(reader.fieldnames or self.columns)
                self.rows = [r for r in reader if int(float(r["env_steps"])) <= resume_step]
            self._rewrite()
        self.tb: Any = None
        try:
            from torch.utils.tensorboard import SummaryWriter

            purge = resume_step + 1 if resume_step is not None else None
            self.tb = SummaryWriter(str(self.run_dir / "tb"), purge_step=purge)
        except Exception as exc:  # noqa: BLE001
            log.warning("TensorBoard disabled: %s", exc)
        self.wandb: Any = None
        mode = _wandb_mode(wandb_mode)
        if mode != "disabled":
            try:
                import wandb

                self.wandb = wandb.init(
                    project=wandb_project,
                    group=wandb_group,
                    name=run_name,
                    mode=mode,  # type: ignore[arg-type]
                    dir=str(self.run_dir),
                    config=config or {},
                    resume="allow",
                    id=(run_name or "run").replace("/", "-"),
                    reinit=True,
                )
            except Exception as exc:  # noqa: BLE001
                log.warning("wandb disabled (%s): %s", mode, exc)
                self.wandb = None

    def log(self, metrics: dict[str, float], step: int, iteration: int) -> None:
        """Record one row (``step`` = environment steps so far)."""
        row: dict[str, Any] = {"iteration": iteration, "env_steps": step}
        for k, v in metrics.items():
            row[k] = float(v) if isinstance(v, int | float | np.floating | np.integer) else v
        new_cols = [k for k in row if k not in self.columns]
        self.rows.append(row)
        if new_cols or not self.csv_path.exists():
            self.columns += new_cols
            self._rewrite()
        else:
            self._append(row)
        if self.tb is not None:
            try:
                for k, v in metrics.items():
                    if isinstance(v, float | int) and math.isfinite(float(v)):
                        self.tb.add_scalar(k, float(v), step)
                self.tb.flush()
            except Exception as exc:  # noqa: BLE001
                log.warning("TensorBoard write failed: %s", exc)
        if self.wandb is not None:
            try:
                self.wandb.log({**metrics, "env_steps": step}, step=step)
            except Exception as exc:  # noqa: BLE001
                log.warning("wandb log failed, disabling wandb: %s", exc)
                self.wandb = None

    def log_video(self, tag: str, frames: np.ndarray, step: int, fps: int = 30) -> None:
        """Log a ``(T, H, W, 3)`` uint8 video to TensorBoard and wandb (best effort)."""
        try:
            import torch

            if self.tb is not None:
                vid = torch.as_tensor(frames).permute(0, 3, 1, 2).unsqueeze(0)
                self.tb.add_video(tag, vid, step, fps=fps)
            if self.wandb is not None:
                import wandb

                self.wandb.log({tag: wandb.Video(frames.transpose(0, 3, 1, 2), fps=fps, format="mp4")}, step=step)
        except Exception as exc:  # noqa: BLE001
            log.warning("video logging failed: %s", exc)

    def _append(self, row: dict[str, Any]) -> None:
        with self.csv_path.open("a", newline="") as f:
            csv.DictWriter(f, fieldnames=self.columns).writerow(row)

    def _rewrite(self) -> None:
        tmp = self.csv_path.with_suffix(".csv.tmp")
        with tmp.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=self.columns)
            writer.writeheader()
            writer.writerows(self.rows)
        tmp.replace(self.csv_path)

    def close(self) -> None:
        """Flush and close all backends."""
        if self.tb is not None:
            with contextlib.suppress(Exception):
                self.tb.close()
        if self.wandb is not None:
            with contextlib.suppress(Exception):
                self.wandb.finish()
