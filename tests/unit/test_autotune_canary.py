"""Canary mode's pure core: the side-by-side gain, the verdict, and decide() driving a canary
from its start to its promotion, removal or abandonment."""

from __future__ import annotations

from dataclasses import replace

import pytest

from specdecode_operator.autotune import Settings, State, Window, decide
from specdecode_operator.autotune.acceptance import iid
from specdecode_operator.autotune.canary import Side, judge, side_by_side_gain
from specdecode_operator.autotune.tuning_status import state_from_status, state_to_status
from specdecode_operator.autotune.verification import Verification

NOW = 1_800_000_000.0
CANARY = Settings(k_min=1, k_max=12, confirmations=1, canary=True, replicas=2)


def timed(k: int, rate: float, b: float, t_ms: float, drafts: float = 50_000,
          latency: bool = True) -> Window:
    """A window at K ``k`` whose pods ran ``b`` requests per step at ``t_ms`` per step
    (``latency=False``: no latency series, so the H200 table is taken as exact)."""
    s = iid(rate, max(k, 1))
    per_pos = tuple(drafts * v for v in s[:k])
    steps = 600 / (t_ms / 1000)
    return Window(k=k, seconds=600, drafts=drafts, draft_tokens=drafts * k,
                  accepted=sum(per_pos), accepted_per_pos=per_pos,
                  generation_tokens=drafts * (1 + sum(s[:k])), requests=500,
                  load=((b, 1.0),), itl_sum=b * steps * t_ms / 1000, itl_count=b * steps,
                  steps=steps, prompt_tokens=0.0) if latency else \
        Window(k=k, seconds=600, drafts=drafts, draft_tokens=drafts * k,
               accepted=sum(per_pos), accepted_per_pos=per_pos,
               generation_tokens=drafts * (1 + sum(s[:k])), requests=500, load=((b, 1.0),))


def flat(b: float, k: int) -> float:
    return 10.0


# ---- the comparison ----------------------------------------------------------------------
def test_side_by_side_gain_is_the_ratio_of_per_request_decode_speeds() -> None:
    main = Side(k=3, length=2.5, step_ms=20.0, batch=8)
    assert side_by_side_gain(main, replace(main), flat) == pytest.approx(0.0)
    faster = Side(k=5, length=3.0, step_ms=22.0, batch=8)
    assert side_by_side_gain(main, faster, flat) == pytest.approx((3 / 22) / (2.5 / 20) - 1)


def test_the_main_replicas_step_time_is_moved_to_the_canarys_batch() -> None:
    # A faster canary runs fewer requests at once; at a lower batch the main K would be
    # faster too. The model's slope (here T = 10 + b) moves main's T to the canary's batch.
    def slope(b: float, k: int) -> float:
        return 10.0 + b

    main = Side(k=3, length=2.0, step_ms=26.0, batch=16)
    canary = Side(k=3, length=2.0, step_ms=18.0, batch=8)    # the same K at a lower batch
    assert side_by_side_gain(main, canary, slope) == pytest.approx(0.0)
    assert side_by_side_gain(main, canary, flat) > 0.4       # what no correction would say


def _canary(samples: list[tuple[float, float]], predicted: float = 0.05) -> Verification:
    return Verification(k_from=3, k_to=5, time=NOW, predicted=predicted,
                        samples=tuple((NOW + t, g, predicted) for t, g in samples))


def test_the_verdict_waits_then_promotes_unless_confidently_worse() -> None:
    kw = {"after_seconds": 1800, "min_windows": 3, "window_seconds": 600, "z": 1.64}
    better = _canary([(600 * i, 0.06) for i in range(1, 5)])
    assert judge(better, now=NOW + 1200, **kw).action == "wait"        # too early
    assert judge(better, now=NOW + 2400, **kw).action == "promote"
    # History-level: the prediction plus each window's error against it.
    assert judge(better, now=NOW + 2400, **kw).mean == pytest.approx(0.06)
    worse = _canary([(600 * i, -0.15 + 0.01 * (i % 2)) for i in range(1, 5)])
    v = judge(worse, now=NOW + 2400, **kw)
    assert v.action == "remove" and v.upper < 0
    # Slightly worse but within its noise: promoted, the fleet-wide verification judges it.
    noisy = _canary([(600 * i, g) for i, g in enumerate((0.1, -0.12, 0.08, -0.1), 1)])
    assert judge(noisy, now=NOW + 2400, **kw).action == "promote"
    assert judge(_canary([]), now=NOW + 8000, **kw).action == "abandon"
    # Judged on evidence that is hours old (tuning was paused meanwhile): abandoned instead.
    assert judge(better, now=NOW + 2400 + 8000, **kw).action == "abandon"


# ---- decide() ----------------------------------------------------------------------------
def _started() -> tuple[State, int]:
    st = State(last_change=NOW - 10 * 86_400)
    d = decide(CANARY, st, timed(3, 0.9, 4, 12.0, latency=False), now=NOW)
    assert d.canary_k is not None and d.canary_k > 3, d.reason
    return d.state, d.canary_k


def test_canary_mode_starts_a_canary_instead_of_restarting_every_replica() -> None:
    st = State(last_change=NOW - 10 * 86_400)
    w = timed(3, 0.9, 4, 12.0, latency=False)
    rolling = decide(replace(CANARY, canary=False), st, w, now=NOW)
    assert rolling.changed and rolling.canary_k is None
    d = decide(CANARY, st, w, now=NOW)
    assert not d.changed and d.k_to == 3 and d.canary_k == rolling.k_to
    assert d.state.changes == (NOW,) and d.state.verify is None
    assert [e[1] for e in d.events] == ["CanaryStarted"]
    assert "1 of 2 replicas" in d.reason
    # One replica is not a canary: with 1 replica (or in Recommend mode) nothing changes.
    assert decide(replace(CANARY, replicas=1), st, w, now=NOW).changed
    assert decide(replace(CANARY, mode="Recommend"), st, w, now=NOW).canary_k is None


def _run(state: State, k_c: int, canary_ms: float, minutes: int) -> list:
    out = []
    for i in range(1, minutes // 5 + 1):
        now = NOW + 300 * i
        d = decide(CANARY, state, timed(3, 0.9, 4, 12.0), now=now,
                   canary_window=timed(k_c, 0.9, 4, canary_ms))
        state = d.state
        out.append(d)
        if state.canary is None:
            break
    return out


def test_a_canary_that_measures_better_is_promoted_then_verified_fleet_wide() -> None:
    state, k_c = _started()
    ds = _run(state, k_c, canary_ms=12.5, minutes=120)
    last = ds[-1]
    assert last.changed and last.k_from == 3 and last.k_to == k_c, last.reason
    assert "promoted" in last.reason
    assert last.state.canary is None and last.state.verify is not None
    assert last.state.verify.k_to == k_c and last.state.outcomes[-1].verdict == "kept"
    # Every wait said where the canary stands; the canary's windows fed the calibration.
    assert all("side by side" in d.reason for d in ds[:-1])
    assert any(p.k == k_c for p in last.state.points)


def test_a_confidently_worse_canary_is_removed_and_its_k_rejected() -> None:
    state, k_c = _started()
    ds = _run(state, k_c, canary_ms=40.0, minutes=120)   # the canary's steps cost 3x
    last = ds[-1]
    assert not last.changed and last.k_to == 3 and last.state.canary is None, last.reason
    assert [e[1] for e in last.events] == ["CanaryRejected"]
    assert [r.k for r in last.state.rejected] == [k_c]
    assert last.state.outcomes[-1].verdict == "rolled back"


def test_a_canary_without_usable_windows_is_abandoned_and_k_stays() -> None:
    state, _ = _started()
    d = None
    for i in range(1, 40):
        d = decide(CANARY, state, timed(3, 0.9, 4, 12.0), now=NOW + 300 * i)
        state = d.state
        if state.canary is None:
            break
    assert d is not None and not d.changed and state.canary is None
    assert [e[1] for e in d.events] == ["CanaryAbandoned"]
    assert not state.rejected


def test_a_canary_ends_even_while_the_main_replicas_window_is_below_the_evidence_gate(
) -> None:
    state, _ = _started()
    thin = timed(3, 0.9, 4, 12.0, drafts=100)
    d = None
    for i in range(1, 40):
        d = decide(CANARY, state, thin, now=NOW + 300 * i)
        state = d.state
        if state.canary is None:
            break
    assert d is not None and [e[1] for e in d.events] == ["CanaryAbandoned"]


def test_turning_canary_mode_off_removes_a_running_canary() -> None:
    state, _ = _started()
    d = decide(replace(CANARY, canary=False), state, timed(3, 0.9, 4, 12.0), now=NOW + 300)
    assert d.state.canary is None and not d.changed
    assert [e[1] for e in d.events] == ["CanaryAbandoned"]


def test_a_running_canary_survives_the_status_round_trip() -> None:
    state, k_c = _started()
    state = _run(state, k_c, canary_ms=12.5, minutes=20)[-1].state
    assert state.canary is not None and state.canary.samples
    back = state_from_status({"autotune": state_to_status(state)})
    assert back.canary is not None
    assert back.canary.k_to == k_c and len(back.canary.samples) == len(state.canary.samples)
    assert back.canary.samples[0][1] == pytest.approx(state.canary.samples[0][1], abs=1e-4)
