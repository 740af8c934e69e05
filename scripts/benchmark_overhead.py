"""Overhead of the bilevel loop against the plain SB3 algorithm on the same env, steps and settings.

In one process, alternating the two ``--repeats`` times (median reported), one torch thread:

* plain: ``stable_baselines3.SAC`` / ``PPO`` on the true reward, ``learn(steps)`` in one call;
* bilevel: our trainer with the quickstart's DRLHF leader (SAC: rewards relabelled by the reward model at replay-
  sample time; PPO: the reward of a whole rollout from one batched call after collection), a transition recorder,
  ``learn(N)`` per outer iteration.

Two ratios: the follower phases alone (sum of ``time/learn_s``), and the whole run (``time/total_s``: leader
updates, pair queries, diagnostics and evaluation included).

    python scripts/benchmark_overhead.py --follower ppo --steps 49152 --env Hopper-v5
    python scripts/benchmark_overhead.py --follower sac --steps 20000 --env Hopper-v5
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch
from omegaconf import OmegaConf
from stable_baselines3 import PPO, SAC
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.utils import set_random_seed

from bilevel_rl.config import compose
from bilevel_rl.train import build_trainer

PLAIN = {"sac": SAC, "ppo": PPO}


def plain(follower: str, env_id: str, steps: int, seed: int, kwargs: dict) -> float:
    set_random_seed(seed)
    env = make_vec_env(env_id, n_envs=1, seed=seed)
    model = PLAIN[follower]("MlpPolicy", env, seed=seed, verbose=0, **kwargs)
    t0 = time.perf_counter()
    model.learn(steps)
    dt = time.perf_counter() - t0
    env.close()
    return dt


def bilevel(follower: str, env_id: str, steps: int, seed: int, steps_per_iter: int) -> tuple[pd.DataFrame, dict]:
    cfg = compose(
        [
            "exp=quickstart",
            f"follower={follower}",
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
    ap.add_argument("--follower", choices=sorted(PLAIN), default="sac")
    ap.add_argument("--env", default="Hopper-v5")
    ap.add_argument("--steps", type=int, default=10_000)
    ap.add_argument("--steps-per-iter", type=int, default=2_048)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(1)

    t_plain, t_learn, t_total, frames = [], [], [], []
    for _ in range(args.repeats):  # alternate the two, so drifts of the machine's load hit both alike
        df, fcfg = bilevel(args.follower, args.env, args.steps, args.seed, args.steps_per_iter)
        kwargs = dict(fcfg["algo_kwargs"])
        kwargs["learning_rate"] = fcfg["learning_rate"]
        t_plain.append(plain(args.follower, args.env, args.steps, args.seed, kwargs))
        t_learn.append(float(df["time/learn_s"].sum()))
        t_total.append(float(df["time/total_s"].iloc[-1]))
        frames.append(df)
    p, learn, total = (statistics.median(v) for v in (t_plain, t_learn, t_total))
    per_iter = pd.concat(frames)[["time/gather_s", "time/upper_s", "time/diagnose_s"]].iloc[1:].mean()
    name = args.follower.upper()
    print(f"machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, 1 thread")
    print(f"env {args.env}, {args.steps} steps, seed {args.seed}, N={args.steps_per_iter}, median of {args.repeats}")
    print(f"plain SB3 {name} (true reward)     : {p:8.1f} s  ({args.steps / p:7.1f} steps/s)  runs {t_plain}")
    print(f"bilevel follower phases (DRLHF)  : {learn:8.1f} s  ({args.steps / learn:7.1f} steps/s)")
    print(f"bilevel whole run                : {total:8.1f} s")
    print(f"ratio follower phases / plain    : {learn / p:8.3f}")
    print(f"ratio whole run / plain          : {total / p:8.3f}")
    print("leader-side work per outer iteration (in the whole-run ratio):")
    for k, v in per_iter.items():
        print(f"  {k:<18} {v * 1000:8.1f} ms")


if __name__ == "__main__":
    main()
