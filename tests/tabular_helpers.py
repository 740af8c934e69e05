"""Comparison helpers shared by the estimator-vs-exact tests."""

import torch
from torch.nn import functional as F  # noqa: N812

from bilevel_rl.tabular.core.soft_mdp import DTYPE, SoftMDP, random_mdp


def compare(est, exact):
    """(cosine, relative error) of an estimate against the exact value."""
    cos = F.cosine_similarity(est.reshape(-1), exact.reshape(-1), dim=0).item()
    return cos, ((est - exact).norm() / exact.norm()).item()


def assert_matches(est, exact, cos_min=0.99, rel_max=0.05):
    cos, rel = compare(est, exact)
    assert cos >= cos_min and rel <= rel_max, f"cosine {cos:.4f}, relative error {rel:.4f}"


def gen(seed):
    return torch.Generator().manual_seed(seed)


def problem(S, A, gamma, tau, seed, n=3, sticky=False):
    """A random soft MDP and reward r_x = tanh(Fx). ``sticky``: peaked transitions softmax(3 N(0, 1)), so actions have
    persistent effects and the long-horizon part of ∇Q / ∂A is large (on Dirichlet(1) MDPs it is often < 10%)."""
    g = gen(seed)
    if sticky:
        P = torch.softmax(3.0 * torch.randn(S, A, S, generator=g, dtype=DTYPE), -1)
        mdp = SoftMDP(P, torch.full((S,), 1.0 / S, dtype=DTYPE), gamma, tau)
    else:
        mdp = random_mdp(S, A, gamma, tau, g)
    feats = torch.randn(S, A, n, generator=g, dtype=DTYPE)
    x = torch.randn(n, generator=g, dtype=DTYPE)

    def reward_fn(z):
        return torch.tanh(feats @ z)

    return mdp, reward_fn, x, g


def run_trainer(config, follower, reward_model, rule, objective, run_dir):
    """Run the deep ``Trainer`` unchanged on a (tabular) follower: no checkpoints, no progress bar; return it."""
    from bilevel_rl.logging import MetricLogger
    from bilevel_rl.trainer import CheckpointConfig, Trainer

    trainer = Trainer(
        config,
        CheckpointConfig(every=0),
        follower,
        reward_model,
        rule,
        objective,
        MetricLogger(run_dir),
        run_dir,
        seed=0,
        progress=False,
    )
    trainer.run()
    trainer.logger.close()
    return trainer
