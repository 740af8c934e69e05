"""Build every component from a validated config, run the trainer, and report where the outputs are."""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from stable_baselines3.common.utils import set_random_seed

from bilevel_rl.checkpoint import CheckpointError, newest_intact_checkpoint
from bilevel_rl.config import CONFIG_DIR, GROUPS, ConfigError, Sections, validate
from bilevel_rl.data.teachers import make_teacher
from bilevel_rl.followers import make_follower
from bilevel_rl.followers.base import Follower
from bilevel_rl.logging import MetricLogger
from bilevel_rl.objectives.base import Objective
from bilevel_rl.objectives.leader_reward import GAECritic, LeaderRewardObjective
from bilevel_rl.objectives.preferences import PreferenceObjective
from bilevel_rl.reward_models.base import EnvParameterModel, RewardModel
from bilevel_rl.reward_models.cnn import make_cnn_reward_model
from bilevel_rl.reward_models.mlp import make_reward_model
from bilevel_rl.reward_models.tax import TaxModel
from bilevel_rl.trainer import Trainer
from bilevel_rl.upper.base import rule_classes

log = logging.getLogger(__name__)

RUN_CONFIG = "run_config.yaml"


def load_run_config(run_dir: Path) -> DictConfig:
    """The resolved config a run directory was started with (one-line error if missing or unreadable)."""
    path = run_dir / RUN_CONFIG
    if not path.is_file():
        raise ConfigError(f"checkpoint.resume_from: {run_dir} holds no {RUN_CONFIG}; is it a bilevel-rl run directory?")
    try:
        saved = OmegaConf.load(path)
    except Exception as exc:  # noqa: BLE001 - YAML errors of several types
        raise ConfigError(f"checkpoint.resume_from: {path} is not valid YAML ({type(exc).__name__})") from None
    if not isinstance(saved, DictConfig) or "env" not in saved or "upper" not in saved:
        raise ConfigError(f"checkpoint.resume_from: {path} is not a bilevel-rl run config")
    return saved


def resolve_resume(cfg: DictConfig | None, run_dir: Path, cli_overrides: list[str]) -> DictConfig:
    """Config of a resumed run: the saved one, with the CLI's plain ``key=value`` overrides applied.

    A CLI override that changes the env, follower or upper rule is refused.
    """
    saved = load_run_config(run_dir)
    if cfg is not None and cfg.get("exp_name"):
        merged = cfg  # a full config was given on the CLI: use it, identity is checked against the saved one
    else:
        groups: list[DictConfig] = []
        dotlist = []
        for arg in cli_overrides:
            key, _, value = arg.partition("=")
            key = key.lstrip("+~")
            if key.startswith("hydra") or key == "checkpoint.resume_from":
                continue
            if key in GROUPS and key != "exp":  # a group choice, e.g. env=halfcheetah: merge that preset
                preset = OmegaConf.load(CONFIG_DIR / key / f"{value}.yaml")
                if isinstance(preset, DictConfig):
                    preset.pop("defaults", None)
                groups.append(OmegaConf.create({key: preset}))
            else:
                dotlist.append(f"{key}={value}")
        merged_any = OmegaConf.merge(saved, *groups, OmegaConf.from_dotlist(dotlist))
        assert isinstance(merged_any, DictConfig)
        merged = merged_any
    for key, label in (("env.id", "env"), ("follower.name", "follower"), ("upper.name", "upper")):
        old, new = OmegaConf.select(saved, key), OmegaConf.select(merged, key)
        if old != new:
            raise ConfigError(
                f"checkpoint.resume_from: the run used {key}={old}; "
                f"resuming with {key}={new} is refused ({label} changed)"
            )
    OmegaConf.update(merged, "checkpoint.resume_from", str(run_dir), force_add=True)
    return merged


def build_reward_model(s: Sections, spaces: dict[str, Any]) -> RewardModel:
    """The leader's model of ``reward_model=<preset>``: the MLP (vectors) or a paper CNN (Atari)."""
    rm, obs, act = s.reward_model, spaces["observation_space"], spaces["action_space"]
    if rm.name == "tax":
        return TaxModel(rm.initial_tax, rm.max_tax)
    if rm.name == "cnn":
        model: RewardModel = make_cnn_reward_model(rm.arch, obs, act, rm.per_action)
        model.normalize, model.center, model.target_std = rm.normalize, rm.center, rm.target_std
        return model
    model = make_reward_model("mlp", obs, act, tuple(rm.hidden_sizes), rm.use_action, rm.normalize, rm.normalize_inputs)
    if rm.zero_init:
        last = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1]
        torch.nn.init.zeros_(last.weight)
        torch.nn.init.zeros_(last.bias)
    return model


def build_objective(s: Sections, follower: Follower) -> Objective:
    """``objective=preferences`` (teacher + buffer) or ``objective=leader_reward`` (a GAE critic of ``r̄``)."""
    o = s.objective
    if o.name == "leader_reward":
        obs_dim = int(np.prod(follower.observation_space.shape or (1,)))
        critic = GAECritic(
            obs_dim, o.critic_hidden_sizes, o.critic_lr, o.critic_epochs, o.critic_batch_size, o.gae_lambda
        )
        gamma = o.gamma if o.gamma is not None else follower.gamma
        return LeaderRewardObjective(o, critic, follower_gamma=gamma)
    teacher = make_teacher(s.teacher.name, **{k: v for k, v in vars(s.teacher).items() if k != "name"})
    return PreferenceObjective(s.buffer, teacher)


def build_trainer(cfg: DictConfig, run_dir: Path, resume: bool = False, facts: dict[str, Any] | None = None) -> Trainer:
    """Construct the follower, reward model, rule, objective, logger and trainer of ``cfg``.

    Args:
        cfg: the composed config.
        run_dir: where the run writes.
        resume: continue from the newest intact checkpoint in ``run_dir``.
        facts: :func:`bilevel_rl.config.validate`'s result for ``cfg`` when the caller has it (``None``: validate).
    """
    if facts is None:
        facts = validate(cfg, require_exp=not resume)
    s: Sections = facts["sections"]
    torch.set_num_threads(int(cfg.torch_threads))
    seed = int(cfg.seed)
    set_random_seed(seed)
    f, t = s.follower, s.trainer
    follower = make_follower(
        f.name,
        s.env.id,
        s.env.n_envs,
        seed,
        {**f.algo_kwargs, "learning_rate": f.learning_rate},  # follower.learning_rate was ignored before 2026-12
        lr_schedule=f.lr_schedule,
        lr_horizon=f.lr_horizon,
        actor_lr=f.actor_lr,
        record_steps=max(t.steps_per_iter, t.initial_steps) // s.env.n_envs + 1,
        env_kwargs=dict(s.env.kwargs),
        device=str(cfg.device),
        atari=OmegaConf.to_container(cfg.env.atari, resolve=True) if cfg.env.atari is not None else None,
        eval_deterministic=f.eval_deterministic,
        reward_clip=f.reward_clip,
        learning_starts=t.initial_steps if f.freeze_initial else 0,
        visible_reward=s.env.visible_reward,
    )
    reward_model = build_reward_model(s, facts).to(str(cfg.device))
    if isinstance(reward_model, EnvParameterModel):  # incentive design: the envs read the leader's parameters
        follower.set_leader_source(reward_model.env_parameters)
    rule_cls, _ = rule_classes(s.upper.name)
    rule = rule_cls(s.upper)  # type: ignore[call-arg]
    objective = build_objective(s, follower)
    state = None
    if resume:
        try:
            _, state = newest_intact_checkpoint(run_dir)
        except CheckpointError as exc:
            follower.close()
            raise ConfigError(str(exc)) from None
    logger = MetricLogger(
        run_dir,
        wandb_mode=s.logger.mode,
        wandb_project=s.logger.project,
        wandb_group=cfg.exp_name,
        run_name=f"{cfg.exp_name}_{s.env.id}_seed{seed}".replace("/", "-").replace(":", "-"),
        config={str(k): v for k, v in OmegaConf.to_container(cfg, resolve=True).items()},  # type: ignore[union-attr]
        resume_step=int(state["env_steps"]) if state is not None else None,
    )
    meta = {"env_id": s.env.id, "follower": f.name, "upper": s.upper.name, "seed": seed}
    trainer = Trainer(
        t,
        s.checkpoint,
        follower,
        reward_model,
        rule,
        objective,
        logger,
        run_dir,
        seed,
        meta,
        progress=bool(cfg.progress),
    )
    if state is not None:
        trainer.load_state_dict(state)
        log.info("resumed at iteration %d, %d env steps", trainer.iteration, follower.num_timesteps)
    return trainer


def run(cfg: DictConfig, run_dir: Path, cli_overrides: list[str] | None = None) -> dict[str, float]:
    """Run (or resume) one experiment in ``run_dir``; return the final metrics."""
    plain = OmegaConf.create(OmegaConf.to_container(cfg, resolve=False, enum_to_str=True))
    assert isinstance(plain, DictConfig)
    cfg = plain  # choices as plain strings from here on
    resume = cfg.checkpoint.get("resume_from") is not None
    if resume:
        run_dir = Path(cfg.checkpoint.resume_from)
        cfg = resolve_resume(cfg, run_dir, cli_overrides or [])
    facts = validate(cfg, require_exp=not resume)  # refuse bad configs before writing anything
    if not resume:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / RUN_CONFIG).write_text(OmegaConf.to_yaml(cfg, resolve=True))
    t0 = time.time()
    trainer = build_trainer(cfg, run_dir, resume=resume, facts=facts)
    try:
        final = trainer.run()
        artifacts = trainer.objective.save_artifacts(run_dir)
    finally:
        trainer.logger.close()
        trainer.follower.close()
        for aux in trainer.rule.auxiliary_followers().values():
            aux.close()
    print(summary(run_dir, final, artifacts, time.time() - t0, trainer.follower.num_timesteps), flush=True)
    return final


_SUMMARY_KEYS = (
    ("eval/true_return", "true return (eval)"),
    ("eval/true_return_std", "  std over episodes"),
    ("reward_model/pref_accuracy", "preference accuracy (held out)"),
    ("reward_model/true_reward_corr", "corr(r_phi, true reward)"),
    ("reward_model/segment_return_corr", "corr(segment returns)"),
    ("buffer/total_labels", "labels queried"),
    ("eval/leader_return", "leader return (eval)"),
    ("shaping/mean_abs", "mean |shaping reward|"),
    ("shaping/dense_reward_corr", "corr(shaping, dense reward)"),
    ("time/sps", "follower steps/s"),
)


def summary(run_dir: Path, final: dict[str, float], artifacts: list[Path], seconds: float, env_steps: int) -> str:
    """The end-of-run report: where the outputs are, how to look at them, and the final metrics."""
    rows = [(label, final[key]) for key, label in _SUMMARY_KEYS if key in final and not math.isnan(final[key])]
    width = max((len(label) for label, _ in rows), default=0)
    files = [p for p in ("run_config.yaml", "metrics.csv", "checkpoints", "tb") if (run_dir / p).exists()]
    files += [p.name for p in artifacts]
    lines = [
        f"run finished: {env_steps} env steps in {seconds / 60:.1f} min",
        f"run directory: {run_dir}",
        f"  files: {', '.join(files)}",
        f"  curves: tensorboard --logdir {run_dir / 'tb'}   (or plot {run_dir / 'metrics.csv'})",
        f"  continue: bilevel-rl checkpoint.resume_from={run_dir} trainer.total_steps=<more>",
        "final metrics:",
    ]
    lines += [f"  {label:<{width}}  {value:.4g}" for label, value in rows]
    return "\n".join(lines)
