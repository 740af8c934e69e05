"""Reference learners on an Atari game's true reward, with bilevel_rl's wrappers and evaluation protocol.

Runs SB3 DQN (the sanity reference for discrete SAC; issue [4/4]) or a uniformly random policy on the same env
stack as ``bilevel-rl`` (:func:`bilevel_rl.envs.atari.make_atari_train_env`: DeepMind wrappers, clipped training
reward, 4×84×84 channels-first stacks) and evaluates it like the trainer does (:func:`evaluate_atari`: whole games,
raw score), every ``--eval-every`` env steps. Writes ``<out>/metrics.csv`` with ``step`` and ``eval/true_return``.

Discrete SAC itself runs through the CLI on the true reward, e.g.::

    bilevel-rl exp=atari_cpu upper=true_reward trainer.total_steps=40000 trainer.steps_per_iter=5000

Example (the docs/results/atari_cpu.md reference)::

    python scripts/atari_true_reward_baselines.py --algo dqn --env ALE/Seaquest-v5 --steps 40000 --out runs/dqn
"""

from __future__ import annotations

import argparse
import csv
import time
from pathlib import Path

import numpy as np
import torch
from stable_baselines3 import DQN
from stable_baselines3.common.callbacks import BaseCallback

from bilevel_rl.envs.atari import AtariConfig, evaluate_atari, make_atari_eval_env, make_atari_train_env
from bilevel_rl.followers.frame_buffer import FrameStackReplayBuffer

ENV_KWARGS = {"repeat_action_probability": 0.0}  # as the env presets (configs/env/*.yaml)


class _Evaluate(BaseCallback):
    def __init__(self, every: int, fn: object) -> None:
        super().__init__()
        self.every, self.fn = every, fn

    def _on_step(self) -> bool:
        if self.num_timesteps % self.every == 0:
            self.fn(self.num_timesteps)  # type: ignore[operator]
        return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--algo", choices=["dqn", "random"], default="dqn")
    parser.add_argument("--env", default="ALE/Seaquest-v5")
    parser.add_argument("--steps", type=int, default=40_000)
    parser.add_argument("--eval-every", type=int, default=5_000)
    parser.add_argument("--eval-episodes", type=int, default=5)
    parser.add_argument("--eval-epsilon", type=float, default=0.05, help="DQN evaluation: epsilon-greedy")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    torch.set_num_threads(1)
    atari = AtariConfig()
    venv = make_atari_train_env(args.env, 1, args.seed, ENV_KWARGS, atari)
    eval_env = make_atari_eval_env(args.env, ENV_KWARGS, AtariConfig(), args.seed + 10_000)
    args.out.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, float]] = []
    t0 = time.perf_counter()
    rng = np.random.default_rng(args.seed)
    n_actions = int(venv.action_space.n)  # type: ignore[attr-defined]

    def random_predict(obs: np.ndarray) -> np.ndarray:
        return rng.integers(n_actions, size=len(obs))

    model = None
    if args.algo == "dqn":
        # SB3 DQN with the rl-zoo Atari settings, shrunk to the budget: learning starts, target updates and the
        # epsilon schedule scaled from 10M to a few 10k steps; frames stored once (FrameStackReplayBuffer)
        model = DQN(
            "CnnPolicy",
            venv,
            learning_rate=1e-4,
            buffer_size=100_000,
            learning_starts=5_000,
            batch_size=32,
            train_freq=4,
            gradient_steps=1,
            target_update_interval=1_000,
            exploration_fraction=0.25,
            exploration_final_eps=0.01,
            replay_buffer_class=FrameStackReplayBuffer,  # type: ignore[arg-type]  # SB3 types a ReplayBuffer subclass
            seed=args.seed,
            device="cpu",
        )

    def dqn_predict(obs: np.ndarray) -> np.ndarray:
        # epsilon-greedy with epsilon = 0.05, the evaluation policy of Mnih et al. 2015 (a purely greedy untrained
        # Q-network can idle at Seaquest's surface until the 27k-step cap)
        assert model is not None
        greedy = model.predict(obs, deterministic=True)[0]
        explore = rng.random(len(obs)) < args.eval_epsilon
        return np.where(explore, rng.integers(n_actions, size=len(obs)), greedy)

    def evaluate(step: int) -> None:
        predict = random_predict if model is None else dqn_predict
        m = evaluate_atari(predict, eval_env, args.eval_episodes, args.seed + 10_000, atari.eval_max_steps)
        row = {"step": step, **m, "time/total_s": time.perf_counter() - t0}
        rows.append(row)
        print(
            f"{args.algo} step {step}: return {m['eval/true_return']:.1f} ± {m['eval/true_return_std']:.1f}", flush=True
        )
        with open(args.out / "metrics.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)

    if model is None:
        evaluate(0)
    else:
        evaluate(0)
        model.learn(args.steps, callback=_Evaluate(args.eval_every, evaluate))
    venv.close()
    eval_env.close()


if __name__ == "__main__":
    main()
