"""The leader seam: objectives, the frozen LeaderStep, capabilities, and module boundaries (issue [1/4] items 1-4)."""

import ast
import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from bilevel_rl.capabilities import Capability, CapabilityError, check_compatible
from bilevel_rl.upper.base import RULES, LeaderStep, UpperRule

ROOT = Path(__file__).resolve().parents[1] / "bilevel_rl"


def _imports(path):
    tree = ast.parse(path.read_text())
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    return out


def test_no_rule_imports_another_rule():
    rule_modules = {module for module, _, _ in RULES.values()}
    for module in rule_modules:
        path = ROOT.parent / (module.replace(".", "/") + ".py")
        siblings = _imports(path) & (rule_modules - {module})
        assert not siblings, f"{module} imports {siblings}"


def test_arrows_point_one_way():
    """upper/ and followers/ never import the trainer, the CLI or train; tabular imports no rule module."""
    for folder in ("upper", "followers", "objectives"):
        for path in (ROOT / folder).glob("*.py"):
            bad = {m for m in _imports(path) if m in ("bilevel_rl.trainer", "bilevel_rl.train", "bilevel_rl.cli")}
            assert not bad, (path, bad)


def test_followers_have_no_algo_switch():
    for path in (ROOT / "followers").glob("*.py"):
        assert "self.algo ==" not in path.read_text() and "self.algo in" not in path.read_text(), path


def test_leader_step_is_frozen_and_checks_its_data():
    step = LeaderStep(
        data=[1, 2], batch=None, iteration=3, epochs=1, rng=np.random.default_rng(0), generator=torch.Generator()
    )
    with pytest.raises(dataclasses.FrozenInstanceError):
        step.iteration = 4  # type: ignore[misc]
    with pytest.raises(TypeError, match="objective=preferences"):
        _ = step.preferences
    with pytest.raises(ValueError, match="upper=x needs the follower's on-policy batch"):
        step.on_policy_batch("x")


def test_check_compatible_names_capability_setting_and_follower():
    req = {Capability.GENERATIVE_MODEL: "upper.estimator=rollout; use upper.estimator=truncated"}
    with pytest.raises(CapabilityError) as err:
        check_compatible("sobirl", req, "sac", {Capability.TEMPERATURE})
    assert str(err.value) == (
        "upper=sobirl needs a generative model (reset to an arbitrary state), which follower=sac lacks "
        "(upper.estimator=rollout; use upper.estimator=truncated)"
    )
    check_compatible("sobirl", req, "tabular", {Capability.GENERATIVE_MODEL})


def test_attach_refuses_a_live_follower_that_lacks_a_requirement():
    """The same check runs at attach, on the live follower (here PPO whose ent_coef is 0)."""
    from bilevel_rl.followers import make_follower
    from bilevel_rl.upper.base import make_rule

    follower = make_follower("ppo", "CartPole-v1", 1, 0, {"n_steps": 32, "batch_size": 32, "ent_coef": 0.0})
    try:
        assert Capability.TEMPERATURE not in follower.capabilities
        with pytest.raises(CapabilityError, match="upper=hpgd needs an entropy temperature"):
            make_rule("hpgd", {}).attach(follower, None)  # type: ignore[arg-type]
    finally:
        follower.close()


class _Recorder(UpperRule):
    """A rule that records what it receives."""

    name = "recorder"

    def __init__(self):
        super().__init__()
        self.steps = []

    def update(self, step):
        self.steps.append(step)
        step.generator.manual_seed(123)  # the trainer's generator is the rule's to use
        return {"upper/loss": 0.0}

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass


def test_the_trainer_hands_the_rule_one_leader_step_per_iteration_with_the_objectives_data(tmp_path):
    """learn → gather → leader(LeaderStep) → diagnose → evaluate → log → checkpoint, with the objective's data."""
    from bilevel_rl.data.teachers import OracleTeacher
    from bilevel_rl.objectives.preferences import PreferenceObjective, PreferenceObjectiveConfig
    from bilevel_rl.tabular.lab.rule_lab import make_rule_lab
    from bilevel_rl.trainer import TrainerConfig
    from tests.tabular_helpers import run_trainer

    lab = make_rule_lab(seed=0, episode_length=10, n_envs=2)
    objective = PreferenceObjective(
        PreferenceObjectiveConfig(
            segment_length=3, initial_pairs=8, pairs_per_iter=4, warmup_epochs=2, epochs_per_iter=1
        ),
        OracleTeacher(),
    )
    rule = _Recorder()
    config = TrainerConfig(total_steps=60, steps_per_iter=20, initial_steps=20, eval_episodes=1)
    trainer = run_trainer(config, lab.follower, lab.reward_model, rule, objective, tmp_path)
    assert [s.iteration for s in rule.steps] == [0, 1, 2]
    assert [s.epochs for s in rule.steps] == [2, 1, 1]
    assert all(s.data is objective.data and s.batch is not None for s in rule.steps)
    assert len(objective.data) == 8 + 4 + 4
    state = trainer.state_dict()
    assert torch.equal(state["leader_generator"], torch.Generator().manual_seed(123).get_state())
    assert set(state) >= {"follower", "rule", "objective", "reward_model", "leader_generator", "trainer_rng"}


def test_leader_samples_come_from_the_leader_generator_not_the_global_torch_stream():
    """SoBiRL with Box actions samples a' ~ π for E_a' r(s, a'): with LeaderStep.generator, never torch's global RNG."""
    from bilevel_rl.data.preference_buffer import PreferenceBuffer
    from bilevel_rl.data.segments import make_pairs, stack_pairs
    from bilevel_rl.followers import make_follower
    from bilevel_rl.reward_models.mlp import MLPRewardModel
    from bilevel_rl.upper.base import make_rule
    from tests.helpers import leader_step

    follower = make_follower("sac", "Pendulum-v1", 1, 0, {"learning_starts": 20, "batch_size": 16, "buffer_size": 500})
    try:
        model = MLPRewardModel(follower.observation_space, follower.action_space, hidden_sizes=(16,))
        follower.set_reward_model(model)
        follower.learn(120)
        batch = follower.collect(120)
        rng = np.random.default_rng(0)
        first, second = make_pairs(batch, 5, 16, rng)
        buffer = PreferenceBuffer(16)
        buffer.add(stack_pairs(first, second, (first.true_returns() > second.true_returns()).astype(np.float32), 1))
        updates = []
        for seed in (0, 0, 1):
            rule = make_rule("sobirl", {"batch_size": 16})
            rule.attach(follower, model)
            state = {k: v.clone() for k, v in model.state_dict().items()}
            before = torch.get_rng_state()
            rule.update(leader_step(buffer, 1, np.random.default_rng(0), batch=batch, iteration=1, seed=seed))
            assert torch.equal(torch.get_rng_state(), before)  # the follower's stream is untouched
            updates.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
            model.load_state_dict(state)
        assert torch.equal(updates[0], updates[1]) and not torch.equal(updates[0], updates[2])
    finally:
        follower.close()


def test_no_two_classes_share_a_name_and_no_module_exceeds_600_lines():
    names: dict[str, list[str]] = {}
    for path in ROOT.rglob("*.py"):
        text = path.read_text()
        assert len(text.splitlines()) <= 600, f"{path} has {len(text.splitlines())} lines"
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.ClassDef):
                names.setdefault(node.name, []).append(str(path.relative_to(ROOT)))
    assert {n: p for n, p in names.items() if len(p) > 1} == {}


def test_the_penalty_schedule_is_the_one_the_tabular_reproduction_uses():
    from bilevel_rl import schedules
    from bilevel_rl.upper.pbrl import PBRLConfig

    c = PBRLConfig(lam=2.0, lam_schedule="geometric", lam_growth=2.0, lam_every=3, lam_max=10.0)
    for k in range(1, 12):
        assert c.lam_at(k) == schedules.penalty_constant(k - 1, 2.0, "geometric", 2.0, 3, 10.0)
    tabular = [p for p in (ROOT / "tabular").rglob("*.py") if "penalty_constant" in p.read_text()]
    assert tabular, "the tabular PBRL reproduction should draw its λ_k from bilevel_rl.schedules"
