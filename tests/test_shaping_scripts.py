"""scripts/aggregate_shaping.py on fake runs: rows, gap fractions (final, all evaluations), settings apart."""

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def _fake_run(
    root: Path, name: str, rule: str, kind: str, follower: str, seed: int, returns: list[float], total: int = 3000
) -> None:
    d = root / "hopper" / f"{name}_s{seed}"
    d.mkdir(parents=True)
    cfg = {
        "upper": {"name": rule},
        "env": {"id": "Hopper-v5", "visible_reward": {"kind": kind}},
        "follower": {"name": follower},
        "seed": seed,
        "trainer": {"total_steps": total},
    }
    (d / "run_config.yaml").write_text(yaml.safe_dump(cfg))
    frame = {
        "env_steps": [1000, 2000, 3000],
        "eval/true_return": returns,
        "time/total_s": [1.0, 2.0, 60.0],
    }
    if rule != "true_reward":
        frame |= {"shaping/mean_abs": [0.0, 0.1, 0.2], "shaping/dense_reward_corr": [0.0, 0.5, 0.5]}
    pd.DataFrame(frame).to_csv(d / "metrics.csv", index=False)


def test_gap_fractions_per_setting(tmp_path):
    for seed in range(3):
        # PPO: floor 100, ceiling 300 (final); the rule ends at 200 = half the gap, and is ahead all along
        _fake_run(tmp_path, "dense", "true_reward", "dense", "ppo", seed, [0.0, 200.0, 300.0])
        _fake_run(tmp_path, "delayed", "true_reward", "delayed", "ppo", seed, [0.0, 50.0, 100.0])
        _fake_run(tmp_path, "hpgd", "hpgd", "delayed", "ppo", seed, [0.0, 200.0, 200.0])
        # SAC: its own floor and ceiling; the rule recovers nothing there
        _fake_run(tmp_path, "sac_dense", "true_reward", "dense", "sac", seed, [0.0, 10.0, 20.0])
        _fake_run(tmp_path, "sac_delayed", "true_reward", "delayed", "sac", seed, [0.0, 5.0, 10.0])
        _fake_run(tmp_path, "sac_hpgd", "hpgd", "delayed", "sac", seed, [0.0, 5.0, 10.0])
    out = tmp_path / "result.md"
    script = ROOT / "scripts" / "aggregate_shaping.py"
    cmd = [sys.executable, str(script), str(tmp_path), "--out", str(out), "--reps", "100", "--last", "1"]
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    summary = json.loads(out.with_suffix(".json").read_text())
    ppo, sac = summary["Hopper-v5, PPO, 3k"], summary["Hopper-v5, SAC, 3k"]
    assert ppo["hpgd"]["gap_recovered"] == pytest.approx([0.5] * 3)
    # all evaluations: floor 50, ceiling 500/3, rule 400/3 → (400/3 − 50) / (500/3 − 50) = 250/350
    assert ppo["hpgd"]["gap_recovered_over_evals"] == pytest.approx([250 / 350] * 3)
    assert sac["hpgd"]["gap_recovered"] == pytest.approx([0.0] * 3)
    assert ppo["dense"]["gap_recovered"] == pytest.approx([1.0] * 3)
    assert summary["aggregate_gap"]["hpgd"]["iqm"] == pytest.approx(0.25, abs=0.26)  # 3 runs at 0.5, 3 at 0
    out.write_text(out.read_text() + "## Analysis\nkept\n")  # regeneration keeps a hand-written analysis
    subprocess.run(cmd, check=True, capture_output=True)
    assert out.read_text().endswith("## Analysis\nkept\n")
    assert "### Hopper-v5, PPO, 3k" in out.read_text() and "### Hopper-v5, SAC, 3k" in out.read_text()
    assert out.with_suffix(".png").stat().st_size > 0


def test_incomplete_runs_are_left_out_unless_partial(tmp_path):
    _fake_run(tmp_path, "dense", "true_reward", "dense", "ppo", 0, [0.0, 1.0, 2.0])
    cfg_path = tmp_path / "hopper" / "dense_s0" / "run_config.yaml"
    cfg = yaml.safe_load(cfg_path.read_text())
    cfg["trainer"]["total_steps"] = 10_000
    cfg_path.write_text(yaml.safe_dump(cfg))
    script = str(ROOT / "scripts" / "aggregate_shaping.py")
    proc = subprocess.run([sys.executable, script, str(tmp_path)], capture_output=True, text=True)
    assert proc.returncode == 1 and "1 incomplete run(s) left out" in proc.stderr
    proc = subprocess.run([sys.executable, script, str(tmp_path), "--partial"], capture_output=True, text=True)
    assert proc.returncode == 0 and "| dense | 1 | 3000 |" in proc.stdout


def test_archived_runs_aggregate_like_the_originals(tmp_path):
    runs, archive = tmp_path / "runs", tmp_path / "archive"
    for seed in range(2):
        _fake_run(runs, "dense", "true_reward", "dense", "ppo", seed, [0.0, 200.0, 300.0 + seed])
        _fake_run(runs, "delayed", "true_reward", "delayed", "ppo", seed, [0.0, 50.0, 100.0 + seed])
    script = str(ROOT / "scripts" / "aggregate_shaping.py")
    first = subprocess.run(
        [sys.executable, script, str(runs), "--archive", str(archive)], check=True, capture_output=True, text=True
    )
    assert (archive / "hopper" / "dense_s1" / "metrics.csv.gz").is_file()
    assert not (archive / "hopper" / "dense_s1" / "metrics.csv").exists()
    again = subprocess.run([sys.executable, script, str(archive)], check=True, capture_output=True, text=True)
    strip = [ln.rsplit("|", 2)[0] for ln in first.stdout.splitlines()]  # all but the wall-time column
    assert strip == [ln.rsplit("|", 2)[0] for ln in again.stdout.splitlines()] and "| dense | 2 |" in again.stdout


def test_two_roots_and_two_budgets_stay_apart(tmp_path):
    a, b, archive = tmp_path / "a", tmp_path / "b", tmp_path / "archive"
    for seed in range(2):
        _fake_run(a, "dense", "true_reward", "dense", "ppo", seed, [0.0, 200.0, 300.0])
        _fake_run(a, "delayed", "true_reward", "delayed", "ppo", seed, [0.0, 50.0, 100.0])
        # the same rows at a smaller budget, in another root: their own floor and ceiling
        _fake_run(b, "dense", "true_reward", "dense", "ppo", seed, [0.0, 20.0, 30.0], total=2000)
        _fake_run(b, "delayed", "true_reward", "delayed", "ppo", seed, [0.0, 5.0, 10.0], total=2000)
        _fake_run(b, "hpgd", "hpgd", "delayed", "ppo", seed, [0.0, 10.0, 20.0], total=2000)
    out = tmp_path / "r.md"
    script = str(ROOT / "scripts" / "aggregate_shaping.py")
    cmd = [sys.executable, script, str(a), str(b), "--out", str(out), "--reps", "50", "--last", "1"]
    subprocess.run(cmd, check=True, capture_output=True)
    summary = json.loads(out.with_suffix(".json").read_text())
    assert (
        set(summary["Hopper-v5, PPO, 2k"]) == {"dense", "delayed", "hpgd"}
        and "hpgd" not in summary["Hopper-v5, PPO, 3k"]
    )
    assert summary["Hopper-v5, PPO, 2k"]["hpgd"]["gap_recovered"] == pytest.approx([0.5, 0.5])
    assert summary["Hopper-v5, PPO, 3k"]["dense"]["scores"] == [300.0, 300.0]
    assert f"aggregate_shaping.py {a} {b} --out" in out.read_text()
    refused = subprocess.run([*cmd, "--archive", str(archive)], capture_output=True, text=True)
    assert refused.returncode == 2 and "--archive: give one root" in refused.stderr and not archive.exists()


def test_pbrl_runs_without_the_clip_are_their_own_row():
    sys.path.insert(0, str(ROOT / "scripts"))
    from aggregate_shaping import row_label

    base = {"upper": {"name": "pbrl"}, "env": {"visible_reward": {"kind": "delayed"}}}
    assert row_label(base) == "pbrl_unclipped"
    assert row_label({**base, "upper": {"name": "pbrl", "policy_loss_clip": 0.2}}) == "pbrl"


def test_the_job_runner_skips_started_and_archived_rows(tmp_path):
    """``run_shaping_jobs.sh`` starts only rows with neither a run directory under SHAPING_ROOT nor one in ARCHIVE
    (with a stand-in ``bilevel-rl`` that records its arguments)."""
    import os
    import stat
    import subprocess
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "bilevel-rl"
    fake.write_text(f'#!/bin/sh\necho "$@" >> {tmp_path / "started.txt"}\n')
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    for root, row in (("root", "a_s0"), ("archive", "b_s0")):
        (tmp_path / root / "quickstart" / row).mkdir(parents=True)
        (tmp_path / root / "quickstart" / row / "run_config.yaml").write_text("seed: 0\n")
    jobs = tmp_path / "jobs.txt"
    jobs.write_text("# comment\nquickstart a_s0 seed=0\nquickstart b_s0 seed=0\nquickstart c_s0 upper=drlhf seed=0\n")
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "EXP_PREFIX": "", "MAX_RUNS": "5",
           "SHAPING_ROOT": str(tmp_path / "root"), "ARCHIVE": str(tmp_path / "archive"),
           "RUN_PATTERN": "no-such-process-pattern"}  # fmt: skip
    subprocess.run(["bash", str(repo / "scripts" / "run_shaping_jobs.sh"), str(jobs)], env=env, check=True, timeout=60)
    started = (tmp_path / "started.txt").read_text().splitlines()
    assert len(started) == 1 and started[0].startswith("exp=quickstart upper=drlhf seed=0 progress=false")
