"""FIFO buffer of labelled segment pairs."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from bilevel_rl.data.segments import PreferencePairs

_FIELDS = ("obs", "actions", "true_rewards", "mask", "labels", "iteration")


class PreferenceBuffer:
    """First-in-first-out store of labelled pairs (SoBiRL: capacity 3000).

    Storage is allocated on the first :meth:`add`; once full, the oldest pairs are overwritten.

    Args:
        capacity: maximum number of pairs kept.
    """

    def __init__(self, capacity: int = 3000) -> None:
        if capacity <= 0:
            raise ValueError("buffer.capacity must be positive")
        self.capacity = capacity
        self._data: dict[str, np.ndarray] = {}
        self.pos = 0
        self.size = 0
        self.total_added = 0

    def __len__(self) -> int:
        return self.size

    def add(self, pairs: PreferencePairs) -> None:
        """Append pairs, overwriting the oldest ones when full."""
        n = len(pairs)
        if n == 0:
            return
        if not self._data:
            for name in _FIELDS:
                arr = getattr(pairs, name)
                self._data[name] = np.zeros((self.capacity, *arr.shape[1:]), dtype=arr.dtype)
        keep = min(n, self.capacity)  # more pairs than capacity: only the newest `capacity` survive
        idx = (self.pos + np.arange(keep)) % self.capacity
        for name in _FIELDS:
            self._data[name][idx] = getattr(pairs, name)[n - keep :]
        self.pos = int((self.pos + keep) % self.capacity)
        self.size = min(self.capacity, self.size + n)
        self.total_added += n

    def get(self, indices: np.ndarray) -> PreferencePairs:
        """Pairs at the given storage indices (each in ``[0, len(self))``)."""
        if self.size == 0:
            raise IndexError("preference buffer is empty")
        return PreferencePairs(**{name: self._data[name][indices] for name in _FIELDS})

    def all(self) -> PreferencePairs:
        """Every stored pair, oldest first."""
        if self.size < self.capacity:
            order = np.arange(self.size)
        else:
            order = (self.pos + np.arange(self.capacity)) % self.capacity
        return self.get(order)

    def minibatches(self, batch_size: int, rng: np.random.Generator) -> Iterator[np.ndarray]:
        """Index minibatches of one shuffled epoch over the stored pairs."""
        if batch_size <= 0:
            raise ValueError("batch size must be positive")
        perm = rng.permutation(self.size)
        for start in range(0, self.size, batch_size):
            yield perm[start : start + batch_size]

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to restore the buffer exactly: only the ``size`` filled rows are kept.

        Until the buffer first wraps, rows ``[0, size)`` are the filled ones; once full, all rows are. An Atari
        buffer of 3000 pairs of 25-step 4×84×84 segments is 4.2 GB, so the empty tail is never copied or written.
        """
        return {
            "capacity": self.capacity,
            "pos": self.pos,
            "size": self.size,
            "total_added": self.total_added,
            "data": {k: v[: self.size].copy() for k, v in self._data.items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore from :meth:`state_dict`."""
        if int(state["capacity"]) != self.capacity:
            raise ValueError(f"buffer.capacity changed: checkpoint has {state['capacity']}, config {self.capacity}")
        self.pos, self.size, self.total_added = int(state["pos"]), int(state["size"]), int(state["total_added"])
        self._data = {}
        for k, v in state["data"].items():
            arr = np.asarray(v)
            self._data[k] = np.zeros((self.capacity, *arr.shape[1:]), dtype=arr.dtype)
            self._data[k][: len(arr)] = arr

    def save(self, path: str | Path) -> None:
        """Write the stored pairs (oldest first) to a ``.npz`` file."""
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp.npz")
        if self.size == 0:
            np.savez_compressed(tmp, capacity=self.capacity, total_added=self.total_added)
        else:
            pairs = self.all()
            np.savez_compressed(
                tmp,
                capacity=self.capacity,
                total_added=self.total_added,
                **{name: getattr(pairs, name) for name in _FIELDS},
            )
        tmp.replace(path)

    @classmethod
    def load(cls, path: str | Path, capacity: int | None = None) -> PreferenceBuffer:
        """Read a buffer written by :meth:`save`."""
        with np.load(Path(path)) as f:
            buf = cls(int(capacity if capacity is not None else f["capacity"]))
            if "labels" in f:
                buf.add(PreferencePairs(**{name: f[name] for name in _FIELDS}))
            buf.total_added = int(f["total_added"])
        return buf
