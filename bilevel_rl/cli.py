"""The ``bilevel-rl`` console script (Hydra 1.3).

Every job of the command line is composed and validated (:func:`bilevel_rl.config.precheck`) before Hydra starts,
so a refused run prints one line, exits with status 2 and writes nothing. A resume runs in the original run
directory; Hydra's own record of the resume goes to ``resume_<time>/`` beside the original files.
"""

from __future__ import annotations

import logging
import re
import shutil
import sys
import time
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from bilevel_rl.config import CONFIG_DIR, ConfigError, group_options, precheck
from bilevel_rl.config_schema import register_schemas

OmegaConf.register_new_resolver("slug", lambda s: re.sub(r"[^A-Za-z0-9_.,=-]+", "-", str(s)), replace=True)
register_schemas()

log = logging.getLogger("bilevel_rl")


def _fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


@hydra.main(config_path=str(CONFIG_DIR), config_name="config", version_base="1.3")
def _hydra_main(cfg: DictConfig) -> float:
    from bilevel_rl.train import run

    hc = HydraConfig.get()
    run_dir = Path(hc.runtime.output_dir)
    fresh = not (run_dir / "run_config.yaml").exists()
    try:
        final = run(cfg, run_dir, list(hc.overrides.task))
    except ConfigError as exc:
        if fresh and cfg.checkpoint.get("resume_from") is None and not (run_dir / "metrics.csv").exists():
            logging.shutdown()
            shutil.rmtree(run_dir, ignore_errors=True)  # a refused run leaves no directory
        _fail(str(exc))
    return float(final.get("eval/true_return", float("nan")))


def _resume_args(args: list[str]) -> list[str]:
    """Overrides that make Hydra run a resume in the original directory without touching its files."""
    from bilevel_rl.config import validate
    from bilevel_rl.train import load_run_config, resolve_resume

    resume = [a.split("=", 1)[1] for a in args if a.startswith("checkpoint.resume_from=")]
    if not resume or resume[0] in ("", "null"):
        return []
    run_dir = Path(resume[0])
    load_run_config(run_dir)  # one-line error for a missing / invalid run_config.yaml
    validate(resolve_resume(None, run_dir, args), require_exp=False)
    extra = [] if any(a.startswith("hydra.run.dir=") for a in args) else [f"hydra.run.dir={run_dir}"]
    return [*extra, f"hydra.output_subdir=resume_{time.strftime('%Y-%m-%d_%H-%M-%S')}/.hydra"]


def main() -> None:
    """Entry point: check every job of the command line, then hand over to Hydra."""
    args = sys.argv[1:]
    info_flags = ("--help", "-h", "--hydra-help", "--cfg", "-c", "--info", "--shell-completion", "-sc", "--resolve")
    wants_info = any(a.split("=")[0] in info_flags for a in args)
    multirun = any(a in ("-m", "--multirun") for a in args)
    overrides = [a for a in args if not a.startswith("-")]
    has_exp = any(a.split("=")[0].lstrip("+") == "exp" for a in overrides)
    resuming = any(a.startswith("checkpoint.resume_from=") for a in overrides)
    try:
        if resuming and not wants_info:
            sys.argv += _resume_args(overrides)
        elif not (wants_info or has_exp):
            raise ConfigError(
                f"exp: no experiment preset chosen; pass exp=<name> (available: {', '.join(group_options('exp'))})"
            )
        elif not wants_info:
            precheck(overrides, multirun)
    except ConfigError as exc:
        _fail(str(exc))
    _hydra_main()


if __name__ == "__main__":
    main()
