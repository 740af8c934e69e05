"""The MuJoCo tasks run end to end; videos reach TensorBoard."""

import pandas as pd
import pytest
from omegaconf import OmegaConf

from bilevel_rl.train import build_trainer


def _config(overrides):
    from bilevel_rl.config import compose

    cfg = compose(overrides)
    OmegaConf.set_struct(cfg, False)
    return cfg


TINY = [
    "exp=quickstart",
    "trainer.total_steps=400",
    "trainer.steps_per_iter=200",
    "trainer.initial_steps=200",
    "buffer.initial_pairs=10",
    "buffer.pairs_per_iter=5",
    "buffer.warmup_epochs=1",
    "buffer.epochs_per_iter=1",
    "trainer.eval_episodes=1",
    "follower.algo_kwargs.policy_kwargs.net_arch=[32,32]",
    "progress=false",
]


def _run(tmp_path, overrides):
    trainer = build_trainer(_config(TINY + overrides), tmp_path)
    try:
        trainer.run()
    finally:
        trainer.logger.close()
        trainer.follower.close()
    return pd.read_csv(tmp_path / "metrics.csv")


@pytest.mark.parametrize("env_id", ["Hopper-v5", "HalfCheetah-v5", "Walker2d-v5"])
def test_mujoco_task_runs_end_to_end(env_id, tmp_path):
    df = _run(tmp_path, [f"env.id={env_id}"])
    assert df["env_steps"].tolist() == [200, 400]
    assert df["eval/true_return"].notna().all() and df["reward_model/true_reward_corr"].notna().all()


def test_two_parallel_envs(tmp_path):
    df = _run(tmp_path, ["env.id=Hopper-v5", "env.n_envs=2"])
    assert df["env_steps"].tolist() == [200, 400]


def test_policy_video_is_logged_to_tensorboard(tmp_path, monkeypatch):
    monkeypatch.setenv("MUJOCO_GL", "egl")
    _run(tmp_path, ["env.id=Hopper-v5", "trainer.video_every=1", "trainer.video_length=20"])
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tmp_path / "tb"), size_guidance={"images": 0})
    acc.Reload()
    assert "eval/video" in acc.Tags()["images"]  # TensorBoard stores videos as animated image summaries
