"""The meta-gradient (LIRPG) leader: its double backward against finite differences of the explicit lookahead."""

import numpy as np
import torch

from bilevel_rl.followers import make_follower
from bilevel_rl.followers.base import RewardMix
from bilevel_rl.objectives.leader_reward import GAECritic, LeaderRewardConfig, LeaderRewardObjective
from bilevel_rl.reward_models.mlp import MLPRewardModel
from bilevel_rl.upper.base import LeaderStep
from bilevel_rl.upper.meta_gradient import MetaGradient, MetaGradientConfig, discounted_sums


def _setup():
    torch.manual_seed(0)
    f = make_follower("ppo", "Pendulum-v1", 1, 0, {"n_steps": 128, "batch_size": 64, "n_epochs": 1}, record_steps=128)
    model = MLPRewardModel(f.observation_space, f.action_space, (16,), normalize_inputs=False).double()
    model.normalize = False
    config = LeaderRewardConfig()
    f.set_reward_model(model, config.mix)
    objective = LeaderRewardObjective(config, GAECritic(3, (16,), 1e-3, 1, 64, 0.95), follower_gamma=f.gamma)
    f.learn(256)
    batch = f.collect(128)
    rng = np.random.default_rng(0)
    objective.gather(batch, 1, rng, model)
    rule = MetaGradient(MetaGradientConfig(lookahead_lr=0.5, optimizer="sgd"))
    rule.attach(f, model, objective.data)
    step = LeaderStep(objective.data, batch, 1, 1, rng, torch.Generator().manual_seed(0))
    return f, model, objective, rule, step


def test_meta_gradient_matches_finite_differences_of_the_explicit_lookahead():
    f, model, objective, rule, step = _setup()
    data = objective.latest
    loss, _ = rule.leader_loss(data, step, None)
    params = list(model.parameters())
    grads = torch.autograd.grad(loss, params)
    gen = torch.Generator().manual_seed(1)
    direction = [torch.randn(p.shape, generator=gen, dtype=p.dtype) for p in params]
    analytic = sum(float((g * d).sum()) for g, d in zip(grads, direction, strict=True))

    batch = data.batch
    obs = torch.as_tensor(batch.flat_obs(), dtype=torch.float64)
    act = torch.as_tensor(batch.flat_actions(), dtype=torch.float64)
    theta0 = {k: v.detach().clone() for k, v in f.policy_parameters().items()}
    adv_ex = torch.as_tensor((data.advantages / data.advantages.std()).reshape(-1))
    with torch.no_grad():
        base = [p.detach().clone() for p in params]
        shaped0 = model(obs, act).reshape(batch.true_rewards.shape)
        g0 = discounted_sums(shaped0, batch.dones, f.gamma * 0.95).reshape(-1)

    def explicit(eps: float) -> float:
        """L_ex(θ − α ∇_θ L_in(θ, φ0 + eps·v)), L_in from the change of the shaping return (no linearisation)."""
        with torch.no_grad():
            for p, b, d in zip(params, base, direction, strict=True):
                p.copy_(b + eps * d)
            shaped = model(obs, act).reshape(batch.true_rewards.shape)
            g = discounted_sums(shaped, batch.dones, f.gamma * 0.95).reshape(-1) - g0
        theta = {k: v.clone().requires_grad_(True) for k, v in theta0.items()}
        logp = f.policy_log_prob(obs.float(), act.float(), theta)
        inner = -(logp * g.to(logp.dtype)).mean()
        names = list(theta)
        grads = torch.autograd.grad(inner, [theta[k] for k in names], allow_unused=True)
        new = {k: theta[k] - 0.5 * gr if gr is not None else theta[k] for k, gr in zip(names, grads, strict=True)}
        with torch.no_grad():
            ratio = torch.exp(f.policy_log_prob(obs.float(), act.float(), new) - logp)
            return float(-(ratio * adv_ex.to(ratio.dtype)).mean())

    eps = 1e-3
    numeric = (explicit(eps) - explicit(-eps)) / (2 * eps)
    with torch.no_grad():
        for p, b in zip(params, base, strict=True):
            p.copy_(b)
    assert abs(analytic) > 1e-8
    np.testing.assert_allclose(analytic, numeric, rtol=0.02, atol=1e-9)


def test_meta_gradient_step_changes_only_the_leader():
    f, model, objective, rule, step = _setup()
    policy_before = {k: v.detach().clone() for k, v in f.policy_parameters().items()}
    model_before = [p.detach().clone() for p in model.parameters()]
    out = rule.update(step)
    assert out["upper/lookahead_lr"] == 0.5 and np.isfinite(out["upper/loss"])
    assert any(not torch.equal(a, p) for a, p in zip(model_before, model.parameters(), strict=True))
    for k, v in f.policy_parameters().items():
        assert torch.equal(v, policy_before[k])
    assert f.reward_mix == RewardMix(env=1.0, model=1.0)
