"""The bilevel outer loop (DESIGN.md; SoBiRL Alg. 5), in named stages.

Iteration 0 (``initial``): the follower takes ``initial_steps`` steps (SAC: uniformly random actions before
``learning_starts``), ``initial_pairs`` pairs are labelled and the leader trains ``warmup_epochs`` epochs
(SoBiRL J.2: 600 pairs, 500 epochs). Each later iteration k:

1. ``learn``   — ``follower.learn(N)`` on the current r_φ (N = 5e3 MuJoCo in SoBiRL);
2. ``query``   — fragment the transitions of that phase into segments, pair, label, push (FIFO);
3. ``upper``   — ``rule.update`` for ``epochs_per_iter`` epochs over the buffer;
4. ``diagnose``— preference accuracy and the Pearson correlation of predicted with true segment returns on the new
   pairs *before* the leader saw them (held out), Pearson correlation of r_φ with the true reward on the phase's
   transitions;
5. ``evaluate``, ``log``, ``checkpoint``.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from bilevel_rl.checkpoint import capture_rng, load_checkpoint, restore_rng, save_checkpoint
from bilevel_rl.data.preference_buffer import PreferenceBuffer
from bilevel_rl.data.segments import PreferencePairs, make_pairs, stack_pairs
from bilevel_rl.data.teachers import Teacher
from bilevel_rl.data.trajectories import TrajectoryBatch
from bilevel_rl.followers.base import Follower
from bilevel_rl.logging import MetricLogger
from bilevel_rl.reward_models.base import RewardModel
from bilevel_rl.upper.base import UpperRule, predicted_segment_returns, preference_accuracy

log = logging.getLogger(__name__)


@dataclass
class TrainerConfig:
    """Outer-loop budget and schedule.

    Attributes:
        total_steps: environment steps in all (all envs together).
        steps_per_iter: follower steps N between leader updates.
        initial_steps: follower steps before the first (warm-up) leader update.
        segment_length: H, steps per segment (25 in all papers).
        initial_pairs: pairs labelled at iteration 0 (SoBiRL: 600).
        pairs_per_iter: new pairs per later iteration (SoBiRL: 6).
        warmup_epochs: leader epochs on the initial pairs (SoBiRL: 500).
        epochs_per_iter: leader epochs per later iteration (SoBiRL code: 1).
        eval_every: evaluate every this many iterations (and at the first and last).
        eval_episodes: deterministic evaluation episodes on the true reward.
        checkpoint_every: checkpoint every this many iterations (and at the last).
        checkpoint_keep: how many checkpoints to keep.
        video_every: log a policy video every this many iterations (0: never).
        video_length: at most this many frames per video.
    """

    total_steps: int = 100_000
    steps_per_iter: int = 5_000
    initial_steps: int = 5_000
    segment_length: int = 25
    initial_pairs: int = 600
    pairs_per_iter: int = 6
    warmup_epochs: int = 500
    epochs_per_iter: int = 1
    eval_every: int = 1
    eval_episodes: int = 5
    checkpoint_every: int = 1
    checkpoint_keep: int = 2
    video_every: int = 0
    video_length: int = 300


def pearson(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson correlation, ``nan`` when either side is constant."""
    if len(x) < 2 or np.std(x) < 1e-12 or np.std(y) < 1e-12:
        return float("nan")
    return float(np.corrcoef(x, y)[0, 1])


class Trainer:
    """Runs the bilevel loop and owns checkpointing of everything it is given."""

    def __init__(
        self,
        config: TrainerConfig,
        follower: Follower,
        reward_model: RewardModel,
        rule: UpperRule,
        teacher: Teacher,
        buffer: PreferenceBuffer,
        logger: MetricLogger,
        run_dir: str | Path,
        seed: int,
        meta: dict[str, Any] | None = None,
        progress: bool = True,
    ) -> None:
        self.cfg = config
        self.follower, self.reward_model, self.rule = follower, reward_model, rule
        self.teacher, self.buffer, self.logger = teacher, buffer, logger
        self.run_dir = Path(run_dir)
        self.seed = seed
        self.meta = meta or {}
        self.progress = progress
        self.rng = np.random.default_rng(seed)
        self.iteration = 0
        self.last_eval: float = float("nan")
        self.follower.set_reward_model(reward_model)
        self.rule.attach(follower, reward_model)
        self.rule.bind_buffer(buffer)

    # ------------------------------------------------------------------ stages
    def _learn_stage(self, steps: int) -> tuple[dict[str, float], TrajectoryBatch]:
        t0 = time.perf_counter()
        before = self.follower.num_timesteps
        metrics = self.follower.learn(steps)
        dt = time.perf_counter() - t0
        taken = self.follower.num_timesteps - before
        metrics["time/sps"] = taken / max(dt, 1e-9)
        metrics["time/learn_s"] = dt
        batch = self.follower.collect(max(1, taken // self.follower.num_envs))
        return metrics, batch

    def _query_stage(self, batch: TrajectoryBatch, num_pairs: int) -> tuple[dict[str, float], PreferencePairs]:
        t0 = time.perf_counter()
        first, second = make_pairs(batch, self.cfg.segment_length, num_pairs, self.rng)
        returns = np.stack([first.true_returns(), second.true_returns()], axis=1)
        labels = self.teacher.label(returns, self.rng)
        pairs = stack_pairs(first, second, labels, self.iteration)
        # held-out accuracy: the leader has not trained on these pairs yet
        metrics = {
            "reward_model/pref_accuracy": preference_accuracy(self.reward_model, pairs),
            "reward_model/tie_fraction": float(np.mean(labels == 0.5)),
            # what the teacher compares: segment returns (sparse per-step rewards, e.g. Atari, make the per-step
            # true_reward_corr a weak signal even for a reward that ranks segments well)
            "reward_model/segment_return_corr": pearson(
                predicted_segment_returns(self.reward_model, pairs).reshape(-1), returns.reshape(-1)
            ),
        }
        self.buffer.add(pairs)
        metrics["buffer/pairs"] = float(len(self.buffer))
        metrics["buffer/total_labels"] = float(self.buffer.total_added)
        metrics["time/query_s"] = time.perf_counter() - t0
        return metrics, pairs

    def _upper_stage(self, epochs: int, batch: TrajectoryBatch) -> dict[str, float]:
        t0 = time.perf_counter()
        metrics = self.rule.update(self.buffer, epochs, self.rng, batch=batch, iteration=self.iteration)
        aux = self.rule.auxiliary_followers()
        if aux:
            metrics["time/aux_env_steps"] = float(sum(f.num_timesteps for f in aux.values()))
        if self.reward_model.normalize:
            self.reward_model.update_normalization(batch.flat_obs(), batch.flat_actions())
        metrics["reward_model/scale"] = float(self.reward_model.reward_scale)
        metrics["reward_model/shift"] = float(self.reward_model.reward_shift)
        metrics["time/upper_s"] = time.perf_counter() - t0
        return metrics

    @torch.no_grad()
    def _diagnose_stage(self, batch: TrajectoryBatch) -> dict[str, float]:
        t0 = time.perf_counter()
        if not self.rule.uses_preferences:
            return {"follower/true_reward_mean": float(batch.true_rewards.mean())}
        pred = self.reward_model.relabel(batch.flat_obs(), batch.flat_actions()).cpu().numpy()
        true = batch.true_rewards.reshape(-1)
        return {
            "reward_model/true_reward_corr": pearson(pred, true),
            "reward_model/pred_reward_mean": float(pred.mean()),
            "follower/true_reward_mean": float(true.mean()),
            "time/diagnose_s": time.perf_counter() - t0,
        }

    def _evaluate_stage(self, final: bool) -> dict[str, float]:
        c = self.cfg
        if not (final or self.iteration == 0 or (c.eval_every > 0 and self.iteration % c.eval_every == 0)):
            return {}
        t0 = time.perf_counter()
        metrics = self.follower.evaluate(c.eval_episodes, seed=self.seed + 10_000)
        metrics["time/eval_s"] = time.perf_counter() - t0
        self.last_eval = metrics["eval/true_return"]
        if c.video_every > 0 and (final or self.iteration % c.video_every == 0):
            try:
                frames = self.follower.record_video(  # type: ignore[attr-defined]
                    seed=self.seed + 20_000, max_steps=c.video_length
                )
                self.logger.log_video("eval/video", frames, self.follower.num_timesteps)
            except Exception as exc:  # noqa: BLE001 - a render backend failure must not kill the run
                log.warning("video recording failed (set MUJOCO_GL=egl for MuJoCo): %s", exc)
        return metrics

    # ------------------------------------------------------------------ loop
    def run(self) -> dict[str, float]:
        """Train until ``total_steps``; return the last logged metrics."""
        c = self.cfg
        bar = tqdm(
            total=c.total_steps,
            initial=self.follower.num_timesteps,
            unit="step",
            disable=not self.progress,
            dynamic_ncols=True,
            mininterval=2.0,
        )
        last: dict[str, float] = {}
        t_start = time.perf_counter()
        try:
            if self.iteration == 0 and self.follower.num_timesteps == 0:
                last = self._iteration(c.initial_steps, c.initial_pairs, c.warmup_epochs, t_start)
                bar.update(self.follower.num_timesteps - bar.n)
                self._set_postfix(bar, last)
            while self.follower.num_timesteps < c.total_steps:
                self.iteration += 1
                steps = min(c.steps_per_iter, c.total_steps - self.follower.num_timesteps)
                last = self._iteration(steps, c.pairs_per_iter, c.epochs_per_iter, t_start)
                bar.update(self.follower.num_timesteps - bar.n)
                self._set_postfix(bar, last)
        finally:
            bar.close()
        return last

    def _iteration(self, steps: int, pairs: int, epochs: int, t_start: float) -> dict[str, float]:
        metrics, batch = self._learn_stage(steps)
        if not self.rule.uses_preferences:
            pairs = epochs = 0
        if self.iteration == 0:
            self.reward_model.fit_input_normalization(batch.flat_obs())
        if pairs > 0:
            query_metrics, _ = self._query_stage(batch, pairs)
            metrics.update(query_metrics)
        if epochs > 0 and len(self.buffer) > 0:
            metrics.update(self._upper_stage(epochs, batch))
        metrics.update(self._diagnose_stage(batch))
        final = self.follower.num_timesteps >= self.cfg.total_steps
        metrics.update(self._evaluate_stage(final))
        metrics["time/total_s"] = time.perf_counter() - t_start
        self.logger.log(metrics, step=self.follower.num_timesteps, iteration=self.iteration)
        c = self.cfg
        if final or (c.checkpoint_every > 0 and self.iteration % c.checkpoint_every == 0):
            self.save()
        return metrics

    def _set_postfix(self, bar: Any, m: dict[str, float]) -> None:
        bar.set_postfix(
            it=self.iteration,
            sps=f"{m.get('time/sps', float('nan')):.0f}",
            ret=f"{self.last_eval:.1f}",
            acc=f"{m.get('reward_model/pref_accuracy', float('nan')):.2f}",
            refresh=False,
        )

    # ------------------------------------------------------------------ checkpoints
    def save(self) -> Path:
        """Checkpoint everything needed to continue exactly."""
        fstate = self.follower.state_dict()
        aux_states = {name: f.state_dict() for name, f in self.rule.auxiliary_followers().items()}
        tensors = {
            "reward_model": self.reward_model.state_dict(),
            "rule": self.rule.state_dict(),
            "follower_params": fstate.pop("params", None),
            "follower_torch_vars": fstate.pop("torch_vars", {}),
            "torch_rng": torch.get_rng_state(),
            "aux_params": {n: st.pop("params", None) for n, st in aux_states.items()},
            "aux_torch_vars": {n: st.pop("torch_vars", {}) for n, st in aux_states.items()},
        }
        rng = capture_rng()
        rng.pop("torch")
        state = {
            "meta": self.meta,
            "iteration": self.iteration,
            "env_steps": self.follower.num_timesteps,
            "last_eval": self.last_eval,
            "trainer_rng": self.rng.bit_generator.state,
            "global_rng": rng,
            "buffer": self.buffer.state_dict(),
            "follower": fstate,
            "aux_followers": aux_states,
        }
        return save_checkpoint(self.run_dir, self.follower.num_timesteps, tensors, state, self.cfg.checkpoint_keep)

    def load(self, path: str | Path) -> None:
        """Restore a checkpoint written by :meth:`save` (refuses a changed env / follower / rule)."""
        tensors, state = load_checkpoint(path)
        saved = state.get("meta", {})
        for key in ("env_id", "follower", "upper"):
            if key in saved and key in self.meta and saved[key] != self.meta[key]:
                raise ValueError(
                    f"checkpoint.resume_from: the run used {key}={saved[key]!r} but this config asks for "
                    f"{self.meta[key]!r}; resuming with a different {key} is refused"
                )
        self.reward_model.load_state_dict(tensors["reward_model"])
        self.rule.load_state_dict(tensors["rule"])
        fstate = dict(state["follower"])
        fstate["params"] = tensors["follower_params"]
        fstate["torch_vars"] = tensors["follower_torch_vars"]
        self.follower.load_state_dict(fstate)
        for name, follower in self.rule.auxiliary_followers().items():
            astate = dict(state["aux_followers"][name])
            astate["params"] = tensors["aux_params"][name]
            astate["torch_vars"] = tensors["aux_torch_vars"][name]
            follower.load_state_dict(astate)
        self.buffer.load_state_dict(state["buffer"])
        self.iteration = int(state["iteration"])
        self.last_eval = float(state["last_eval"])
        self.rng.bit_generator.state = state["trainer_rng"]
        restore_rng({**state["global_rng"], "torch": tensors["torch_rng"]})
