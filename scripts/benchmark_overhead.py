"""Overhead of the bilevel loop against the plain SB3 algorithm on the same env, steps and settings.

In one process, alternating the two ``--repeats`` times (median reported), one torch thread:

* plain: ``stable_baselines3.SAC`` / ``PPO`` on the true reward, ``learn(steps)`` in one call;
* bilevel: our trainer with the quickstart's DRLHF leader (SAC: rewards relabelled by the reward model at replay-
  sample time; PPO: the reward of a whole rollout from one batched call after collection), a transition recorder,
  ``learn(N)`` per outer iteration.

Two ratios: the follower phases alone (sum of ``time/learn_s``), and the whole run (``time/total_s``: leader
updates, pair queries, diagnostics and evaluation included). Where the leader's time goes: its minibatch steps are
counted (an optimiser hook) and set against the *arithmetic floor*, the same model's Bradley–Terry forward,
backward, clipping and AdamW step timed in a bare loop on one fixed minibatch of the run's own pairs.

    python scripts/benchmark_overhead.py --follower ppo --steps 49152 --env Hopper-v5
    python scripts/benchmark_overhead.py --follower sac --steps 20000 --env Hopper-v5
"""

from __future__ import annotations

import argparse
import copy
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from omegaconf import OmegaConf
from stable_baselines3 import PPO, SAC
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.utils import set_random_seed

from bilevel_rl.config import compose
from bilevel_rl.objectives.preferences import bradley_terry_loss
from bilevel_rl.train import build_trainer
from bilevel_rl.upper.estimators import pair_tensors

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


def leader_floor(trainer: object, repeats: int = 200) -> float:
    """Seconds per leader minibatch step of bare arithmetic: BT loss, backward, clip, AdamW on one fixed batch."""
    rule, buffer = trainer.rule, trainer.objective.data  # type: ignore[attr-defined]
    model = copy.deepcopy(rule.reward_model)
    keys = ("lr", "betas", "eps", "weight_decay", "fused")
    opt = torch.optim.AdamW(model.parameters(), **{k: rule.optimizer.defaults[k] for k in keys})
    pairs = buffer.get(np.arange(min(rule.config.batch_size, len(buffer))))
    obs, actions, mask = pair_tensors(model, pairs)
    labels = torch.as_tensor(pairs.labels)
    max_norm = rule.config.max_grad_norm or float("inf")
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        for _ in range(repeats):
            loss = bradley_terry_loss(model.segment_returns(obs, actions, mask), labels).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
            opt.step()
        times.append((time.perf_counter() - t0) / repeats)
    return statistics.median(times)


def bilevel(
    follower: str, env_id: str, steps: int, seed: int, steps_per_iter: int
) -> tuple[pd.DataFrame, dict, int, float]:
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
        leader_steps = [0]
        trainer.rule.optimizer.register_step_post_hook(lambda *_: leader_steps.__setitem__(0, leader_steps[0] + 1))
        trainer.run()
        trainer.logger.close()
        trainer.follower.close()
        floor = leader_floor(trainer)
        fcfg = OmegaConf.to_container(cfg.follower, resolve=True)
        return pd.read_csv(Path(tmp) / "metrics.csv"), fcfg, leader_steps[0], floor


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

    t_plain, t_learn, t_total, t_leader, floors, frames = [], [], [], [], [], []
    leader_steps = 0
    for _ in range(args.repeats):  # alternate the two, so drifts of the machine's load hit both alike
        df, fcfg, leader_steps, floor = bilevel(args.follower, args.env, args.steps, args.seed, args.steps_per_iter)
        t_leader.append(float(df["time/upper_s"].sum()))
        floors.append(floor)
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
    leader, floor = statistics.median(t_leader), statistics.median(floors)
    print(f"leader updates (warm-up included): {leader:6.1f} s = {leader / p:.3f} of plain; {leader_steps} minibatch")
    print(
        f"  steps at {leader / leader_steps * 1000:.2f} ms; the bare arithmetic of one step (forward, backward, clip,"
        f" AdamW) takes {floor * 1000:.2f} ms: {leader_steps * floor:.1f} s, {leader_steps * floor / leader:.0%} of it"
    )


if __name__ == "__main__":
    main()
