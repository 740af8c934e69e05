"""Config schema fuzz table and the run-directory contract (issue [1/4] items 5, 6, 11).

Every malformed invocation is refused before anything is written: exit status 2, one stderr line naming the key,
and no run directory. Refusals are checked in-process (``bilevel_rl.cli.main``: the same code path as the console
script, minus the interpreter start-up); the run-directory tests use the real console script.
"""

import hashlib
import shutil
import sys

import pytest

from tests.helpers import TINY, cli

# (overrides on top of TINY, text the one error line must contain)
FUZZ = [
    (["+foo=1"], "foo: unknown key"),
    (["+upper.zz=1"], "upper.zz: not a hyperparameter of upper=drlhf"),
    (["+trainer.zz=1"], "trainer.zz: unknown key"),
    (["trainer.total_step=100"], "did you mean trainer.total_steps"),
    (["upper.lrr=1"], "did you mean upper.lr"),
    (["seed=abc"], "seed"),
    (["seed=1.5"], "seed"),
    (["trainer.total_steps=700.5"], "trainer.total_steps"),
    (["trainer.total_steps=0"], "trainer.total_steps"),
    (["trainer.steps_per_iter=-5"], "trainer.steps_per_iter"),
    (["trainer.initial_steps=5000"], "trainer.initial_steps"),
    (["buffer.capacity=0"], "buffer.capacity"),
    (["buffer.stop_accuracy=1.5"], "buffer.stop_accuracy"),
    (["buffer.segment_length=250"], "buffer.segment_length: 250 steps exceed the episode limit of Pendulum-v1"),
    (["env=hopper", "buffer.segment_length=5000"], "buffer.segment_length: 5000 steps exceed the episode limit"),
    (["follower.algo_kwargs.batch_size=0"], "follower.algo_kwargs.batch_size"),
    (["follower.algo_kwargs.buffer_size=0"], "follower.algo_kwargs.buffer_size"),
    (["follower.algo_kwargs.gamma=-1"], "follower.algo_kwargs.gamma"),
    (["follower.algo_kwargs.gamma=1.5"], "follower.algo_kwargs.gamma"),
    (["+follower.algo_kwargs.batchsize=64"], "follower.algo_kwargs.batchsize"),
    (["follower.learning_rate=0"], "follower.learning_rate"),
    (["follower.lr_schedule=cosine"], "follower.lr_schedule"),
    (["upper=sobirl", "upper.estimator=bogus"], "upper.estimator"),
    (["upper.lr=-1e-3"], "upper.lr"),
    (["upper=sobirl", "upper.estimator=rollout"], "generative model"),
    (["upper=ppa", "follower=ppo", "env.id=CartPole-v1"], "ent_coef"),
    (["env.id=NoSuchEnv-v0"], "env.id"),
    (["env.id=CartPole-v1"], "follower=sac"),
    (["env.n_envs=0"], "env.n_envs"),
    (["follower=dqn"], "follower=dqn"),
    (["upper=nope"], "upper=nope"),
    (["exp=nope"], "exp=nope"),
    (["logger.mode=sometimes"], "logger.mode"),
    (["reward_model=cnn_sobirl"], "reward_model.hidden_sizes: unknown key"),  # TINY sets the MLP's widths
    (["teacher.temperature=1"], "teacher.temperature: unknown key (keys here: name, tie_tolerance)"),
    (["teacher=bradley_terry", "teacher.temperature=0"], "teacher.temperature"),
    (["checkpoint.keep=0"], "checkpoint.keep"),
    (["device=tpu"], "device"),
    (["torch_threads=0"], "torch_threads"),
]


def _main(args, monkeypatch, capsys):
    from bilevel_rl import cli as cli_module

    monkeypatch.setattr(sys, "argv", ["bilevel-rl", *args])
    with pytest.raises(SystemExit) as exit_info:
        cli_module.main()
    return exit_info.value.code, capsys.readouterr().err


@pytest.mark.parametrize(("overrides", "expected"), FUZZ, ids=[" ".join(o) for o, _ in FUZZ])
def test_bad_invocations_are_refused_in_one_line_and_write_nothing(overrides, expected, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    run_dir = tmp_path / "run"
    code, err = _main([*TINY, *overrides, f"hydra.run.dir={run_dir}"], monkeypatch, capsys)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), err
    assert expected in lines[0], lines[0]
    assert not run_dir.exists() and list(tmp_path.iterdir()) == []


def test_a_vector_reward_model_on_image_observations_is_refused():
    from bilevel_rl.config import ConfigError, compose, validate

    with pytest.raises(ConfigError, match="reward_model=mlp: env.id=ALE/Breakout-v5 has image observations"):
        validate(compose(["exp=quickstart", "env=breakout", "follower=dsac"]))


def test_a_refused_multirun_job_stops_the_whole_sweep_before_anything_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code, err = _main(["-m", *TINY, "seed=0,1", "upper.lr=1e-3,-1"], monkeypatch, capsys)
    assert code == 2 and err.strip().splitlines() == ["error: upper.lr: must be > 0, got -1.0"]
    assert list(tmp_path.iterdir()) == []


def _sha256(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("contract") / "run"
    proc = cli(*TINY, "trainer.total_steps=600", f"hydra.run.dir={run_dir}")
    return run_dir, proc


def test_a_run_ends_by_saying_where_its_outputs_are(finished_run):
    run_dir, proc = finished_run
    out = proc.stdout
    assert f"run directory: {run_dir}" in out
    assert "files: run_config.yaml, metrics.csv, checkpoints, tb, preferences.npz" in out
    assert f"tensorboard --logdir {run_dir / 'tb'}" in out and "true return (eval)" in out
    assert "{" not in out  # no raw metrics dict
    assert "OpenGL" not in proc.stderr and "INFO" not in proc.stderr


def test_resume_never_rewrites_the_original_runs_files(finished_run, tmp_path):
    src, _ = finished_run
    run_dir = tmp_path / "run"
    shutil.copytree(src, run_dir)
    originals = {p: _sha256(run_dir / p) for p in ("run_config.yaml", ".hydra/config.yaml", ".hydra/overrides.yaml")}
    cli(f"checkpoint.resume_from={run_dir}", "trainer.total_steps=800")
    assert {p: _sha256(run_dir / p) for p in originals} == originals
    resumes = list(run_dir.glob("resume_*/.hydra/config.yaml"))
    assert len(resumes) == 1  # the resume's own record goes beside the original files
    proc = cli(f"checkpoint.resume_from={run_dir}", "env=halfcheetah", check=False)  # refused
    assert proc.returncode == 2 and {p: _sha256(run_dir / p) for p in originals} == originals
    assert len(list(run_dir.glob("resume_*"))) == 1


def test_a_corrupt_latest_checkpoint_falls_back_to_the_older_one(finished_run, tmp_path):
    src, _ = finished_run
    run_dir = tmp_path / "run"
    shutil.copytree(src, run_dir)
    newest = run_dir / "checkpoints" / (run_dir / "checkpoints" / "latest").read_text()
    with (newest / "state.pkl").open("r+b") as f:  # truncate it: a kill or a full disk mid-copy
        f.truncate(100)
    proc = cli(f"checkpoint.resume_from={run_dir}", "trainer.total_steps=800")
    log = proc.stdout + proc.stderr  # Hydra's job logging prints to stdout
    warnings = [ln for ln in log.splitlines() if "is corrupt" in ln]
    assert len(warnings) == 1 and "state.pkl has 100 bytes" in warnings[0] and "trying an older one" in warnings[0]
    assert "resumed at iteration 1, 400 env steps" in log


@pytest.mark.parametrize("damage", ["all_checkpoints", "run_config"])
def test_an_unusable_run_directory_is_refused_in_one_line(finished_run, tmp_path, damage):
    src, _ = finished_run
    run_dir = tmp_path / "run"
    shutil.copytree(src, run_dir)
    if damage == "all_checkpoints":
        for ckpt in (run_dir / "checkpoints").glob("step_*"):
            (ckpt / "tensors.pt").write_bytes(b"")
        expected = "no intact checkpoint"
    else:
        (run_dir / "run_config.yaml").write_text("env: [unclosed\n")
        expected = "run_config.yaml is not valid YAML"
    proc = cli(f"checkpoint.resume_from={run_dir}", "trainer.total_steps=800", check=False)
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("error: ")]
    assert proc.returncode == 2 and len(lines) == 1 and expected in lines[0], proc.stderr[-2000:]
