"""Final evaluation of an Atari RLHF run: the follower's game score and how well r_φ tracks the game score.

Loads the latest checkpoint of ``RUN_DIR`` (nothing is written there), plays ``--episodes`` whole games with the
follower (sampling from π as the trainer's evaluation does, seeds ``--seed + i``, unclipped scores), and on those
games' transitions reports the Pearson correlation of the learned reward with the true reward:

* per step: ``r_φ(s_t, a_t)`` against the game reward ``r_t`` (the trainer's ``reward_model/true_reward_corr``);
* per step, next state: ``r_φ(s_{t+1}, a_{t+1})`` against ``r_t`` within each game. A state-only reward
  (``reward_model.per_action=false``) sees the result of ``a_t`` only in ``s_{t+1}``, one step late;
* per segment: sums over consecutive non-overlapping ``--segment``-step windows of each game (what the teacher
  compares; insensitive to that lag).

For a run of ``upper=true_reward`` the reward model is never trained, and only the score is reported.

With ``--random`` the same is done for a uniformly random policy (the reference the follower must beat), using the
run's reward model for the correlations.

    python scripts/evaluate_atari_run.py runs/atari_demo --episodes 30
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf

from bilevel_rl.checkpoint import LATEST, CheckpointError, newest_intact_checkpoint
from bilevel_rl.envs.atari import evaluate_atari, make_atari_eval_env
from bilevel_rl.objectives.preferences import pearson
from bilevel_rl.train import RUN_CONFIG, build_trainer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--episodes", type=int, default=30)
    parser.add_argument("--seed", type=int, default=20_000, help="game i is reset with seed + i")
    parser.add_argument("--segment", type=int, default=25)
    parser.add_argument("--max-steps", type=int, default=27_000, help="agent steps per game at most")
    parser.add_argument("--random", action="store_true", help="play uniformly random actions instead")
    args = parser.parse_args()

    try:
        ckpt, _ = newest_intact_checkpoint(args.run_dir)
    except CheckpointError as exc:
        raise SystemExit(str(exc)) from None
    cfg = OmegaConf.load(args.run_dir / RUN_CONFIG)
    with tempfile.TemporaryDirectory() as tmp:  # build the run from a copy: the logger writes into its run dir
        shutil.copytree(ckpt, Path(tmp) / "checkpoints" / ckpt.name)
        (Path(tmp) / "checkpoints" / LATEST).write_text(ckpt.name)
        OmegaConf.update(cfg, "logger.mode", "disabled", force_add=True)
        OmegaConf.update(cfg, "progress", False, force_add=True)
        trainer = build_trainer(cfg, Path(tmp), resume=True)
        follower, model = trainer.follower, trainer.reward_model
        venv = make_atari_eval_env(cfg.env.id, OmegaConf.to_container(cfg.env.kwargs), follower.atari, args.seed)
        rng = np.random.default_rng(args.seed)
        n_actions = int(venv.action_space.n)

        def predict(obs: np.ndarray) -> np.ndarray:
            return rng.integers(n_actions, size=1) if args.random else follower._predict(obs)

        game: list[tuple[np.ndarray, int, float]] = []  # (obs, action, score) of the game being played

        def record(_episode: int, obs: np.ndarray, action: int, reward: float) -> None:
            game.append((obs, action, reward))

        scores, pred_steps, true_steps, pred_segs, true_segs = [], [], [], [], []
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(args.seed)
            for ep in range(args.episodes):  # one game per call: game ep is reset with seed args.seed + ep
                game.clear()
                evaluate_atari(predict, venv, 1, args.seed + ep, args.max_steps, on_step=record)
                obs_l, act_l, rew_l = zip(*game, strict=True)
                pred = model.relabel(np.stack(obs_l), np.asarray(act_l)).cpu().numpy()  # (relabel chunks big batches)
                true = np.asarray(rew_l)
                scores.append(true.sum())
                pred_steps.append(pred)
                true_steps.append(true)
                n_seg = len(true) // args.segment
                pred_segs.append(pred[: n_seg * args.segment].reshape(n_seg, -1).sum(1))
                true_segs.append(true[: n_seg * args.segment].reshape(n_seg, -1).sum(1))
                print(f"game {ep}: score {true.sum():.0f}, {len(true)} steps", flush=True)
        venv.close()
        follower.close()
        trainer.logger.close()
    who = "random policy" if args.random else f"follower at {int(ckpt.name.split('_')[-1])} env steps"
    scores_a = np.asarray(scores)
    print(f"\n{args.run_dir} ({who}), {args.episodes} games from seed {args.seed}:")
    print(
        f"  game score: mean {scores_a.mean():.1f} ± {scores_a.std():.1f} (std), "
        f"standard error {scores_a.std(ddof=1) / np.sqrt(len(scores_a)):.1f}, median {np.median(scores_a):.0f}"
    )
    if cfg.upper.name == "true_reward":
        return
    ps, ts = np.concatenate(pred_steps), np.concatenate(true_steps)
    print(f"  Pearson(r_phi, r) per step: {pearson(ps, ts):.3f} over {len(ts)} steps")
    nxt, now = np.concatenate([p[1:] for p in pred_steps]), np.concatenate([t[:-1] for t in true_steps])
    print(f"  Pearson(r_phi(s_t+1), r_t) per step, next state: {pearson(nxt, now):.3f}")
    pg, tg = np.concatenate(pred_segs), np.concatenate(true_segs)
    print(
        f"  Pearson per {args.segment}-step segment: {pearson(pg, tg):.3f} over {len(tg)} segments "
        f"({np.mean(tg == 0):.0%} score nothing)"
    )


if __name__ == "__main__":
    main()
