"""CLI smoke tests in subprocesses with tiny budgets, config validation, determinism and resume."""

import math
import os
import signal
import subprocess
import time

import pandas as pd
import pytest

from tests.helpers import BIN, TINY, cli, metrics


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("runs") / "tiny"
    cli(*TINY, f"hydra.run.dir={run_dir}")
    return run_dir


def test_help_and_cfg_job():
    out = cli("--help").stdout
    assert "exp: atari_a2c_cpu, atari_cpu, atari_rlhf_demo, drlhf_halfcheetah, drlhf_hopper, " in out
    assert "follower: a2c, a2c_atari, dsac, ppo, sac, soft_dqn" in out
    assert "reward_model: cnn_pbrl, cnn_sobirl, mlp" in out
    out = cli("--cfg", "job", "exp=quickstart").stdout
    assert "id: Hopper-v5" in out and "exp_name: quickstart" in out
    assert "id: HalfCheetah-v5" in cli("--cfg", "job", "exp=quickstart", "env.id=HalfCheetah-v5").stdout
    assert "exp_name: null" in cli("--cfg", "job").stdout  # no preset: the config prints, training would refuse


def test_single_run_writes_a_complete_run_dir(tiny_run):
    df = pd.read_csv(tiny_run / "metrics.csv")
    for col in (
        "iteration",
        "env_steps",
        "eval/true_return",
        "reward_model/pref_accuracy",
        "reward_model/true_reward_corr",
        "reward_model/segment_return_corr",
        "reward_model/shift",
        "upper/loss",
        "time/sps",
        "follower/temperature",
    ):
        assert col in df.columns, col
    assert df["env_steps"].tolist() == [200, 400, 600, 800, 1000]
    assert df["eval/true_return"].notna().all()
    assert all(math.isfinite(x) for x in df["upper/loss"])
    assert list((tiny_run / "tb").glob("events.out.tfevents.*"))
    assert (tiny_run / "preferences.npz").exists() and (tiny_run / "run_config.yaml").exists()
    assert (tiny_run / ".hydra" / "config.yaml").exists()
    ckpts = sorted(p.name for p in (tiny_run / "checkpoints").glob("step_*"))
    assert ckpts == ["step_0000000800", "step_0000001000"]  # rotated: keep 2
    assert (tiny_run / "checkpoints" / "latest").read_text() == "step_0000001000"
    # the replay buffer (1M capacity) is saved by its 1000 filled rows, not its capacity (was 45 MB)
    assert (tiny_run / "checkpoints" / "step_0000001000" / "state.pkl").stat().st_size < 2_000_000


def test_same_seed_same_metrics_other_seed_differs(tiny_run, tmp_path):
    cli(*TINY, f"hydra.run.dir={tmp_path / 'again'}")
    pd.testing.assert_frame_equal(metrics(tiny_run), metrics(tmp_path / "again"))
    cli(*TINY, "seed=1", f"hydra.run.dir={tmp_path / 'seed1'}")
    assert not metrics(tiny_run).equals(metrics(tmp_path / "seed1"))


def test_kill_and_resume_equals_uninterrupted_run(tiny_run, tmp_path):
    run_dir = tmp_path / "killed"
    env = {**os.environ, "WANDB_MODE": "disabled"}
    proc = subprocess.Popen(
        [str(BIN), *TINY, f"hydra.run.dir={run_dir}"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    latest = run_dir / "checkpoints" / "latest"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if latest.exists() and latest.read_text() >= "step_0000000600":
            break
        time.sleep(0.05)
    assert proc.poll() is None, "run finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = pd.read_csv(run_dir / "metrics.csv")["env_steps"].max()
    assert done < 1000
    cli(f"checkpoint.resume_from={run_dir}")  # no other override: the run's own config is used
    pd.testing.assert_frame_equal(metrics(tiny_run), metrics(run_dir))


def test_resume_refuses_a_changed_follower_or_env(tiny_run):
    for override, key in (
        ("follower=ppo", "follower"),
        ("env.id=MountainCarContinuous-v0", "env.id"),
        ("env=halfcheetah", "env.id"),
        ("upper.name=sobirl", "upper"),
    ):
        proc = cli(f"checkpoint.resume_from={tiny_run}", override, check=False)
        assert proc.returncode == 2, proc.stderr[-2000:]
        line = proc.stderr.strip().splitlines()[-1]
        assert "refused" in line and key in line


def test_resume_of_a_missing_dir_is_refused(tmp_path):
    proc = cli(f"checkpoint.resume_from={tmp_path / 'nope'}", check=False)
    assert proc.returncode == 2 and "checkpoint.resume_from" in proc.stderr


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (["env.id=NoSuchEnv-v0"], "env.id"),
        (["env.id=CartPole-v1"], "follower=sac"),
        (["follower.learning_rate=0"], "follower.learning_rate"),
        (["upper.lr=-1e-3"], "upper.lr"),
        (["trainer.total_steps=0"], "trainer.total_steps"),
        (["trainer.steps_per_iter=-5"], "trainer.steps_per_iter"),
        (["follower=dqn"], "follower=dqn"),
        (["upper=nope"], "upper=nope"),
        (["exp=nope"], "exp=nope"),
        (["logger.mode=sometimes"], "logger.mode"),
    ],
)
def test_bad_config_is_refused_with_one_line(overrides, key, tmp_path):
    start = time.time()
    proc = cli(*TINY, *overrides, f"hydra.run.dir={tmp_path / 'r'}", check=False)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and key in lines[0], proc.stderr
    assert not (tmp_path / "r" / "metrics.csv").exists()
    assert time.time() - start < 60


def test_missing_exp_is_refused(tmp_path):
    proc = cli(f"hydra.run.dir={tmp_path / 'r'}", check=False)
    assert proc.returncode == 2 and proc.stderr.strip().startswith("error: exp:")


def test_discrete_env_runs_with_ppo(tmp_path):
    cli(
        *TINY,
        "env.id=CartPole-v1",
        "follower=ppo",
        "follower.algo_kwargs.n_steps=200",
        "follower.algo_kwargs.batch_size=50",
        f"hydra.run.dir={tmp_path / 'cp'}",
    )
    assert metrics(tmp_path / "cp")["env_steps"].iloc[-1] == 1000


def test_multirun_two_seeds(tmp_path):
    cli("-m", *TINY, "seed=0,1", f"hydra.sweep.dir={tmp_path}")
    runs = sorted(p.parent for p in tmp_path.glob("*/metrics.csv"))
    assert len(runs) == 2
    assert not metrics(runs[0]).equals(metrics(runs[1]))


def test_multirun_local_joblib_launcher(tmp_path):
    cli("-m", *TINY, "seed=0,1", "hydra/launcher=local", f"hydra.sweep.dir={tmp_path}")
    assert len(list(tmp_path.glob("*/metrics.csv"))) == 2


def test_multirun_submitit_local_executor(tmp_path):
    cli(
        "-m",
        *TINY,
        "seed=0,1",
        "hydra/launcher=submitit_local",
        "hydra.launcher.timeout_min=10",
        f"hydra.sweep.dir={tmp_path}",
        timeout=600,
    )
    assert len(list(tmp_path.glob("*/metrics.csv"))) == 2


def test_wandb_offline_logging_does_not_break_a_run(tmp_path):
    env_backup = os.environ.get("WANDB_API_KEY")
    os.environ.pop("WANDB_API_KEY", None)
    try:
        proc = subprocess.run(
            [str(BIN), *TINY, "logger=wandb", f"hydra.run.dir={tmp_path / 'w'}"],
            capture_output=True,
            text=True,
            timeout=300,
            env={k: v for k, v in os.environ.items() if k != "WANDB_MODE"} | {"HOME": str(tmp_path)},
        )
    finally:
        if env_backup is not None:
            os.environ["WANDB_API_KEY"] = env_backup
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp_path / "w" / "metrics.csv").exists()
    assert list((tmp_path / "w" / "wandb").glob("offline-run-*"))
