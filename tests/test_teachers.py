"""B-Pref's simulated teachers (Lee et al. 2021): hand-computed labels, statistics, skipping, configs, CLI."""

import math

import gymnasium as gym
import numpy as np
import pandas as pd
import pytest

from bilevel_rl.config import ConfigError, build_sections, compose
from bilevel_rl.config_schema import (
    BradleyTerryTeacherConfig,
    EqualTeacherConfig,
    MistakeTeacherConfig,
    MyopicTeacherConfig,
    SkipTeacherConfig,
)
from bilevel_rl.data.teachers import (
    BradleyTerryTeacher,
    EqualTeacher,
    MistakeTeacher,
    MyopicTeacher,
    OracleTeacher,
    SkipTeacher,
    make_teacher,
)
from bilevel_rl.objectives.preferences import PreferenceObjective, PreferenceObjectiveConfig
from bilevel_rl.reward_models.mlp import MLPRewardModel
from tests.conftest import make_batch
from tests.helpers import cli, one_thread, tiny  # noqa: F401 - one_thread is an autouse fixture

# four pairs: first better, second better, exact tie, first better by 1
RETURNS = np.array([[3.0, 1.0], [0.0, 2.0], [1.5, 1.5], [5.0, 4.0]])


def _teacher(overrides):
    """The teacher a run with ``overrides`` builds (compose + schema checks + make_teacher, as train.py does)."""
    section = build_sections(compose(["exp=quickstart", "env=pendulum", *overrides])).teacher
    return section, make_teacher(section.name, **{k: v for k, v in vars(section).items() if k != "name"})


# ---------------------------------------------------------------- configs: the five teachers with B-Pref's values
def test_each_config_builds_its_teacher_with_bprefs_parameters():
    section, teacher = _teacher(["teacher=noisy"])  # β = 1/temperature = 1
    assert isinstance(section, BradleyTerryTeacherConfig) and isinstance(teacher, BradleyTerryTeacher)
    assert teacher.temperature == 1.0
    section, teacher = _teacher(["teacher=mistake"])
    assert isinstance(section, MistakeTeacherConfig) and isinstance(teacher, MistakeTeacher)
    assert teacher.flip_prob == 0.1
    section, teacher = _teacher(["teacher=myopic"])
    assert isinstance(section, MyopicTeacherConfig) and isinstance(teacher, MyopicTeacher)
    assert teacher.gamma == 0.9
    for name, schema, cls in (("skip", SkipTeacherConfig, SkipTeacher), ("equal", EqualTeacherConfig, EqualTeacher)):
        section, teacher = _teacher([f"teacher={name}"])
        assert isinstance(section, schema) and isinstance(teacher, cls)
        assert teacher.eps == 0.1 and teacher.square_eps_after_first is False and teacher.threshold == 0.0


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (["teacher=mistake", "teacher.flip_prob=1.5"], "teacher.flip_prob"),
        (["teacher=mistake", "teacher.flip_prob=-0.1"], "teacher.flip_prob"),
        (["teacher=myopic", "teacher.gamma=0"], "teacher.gamma"),
        (["teacher=myopic", "teacher.gamma=1.1"], "teacher.gamma"),
        (["teacher=skip", "teacher.eps=-0.1"], "teacher.eps"),
        (["teacher=equal", "teacher.eps=-1"], "teacher.eps"),
        (["teacher=skip", "teacher.square_eps_after_first=sometimes"], "teacher.square_eps_after_first"),
        (["teacher=skip", "teacher.flip_prob=0.1"], "teacher.flip_prob"),  # a key of another teacher
        (["teacher=noisy", "teacher.temperature=0"], "teacher.temperature"),
    ],
    ids=lambda v: " ".join(v) if isinstance(v, list) else v,
)
def test_bad_teacher_configs_are_refused_in_one_line_naming_the_key(overrides, key):
    with pytest.raises(ConfigError) as info:
        _teacher(overrides)
    message = str(info.value)
    assert key in message and "\n" not in message, message


def test_the_teacher_classes_refuse_bad_values_too():
    for make, key in (
        (lambda: MistakeTeacher(flip_prob=2.0), "teacher.flip_prob"),
        (lambda: MyopicTeacher(gamma=0.0), "teacher.gamma"),
        (lambda: SkipTeacher(eps=-0.5), "teacher.eps"),
        (lambda: EqualTeacher(eps=-0.5), "teacher.eps"),
    ):
        with pytest.raises(ValueError, match=key):
            make()


# ---------------------------------------------------------------- noisy (stochastic, β = 1)
def test_noisy_labels_follow_bradley_terry_with_beta_one():
    """P(first preferred) = σ(β (R0 − R1)) with β = 1.

    20000 draws per difference: the standard error of a frequency is at most sqrt(0.25 / 20000) = 0.0035; the
    tolerance 0.015 is > 4 standard errors.
    """
    _, teacher = _teacher(["teacher=noisy"])
    diffs = np.array([0.0, 1.0, -2.0, 3.0])  # σ(d) = 0.5, 0.7311, 0.1192, 0.9526
    n = 20000
    returns = np.stack([np.repeat(diffs, n), np.zeros(4 * n)], axis=1)
    labels = teacher.label(returns, np.random.default_rng(1)).reshape(4, n)
    assert set(np.unique(labels)) <= {0.0, 1.0}
    np.testing.assert_allclose(labels.mean(axis=1), [0.5, 0.7311, 0.1192, 0.9526], atol=0.015)


# ---------------------------------------------------------------- mistake
def test_mistake_flips_the_oracles_label():
    rng = np.random.default_rng(0)
    oracle = [1.0, 0.0, 0.5, 1.0]  # 3 > 1, 0 < 2, tie, 5 > 4
    np.testing.assert_array_equal(OracleTeacher().label(RETURNS, rng), oracle)
    np.testing.assert_array_equal(MistakeTeacher(flip_prob=0.0).label(RETURNS, rng), oracle)
    np.testing.assert_array_equal(MistakeTeacher(flip_prob=1.0).label(RETURNS, rng), [0.0, 1.0, 0.5, 0.0])
    # one uniform draw per query, flipped where it is < 0.1 (B-Pref: rand <= eps): the same draws by hand
    u = np.random.default_rng(7).random(4)
    expected = [1 - y if draw < 0.1 else y for y, draw in zip(oracle, u, strict=True)]
    np.testing.assert_array_equal(MistakeTeacher(0.1).label(RETURNS, np.random.default_rng(7)), expected)


def test_mistake_flip_rate_is_ten_percent():
    """40000 decided pairs: the flip frequency has standard error sqrt(0.1 · 0.9 / 40000) = 0.0015; tolerance 0.006."""
    rng = np.random.default_rng(3)
    returns = rng.normal(size=(40000, 2))
    _, teacher = _teacher(["teacher=mistake"])
    labels = teacher.label(returns, np.random.default_rng(4))
    flipped = labels != OracleTeacher().label(returns, rng)
    assert abs(flipped.mean() - 0.1) < 0.006


# ---------------------------------------------------------------- myopic
def test_myopic_weighs_later_steps_more(rng):
    """γ = 0.9, H = 3: weights γ^(H−1−t) = [0.81, 0.9, 1] for t = 0, 1, 2."""
    rewards = np.array(
        [
            [[1.0, 0.0, 0.0], [0.0, 0.0, 0.85]],  # myopic: 0.81 < 0.85 -> second; oracle: 1 > 0.85 -> first
            [[0.0, 0.0, 1.0], [0.0, 1.05, 0.0]],  # myopic: 1.0 > 0.945 -> first; oracle: 1 < 1.05 -> second
            [[2.0, 0.0, 0.0], [1.0, 1.0, 0.0]],  # myopic: 1.62 < 0.81 + 0.9 = 1.71 -> second; oracle: tie
        ]
    )
    mask = np.ones_like(rewards)
    teacher = MyopicTeacher()
    returns = teacher.segment_returns(rewards, mask)
    np.testing.assert_allclose(returns, [[0.81, 0.85], [1.0, 0.945], [1.62, 1.71]])
    np.testing.assert_array_equal(teacher.label(returns, np.random.default_rng(0)), [0.0, 1.0, 0.0])
    oracle = OracleTeacher()
    np.testing.assert_array_equal(oracle.label(oracle.segment_returns(rewards, mask), rng), [1.0, 0.0, 0.5])
    # B-Pref's code (get_label): for i in 0 .. H-2, r[:, :i+1] *= γ -- the same weights
    bpref = rewards.copy()
    for i in range(rewards.shape[-1] - 1):
        bpref[..., : i + 1] *= 0.9
    np.testing.assert_allclose(bpref.sum(axis=-1), returns)


def test_myopic_ties_and_masked_steps(rng):
    """γ = 0.5 (exact in binary): weights [0.25, 0.5, 1]; a masked (padded) step counts nothing."""
    rewards = np.array([[[0.0, 1.0, 0.0], [0.0, 0.0, 0.5]], [[4.0, 0.0, 9.0], [0.0, 0.0, 0.9]]])
    mask = np.array([[[1, 1, 1], [1, 1, 1]], [[1, 1, 0], [1, 1, 1]]], dtype=np.float64)
    teacher = MyopicTeacher(gamma=0.5)
    returns = teacher.segment_returns(rewards, mask)
    np.testing.assert_array_equal(returns, [[0.5, 0.5], [1.0, 0.9]])  # 4·0.25 (9 is masked) vs 0.9·1
    np.testing.assert_array_equal(teacher.label(returns, rng), [0.5, 1.0])


# ---------------------------------------------------------------- skip and equal: thresholds δ = ε · m
def test_thresholds_follow_the_paper_or_optionally_bprefs_code():
    """m = 10 then 20; ε = 0.1. Paper: δ = ε·m every round (1, 2). B-Pref's code: ε·m first, ε²·m after (1, 0.2)."""
    for cls in (SkipTeacher, EqualTeacher):
        paper, code = cls(eps=0.1), cls(eps=0.1, square_eps_after_first=True)
        assert paper.threshold == code.threshold == 0.0  # B-Pref starts at 0: the rule is off until calibrated
        for t in (paper, code):
            t.calibrate(10.0, first_query=True)
        assert paper.threshold == pytest.approx(1.0) and code.threshold == pytest.approx(1.0)
        for t in (paper, code):
            t.calibrate(20.0, first_query=False)
        assert paper.threshold == pytest.approx(2.0) and code.threshold == pytest.approx(0.2)
        assert list(paper.metrics()) == [f"teacher/{'skip' if cls is SkipTeacher else 'equal'}_threshold"]


def test_skip_drops_queries_whose_best_segment_is_at_most_the_threshold():
    teacher = SkipTeacher(eps=0.1)
    returns = np.array([[0.5, 1.0], [2.0, 0.5], [-3.0, 0.9], [1.5, 3.0], [1.0, 1.0]])
    rng = np.random.default_rng(0)
    # not calibrated yet: δ = 0, nothing is skipped (the oracle)
    np.testing.assert_array_equal(teacher.label(returns, rng), [0.0, 1.0, 0.0, 0.0, 0.5])
    teacher.calibrate(10.0, first_query=True)  # δ = 0.1 · 10 = 1
    # max returns 1.0, 2.0, 0.9, 3.0, 1.0: skipped where max <= 1 (B-Pref keeps max > δ)
    np.testing.assert_array_equal(teacher.label(returns, rng), [np.nan, 1.0, np.nan, 0.0, np.nan])
    teacher.calibrate(-10.0, first_query=False)  # δ = -1 <= 0: B-Pref's `if thres > 0` gate, nothing skipped
    assert not np.isnan(teacher.label(returns, rng)).any()


def test_equal_labels_close_returns_half(rng):
    teacher = EqualTeacher(eps=0.1)
    teacher.calibrate(10.0, first_query=True)  # δ = 1
    returns = np.array([[3.0, 2.5], [3.0, 2.0], [0.0, 4.0], [2.0, 2.0], [-1.0, -1.5]])
    # |differences| 0.5, 1.0, 4.0, 0, 0.5: 0.5 where < 1 (strict, as B-Pref), else the oracle
    np.testing.assert_array_equal(teacher.label(returns, rng), [0.5, 1.0, 0.0, 0.5, 0.5])
    teacher.calibrate(-10.0, first_query=False)  # δ = -1: no difference is < -1, only exact ties give 0.5
    np.testing.assert_array_equal(teacher.label(returns, rng), [1.0, 1.0, 0.0, 0.5, 1.0])


# ---------------------------------------------------------------- skipped queries never enter the buffer
def _objective(teacher, pairs):
    config = PreferenceObjectiveConfig(segment_length=5, initial_pairs=pairs, pairs_per_iter=pairs)
    model = MLPRewardModel(gym.spaces.Box(-100, 100, (3,)), gym.spaces.Box(-1, 1, (2,)), (8,), normalize_inputs=False)
    return PreferenceObjective(config, teacher), model


def test_the_objective_drops_skipped_queries_and_counts_them():
    """40 steps, reward 0 for 20 steps then 1: mean 0.5, so m = H · 0.5 = 2.5 and δ = 0.1 · 2.5 = 0.25.

    A 5-step segment inside the first 20 steps has return 0; any other has return >= 1. A pair is skipped iff
    both segments lie in the zero part.
    """
    batch = make_batch(np.r_[np.zeros(20), np.ones(20)], np.zeros(40))
    objective, model = _objective(SkipTeacher(eps=0.1, square_eps_after_first=True), 200)
    metrics = objective.gather(batch, 0, np.random.default_rng(0), model)
    assert metrics["teacher/skip_threshold"] == pytest.approx(0.25)
    stored = objective.buffer.all()
    skipped = metrics["buffer/skipped_queries"]
    assert 0 < skipped < 200 and len(stored) + skipped == 200 == metrics["buffer/total_labels"] + skipped
    assert not np.isnan(stored.labels).any() and (stored.true_returns().max(axis=1) > 0.25).all()
    # B-Pref's code rule: ε² · m = 0.01 · 2.5 after the first round; 0.025 < 1 still separates 0 from >= 1
    metrics = objective.gather(batch, 1, np.random.default_rng(1), model)
    assert metrics["teacher/skip_threshold"] == pytest.approx(0.025)
    assert metrics["buffer/total_labels"] + metrics["buffer/skipped_queries"] == 400
    # the count survives a checkpoint; the next round after a resume is not the first one
    restored, _ = _objective(SkipTeacher(eps=0.1, square_eps_after_first=True), 200)
    restored.load_state_dict(objective.state_dict())
    assert restored.skipped_queries == metrics["buffer/skipped_queries"]
    assert restored.gather(batch, 2, np.random.default_rng(2), model)["teacher/skip_threshold"] == pytest.approx(0.025)


def test_a_round_where_every_query_is_skipped_adds_nothing():
    """Env 0 earns 10 a step in 1-step truncated episodes (no segment fits there), env 1 earns 0 in one open episode.

    Mean reward 5, so m = 5 · 5 = 25 and δ = 2.5; every segment comes from env 1 and has return 0 <= δ.
    """
    rewards = np.stack([np.full(40, 10.0), np.zeros(40)], axis=1)
    dones = np.stack([np.ones(40), np.zeros(40)], axis=1)
    batch = make_batch(rewards, dones, terminated=np.zeros((40, 2)))
    objective, model = _objective(SkipTeacher(eps=0.1), 10)
    metrics = objective.gather(batch, 0, np.random.default_rng(0), model)
    assert metrics["teacher/skip_threshold"] == pytest.approx(2.5)
    assert metrics["buffer/skipped_queries"] == 10 and metrics["buffer/total_labels"] == 0
    assert len(objective.buffer) == 0 and objective.epochs(0) == 0
    assert math.isnan(metrics["reward_model/pref_accuracy"]) and math.isnan(metrics["reward_model/tie_fraction"])


# ---------------------------------------------------------------- CLI
def test_cli_run_with_the_skip_teacher_logs_the_skip_count(tmp_path):
    """Pendulum's rewards are negative, so δ_skip = 0.1 · m < 0 and B-Pref's rule is off: nothing is skipped."""
    run_dir = tmp_path / "run"
    cli(*tiny("teacher=skip"), f"hydra.run.dir={run_dir}")
    df = pd.read_csv(run_dir / "metrics.csv")
    rows = df[df["buffer/total_labels"].notna()]
    assert len(rows) >= 2 and {"buffer/skipped_queries", "teacher/skip_threshold"} <= set(df.columns)
    queried = 20 + 10 * rows["iteration"]  # TINY: buffer.initial_pairs=20, buffer.pairs_per_iter=10
    assert (rows["buffer/total_labels"] + rows["buffer/skipped_queries"] == queried).all()
    assert (rows["teacher/skip_threshold"] < 0).all() and (rows["buffer/skipped_queries"] == 0).all()
    assert all(math.isfinite(v) for v in rows["teacher/skip_threshold"])
