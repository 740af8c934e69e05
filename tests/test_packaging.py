"""The top-level ``configs/`` ship inside the wheel: an installed copy, run from elsewhere, composes a preset."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_configs_live_at_the_top_level():
    from bilevel_rl.config import CONFIG_DIR

    assert CONFIG_DIR == ROOT / "configs" and (CONFIG_DIR / "exp" / "quickstart.yaml").is_file()
    assert not (ROOT / "bilevel_rl" / "configs").exists()


def test_an_installed_wheel_run_from_another_directory_composes_the_quickstart(tmp_path):
    src, wheels, site, cwd = tmp_path / "src", tmp_path / "wheels", tmp_path / "site", tmp_path / "elsewhere"
    cwd.mkdir()
    skip = shutil.ignore_patterns(".*", "build", "dist", "*.egg-info", "__pycache__", "runs", "multirun", "outputs")
    shutil.copytree(ROOT, src, ignore=skip)  # setuptools writes build/ into the source tree
    pip = [sys.executable, "-m", "pip", "-q", "--disable-pip-version-check"]
    subprocess.run([*pip, "wheel", str(src), "--no-deps", "--no-build-isolation", "-w", str(wheels)], check=True)
    (wheel,) = wheels.glob("bilevel_rl-*.whl")
    subprocess.run([*pip, "install", "--no-deps", "--target", str(site), str(wheel)], check=True)
    env = {**os.environ, "PYTHONPATH": str(site)}
    where = subprocess.run(
        [sys.executable, "-c", "import bilevel_rl.config as c; print(c.__file__); print(c.CONFIG_DIR)"],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert where == [str(site / "bilevel_rl" / "config.py"), str(site / "bilevel_rl" / "configs")]
    out = subprocess.run(
        [sys.executable, "-m", "bilevel_rl.cli", "--cfg", "job", "exp=quickstart", "upper=sobirl"],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "exp_name: quickstart" in out and "id: Hopper-v5" in out and "estimator: truncated" in out
