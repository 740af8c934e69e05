"""Packages of bilevel_rl; everything else is in pyproject.toml.

The Hydra configs live at the top level (``configs/``, beside ``bilevel_rl/``) and ship inside the wheel as
``bilevel_rl/configs`` so that an installed console script finds them (``bilevel_rl.config.CONFIG_DIR``).
"""

from setuptools import find_packages, setup

setup(
    packages=[*find_packages(include=["bilevel_rl", "bilevel_rl.*"]), "bilevel_rl.configs"],
    package_dir={"bilevel_rl.configs": "configs"},
    package_data={"bilevel_rl.configs": ["*.yaml", "**/*.yaml"]},
)
