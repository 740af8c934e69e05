"""Build every component from a composed config and run the trainer."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from stable_baselines3.common.utils import set_random_seed

from bilevel_rl.checkpoint import latest_checkpoint
from bilevel_rl.config import CONFIG_DIR, GROUPS, ConfigError, validate
from bilevel_rl.data.preference_buffer import PreferenceBuffer
from bilevel_rl.data.teachers import make_teacher
from bilevel_rl.followers.sb3 import make_follower
from bilevel_rl.logging import MetricLogger
from bilevel_rl.reward_models.base import RewardModel
from bilevel_rl.reward_models.cnn import make_cnn_reward_model
from bilevel_rl.reward_models.mlp import make_reward_model
from bilevel_rl.trainer import Trainer, TrainerConfig
from bilevel_rl.upper.base import make_rule

log = logging.getLogger(__name__)

RUN_CONFIG = "run_config.yaml"


def _container(node: Any) -> Any:
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node


def resolve_resume(cfg: DictConfig, run_dir: Path, cli_overrides: list[str]) -> DictConfig:
    """Config of a resumed run: the saved one, with the CLI's plain ``key=value`` overrides applied.

    A CLI override that changes the env, follower or upper rule is refused.
    """
    saved_path = run_dir / RUN_CONFIG
    if not saved_path.exists():
        raise ConfigError(f"checkpoint.resume_from: {run_dir} holds no {RUN_CONFIG}; is it a bilevel-rl run directory?")
    saved = OmegaConf.load(saved_path)
    assert isinstance(saved, DictConfig)
    if cfg.get("exp_name"):
        merged = cfg  # a full config was given on the CLI: use it, identity is checked against the checkpoint
    else:
        groups: list[DictConfig] = []
        dotlist = []
        for arg in cli_overrides:
            key, _, value = arg.partition("=")
            key = key.lstrip("+~")
            if key.startswith("hydra.") or key == "checkpoint.resume_from":
                continue
            if key in GROUPS and key != "exp":  # a group choice, e.g. env=halfcheetah: merge that preset
                preset = OmegaConf.load(CONFIG_DIR / key / f"{value}.yaml")
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


def build_reward_model(rm_cfg: DictConfig, spaces: dict[str, Any]) -> RewardModel:
    """The reward model of ``reward_model=<preset>``: ``mlp`` (vectors) or ``cnn`` (Atari, ``arch`` sobirl|pbrl)."""
    if rm_cfg.name == "cnn":  # (arch validated in config.validate)
        model: RewardModel = make_cnn_reward_model(
            str(rm_cfg.arch),  # type: ignore[arg-type]
            spaces["observation_space"],
            spaces["action_space"],
            bool(rm_cfg.get("per_action", True)),
        )
        model.normalize = bool(rm_cfg.normalize)
        model.center = bool(rm_cfg.get("center", False))
        model.target_std = float(rm_cfg.get("target_std", 1.0))
        return model
    return make_reward_model(
        rm_cfg.name,
        spaces["observation_space"],
        spaces["action_space"],
        tuple(rm_cfg.hidden_sizes),
        bool(rm_cfg.use_action),
        bool(rm_cfg.normalize),
        bool(rm_cfg.normalize_inputs),
    )


def build_trainer(cfg: DictConfig, run_dir: Path, resume: bool = False) -> Trainer:
    """Validate ``cfg`` and construct the follower, reward model, rule, teacher, buffer, logger and trainer."""
    spaces = validate(cfg, require_exp=not resume)
    torch.set_num_threads(int(cfg.torch_threads))
    seed = int(cfg.seed)
    set_random_seed(seed)
    f = cfg.follower
    follower = make_follower(
        f.name,
        cfg.env.id,
        int(cfg.env.n_envs),
        seed,
        _container(f.algo_kwargs),
        lr_schedule=f.lr_schedule,
        lr_horizon=f.lr_horizon,
        actor_lr=f.actor_lr,
        record_steps=max(int(cfg.trainer.steps_per_iter), int(cfg.trainer.initial_steps)) // int(cfg.env.n_envs) + 1,
        env_kwargs=_container(cfg.env.kwargs),
        device=cfg.device,
        atari=_container(OmegaConf.select(cfg, "env.atari")),
        eval_deterministic=bool(f.get("eval_deterministic", True)),
        reward_clip=f.get("reward_clip"),
        learning_starts=int(cfg.trainer.initial_steps) if f.get("freeze_initial", False) else 0,
    )
    reward_model = build_reward_model(cfg.reward_model, spaces).to(cfg.device)
    upper_params = {k: v for k, v in _container(cfg.upper).items() if k != "name"}
    rule = make_rule(cfg.upper.name, upper_params)
    teacher_params = {k: v for k, v in _container(cfg.teacher).items() if k != "name"}
    teacher = make_teacher(cfg.teacher.name, **teacher_params)
    b, t = cfg.buffer, cfg.trainer
    tconf = TrainerConfig(
        total_steps=int(t.total_steps),
        steps_per_iter=int(t.steps_per_iter),
        initial_steps=int(t.initial_steps),
        segment_length=int(b.segment_length),
        initial_pairs=int(b.initial_pairs),
        pairs_per_iter=int(b.pairs_per_iter),
        warmup_epochs=int(b.warmup_epochs),
        epochs_per_iter=int(b.epochs_per_iter),
        eval_every=int(t.eval_every),
        eval_episodes=int(t.eval_episodes),
        checkpoint_every=int(cfg.checkpoint.every),
        checkpoint_keep=int(cfg.checkpoint.keep),
        video_every=int(t.video_every),
        video_length=int(t.video_length),
    )
    resume_step = None
    ckpt = None
    if resume:
        ckpt = latest_checkpoint(run_dir)
        if ckpt is None:
            raise ConfigError(f"checkpoint.resume_from: no checkpoint found in {run_dir / 'checkpoints'}")
        resume_step = int(ckpt.name.split("_")[-1])
    logger = MetricLogger(
        run_dir,
        wandb_mode=cfg.logger.mode,
        wandb_project=cfg.logger.project,
        wandb_group=cfg.exp_name,
        run_name=f"{cfg.exp_name}_{cfg.env.id}_seed{seed}".replace("/", "-"),
        config=_container(cfg),
        resume_step=resume_step,
    )
    meta = {"env_id": cfg.env.id, "follower": f.name, "upper": cfg.upper.name, "seed": seed}
    try:
        trainer = Trainer(
            tconf,
            follower,
            reward_model,
            rule,
            teacher,
            PreferenceBuffer(int(b.capacity)),
            logger,
            run_dir,
            seed,
            meta=meta,
            progress=bool(cfg.progress),
        )
    except (ValueError, NotImplementedError) as exc:  # a rule refusing this follower at attach()
        logger.close()
        follower.close()
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigError(f"upper={cfg.upper.name} with follower={f.name}: {msg}") from None
    if ckpt is not None:
        trainer.load(ckpt)
        log.info("resumed from %s (iteration %d, %d env steps)", ckpt, trainer.iteration, follower.num_timesteps)
    return trainer


def run(cfg: DictConfig, run_dir: Path, cli_overrides: list[str] | None = None) -> dict[str, float]:
    """Run (or resume) one experiment in ``run_dir``; return the final metrics."""
    resume = cfg.checkpoint.get("resume_from") is not None
    if resume:
        run_dir = Path(cfg.checkpoint.resume_from)
        cfg = resolve_resume(cfg, run_dir, cli_overrides or [])
    else:
        validate(cfg)  # refuse bad configs before writing anything
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / RUN_CONFIG).write_text(OmegaConf.to_yaml(cfg, resolve=True))
    trainer = build_trainer(cfg, run_dir, resume=resume)
    try:
        final = trainer.run()
        trainer.buffer.save(run_dir / "preferences.npz")
    finally:
        trainer.logger.close()
        trainer.follower.close()
        for aux in trainer.rule.auxiliary_followers().values():
            aux.close()
    log.info("done: %s", {k: round(v, 4) for k, v in final.items() if k.startswith(("eval/", "reward_model/"))})
    return final
