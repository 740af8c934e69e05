"""Metric logging: CSV history, resume truncation, and failures that must not kill a run."""

import pandas as pd

from bilevel_rl.logging import MetricLogger


class _Broken:
    def log(self, *args, **kwargs):
        raise RuntimeError("network down")

    def add_scalar(self, *args, **kwargs):
        raise OSError("disk full")

    def flush(self):
        pass

    def close(self):
        pass

    def finish(self):
        raise RuntimeError("network down")


def test_a_failing_backend_never_raises_and_csv_keeps_going(tmp_path):
    logger = MetricLogger(tmp_path)
    logger.wandb = _Broken()
    logger.tb = _Broken()
    logger.log({"eval/true_return": 1.0}, step=10, iteration=0)
    logger.log({"eval/true_return": 2.0, "upper/loss": 0.5}, step=20, iteration=1)
    logger.close()
    assert logger.wandb is None  # disabled after its first failure
    df = pd.read_csv(tmp_path / "metrics.csv")
    assert df["env_steps"].tolist() == [10, 20] and df["eval/true_return"].tolist() == [1.0, 2.0]
    assert pd.isna(df["upper/loss"].iloc[0]) and df["upper/loss"].iloc[1] == 0.5


def test_resume_drops_rows_after_the_checkpoint(tmp_path):
    logger = MetricLogger(tmp_path)
    for i, step in enumerate((100, 200, 300)):
        logger.log({"x": float(i)}, step=step, iteration=i)
    logger.close()
    resumed = MetricLogger(tmp_path, resume_step=200)
    resumed.log({"x": 9.0}, step=300, iteration=2)
    resumed.close()
    df = pd.read_csv(tmp_path / "metrics.csv")
    assert df["env_steps"].tolist() == [100, 200, 300] and df["x"].tolist() == [0.0, 1.0, 9.0]


def test_online_mode_without_key_falls_back_to_offline(monkeypatch, tmp_path):
    from bilevel_rl.logging import _wandb_mode

    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert _wandb_mode("online") == "offline"
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert _wandb_mode("online") == "online"
