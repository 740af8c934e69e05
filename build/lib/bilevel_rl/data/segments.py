"""Fragment trajectories into fixed-length segments and pair them for preference queries.

Segment rule (a project decision; the papers only say "25-step segments"):
a segment is ``H`` consecutive steps of one environment stream inside one episode. Episodes shorter than ``H``
that *terminated* (not a time limit) still give segments: the steps after the terminal state are padded and
masked out, i.e. the absorbing state carries zero reward. This keeps early-terminating tasks (Hopper with a
random policy ends after ~20 steps) usable from the first iteration, and it lets the Bradley–Terry loss see
that falling over early is worse. Windows cut short by a time limit or by the end of the record are never
used, since their missing steps are not absorbing.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bilevel_rl.data.trajectories import TrajectoryBatch


@dataclass
class SegmentBatch:
    """``S`` segments of length ``H``.

    Shapes: obs ``(S, H, *obs)``, actions ``(S, H, *act)``, true rewards and mask ``(S, H)`` (mask 0 marks padding
    after a terminal state).
    """

    obs: np.ndarray
    actions: np.ndarray
    true_rewards: np.ndarray
    mask: np.ndarray

    def __len__(self) -> int:
        return int(self.mask.shape[0])

    def true_returns(self) -> np.ndarray:
        """Undiscounted true return of each segment over its valid steps."""
        return (self.true_rewards * self.mask).sum(axis=1)


@dataclass
class PreferencePairs:
    """``P`` labelled pairs of segments.

    Shapes: obs ``(P, 2, H, *obs)``, actions ``(P, 2, H, *act)``, true rewards and mask ``(P, 2, H)``, labels
    ``(P,)`` (probability that segment 0 is preferred) and the leader iteration that produced each pair.
    """

    obs: np.ndarray
    actions: np.ndarray
    true_rewards: np.ndarray
    mask: np.ndarray
    labels: np.ndarray
    iteration: np.ndarray

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def true_returns(self) -> np.ndarray:
        """``(P, 2)`` true segment returns."""
        return (self.true_rewards * self.mask).sum(axis=2)


def eligible_starts(batch: TrajectoryBatch, length: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Find every (time, env) where a segment may start, and its number of valid steps.

    Returns:
        ``(t_idx, e_idx, valid_len)`` arrays of equal length.
    """
    if length <= 0:
        raise ValueError("segment length must be positive")
    t_max, n_env = batch.num_steps, batch.num_envs
    remaining = np.zeros((t_max, n_env), dtype=np.int64)
    # 0 = episode still open at the end of the record, 1 = terminated, 2 = truncated (time limit)
    kind = np.zeros((t_max, n_env), dtype=np.int8)
    for t in range(t_max - 1, -1, -1):
        done = batch.dones[t].astype(bool)
        term = batch.terminated[t].astype(bool)
        if t == t_max - 1:
            remaining[t] = 1
            kind[t] = np.where(term, 1, np.where(done, 2, 0))
        else:
            remaining[t] = np.where(done, 1, remaining[t + 1] + 1)
            kind[t] = np.where(done, np.where(term, 1, 2), kind[t + 1])
    # A start is valid only if the record covers the step: an episode may have begun before recording.
    full = remaining >= length
    short_terminal = (remaining < length) & (kind == 1)
    ok = full | short_terminal
    t_idx, e_idx = np.nonzero(ok)
    valid = np.minimum(remaining[t_idx, e_idx], length)
    return t_idx, e_idx, valid


def fragment(batch: TrajectoryBatch, length: int, num: int, rng: np.random.Generator) -> SegmentBatch:
    """Draw ``num`` segments uniformly (with replacement) over all eligible start positions.

    Raises:
        ValueError: if the batch holds no eligible segment (e.g. it is shorter than ``length`` and no episode
            terminated in it).
    """
    t_idx, e_idx, valid = eligible_starts(batch, length)
    if len(t_idx) == 0:
        raise ValueError(
            f"no {length}-step segment fits in a record of {batch.num_steps} steps x {batch.num_envs} envs; "
            "collect more steps per iteration or shorten the segment length"
        )
    pick = rng.integers(0, len(t_idx), size=num)
    ts, es, vs = t_idx[pick], e_idx[pick], valid[pick]
    offsets = np.arange(length)
    rows = np.minimum(ts[:, None] + offsets[None, :], batch.num_steps - 1)  # (num, H)
    mask = (offsets[None, :] < vs[:, None]).astype(np.float32)
    # padded positions repeat the last valid step and are masked out
    last_valid = ts + vs - 1
    rows = np.where(mask > 0, rows, last_valid[:, None])
    cols = np.broadcast_to(es[:, None], rows.shape)
    return SegmentBatch(
        obs=batch.obs[rows, cols],
        actions=batch.actions[rows, cols],
        true_rewards=batch.true_rewards[rows, cols].astype(np.float32) * mask,
        mask=mask,
    )


def make_pairs(
    batch: TrajectoryBatch,
    length: int,
    num_pairs: int,
    rng: np.random.Generator,
) -> tuple[SegmentBatch, SegmentBatch]:
    """Draw ``2 * num_pairs`` independent segments and split them into first and second members."""
    segs = fragment(batch, length, 2 * num_pairs, rng)
    first = SegmentBatch(segs.obs[0::2], segs.actions[0::2], segs.true_rewards[0::2], segs.mask[0::2])
    second = SegmentBatch(segs.obs[1::2], segs.actions[1::2], segs.true_rewards[1::2], segs.mask[1::2])
    return first, second


def stack_pairs(first: SegmentBatch, second: SegmentBatch, labels: np.ndarray, iteration: int) -> PreferencePairs:
    """Combine two segment batches and their labels into :class:`PreferencePairs`."""
    return PreferencePairs(
        obs=np.stack([first.obs, second.obs], axis=1),
        actions=np.stack([first.actions, second.actions], axis=1),
        true_rewards=np.stack([first.true_rewards, second.true_rewards], axis=1),
        mask=np.stack([first.mask, second.mask], axis=1),
        labels=labels.astype(np.float32),
        iteration=np.full(len(labels), iteration, dtype=np.int64),
    )
