"""The core sampler: categorical draws, rollouts with terminal states, vectorised environments, seam generators."""

import numpy as np
import pytest
import torch

from bilevel_rl.tabular.core import (
    DTYPE,
    CategoricalTable,
    EnvBatch,
    Simulator,
    generator_from,
    random_mdp,
    rollout_until,
    sample_tuples,
)
from tests.tabular_helpers import gen


def test_categorical_table_never_draws_an_outcome_of_zero_probability():
    """Leading, inner and trailing zeros (sparse successor rows, e.g. absorbing states)."""
    probs = torch.tensor([[0.0, 0.5, 0.0, 0.5, 0.0], [0.0, 0.0, 0.0, 0.0, 1.0], [0.3, 0.7, 0.0, 0.0, 0.0]], dtype=DTYPE)
    n = 200_000
    rows = torch.arange(3).repeat_interleave(n)
    draws = CategoricalTable(probs).sample(rows, gen(0)).reshape(3, n)
    freq = torch.stack([torch.bincount(d, minlength=5) for d in draws]).to(DTYPE) / n
    assert bool((freq[probs == 0] == 0).all())
    torch.testing.assert_close(freq, probs, atol=5e-3, rtol=0)


def test_rollout_until_stops_on_entering_a_terminal_state():
    """State 2 is absorbing and terminal: rows that enter it stop there, rows that start there visit nothing."""
    P = torch.tensor(
        [[[0.5, 0.5, 0.0], [0.0, 0.0, 1.0]], [[0.0, 1.0, 0.0], [0.0, 0.0, 1.0]], [[0.0, 0.0, 1.0], [0.0, 0.0, 1.0]]],
        dtype=DTYPE,
    )
    pi = torch.full((3, 2), 0.5, dtype=DTYPE)
    terminal = torch.tensor([False, False, True])
    s0 = torch.tensor([0, 1, 2] * 1000)
    visits = rollout_until(Simulator(P, pi, terminal), s0, torch.full((3000,), 50), gen(1))
    assert not bool(terminal[visits.states].any())
    assert not bool((visits.rows % 3 == 2).any())  # started in the terminal state
    lengths = torch.bincount(visits.rows, minlength=3000)
    assert int(lengths.max()) <= 51 and float(lengths[1::3].double().mean()) == pytest.approx(2.0, rel=0.1)
    # without terminal states every row visits exactly last + 1 pairs
    full = rollout_until(Simulator(P, pi), s0, torch.full((3000,), 5), gen(1))
    assert bool((torch.bincount(full.rows, minlength=3000) == 6).all())


def test_env_batch_restarts_on_the_time_limit_and_matches_the_state_law():
    """``n`` copies stepped together: at within-episode time ``t`` the state law is ``ρ P_π^t``."""
    mdp = random_mdp(4, 3, 0.9, 0.5, gen(2))
    pi = torch.softmax(torch.randn(4, 3, generator=gen(3), dtype=DTYPE), 1)
    envs = EnvBatch(Simulator(mdp), mdp.rho, 20_000, 3, gen(4))
    law = mdp.rho.clone()
    for t in range(6):
        step = envs.step(pi, gen(5 + t))
        assert bool((step.time == t % 3).all()) and bool(step.done.all()) == (t % 3 == 2)
        freq = torch.bincount(step.states, minlength=4).to(DTYPE) / 20_000
        torch.testing.assert_close(freq, law, atol=0.015, rtol=0)
        law = mdp.rho.clone() if t % 3 == 2 else law @ mdp.policy_transition(pi)
    assert bool((envs.time == 0).all())


def test_env_batch_ends_episodes_in_terminal_states():
    P = torch.tensor([[[0.0, 1.0]], [[0.0, 1.0]]], dtype=DTYPE)  # state 0 → terminal state 1
    envs = EnvBatch(
        Simulator(P, terminal=torch.tensor([False, True])), torch.tensor([1.0, 0.0], dtype=DTYPE), 5, 10, gen(0)
    )
    step = envs.step(torch.ones(2, 1, dtype=DTYPE), gen(1))
    assert bool(step.done.all()) and bool((envs.states == 0).all()) and bool((envs.time == 0).all())


def test_tuples_and_seam_generators():
    mdp = random_mdp(3, 2, 0.5, 1.0, gen(0))
    pi = torch.full((3, 2), 0.5, dtype=DTYPE)
    states, actions = sample_tuples(Simulator(mdp, pi), mdp.rho, 7, 2, 4, gen(1))
    assert states.shape == actions.shape == (7, 2, 4)
    a, b = generator_from(np.random.default_rng(3)), generator_from(np.random.default_rng(3))
    assert torch.equal(torch.rand(5, generator=a), torch.rand(5, generator=b))
    assert not torch.equal(
        torch.rand(5, generator=generator_from(np.random.default_rng(4))), torch.rand(5, generator=b)
    )
