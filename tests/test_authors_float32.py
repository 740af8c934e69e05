"""Zero-Order's values in the authors' float32 arithmetic (``authors_float32``) against our exact float64 solver."""

import json

import numpy as np
import pytest
import torch

from bilevel_rl.tabular.core.soft_mdp import DTYPE
from bilevel_rl.tabular.repro.authors_float32 import Float32Model
from bilevel_rl.tabular.repro.four_rooms import FourRooms, FourRoomsConfig
from bilevel_rl.tabular.repro.four_rooms_batch import BatchConfig, BatchFourRooms, run_batch

AUTHORS = FourRoomsConfig(slip_prob=0.44, cost_over_actions=False, mask_goal_penalty=True)


@pytest.fixture(scope="module", params=["authors", "paper"])
def problem(request):
    return BatchFourRooms(FourRooms(AUTHORS if request.param == "authors" else FourRoomsConfig(beta=3.0)))


def _exact(problem, x, ctx, lam, beta):
    R = x.shape[0]
    lam_t, beta_t = torch.full((R,), lam, dtype=DTYPE), torch.full((R,), beta, dtype=DTYPE)
    uniform = torch.full((R, problem.S, problem.A), 0.25, dtype=DTYPE)
    pi, lu = problem.solve(problem.follower_reward(x, ctx, lam_t), ctx, lam_t, uniform)
    return problem.leader_values(x, ctx, beta_t, pi, lu).numpy()


def _f32(model, x, ctx, lam, beta):
    R = x.shape[0]
    return model.values(x.numpy(), ctx.numpy(), np.full(R, lam), np.full(R, beta)).astype(np.float64)


@pytest.mark.parametrize("lam", [0.001, 0.005])
def test_float32_values_are_the_exact_values_up_to_float32_rounding(problem, lam):
    """The authors' program (100 × 5 soft sweeps from zero, 500 evaluation sweeps) computes our exact ``V̄(S)``: in
    float32 it agrees to 1e-4 on random iterates of both contexts, in both conventions (cost, goal mask), and it is
    not float64 (some value differs from the exact one by more than 1e-9)."""
    model = Float32Model(problem.env)
    x = (2.0 * torch.randn(8, problem.d, generator=torch.Generator().manual_seed(3), dtype=DTYPE)).float().double()
    ctx = torch.tensor([0, 1] * 4)
    v32, v64 = _f32(model, x, ctx, lam, 3.0), _exact(problem, x, ctx, lam, 3.0)
    assert np.abs(v32 - v64).max() < 1e-4
    assert np.abs(v32 - v64).max() > 1e-9
    assert np.ptp(v64) > 0.1  # the iterates are not all alike


def test_zero_orders_late_difference_quotients_are_float32_rounding_noise():
    """``[f(x + u z) − f(x)] / u`` in float32 is the float64 quotient at ``u = 1e-2`` (error < 2 % of its size) and
    noise at ``u = 1e-6`` (error larger than the quotient itself): the regime of the authors' late Zero-Order steps."""
    problem = BatchFourRooms(FourRooms(AUTHORS))
    model = Float32Model(problem.env)
    g = torch.Generator().manual_seed(1)
    x = 3.0 * torch.randn(8, problem.d, generator=g, dtype=DTYPE)
    x[:, -1] += 4.0
    x = x.float().double()
    ctx = torch.randint(2, (8,), generator=g)
    z = torch.randn(8, problem.d, generator=g, dtype=DTYPE).float().double()
    f64, f32 = _exact(problem, x, ctx, 0.003, 5.0), _f32(model, x, ctx, 0.003, 5.0)
    rel = {}
    for u in (1e-2, 1e-6):
        q64 = (_exact(problem, x + u * z, ctx, 0.003, 5.0) - f64) / u
        x1 = (x.float() + np.float32(u) * z.float()).double()
        q32 = (_f32(model, x1, ctx, 0.003, 5.0) - f32) / u
        rel[u] = np.abs(q32 - q64).mean() / np.abs(q64).mean()
    assert rel[1e-2] < 0.02
    assert rel[1e-6] > 1.0


def test_zero_order_in_float32_is_the_float64_run_rounded(tmp_path):
    """``zo_numerics="float32"`` draws the same contexts and directions as the float64 run (paired): with a large
    ``u`` (C = 1, 30 steps) both runs are the same up to rounding; its iterates stay on the float32 grid."""
    problem = BatchFourRooms(FourRooms(AUTHORS), sim_slip_prob=0.33)
    results, iterates = {}, {}
    for numerics in ("float32", "float64"):
        config = BatchConfig(method="zero_order", cells=((0.003, 1.0),), seeds=(0, 1), lrs=(0.5,), Cs=(1.0,),
                             iterations=30, window=10, zo_numerics=numerics)  # fmt: skip
        ckpt = tmp_path / f"{numerics}.ckpt"
        results[numerics] = run_batch(problem, config, torch.Generator().manual_seed(1), checkpoint=ckpt,
                                      checkpoint_every=20)  # fmt: skip
        iterates[numerics] = torch.load(ckpt, weights_only=False)["x"]
    assert torch.equal(iterates["float32"], iterates["float32"].float().double())
    gaps = [abs(a - b) for a, b in zip(results["float32"].metric, results["float64"].metric, strict=True)]
    assert 0 < max(gaps) < 1e-3
    assert (iterates["float32"] - iterates["float64"]).abs().max() < 1e-3


def test_a_bad_zero_order_numerics_is_refused_in_one_line():
    with pytest.raises(ValueError, match="zo_numerics: expected float64 or float32, got 'float16'"):
        BatchConfig(method="zero_order", zo_numerics="float16")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="zo_numerics: float32 .* metric='sampled'"):
        BatchConfig(method="zero_order", zo_numerics="float32", metric="average")


def test_the_report_takes_float32_zero_order_with_other_methods_but_not_with_float64_zero_order(tmp_path):
    """``--zo-numerics float32`` changes no other method's runs: its file reports with AMD's, and the Zero-Order line
    says so; Zero-Order files of both numerics are refused in one line."""
    from test_four_rooms_batch import _table3_script

    mod = _table3_script()
    common = ["--cells", "0.005:1", "--seeds", "1", "--lrs", "0.5", "--Cs", "1.0", "--iterations", "4", "--window",
              "2", "--progress-every", "0"]  # fmt: skip
    z32, z64, amd = tmp_path / "zo32.json", tmp_path / "zo64.json", tmp_path / "amd.json"
    assert mod.main(["--method", "zero_order", "--zo-numerics", "float32", "--out", str(z32), *common]) == 0
    assert mod.main(["--method", "zero_order", "--out", str(z64), *common]) == 0
    assert mod.main(["--method", "amd", "--out", str(amd), *common]) == 0
    assert json.loads(z32.read_text())["convention"] == "authors+zo-float32"
    md = tmp_path / "t3.md"
    assert mod.main(["--report", str(z32), str(amd), "--md", str(md)]) == 0
    assert "the authors' float32 arithmetic" in md.read_text()
    with pytest.raises(SystemExit, match="the zero_order files mix conventions"):
        mod.main(["--report", str(z32), str(z64), str(amd), "--md", str(tmp_path / "bad.md")])
