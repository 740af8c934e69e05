"""The ``bilevel-rl`` console script (Hydra 1.3)."""

from __future__ import annotations

import logging
import re
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from bilevel_rl.config import ConfigError, check_group_overrides, group_options

OmegaConf.register_new_resolver("slug", lambda s: re.sub(r"[^A-Za-z0-9_.,=-]+", "-", str(s)), replace=True)

log = logging.getLogger("bilevel_rl")


@hydra.main(config_path="configs", config_name="config", version_base="1.3")
def _hydra_main(cfg: DictConfig) -> float:
    from bilevel_rl.train import run

    hc = HydraConfig.get()
    run_dir = Path(hc.runtime.output_dir)
    try:
        final = run(cfg, run_dir, list(hc.overrides.task))
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    return float(final.get("eval/true_return", float("nan")))


def main() -> None:
    """Entry point: one-line errors for unknown group options, then hand over to Hydra."""
    args = sys.argv[1:]
    try:
        check_group_overrides(args)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    info_flags = ("--help", "-h", "--hydra-help", "--cfg", "-c", "--info", "--shell-completion", "-sc")
    wants_info = any(a.split("=")[0] in info_flags for a in args)
    has_exp = any(a.split("=")[0].lstrip("+") == "exp" for a in args)
    resume = [a.split("=", 1)[1] for a in args if a.startswith("checkpoint.resume_from=")]
    if not (wants_info or has_exp or resume):
        print(
            f"error: exp: no experiment preset chosen; pass exp=<name> (available: {', '.join(group_options('exp'))})",
            file=sys.stderr,
        )
        sys.exit(2)
    # a resumed run writes into its own directory, so metrics.csv keeps the whole history
    if resume and resume[0] not in ("", "null") and not any(a.startswith("hydra.run.dir=") for a in args):
        sys.argv.append(f"hydra.run.dir={resume[0]}")
    _hydra_main()


if __name__ == "__main__":
    main()
