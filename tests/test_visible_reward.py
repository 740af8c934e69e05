"""Delayed and sparse visible rewards (LIRPG's protocol): what the follower trains on, with the dense reward kept."""

import gymnasium as gym
import numpy as np
import pytest

from bilevel_rl.envs.make import make_train_env
from bilevel_rl.envs.visible_reward import DelayedReward, VisibleRewardConfig


class Counter(gym.Env):
    """Reward t + 1 at step t; terminates after ``length`` steps."""

    observation_space = gym.spaces.Box(-1, 1, (1,))
    action_space = gym.spaces.Box(-1, 1, (1,))

    def __init__(self, length=7):
        self.length, self.t = length, 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return np.zeros(1, np.float32), {}

    def step(self, action):
        self.t += 1
        return np.zeros(1, np.float32), float(self.t), self.t >= self.length, False, {}


def _episode(env):
    env.reset()
    rewards, done = [], False
    while not done:
        _, r, term, trunc, _ = env.step(np.zeros(1))
        rewards.append(r)
        done = term or trunc
    return rewards


def test_delayed_reward_pays_every_k_steps_and_at_the_end_and_keeps_the_sum():
    rewards = _episode(DelayedReward(Counter(7), delay=3))
    assert rewards == [0, 0, 1 + 2 + 3, 0, 0, 4 + 5 + 6, 7]
    assert _episode(DelayedReward(Counter(7), delay=3)) == rewards  # reset clears what was pending
    assert _episode(DelayedReward(Counter(4), delay=None)) == [0, 0, 0, 10]  # sparse: the return at the end
    truncated = DelayedReward(gym.wrappers.TimeLimit(Counter(100), max_episode_steps=5), delay=3)
    assert _episode(truncated) == [0, 0, 6, 0, 4 + 5]  # a time limit ends the episode too
    with pytest.raises(ValueError, match="env.visible_reward.delay"):
        DelayedReward(Counter(), delay=0)


def test_training_env_returns_the_delayed_reward_and_keeps_the_dense_one_as_true_reward():
    venv = make_train_env("Pendulum-v1", 1, 0, None, VisibleRewardConfig(kind="delayed", delay=4))
    venv.reset()
    seen, true = [], []
    for _ in range(12):
        _, r, _, infos = venv.step(np.zeros((1, 1), np.float32))
        seen.append(float(r[0]))
        true.append(infos[0]["true_reward"])
    venv.close()
    assert [s != 0 for s in seen] == [False, False, False, True] * 3
    np.testing.assert_allclose(seen[3::4], np.add.reduceat(true, [0, 4, 8]), rtol=1e-6)


def test_a_true_reward_follower_trains_on_the_delayed_reward_and_is_evaluated_on_the_dense_one(tmp_path):
    from bilevel_rl.config import compose
    from bilevel_rl.train import build_trainer

    cfg = compose(
        [
            "exp=quickstart",
            "env=pendulum",
            "upper=true_reward",
            "env.visible_reward.kind=delayed",
            "env.visible_reward.delay=5",
            "trainer.total_steps=400",
            "trainer.steps_per_iter=200",
            "trainer.initial_steps=200",
            "trainer.eval_episodes=1",
            "progress=false",
        ]
    )
    trainer = build_trainer(cfg, tmp_path)
    try:
        trainer.run()
        buffer = trainer.follower.model.replay_buffer
        stored = buffer.rewards[:400, 0]
        assert (stored[np.arange(400) % 5 != 4] == 0).all() and (stored[4::5] < 0).all()  # paid every 5 steps
        batch = trainer.follower.collect(200)
        assert (batch.true_rewards < 0).all()  # the recorder (teacher, diagnostics) keeps the dense reward
    finally:
        trainer.logger.close()
        trainer.follower.close()
    assert "eval/true_return" in (tmp_path / "metrics.csv").read_text()


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["env.visible_reward.delay=0"], "env.visible_reward.delay: must be >= 1"),
        (["env.visible_reward.kind=late"], "env.visible_reward.kind"),
        (["exp=atari_cpu", "env.visible_reward.kind=delayed"], "delayed and sparse rewards are for vector envs"),
    ],
)
def test_bad_visible_reward_settings_are_refused(overrides, message):
    from bilevel_rl.config import ConfigError, compose, validate

    with pytest.raises(ConfigError, match=message):
        validate(compose(["exp=quickstart", *overrides]))
