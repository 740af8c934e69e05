"""The config schema: one dataclass per config section, registered with Hydra's ConfigStore.

Rules and the preference buffer keep their dataclasses next to their code (``bilevel_rl/upper/*.py``,
:class:`~bilevel_rl.objectives.preferences.PreferenceObjectiveConfig`); the sections below have no other home. Each
option file in ``configs/<group>/`` starts from its schema (``defaults: [/schema/<group>/<name>@_here_]``) and
sets only what differs from the dataclass defaults, so Hydra refuses unknown keys, wrong types and bad choices
while composing, and the dataclasses' ``__post_init__`` refuse out-of-range values (:mod:`bilevel_rl.schema`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from hydra.core.config_store import ConfigStore

from bilevel_rl.envs.atari import AtariConfig
from bilevel_rl.envs.visible_reward import VisibleRewardConfig
from bilevel_rl.objectives.leader_reward import LeaderRewardConfig
from bilevel_rl.objectives.preferences import PreferenceObjectiveConfig
from bilevel_rl.schema import check_dataclass, check_range, structured
from bilevel_rl.trainer import CheckpointConfig, TrainerConfig
from bilevel_rl.upper.base import RULES, rule_classes


@dataclass
class EnvConfig:
    """Config group ``env``.

    Attributes:
        id: a gymnasium id (``Hopper-v5``, ``ALE/Seaquest-v5``) or ``module:EnvId`` for an env in your module.
        n_envs: parallel environments.
        kwargs: extra ``gym.make`` keyword arguments.
        atari: ALE pre-processing (``null`` for non-Atari ids; an ALE id without it gets the defaults).
        visible_reward: the env reward a follower trains on when it trains on the env's reward (``dense``, or
            ``delayed`` / ``sparse`` as in LIRPG's delayed-reward MuJoCo; :mod:`bilevel_rl.envs.visible_reward`).
    """

    id: str = "Hopper-v5"
    n_envs: int = 1
    kwargs: dict[str, Any] = field(default_factory=dict)
    atari: AtariConfig | None = None
    visible_reward: VisibleRewardConfig = field(default_factory=VisibleRewardConfig)

    def __post_init__(self) -> None:
        check_dataclass(self, "env")
        check_range(self, "env", "n_envs", low=1, strict=False)


@dataclass
class FollowerConfig:
    """Config group ``follower`` (SB3 SAC / discrete SAC / soft DQN / PPO / A2C).

    Attributes:
        name: the algorithm: ``sac`` (Box actions), ``dsac`` (discrete SAC), ``soft_dqn`` (regularised DQN at a fixed
            temperature, ``algo_kwargs.temperature``), ``ppo``, ``a2c``.
        learning_rate: learning rate (SAC: critic and temperature; soft DQN: the Q-network).
        actor_lr: SAC only: a separate actor learning rate (``null``: ``learning_rate``; SoBiRL App. J.2: 3e-4).
        lr_schedule: ``constant``, or ``linear`` decay to 0 at ``lr_horizon`` env steps (SoBiRL App. J.2: 8e6).
        lr_horizon: env steps of the linear schedule (``null``: ``trainer.total_steps``).
        eval_deterministic: evaluate the greedy policy (``false``: sample, as the SoBiRL code's Atari scores).
        reward_clip: off-policy image followers: clamp relabelled rewards to ``[-c, c]`` (SoBiRL code: 1).
        freeze_initial: PPO/A2C: no gradient update during ``trainer.initial_steps`` (PBRL App. E.2 warm-up pairs
            come from the initial policy).
        algo_kwargs: keyword arguments of the SB3 algorithm (checked against its constructor).
    """

    name: Literal["sac", "dsac", "soft_dqn", "ppo", "a2c"] = "sac"
    learning_rate: float = 3e-4
    actor_lr: float | None = None
    lr_schedule: Literal["constant", "linear"] = "constant"
    lr_horizon: int | None = None
    eval_deterministic: bool = True
    reward_clip: float | None = None
    freeze_initial: bool = False
    algo_kwargs: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_dataclass(self, "follower")
        check_range(self, "follower", "learning_rate", "actor_lr", "reward_clip", "lr_horizon")


@dataclass
class MLPRewardConfig:
    """Config option ``reward_model=mlp``: ``r_φ(s, a)`` an MLP (Christiano et al. 2017, MuJoCo: 2×64, leaky ReLU).

    Attributes:
        name: ``mlp``.
        hidden_sizes: hidden layer widths.
        use_action: feed the action (``false``: ``r_φ(s)``).
        normalize: the follower sees ``r / std(r)`` on recent transitions (scale only).
        normalize_inputs: standardise observations with statistics fitted once on the initial transitions.
        zero_init: start the output layer at zero, so ``r_φ ≡ 0`` at first (a shaping reward that starts neutral).
    """

    name: Literal["mlp"] = "mlp"
    hidden_sizes: tuple[int, ...] = (64, 64)
    use_action: bool = True
    normalize: bool = True
    normalize_inputs: bool = True
    zero_init: bool = False

    def __post_init__(self) -> None:
        check_dataclass(self, "reward_model")
        if not self.hidden_sizes or any(int(h) < 1 for h in self.hidden_sizes):
            raise ValueError(f"reward_model.hidden_sizes: must be positive widths, got {list(self.hidden_sizes)}")


@dataclass
class CNNRewardConfig:
    """Config options ``reward_model=cnn_sobirl|cnn_pbrl``: the papers' Atari reward CNNs.

    Attributes:
        name: ``cnn``.
        arch: ``sobirl`` (SoBiRL App. J.2) or ``pbrl`` (PBRL App. E.2).
        per_action: one output per action (both papers); ``false``: state-only ``r(s)`` (Christiano et al. 2017).
        normalize: the follower sees ``target_std · (r − center·mean(r)) / std(r)`` of the latest transitions.
        center: remove the mean too (Christiano et al. 2017, Atari).
        target_std: std of the follower's reward.
    """

    name: Literal["cnn"] = "cnn"
    arch: Literal["sobirl", "pbrl"] = "sobirl"
    per_action: bool = True
    normalize: bool = True
    center: bool = True
    target_std: float = 1.0

    def __post_init__(self) -> None:
        check_dataclass(self, "reward_model")
        check_range(self, "reward_model", "target_std")


@dataclass
class TaxModelConfig:
    """Config option ``reward_model=tax``: the tax designer of HPGD §5.2 (``env.id=TaxDesign-v0``).

    Attributes:
        name: ``tax``.
        initial_tax: every rate at the start (App. F.3.1: 0.3).
        max_tax: rates are ``max_tax · sigmoid(w)`` (App. F.3.1 and the authors' code: 2; §5.2 says 3).
    """

    name: Literal["tax"] = "tax"
    initial_tax: float = 0.3
    max_tax: float = 2.0

    def __post_init__(self) -> None:
        check_dataclass(self, "reward_model")
        check_range(self, "reward_model", "max_tax")
        if not 0.0 < self.initial_tax < self.max_tax:
            raise ValueError(
                f"reward_model.initial_tax: must be in (0, max_tax={self.max_tax}), got {self.initial_tax}"
            )


@dataclass
class OracleTeacherConfig:
    """``teacher=oracle``: the higher true segment return wins; returns within ``tie_tolerance`` tie (label 0.5)."""

    name: Literal["oracle"] = "oracle"
    tie_tolerance: float = 0.0

    def __post_init__(self) -> None:
        check_dataclass(self, "teacher")
        check_range(self, "teacher", "tie_tolerance", strict=False)


@dataclass
class BradleyTerryTeacherConfig:
    """``teacher=bradley_terry``: ``y ~ Bernoulli(σ((R0 − R1)/temperature))`` (the SoBiRL authors' code).

    ``teacher=noisy`` is this schema at ``temperature = 1``: B-Pref's stochastic teacher with rationality ``β = 1``
    (``β = 1/temperature``).
    """

    name: Literal["bradley_terry"] = "bradley_terry"
    temperature: float = 1.0
    clip: float = 50.0

    def __post_init__(self) -> None:
        check_dataclass(self, "teacher")
        check_range(self, "teacher", "temperature", "clip")


@dataclass
class MistakeTeacherConfig:
    """``teacher=mistake`` (B-Pref): the oracle's label, flipped with probability ``flip_prob`` (B-Pref: 0.1)."""

    name: Literal["mistake"] = "mistake"
    flip_prob: float = 0.1

    def __post_init__(self) -> None:
        check_dataclass(self, "teacher")
        if not 0.0 <= self.flip_prob <= 1.0:
            raise ValueError(f"teacher.flip_prob: must be in [0, 1], got {self.flip_prob}")


@dataclass
class MyopicTeacherConfig:
    """``teacher=myopic`` (B-Pref): the oracle on ``Σ_t gamma^(H−1−t) r_t``, later steps weigh more (0.9)."""

    name: Literal["myopic"] = "myopic"
    gamma: float = 0.9

    def __post_init__(self) -> None:
        check_dataclass(self, "teacher")
        if not 0.0 < self.gamma <= 1.0:
            raise ValueError(f"teacher.gamma: must be in (0, 1], got {self.gamma}")


@dataclass
class ThresholdTeacherConfig:
    """The relative threshold of B-Pref's ``skip`` and ``equal`` teachers (their shared fields).

    Attributes:
        eps: the threshold as a fraction of the mean true return of an ``H``-step segment of the newest batch (0.1).
        square_eps_after_first: B-Pref's code: ``eps²`` instead of ``eps`` after the first round of queries.
    """

    eps: float = 0.1
    square_eps_after_first: bool = False

    def __post_init__(self) -> None:
        check_dataclass(self, "teacher")
        check_range(self, "teacher", "eps", strict=False)


@dataclass
class SkipTeacherConfig(ThresholdTeacherConfig):
    """``teacher=skip`` (B-Pref): skip a query when both returns are ``<= eps ·`` the mean recent segment return."""

    name: Literal["skip"] = "skip"


@dataclass
class EqualTeacherConfig(ThresholdTeacherConfig):
    """``teacher=equal`` (B-Pref): label 0.5 when the returns differ by ``< eps ·`` the mean recent segment return."""

    name: Literal["equal"] = "equal"


@dataclass
class PreferencesObjectiveConfig:
    """Config option ``objective=preferences``: RLHF from teacher labels (settings in ``buffer`` and ``teacher``)."""

    name: Literal["preferences"] = "preferences"

    def __post_init__(self) -> None:
        check_dataclass(self, "objective")


@dataclass
class LoggerConfig:
    """Config group ``logger``: wandb mode (``metrics.csv`` and TensorBoard are always written)."""

    mode: Literal["disabled", "online", "offline"] = "disabled"
    project: str = "bilevel_rl"

    def __post_init__(self) -> None:
        check_dataclass(self, "logger")


@dataclass
class RunConfig:
    """The root config.

    Attributes:
        exp_name: set by every ``exp`` preset; training refuses to start without one.
        seed: one seed fans out to torch, numpy generators, envs and SB3.
        device: ``cpu`` or ``cuda[:N]``.
        torch_threads: torch threads per run (run seeds in parallel instead of giving one run more).
        progress: tqdm progress bar on stderr.
        run_root: where run directories go.
    """

    exp_name: str | None = None
    seed: int = 0
    device: str = "cpu"
    torch_threads: int = 1
    progress: bool = True
    run_root: str = "runs"
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    env: EnvConfig = field(default_factory=EnvConfig)
    follower: FollowerConfig = field(default_factory=FollowerConfig)
    objective: Any = None
    buffer: PreferenceObjectiveConfig = field(default_factory=PreferenceObjectiveConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    reward_model: Any = None
    teacher: Any = None
    upper: Any = None


SECTIONS: dict[str, type] = {
    "trainer": TrainerConfig,
    "checkpoint": CheckpointConfig,
    "env": EnvConfig,
    "follower": FollowerConfig,
    "buffer": PreferenceObjectiveConfig,
    "logger": LoggerConfig,
}
"""Sections with one schema each; ``objective``, ``reward_model``, ``teacher``, ``upper`` choose theirs by ``name``."""

OPTION_SCHEMAS: dict[str, dict[str, type]] = {
    "objective": {"preferences": PreferencesObjectiveConfig, "leader_reward": LeaderRewardConfig},
    "reward_model": {"mlp": MLPRewardConfig, "cnn": CNNRewardConfig, "tax": TaxModelConfig},
    "teacher": {
        "oracle": OracleTeacherConfig,
        "bradley_terry": BradleyTerryTeacherConfig,  # also teacher=noisy (B-Pref's stochastic teacher, β = 1)
        "mistake": MistakeTeacherConfig,
        "myopic": MyopicTeacherConfig,
        "skip": SkipTeacherConfig,
        "equal": EqualTeacherConfig,
    },
}


def register_schemas() -> None:
    """Store every schema in Hydra's ConfigStore (idempotent): the root as ``schema``, options as ``schema/<group>``."""
    cs = ConfigStore.instance()
    cs.store(name="schema", node=structured(RunConfig))
    for group, options in OPTION_SCHEMAS.items():
        for name, cls in options.items():
            cs.store(group=f"schema/{group}", name=name, node=structured(cls))
    for name in RULES:
        cs.store(group="schema/upper", name=name, node=structured(rule_classes(name)[1]))
