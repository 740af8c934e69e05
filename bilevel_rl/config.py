"""Config validation: every bad value is refused before training with one line naming the key."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gymnasium as gym
from omegaconf import DictConfig, OmegaConf

CONFIG_DIR = Path(__file__).parent / "configs"
GROUPS = ("env", "follower", "reward_model", "upper", "teacher", "buffer", "logger", "checkpoint", "exp")


class ConfigError(ValueError):
    """A configuration value that cannot work; the message is one line and names the key."""


def group_options(group: str) -> list[str]:
    """Names of the presets available in a config group."""
    return sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml"))


def check_group_overrides(args: list[str]) -> None:
    """Refuse ``group=option`` CLI overrides that name no preset (Hydra's own message spans many lines)."""
    for arg in args:
        if arg.startswith("-") or "=" not in arg:
            continue
        key, value = arg.split("=", 1)
        key = key.lstrip("+~")
        if key not in GROUPS:
            continue
        for option in value.split(","):
            option = option.strip()
            if option in ("", "null") or option.startswith(("choice(", "range(", "glob(")):
                continue
            if option not in group_options(key):
                raise ConfigError(f"{key}={option}: unknown {key} option (available: {', '.join(group_options(key))})")


def _positive(cfg: DictConfig, key: str, allow_none: bool = False) -> None:
    value = OmegaConf.select(cfg, key)
    if value is None and allow_none:
        return
    if not isinstance(value, int | float) or isinstance(value, bool) or value <= 0:
        raise ConfigError(f"{key}: must be a positive number, got {value!r}")


def _non_negative(cfg: DictConfig, key: str) -> None:
    value = OmegaConf.select(cfg, key)
    if not isinstance(value, int | float) or isinstance(value, bool) or value < 0:
        raise ConfigError(f"{key}: must be >= 0, got {value!r}")


def _check_rule(cfg: DictConfig) -> None:
    """The rule exists, its hyperparameters construct, and it can run with the chosen follower."""
    from bilevel_rl.upper.base import make_rule, rule_classes

    name = str(cfg.upper.name)
    container = OmegaConf.to_container(cfg.upper, resolve=True)
    assert isinstance(container, dict)
    params = {str(k): v for k, v in container.items() if k != "name"}
    try:
        rule_cls, _ = rule_classes(name)
        make_rule(name, params)
    except ValueError as exc:
        msg = str(exc).splitlines()[0]
        raise ConfigError(msg if msg.startswith("upper") else f"upper ({name}): {msg}") from None
    reason = rule_cls.check_follower(str(cfg.follower.name), params)
    if reason:
        raise ConfigError(f"upper={name} with follower={cfg.follower.name}: {reason}")
    ent_coef = OmegaConf.select(cfg, "follower.algo_kwargs.ent_coef", default=0.0)
    if rule_cls.needs_temperature and cfg.follower.name in ("ppo", "a2c") and float(ent_coef) <= 0:
        raise ConfigError(
            f"upper={name} with follower={cfg.follower.name}: the rule divides by the follower's entropy temperature; "
            f"set follower.algo_kwargs.ent_coef > 0 (got {ent_coef})"
        )


def validate(cfg: DictConfig, require_exp: bool = True) -> dict[str, Any]:
    """Check a composed config; return facts learned on the way (the env's spaces).

    Raises:
        ConfigError: with a one-line message naming the offending key.
    """
    if require_exp and not cfg.get("exp_name"):
        raise ConfigError(
            f"exp: no experiment preset chosen; pass exp=<name> (available: {', '.join(group_options('exp'))})"
        )
    for key in (
        "trainer.total_steps",
        "trainer.steps_per_iter",
        "env.n_envs",
        "buffer.capacity",
        "buffer.segment_length",
        "follower.learning_rate",
        "upper.lr",
        "upper.batch_size",
        "trainer.eval_episodes",
        "torch_threads",
    ):
        _positive(cfg, key)
    _positive(cfg, "follower.actor_lr", allow_none=True)
    for key in (
        "trainer.initial_steps",
        "buffer.initial_pairs",
        "buffer.pairs_per_iter",
        "buffer.warmup_epochs",
        "buffer.epochs_per_iter",
        "trainer.eval_every",
        "checkpoint.every",
        "trainer.video_every",
    ):
        _non_negative(cfg, key)
    _positive(cfg, "checkpoint.keep")
    if cfg.trainer.initial_steps > cfg.trainer.total_steps:
        raise ConfigError(
            f"trainer.initial_steps: {cfg.trainer.initial_steps} exceeds trainer.total_steps={cfg.trainer.total_steps}"
        )
    if cfg.buffer.initial_pairs > 0 and cfg.trainer.initial_steps <= 0:
        raise ConfigError("trainer.initial_steps: must be > 0 when buffer.initial_pairs > 0 (pairs need transitions)")
    from bilevel_rl.upper.base import SB3_FOLLOWERS

    if cfg.follower.name not in SB3_FOLLOWERS:
        raise ConfigError(f"follower.name: unknown follower {cfg.follower.name!r} (choose {', '.join(SB3_FOLLOWERS)})")
    _check_rule(cfg)
    if cfg.logger.mode not in ("online", "offline", "disabled"):
        raise ConfigError(f"logger.mode: must be online, offline or disabled, got {cfg.logger.mode!r}")
    if cfg.device != "cpu" and not str(cfg.device).startswith("cuda"):
        raise ConfigError(f"device: must be cpu or cuda[:N], got {cfg.device!r}")

    obs_space, act_space = _env_spaces(cfg)
    if not isinstance(obs_space, gym.spaces.Box):
        raise ConfigError(f"env.id: {cfg.env.id} has a {type(obs_space).__name__} observation space; a Box is required")
    if cfg.follower.name == "sac" and not isinstance(act_space, gym.spaces.Box):
        raise ConfigError(
            f"follower=sac: env.id={cfg.env.id} has a discrete action space ({act_space}); "
            "use follower=dsac (discrete SAC), ppo or a2c"
        )
    if cfg.follower.name == "dsac" and not isinstance(act_space, gym.spaces.Discrete):
        raise ConfigError(
            f"follower=dsac: env.id={cfg.env.id} has a {type(act_space).__name__} action space; discrete SAC needs "
            "Discrete actions (use follower=sac)"
        )
    if not isinstance(act_space, gym.spaces.Box | gym.spaces.Discrete):
        raise ConfigError(f"env.id: {cfg.env.id} has an unsupported action space {act_space}")
    _check_reward_model(cfg, obs_space)
    if OmegaConf.select(cfg, "follower.reward_clip") is not None:
        _positive(cfg, "follower.reward_clip")
    return {"observation_space": obs_space, "action_space": act_space}


def _env_spaces(cfg: DictConfig) -> tuple[gym.Space, gym.Space]:
    """Observation and action spaces of the env exactly as the follower will see it (Atari: wrapped, stacked)."""
    from bilevel_rl.envs.atari import AtariConfig, atari_spaces, is_atari
    from bilevel_rl.envs.make import check_env_id

    kwargs = {str(k): v for k, v in dict(OmegaConf.to_container(cfg.env.kwargs, resolve=True)).items()}  # type: ignore[arg-type]
    try:
        check_env_id(cfg.env.id)
        atari_block = OmegaConf.select(cfg, "env.atari")
        if atari_block is not None or is_atari(cfg.env.id):
            block = OmegaConf.to_container(atari_block, resolve=True) if atari_block is not None else {}
            assert isinstance(block, dict)
            return atari_spaces(cfg.env.id, kwargs, AtariConfig.from_dict(block))
        env = gym.make(cfg.env.id, **kwargs)
    except ValueError as exc:
        raise ConfigError(str(exc).splitlines()[0]) from None
    except Exception as exc:  # noqa: BLE001 - missing extras, bad kwargs
        raise ConfigError(
            f"env.id: could not make {cfg.env.id!r}: {type(exc).__name__}: {exc}".splitlines()[0]
        ) from None
    try:
        return env.observation_space, env.action_space
    finally:
        env.close()


def _check_reward_model(cfg: DictConfig, obs_space: gym.Space) -> None:
    """The reward model family fits the observations (CNNs for Atari stacks, the MLP for vectors)."""
    from stable_baselines3.common.preprocessing import is_image_space

    name = cfg.reward_model.name
    image = is_image_space(obs_space)
    if name == "mlp" and image:
        raise ConfigError(
            f"reward_model=mlp: env.id={cfg.env.id} has image observations {obs_space.shape}; "
            "use reward_model=cnn_sobirl or cnn_pbrl"
        )
    if name == "cnn" and not image:
        raise ConfigError(f"reward_model=cnn: env.id={cfg.env.id} has vector observations; use reward_model=mlp")
    if name not in ("mlp", "cnn"):
        raise ConfigError(f"reward_model.name: unknown reward model {name!r} (choose mlp or cnn)")
    if name == "cnn" and cfg.reward_model.arch not in ("sobirl", "pbrl"):
        raise ConfigError(f"reward_model.arch: unknown CNN {cfg.reward_model.arch!r} (choose sobirl or pbrl)")
    per_action = OmegaConf.select(cfg, "reward_model.per_action")
    if name == "cnn" and per_action is not None and not isinstance(per_action, bool):
        raise ConfigError(f"reward_model.per_action: must be true or false, got {per_action!r}")
    if OmegaConf.select(cfg, "reward_model.target_std") is not None:
        _positive(cfg, "reward_model.target_std")
