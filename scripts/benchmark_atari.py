"""Throughput of the discrete-SAC bilevel loop on Atari (issue [4/4]; docs/benchmarks.md).

Runs ``exp=atari_cpu`` (Seaquest, discrete SAC with the Nature-CNN actor and twin critics, the SoBiRL J.2 reward CNN,
DRLHF leader) for a short budget through the real trainer and reports, separately:

* env steps/s of the follower phases once learning has started (one gradient step per ``train_freq`` env steps,
  batch 64, every sampled batch relabelled by the reward CNN);
* the same follower on the true reward (``upper=true_reward``: no relabelling), to isolate the relabelling cost;
* the leader's update time per outer iteration and its throughput in segment frames/s.

    python scripts/benchmark_atari.py                    # CPU, 1 torch thread
    python scripts/benchmark_atari.py --device cuda      # on a GPU machine
"""

from __future__ import annotations

import argparse
import platform
import tempfile
from pathlib import Path

import pandas as pd
import torch

from bilevel_rl.config import compose
from bilevel_rl.train import build_trainer


def run(upper: str, args: argparse.Namespace) -> pd.DataFrame:
    n = args.steps_per_iter
    cfg = compose(
        [
            "exp=atari_cpu",
            f"upper={upper}",
            f"device={args.device}",
            f"torch_threads={args.threads}",
            f"trainer.total_steps={n * (args.iters + 1)}",
            f"trainer.steps_per_iter={n}",
            f"trainer.initial_steps={n}",
            f"follower.algo_kwargs.learning_starts={n}",
            f"trainer.eval_every={10**9}",
            "trainer.eval_episodes=1",
            "env.atari.eval_max_steps=10",
            f"buffer.initial_pairs={args.pairs}",
            f"buffer.pairs_per_iter={args.pairs}",
            "buffer.warmup_epochs=1",
            "buffer.epochs_per_iter=1",
            "checkpoint.every=0",
            "progress=false",
        ],
    )
    with tempfile.TemporaryDirectory() as tmp:
        trainer = build_trainer(cfg, Path(tmp))
        try:
            trainer.run()
        finally:
            trainer.logger.close()
            trainer.follower.close()
        return pd.read_csv(Path(tmp) / "metrics.csv")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--steps-per-iter", type=int, default=1000)
    ap.add_argument("--iters", type=int, default=2, help="outer iterations after the random-action phase")
    ap.add_argument("--pairs", type=int, default=100, help="pairs labelled per iteration (leader epoch size)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    gpu = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else "none"
    print(f"machine: {platform.machine()}, {torch.get_num_threads()} torch thread(s), device {args.device} ({gpu})")
    print(
        f"torch {torch.__version__}; exp=atari_cpu (ALE/Seaquest-v5), N={args.steps_per_iter}, {args.iters} iterations"
    )
    for upper in ("drlhf", "true_reward"):
        df = run(upper, args)
        learn = df.iloc[1:]
        sps = learn["env_steps"].diff().dropna().sum() / learn["time/learn_s"].iloc[1:].sum()
        print(f"upper={upper:<12} follower phases (learning): {sps:7.1f} env steps/s")
        if upper == "drlhf":
            frames = 2 * 25 * df["buffer/pairs"].iloc[1:]  # one epoch over the buffer, 2 segments x 25 frames each
            upper_s = df["time/upper_s"].iloc[1:]
            print(
                f"  leader: {upper_s.mean():.2f} s per iteration for one epoch over {int(df['buffer/pairs'].iloc[-1])} "
                f"pairs ({(frames / upper_s).mean():.0f} segment frames/s, forward + backward)"
            )
            print(f"  random-action phase (no updates): {df['time/sps'].iloc[0]:.0f} env steps/s")


if __name__ == "__main__":
    main()
