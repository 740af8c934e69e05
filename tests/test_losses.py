import math

import gymnasium as gym
import numpy as np
import pytest
import torch

from bilevel_rl.data.preference_buffer import PreferenceBuffer
from bilevel_rl.data.segments import PreferencePairs
from bilevel_rl.objectives.preferences import bradley_terry_loss, preference_accuracy
from bilevel_rl.reward_models.mlp import MLPRewardModel
from bilevel_rl.upper.base import make_rule
from bilevel_rl.upper.drlhf import DRLHFConfig
from tests.helpers import leader_step


def test_bradley_terry_loss_matches_hand_computation():
    returns = torch.tensor([[2.0, 1.0], [0.0, 3.0], [1.0, 1.0]])
    labels = torch.tensor([1.0, 1.0, 0.5])
    # P(d0 > d1) = e^R0 / (e^R0 + e^R1)
    p = [math.exp(2) / (math.exp(2) + math.exp(1)), math.exp(0) / (math.exp(0) + math.exp(3)), 0.5]
    expected = [-math.log(p[0]), -math.log(p[1]), -(0.5 * math.log(0.5) + 0.5 * math.log(0.5))]
    np.testing.assert_allclose(bradley_terry_loss(returns, labels).numpy(), expected, rtol=1e-6)


def test_drlhf_config_refuses_bad_values():
    with pytest.raises(ValueError, match="upper.lr"):
        DRLHFConfig(lr=0.0)
    with pytest.raises(ValueError, match="upper.batch_size"):
        DRLHFConfig(batch_size=0)
    with pytest.raises(ValueError, match="unknown upper rule"):
        make_rule("nope", {})


def _linear_reward_pairs(n, rng, h=5):
    """Pairs whose true reward is w·s; the oracle labels them."""
    w = np.array([1.0, -2.0, 0.5], np.float32)
    obs = rng.normal(size=(n, 2, h, 3)).astype(np.float32)
    acts = rng.uniform(-1, 1, size=(n, 2, h, 1)).astype(np.float32)
    true_r = obs @ w
    returns = true_r.sum(-1)
    labels = (returns[:, 0] > returns[:, 1]).astype(np.float32)
    return PreferencePairs(obs, acts, true_r, np.ones((n, 2, h), np.float32), labels, np.zeros(n, np.int64))


def test_drlhf_learns_a_linear_reward():
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    model = MLPRewardModel(gym.spaces.Box(-10, 10, (3,)), gym.spaces.Box(-1, 1, (1,)), hidden_sizes=(32,))
    rule = make_rule("drlhf", {"lr": 3e-3, "batch_size": 32})
    rule.attach(None, model)  # type: ignore[arg-type]
    buf = PreferenceBuffer(1000)
    buf.add(_linear_reward_pairs(500, rng))
    held_out = _linear_reward_pairs(300, rng)
    before = preference_accuracy(model, held_out)
    first = rule.update(leader_step(buf, 1, rng))
    last = rule.update(leader_step(buf, 30, rng))
    after = preference_accuracy(model, held_out)
    assert last["upper/loss"] < 0.5 * first["upper/loss"]
    assert after >= 0.95 > before + 0.2
