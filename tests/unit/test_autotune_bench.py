"""The autotuner benchmark's own arithmetic: its oracle bounds every policy it grades, and
what it shows the tuner is what its world does (the issue's targets are fractions of it)."""

from __future__ import annotations

import random
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import autotune_bench as ab
import autotune_worlds as worlds

from specdecode_operator.autotune import Settings


@pytest.fixture(scope="module")
def trace() -> worlds.Trace:
    stationary = next(s for s in worlds.DEV if s.name == "stationary")
    return worlds.make_trace(stationary, "small-gpu", seed=7)


@pytest.fixture(scope="module")
def oracle(trace: worlds.Trace) -> float:
    return ab.oracle(trace, allow_off=False)


def test_oracle_is_at_least_every_fixed_k(trace: worlds.Trace, oracle: float) -> None:
    # The two sum the same minutes in a different order: equal up to rounding.
    best = oracle * (1 + 1e-12)
    assert best >= ab.fixed(trace, ab.INITIAL_K)
    for k in range(ab.K_MIN, worlds.K_MAX + 1):
        # Switching to k in the first minute and staying there is one policy it weighs.
        assert best >= ab.fixed(trace, k) - ab.switch_cost(trace, 0, ab.INITIAL_K, k), k


def test_tuner_never_beats_the_oracle(trace: worlds.Trace, oracle: float) -> None:
    st = Settings(k_min=ab.K_MIN, k_max=worlds.K_MAX, window_seconds=ab.WINDOW_STEPS * worlds.DT,
                  initial_k=ab.INITIAL_K, restart_cost_seconds=worlds.RESTART_SECONDS,
                  replicas=trace.replicas)
    run = ab.run_tuner(trace, st, seed=7)
    # The tuner's change applies a minute before the oracle's would (its restart is priced at
    # the decision's minute): a tiny accounting offset, far below one restart's cost.
    assert 0 < run.tokens <= oracle * 1.001
    assert run.changes <= st.max_changes_per_day


def test_window_shows_the_world_through_noise(trace: worlds.Trace) -> None:
    """The latency histogram's mean is the world's step time and the acceptance counters its
    survival: what the tuner calibrates from, not a copy of its own model."""
    k, start, end = 4, 600, 610
    w = worlds.observe(trace, random.Random(3), k, start, end)
    assert w is not None and w.k == k
    truth_ms = sum(trace.t_ms[t][r][k] for t in range(start, end)
                   for r in range(trace.replicas)) / ((end - start) * trace.replicas)
    assert 1000 * w.itl_sum / w.itl_count == pytest.approx(truth_ms, rel=0.05)
    truth_l = sum(1 + sum(trace.s[t][k][:k]) for t in range(start, end)) / (end - start)
    assert 1 + w.accepted / w.drafts == pytest.approx(truth_l, rel=0.05)
