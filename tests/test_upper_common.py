"""Shared rule plumbing: registry, the true-reward baseline, PreferenceRule helpers, the aggregation script."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from helpers import TINY, cli, leader_step, metrics

from bilevel_rl.tabular.lab.rule_lab import make_rule_lab
from bilevel_rl.upper.base import RULES, make_rule, rule_classes
from bilevel_rl.upper.drlhf import DRLHF, DRLHFConfig
from bilevel_rl.upper.estimators import discounted_return_surrogate, expected_policy_reward

ROOT = Path(__file__).resolve().parents[1]


def test_every_registered_rule_has_a_config_preset_and_builds():
    from bilevel_rl.config import build_sections, compose

    for name in RULES:
        preset = ROOT / "configs" / "upper" / f"{name}.yaml"
        assert preset.exists(), f"configs/upper/{name}.yaml missing"
        defaults = yaml.safe_load(preset.read_text())["defaults"]
        assert defaults[0] == f"/schema/upper/{name}@_here_"  # the option starts from its rule's dataclass
        upper = build_sections(compose(["exp=quickstart", f"upper={name}"])).upper
        assert type(upper).__name__ == rule_classes(name)[1].__name__
        rule = make_rule(name, vars(upper))
        assert rule.name == name
    with pytest.raises(ValueError, match="upper.name: unknown upper rule 'nope'"):
        rule_classes("nope")


def test_true_reward_baseline_trains_on_the_env_reward(tmp_path):
    """No labels are queried, the reward model never moves, and the replay buffer serves the env's reward."""
    run = tmp_path / "r"
    cli(*TINY, "upper=true_reward", f"hydra.run.dir={run}")
    df = metrics(run)
    assert "buffer/pairs" not in df.columns and "upper/loss" not in df.columns
    assert df["eval/true_return"].notna().all()
    assert df["env_steps"].iloc[-1] == 1000


def test_expected_policy_reward_is_exact_for_discrete_policies():
    lab = make_rule_lab(seed=3)
    lab.follower.learn(8)
    obs = torch.eye(lab.mdp.num_states)
    got = expected_policy_reward(lab.reward_model, lab.follower, obs, 1, torch.Generator())
    want = (lab.follower.pi * lab.reward_fn(lab.x)).sum(1)
    torch.testing.assert_close(got, want.to(got.dtype))
    got.sum().backward()
    assert lab.x.grad is not None and lab.x.grad.abs().sum() > 0  # differentiable in the reward parameters


def test_discounted_return_surrogate_estimates_the_value_gradient():
    """∇_x of the surrogate on on-policy episodes from ρ ≈ ∇_x V^π_{r_x}(ρ) with π fixed (PBRL C.1)."""
    from bilevel_rl.tabular.core.soft_mdp import SoftMDP, policy_evaluation

    lab = make_rule_lab(seed=1, gamma=0.5, episode_length=12, n_envs=64)
    batch = lab.on_policy_batch(240)
    x = lab.x
    loss = discounted_return_surrogate(lab.reward_model, batch, gamma=0.5)
    (est,) = torch.autograd.grad(loss, x)
    no_entropy = SoftMDP(lab.mdp.P, lab.mdp.rho, lab.mdp.gamma, 1e-300)
    v = policy_evaluation(lab.follower.pi, lab.reward_fn(x), no_entropy)[1]
    (exact,) = torch.autograd.grad(lab.mdp.rho @ v, x)
    cos = torch.nn.functional.cosine_similarity(est, exact, dim=0)
    assert cos > 0.99, (est, exact)
    assert (est - exact).norm() / exact.norm() < 0.1


def test_drlhf_lacks_the_implicit_term_on_the_tabular_lab():
    """The lab's exact hypergradient is not DRLHF's direction (it is the reference the other rules must meet)."""
    lab = make_rule_lab(seed=0)
    batch = lab.on_policy_batch(50)
    exact = lab.exact_hypergradient()
    n = 20000
    rule = DRLHF(DRLHFConfig(optimizer="sgd", lr=1.0, weight_decay=0.0, batch_size=n))
    rule.attach(lab.follower, lab.reward_model)
    x0 = lab.x.detach().clone()
    rule.update(
        leader_step(
            lab.buffer(n, torch.Generator().manual_seed(1)), 1, np.random.default_rng(0), batch=batch, iteration=1
        )
    )
    step = x0 - lab.x.detach()
    assert torch.nn.functional.cosine_similarity(step, exact, dim=0) < 0.97  # measured 0.937


def _fake_run(root, rule, env, seed, returns, acc=0.8, corr=0.9, upper=None, row=None, teacher=None):
    d = root / (row or rule) / env / f"seed{seed}"
    d.mkdir(parents=True)
    cfg = {
        **({"teacher": {"name": teacher}} if teacher else {}),
        "exp_name": "fake",
        "upper": {"name": rule, **(upper or {})},
        "env": {"id": env},
        "seed": seed,
        "trainer": {"total_steps": 3000, "initial_steps": 1000, "steps_per_iter": 1000, "eval_episodes": 1},
        "buffer": {"initial_pairs": 10, "pairs_per_iter": 5, "warmup_epochs": 1, "epochs_per_iter": 1},
    }
    (d / "run_config.yaml").write_text(yaml.safe_dump(cfg))
    pd.DataFrame(
        {
            "iteration": [0, 1, 2],
            "env_steps": [1000, 2000, 3000],
            "eval/true_return": returns,
            "reward_model/pref_accuracy": [0.5, acc, acc],
            "reward_model/true_reward_corr": [0.1, corr, corr],
            "time/total_s": [1.0, 2.0, 3.0],
        }
    ).to_csv(d / "metrics.csv", index=False)


def test_aggregate_script_tables_and_normalised_iqm(tmp_path):
    for seed in range(3):
        for env in ("A-v0", "B-v0"):
            _fake_run(tmp_path, "true_reward", env, seed, [0.0, 50.0, 100.0 + seed])
            _fake_run(tmp_path, "drlhf", env, seed, [0.0, 20.0, 50.0 + seed], acc=0.9)
    out = tmp_path / "table.md"
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts" / "aggregate_rules.py"),
            str(tmp_path),
            "--out",
            str(out),
            "--reps",
            "200",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    text = out.read_text()
    assert "20 labelled pairs (10 initial + 5 per iteration" in text and "12 complete runs" in text
    out.write_text(out.read_text() + "## Analysis\nkept\n")  # regeneration keeps a hand-written analysis
    subprocess.run(
        [sys.executable, str(ROOT / "scripts/aggregate_rules.py"), str(tmp_path), "--out", str(out), "--reps", "50"],
        check=True,
        capture_output=True,
    )
    assert out.read_text().endswith("## Analysis\nkept\n") and out.read_text().count("# Upper rules") == 1
    assert "| drlhf | 3 | 51.0 ± 0.6 |" in text  # mean ± SE of 50, 51, 52
    # normalised: drlhf ≈ 51/101 ≈ 0.505 of SAC-on-true-reward, true_reward itself ≈ 1
    iqm = {
        ln.split("|")[1].strip(): float(ln.split("|")[3])
        for ln in text.splitlines()
        if ln.startswith("| ") and "[" in ln
    }
    assert iqm["true_reward"] == pytest.approx(1.0, abs=0.02)
    assert iqm["drlhf"] == pytest.approx(0.505, abs=0.02)
    assert proc.returncode == 0


def _aggregate_rules(args, capsys):
    """``scripts/aggregate_rules.py`` in process (no interpreter start-up): its stdout."""
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        from aggregate_rules import main
    finally:
        sys.path.pop(0)
    capsys.readouterr()
    assert main([str(a) for a in args]) == 0
    return capsys.readouterr().out


def test_aggregate_rules_gated_row_curves_and_archive(tmp_path, capsys):
    runs, archive = tmp_path / "runs", tmp_path / "archive"
    for seed in range(2):
        _fake_run(runs, "true_reward", "A-v0", seed, [0.0, 50.0, 100.0])
        _fake_run(runs, "sobirl", "A-v0", seed, [0.0, 30.0, 60.0 + seed])
        _fake_run(runs, "sobirl", "A-v0", seed, [0.0, 10.0, 20.0], upper={"hyper_term_after": 20}, row="gated")
    out = tmp_path / "t2.md"
    opts = ["--preset", "table2_x", "--title", "T2", "--reps", "50"]
    _aggregate_rules([runs, *opts, "--out", out, "--archive", archive], capsys)
    text = out.read_text()
    assert text.startswith("# T2\n") and "`configs/exp/table2_x.yaml`" in text and "curves: `t2.png`" in text
    assert "| sobirl | 2 | 60.5 ± 0.5 | 30.2 ± 0.2 |" in text  # final; mean over the 3 evaluations
    assert "| sobirl-gated | 2 | 20.0 ± 0.0 | 10.0 ± 0.0 |" in text
    assert out.with_suffix(".png").stat().st_size > 0
    again = tmp_path / "again.md"
    _aggregate_rules([archive, *opts, "--out", again], capsys)
    assert (archive / "gated" / "A-v0" / "seed1" / "metrics.csv.gz").exists()
    strip = [ln for ln in text.splitlines() if not ln.startswith(("Generated", "Normalisation"))]  # paths differ
    assert [ln for ln in again.read_text().splitlines() if not ln.startswith(("Generated", "Normalisation"))] == strip


def test_aggregate_rules_by_teacher(tmp_path, capsys):
    for seed in range(2):
        for rule in ("sobirl", "drlhf"):
            _fake_run(tmp_path, rule, "A-v0", seed, [0.0, 5.0, 10.0 + seed], teacher="bradley_terry", row=f"{rule}_n")
            _fake_run(tmp_path, rule, "A-v0", seed, [0.0, 5.0, 20.0 + seed], teacher="oracle", row=f"{rule}_o")
    plain = _aggregate_rules([tmp_path, "--reps", "50"], capsys)
    assert "| drlhf | 4 | 15.5 ± 2.9 |" in plain  # teachers pooled without --by-teacher
    text = _aggregate_rules([tmp_path, "--reps", "50", "--by-teacher"], capsys)
    rows = [ln.split("|")[1].strip() for ln in text.split("### Aggregate")[0].splitlines() if ln.startswith("| ")]
    assert rows[1:] == ["drlhf@oracle", "drlhf@noisy", "sobirl@oracle", "sobirl@noisy"]
    assert "| drlhf@noisy | 2 | 10.5 ± 0.5 |" in text


def test_a_non_finite_leader_gradient_is_skipped_not_applied():
    """One NaN estimate must not poison the reward model (and through it the follower): the step is skipped."""
    from bilevel_rl.upper.preference_rule import Surrogate

    class NaNOnce(DRLHF):
        calls = 0

        def surrogate(self, pairs, step, prepared):
            s = self.bt_surrogate(pairs)
            NaNOnce.calls += 1
            if NaNOnce.calls == 1:
                s.loss = s.loss * float("nan")
            return Surrogate(s.loss, s.returns, s.labels, s.terms)

    lab = make_rule_lab(seed=0)
    batch = lab.on_policy_batch(20)
    rule = NaNOnce(DRLHFConfig(optimizer="sgd", lr=0.1, weight_decay=0.0, batch_size=50))
    rule.attach(lab.follower, lab.reward_model)
    buf = lab.buffer(100, torch.Generator().manual_seed(0))
    x0 = lab.x.detach().clone()
    out = rule.update(leader_step(buf, 1, np.random.default_rng(0), batch=batch, iteration=1))
    assert out["upper/nonfinite_steps"] == 1.0
    assert torch.isfinite(lab.x).all() and not torch.equal(lab.x.detach(), x0)  # the second minibatch stepped
    assert rule.state_dict()["nonfinite_steps"] == 1


def test_stop_accuracy_ends_the_update_after_the_first_epoch_above_it():
    """buffer.stop_accuracy (B-Pref's early stop): the update runs the epochs of a fixed schedule up to and including
    the first whose training accuracy exceeds the threshold, and leaves exactly the model that schedule would."""
    from dataclasses import replace

    def run(epochs, stop, per_epoch=False):
        lab = make_rule_lab(seed=1)
        rule = DRLHF(DRLHFConfig(optimizer="sgd", lr=0.5, weight_decay=0.0, batch_size=25))
        rule.attach(lab.follower, lab.reward_model)
        buf, rng = lab.buffer(100, torch.Generator().manual_seed(2)), np.random.default_rng(3)
        step = replace(leader_step(buf, epochs, rng, iteration=0), stop_accuracy=stop)
        if per_epoch:  # one epoch per call: the same minibatch draws as one call over all epochs
            accs = [rule.update(replace(step, epochs=1))["reward_model/train_accuracy"] for _ in range(epochs)]
            return accs, lab.x.detach().clone()
        out = rule.update(step)
        return out, lab.x.detach().clone()

    accs, _ = run(20, None, per_epoch=True)
    threshold = 0.5 * (min(accs) + max(accs))
    first = next(i for i, a in enumerate(accs) if a > threshold) + 1
    assert 1 < first < 20
    out, x_stop = run(20, threshold)
    assert out["upper/epochs"] == first and out["reward_model/train_accuracy"] == accs[first - 1]
    full, x_fixed = run(first, None)
    assert full["upper/epochs"] == first and torch.equal(x_stop, x_fixed)
    out_all, _ = run(20, None)
    assert out_all["upper/epochs"] == 20


@pytest.mark.parametrize(
    ("env", "steps", "env_id"),
    [
        ("hopper", 500_000, "Hopper-v5"),
        ("halfcheetah", 1_000_000, "HalfCheetah-v5"),
        ("walker2d", 1_000_000, "Walker2d-v5"),
    ],
)
def test_table2_presets_compose_and_validate_for_every_row(env, steps, env_id):
    """Every SoBiRL Table 2 MuJoCo cell (env × rule) composes at the paper's budget and passes validation."""
    from bilevel_rl.config import compose, validate

    for rule in ("sobirl", "drlhf", "pbrl", "hpgd", "true_reward"):
        cfg = compose([f"exp=table2_{env}", f"upper={rule}", "hydra/launcher=slurm"])
        validate(cfg)
        assert cfg.env.id == env_id and cfg.trainer.total_steps == steps and cfg.exp_name == f"table2_{env}_{rule}"
        assert (cfg.trainer.steps_per_iter, cfg.buffer.initial_pairs, cfg.buffer.pairs_per_iter) == (5000, 600, 6)
        assert cfg.buffer.capacity == 3000 and cfg.follower.actor_lr == 3e-4 and cfg.follower.learning_rate == 1e-3
        assert cfg.follower.lr_schedule == "linear" and cfg.follower.lr_horizon == 8_000_000
        assert cfg.upper.name == rule and (rule != "pbrl" or (cfg.upper.penalty, cfg.upper.lam) == ("value", 2.0))


@pytest.mark.parametrize(
    ("rule", "follower"), [("sobirl", "ppo"), ("stoc_sobirl", "a2c"), ("hpgd", "a2c"), ("ppa", "ppo")]
)
def test_temperature_rules_refuse_ppo_a2c_without_entropy_before_writing_anything(rule, follower, tmp_path):
    from helpers import assert_refused

    run = tmp_path / "r"
    assert_refused([*TINY, "env.id=CartPole-v1", f"follower={follower}", f"upper={rule}"], "ent_coef", run)
    assert not (run / "run_config.yaml").exists()  # refused by config validation, not at attach()
