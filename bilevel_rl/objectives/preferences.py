"""The RLHF objective: a teacher labels pairs of the follower's segments; the leader fits them (Bradley–Terry).

Each outer iteration the follower's newest on-policy transitions are cut into ``segment_length``-step segments,
paired at random and labelled by the teacher from their true rewards (SoBiRL Alg. 5 line 4; Christiano et al.
2017). The answered pairs enter a FIFO :class:`~bilevel_rl.data.preference_buffer.PreferenceBuffer`; a query the
teacher skips (B-Pref's skip teacher) is dropped and counted. Preference accuracy and the correlation of predicted
with true segment returns are measured on the new pairs *before* the leader trains on them (held out).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F  # noqa: N812

from bilevel_rl.data.preference_buffer import PreferenceBuffer
from bilevel_rl.data.segments import PreferencePairs, SegmentBatch, make_pairs, stack_pairs
from bilevel_rl.data.teachers import Teacher
from bilevel_rl.data.trajectories import TrajectoryBatch
from bilevel_rl.objectives.base import Objective
from bilevel_rl.reward_models.base import RewardModel
from bilevel_rl.schema import check_dataclass, check_range


@dataclass
class PreferenceObjectiveConfig:
    """The preference buffer and the query schedule (config group ``buffer``; defaults: SoBiRL App. J.2).

    Attributes:
        capacity: FIFO capacity in pairs (3000).
        segment_length: ``H``, steps per segment (25 in all papers).
        initial_pairs: pairs labelled at iteration 0 (600).
        pairs_per_iter: new pairs per later iteration (6).
        warmup_epochs: leader epochs on the initial pairs (500).
        epochs_per_iter: leader epochs per later iteration (1).
        stop_accuracy: stop a leader update (warm-up included) after the first epoch whose training accuracy over the
            decided pairs exceeds this, as B-Pref's reward learning does (Lee et al. 2021, ``train_PEBBLE.py``:
            ``if total_acc > 0.97: break``); the epoch counts above are then maxima. ``None`` (the papers' fixed
            schedule, SoBiRL App. J.2) runs every epoch.
    """

    capacity: int = 3000
    segment_length: int = 25
    initial_pairs: int = 600
    pairs_per_iter: int = 6
    warmup_epochs: int = 500
    epochs_per_iter: int = 1
    stop_accuracy: float | None = None

    def __post_init__(self) -> None:
        check_dataclass(self, "buffer")
        if self.stop_accuracy is not None and not 0.0 < self.stop_accuracy < 1.0:
            raise ValueError(f"buffer.stop_accuracy: must be in (0, 1) or null, got {self.stop_accuracy}")
        check_range(self, "buffer", "capacity", "segment_length", low=1, strict=False)
        check_range(self, "buffer", "initial_pairs", "pairs_per_iter", "warmup_epochs", "epochs_per_iter", strict=False)


def bradley_terry_loss(returns: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-pair Bradley–Terry cross-entropy (SoBiRL eq. (11) with the logistic link of App. J; PBRL eq. (2.5)).

    ``P(d0 ≻ d1) = exp(R0) / (exp(R0) + exp(R1)) = sigmoid(R0 - R1)`` and
    ``l = -y log P(d0 ≻ d1) - (1 - y) log P(d1 ≻ d0)``.

    Args:
        returns: ``(B, 2)`` predicted segment returns ``Σ_h r_φ(s_h, a_h)``.
        labels: ``(B,)`` probability that segment 0 is preferred (0.5 = tie).

    Returns:
        ``(B,)`` losses.
    """
    logits = returns[:, 0] - returns[:, 1]
    return F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype), reduction="none")


@torch.no_grad()
def predicted_segment_returns(reward_model: RewardModel, pairs: PreferencePairs, batch_size: int = 256) -> np.ndarray:
    """Predicted returns ``(N, 2)`` of each pair's segments, in eval mode (raw ``r_φ``, not the follower's scale)."""
    was_training = reward_model.training
    reward_model.eval()
    out = []
    try:
        dev = reward_model.device
        for start in range(0, len(pairs.labels), batch_size):
            sl = slice(start, start + batch_size)
            ret = reward_model.segment_returns(
                torch.as_tensor(pairs.obs[sl], device=dev),
                torch.as_tensor(pairs.actions[sl], device=dev),
                torch.as_tensor(pairs.mask[sl], device=dev),
            )
            out.append(ret.float().cpu().numpy())
    finally:
        reward_model.train(was_training)
    return np.concatenate(out) if out else np.zeros((0, 2), dtype=np.float32)


def preference_accuracy(reward_model: RewardModel, pairs: PreferencePairs) -> float:
    """Fraction of non-tied pairs whose preferred segment gets the higher predicted return."""
    decided = pairs.labels != 0.5
    if not decided.any():
        return float("nan")
    returns = predicted_segment_returns(reward_model, pairs)[decided]
    return float(np.mean((returns[:, 0] > returns[:, 1]) == (pairs.labels[decided] > 0.5)))


def pearson(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson correlation, ``nan`` when either side is constant."""
    if len(x) < 2 or np.std(x) < 1e-12 or np.std(y) < 1e-12:
        return float("nan")
    return float(np.corrcoef(x, y)[0, 1])


def _select(segments: SegmentBatch, keep: np.ndarray) -> SegmentBatch:
    """The segments where ``keep`` is true."""
    return SegmentBatch(segments.obs[keep], segments.actions[keep], segments.true_rewards[keep], segments.mask[keep])


class PreferenceObjective(Objective):
    """Teacher + preference buffer + pairing: the leader's data are labelled segment pairs.

    Args:
        config: buffer capacity and query schedule.
        teacher: labels pairs from their true segment rewards (and may skip some).
    """

    name = "preferences"

    def __init__(self, config: PreferenceObjectiveConfig, teacher: Teacher) -> None:
        self.config = config
        self.teacher = teacher
        self.buffer = PreferenceBuffer(config.capacity)
        self.skipped_queries = 0

    @property
    def data(self) -> PreferenceBuffer:
        """The labelled pairs."""
        return self.buffer

    def gather(
        self, batch: TrajectoryBatch, iteration: int, rng: np.random.Generator, reward_model: RewardModel
    ) -> dict[str, float]:
        """Query ``initial_pairs`` (iteration 0) or ``pairs_per_iter`` new pairs; held-out metrics first.

        Skipped queries do not enter the buffer: ``buffer/total_labels`` counts the answered ones,
        ``buffer/skipped_queries`` the others (both cumulative).
        """
        num_pairs = self.config.initial_pairs if iteration == 0 else self.config.pairs_per_iter
        if num_pairs == 0:
            return {}
        first, second = make_pairs(batch, self.config.segment_length, num_pairs, rng)
        # the teacher's scale: the mean true return of an H-step window of the newest behaviour (B-Pref's
        # relative thresholds); the first round is the one before any query was asked (also after a resume)
        self.teacher.calibrate(
            self.config.segment_length * float(batch.true_rewards.mean()),
            first_query=self.buffer.total_added + self.skipped_queries == 0,
        )
        rewards = np.stack([first.true_rewards, second.true_rewards], axis=1)
        mask = np.stack([first.mask, second.mask], axis=1)
        labels = self.teacher.label(self.teacher.segment_returns(rewards, mask), rng)
        answered = ~np.isnan(labels)
        self.skipped_queries += int((~answered).sum())
        pairs = stack_pairs(_select(first, answered), _select(second, answered), labels[answered], iteration)
        returns = pairs.true_returns()
        metrics = {
            "reward_model/pref_accuracy": preference_accuracy(reward_model, pairs),
            "reward_model/tie_fraction": float(np.mean(pairs.labels == 0.5)) if len(pairs) else float("nan"),
            # what the teacher compares: segment returns (sparse per-step rewards, e.g. Atari, make the per-step
            # true_reward_corr a weak signal even for a reward that ranks segments well)
            "reward_model/segment_return_corr": pearson(
                predicted_segment_returns(reward_model, pairs).reshape(-1), returns.reshape(-1)
            ),
            **self.teacher.metrics(),
        }
        self.buffer.add(pairs)
        metrics["buffer/pairs"] = float(len(self.buffer))
        metrics["buffer/total_labels"] = float(self.buffer.total_added)  # the queries the teacher answered
        metrics["buffer/skipped_queries"] = float(self.skipped_queries)
        return metrics

    @property
    def stop_accuracy(self) -> float | None:
        """``buffer.stop_accuracy``."""
        return self.config.stop_accuracy

    def epochs(self, iteration: int) -> int:
        """``warmup_epochs`` at iteration 0, ``epochs_per_iter`` after; none while the buffer is empty."""
        if len(self.buffer) == 0:
            return 0
        return self.config.warmup_epochs if iteration == 0 else self.config.epochs_per_iter

    @torch.no_grad()
    def diagnose(self, batch: TrajectoryBatch, reward_model: RewardModel) -> dict[str, float]:
        """Pearson correlation of ``r_φ`` (as the follower sees it) with the true reward on the batch."""
        pred = reward_model.relabel(batch.flat_obs(), batch.flat_actions()).cpu().numpy()
        true = batch.true_rewards.reshape(-1)
        return {
            "reward_model/true_reward_corr": pearson(pred, true),
            "reward_model/pred_reward_mean": float(pred.mean()),
            "follower/true_reward_mean": float(true.mean()),
        }

    def state_dict(self) -> dict[str, Any]:
        """The buffer's filled rows and counters, and the number of queries the teacher skipped."""
        return {"buffer": self.buffer.state_dict(), "skipped_queries": self.skipped_queries}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the buffer in place (rules hold a reference to it)."""
        self.buffer.load_state_dict(state["buffer"])
        self.skipped_queries = int(state.get("skipped_queries", 0))  # absent in checkpoints of older versions

    def save_artifacts(self, run_dir: Path) -> list[Path]:
        """``preferences.npz``: every stored pair with its label and the iteration that queried it."""
        path = run_dir / "preferences.npz"
        self.buffer.save(path)
        return [path]
