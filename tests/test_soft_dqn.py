"""Soft DQN: the soft target by hand, the tabular soft-VI fixed point, the Boltzmann policy, CartPole, the follower."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium import spaces
from stable_baselines3.common.type_aliases import ReplayBufferSamples

from bilevel_rl.capabilities import Capability
from bilevel_rl.followers import SoftDQNFollower, follower_class, make_follower
from bilevel_rl.followers.soft_dqn import SoftDQN
from bilevel_rl.tabular.core.soft_mdp import SoftMDP, solve_soft
from tests.helpers import ToyEnv, one_thread  # noqa: F401 - one_thread: autouse fixture

SB3_CAPS = set(Capability) - {Capability.TEMPERATURE, Capability.GENERATIVE_MODEL, Capability.POLICY_LOOKAHEAD}
"""What every SB3 follower has (as in ``tests/test_followers.py``)."""


# ---------------------------------------------------------------------------------------------- environments


N_STATES, N_ACTIONS, HORIZON = 4, 2, 20
TABULAR_ID = "SoftDQNTabular-v0"


class TabularEnv(gym.Env[np.ndarray, int]):
    """A fixed random finite MDP with one-hot observations that never terminates.

    ``P(s'|s, a)`` ~ Dirichlet(1) and ``r(s, a)`` ~ U(-1, 1), both drawn once from ``default_rng(mdp_seed)``;
    episodes start uniformly and are truncated by the registered time limit (``HORIZON`` steps), which SB3's replay
    buffer stores as non-terminal: the target bootstraps through it, so the sampled MDP is the infinite-horizon one.
    """

    metadata = {"render_modes": ["rgb_array"]}  # SB3's make_vec_env asks for rgb_array

    def __init__(self, mdp_seed: int = 0, render_mode: str | None = None) -> None:
        rng = np.random.default_rng(mdp_seed)
        self.P = rng.dirichlet(np.ones(N_STATES), size=(N_STATES, N_ACTIONS))
        self.R = rng.uniform(-1.0, 1.0, size=(N_STATES, N_ACTIONS))
        self.observation_space = spaces.Box(0.0, 1.0, (N_STATES,), np.float32)
        self.action_space = spaces.Discrete(N_ACTIONS)
        self.render_mode = render_mode
        self.s = 0

    def _obs(self) -> np.ndarray:
        return np.eye(N_STATES, dtype=np.float32)[self.s]

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        self.s = int(self.np_random.integers(N_STATES))
        return self._obs(), {}

    def step(self, action: int) -> tuple[np.ndarray, float, bool, bool, dict]:
        reward = float(self.R[self.s, int(action)])
        self.s = int(self.np_random.choice(N_STATES, p=self.P[self.s, int(action)]))
        return self._obs(), reward, False, False, {}


if TABULAR_ID not in gym.registry:
    gym.register(TABULAR_ID, entry_point=TabularEnv, max_episode_steps=HORIZON)


# ---------------------------------------------------------------------------------------------- the soft target
def toy_model(**kwargs: Any) -> SoftDQN:
    args: dict[str, Any] = {
        "learning_starts": 10_000,
        "temperature": 0.7,
        "gamma": 0.9,
        "policy_kwargs": {"net_arch": [8]},
        "seed": 0,
    }
    args.update(kwargs)
    model = SoftDQN("MlpPolicy", ToyEnv(n_actions=3), **args)
    with torch.no_grad():  # make the target network differ from the online one
        for p in model.q_net_target.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return model


def toy_batch() -> ReplayBufferSamples:
    gen = torch.Generator().manual_seed(1)
    return ReplayBufferSamples(
        observations=torch.rand(4, 3, generator=gen) * 2 - 1,
        actions=torch.tensor([[0], [2], [1], [0]]),
        next_observations=torch.rand(4, 3, generator=gen) * 2 - 1,
        dones=torch.tensor([[0.0], [0.0], [1.0], [0.0]]),
        rewards=torch.tensor([[1.0], [-0.5], [0.3], [2.0]]),
    )


def _np(x: torch.Tensor) -> np.ndarray:
    return x.detach().double().numpy()


def _hand_target(model: SoftDQN, b: ReplayBufferSamples) -> np.ndarray:
    """``r + γ (1 − d) λ log Σ_a' exp(Q_target(s', a')/λ)`` in float64 numpy, ``(B,)``."""
    lam, qt = 0.7, _np(model.q_net_target(b.next_observations))
    z = qt / lam
    lse = z.max(axis=1) + np.log(np.exp(z - z.max(axis=1, keepdims=True)).sum(axis=1))
    return _np(b.rewards)[:, 0] + 0.9 * (1 - _np(b.dones)[:, 0]) * lam * lse


def _fixed_sample(model: SoftDQN, batch: ReplayBufferSamples) -> None:
    model.learn(1)  # sets up the logger and the replay buffer
    assert model.replay_buffer is not None
    model.replay_buffer.sample = lambda *args, **kwargs: batch  # type: ignore[method-assign]


def test_soft_target_matches_numpy_and_uses_the_target_network() -> None:
    model = toy_model()
    b = toy_batch()
    y = model.soft_target(b.rewards, b.next_observations, b.dones, model.gamma)
    assert y.shape == (4, 1) and not y.requires_grad
    np.testing.assert_allclose(_np(y)[:, 0], _hand_target(model, b), rtol=1e-5)
    assert _np(y)[2, 0] == pytest.approx(0.3)  # a true termination: no bootstrap
    online = _np(model.q_net(b.next_observations))
    assert not np.allclose(online, _np(model.q_net_target(b.next_observations)))
    # λ → 0: the soft maximum tends to DQN's hard maximum
    model.temperature = 1e-4
    hard = _np(b.rewards)[:, 0] + 0.9 * (1 - _np(b.dones)[:, 0]) * _np(model.q_net_target(b.next_observations)).max(1)
    soft = _np(model.soft_target(b.rewards, b.next_observations, b.dones, 0.9))[:, 0]
    np.testing.assert_allclose(soft, hard, atol=1e-3)


@pytest.mark.parametrize("loss", ["mse", "huber"])
def test_one_train_step_regresses_q_onto_the_hand_computed_soft_target(loss: str) -> None:
    """One ``train()`` step with plain SGD and no clipping: the logged loss is that of the hand-computed target,
    and the parameters move by exactly ``-lr ∇`` of it."""
    lr = 0.05
    model = toy_model(
        loss=loss,
        learning_rate=lr,
        max_grad_norm=1e9,
        policy_kwargs={"net_arch": [8], "optimizer_class": torch.optim.SGD},
    )
    b = toy_batch()
    _fixed_sample(model, b)
    y = torch.as_tensor(_hand_target(model, b), dtype=torch.float32)
    before = [p.detach().clone() for p in model.q_net.parameters()]
    q = model.q_net(b.observations).gather(1, b.actions).squeeze(1)
    expected = torch.nn.functional.mse_loss(q, y) if loss == "mse" else torch.nn.functional.smooth_l1_loss(q, y)
    grads = torch.autograd.grad(expected, list(model.q_net.parameters()))
    target_before = [p.detach().clone() for p in model.q_net_target.parameters()]

    model.train(gradient_steps=1, batch_size=4)
    assert model.logger.name_to_value["train/loss"] == pytest.approx(expected.item(), rel=1e-5)
    assert model.logger.name_to_value["train/n_updates"] == 1
    for p, p0, g in zip(model.q_net.parameters(), before, grads, strict=True):
        torch.testing.assert_close(p.detach(), p0 - lr * g, rtol=1e-5, atol=1e-6)
    for p, p0 in zip(model.q_net_target.parameters(), target_before, strict=True):
        assert torch.equal(p, p0)  # train() never touches the target (SB3 updates it per env step)


def test_refusals_are_one_line() -> None:
    with pytest.raises(ValueError, match=r"^SoftDQN: temperature must be > 0, got 0.0$"):
        SoftDQN("MlpPolicy", ToyEnv(n_actions=3), temperature=0.0)
    with pytest.raises(ValueError, match=r"^SoftDQN: loss must be one of huber, mse, got 'l1'$"):
        SoftDQN("MlpPolicy", ToyEnv(n_actions=3), loss="l1")
    model = toy_model()
    with pytest.raises(ValueError, match="temperature must be > 0"):
        model.temperature = -1.0
    with pytest.raises(ValueError) as err:
        make_follower("soft_dqn", "Pendulum-v1", 1, 0, {})
    assert str(err.value) == (
        "follower=soft_dqn: env.id=Pendulum-v1 has action space Box(-2.0, 2.0, (1,), float32); "
        "SoftDQN needs a Discrete action space"
    )


# ---------------------------------------------------------------------------------------------- the policy
def test_boltzmann_actions_no_epsilon_and_save_load(tmp_path: Any) -> None:
    """Sampled actions follow softmax(Q/λ), deterministic ones are argmax Q, ε stays 0; λ survives save/load."""
    model = toy_model(temperature=0.5, learning_starts=0)
    obs = np.full((1, 3), 0.2, np.float32)
    with torch.no_grad():
        q = model.q_net(torch.as_tensor(obs))[0]
    probs = torch.softmax(q / 0.5, dim=0).numpy()
    torch.manual_seed(0)
    state = np.random.get_state()
    draws = np.array([int(model.predict(obs[0], deterministic=False)[0]) for _ in range(4000)])
    assert np.array_equal(np.random.get_state()[1], state[1])  # no ε-greedy draw from numpy's global RNG
    freq = np.bincount(draws, minlength=3) / len(draws)
    np.testing.assert_allclose(freq, probs, atol=0.03)  # 4000 draws: standard error <= 0.008
    assert int(model.predict(obs[0], deterministic=True)[0]) == int(q.argmax())
    model.learn(50)
    assert model.exploration_rate == 0.0 and model.logger.name_to_value["train/n_updates"] > 0

    model.temperature = 0.25
    assert model.policy.temperature == 0.25
    model.save(tmp_path / "soft_dqn")
    loaded = SoftDQN.load(tmp_path / "soft_dqn", env=ToyEnv(n_actions=3))
    assert loaded.temperature == loaded.policy.temperature == 0.25 and loaded.loss == "huber"


# ---------------------------------------------------------------------------------------------- tabular fixed point
def test_q_converges_to_the_tabular_soft_value_iteration_fixed_point() -> None:
    """Soft DQN with a linear Q on one-hot states (a table) reaches the soft-VI fixed point of ``solve_soft``.

    The follower (relabelling replay buffer, time-limit truncations, true reward) trains on the 4-state, 2-action
    ``TabularEnv`` with γ = 0.8, λ = τ = 1, the MSE loss and Adam (lr 1e-2 decaying linearly to 0), 8000 env steps.
    Tolerances, as max-abs errors relative to the range of Q* (max − min over all (s, a)):

    * 2 % against the soft-VI fixed point of the *empirical* kernel P̂ of the replay buffer (the fixed point of the
      sampled target; measured 0.4 %), and
    * 5 % against the true kernel P (measured 1.0 %; P̂ itself is 0.9 % away: finite-sample noise, ≥ 400 samples
      of every (s, a)).

    The follower's ``action_dist`` is ``softmax(Q/λ)`` exactly. About 10 s on one CPU thread.
    """
    steps, gamma, lam = 8000, 0.8, 1.0
    f = make_follower(
        "soft_dqn",
        TABULAR_ID,
        n_envs=1,
        seed=0,
        algo_kwargs={
            "temperature": lam,
            "gamma": gamma,
            "loss": "mse",
            "policy_kwargs": {"net_arch": []},
            "learning_starts": 1000,
            "batch_size": 256,
            "train_freq": 1,
            "gradient_steps": 1,
            "target_update_interval": 1,
            "tau": 0.05,
            "buffer_size": steps,
        },
        learning_rate=1e-2,
        lr_schedule="linear",
        lr_horizon=steps,
    )
    f.set_reward_model_to_true_reward()
    f.learn(steps)
    env = TabularEnv()
    one_hot = np.eye(N_STATES, dtype=np.float32)
    with torch.no_grad():
        q = f.model.q_net(torch.as_tensor(one_hot)).double()  # type: ignore[attr-defined]
    rho = torch.full((N_STATES,), 1.0 / N_STATES, dtype=torch.float64)
    r = torch.as_tensor(env.R)
    q_star = solve_soft(r, SoftMDP(torch.as_tensor(env.P), rho, gamma, lam)).Q
    buf = f.replay_buffer
    n = buf.buffer_size if buf.full else buf.pos
    s, a = buf.observations[:n, 0].argmax(-1), buf.actions[:n, 0, 0].astype(int)
    counts = np.zeros((N_STATES, N_ACTIONS, N_STATES))
    np.add.at(counts, (s, a, buf.next_observations[:n, 0].argmax(-1)), 1)
    assert counts.sum(-1).min() >= 300  # Boltzmann exploration visits every (s, a)
    p_hat = torch.as_tensor(counts / counts.sum(-1, keepdims=True))
    q_hat = solve_soft(r, SoftMDP(p_hat, rho, gamma, lam)).Q
    scale = float(q_star.max() - q_star.min())
    assert float((q - q_hat).abs().max()) <= 0.02 * scale
    assert float((q - q_star).abs().max()) <= 0.05 * scale

    dist = f.action_dist(one_hot)
    torch.testing.assert_close(dist.probs.double(), torch.softmax(q / lam, dim=1), rtol=1e-5, atol=1e-6)
    assert f.temperature == lam and f.gamma == gamma


# ---------------------------------------------------------------------------------------------- the follower
def test_follower_capabilities_temperature_and_differentiable_policy() -> None:
    cls = follower_class("soft_dqn")
    assert cls is SoftDQNFollower
    for params in (None, {"name": "soft_dqn", "algo_kwargs": {}}, {"algo_kwargs": {"temperature": 0.2}}):
        assert cls.declared_capabilities(params) == frozenset(SB3_CAPS | {Capability.TEMPERATURE})
    f = make_follower("soft_dqn", "CartPole-v1", 1, 0, {"temperature": 0.2, "policy_kwargs": {"net_arch": [16]}})
    assert f.capabilities == cls.declared_capabilities(None) and f.temperature == pytest.approx(0.2)
    assert f._policy_optimizer() is f.model.policy.optimizer
    obs = np.zeros((5, 4), np.float32)
    assert not f.action_dist(obs).probs.requires_grad
    dist = f.action_dist(obs, grad=True)
    dist.log_prob(torch.zeros(5)).sum().backward()
    assert all(p.grad is not None for p in f.model.q_net.parameters())  # type: ignore[attr-defined]


def test_extra_policy_loss_moves_the_boltzmann_policy() -> None:
    """The hook adds its gradient at every Q-network step: a loss that rewards action 0 raises its probability
    compared with the same follower (same seed) trained without it."""
    obs = np.random.default_rng(0).normal(scale=0.05, size=(32, 4)).astype(np.float32)
    probs = []
    for hooked in (False, True):
        torch.manual_seed(0)
        f = make_follower(
            "soft_dqn",
            "CartPole-v1",
            1,
            0,
            {"learning_starts": 50, "batch_size": 32, "train_freq": 1, "policy_kwargs": {"net_arch": [16]}},
            learning_rate=3e-3,
        )
        f.set_reward_model_to_true_reward()
        if hooked:
            f.set_extra_policy_loss(lambda f=f: -f.action_dist(obs, grad=True).log_prob(torch.zeros(32)).mean())
        metrics = f.learn(300)
        assert ("follower/extra_policy_loss" in metrics) == hooked and "follower/entropy" in metrics
        probs.append(float(f.action_dist(obs).probs[:, 0].mean()))
    assert probs[1] > probs[0] + 0.2, probs


# ---------------------------------------------------------------------------------------------- CartPole
# Found by hand on one thread (λ = 1; greedy / Boltzmann evaluation returns over 5 episodes; a random policy gets
# ~22): 3000 steps, seeds 0-3: 219/173, 177/144, 382/161, 158/104 (~4.5 s each); 10 000 steps, seeds 0-2: 470/345,
# 500/292, 300/157 (~16 s each).
CARTPOLE_KWARGS: dict[str, Any] = {
    "temperature": 1.0,
    "learning_starts": 500,
    "batch_size": 64,
    "train_freq": 1,
    "target_update_interval": 1,
    "tau": 0.02,
    "gamma": 0.98,
    "policy_kwargs": {"net_arch": [64, 64]},
}


def _cartpole_returns(seed: int, steps: int) -> tuple[float, float]:
    """Greedy and Boltzmann evaluation returns (5 episodes each) of the follower after ``steps`` env steps."""
    f = make_follower("soft_dqn", "CartPole-v1", 1, seed, CARTPOLE_KWARGS, learning_rate=2e-3)
    f.set_reward_model_to_true_reward()
    f.learn(steps)
    greedy = f.evaluate(5, seed=100)["eval/true_return"]
    f.eval_deterministic = False
    boltzmann = f.evaluate(5, seed=100)["eval/true_return"]
    f.close()
    return greedy, boltzmann


def test_learns_cartpole() -> None:
    greedy, boltzmann = _cartpole_returns(seed=0, steps=3000)
    assert greedy > 150 and boltzmann > 75, (greedy, boltzmann)


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_learns_cartpole_longer(seed: int) -> None:
    greedy, boltzmann = _cartpole_returns(seed=seed, steps=10_000)
    assert greedy > 250 and boltzmann > 120, (greedy, boltzmann)
