"""It learns: DRLHF on Pendulum reaches >= 90% held-out preference accuracy and the true return rises."""

import numpy as np
import pandas as pd
from omegaconf import OmegaConf

from bilevel_rl.data.segments import make_pairs, stack_pairs
from bilevel_rl.data.teachers import OracleTeacher
from bilevel_rl.data.trajectories import TrajectoryBatch
from bilevel_rl.followers.base import TransitionRecorder
from bilevel_rl.objectives.preferences import preference_accuracy
from bilevel_rl.train import build_trainer


def _config(**overrides):
    from bilevel_rl.config import compose

    cfg = compose([f"{k}={v}" for k, v in overrides.items()])
    OmegaConf.set_struct(cfg, False)
    return cfg


def _rollouts(env_id, policy, steps, seed):
    """Fresh rollouts in a new env: transitions the leader never saw."""
    import gymnasium as gym

    env = gym.make(env_id)
    env.action_space.seed(seed)
    rec = TransitionRecorder(steps, 1)
    obs, _ = env.reset(seed=seed)
    for _ in range(steps):
        action = policy(obs) if policy is not None else env.action_space.sample()
        nxt, r, term, trunc, _ = env.step(action)
        rec.add(obs[None], np.asarray(action)[None], np.array([r]), np.array([term or trunc]), np.array([trunc]))
        obs = env.reset()[0] if (term or trunc) else nxt
    return rec.batch(steps)


def _fields(batch):
    return (
        batch.obs,
        batch.actions,
        batch.true_rewards,
        batch.dones,
        batch.terminated,
        batch.episode_starts,
        batch.timesteps,
    )


def test_drlhf_learns_pendulum(tmp_path):
    cfg = _config(
        exp="quickstart",
        env="pendulum",
        **{
            "trainer.total_steps": 6000,
            "trainer.steps_per_iter": 1000,
            "trainer.initial_steps": 1000,
            "buffer.initial_pairs": 200,
            "buffer.warmup_epochs": 100,
            "buffer.pairs_per_iter": 50,
            "buffer.epochs_per_iter": 10,
            "follower.algo_kwargs.policy_kwargs.net_arch": "[64,64]",
            "trainer.eval_episodes": 5,
            "progress": False,
        },
    )
    trainer = build_trainer(cfg, tmp_path)
    trainer.run()
    df = pd.read_csv(tmp_path / "metrics.csv")
    first, last = df["eval/true_return"].iloc[0], df["eval/true_return"].iloc[-1]
    assert last > first + 500, (first, last)  # Pendulum: about -1300 at random, > -300 once it swings up
    assert df["reward_model/true_reward_corr"].iloc[-1] > 0.9
    # predicted vs true segment returns on each iteration's new pairs, before the leader trained on them
    assert df["reward_model/segment_return_corr"].iloc[-1] > 0.9
    # Held-out pairs: fresh rollouts of the random policy and of the final policy, pooled. (Pairs of two
    # final-policy segments alone are near-ties once the pendulum balances: median |dR| = 0.18, a coin flip for
    # any model; measured 2026-11-21.)
    rng = np.random.default_rng(123)
    final = _rollouts("Pendulum-v1", lambda o: trainer.follower.model.predict(o, deterministic=False)[0], 2000, 777)
    random = _rollouts("Pendulum-v1", None, 2000, 778)
    batch = TrajectoryBatch(
        *(np.concatenate([x, y], axis=1) for x, y in zip(_fields(random), _fields(final), strict=True))
    )
    a, b = make_pairs(batch, 25, 1000, rng)
    labels = OracleTeacher().label(np.stack([a.true_returns(), b.true_returns()], 1), rng)
    acc = preference_accuracy(trainer.reward_model, stack_pairs(a, b, labels, -1))
    assert acc >= 0.9, acc
    trainer.logger.close()
    trainer.follower.close()
