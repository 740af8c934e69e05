"""FrameStackReplayBuffer: exact equality with SB3's full-stack ReplayBuffer, relabelling, memory, checkpoints."""

from __future__ import annotations

import pickle
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch
from stable_baselines3.common.buffers import ReplayBuffer
from stable_baselines3.common.vec_env import DummyVecEnv, VecFrameStack, VecTransposeImage

from bilevel_rl.followers.frame_buffer import FrameStackReplayBuffer

H = W = 84


class FakeFrames(gym.Env):
    """Distinct random frames; episodes of random length (many of 1-3 steps), terminated or truncated."""

    def __init__(self, seed: int, channels: int = 1) -> None:
        self.observation_space = gym.spaces.Box(0, 255, (H, W, channels), np.uint8)
        self.action_space = gym.spaces.Discrete(6)
        self.rng = np.random.default_rng(seed)
        self.t = 0
        self.length = 1

    def _frame(self) -> np.ndarray:
        return self.rng.integers(1, 256, size=self.observation_space.shape, dtype=np.uint8)

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[np.ndarray, dict]:
        self.t = 0
        self.length = int(self.rng.choice([1, 2, 3, int(self.rng.integers(4, 15))]))
        return self._frame(), {}

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict]:
        self.t += 1
        end = self.t >= self.length
        truncated = bool(end and self.rng.random() < 0.4)
        return self._frame(), float(self.rng.normal()), end and not truncated, truncated, {}


def make_venv(n_envs: int = 2, channels: int = 1, seed: int = 0) -> VecTransposeImage:
    venv = DummyVecEnv([lambda i=i: FakeFrames(seed + 100 * i, channels) for i in range(n_envs)])
    return VecTransposeImage(VecFrameStack(venv, n_stack=4))


def drive(
    venv: VecTransposeImage,
    buffers: list[Any],
    steps: int,
    seed: int = 0,
    reset_at: int | None = None,
    obs: np.ndarray | None = None,
) -> np.ndarray:
    """SB3's off-policy ``_store_transition``: next_obs of done envs is ``infos["terminal_observation"]``.

    Continues from ``obs`` (default: a fresh reset); returns the last observation.
    """
    rng = np.random.default_rng(seed)
    obs = venv.reset() if obs is None else obs
    for t in range(steps):
        if t == reset_at:  # a reset with no done (SB3 learn(reset_num_timesteps=True)) mid-episode
            obs = venv.reset()
        actions = rng.integers(0, 6, size=venv.num_envs)
        new_obs, rewards, dones, infos = venv.step(actions)
        next_obs = new_obs.copy()
        for i, d in enumerate(dones):
            if d:
                next_obs[i] = infos[i]["terminal_observation"]
        for b in buffers:
            b.add(obs, next_obs, actions, rewards, dones, infos)
        obs = new_obs
    return obs


def both(capacity: int, venv: VecTransposeImage, **kw: Any) -> tuple[ReplayBuffer, FrameStackReplayBuffer]:
    args = (capacity, venv.observation_space, venv.action_space)
    ref = ReplayBuffer(*args, device="cpu", n_envs=venv.num_envs)
    return ref, FrameStackReplayBuffer(*args, device="cpu", n_envs=venv.num_envs, **kw)


def assert_exact(ref: ReplayBuffer, buf: FrameStackReplayBuffer) -> np.ndarray:
    """Every valid (row, env) pair rebuilds SB3's stored transition bit for bit; returns the valid mask."""
    valid = buf.valid_mask()
    rows, envs = np.nonzero(valid)
    s = buf.get_transitions(rows, envs)
    np.testing.assert_array_equal(s.observations.numpy(), ref.observations[rows, envs])
    np.testing.assert_array_equal(s.next_observations.numpy(), ref.next_observations[rows, envs])
    np.testing.assert_array_equal(s.actions.numpy(), ref.actions[rows, envs])
    assert s.actions.dtype == torch.int64 and s.observations.dtype == torch.uint8
    ref_dones = ref.dones[rows, envs] * (1 - ref.timeouts[rows, envs])
    np.testing.assert_array_equal(s.dones.numpy()[:, 0], ref_dones)
    np.testing.assert_array_equal(s.rewards.numpy()[:, 0], ref.rewards[rows, envs])
    np.testing.assert_array_equal(buf.true_rewards, ref.rewards)
    return valid


@pytest.mark.parametrize(("channels", "reset_at"), [(1, None), (1, 57), (3, None)])
def test_exact_against_sb3_replay_buffer_past_wraparound(channels: int, reset_at: int | None) -> None:
    venv = make_venv(2, channels)
    ref, buf = both(120, venv, frame_stack=4)  # 60 rows per env; 250 steps wrap around 4 times
    obs = None
    for step, n in enumerate([30, 40, 70, 55, 55]):  # exact while filling, at partial wrap and after
        obs = drive(venv, [ref, buf], n, seed=step, reset_at=reset_at if step == 1 else None, obs=obs)
        valid = assert_exact(ref, buf)
        if buf.full:  # only the oldest K-1 rows of a column may be unsampleable; the newest row is sampleable
            assert (~valid).sum() <= 3 * buf.n_envs
            assert valid[(buf.pos - 1) % buf.buffer_size].all()
            invalid_rows = np.nonzero(~valid)[0]
            assert np.all((invalid_rows - buf.pos) % buf.buffer_size < 3)
        else:
            assert valid[: buf.pos].all()
    dones = ref.dones.astype(bool)
    assert dones.sum() > 20 and (ref.timeouts.astype(bool) & dones).any() and (dones & ~ref.timeouts.astype(bool)).any()
    # the side store holds terminal frames (+ the newest row and any reset-without-done) of held rows only
    held_breaks = int(dones.sum()) + buf.n_envs * (1 + (reset_at is not None))
    assert dones.sum() <= len(buf.side) <= held_breaks
    assert buf.side_store_nbytes() == len(buf.side) * channels * H * W


def test_sampling_never_returns_an_invalid_row() -> None:
    venv = make_venv(2)
    ref, buf = both(40, venv)  # 20 rows per env: invalid rows are a large share, so rejection matters
    drive(venv, [ref, buf], 97)
    valid = buf.valid_mask()
    assert (~valid).any()
    table = {}
    for r, e in zip(*np.nonzero(valid), strict=True):
        table[ref.observations[r, e].tobytes() + ref.next_observations[r, e].tobytes()] = (
            ref.actions[r, e, 0],
            ref.rewards[r, e],
        )
    np.random.seed(0)
    seen = set()
    for _ in range(40):
        s = buf.sample(64)
        for o, no, a, r in zip(s.observations.numpy(), s.next_observations.numpy(), s.actions, s.rewards, strict=True):
            key = o.tobytes() + no.tobytes()
            assert key in table, "sampled a transition SB3 does not hold (invalid row)"
            assert table[key] == (int(a[0]), float(r[0]))
            seen.add(key)
    assert len(seen) == len(table)  # and every valid row is reachable


def test_buffer_attached_mid_episode_keeps_older_frames() -> None:
    venv = make_venv(1)
    ref, buf = both(30, venv)
    rng = np.random.default_rng(0)
    venv.reset()
    while True:  # advance the env without storing until the first stored obs has non-zero older frames
        obs, _, done, _ = venv.step(rng.integers(0, 6, size=1))
        if not done[0] and obs[0, 1].any():
            break
    obs = drive(venv, [ref, buf], 20, obs=obs)
    assert len(buf.heads) == 1  # the one chain start with non-zero history
    assert_exact(ref, buf)
    drive(venv, [ref, buf], 25, obs=obs, seed=1)  # its row is overwritten: the head is freed
    assert len(buf.heads) == 0
    assert_exact(ref, buf)


class LinearReward:
    def __init__(self) -> None:
        self.w = 1.0
        self.calls: list[tuple[torch.Tensor, torch.Tensor]] = []

    def relabel(self, obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        self.calls.append((obs, actions))
        return self.w * (obs[:, -1].float().mean(dim=(1, 2)) / 255.0 + actions.float())


def test_relabel_at_sample_time_and_clip() -> None:
    venv = make_venv(2)
    ref, buf = both(60, venv)
    drive(venv, [ref, buf], 40)
    model = LinearReward()
    buf.reward_model = model
    np.random.seed(1)
    s = buf.sample(32)
    obs, actions = model.calls[-1]
    assert actions.shape == (32,) and obs.shape == (32, 4, H, W) and obs.dtype == torch.uint8
    expected = s.observations[:, -1].float().mean(dim=(1, 2)) / 255.0 + s.actions[:, 0].float()
    torch.testing.assert_close(s.rewards[:, 0], expected)
    assert s.rewards.shape == (32, 1) and s.rewards.dtype == torch.float32
    model.w = -2.0  # changed model: the very next sample uses it
    np.random.seed(1)
    s2 = buf.sample(32)
    torch.testing.assert_close(s2.rewards, -2.0 * s.rewards)
    buf.reward_clip = 1.0
    np.random.seed(1)
    s3 = buf.sample(32)
    torch.testing.assert_close(s3.rewards, (-2.0 * s.rewards).clamp(-1, 1))
    assert (s3.rewards == -1).any()
    buf.reward_model = None  # back to the stored env rewards
    np.random.seed(1)
    s4 = buf.sample(32)
    assert not torch.equal(s4.rewards, s.rewards)
    torch.testing.assert_close(s4.observations, s.observations)


def test_memory_accounting_and_lazy_1m_allocation() -> None:
    venv = make_venv(1)
    buf = FrameStackReplayBuffer(1_000_000, venv.observation_space, venv.action_space, device="cpu")
    bpt = buf.bytes_per_transition()
    assert bpt == H * W + 1 + 4 + 4  # frame + uint8 action (Discrete(6)) + float32 reward + 4 flag bytes
    assert buf.nbytes() < 24 * 2**30
    assert abs(buf.nbytes() - 1_000_000 * bpt) < 10**6
    sb3_bytes = 1_000_000 * 2 * 4 * H * W  # SB3 without optimize_memory_usage: obs + next_obs stacks
    assert buf.nbytes() * 7 < sb3_bytes


def test_state_dict_round_trip_gives_identical_samples() -> None:
    venv = make_venv(2)
    ref, buf = both(50, venv)
    drive(venv, [ref, buf], 70)
    state = buf.state_dict()
    other = FrameStackReplayBuffer(50, venv.observation_space, venv.action_space, device="cpu", n_envs=2)
    other.load_state_dict(state)
    np.random.seed(3)
    a = buf.sample(128)
    np.random.seed(3)
    b = other.sample(128)
    assert a.discounts is None and b.discounts is None
    for x, y in zip(a[:5], b[:5], strict=True):
        assert torch.equal(x, y)
    drive(venv, [buf, other], 5, seed=9)  # and they continue identically (no shared arrays)
    np.random.seed(4)
    a = buf.sample(64)
    np.random.seed(4)
    b = other.sample(64)
    assert torch.equal(a.next_observations, b.next_observations)
    small = FrameStackReplayBuffer(40, venv.observation_space, venv.action_space, device="cpu", n_envs=2)
    with pytest.raises(ValueError, match="buffer_size"):
        small.load_state_dict(state)


def test_checkpoint_of_a_large_buffer_holds_its_contents_not_its_capacity() -> None:
    venv = make_venv(2)
    args = (1_000_000, venv.observation_space, venv.action_space)
    buf = FrameStackReplayBuffer(*args, device="cpu", n_envs=2)
    obs = drive(venv, [buf], 30)
    blob = pickle.dumps(buf.state_dict(), protocol=pickle.HIGHEST_PROTOCOL)
    assert len(blob) < 2_000_000  # 30 rows x 2 envs of 84x84 frames (+ side stores); uncut it is ~7 GB
    other = FrameStackReplayBuffer(*args, device="cpu", n_envs=2)
    other.load_state_dict(pickle.loads(blob))
    np.random.seed(5)
    a = buf.sample(32)
    np.random.seed(5)
    b = other.sample(32)
    assert torch.equal(a.observations, b.observations) and torch.equal(a.next_observations, b.next_observations)
    drive(venv, [buf, other], 10, seed=3, obs=obs)
    assert buf.pos == other.pos == 40
    np.testing.assert_array_equal(buf.valid_mask(), other.valid_mask())
    rows, envs = np.nonzero(buf.valid_mask())
    assert torch.equal(buf.get_transitions(rows, envs).observations, other.get_transitions(rows, envs).observations)


def test_refuses_non_image_spaces() -> None:
    box = gym.spaces.Box(-1, 1, (3,), np.float32)
    with pytest.raises(ValueError, match="ReplayBuffer"):
        FrameStackReplayBuffer(10, box, gym.spaces.Discrete(2))
    float_images = gym.spaces.Box(0, 1, (4, 8, 8), np.float32)
    with pytest.raises(ValueError, match="uint8"):
        FrameStackReplayBuffer(10, float_images, gym.spaces.Discrete(2))
    with pytest.raises(ValueError, match="frame_stack"):
        FrameStackReplayBuffer(10, gym.spaces.Box(0, 255, (6, 8, 8), np.uint8), gym.spaces.Discrete(2), frame_stack=4)
    with pytest.raises(ValueError, match="empty"):
        FrameStackReplayBuffer(10, gym.spaces.Box(0, 255, (4, 8, 8), np.uint8), gym.spaces.Discrete(2)).sample(4)


def test_drop_in_replay_buffer_class_for_sb3_dqn() -> None:
    from stable_baselines3 import DQN

    venv = make_venv(2)
    model = DQN(
        "CnnPolicy",
        venv,
        buffer_size=300,
        learning_starts=60,
        train_freq=8,
        batch_size=8,
        replay_buffer_class=FrameStackReplayBuffer,
        policy_kwargs={"features_extractor_kwargs": {"features_dim": 16}},
        device="cpu",
        seed=0,
    )
    model.learn(160)
    buf = model.replay_buffer
    assert isinstance(buf, FrameStackReplayBuffer) and buf.pos == 80 and not buf.full
    s = buf.sample(8)
    assert s.observations.shape == (8, 4, H, W) and s.actions.shape == (8, 1)


def test_reset_and_timeouts_counted_as_dones_when_not_handled() -> None:
    venv = make_venv(2)
    ref, buf = both(60, venv)
    obs = drive(venv, [ref, buf], 45)
    buf.reset()  # emptied: what follows is exact against a fresh SB3 buffer
    args = (60, venv.observation_space, venv.action_space)
    ref = ReplayBuffer(*args, device="cpu", n_envs=2, handle_timeout_termination=False)
    buf2 = FrameStackReplayBuffer(*args, device="cpu", n_envs=2, handle_timeout_termination=False)
    drive(venv, [ref, buf, buf2], 20, seed=5, obs=obs)
    assert buf.size() == 20 and len(buf.side) <= ref.dones.sum() + 2
    valid = buf.valid_mask()
    assert valid[:20].all() and not valid[20:].any()
    assert buf.timeouts[:20].any() and (ref.dones[:20].astype(bool) & ~buf.timeouts[:20]).any()
    rows, envs = np.nonzero(valid)
    s, s2 = buf.get_transitions(rows, envs), buf2.get_transitions(rows, envs)
    np.testing.assert_array_equal(s.observations.numpy(), ref.observations[rows, envs])
    np.testing.assert_array_equal(s.next_observations.numpy(), ref.next_observations[rows, envs])
    np.testing.assert_array_equal(s2.dones.numpy()[:, 0], ref.dones[rows, envs])  # truncations count as dones
    np.testing.assert_array_equal(s.dones.numpy()[:, 0], ref.dones[rows, envs] * ~buf.timeouts[rows, envs])


def test_relabel_with_the_project_atari_reward_cnn() -> None:
    from bilevel_rl.reward_models.cnn import AtariCNNRewardModel

    venv = make_venv(2)
    ref, buf = both(60, venv)
    drive(venv, [ref, buf], 30)
    torch.manual_seed(0)
    model = AtariCNNRewardModel("sobirl", venv.observation_space, venv.action_space)
    buf.reward_model = model
    s = buf.sample(16)
    torch.testing.assert_close(s.rewards[:, 0], model.relabel(s.observations, s.actions[:, 0]))
    assert s.rewards.std() > 0
