import numpy as np
import pytest

from bilevel_rl.data.preference_buffer import PreferenceBuffer
from bilevel_rl.data.segments import PreferencePairs, eligible_starts, fragment, make_pairs, stack_pairs
from bilevel_rl.data.teachers import BradleyTerryTeacher, OracleTeacher, make_teacher
from tests.conftest import make_batch


def _pairs(n, start=0, h=4):
    labels = np.arange(start, start + n, dtype=np.float32)
    return PreferencePairs(
        obs=np.broadcast_to(labels[:, None, None, None], (n, 2, h, 3)).copy(),
        actions=np.zeros((n, 2, h, 1), np.float32),
        true_rewards=np.zeros((n, 2, h), np.float32),
        mask=np.ones((n, 2, h), np.float32),
        labels=labels,
        iteration=np.zeros(n, np.int64),
    )


# ---------------------------------------------------------------- buffer
def test_buffer_is_fifo_and_keeps_newest():
    buf = PreferenceBuffer(capacity=5)
    buf.add(_pairs(3, 0))
    buf.add(_pairs(4, 3))  # 7 added, capacity 5 -> 2..6 survive
    assert len(buf) == 5 and buf.total_added == 7
    assert buf.all().labels.tolist() == [2, 3, 4, 5, 6]
    buf.add(_pairs(12, 100))  # more than capacity at once: newest 5 survive, in order
    assert buf.all().labels.tolist() == [107, 108, 109, 110, 111]


def test_buffer_minibatches_cover_each_pair_once(rng):
    buf = PreferenceBuffer(capacity=50)
    buf.add(_pairs(37))
    seen = np.concatenate(list(buf.minibatches(8, rng)))
    assert sorted(seen.tolist()) == list(range(37))


def test_buffer_save_load_roundtrip(tmp_path):
    buf = PreferenceBuffer(capacity=4)
    buf.add(_pairs(6))
    buf.save(tmp_path / "p.npz")
    back = PreferenceBuffer.load(tmp_path / "p.npz")
    assert back.capacity == 4 and back.total_added == 6
    np.testing.assert_array_equal(back.all().labels, buf.all().labels)
    np.testing.assert_array_equal(back.all().obs, buf.all().obs)
    other = PreferenceBuffer(capacity=4)
    other.load_state_dict(buf.state_dict())
    np.testing.assert_array_equal(other.all().labels, buf.all().labels)
    with pytest.raises(ValueError, match="capacity"):
        PreferenceBuffer(capacity=3).load_state_dict(buf.state_dict())


# ---------------------------------------------------------------- fragmenter
def test_segments_never_cross_episode_boundaries(rng):
    t = 100
    dones = np.zeros(t, bool)
    dones[[29, 59, 99]] = True  # episodes of 30, 30, 40 steps, all time-limit truncations
    batch = make_batch(np.arange(t), dones, terminated=np.zeros(t, bool))
    segs = fragment(batch, 25, 500, rng)
    assert segs.mask.all()  # truncated episodes never give padded segments
    first_t = segs.obs[:, 0, 0].astype(int)
    last_t = segs.obs[:, -1, 0].astype(int)
    episode = np.searchsorted([29, 59, 99], np.arange(t))
    assert (episode[first_t] == episode[last_t]).all()
    assert (np.diff(segs.obs[:, :, 0], axis=1) == 1).all()  # consecutive steps
    np.testing.assert_allclose(segs.true_returns(), segs.obs[:, :, 0].sum(axis=1))


def test_short_terminated_episode_is_padded_and_masked(rng):
    # one env: a 10-step episode that terminated, then a 30-step episode still running at the end
    dones = np.zeros(40, bool)
    dones[9] = True
    batch = make_batch(np.ones(40), dones)
    t_idx, _, valid = eligible_starts(batch, 25)
    # starts 0..9 are in the terminated short episode (valid 10..1 steps); 10..15 give full windows
    assert sorted(t_idx.tolist()) == list(range(16))
    assert valid[t_idx == 0][0] == 10 and valid[t_idx == 9][0] == 1 and valid[t_idx == 12][0] == 25
    segs = fragment(batch, 25, 200, rng)
    short = segs.mask.sum(axis=1) < 25
    assert short.any()
    np.testing.assert_allclose(segs.true_returns(), segs.mask.sum(axis=1))  # reward 1 per valid step
    assert (segs.true_rewards[segs.mask == 0] == 0).all()


def test_no_eligible_segment_is_a_clear_error(rng):
    batch = make_batch(np.ones(10), np.zeros(10, bool))
    with pytest.raises(ValueError, match="no 25-step segment"):
        fragment(batch, 25, 2, rng)


def test_pairs_are_independent_segments_of_equal_length(rng):
    batch = make_batch(np.random.default_rng(1).normal(size=(200, 2)), np.zeros((200, 2), bool))
    a, b = make_pairs(batch, 25, 30, rng)
    assert len(a) == len(b) == 30
    pairs = stack_pairs(a, b, OracleTeacher().label(np.stack([a.true_returns(), b.true_returns()], 1), rng), 3)
    assert pairs.obs.shape == (30, 2, 25, 3) and (pairs.iteration == 3).all()


# ---------------------------------------------------------------- teachers
def test_oracle_teacher_prefers_higher_return_and_ties_half(rng):
    returns = np.array([[3.0, 1.0], [0.0, 2.0], [1.5, 1.5]])
    np.testing.assert_array_equal(OracleTeacher().label(returns, rng), [1.0, 0.0, 0.5])
    np.testing.assert_array_equal(OracleTeacher(tie_tolerance=3.0).label(returns, rng), [0.5, 0.5, 0.5])


def test_bradley_terry_teacher_matches_its_probability():
    rng = np.random.default_rng(0)
    returns = np.tile([[1.0, 0.0]], (20000, 1))
    labels = BradleyTerryTeacher(temperature=1.0).label(returns, rng)
    assert abs(labels.mean() - 1 / (1 + np.exp(-1.0))) < 0.01
    with pytest.raises(ValueError, match="temperature"):
        make_teacher("bradley_terry", temperature=0.0)
    with pytest.raises(ValueError, match="teacher.name"):
        make_teacher("human")
