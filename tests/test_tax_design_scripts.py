"""scripts/aggregate_tax_design.py on fake runs: welfare first/last tenth, final taxes, the claims' numbers."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

ROOT = Path(__file__).resolve().parents[1]
TAXES = ("income_tax", "vat_1", "vat_2", "vat_3")


def _fake_run(root: Path, rule: str, seed: int, welfare: np.ndarray, final_tax: tuple[float, ...], steps: int) -> None:
    d = root / f"{rule}_s{seed}"
    d.mkdir(parents=True)
    cfg = {"upper": {"name": rule}, "reward_model": {"name": "tax"}, "seed": seed, "trainer": {"total_steps": 1000}}
    (d / "run_config.yaml").write_text(yaml.safe_dump(cfg))
    n = len(welfare)
    frame = {"iteration": np.arange(n), "env_steps": np.linspace(100, steps, n), "follower/leader_return": welfare}
    frame["eval/leader_return"] = welfare + 1.0
    for t, v in zip(TAXES, final_tax, strict=True):
        frame[f"upper/tax/{t}"] = np.linspace(0.3, v, n)
    pd.DataFrame(frame).to_csv(d / "metrics.csv", index=False)


def test_tax_design_aggregate(tmp_path):
    runs = tmp_path / "runs"
    ramp = np.linspace(100.0, 125.0, 20)  # +25 % from the first to the last tenth (roughly)
    for s in range(2):
        _fake_run(runs, "hpgd", s, ramp + s, (0.6, 0.5, 0.1, 1.9), 1000)
        _fake_run(runs, "zero_order", s, np.full(20, 110.0), (0.4, 0.5, 0.5, 0.5), 1000)
        _fake_run(runs, "true_reward", s, np.full(20, 100.0), (0.3, 0.3, 0.3, 0.3), 1000)
    _fake_run(runs, "hpgd", 9, ramp, (0.6, 0.5, 0.1, 1.9), 500)  # incomplete: left out
    out = tmp_path / "tax_design.md"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "aggregate_tax_design.py"), str(runs), "--out", str(out)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    text = out.read_text()
    hpgd_row = next(line for line in text.splitlines() if line.startswith("| HPGD |"))
    assert "| 2 | 20 | 101.2 ± 0.5 | 124.8 ± 0.5 | 125.2 ± 0.5 | 0.600 ± 0.000 |" in hpgd_row
    assert "raised in 2/2 runs" in text and "y2 the lowest VAT in 2/2 runs, y3 the highest in 2/2" in text
    assert "against fixed taxes at the end: +24.8 %" in text
    assert out.with_suffix(".png").exists() and "## Analysis" in text
