"""Memory and sampling speed of FrameStackReplayBuffer at Atari scale, against SB3's ReplayBuffer.

Fills a buffer of --capacity transitions completely (every page touched) through ``add`` with synthetic
VecFrameStack-style stacks (4 x 84 x 84 uint8, zero-padded episode starts, random episode ends), reports the
process RSS before and after, bytes per transition, and batches of --batch-size sampled per second. SB3's
bytes are measured on its own arrays (a small ReplayBuffer, scaled to --capacity) with
optimize_memory_usage False and True.

    nice -n 10 .venv/bin/python scripts/benchmark_replay_memory.py --capacity 1000000
"""

from __future__ import annotations

import argparse
import os
import resource
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np
import torch
from gymnasium import spaces
from stable_baselines3.common.buffers import ReplayBuffer

from bilevel_rl.followers.frame_buffer import FrameStackReplayBuffer

GiB = 2**30


def rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kB on Linux


def sb3_bytes_per_transition(obs_space: spaces.Box, act_space: spaces.Discrete, optimize: bool) -> float:
    n = 1000
    buf = ReplayBuffer(
        n, obs_space, act_space, device="cpu", optimize_memory_usage=optimize, handle_timeout_termination=not optimize
    )
    arrays = [buf.observations, buf.actions, buf.rewards, buf.dones, buf.timeouts]
    if not optimize:
        arrays.append(buf.next_observations)
    return sum(a.nbytes for a in arrays) / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--capacity", type=int, default=1_000_000)
    parser.add_argument("--n-envs", type=int, default=1)
    parser.add_argument("--mean-episode", type=float, default=400.0, help="mean episode length (geometric)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--sample-seconds", type=float, default=10.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    rng = np.random.default_rng(args.seed)
    k, h, w, e = 4, 84, 84, args.n_envs
    obs_space = spaces.Box(0, 255, (k, h, w), np.uint8)
    act_space = spaces.Discrete(6)

    rss0 = rss_bytes()
    buf = FrameStackReplayBuffer(args.capacity, obs_space, act_space, device="cpu", n_envs=e)
    rss1 = rss_bytes()
    print(f"constructed capacity={args.capacity:,} n_envs={e}: nbytes={buf.nbytes() / GiB:.2f} GiB allocated")
    print(f"RSS before construction {rss0 / GiB:.3f} GiB, after {rss1 / GiB:.3f} GiB (pages not yet touched)")

    pool = rng.integers(0, 256, size=(997, h, w), dtype=np.uint8)  # frames cycle through a prime-sized pool
    stack = np.zeros((e, k, h, w), dtype=np.uint8)
    stack[:, -1] = pool[rng.integers(0, len(pool), size=e)]
    steps = buf.buffer_size
    p_end = 1.0 / args.mean_episode
    t0 = time.perf_counter()
    for t in range(steps):
        frames = pool[(t * e + np.arange(e)) % len(pool)]
        nxt = np.concatenate([stack[:, 1:], frames[:, None]], axis=1)
        dones = rng.random(e) < p_end
        truncated = dones & (rng.random(e) < 0.1)
        infos = [{"TimeLimit.truncated": bool(tr)} for tr in truncated]
        buf.add(stack, nxt, rng.integers(0, 6, size=e), rng.normal(size=e).astype(np.float32), dones, infos)
        stack = nxt
        for i in np.flatnonzero(dones):  # VecFrameStack: zero history + the reset frame
            stack[i] = 0
            stack[i, -1] = pool[rng.integers(0, len(pool))]
        if (t + 1) % max(steps // 10, 1) == 0:
            rate = (t + 1) / (time.perf_counter() - t0)
            print(
                f"  filled {t + 1:>9,}/{steps:,} rows  ({rate:,.0f} adds/s, RSS {rss_bytes() / GiB:.2f} GiB)",
                flush=True,
            )
    fill_s = time.perf_counter() - t0
    rss2 = rss_bytes()
    assert buf.full

    bpt = buf.bytes_per_transition()
    side = buf.side_store_nbytes()
    n_tr = buf.buffer_size * e
    print(f"filled in {fill_s:.0f} s; RSS after fill {rss2 / GiB:.2f} GiB (+{(rss2 - rss0) / GiB:.2f} GiB)")
    print(f"bytes_per_transition() = {bpt} (frame {h * w} + action {buf.actions.itemsize} + reward 4 + 4 flags)")
    print(
        f"nbytes() = {buf.nbytes() / GiB:.3f} GiB, of which side store {side / 2**20:.1f} MiB ({len(buf.side)} frames)"
    )
    print(f"measured RSS growth per transition: {(rss2 - rss0) / n_tr:.0f} bytes")
    for optimize in (False, True):
        sb3 = sb3_bytes_per_transition(obs_space, act_space, optimize)
        print(
            f"SB3 ReplayBuffer optimize_memory_usage={optimize}: {sb3:.0f} bytes/transition -> "
            f"{sb3 * n_tr / GiB:.1f} GiB for {n_tr:,} ({sb3 / bpt:.1f}x this buffer)"
        )

    np.random.seed(args.seed)
    buf.sample(args.batch_size)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < args.sample_seconds:
        buf.sample(args.batch_size)
        n += 1
    dt = time.perf_counter() - t0
    print(f"sample({args.batch_size}): {n / dt:,.0f} batches/s ({1e3 * dt / n:.2f} ms/batch, 1 thread)")
    print(f"peak RSS (getrusage ru_maxrss) {peak_rss_bytes() / GiB:.2f} GiB")


if __name__ == "__main__":
    main()
