"""Issue [4/4]: every rule runs on an Atari preset (discrete SAC, and A2C for DRLHF/PBRL), resume is exact,
and configs that cannot work on Atari are refused in one line."""

import math
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from helpers import assert_refused, cli, metrics

pytest.importorskip("ale_py")

# a complete Atari run in seconds: Seaquest (exp=atari_cpu), 3 iterations of 100 steps, few gradient steps
ATARI_TINY = [
    "exp=atari_cpu",
    "trainer.total_steps=300",
    "trainer.steps_per_iter=100",
    "trainer.initial_steps=100",
    "follower.algo_kwargs.learning_starts=50",
    "follower.algo_kwargs.train_freq=20",  # divides steps_per_iter: iterations end on the same steps
    "follower.algo_kwargs.target_update_interval=100",
    "follower.algo_kwargs.buffer_size=2000",
    "buffer.initial_pairs=6",
    "buffer.pairs_per_iter=3",
    "buffer.warmup_epochs=2",
    "buffer.epochs_per_iter=1",
    "upper.batch_size=4",
    "trainer.eval_episodes=1",
    "env.atari.eval_max_steps=100",
    "progress=false",
]

A2C_TINY = [
    "exp=pbrl_a2c_seaquest",
    "env.n_envs=2",
    "trainer.total_steps=300",
    "trainer.steps_per_iter=100",
    "trainer.initial_steps=100",
    "buffer.initial_pairs=6",
    "buffer.pairs_per_iter=3",
    "buffer.warmup_epochs=2",
    "upper.batch_size=4",
    "trainer.eval_episodes=1",
    "env.atari.eval_max_steps=100",
    "progress=false",
]

# the value penalty needs an episode (here: a life, ~130 steps at random in Seaquest) to start inside each batch
PENALTY = ["trainer.steps_per_iter=300", "trainer.total_steps=700", "upper.best_response_steps=300"]
RULE_EXTRAS = {"pbrl": PENALTY, "hessian_free": PENALTY, "ppa": ["upper.cg_iters=2"]}


def _finite_rows(run_dir, columns):
    df = pd.read_csv(run_dir / "metrics.csv")
    assert df["iteration"].max() >= 2, df
    for col in columns:
        assert col in df.columns, col
        assert df[col].dropna().map(math.isfinite).all() and df[col].notna().any(), (col, df[col].tolist())
    return df


def _run_rule(rule, tmp_path, base, extra=()):
    run_dir = tmp_path / rule
    cli(*base, f"upper={rule}", *RULE_EXTRAS.get(rule, []), *extra, f"hydra.run.dir={run_dir}")
    return run_dir


def _check_atari_run(run_dir, rule):
    cols = ["eval/true_return", "time/sps", "follower/temperature"]
    if rule != "true_reward":  # (the Pearson correlation is nan while Seaquest has paid no reward yet)
        cols += ["reward_model/scale", "reward_model/pred_reward_mean"]
    df = _finite_rows(run_dir, cols)
    assert df["env_steps"].iloc[-1] == (700 if rule in ("pbrl", "hessian_free") else 300)
    return df


@pytest.mark.parametrize("rule", ["drlhf", "sobirl"])
def test_rules_run_end_to_end_on_atari_with_discrete_sac(rule, tmp_path):
    _check_atari_run(_run_rule(rule, tmp_path, ATARI_TINY), rule)


def test_state_only_reward_cnn_runs_end_to_end(tmp_path):
    """``exp=atari_rlhf_demo`` (state-only reward, Christiano et al. 2017) runs, and its model is state-only."""

    demo = ["exp=atari_rlhf_demo", *ATARI_TINY[1:], "torch_threads=1"]
    run_dir = _run_rule("drlhf", tmp_path, demo)
    cfg = (run_dir / "run_config.yaml").read_text()
    assert "per_action: false" in cfg and "target_std: 0.1" in cfg and "ent_coef: auto_0.1" in cfg
    _check_atari_run(run_dir, "drlhf")
    from bilevel_rl.checkpoint import newest_intact_checkpoint

    head = newest_intact_checkpoint(run_dir)[1]["reward_model"]["head.3.weight"]
    assert head.shape == (1, 64)
    # the final-evaluation script reads the run without writing to it
    before = sorted(p.name for p in run_dir.rglob("*"))
    script = Path(__file__).parents[1] / "scripts" / "evaluate_atari_run.py"
    out = subprocess.run(
        [sys.executable, str(script), str(run_dir), "--episodes", "2", "--max-steps", "150", "--segment", "25"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "2 games from seed 20000" in out and "follower at 300 env steps" in out, out
    assert re.search(r"Pearson per 25-step segment: (-?[\d.]+|nan) over 12 segments", out), out
    assert sorted(p.name for p in run_dir.rglob("*")) == before


@pytest.mark.slow
@pytest.mark.parametrize("rule", ["true_reward", "stoc_sobirl", "pbrl", "hpgd", "ppa", "hessian_free"])
def test_every_other_rule_runs_end_to_end_on_atari_with_discrete_sac(rule, tmp_path):
    _check_atari_run(_run_rule(rule, tmp_path, ATARI_TINY), rule)


@pytest.mark.parametrize("rule", ["drlhf", "pbrl_e2"])
def test_drlhf_and_pbrl_run_on_atari_with_the_pbrl_a2c_setup(rule, tmp_path):
    run_dir = _run_rule(rule, tmp_path, A2C_TINY)
    df = _finite_rows(run_dir, ["eval/true_return", "reward_model/scale"])
    if rule == "pbrl_e2":  # the E.2 upper-loss coefficient beta_0 = 1e-3 enters the A2C loss
        assert df["upper/beta"].dropna().iloc[0] == pytest.approx(1e-3)
        assert df["follower/extra_policy_loss"].notna().any()


def test_atari_resume_continues_exactly(tmp_path):
    """A run stopped after 200 steps and resumed to 300 writes the metrics of an uninterrupted 300-step run."""
    full, part = tmp_path / "full", tmp_path / "part"
    args = [*ATARI_TINY, "upper=drlhf", "trainer.eval_every=1"]  # (a run always evaluates at its last iteration)
    cli(*args, f"hydra.run.dir={full}")
    cli(*args, "trainer.total_steps=200", f"hydra.run.dir={part}")
    cli(f"checkpoint.resume_from={part}", "trainer.total_steps=300")
    pd.testing.assert_frame_equal(metrics(full), metrics(part))


NO_ATARI_KEYS = [a for a in ATARI_TINY if not a.startswith("env.atari.")]


@pytest.mark.parametrize(
    ("args", "key"),
    [
        ([*ATARI_TINY, "follower=sac"], "follower=sac"),
        ([*ATARI_TINY, "reward_model=mlp"], "reward_model=mlp"),
        ([*ATARI_TINY, "+env.kwargs.frameskip=4"], "env.kwargs.frameskip"),
        ([*ATARI_TINY, "env.atari.teacher_reward=clip"], "env.atari.teacher_reward"),
        ([*ATARI_TINY, "reward_model.arch=nature"], "reward_model.arch"),
        ([*ATARI_TINY, "reward_model.target_std=0"], "reward_model.target_std"),
        ([*ATARI_TINY, "reward_model.per_action=sometimes"], "reward_model.per_action"),
        ([*NO_ATARI_KEYS, "env=pendulum"], "follower=dsac"),
        ([*NO_ATARI_KEYS, "env=pendulum", "follower=sac"], "reward_model=cnn"),
    ],
)
def test_configs_that_cannot_work_on_atari_are_refused(args, key, tmp_path):
    assert_refused(args, key, tmp_path / "run")


@pytest.mark.parametrize(
    ("game", "steps", "env_id", "lr", "per_iter"),
    [
        ("beamrider", 4_000_000, "ALE/BeamRider-v5", 1e-4, 6),
        ("seaquest", 1_000_000, "ALE/Seaquest-v5", 3e-4, 24),
        ("spaceinvaders", 1_000_000, "ALE/SpaceInvaders-v5", 1e-4, 24),
    ],
)
def test_table2_atari_presets_compose_for_slurm_gpu_and_validate(game, steps, env_id, lr, per_iter):
    """Every SoBiRL Table 2 Atari cell (game × row) composes with the SLURM GPU launcher at the paper's budget."""
    from omegaconf import OmegaConf

    from bilevel_rl.config import compose, validate

    OmegaConf.register_new_resolver("slug", lambda s: s, replace=True)
    for rule in ("sobirl", "drlhf", "pbrl", "hpgd", "true_reward"):
        overrides = [f"exp=table2_{game}", f"upper={rule}", "hydra/launcher=slurm_gpu", "device=cuda"]
        cfg = compose(overrides, return_hydra_config=True)
        assert cfg.hydra.launcher.gpus_per_node == 1
        OmegaConf.set_struct(cfg, False)
        del cfg["hydra"]
        validate(cfg)
        assert cfg.env.id == env_id and cfg.trainer.total_steps == steps and cfg.exp_name == f"table2_{game}_{rule}"
        assert (cfg.follower.name, cfg.reward_model.name, cfg.reward_model.arch) == ("dsac", "cnn", "sobirl")
        assert cfg.follower.learning_rate == lr and cfg.follower.lr_horizon == 8_000_000
        assert cfg.follower.algo_kwargs.batch_size == 64 and cfg.follower.algo_kwargs.ent_coef == "auto_1.0"
        assert (cfg.trainer.steps_per_iter, cfg.buffer.initial_pairs, cfg.buffer.pairs_per_iter) == (
            10_000,
            600,
            per_iter,
        )
        iterations = (steps - cfg.trainer.initial_steps) // cfg.trainer.steps_per_iter
        assert 2900 <= 600 + per_iter * iterations <= 3000  # "a total of 3000 trajectory pairs"
