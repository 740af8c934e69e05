"""The papers' Atari CNNs: reward models (SoBiRL J.2 / PBRL E.2) and the PBRL A2C actor-critic trunk."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from stable_baselines3 import A2C
from stable_baselines3.common.torch_layers import NatureCNN
from torch import nn

from bilevel_rl.followers.atari_policies import (
    FEATURE_EXTRACTORS,
    PBRLAtariCNN,
    a2c_pbrl_policy_kwargs,
    resolve_policy_kwargs,
)
from bilevel_rl.objectives.preferences import bradley_terry_loss
from bilevel_rl.reward_models.cnn import AtariCNNRewardModel, make_cnn_reward_model

torch.set_num_threads(1)

OBS = gym.spaces.Box(0, 255, (4, 84, 84), np.uint8)
N_ACT = 6


def _frames(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 4, 84, 84), generator=g, dtype=torch.uint8)


def _n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


# ---------------------------------------------------------------------------------------------------------------
# Architecture: layer shapes and parameter counts, computed by hand from the papers' specs
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["sobirl", "pbrl"])
def test_reward_cnn_layer_shapes_and_parameter_count(arch: str) -> None:
    model = make_cnn_reward_model(arch, OBS, gym.spaces.Discrete(N_ACT))  # type: ignore[arg-type]
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size, c.stride, c.padding) for c in convs] == [
        (4, 16, (7, 7), (3, 3), (0, 0)),
        (16, 16, (5, 5), (2, 2), (0, 0)),
        (16, 16, (3, 3), (1, 1), (0, 0)),
        (16, 16, (3, 3), (1, 1), (0, 0)),
    ]
    # spatial sizes 84 -> 26 -> 11 -> 9 -> 7
    sizes = []
    hooks = [c.register_forward_hook(lambda _m, _i, o: sizes.append(tuple(o.shape[1:]))) for c in convs]
    model.eval()
    out = model.action_rewards(_frames(2))
    for h in hooks:
        h.remove()
    assert sizes == [(16, 26, 26), (16, 11, 11), (16, 9, 9), (16, 7, 7)]
    assert out.shape == (2, N_ACT)
    conv = (4 * 16 * 49 + 16) + (16 * 16 * 25 + 16) + 2 * (16 * 16 * 9 + 16)
    fc = (784 * 64 + 64) + (64 * N_ACT + N_ACT)
    bn = 4 * 2 * 16 if arch == "sobirl" else 0
    assert _n_params(model) == conv + fc + bn
    kinds = [type(m) for m in model.modules() if not isinstance(m, (nn.Sequential, AtariCNNRewardModel))]
    if arch == "sobirl":
        block = [nn.Conv2d, nn.BatchNorm2d, nn.LeakyReLU, nn.Dropout]
        assert kinds == 4 * block + [nn.Flatten, nn.Linear, nn.LeakyReLU, nn.Linear]
        assert all(m.negative_slope == 0.01 for m in model.modules() if isinstance(m, nn.LeakyReLU))
    else:
        assert kinds == 4 * [nn.Conv2d, nn.ReLU] + [nn.Flatten, nn.Linear, nn.ReLU, nn.Dropout, nn.Linear]
    assert all(m.p == 0.5 for m in model.modules() if isinstance(m, nn.Dropout))
    assert model.action_ndim == 0


def test_pbrl_a2c_trunk_layer_shapes_and_parameter_count() -> None:
    ext = PBRLAtariCNN(OBS)
    assert ext.features_dim == 256
    convs = [m for m in ext.modules() if isinstance(m, nn.Conv2d)]
    assert [(c.out_channels, c.kernel_size[0], c.stride[0], c.padding[0]) for c in convs] == [
        (16, 8, 4, 0),
        (32, 5, 2, 0),
        (32, 4, 1, 0),
        (32, 4, 1, 0),
    ]
    sizes = []
    for c in convs:
        c.register_forward_hook(lambda _m, _i, o: sizes.append(tuple(o.shape[1:])))
    out = ext(torch.rand(3, 4, 84, 84))
    assert sizes == [(16, 20, 20), (32, 8, 8), (32, 5, 5), (32, 2, 2)]
    assert out.shape == (3, 256)
    assert (out >= 0).all()  # final ReLU
    expected = (4 * 16 * 64 + 16) + (16 * 32 * 25 + 32) + 2 * (32 * 32 * 16 + 32) + (128 * 256 + 256)
    assert _n_params(ext) == expected


# ---------------------------------------------------------------------------------------------------------------
# Scaling: /255 exactly once
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["sobirl", "pbrl"])
def test_reward_cnn_divides_by_255_exactly_once(arch: str) -> None:
    torch.manual_seed(0)
    model = AtariCNNRewardModel(arch, OBS, gym.spaces.Discrete(N_ACT))  # type: ignore[arg-type]
    model.train()
    model(_frames(32, seed=1), torch.zeros(32, dtype=torch.long))  # move BatchNorm running stats off the defaults
    model.eval()
    x = _frames(5, seed=2)
    got = model.action_rewards(x)
    by_hand = x.float() / 255.0
    for layer in [*model.conv, *model.head]:
        by_hand = layer(by_hand)
    torch.testing.assert_close(got, by_hand, rtol=0, atol=0)

    def apply(inp: torch.Tensor) -> torch.Tensor:
        return model.head(model.conv(inp))

    assert not torch.allclose(got, apply(x.float()), atol=1e-3)  # not unscaled
    assert not torch.allclose(got, apply(x.float() / 255.0**2), atol=1e-3)  # not scaled twice


def test_a2c_cnn_policy_scales_once_before_the_pbrl_trunk() -> None:
    env = _FakeAtari()
    model = A2C("CnnPolicy", env, policy_kwargs=a2c_pbrl_policy_kwargs(), device="cpu", seed=0)
    policy = model.policy
    assert isinstance(policy.features_extractor, PBRLAtariCNN)
    white = torch.full((2, 4, 84, 84), 255, dtype=torch.uint8)
    with torch.no_grad():
        via_sb3 = policy.extract_features(white, policy.features_extractor)  # SB3 preprocess_obs -> extractor
        on_ones = policy.features_extractor(torch.ones(2, 4, 84, 84))
        on_255 = policy.features_extractor(torch.full((2, 4, 84, 84), 255.0))
    torch.testing.assert_close(via_sb3, on_ones)
    assert not torch.allclose(via_sb3, on_255)
    # linear heads on the shared 256 features (net_arch pi=[], vf=[])
    assert isinstance(policy.action_net, nn.Linear) and policy.action_net.in_features == 256
    assert isinstance(policy.value_net, nn.Linear) and policy.value_net.in_features == 256
    assert policy.share_features_extractor


# ---------------------------------------------------------------------------------------------------------------
# Per-action head, eval-mode relabelling, refusals
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["sobirl", "pbrl"])
def test_action_rewards_match_forward_for_every_action(arch: str) -> None:
    model = AtariCNNRewardModel(arch, OBS, gym.spaces.Discrete(N_ACT))  # type: ignore[arg-type]
    model.eval()
    x = _frames(7, seed=3)
    with torch.no_grad():
        table = model.action_rewards(x)
        for a in range(N_ACT):
            torch.testing.assert_close(model(x, torch.full((7,), a)), table[:, a])
        mixed = torch.tensor([0, 5, 2, 3, 1, 4, 0])
        torch.testing.assert_close(model(x, mixed), table[torch.arange(7), mixed])
        # leading batch dims via RewardModel.rewards: (2, 3, 4, 84, 84), (2, 3) -> (2, 3)
        lead = model.rewards(x[:6].reshape(2, 3, 4, 84, 84), mixed[:6].reshape(2, 3))
        torch.testing.assert_close(lead, table[torch.arange(6), mixed[:6]].reshape(2, 3))


@pytest.mark.parametrize("arch", ["sobirl", "pbrl"])
def test_state_only_head_gives_every_action_the_same_reward(arch: str) -> None:
    """``per_action=False``: one output broadcast over actions; only the last layer shrinks, by 65 * (|A| - 1)."""
    torch.manual_seed(0)
    state = AtariCNNRewardModel(arch, OBS, gym.spaces.Discrete(N_ACT), per_action=False)  # type: ignore[arg-type]
    full = AtariCNNRewardModel(arch, OBS, gym.spaces.Discrete(N_ACT))  # type: ignore[arg-type]
    assert _n_params(full) - _n_params(state) == 65 * (N_ACT - 1)
    state.eval()
    x = _frames(5, seed=4)
    with torch.no_grad():
        table = state.action_rewards(x)
        assert table.shape == (5, N_ACT)
        assert table.std(dim=1).max() == 0.0
        assert table[:, 0].std() > 0  # but it does depend on the state
        torch.testing.assert_close(state(x, torch.tensor([0, 1, 2, 3, 4])), table[:, 0])
    per_action = full.action_rewards(x).detach()
    assert per_action.std(dim=1).min() > 0


@pytest.mark.parametrize("arch", ["sobirl", "pbrl"])
def test_relabel_is_deterministic_while_train_mode_is_not(arch: str) -> None:
    torch.manual_seed(0)
    model = AtariCNNRewardModel(arch, OBS, gym.spaces.Discrete(N_ACT))  # type: ignore[arg-type]
    model.train()
    x, a = _frames(16, seed=4), torch.randint(0, N_ACT, (16,))
    r1 = model.relabel(x.numpy(), a.numpy())
    r2 = model.relabel(x, a)
    assert model.training  # relabel restores the mode
    torch.testing.assert_close(r1, r2, rtol=0, atol=0)
    # eval-mode relabelling of one frame does not depend on the rest of the batch (no BatchNorm batch stats)
    torch.testing.assert_close(model.relabel(x[:1], a[:1]), r1[:1])
    with torch.no_grad():
        t1, t2 = model(x, a), model(x, a)
    assert not torch.allclose(t1, t2)  # dropout active in train mode
    assert not torch.allclose(t1, r1)


def test_reward_cnn_refuses_bad_spaces() -> None:
    disc = gym.spaces.Discrete(4)
    with pytest.raises(ValueError, match="channels-first"):
        AtariCNNRewardModel("sobirl", gym.spaces.Box(0, 255, (84, 84, 4), np.uint8), disc)
    with pytest.raises(ValueError, match="channels-first"):
        AtariCNNRewardModel("pbrl", gym.spaces.Box(0, 255, (4, 64, 64), np.uint8), disc)
    with pytest.raises(ValueError, match="channels-first"):
        AtariCNNRewardModel("pbrl", gym.spaces.Discrete(5), disc)
    with pytest.raises(ValueError, match="Discrete action space"):
        AtariCNNRewardModel("sobirl", OBS, gym.spaces.Box(-1, 1, (2,)))
    with pytest.raises(ValueError, match="unknown Atari CNN 'nature'"):
        AtariCNNRewardModel("nature", OBS, disc)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="channels-first"):
        PBRLAtariCNN(gym.spaces.Box(0, 255, (84, 84, 4), np.uint8))


def test_fit_input_normalization_is_a_no_op() -> None:
    model = AtariCNNRewardModel("sobirl", OBS, gym.spaces.Discrete(3))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.fit_input_normalization(_frames(4).numpy())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_resolve_policy_kwargs() -> None:
    d = {"features_extractor_class": "pbrl_cnn", "net_arch": {"pi": [], "vf": []}}
    out = resolve_policy_kwargs(d)
    assert out == a2c_pbrl_policy_kwargs()
    assert d["features_extractor_class"] == "pbrl_cnn"  # input untouched
    assert resolve_policy_kwargs({"features_extractor_class": "nature_cnn"})["features_extractor_class"] is NatureCNN
    dotted = resolve_policy_kwargs({"features_extractor_class": "bilevel_rl.followers.atari_policies.PBRLAtariCNN"})
    assert dotted["features_extractor_class"] is PBRLAtariCNN
    assert resolve_policy_kwargs({"net_arch": [64]}) == {"net_arch": [64]}
    assert resolve_policy_kwargs({"features_extractor_class": PBRLAtariCNN})["features_extractor_class"] is PBRLAtariCNN
    with pytest.raises(ValueError, match="unknown extractor 'resnet'.*nature_cnn, pbrl_cnn"):
        resolve_policy_kwargs({"features_extractor_class": "resnet"})
    with pytest.raises(ValueError, match="unknown extractor"):
        resolve_policy_kwargs({"features_extractor_class": "torch.nn.Linear"})  # not a features extractor
    assert set(FEATURE_EXTRACTORS) == {"pbrl_cnn", "nature_cnn"}
    omegaconf = pytest.importorskip("omegaconf")
    cfg = omegaconf.OmegaConf.create({"features_extractor_class": "pbrl_cnn", "net_arch": {"pi": [], "vf": [64]}})
    out = resolve_policy_kwargs(cfg)
    assert out == {"features_extractor_class": PBRLAtariCNN, "net_arch": {"pi": [], "vf": [64]}}
    assert type(out["net_arch"]) is dict and type(out["net_arch"]["vf"]) is list


# ---------------------------------------------------------------------------------------------------------------
# Learning: Bradley-Terry on synthetic frame stacks whose true reward depends on a bright region and the action
# ---------------------------------------------------------------------------------------------------------------

_ACTION_WEIGHT = torch.tensor([1.0, -1.0, 0.0])


def _render(bright: torch.Tensor, distractor: torch.Tensor) -> torch.Tensor:
    """(...) brightness levels -> (..., 4, 84, 84) uint8 frames: a lit top-left block and a random distractor."""
    frames = torch.zeros((*bright.shape, 4, 84, 84), dtype=torch.uint8)
    frames[..., 8:32, 8:32] = bright[..., None, None, None]
    frames[..., 52:76, 52:76] = distractor[..., None, None, None]
    return frames


def _pairs(n: int, horizon: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """n pairs of segments; true r(s, a) = brightness of the top-left block * weight[a]; label = higher return."""
    g = torch.Generator().manual_seed(seed)
    bright = torch.randint(0, 256, (n, 2, horizon), generator=g).to(torch.uint8)
    distractor = torch.randint(0, 256, (n, 2, horizon), generator=g).to(torch.uint8)
    actions = torch.randint(0, len(_ACTION_WEIGHT), (n, 2, horizon), generator=g)
    ret = (bright.float() / 255.0 * _ACTION_WEIGHT[actions]).sum(-1)
    labels = (ret[:, 0] > ret[:, 1]).float()
    return bright, distractor, actions, labels


def _returns(model: AtariCNNRewardModel, data: tuple[torch.Tensor, ...], idx: torch.Tensor) -> torch.Tensor:
    bright, distractor, actions = (t[idx] for t in data[:3])
    obs = _render(bright, distractor)  # (B, 2, H, 4, 84, 84)
    return model.segment_returns(obs, actions, torch.ones(actions.shape))


@torch.no_grad()
def _accuracy(model: AtariCNNRewardModel, data: tuple[torch.Tensor, ...]) -> float:
    model.eval()
    n = len(data[3])
    ret = torch.cat([_returns(model, data, torch.arange(i, min(i + 20, n))) for i in range(0, n, 20)])
    return float(((ret[:, 0] > ret[:, 1]).float() == data[3]).float().mean())


def _learn(arch: str, n_train: int, horizon: int, epochs: int, batch: int, seed: int = 0) -> tuple[float, float]:
    """Held-out (100 pairs) accuracy before and after Bradley-Terry training in train mode (AdamW, SoBiRL J.2)."""
    torch.manual_seed(seed)
    model = AtariCNNRewardModel(arch, OBS, gym.spaces.Discrete(len(_ACTION_WEIGHT)))  # type: ignore[arg-type]
    train, held_out = _pairs(n_train, horizon, seed=10 + 2 * seed), _pairs(100, horizon, seed=11 + 2 * seed)
    before = _accuracy(model, held_out)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-2)
    g = torch.Generator().manual_seed(seed)
    for _epoch in range(epochs):
        model.train()
        perm = torch.randperm(n_train, generator=g)
        for i in range(0, n_train, batch):
            idx = perm[i : i + batch]
            loss = bradley_terry_loss(_returns(model, train, idx), train[3][idx]).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
    after = _accuracy(model, held_out)
    print(f"{arch}: held-out accuracy {before:.2f} -> {after:.2f}")
    return before, after


@pytest.mark.parametrize("arch", ["sobirl", "pbrl"])
def test_bradley_terry_learning_on_synthetic_frames_small(arch: str) -> None:
    """Fast version: 64 pairs of 5-step segments (the full 25-step version is the slow test below)."""
    before, after = _learn(arch, n_train=64, horizon=5, epochs=4, batch=8)
    assert before < 0.7
    assert after > 0.8


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["sobirl", "pbrl"])
def test_bradley_terry_learning_on_synthetic_frames(arch: str) -> None:
    """200 pairs of 25-step segments (the papers' segment length), 3 epochs."""
    before, after = _learn(arch, n_train=200, horizon=25, epochs=3, batch=16)
    assert before < 0.7
    assert after > 0.8


# ---------------------------------------------------------------------------------------------------------------
# SB3 A2C with the PBRL trunk on a (4, 84, 84) uint8 env
# ---------------------------------------------------------------------------------------------------------------


class _FakeAtari(gym.Env):
    """Channels-first uint8 (4, 84, 84) observations, 4 actions, 50-step episodes."""

    observation_space = OBS
    action_space = gym.spaces.Discrete(4)

    def __init__(self) -> None:
        self._t = 0

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self._t = 0
        return self.observation_space.sample(), {}

    def step(self, action):
        self._t += 1
        return self.observation_space.sample(), float(action == 1), False, self._t >= 50, {}


def test_a2c_with_pbrl_trunk_runs_on_fake_atari_env() -> None:
    model = A2C("CnnPolicy", _FakeAtari(), policy_kwargs=a2c_pbrl_policy_kwargs(), n_steps=5, device="cpu", seed=0)
    before = [p.detach().clone() for p in model.policy.features_extractor.parameters()]
    model.learn(200)
    assert model.num_timesteps == 200
    after = list(model.policy.features_extractor.parameters())
    assert any(not torch.equal(b, a) for b, a in zip(before, after, strict=True))  # the trunk is trained


def test_a2c_with_pbrl_trunk_runs_on_ale_pong() -> None:
    ale_py = pytest.importorskip("ale_py")
    from stable_baselines3.common.atari_wrappers import AtariWrapper
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.vec_env import VecFrameStack, VecTransposeImage

    gym.register_envs(ale_py)
    venv = make_vec_env(
        "ALE/Pong-v5",
        n_envs=1,
        seed=0,
        env_kwargs={"frameskip": 1, "repeat_action_probability": 0.0},
        wrapper_class=AtariWrapper,
    )
    venv = VecTransposeImage(VecFrameStack(venv, n_stack=4))
    assert venv.observation_space.shape == (4, 84, 84)
    assert venv.observation_space.dtype == np.uint8
    model = A2C(
        "CnnPolicy",
        venv,
        policy_kwargs=resolve_policy_kwargs({"features_extractor_class": "pbrl_cnn", "net_arch": {"pi": [], "vf": []}}),
        n_steps=5,
        device="cpu",
        seed=0,
    )
    model.learn(300)
    assert model.num_timesteps == 300
    reward_model = make_cnn_reward_model("sobirl", venv.observation_space, venv.action_space)
    obs = venv.reset()
    assert reward_model.relabel(obs, np.zeros(1, dtype=np.int64)).shape == (1,)
