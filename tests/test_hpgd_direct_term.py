"""HPGD's direct ``∇_x r̄`` term (Eq. 8): the per-episode estimator and the authors' every-visit start-state one."""

import pytest
import torch

from bilevel_rl.tabular.checks.hpgd_trajectory import pooled_weights
from bilevel_rl.tabular.core.soft_mdp import DTYPE
from bilevel_rl.tabular.repro.four_rooms import FourRooms, FourRoomsConfig
from bilevel_rl.tabular.repro.four_rooms_batch import BatchConfig, BatchFourRooms

GAMMA = 0.9


def _data(states, actions, taus, complete=None):
    """One run, one column per list (``(T, N)`` tensors as :meth:`BatchFourRooms.rollouts` returns them)."""
    s = torch.tensor(states, dtype=torch.int32).T
    tau = torch.tensor(taus, dtype=torch.int32).T
    done = torch.zeros_like(s, dtype=torch.bool)
    done[:-1] = tau[1:] == 0  # an episode ends where the next step starts one (the last step: see complete)
    comp = torch.ones_like(done) if complete is None else torch.tensor(complete).T
    return {"s": s, "a": torch.tensor(actions, dtype=torch.int32).T, "tau": tau, "done": done, "complete": comp,
            "run": torch.zeros(s.shape[1], dtype=torch.long)}  # fmt: skip


def _direct(data, D, direct):
    """``Σ_{s,a} W_r̄(s, a) D(s, a)``: the direct term for a scalar leader parameter with ``∇r̄ = D``."""
    _, W = pooled_weights(data, torch.zeros(1, *D.shape, dtype=DTYPE), GAMMA, 0.01, direct)
    return float((W[0] * D).sum())


def test_start_state_direct_term_is_the_every_visit_average_at_the_start_state_by_hand():
    """Column 0: episode (0, 1, 0, 2) then an unfinished (0, 1); column 1: (0, 2). Start state 0 is visited at
    five steps; the estimate is the mean of the ∇r̄ reward-to-go there (a mid-episode revisit included, and the
    unfinished episode's truncated return), against the per-episode sums over the three finished episodes."""
    D = torch.tensor([[1.0, 0.0], [0.0, 10.0], [100.0, 0.0]], dtype=DTYPE)  # ∇r̄(s, a); actions all 0 except (1, 1)
    states, actions, taus = [[0, 1, 0, 2, 0, 1], [0, 2, 0, 2, 0, 2]], [[0, 1, 0, 0, 0, 1], [0] * 6], \
        [[0, 1, 2, 3, 0, 1], [0, 1, 0, 1, 0, 1]]  # fmt: skip
    data = _data(states, actions, taus)
    g = GAMMA
    ep1 = [1 + g * 10 + g**2 * 1 + g**3 * 100, 1 + g * 100]  # G at the two visits of 0 in column 0's first episode
    unfinished = 1 + g * 10
    col1 = [1 + g * 100] * 3
    visits = ep1 + [unfinished] + col1
    data["done"][-1, 1] = True  # column 1's last episode ends on the last step; column 0's does not
    assert _direct(data, D, "start_state") == pytest.approx(sum(visits) / len(visits))
    assert _direct(data, D, "episodes") == pytest.approx((ep1[0] + unfinished + sum(col1)) / 4)
    # finished episodes only (the unfinished steps masked out): its start leaves the average
    data["complete"] = torch.tensor([[1, 1, 1, 1, 0, 0], [1] * 6], dtype=torch.bool).T
    assert _direct(data, D, "start_state") == pytest.approx((sum(ep1) + sum(col1)) / 5)
    assert _direct(data, D, "episodes") == pytest.approx((ep1[0] + sum(col1)) / 4)


def test_both_direct_estimators_converge_to_the_exact_direct_term_and_the_unfinished_starts_shrink_one():
    """On Four-Rooms (model = simulator), 4M steps per run: both estimators over finished episodes match
    ``d/dx Σ_s d^π(s) Σ_a π r̄_x`` (π fixed) within 1 %; counting each column's unfinished episode (5 columns of
    2,000 steps, the authors' layout) scales the start-state one by the share of finished starts, as documented."""
    problem = BatchFourRooms(FourRooms(FourRoomsConfig(slip_prob=4.0 / 9.0, cost_over_actions=False)))
    x = 0.5 * torch.randn(2, problem.d, generator=torch.Generator().manual_seed(0), dtype=DTYPE)
    ctx, lam, beta = torch.tensor([0, 1]), torch.tensor([0.005, 0.003], dtype=DTYPE), torch.tensor([3.0, 1.0]).double()
    pi, lu = problem.solve(problem.follower_reward(x, ctx, lam), ctx, lam, torch.full((2, 105, 4), 0.25).double())
    e = torch.zeros(2, problem.S, dtype=DTYPE)
    e[:, problem.env.start] = 1.0
    occ = problem.evaluate(lu, e, transposed=True)

    def ascent(W):
        xx = x.clone().requires_grad_(True)
        return torch.autograd.grad((W * problem.leader_reward(xx, ctx, beta)).sum(), xx)[0]

    exact = ascent(occ[:, :, None] * pi)
    assert float(exact.norm(dim=1).min()) > 1e-4
    data = problem.rollouts(pi, ctx, 2_000, 2_000, 200, torch.Generator().manual_seed(1))
    for direct in ("episodes", "start_state"):
        est = ascent(pooled_weights(data, problem.leader_reward(x, ctx, beta), problem.gamma, lam, direct)[1])
        assert ((est - exact).norm(dim=1) <= 0.01 * exact.norm(dim=1)).all(), direct
    rbar = problem.leader_reward(x, ctx, beta)
    ratios, shares = torch.zeros(8, 2, dtype=DTYPE), torch.zeros(8, 2, dtype=DTYPE)
    for seed in range(8):  # the authors' layout: 5 columns of 2,000 steps, each ending inside an episode or not
        small = problem.rollouts(pi, ctx, 5, 2_000, 200, torch.Generator().manual_seed(seed))
        finished = ascent(pooled_weights(small, rbar, problem.gamma, lam, "start_state")[1])
        small["complete"] = torch.ones_like(small["complete"])
        every = ascent(pooled_weights(small, rbar, problem.gamma, lam, "start_state")[1])
        for r in range(2):
            cols = small["run"] == r
            n_fin, n_unfinished = int(small["done"][:, cols].sum()), int((~small["done"][-1, cols]).sum())
            ratios[seed, r] = every[r].norm() / finished[r].norm()
            shares[seed, r] = n_fin / (n_fin + n_unfinished)
    # each unfinished episode adds a visit of the start state with a zero ∇r̄ return (the goal was never reached)
    assert (ratios.mean(0) < 0.99).all()
    torch.testing.assert_close(ratios.mean(0), shares.mean(0), atol=0.006, rtol=0)


def test_a_bad_direct_term_is_refused_in_one_line():
    with pytest.raises(ValueError, match="hpgd_direct: expected episodes or start_state"):
        BatchConfig(method="hpgd", hpgd_direct="first_visit")  # type: ignore[arg-type]
    data = _data([[0, 1]], [[0, 0]], [[0, 1]])
    with pytest.raises(ValueError, match="direct: expected episodes or start_state"):
        pooled_weights(data, torch.zeros(1, 2, 1, dtype=DTYPE), GAMMA, 0.01, "first")  # type: ignore[arg-type]
