"""Run the malformed invocations of tests/test_config_contract.py through a ``bilevel-rl`` and tabulate what happens.

For each invocation: exit status, number of non-empty stderr lines, whether a run directory was left behind, and
the last stderr line. Used to compare a build of the CLI against an older one::

    python scripts/config_fuzz.py --label new > /tmp/new.json
    PYTHONPATH=/path/to/old/checkout python scripts/config_fuzz.py --label old > /tmp/old.json
    python scripts/config_fuzz.py --table /tmp/old.json /tmp/new.json
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.helpers import TINY  # noqa: E402
from tests.test_config_contract import FUZZ  # noqa: E402


def run_case(overrides: list[str], timeout: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / "run"
        cmd = [sys.executable, "-c", "from bilevel_rl.cli import main; main()", *TINY, *overrides]
        cmd.append(f"hydra.run.dir={run_dir}")
        env = {**os.environ, "WANDB_MODE": "disabled"}
        try:
            proc = subprocess.run(cmd, cwd=tmp, env=env, capture_output=True, text=True, timeout=timeout)
            code, err = proc.returncode, proc.stderr
        except subprocess.TimeoutExpired as exc:
            code, err = "timeout", (exc.stderr or b"").decode() if isinstance(exc.stderr, bytes) else (exc.stderr or "")
        lines = [ln for ln in err.splitlines() if ln.strip()]
        return {
            "exit": code,
            "stderr_lines": len(lines),
            "dir_left": run_dir.exists(),
            "trained": (run_dir / "metrics.csv").exists(),
            "last": lines[-1][:160] if lines else "",
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--label", default="run")
    parser.add_argument("--timeout", type=int, default=120)
    parser.add_argument("--table", nargs=2, metavar=("OLD", "NEW"), help="print a markdown table of two result files")
    args = parser.parse_args()
    if args.table:
        old, new = (json.loads(Path(p).read_text()) for p in args.table)
        print("| invocation (on top of the tiny Pendulum run) | before | after |")
        print("|---|---|---|")
        for case in new:
            o = next(r for r in old if r["case"] == case["case"])

            def cell(r: dict) -> str:
                if r["exit"] == 0:
                    return "**ran** (exit 0)"
                what = "one line" if r["stderr_lines"] == 1 else f"{r['stderr_lines']} lines"
                left = ", left a run dir" if r["dir_left"] else ""
                return f"exit {r['exit']}, {what}{left}: `{r['last']}`".replace("|", "\\|")

            print(f"| `{case['case']}` | {cell(o)} | {cell(case)} |")
        return
    results = []
    for overrides, _ in FUZZ:
        results.append({"case": " ".join(overrides), **run_case(overrides, args.timeout)})
        print(results[-1], file=sys.stderr)
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
