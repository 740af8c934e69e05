"""bilevel_rl: bilevel reinforcement learning (RLHF and reward shaping) with pluggable leader rules."""

__version__ = "0.1.0"
