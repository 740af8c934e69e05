"""Overhead of the bilevel loop's follower phase against plain SB3 SAC.

In one process, same env, seed, step count and update ratio (train_freq=1, gradient_steps=1):

* plain: ``stable_baselines3.SAC`` on the true reward, ``learn(steps)`` in one call;
* bilevel: our trainer (DRLHF + SAC follower, rewards relabelled by the reward model at sample time, a
  transition recorder, ``learn(N)`` per outer iteration).

The ratio compares the bilevel follower phases (sum of ``time/learn_s``) with the plain run. Upper-level work
(query, leader update, diagnostics, evaluation) is excluded from the ratio and printed per outer iteration.

    python scripts/benchmark_overhead.py --steps 10000 --env Hopper-v5
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch
from omegaconf import OmegaConf
from stable_baselines3 import SAC
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.utils import set_random_seed

from bilevel_rl.config import compose
from bilevel_rl.train import build_trainer


def plain_sac(env_id: str, steps: int, seed: int, kwargs: dict) -> float:
    set_random_seed(seed)
    env = make_vec_env(env_id, n_envs=1, seed=seed)
    model = SAC("MlpPolicy", env, seed=seed, verbose=0, **kwargs)
    t0 = time.perf_counter()
    model.learn(steps)
    dt = time.perf_counter() - t0
    env.close()
    return dt


def bilevel(env_id: str, steps: int, seed: int, steps_per_iter: int) -> pd.DataFrame:
    cfg = compose(
        [
            "exp=quickstart",
            f"env.id={env_id}",
            f"seed={seed}",
            f"trainer.total_steps={steps}",
            f"trainer.steps_per_iter={steps_per_iter}",
            f"trainer.initial_steps={steps_per_iter}",
            f"trainer.eval_every={10**9}",
            "trainer.eval_episodes=1",
            "checkpoint.every=0",
            "progress=false",
        ],
    )
    OmegaConf.set_struct(cfg, False)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = build_trainer(cfg, Path(tmp))
        trainer.run()
        trainer.logger.close()
        trainer.follower.close()
        return pd.read_csv(Path(tmp) / "metrics.csv"), OmegaConf.to_container(cfg.follower, resolve=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--env", default="Hopper-v5")
    ap.add_argument("--steps", type=int, default=10_000)
    ap.add_argument("--steps-per-iter", type=int, default=2_000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(1)

    df, fcfg = bilevel(args.env, args.steps, args.seed, args.steps_per_iter)
    kwargs = dict(fcfg["algo_kwargs"])
    kwargs["learning_rate"] = fcfg["learning_rate"]
    t_plain = plain_sac(args.env, args.steps, args.seed, kwargs)
    t_learn = df["time/learn_s"].sum()
    per_iter = df[["time/query_s", "time/upper_s", "time/diagnose_s"]].iloc[1:].mean()
    print(f"machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, 1 thread")
    print(f"env {args.env}, {args.steps} steps, seed {args.seed}, N={args.steps_per_iter}")
    print(f"plain SB3 SAC (true reward)      : {t_plain:8.1f} s  ({args.steps / t_plain:6.1f} steps/s)")
    print(f"bilevel follower phases (DRLHF)  : {t_learn:8.1f} s  ({args.steps / t_learn:6.1f} steps/s)")
    print(f"ratio bilevel / plain            : {t_learn / t_plain:8.3f}   (target <= 1.05)")
    print("upper-level work per outer iteration (excluded from the ratio):")
    for k, v in per_iter.items():
        print(f"  {k:<18} {v * 1000:8.1f} ms")
    print(f"  warm-up leader update (iteration 0): {df['time/upper_s'].iloc[0]:.1f} s")


if __name__ == "__main__":
    main()
