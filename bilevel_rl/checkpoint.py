"""Rotated, atomic, checksummed checkpoints and RNG-state capture.

A checkpoint is a directory ``checkpoints/step_<env_steps>/`` written by :func:`write_checkpoint`, holding

* ``tensors.pt`` — every ``torch.Tensor`` of the state, as a list; loads with ``torch.load(weights_only=True)``;
* ``state.pkl`` — the rest of the state tree (numpy arrays, python values), each tensor replaced by a placeholder
  naming its index in ``tensors.pt``. Pickle is only read from run directories you wrote yourself;
* ``manifest.json`` — format version, step, and the byte size and sha256 of both files.

It is written under a temporary name, fsynced and renamed, and ``checkpoints/latest`` is replaced atomically last,
so a process killed mid-write leaves the previous checkpoint intact (and a ``.tmp_step_*`` directory that readers
ignore). :func:`read_checkpoint` verifies the manifest before unpickling anything; :func:`newest_intact_checkpoint`
falls back to older checkpoints when the newest one is damaged.

Checkpoints written before manifests existed are not read by :func:`read_checkpoint` (it raises
:class:`LegacyCheckpointError`, a :class:`CorruptCheckpointError`); this version cannot resume them.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import pickle
import random
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

LATEST = "latest"
FORMAT_VERSION = 1
FILES = ("tensors.pt", "state.pkl")
_STEP_DIR = re.compile(r"step_(\d+)")
log = logging.getLogger(__name__)


class CheckpointError(ValueError):
    """No usable checkpoint."""


class CorruptCheckpointError(CheckpointError):
    """A checkpoint directory that cannot be read back as written; ``str()`` is one line."""

    def __init__(self, path: str | Path, reason: str) -> None:
        self.path, self.reason = Path(path), " ".join(reason.split())[:300]
        super().__init__(f"checkpoint {self.path}: {self.reason}")


class LegacyCheckpointError(CorruptCheckpointError):
    """A checkpoint written by an older bilevel_rl without a manifest (its layout differs; it cannot be resumed)."""


@dataclass(frozen=True)
class _TensorRef:
    """Stands in the pickled skeleton for ``tensors.pt[index]`` (pickled by name: do not rename)."""

    index: int


def _walk(obj: Any, leaf: Callable[[Any], Any], memo: dict[int, Any]) -> Any:
    """Copy of a tree of dicts / lists / tuples with ``leaf`` applied to everything else.

    Types are kept (an ``OrderedDict`` state dict keeps its ``_metadata``, a namedtuple its class), objects shared
    in the tree stay shared, and sub-trees that ``leaf`` leaves unchanged are returned as they are.
    """
    if id(obj) in memo:
        return memo[id(obj)]
    out: Any = obj
    if isinstance(obj, dict):
        values = {k: _walk(v, leaf, memo) for k, v in obj.items()}
        if any(values[k] is not v for k, v in obj.items()):
            out = copy.copy(obj)
            out.update(values)
    elif isinstance(obj, (list, tuple)):
        items = [_walk(v, leaf, memo) for v in obj]
        if any(a is not b for a, b in zip(items, obj, strict=True)):
            out = items if isinstance(obj, list) else getattr(type(obj), "_make", type(obj))(items)
    else:
        out = leaf(obj)
    memo[id(obj)] = out
    return out


def _split(state: dict[str, Any]) -> tuple[dict[str, Any], list[torch.Tensor]]:
    """``(skeleton, tensors)``: ``state`` with every tensor replaced by a :class:`_TensorRef` into ``tensors``."""
    tensors: list[torch.Tensor] = []

    def leaf(v: Any) -> Any:
        if not isinstance(v, torch.Tensor):
            return v
        tensors.append(v)
        return _TensorRef(len(tensors) - 1)

    return _walk(state, leaf, {}), tensors


def _join(skeleton: dict[str, Any], tensors: list[torch.Tensor]) -> dict[str, Any]:
    """Inverse of :func:`_split`."""

    def leaf(v: Any) -> Any:
        if isinstance(v, _TensorRef):
            if not 0 <= v.index < len(tensors):
                raise IndexError(f"state.pkl refers to tensor {v.index} but tensors.pt holds {len(tensors)}")
            return tensors[v.index]
        return v

    return dict(_walk(skeleton, leaf, {}))


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def _step_dirs(root: Path) -> list[Path]:
    """``step_*`` directories of ``root``, newest first (by step number)."""
    dirs = [p for p in root.glob("step_*") if _STEP_DIR.fullmatch(p.name) and p.is_dir()]
    return sorted(dirs, key=lambda p: int(p.name[5:]), reverse=True)


def write_checkpoint(run_dir: str | Path, step: int, state: dict[str, Any], keep: int = 2) -> Path:
    """Write ``state`` as checkpoint ``step`` of a run and keep only the ``keep`` newest checkpoints.

    Args:
        run_dir: the run directory; checkpoints go to ``run_dir/checkpoints``.
        step: the step number naming the checkpoint (``step_<step>``).
        state: nested dicts / lists / tuples of tensors, numpy arrays and picklable python values. Tensors inside
            other objects are pickled with them (into ``state.pkl``).
        keep: how many checkpoints to keep (at least 1): this one and the newest older ones. Ones of a higher step
            (left by a run resumed from an older checkpoint, e.g. after the newest was found corrupt) are removed.

    Returns:
        The checkpoint directory.
    """
    root = Path(run_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final, tmp = root / f"step_{step:010d}", root / f".tmp_step_{step:010d}"
    for leftover in root.glob(".tmp_step_*"):  # from a process killed mid-write
        shutil.rmtree(leftover, ignore_errors=True)
    tmp.mkdir()
    skeleton, tensors = _split(state)
    torch.save(tensors, tmp / "tensors.pt")
    with (tmp / "state.pkl").open("wb") as f:
        pickle.dump(skeleton, f, protocol=pickle.HIGHEST_PROTOCOL)
    files = {name: {"bytes": (tmp / name).stat().st_size, "sha256": _sha256(tmp / name)} for name in FILES}
    manifest = {"format": "bilevel_rl.checkpoint", "version": FORMAT_VERSION, "step": step, "files": files}
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1))
    for name in (*FILES, "manifest.json", ""):
        _fsync(tmp / name)
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)
    pointer = root / (LATEST + ".tmp")
    pointer.write_text(final.name)
    _fsync(pointer)
    pointer.replace(root / LATEST)
    older = [p for p in _step_dirs(root) if int(p.name[5:]) < step][: max(1, keep) - 1]
    for stale in set(_step_dirs(root)) - {final, *older}:  # older ones past ``keep``, and abandoned newer ones
        shutil.rmtree(stale, ignore_errors=True)
    _fsync(root)
    return final


def _verify(path: Path) -> None:
    """Check the manifest, sizes and checksums of checkpoint ``path``."""
    if not path.is_dir():
        raise CorruptCheckpointError(path, "the directory does not exist")
    mpath = path / "manifest.json"
    if not mpath.exists():
        try:
            legacy = isinstance(torch.load(path / "tensors.pt", map_location="cpu", weights_only=True), dict)
        except Exception:  # any failure means "not a legacy checkpoint"
            legacy = False
        if legacy:
            raise LegacyCheckpointError(
                path,
                "no manifest.json: written by an older bilevel_rl without a manifest, which this version cannot resume",
            )
        raise CorruptCheckpointError(path, "manifest.json is missing")
    try:
        manifest = json.loads(mpath.read_text())
        version, files = manifest["version"], manifest["files"]
        expected = {name: (int(files[name]["bytes"]), str(files[name]["sha256"])) for name in FILES}
    except Exception as e:
        raise CorruptCheckpointError(path, f"manifest.json is unreadable ({type(e).__name__}: {e})") from e
    if version != FORMAT_VERSION:
        raise CorruptCheckpointError(path, f"manifest.json has format version {version}; this reads {FORMAT_VERSION}")
    for name, (size, expected_sha) in expected.items():
        file = path / name
        try:
            actual = file.stat().st_size
            if actual == 0 and size:
                raise CorruptCheckpointError(path, f"{name} is empty (the manifest says {size} bytes)")
            if actual != size:
                raise CorruptCheckpointError(path, f"{name} has {actual} bytes, the manifest says {size} (truncated?)")
            if _sha256(file) != expected_sha:
                raise CorruptCheckpointError(path, f"{name} does not match its sha256 in the manifest (garbled bytes)")
        except OSError as e:
            raise CorruptCheckpointError(path, f"cannot read {name} ({type(e).__name__}: {e.strerror or e})") from e


def read_checkpoint(path: str | Path, map_location: str | torch.device | None = None) -> dict[str, Any]:
    """Verify and read a checkpoint written by :func:`write_checkpoint`.

    Args:
        path: the checkpoint directory.
        map_location: where to put the tensors (``None``: the device they were saved from).

    Returns:
        The state tree, tensors put back where they were.

    Raises:
        CorruptCheckpointError: a missing, empty, truncated or garbled file, a missing manifest, or a file that does
            not load although its checksum matches; :class:`LegacyCheckpointError` for an old manifest-less one.
    """
    path = Path(path)
    _verify(path)
    try:
        tensors = torch.load(path / "tensors.pt", map_location=map_location, weights_only=True)
        with (path / "state.pkl").open("rb") as f:
            skeleton = pickle.load(f)  # noqa: S301 - our own run directory, checksum verified
        if not isinstance(tensors, list) or not isinstance(skeleton, dict):
            raise TypeError(f"unexpected layout ({type(tensors).__name__}, {type(skeleton).__name__})")
        return _join(skeleton, tensors)
    except Exception as e:
        raise CorruptCheckpointError(
            path, f"does not load although its checksums match ({type(e).__name__}: {e})"
        ) from e


def newest_intact_checkpoint(
    run_dir: str | Path, map_location: str | torch.device | None = None
) -> tuple[Path, dict[str, Any]]:
    """``(path, state)`` of the checkpoint ``latest`` names, else of the newest intact one.

    A missing or stale ``latest`` pointer is ignored; each corrupt checkpoint skipped logs one warning.

    Args:
        run_dir: the run directory.
        map_location: as for :func:`read_checkpoint`.

    Raises:
        CheckpointError: no intact checkpoint at all.
    """
    root = Path(run_dir) / "checkpoints"
    candidates = _step_dirs(root) if root.is_dir() else []
    pointer = root / LATEST
    name = pointer.read_text(errors="replace").strip() if pointer.is_file() else ""
    if _STEP_DIR.fullmatch(name):
        candidates = [root / name] + [p for p in candidates if p.name != name]
    corrupt = legacy = 0
    for path in candidates:
        try:
            return path, read_checkpoint(path, map_location)
        except CorruptCheckpointError as e:
            old = isinstance(e, LegacyCheckpointError)
            log.warning("checkpoint %s is %s (%s); trying an older one", path, "legacy" if old else "corrupt", e.reason)
            legacy, corrupt = legacy + old, corrupt + (not old)
    extra = f", {legacy} written by an older bilevel_rl without a manifest" if legacy else ""
    raise CheckpointError(f"checkpoint.resume_from: no intact checkpoint in {root} ({corrupt} corrupt{extra})")


def capture_rng() -> dict[str, Any]:
    """Global RNG states (python, numpy legacy — SB3 samples its replay buffer with it — and torch)."""
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}


def restore_rng(state: dict[str, Any]) -> None:
    """Restore :func:`capture_rng` output."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
