"""The bilevel outer loop (SoBiRL Alg. 5 for RLHF; the same loop for every objective and rule), in named stages.

Each outer iteration ``k`` (``k = 0`` is the warm-up: the follower takes ``initial_steps`` steps — SAC with uniform
random actions before ``learning_starts`` — and the leader trains on the initial data):

1. ``learn``    — ``follower.learn(N)`` on the current leader model (N = 5e3 MuJoCo in SoBiRL App. J.2);
2. ``gather``   — the objective turns the phase's on-policy transitions into leader data (RLHF: segments, pairs,
   teacher labels) and reports held-out metrics before the leader sees them;
3. ``leader``   — ``rule.update(LeaderStep)`` for the objective's number of epochs;
4. ``diagnose`` — the objective's quality metrics on the phase's transitions;
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

from bilevel_rl.checkpoint import capture_rng, read_checkpoint, restore_rng, write_checkpoint
from bilevel_rl.data.trajectories import TrajectoryBatch
from bilevel_rl.followers.base import Follower
from bilevel_rl.logging import MetricLogger
from bilevel_rl.objectives.base import Objective
from bilevel_rl.reward_models.base import RewardModel
from bilevel_rl.schema import check_dataclass, check_range
from bilevel_rl.upper.base import LeaderStep, UpperRule

log = logging.getLogger(__name__)


@dataclass
class TrainerConfig:
    """Outer-loop budget and schedule (config group ``trainer``).

    Attributes:
        total_steps: environment steps in all (all envs together).
        steps_per_iter: follower steps N between leader updates.
        initial_steps: follower steps before the first (warm-up) leader update.
        eval_every: evaluate every this many iterations (and at the first and last).
        eval_episodes: evaluation episodes on the environment's own reward.
        video_every: log a policy video every this many iterations (0: never).
        video_length: at most this many frames per video.
    """

    total_steps: int = 100_000
    steps_per_iter: int = 5_000
    initial_steps: int = 5_000
    eval_every: int = 1
    eval_episodes: int = 5
    video_every: int = 0
    video_length: int = 300

    def __post_init__(self) -> None:
        check_dataclass(self, "trainer")
        check_range(
            self, "trainer", "total_steps", "steps_per_iter", "eval_episodes", "video_length", low=1, strict=False
        )
        check_range(self, "trainer", "initial_steps", "eval_every", "video_every", strict=False)
        if self.initial_steps > self.total_steps:
            raise ValueError(
                f"trainer.initial_steps: {self.initial_steps} exceeds trainer.total_steps={self.total_steps}"
            )


@dataclass
class CheckpointConfig:
    """Config group ``checkpoint``.

    Attributes:
        every: checkpoint every this many iterations (and at the last; 0: only at the last).
        keep: how many checkpoints to keep (newest first).
        resume_from: a run directory to continue (its own config is used; see ``bilevel_rl.train``).
    """

    every: int = 1
    keep: int = 2
    resume_from: str | None = None

    def __post_init__(self) -> None:
        check_dataclass(self, "checkpoint")
        check_range(self, "checkpoint", "every", strict=False)
        check_range(self, "checkpoint", "keep", low=1, strict=False)


class Trainer:
    """Runs the bilevel loop and owns checkpointing of everything it is given.

    Args:
        config: budget and schedule.
        checkpoint: checkpoint schedule.
        follower: the lower level.
        reward_model: the leader's model (RLHF reward model, shaping model).
        rule: the leader's update rule (attached here).
        objective: what the leader optimises and the data it gathers.
        logger: metrics sink.
        run_dir: the run directory (checkpoints go to ``run_dir/checkpoints``).
        seed: seeds the trainer's numpy generator and the leader's torch generator.
        meta: identity of the run (env, follower, rule); a checkpoint of another identity is refused.
        progress: show a progress bar.
    """

    def __init__(
        self,
        config: TrainerConfig,
        checkpoint: CheckpointConfig,
        follower: Follower,
        reward_model: RewardModel,
        rule: UpperRule,
        objective: Objective,
        logger: MetricLogger,
        run_dir: str | Path,
        seed: int,
        meta: dict[str, Any] | None = None,
        progress: bool = True,
    ) -> None:
        self.cfg = config
        self.checkpoint = checkpoint
        self.follower, self.reward_model, self.rule = follower, reward_model, rule
        self.objective, self.logger = objective, logger
        self.run_dir = Path(run_dir)
        self.seed = seed
        self.meta = meta or {}
        self.progress = progress
        self.rng = np.random.default_rng(seed)
        self.leader_generator = torch.Generator().manual_seed(seed + 1)
        self.iteration = 0
        self.last_eval: float = float("nan")
        self.follower.set_reward_model(reward_model, objective.reward_mix)
        self.rule.attach(follower, reward_model, objective.data)

    # ------------------------------------------------------------------ stages
    def _learn(self, steps: int) -> tuple[dict[str, float], TrajectoryBatch]:
        t0 = time.perf_counter()
        before = self.follower.num_timesteps
        metrics = self.follower.learn(steps)
        dt = time.perf_counter() - t0
        taken = self.follower.num_timesteps - before
        metrics["time/sps"] = taken / max(dt, 1e-9)
        metrics["time/learn_s"] = dt
        return metrics, self.follower.collect(max(1, taken // self.follower.num_envs))

    def _gather(self, batch: TrajectoryBatch) -> dict[str, float]:
        t0 = time.perf_counter()
        metrics = self.objective.gather(batch, self.iteration, self.rng, self.reward_model)
        metrics["time/gather_s"] = time.perf_counter() - t0
        return metrics

    def _leader(self, batch: TrajectoryBatch, epochs: int) -> dict[str, float]:
        t0 = time.perf_counter()
        step = LeaderStep(
            self.objective.data,
            batch,
            self.iteration,
            epochs,
            self.rng,
            self.leader_generator,
            self.objective.stop_accuracy,
        )
        metrics = self.rule.update(step)
        aux = self.rule.auxiliary_followers()
        if aux:
            metrics["time/aux_env_steps"] = float(sum(f.num_timesteps for f in aux.values()))
        if self.reward_model.normalize:
            self.reward_model.update_normalization(batch.flat_obs(), batch.flat_actions())
        metrics["reward_model/scale"] = float(self.reward_model.reward_scale)
        metrics["reward_model/shift"] = float(self.reward_model.reward_shift)
        metrics["time/upper_s"] = time.perf_counter() - t0
        return metrics

    def _diagnose(self, batch: TrajectoryBatch) -> dict[str, float]:
        t0 = time.perf_counter()
        if not self.rule.trains_leader:
            return self.objective.baseline_metrics(batch, self.reward_model)
        metrics = self.objective.diagnose(batch, self.reward_model)
        metrics["time/diagnose_s"] = time.perf_counter() - t0
        return metrics

    def _evaluate(self, final: bool) -> dict[str, float]:
        c = self.cfg
        if not (final or self.iteration == 0 or (c.eval_every > 0 and self.iteration % c.eval_every == 0)):
            return {}
        t0 = time.perf_counter()
        leader_reward = self.objective.eval_reward_fn(self.reward_model, self.follower.reward_mix)
        if leader_reward is not None:
            metrics = self.follower.evaluate(c.eval_episodes, seed=self.seed + 10_000, leader_reward=leader_reward)
        else:
            metrics = self.follower.evaluate(c.eval_episodes, seed=self.seed + 10_000)
        if self.objective.name == "leader_reward":  # r̄ is the dense reward unless a function or a cost says otherwise
            metrics.setdefault("eval/leader_return", metrics["eval/true_return"])
        metrics["time/eval_s"] = time.perf_counter() - t0
        self.last_eval = metrics["eval/true_return"]
        if c.video_every > 0 and (final or self.iteration % c.video_every == 0):
            try:
                frames = self.follower.record_video(seed=self.seed + 20_000, max_steps=c.video_length)
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
                last = self._iteration(c.initial_steps, t_start)
                bar.update(self.follower.num_timesteps - bar.n)
                self._set_postfix(bar, last)
            while self.follower.num_timesteps < c.total_steps:
                self.iteration += 1
                last = self._iteration(min(c.steps_per_iter, c.total_steps - self.follower.num_timesteps), t_start)
                bar.update(self.follower.num_timesteps - bar.n)
                self._set_postfix(bar, last)
        finally:
            bar.close()
        return last

    def _iteration(self, steps: int, t_start: float) -> dict[str, float]:
        metrics, batch = self._learn(steps)
        if self.iteration == 0:
            self.reward_model.fit_input_normalization(batch.flat_obs())
        if self.rule.trains_leader:
            metrics.update(self._gather(batch))
            epochs = self.objective.epochs(self.iteration)
            if epochs > 0:
                metrics.update(self._leader(batch, epochs))
        metrics.update(self._diagnose(batch))
        final = self.follower.num_timesteps >= self.cfg.total_steps
        metrics.update(self._evaluate(final))
        metrics["time/total_s"] = time.perf_counter() - t_start
        self.logger.log(metrics, step=self.follower.num_timesteps, iteration=self.iteration)
        every = self.checkpoint.every
        if final or (every > 0 and self.iteration % every == 0):
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
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue exactly (the checkpoint writer splits tensors out generically)."""
        return {
            "meta": self.meta,
            "iteration": self.iteration,
            "env_steps": self.follower.num_timesteps,
            "last_eval": self.last_eval,
            "trainer_rng": self.rng.bit_generator.state,
            "leader_generator": self.leader_generator.get_state(),
            "global_rng": capture_rng(),
            "reward_model": self.reward_model.state_dict(),
            "rule": self.rule.state_dict(),
            "objective": self.objective.state_dict(),
            "follower": self.follower.state_dict(),
        }

    def save(self) -> Path:
        """Checkpoint :meth:`state_dict` (atomic, checksummed, rotated)."""
        return write_checkpoint(self.run_dir, self.follower.num_timesteps, self.state_dict(), self.checkpoint.keep)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` (refuses a changed env / follower / rule)."""
        saved = state.get("meta", {})
        for key in ("env_id", "follower", "upper"):
            if key in saved and key in self.meta and saved[key] != self.meta[key]:
                raise ValueError(
                    f"checkpoint.resume_from: the run used {key}={saved[key]!r} but this config asks for "
                    f"{self.meta[key]!r}; resuming with a different {key} is refused"
                )
        self.reward_model.load_state_dict(state["reward_model"])
        self.objective.load_state_dict(state["objective"])
        self.rule.load_state_dict(state["rule"])
        self.follower.load_state_dict(state["follower"])
        self.iteration = int(state["iteration"])
        self.last_eval = float(state["last_eval"])
        self.rng.bit_generator.state = state["trainer_rng"]
        self.leader_generator.set_state(state["leader_generator"])
        restore_rng(state["global_rng"])

    def load(self, path: str | Path) -> None:
        """Restore a checkpoint directory written by :meth:`save`."""
        self.load_state_dict(read_checkpoint(path))
