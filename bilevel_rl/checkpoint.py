"""Rotated, atomic checkpoints and RNG-state capture.

A checkpoint is a directory ``checkpoints/step_<env_steps>/`` holding

* ``tensors.pt`` — network and optimizer state dicts and the torch RNG state; loaded with
  ``torch.load(weights_only=True)``;
* ``state.pkl`` — the rest (replay buffer, env states, preference buffer, counters, numpy/python RNG states).
  Pickle is only read from run directories you wrote yourself.

It is written under a temporary name and renamed, and ``checkpoints/latest`` is replaced atomically last, so a
process killed mid-write leaves the previous checkpoint intact.
"""

from __future__ import annotations

import pickle
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

LATEST = "latest"


def capture_rng() -> dict[str, Any]:
    """Global RNG states (python, numpy legacy — SB3 samples its replay buffer with it — and torch)."""
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}


def restore_rng(state: dict[str, Any]) -> None:
    """Restore :func:`capture_rng` output."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])


def save_checkpoint(
    run_dir: str | Path, step: int, tensors: dict[str, Any], state: dict[str, Any], keep: int = 2
) -> Path:
    """Write a checkpoint for ``step`` and keep only the ``keep`` newest ones."""
    root = Path(run_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step_{step:010d}"
    tmp = root / f".tmp_step_{step:010d}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    torch.save(tensors, tmp / "tensors.pt")
    with (tmp / "state.pkl").open("wb") as f:
        pickle.dump(state, f, protocol=pickle.HIGHEST_PROTOCOL)
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)
    pointer = root / (LATEST + ".tmp")
    pointer.write_text(final.name)
    pointer.replace(root / LATEST)
    ckpts = sorted(p for p in root.glob("step_*") if p.is_dir())
    for old in ckpts[: max(0, len(ckpts) - max(1, keep))]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """Path of the newest complete checkpoint of a run, or ``None``."""
    root = Path(run_dir) / "checkpoints"
    pointer = root / LATEST
    if not pointer.exists():
        return None
    path = root / pointer.read_text().strip()
    return path if path.exists() else None


def load_checkpoint(path: str | Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """Read ``(tensors, state)`` from a checkpoint directory."""
    path = Path(path)
    tensors = torch.load(path / "tensors.pt", map_location="cpu", weights_only=True)
    with (path / "state.pkl").open("rb") as f:
        state = pickle.load(f)  # noqa: S301 - our own run directory
    return tensors, state
