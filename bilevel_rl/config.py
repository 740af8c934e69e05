"""Compose, type and validate a run's config before anything is written; every refusal is one line naming the key.

Three layers, each with one job:

1. **Schema** (Hydra structured configs from the dataclasses, :mod:`bilevel_rl.config_schema`): unknown keys, wrong
   types (``seed=abc``, ``seed=1.5``) and bad choices are refused while composing.
2. **Sections** (:func:`build_sections`): each section becomes its dataclass, whose ``__post_init__`` refuses
   out-of-range values; keys appended with ``+key=...`` that no dataclass has are refused here.
3. **Cross-group checks** (:func:`validate`): the env's spaces against the follower and the reward model, the rule's
   requirements against the follower's capabilities, the SB3 keyword arguments against the algorithm, the segment
   length against the env's episode limit.

The CLI runs all three on the composed config before Hydra creates a run directory (:func:`precheck`).
"""

from __future__ import annotations

import difflib
import itertools
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import gymnasium as gym
from omegaconf import DictConfig, OmegaConf

from bilevel_rl.capabilities import Capability, CapabilityError, check_compatible
from bilevel_rl.config_schema import OPTION_SCHEMAS, SECTIONS, RunConfig, register_schemas
from bilevel_rl.schema import schema_fields


def _config_dir() -> Path:
    installed = Path(__file__).parent / "configs"  # a wheel carries them inside the package
    return installed if (installed / "config.yaml").is_file() else Path(__file__).resolve().parent.parent / "configs"


CONFIG_DIR = _config_dir()
GROUPS = (
    "env",
    "follower",
    "reward_model",
    "upper",
    "objective",
    "teacher",
    "buffer",
    "logger",
    "checkpoint",
    "exp",
)


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


# ---------------------------------------------------------------------------------------------------- composition
def hydra_error_line(exc: BaseException) -> str:
    """One line out of a Hydra / OmegaConf composition error (the key and why)."""
    cause = exc.__cause__ or exc.__context__
    text = str(cause) if cause is not None else str(exc)
    full_key = ""
    for line in text.splitlines():
        if line.strip().startswith("full_key:"):
            full_key = line.split(":", 1)[1].strip()
    first = text.splitlines()[0] if text else type(exc).__name__
    schema = text.split("object_type=", 1)[1].split()[0] if "object_type=" in text else ""
    if "not in" in first and full_key:
        return f"{full_key}: unknown key{_suggest(full_key, schema)}"
    if first.startswith("Could not override"):
        key = first.split("'")[1] if "'" in first else first
        return f"{key}: unknown key{_suggest(key)}"
    return f"{full_key}: {first}" if full_key else first


def _suggest(full_key: str, schema: str = "") -> str:
    section, _, key = full_key.rpartition(".")
    known = _known_keys(section) or schema_fields(schema)
    close = difflib.get_close_matches(key, known, n=1)
    prefix = f"{section}." if section else ""
    if close:
        return f" (did you mean {prefix}{close[0]}?)"
    return f" (keys here: {', '.join(known)})" if 0 < len(known) <= 12 else ""


def _known_keys(section: str) -> list[str]:
    if section == "":
        return [f.name for f in fields(RunConfig)]
    cls = SECTIONS.get(section)
    return [f.name for f in fields(cls)] if cls is not None else []


def compose(overrides: list[str], return_hydra_config: bool = False) -> DictConfig:
    """The composed config of ``bilevel-rl <overrides>`` (no run directory, no Hydra job).

    Raises:
        ConfigError: one line for any composition error.
    """
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    register_schemas()
    check_group_overrides(overrides)
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            return hydra_compose("config", overrides=overrides, return_hydra_config=return_hydra_config)
    except Exception as exc:  # noqa: BLE001 - Hydra raises several types, all reported as one line
        raise ConfigError(hydra_error_line(exc)) from None
    finally:
        GlobalHydra.instance().clear()


def sweep_overrides(args: list[str], limit: int = 256) -> list[list[str]]:
    """The override lists of every job of a ``-m`` sweep (comma lists, ``range(...)``), for checking them all."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(args)
    choices = []
    for o in parsed:
        if o.is_sweep_override():
            choices.append([f"{o.get_key_element()}={v}" for v in o.sweep_string_iterator()])
        else:
            choices.append([str(o.input_line)])
    jobs = [list(c) for c in itertools.islice(itertools.product(*choices), limit)]
    return jobs or [[]]


# ---------------------------------------------------------------------------------------------------- sections
@dataclass
class Sections:
    """A run's config as typed dataclasses (one per section)."""

    root: DictConfig
    trainer: Any
    checkpoint: Any
    env: Any
    follower: Any
    objective: Any
    buffer: Any
    logger: Any
    reward_model: Any
    teacher: Any
    upper: Any


def _plain(node: Any) -> Any:
    return OmegaConf.to_container(node, resolve=True, enum_to_str=True) if isinstance(node, DictConfig) else node


def build(cls: type, values: dict[str, Any], prefix: str) -> Any:
    """``cls(**values)`` with one-line errors: unknown keys (with a suggestion) and the dataclass's own checks."""
    known = [f.name for f in fields(cls)]
    for key in values:
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            hint = f" (did you mean {prefix}.{close[0]}?)" if close else ""
            raise ConfigError(f"{prefix}.{key}: unknown key{hint}")
    try:
        return cls(**values)
    except (ValueError, TypeError) as exc:
        msg = str(exc).splitlines()[0]
        raise ConfigError(msg if msg.startswith(prefix) else f"{prefix}: {msg}") from None


def build_sections(cfg: DictConfig) -> Sections:
    """Every section of ``cfg`` as its dataclass (range checks included)."""
    from bilevel_rl.envs.atari import AtariConfig
    from bilevel_rl.envs.visible_reward import VisibleRewardConfig
    from bilevel_rl.upper.base import make_rule_config

    known = {f.name for f in fields(RunConfig)} | {"hydra"}
    for key in cfg:
        if key not in known:
            close = difflib.get_close_matches(str(key), sorted(known), n=1)
            raise ConfigError(f"{key!s}: unknown key" + (f" (did you mean {close[0]}?)" if close else ""))
    out: dict[str, Any] = {}
    for name, cls in SECTIONS.items():
        values = dict(_plain(cfg[name]) or {})
        if name == "env" and values.get("atari") is not None:
            values["atari"] = build(AtariConfig, values["atari"], "env.atari")
        if name == "env":
            values["visible_reward"] = build(
                VisibleRewardConfig, values.get("visible_reward") or {}, "env.visible_reward"
            )
        out[name] = build(cls, values, name)
    for group, options in OPTION_SCHEMAS.items():
        values = dict(_plain(cfg[group]) or {})
        choice = values.get("name")
        if choice not in options:
            raise ConfigError(f"{group}.name: must be one of {'|'.join(options)}, got {choice!r}")
        out[group] = build(options[choice], values, group)
    upper = dict(_plain(cfg.upper) or {})
    try:
        out["upper"] = make_rule_config(str(upper.get("name")), upper)
    except (ValueError, TypeError) as exc:
        msg = str(exc).splitlines()[0]
        raise ConfigError(msg if msg.startswith("upper") else f"upper: {msg}") from None
    return Sections(root=cfg, **out)


# ---------------------------------------------------------------------------------------------------- cross-group
def validate(cfg: DictConfig, require_exp: bool = True) -> dict[str, Any]:
    """Check a composed config; return the typed sections and the env's spaces.

    Raises:
        ConfigError: with a one-line message naming the offending key.
    """
    from bilevel_rl.envs.atari import is_atari

    if require_exp and not cfg.get("exp_name"):
        raise ConfigError(
            f"exp: no experiment preset chosen; pass exp=<name> (available: {', '.join(group_options('exp'))})"
        )
    s = build_sections(cfg)
    if cfg.torch_threads < 1:
        raise ConfigError(f"torch_threads: must be >= 1, got {cfg.torch_threads}")
    if cfg.device != "cpu" and not str(cfg.device).startswith("cuda"):
        raise ConfigError(f"device: must be cpu or cuda[:N], got {cfg.device!r}")
    preferences = s.objective.name == "preferences"
    if preferences and s.buffer.initial_pairs > 0 and s.trainer.initial_steps <= 0:
        raise ConfigError("trainer.initial_steps: must be > 0 when buffer.initial_pairs > 0 (pairs need transitions)")
    _check_follower_and_rule(s)
    spec, obs_space, act_space = _env_spaces(s)
    if not isinstance(obs_space, gym.spaces.Box):
        raise ConfigError(f"env.id: {s.env.id} has a {type(obs_space).__name__} observation space; a Box is required")
    _check_action_space(s, act_space)
    _check_reward_model(s, obs_space)
    atari = s.env.atari is not None or is_atari(s.env.id)
    if s.env.visible_reward.kind != "dense" and atari:
        raise ConfigError("env.visible_reward.kind: delayed and sparse rewards are for vector envs, not Atari")
    if not preferences:
        _check_leader_reward(s, atari)
    limit = spec.max_episode_steps if spec is not None else None
    if preferences and limit is not None and s.buffer.segment_length > limit:
        raise ConfigError(
            f"buffer.segment_length: {s.buffer.segment_length} steps exceed the episode limit of {s.env.id} "
            f"({limit} steps); a segment must fit in one episode"
        )
    return {"sections": s, "observation_space": obs_space, "action_space": act_space}


def _check_follower_and_rule(s: Sections) -> None:
    from bilevel_rl.followers import check_algo_kwargs, follower_class
    from bilevel_rl.upper.base import rule_classes

    try:
        check_algo_kwargs(s.follower.name, s.follower.algo_kwargs)
    except ValueError as exc:
        raise ConfigError(str(exc).splitlines()[0]) from None
    follower_cls = follower_class(s.follower.name)
    rule_cls, _ = rule_classes(s.upper.name)
    problem = rule_cls.objective_problem(s.upper, s.objective.name)
    if problem:
        raise ConfigError(f"upper={s.upper.name} with objective={s.objective.name}: {problem}")
    provided = follower_cls.declared_capabilities(_plain(s.root.follower))
    required = dict(rule_cls.requirements(s.upper))
    if getattr(s.objective, "follower_temperature", None) is not None:
        required.pop(Capability.TEMPERATURE, None)
    try:
        check_compatible(s.upper.name, required, s.follower.name, provided)
    except CapabilityError as exc:
        raise ConfigError(str(exc)) from None


def _check_leader_reward(s: Sections, atari: bool) -> None:
    """``objective=leader_reward``: what the follower and the env must allow."""
    o = s.objective
    if atari and (o.reward_fn is not None or o.cost != "none"):
        raise ConfigError(
            "objective.reward_fn / objective.cost: evaluating a leader reward needs a vector env, not Atari"
        )
    if atari and o.env_reward_coef != 0 and s.follower.name in ("sac", "dsac", "soft_dqn"):
        raise ConfigError(
            f"objective.env_reward_coef: follower={s.follower.name} on image observations trains on the learned reward "
            "alone; set objective.env_reward_coef=0 or use follower=a2c"
        )
    if o.gamma is None and s.upper.name != "true_reward":
        from bilevel_rl.followers import follower_class

        if Capability.GAMMA not in follower_class(s.follower.name).declared_capabilities(_plain(s.root.follower)):
            raise ConfigError(f"objective.gamma: follower={s.follower.name} has no discount of its own; set it")


def _env_spaces(s: Sections) -> tuple[Any, gym.Space, gym.Space]:
    """The env's spec and its spaces exactly as the follower will see them (Atari: wrapped, stacked)."""
    from bilevel_rl.envs.atari import AtariConfig, atari_spaces, is_atari
    from bilevel_rl.envs.make import check_env_id

    try:
        spec = check_env_id(s.env.id)
        if s.env.atari is not None or is_atari(s.env.id):
            obs, act = atari_spaces(s.env.id, s.env.kwargs, s.env.atari or AtariConfig())
            return spec, obs, act
        env = gym.make(s.env.id, **s.env.kwargs)
    except ValueError as exc:
        raise ConfigError(str(exc).splitlines()[0]) from None
    except Exception as exc:  # noqa: BLE001 - missing extras, bad kwargs
        raise ConfigError(f"env.id: could not make {s.env.id!r}: {type(exc).__name__}: {exc}".splitlines()[0]) from None
    try:
        return env.spec, env.observation_space, env.action_space
    finally:
        env.close()


def _check_action_space(s: Sections, act_space: gym.Space) -> None:
    from bilevel_rl.followers import follower_class

    if not isinstance(act_space, gym.spaces.Box | gym.spaces.Discrete):
        raise ConfigError(f"env.id: {s.env.id} has an unsupported action space {act_space}")
    reason = follower_class(s.follower.name).action_space_problem(act_space)
    if reason:
        raise ConfigError(f"follower={s.follower.name}: env.id={s.env.id} {reason}")


def _check_reward_model(s: Sections, obs_space: gym.Space) -> None:
    """The reward model family fits the observations (CNNs for Atari stacks, the MLP for vectors)."""
    from stable_baselines3.common.preprocessing import is_image_space

    image = is_image_space(obs_space)
    if s.reward_model.name == "mlp" and image:
        raise ConfigError(
            f"reward_model=mlp: env.id={s.env.id} has image observations {obs_space.shape}; "
            "use reward_model=cnn_sobirl or cnn_pbrl"
        )
    if s.reward_model.name == "cnn" and not image:
        raise ConfigError(f"reward_model=cnn: env.id={s.env.id} has vector observations; use reward_model=mlp")
    if s.reward_model.name == "tax" and s.env.id.split(":")[-1] != "TaxDesign-v0":
        raise ConfigError(f"reward_model=tax: sets the taxes of env.id=TaxDesign-v0, not of env.id={s.env.id}")
    if s.reward_model.name == "tax" and s.objective.name != "leader_reward":
        raise ConfigError("reward_model=tax: the tax designer maximises its welfare; use objective=leader_reward")
    if (
        s.reward_model.name == "tax"
        and getattr(s.upper, "transition_response", False)
        and s.follower.name != "soft_dqn"
    ):
        raise ConfigError(
            f"upper.transition_response=true: the income tax's follower-response term needs the soft values of "
            f"follower=soft_dqn, not follower={s.follower.name} (or set upper.transition_response=false)"
        )


def precheck(args: list[str], multirun: bool) -> None:
    """Compose and validate every job of a command line before Hydra writes anything (one-line ConfigError)."""
    plain = [a for a in args if not a.startswith("hydra.") and not a.startswith("hydra/")]
    for job in sweep_overrides(plain) if multirun else [plain]:
        validate(compose(job))
