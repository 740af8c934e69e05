"""Batched Four-Rooms runs (HPGD Table 3 at the paper's budget) against the per-run reference functions."""

import json

import pytest
import torch

from bilevel_rl.tabular.checks.hpgd_trajectory import pooled_weights
from bilevel_rl.tabular.core.soft_mdp import DTYPE, solve_soft
from bilevel_rl.tabular.repro.amd import exact_leader_gradient
from bilevel_rl.tabular.repro.band_lu import BandedModel
from bilevel_rl.tabular.repro.four_rooms import CONTEXTS, FourRooms, FourRoomsConfig
from bilevel_rl.tabular.repro.four_rooms_batch import ROLLOUT_CHUNK, BatchConfig, BatchFourRooms, run_batch
from bilevel_rl.tabular.repro.hpgd import WarmSoftSolver

CODE = FourRoomsConfig(beta=3.0, slip_prob=4.0 / 9.0, cost_over_actions=False, mask_goal_penalty=True)


@pytest.fixture(scope="module", params=["paper", "code"])
def problem(request):
    return BatchFourRooms(FourRooms(FourRoomsConfig(beta=3.0) if request.param == "paper" else CODE))


def _xs(problem, n=4, seed=0):
    return 2.0 * torch.randn(n, problem.d, generator=torch.Generator().manual_seed(seed), dtype=DTYPE)


def test_reward_tables_are_the_per_run_tables(problem):
    x, ctx = _xs(problem), torch.tensor([0, 1, 1, 0])
    r = problem.follower_reward(x, ctx, torch.full((4,), 0.003, dtype=DTYPE))
    rbar = problem.leader_reward(x, ctx, torch.full((4,), 3.0, dtype=DTYPE))
    for i in range(len(x)):
        xi = CONTEXTS[int(ctx[i])]
        torch.testing.assert_close(r[i], problem.env.follower_reward(x[i], xi, 0.003))
        torch.testing.assert_close(rbar[i], problem.env.leader_reward(x[i], xi))


def _dense_check(P, gamma, R=64, seed=0):
    """Banded solves (plain and transposed) against torch's dense LU on random policies and contexts."""
    model = BandedModel.from_dense(P, gamma)
    K, S, A, _ = P.shape
    g = torch.Generator().manual_seed(seed)
    pi = torch.softmax(3.0 * torch.randn(R, S, A, generator=g, dtype=DTYPE), -1)
    ctx = torch.randint(K, (R,), generator=g)
    rhs = torch.randn(R, S, generator=g, dtype=DTYPE)
    M = torch.eye(S, dtype=DTYPE) - gamma * torch.einsum("rsa,rsat->rst", pi, torch.as_tensor(P)[ctx])
    lu = model.factor(pi.numpy(), ctx.numpy())
    for transposed in (False, True):
        ref = torch.linalg.solve(M.mT if transposed else M, rhs[..., None])[..., 0]
        got = torch.from_numpy(model.solve(lu, rhs.numpy(), transposed))
        torch.testing.assert_close(got, ref, rtol=1e-11, atol=1e-11)
    return model


def test_banded_policy_evaluation_is_the_dense_solve(problem):
    model = _dense_check(problem.P.numpy(), problem.gamma)
    rows, cols = (problem.P > 0).any(0).any(1).nonzero().T
    assert (rows - cols).abs().max() == 97  # the index order: the goal's exit to the absorbing state
    assert model.half_bandwidth == 11  # reverse Cuthill–McKee: a band of 23 instead of 105 columns


def test_banded_policy_evaluation_on_a_random_sparse_mdp():
    g = torch.Generator().manual_seed(3)
    K, S, A, succ = 3, 40, 3, 4
    P = torch.zeros(K, S, A, S, dtype=DTYPE)
    idx = torch.randint(S, (K, S, A, succ), generator=g)  # arbitrary graph: no grid, wide band
    P.scatter_add_(-1, idx, torch.rand(K, S, A, succ, generator=g, dtype=DTYPE))
    P /= P.sum(-1, keepdim=True)
    model = _dense_check(P.numpy(), 0.95, seed=1)
    assert 0 < model.half_bandwidth < S


@pytest.mark.parametrize("lam", [0.001, 0.005])
def test_solver_values_and_exact_gradient_match_the_per_run_code(problem, lam):
    """Soft optimum (warm start from uniform), leader value and AMD's implicit gradient, run by run."""
    x, ctx = _xs(problem, seed=1), torch.tensor([0, 1, 0, 1])
    pi0 = torch.full((4, problem.S, problem.A), 0.25, dtype=DTYPE)
    lams, betas = torch.full((4,), lam, dtype=DTYPE), torch.full((4,), 3.0, dtype=DTYPE)
    pi, lu = problem.solve(problem.follower_reward(x, ctx, lams), ctx, lams, pi0)
    g, value = problem.exact_gradient(x, ctx, lams, betas, pi, lu)
    torch.testing.assert_close(problem.leader_values(x, ctx, betas, pi, lu), value)
    for i in range(4):
        xi = CONTEXTS[int(ctx[i])]
        ref = solve_soft(problem.env.follower_reward(x[i], xi, lam), problem.env.mdp(xi, lam))
        torch.testing.assert_close(pi[i], ref.pi, atol=1e-8, rtol=0)
        assert float(value[i]) == pytest.approx(float(problem.env.leader_value(ref.pi, x[i], xi)), abs=1e-7)
        g_ref = exact_leader_gradient(problem.env, WarmSoftSolver(problem.env, lam), x[i], xi)
        torch.testing.assert_close(g[i], g_ref, atol=1e-7 * float(g_ref.abs().max()) + 1e-12, rtol=1e-5)


def test_rollouts_follow_each_runs_own_policy_and_context():
    """Without slip, run 0 always moves up and run 1 always right: the states are the walls-respecting moves."""
    env = FourRooms(FourRoomsConfig(slip_prob=0.0))
    problem = BatchFourRooms(env)
    pi = torch.zeros(2, problem.S, problem.A, dtype=DTYPE)
    pi[0, :, 0] = 1.0
    pi[1, :, 1] = 1.0
    data = problem.rollouts(pi, torch.tensor([0, 1]), 3, 30, 200, torch.Generator().manual_seed(0))
    assert data["s"].shape == (30, 6) and data["run"].tolist() == [0, 0, 0, 1, 1, 1]
    for col in range(6):
        action = 0 if col < 3 else 1
        assert (data["a"][:, col] == action).all()
        s = data["s"][:, col]
        expected = env.next_cell[s[:-1], action]
        assert torch.equal(s[1:], expected)


def test_rollout_draws_follow_the_policy_and_the_simulator():
    """First-step frequencies over 40 000 copies per run: actions ~ π_r(S), next cells ~ Σ_a π_r(a|S) P_sim(·|S, a)."""
    env = FourRooms(CODE)
    problem = BatchFourRooms(env, sim_slip_prob=1.0 / 3.0)
    sim = FourRooms(FourRoomsConfig(slip_prob=1.0 / 3.0))
    pi = torch.softmax(torch.randn(2, problem.S, problem.A, generator=torch.Generator().manual_seed(5)), -1).to(DTYPE)
    ctx, n = torch.tensor([1, 0]), 40_000
    data = problem.rollouts(pi, ctx, n, 2, 200, torch.Generator().manual_seed(6))
    for r in range(2):
        cols = data["run"] == r
        a, s1 = data["a"][0, cols], data["s"][1, cols]
        freq_a = torch.bincount(a, minlength=4).to(DTYPE) / n
        expected_s1 = pi[r, env.start] @ sim.transitions(CONTEXTS[int(ctx[r])])[env.start]
        freq_s1 = torch.bincount(s1, minlength=problem.S).to(DTYPE) / n
        assert (freq_a - pi[r, env.start]).abs().max() < 4 * (0.25 / n) ** 0.5
        assert (freq_s1 - expected_s1).abs().max() < 4 * (0.25 / n) ** 0.5


def test_compiled_rollouts_are_the_step_by_step_loop():
    """Same generator, same draws: the numba kernel (chunks of uniforms) reproduces the torch loop exactly, across a
    chunk boundary and with episodes cut at ``max_episode_steps``."""
    problem = BatchFourRooms(FourRooms(CODE), sim_slip_prob=1.0 / 3.0)
    pi = torch.softmax(torch.randn(3, problem.S, problem.A, generator=torch.Generator().manual_seed(8)), -1).to(DTYPE)
    ctx, steps = torch.tensor([0, 1, 1]), ROLLOUT_CHUNK + 77
    data = problem.rollouts(pi, ctx, 4, steps, 40, torch.Generator().manual_seed(9))
    ref = problem.rollouts_stepwise(pi, ctx, 4, steps, 40, torch.Generator().manual_seed(9))
    for key in ("s", "a", "tau", "done"):
        assert torch.equal(data[key], ref[key]), key
    assert ref["done"].any() and (ref["tau"] == 39).any()  # episodes were cut and restarted
    later_done = torch.flip(torch.cummax(torch.flip(ref["done"].to(torch.int8), [0]), 0).values, [0]).bool()
    assert torch.equal(data["complete"], later_done)


def test_pooled_weights_keep_runs_apart():
    """Two runs' weights computed together equal each run's weights computed alone (same columns)."""
    env = FourRooms(CODE)
    problem = BatchFourRooms(env, sim_slip_prob=1.0 / 3.0)
    x, ctx = _xs(problem, 2, seed=2), torch.tensor([0, 1])
    lam = torch.tensor([0.005, 0.001], dtype=DTYPE)
    pi, _ = problem.solve(problem.follower_reward(x, ctx, lam), ctx, lam, torch.full((2, 105, 4), 0.25, dtype=DTYPE))
    data = problem.rollouts(pi, ctx, 4, 400, 200, torch.Generator().manual_seed(3))
    rbar = problem.leader_reward(x, ctx, torch.ones(2, dtype=DTYPE))
    W_r, W_rbar = pooled_weights(data, rbar, problem.gamma, lam)
    assert W_rbar[0].abs().sum() > 0 and W_rbar[1].abs().sum() > 0
    for i in range(2):
        cols = data["run"] == i
        alone = {k: (v[:, cols] if v.dim() == 2 else v[cols] * 0) for k, v in data.items()}
        W_r1, W_rbar1 = pooled_weights(alone, rbar[i : i + 1], problem.gamma, float(lam[i]))
        torch.testing.assert_close(W_r[i], W_r1[0])
        torch.testing.assert_close(W_rbar[i], W_rbar1[0])


@pytest.mark.parametrize("method", ["amd", "zero_order", "hpgd"])
def test_each_method_learns_where_spending_pays(method):
    """The authors' conventions, λ = 0.005, β = 1 and 3 in one batch: within 150 iterations at lr 1 every method
    lifts the leader value above the do-nothing leader's (x = 0) at β = 1 and spends budget there."""
    env = FourRooms(FourRoomsConfig(slip_prob=4.0 / 9.0, cost_over_actions=False, mask_goal_penalty=True))
    problem = BatchFourRooms(env, sim_slip_prob=1.0 / 3.0)
    config = BatchConfig(
        method=method,
        cells=((0.005, 1.0), (0.005, 3.0)),
        seeds=(0, 1),
        lrs=(1.0,),
        Cs=(1.0,),
        iterations=150,
        window=50,
        metric="average",
        num_envs=5,
        steps_per_env=400,
    )
    result = run_batch(problem, config, torch.Generator().manual_seed(0))
    assert [(r["beta"], r["seed"]) for r in result.runs] == [(1.0, 0), (1.0, 1), (3.0, 0), (3.0, 1)]
    R = len(result.runs)
    lam = torch.full((R,), 0.005, dtype=DTYPE)
    beta = torch.tensor([r["beta"] for r in result.runs], dtype=DTYPE)
    uniform = torch.full((R, problem.S, problem.A), 0.25, dtype=DTYPE)
    from bilevel_rl.tabular.repro.four_rooms_batch import context_average

    base = context_average(problem, torch.zeros(R, problem.d, dtype=DTYPE), lam, beta, [uniform, uniform], 1e-10)
    gain = [m - float(b) for m, b in zip(result.metric, base, strict=True)]
    assert gain[0] > 0.02 and gain[1] > 0.02, gain
    assert result.budget_used[0] > 0.1 and result.budget_used[1] > 0.1


def test_table3_script_runs_a_method_and_reports_against_the_paper(tmp_path):
    """The batched Table 3 script: one method's runs to JSON, then the report with a per-entry within_2se."""
    import json

    mod = _table3_script()
    common = ["--cells", "0.005:1", "--seeds", "2", "--lrs", "1.0", "0.1", "--iterations", "12", "--window", "4"]
    assert mod.main(["--method", "amd", "--out", str(tmp_path / "amd.json"), *common, "--progress-every", "0"]) == 0
    runs = json.loads((tmp_path / "amd.json").read_text())["runs"]
    assert len(runs) == 4 and {r["lr"] for r in runs} == {1.0, 0.1}
    other = ["--cells", "0.001:3", "--seeds", "2", "--lrs", "1.0", "--iterations", "12", "--window", "4"]
    assert mod.main(["--method", "amd", "--out", str(tmp_path / "amd2.json"), *other, "--progress-every", "0"]) == 0
    md = tmp_path / "t3.md"
    assert mod.main(["--report", str(tmp_path / "amd.json"), str(tmp_path / "amd2.json"), "--md", str(md)]) == 0
    entries = json.loads(md.with_suffix(".json").read_text())["entries"]
    assert [(e["lam"], e["beta"]) for e in entries] == [(0.001, 3.0), (0.005, 1.0)]  # two files of one method merged
    entry = entries[1]
    best = max((1.0, 0.1), key=lambda lr: sum(r["metric"] for r in runs if r["lr"] == lr))
    assert entry["lr"] == best and entry["method"] == "AMD" and entry["paper_mean"] == 1.28
    hits = sum(e["within_2se"] for e in entries)
    assert isinstance(entry["within_2se"], bool) and f"**{hits} of 2**" in md.read_text()


def test_the_report_takes_hpgd_partial_episodes_with_other_methods_but_refuses_another_convention(tmp_path):
    """HPGD's ``--hpgd-partial-episodes`` changes no other method's runs, so its file reports with AMD's (and the
    HPGD line names the estimator); files of another convention (here the Σ_{s,a} cost), or HPGD files of both
    estimators, are refused in one line."""
    mod = _table3_script()
    common = ["--cells", "0.005:1", "--seeds", "1", "--lrs", "0.5", "--iterations", "4", "--window", "2",
              "--steps-per-env", "100", "--progress-every", "0"]  # fmt: skip
    hpgd, amd, other = tmp_path / "hpgd.json", tmp_path / "amd.json", tmp_path / "amd_cost.json"
    authors = ["--hpgd-partial-episodes", "--hpgd-direct", "start-state"]
    assert mod.main(["--method", "hpgd", *authors, "--out", str(hpgd), *common]) == 0
    assert mod.main(["--method", "amd", "--out", str(amd), *common]) == 0
    assert mod.main(["--method", "amd", "--cost", "state-action", "--out", str(other), *common]) == 0
    md = tmp_path / "t3.md"
    assert mod.main(["--report", str(hpgd), str(amd), "--md", str(md)]) == 0
    assert "the start state (the authors' estimator)" in md.read_text()
    with pytest.raises(SystemExit, match="mix conventions"):
        mod.main(["--report", str(hpgd), str(other), "--md", str(tmp_path / "bad.md")])
    for i, options in enumerate(([], ["--hpgd-partial-episodes"])):  # the other estimators
        finished = tmp_path / f"hpgd_{i}.json"
        assert mod.main(["--method", "hpgd", *options, "--out", str(finished), *common]) == 0
        with pytest.raises(SystemExit, match="the hpgd files mix conventions"):
            mod.main(["--report", str(hpgd), str(finished), str(amd), "--md", str(tmp_path / "bad2.md")])


def test_the_authors_metric_is_the_sampled_context_except_for_amd():
    """``metric=sampled`` logs the sampled context's value (Zero-Order differs from the context average) but the
    context average for AMD (identical to ``metric=average``: the metric draws no random numbers)."""
    env = FourRooms(CODE)
    problem = BatchFourRooms(env)

    def metric(method, kind):
        cfg = BatchConfig(method=method, cells=((0.003, 1.0),), seeds=(0,), lrs=(1.0,), Cs=(1.0,), iterations=30,
                          window=10, metric=kind)  # fmt: skip
        return run_batch(problem, cfg, torch.Generator().manual_seed(4)).metric[0]

    assert metric("amd", "sampled") == metric("amd", "average")
    assert metric("zero_order", "sampled") != pytest.approx(metric("zero_order", "average"), abs=1e-6)


@pytest.mark.parametrize("method", ["zero_order", "hpgd"])
def test_a_resumed_batch_continues_exactly(method, tmp_path):
    """Stopped after 10 of 20 iterations (the checkpoint of iteration 10 kept) and resumed: the same metrics and
    curves as one uninterrupted run; a checkpoint of another configuration is refused."""
    problem = BatchFourRooms(FourRooms(CODE), sim_slip_prob=1.0 / 3.0)

    def config(iterations):
        return BatchConfig(method=method, cells=((0.003, 1.0),), seeds=(0, 1), lrs=(1.0,), Cs=(1.0,),
                           iterations=iterations, window=5, curve_every=3, steps_per_env=100)  # fmt: skip

    full = run_batch(problem, config(20), torch.Generator().manual_seed(1))
    ckpt = tmp_path / "batch.ckpt"
    first = run_batch(problem, config(20), torch.Generator().manual_seed(1), checkpoint=ckpt, checkpoint_every=10)
    assert first.metric == full.metric  # checkpointing does not change the run
    state = torch.load(ckpt, weights_only=False)
    assert state["t"] == 10
    resumed = run_batch(problem, config(20), torch.Generator().manual_seed(99), checkpoint=ckpt, checkpoint_every=10)
    assert resumed.metric == full.metric and resumed.curves == full.curves
    assert resumed.budget_used == full.budget_used
    with pytest.raises(ValueError, match="checkpoint: .* another configuration"):
        run_batch(problem, config(30), torch.Generator().manual_seed(1), checkpoint=ckpt)


def test_leader_float32_keeps_the_logits_on_the_float32_grid(tmp_path):
    """With ``leader_float32`` every stored iterate is a float32 number, so a step below float32 resolution is lost
    as in the authors' JAX code; without it the iterates are not; the change is rounding, not another run."""
    problem = BatchFourRooms(FourRooms(CODE), sim_slip_prob=1.0 / 3.0)
    results, iterates = {}, {}
    for f32 in (True, False):
        config = BatchConfig(method="amd", cells=((0.003, 1.0),), seeds=(0, 1), lrs=(0.5,), iterations=30, window=5,
                             leader_float32=f32)  # fmt: skip
        ckpt = tmp_path / f"f32_{f32}.ckpt"
        results[f32] = run_batch(problem, config, torch.Generator().manual_seed(1), checkpoint=ckpt,
                                 checkpoint_every=20)  # fmt: skip
        iterates[f32] = torch.load(ckpt, weights_only=False)["x"]  # x after 20 iterations
    assert torch.equal(iterates[True], iterates[True].float().double())
    assert not torch.equal(iterates[False], iterates[False].float().double())
    assert results[True].metric != results[False].metric
    assert max(abs(a - b) for a, b in zip(results[True].metric, results[False].metric, strict=True)) < 1e-4


def test_hpgd_partial_episodes_feed_the_unfinished_last_episode_to_the_estimator(monkeypatch):
    """With ``hpgd_partial_episodes`` HPGD's statistics see every step, the unfinished last episode of each
    environment included (the authors' estimator); by default those steps are left out; the normaliser (finished
    episodes) is the same either way."""
    import bilevel_rl.tabular.repro.four_rooms_batch as fb

    problem = BatchFourRooms(FourRooms(CODE), sim_slip_prob=1.0 / 3.0)
    seen = []

    def spy(data, rbar, gamma, lam, direct):
        seen.append((data["complete"].clone(), int(data["done"].sum())))
        return pooled_weights(data, rbar, gamma, lam, direct)

    monkeypatch.setattr(fb, "pooled_weights", spy)
    results = {}
    for partial in (False, True):
        config = BatchConfig(method="hpgd", cells=((0.003, 1.0),), seeds=(0,), lrs=(0.5,), iterations=3, window=1,
                             steps_per_env=150, hpgd_partial_episodes=partial)  # fmt: skip
        results[partial] = run_batch(problem, config, torch.Generator().manual_seed(3))
    default, partial = seen[:3], seen[3:]
    assert all(not bool(c.all()) for c, _ in default)  # 150 steps end inside an episode somewhere
    assert all(bool(c.all()) for c, _ in partial)
    assert default[0][1] == partial[0][1]  # the same first batch: as many finished episodes
    assert results[False].metric != results[True].metric  # the extra steps change the gradient


def _table3_script():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "scripts" / "reproduce_hpgd_table3_batched.py"
    spec = importlib.util.spec_from_file_location("table3_batched", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_a_miss_is_explained_by_its_gap_grid_edge_and_trend():
    """``diagnose``: the gap and tolerance, a learning rate / C at the grid's edge, and a curve still rising over
    the last window (here +0.1 on every seed, window = 5 curve points); a flat curve and an inner lr say nothing,
    and neither do two seeds or fewer than 5 points per window."""
    mod = _table3_script()
    cfg = {"lrs": [1.0, 0.5, 0.1], "Cs": [0.1, 1.0, 5.0], "window": 500, "curve_every": 100}
    entry = {"mean": 0.40, "se": 0.01, "paper_mean": 0.50, "paper_se": 0.0, "lr": 1.0, "C": 5.0,
             "method": "Zero-Order"}  # fmt: skip
    rising = [{"curve": [0.1] + [0.3 + e] * 5 + [0.4 - e] * 5} for e in (0.0, 0.01, -0.01)]
    facts = mod.diagnose(entry, rising, cfg)
    assert facts[0] == "ours below the paper by 0.100 (tolerance 0.025)"
    assert any("best lr 1 at the edge" in f for f in facts) and any("best C 5 at the edge" in f for f in facts)
    assert facts[-1] == "still rising: +0.100 from the previous window to the last"
    swinging = [{"curve": [0.1] + [0.4, 0.5, 0.45, 0.4, 0.5] * 2} for _ in range(3)]  # flat mean, swings 0.1
    assert mod.diagnose(entry, swinging, cfg)[-1].startswith("best C")  # sampled-context curves: no claim
    assert mod.diagnose({**entry, "se": 0.001}, swinging, cfg, averaged=True)[-1] == (
        "not converged: the value swings within each run over the last window (std 0.045, max − min 0.100)"
    )
    assert "still" not in mod.diagnose(entry, rising[:2], cfg)[-1]  # two seeds
    assert "still" not in mod.diagnose(entry, rising, {**cfg, "window": 400})[-1]  # 4 points per window
    flat = [{"curve": [0.4] * 11}] * 3
    assert mod.diagnose({**entry, "lr": 0.5, "C": 1.0, "mean": 0.6}, flat, cfg) == [
        "ours above the paper by 0.100 (tolerance 0.025)"
    ]


def test_the_ablation_table_compares_each_variant_with_the_authors_baseline(tmp_path):
    """Two conventions of one method at a tiny budget and the authors' at a larger one: the baseline row is the
    authors' convention at the smaller budget, the other convention's mean shift is the mean difference of the two
    files' best-lr scores."""
    import json

    mod = _table3_script()
    common = ["--method", "amd", "--cells", "0.005:1,0.001:3", "--seeds", "2", "--lrs", "1.0",
              "--iterations", "12", "--window", "4", "--progress-every", "0"]  # fmt: skip
    assert mod.main([*common, "--out", str(tmp_path / "a.json")]) == 0
    assert mod.main([*common, "--out", str(tmp_path / "b.json"), "--cost", "state-action"]) == 0
    longer = [*common[:-4], "--window", "4", "--progress-every", "0"]
    longer[longer.index("12")] = "16"
    assert mod.main([*longer, "--out", str(tmp_path / "c.json")]) == 0  # the authors' convention at a larger budget
    md = tmp_path / "ablation.md"
    files = [str(tmp_path / f) for f in ("c.json", "b.json", "a.json")]
    assert mod.main(["--ablation", *files, "--md", str(md)]) == 0
    text = md.read_text()
    a, b = (mod.cell_scores(json.loads((tmp_path / f).read_text())) for f in ("a.json", "b.json"))
    shift = sum(b[c][0] - a[c][0] for c in a) / len(a)
    rows = [line for line in text.splitlines() if line.startswith("| authors")]
    assert rows[0].startswith("| authors, sampled, 12 it, 2 seeds |") and rows[0].endswith("| – |")
    assert rows[1].startswith("| authors, sampled, 16 it, 2 seeds |")  # the baseline is the smaller budget
    assert rows[2].startswith("| authors+cost=state-action,") and rows[2].endswith(f"| {shift:+.3f} |")
    assert "Baseline: authors, sampled, 12 it, 2 seeds." in text


def test_the_script_runs_amd_as_algorithm_9_prints_it_as_its_own_convention(tmp_path):
    """``--amd-follower sweeps``: the runs are a variant of their own (``authors+amd-sweeps=K``) next to the exact
    follower's in the ablation table, and they differ from it (the follower lags)."""
    import json

    mod = _table3_script()
    common = ["--method", "amd", "--cells", "0.005:1", "--seeds", "1", "--lrs", "0.5",
              "--iterations", "6", "--window", "3", "--progress-every", "0"]  # fmt: skip
    assert mod.main([*common, "--out", str(tmp_path / "exact.json")]) == 0
    assert mod.main([*common, "--out", str(tmp_path / "k3.json"), "--amd-follower", "sweeps", "--amd-sweeps", "3"]) == 0
    exact, k3 = (json.loads((tmp_path / f).read_text()) for f in ("exact.json", "k3.json"))
    assert k3["convention"] == "authors+amd-sweeps=3" and k3["config"]["amd_sweeps"] == 3
    assert k3["runs"][0]["metric"] != exact["runs"][0]["metric"]
    md = tmp_path / "ablation.md"
    assert mod.main(["--ablation", str(tmp_path / "exact.json"), str(tmp_path / "k3.json"), "--md", str(md)]) == 0
    assert "| authors+amd-sweeps=3, sampled, 6 it, 1 seeds |" in md.read_text()


def test_the_report_can_choose_from_the_authors_code_grid_without_new_runs():
    """``restrict_grid`` keeps only runs in the given lr / C grids (AMD's C is nan and always kept), updates the
    config's grids, and refuses a grid that leaves nothing, naming the flags."""
    mod = _table3_script()
    nan = float("nan")
    runs = [{"lr": lr, "C": C} for lr in (1.0, 0.5) for C in (0.1, 5.0)]
    rec = {"method": "zero_order", "runs": runs, "config": {"lrs": [1.0, 0.5], "Cs": [0.1, 5.0]}}
    out = mod.restrict_grid(rec, [0.5, 0.1], [0.1, 1.0])
    assert out["runs"] == [{"lr": 0.5, "C": 0.1}] and out["config"]["lrs"] == [0.5] and out["config"]["Cs"] == [0.1]
    amd = {"method": "amd", "runs": [{"lr": 1.0, "C": nan}, {"lr": 0.5, "C": nan}], "config": {"lrs": [1.0, 0.5]}}
    assert [r["lr"] for r in mod.restrict_grid(amd, [0.5], [0.1])["runs"]] == [0.5]
    with pytest.raises(SystemExit, match="--only-lrs/--only-Cs: no run of amd"):
        mod.restrict_grid(amd, [2.0], None)


def test_files_of_one_method_merge_their_runs_and_their_grids():
    """A Zero-Order file run later for one more C joins the main file: runs concatenated, CPU summed, and the
    config's lr and C grids are the union (the header then names the grid the entry was chosen from)."""
    mod = _table3_script()
    main = {"method": "zero_order", "runs": [{"C": 0.1}], "cpu_seconds": 10.0,
            "config": {"lrs": [0.5, 0.1], "Cs": [0.1, 0.5]}}  # fmt: skip
    extra = {"method": "zero_order", "runs": [{"C": 0.01}], "cpu_seconds": 2.0,
             "config": {"lrs": [0.5, 0.01], "Cs": [0.01]}}  # fmt: skip
    amd = {"method": "amd", "runs": [{}], "cpu_seconds": 1.0, "config": {"lrs": [0.5]}}
    merged = mod.merge_methods([main, extra, amd])
    zo = merged["zero_order"]
    assert zo["runs"] == [{"C": 0.1}, {"C": 0.01}] and zo["cpu_seconds"] == 12.0
    assert zo["config"]["lrs"] == [0.5, 0.1, 0.01] and zo["config"]["Cs"] == [0.01, 0.1, 0.5]
    assert main["config"]["Cs"] == [0.1, 0.5]  # the input record is not modified
    assert merged["amd"]["config"]["lrs"] == [0.5]


def test_the_authors_convention_takes_their_configs_fail_probability(tmp_path):
    """``fail_prob: 0.33`` in the authors' configs: their model moves as chosen with probability 1 − 4/3·0.33 = 0.56,
    their simulator with 1 − 0.33 = 0.67. The run file records both slips; a file written before (no ``slips``: the
    fail probability was 1/3) is renamed on reading and refused next to a current one."""
    mod = _table3_script()
    model_slip, sim_slip, _, _ = mod.CONVENTIONS["authors"]
    assert model_slip == pytest.approx(0.44) and sim_slip == pytest.approx(0.33)
    env = FourRooms(FourRoomsConfig(slip_prob=model_slip))
    assert float(env.direction_probs()[0, 0]) == pytest.approx(0.56)
    common = ["--method", "amd", "--cells", "0.001:1", "--seeds", "1", "--lrs", "0.5", "--iterations", "3",
              "--window", "1", "--progress-every", "0"]  # fmt: skip
    new, old = tmp_path / "amd.json", tmp_path / "amd_legacy.json"
    assert mod.main([*common, "--out", str(new)]) == 0
    record = json.loads(new.read_text())
    assert record["convention"] == "authors" and record["slips"] == pytest.approx([0.44, 0.33])
    del record["slips"]
    old.write_text(json.dumps(record))
    assert mod.load_record(old)["convention"] == "authors-fail=1/3"
    with pytest.raises(SystemExit, match="the amd files mix conventions"):
        mod.main(["--report", str(new), str(old), "--md", str(tmp_path / "bad.md")])


def test_the_ablation_puts_hpgd_with_the_authors_estimator_in_its_conventions_row(tmp_path):
    """An HPGD file with the authors' estimator (both HPGD-only options) joins the AMD file of its convention in one
    variant row; HPGD with the per-episode direct term is a variant of its own."""
    mod = _table3_script()
    common = ["--cells", "0.005:1", "--seeds", "1", "--lrs", "0.5", "--iterations", "4", "--window", "2",
              "--steps-per-env", "100", "--progress-every", "0"]  # fmt: skip
    authors = ["--hpgd-partial-episodes", "--hpgd-direct", "start-state"]
    assert mod.main(["--method", "amd", "--out", str(tmp_path / "amd.json"), *common]) == 0
    assert mod.main(["--method", "hpgd", *authors, "--out", str(tmp_path / "hpgd.json"), *common]) == 0
    assert mod.main(["--method", "hpgd", "--hpgd-partial-episodes", "--out", str(tmp_path / "ep.json"), *common]) == 0
    md = tmp_path / "ablation.md"
    assert mod.main(["--ablation", *(str(tmp_path / f) for f in ("amd.json", "hpgd.json", "ep.json")),
                     "--md", str(md)]) == 0  # fmt: skip
    summary = [line for line in md.read_text().splitlines() if line.startswith("| authors")]
    assert summary[0].startswith("| authors, sampled, 4 it, 1 seeds | ") and " of 2 |" in summary[0]  # HPGD + AMD
    assert summary[1].startswith("| authors+partial-episodes, sampled, 4 it, 1 seeds | ") and " of 1 |" in summary[1]
