"""Checkpoint only the filled rows of a replay buffer.

SB3's buffers (and :class:`~bilevel_rl.followers.frame_buffer.FrameStackReplayBuffer`) allocate their whole
capacity up front. Pickling those arrays as they are writes the capacity, not the contents: a 1,000-step SAC run
with SB3's default 1M capacity wrote 117 MB of buffer (Hopper) and an Atari run ~7 GB. Rows that were never
written are never sampled (they are all zeros, exactly as in a fresh buffer), so a checkpoint keeps only the
first ``filled_rows`` of every per-row array and a restore writes that prefix and zeros the rest.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def filled_rows(pos: int, full: bool, capacity: int) -> int:
    """Rows of a ring buffer worth saving: all when ``full``, else ``pos + 1``, capped at ``capacity``.

    The one row past ``pos`` is kept because SB3's ``optimize_memory_usage`` stores the last next-observation
    there.
    """
    return capacity if full else min(int(pos) + 1, capacity)


def _is_row_array(value: Any, capacity: int) -> bool:
    return isinstance(value, np.ndarray) and value.ndim > 0 and len(value) == capacity


def buffer_state(buf: Any, skip: set[str]) -> dict[str, Any]:
    """The attributes of an SB3 ``ReplayBuffer`` (minus ``skip``), each per-row array cut to its filled rows.

    The arrays are views, not copies: pickling writes only the cut.
    """
    n_rows, capacity = filled_rows(buf.pos, buf.full, buf.buffer_size), buf.buffer_size
    return {
        name: value[:n_rows] if _is_row_array(value, capacity) else value
        for name, value in buf.__dict__.items()
        if name not in skip
    }


def load_buffer_state(buf: Any, state: dict[str, Any]) -> None:
    """Restore :func:`buffer_state` output into an SB3 ``ReplayBuffer`` built with the same capacity.

    Checkpoints written before the arrays were cut (whole-capacity arrays) load the same way.

    Raises:
        ValueError: If the checkpoint's capacity differs from this buffer's, or an array does not fit.
    """
    if state.get("buffer_size", buf.buffer_size) != buf.buffer_size:
        raise ValueError(
            f"checkpoint replay buffer holds {state['buffer_size']} rows, this one {buf.buffer_size}: "
            "resume with the same buffer_size"
        )
    for name, value in state.items():
        current = buf.__dict__.get(name)
        if _is_row_array(current, buf.buffer_size):
            restore_rows(current, value, name)
        else:
            buf.__dict__[name] = value


def restore_rows(target: np.ndarray, value: Any, name: str, cut: bool = True) -> None:
    """Write a saved (possibly cut) array into ``target`` in place; rows past the saved prefix become zeros.

    Args:
        target: The buffer's array.
        value: The saved array.
        name: Its name, for the error message.
        cut: Whether ``value`` may hold fewer rows than ``target`` (``False``: shapes must be equal).

    Raises:
        ValueError: If dtype or trailing shape differ, or the saved array has more rows than ``target`` (or, with
            ``cut=False``, a different number).
    """
    value = np.asarray(value)
    rows_ok = len(value) <= len(target) if cut else len(value) == len(target)
    if value.dtype != target.dtype or value.shape[1:] != target.shape[1:] or not rows_ok:
        raise ValueError(
            f"checkpoint array {name} is {value.dtype}{value.shape}, expected {target.dtype}{target.shape}"
        )
    target[: len(value)] = value  # in place: no aliasing with the state (or with another buffer's arrays)
    target[len(value) :] = 0
