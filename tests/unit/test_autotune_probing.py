"""Probing and verification rules added on top of the goodput policy: follow-through, the
spike guard, and verification against the old K's own measurements."""

from __future__ import annotations

import pytest

from specdecode_operator.autotune import Settings, State, Window, decide, policy
from specdecode_operator.autotune.acceptance import from_counters, iid
from specdecode_operator.autotune.calibration import CalPoint
from specdecode_operator.autotune.verification import Outcome

NOW = 1_800_000_000.0


def test_measured_step_time_interpolates_the_old_ks_own_points_and_refuses_far_outside() -> None:
    pts = (CalPoint(k=5, b=10, n=60, t_ms=30.0, w=5, t=NOW),
           CalPoint(k=5, b=20, n=120, t_ms=42.0, w=5, t=NOW),
           CalPoint(k=3, b=20, n=80, t_ms=99.0, w=5, t=NOW))
    assert policy._measured_ms(pts, 5, 90) == pytest.approx(36.0)
    # Just past the end: along the end segment; far past it or at an unmeasured K: unknown.
    assert policy._measured_ms(pts, 5, 126) == pytest.approx(43.2)
    assert policy._measured_ms(pts, 5, 200) is None
    assert policy._measured_ms(pts, 4, 90) is None
    # One point gives no slope: the model decides instead.
    assert policy._measured_ms(pts, 3, 80) is None


def test_positions_above_the_new_k_come_from_the_measured_history_not_the_tail() -> None:
    # History measured at K=5 with conditional acceptance 0.9 at positions 4 and 5; now K=3
    # runs with another level of acceptance.
    hist = (0.8, 0.6, 0.45, 0.405, 0.3645)
    st = State(acc_sum=tuple(1000 * v for v in hist), acc_drafts=(1000.0,) * 5)
    now = from_counters(10_000, [10_000 * v for v in (0.7, 0.5, 0.4)], extend_to=5)
    got = policy._chained_tokens_per_step(now, st, 3, 5)
    assert got == pytest.approx(1 + 0.7 + 0.5 + 0.4 + 0.4 * 0.9 + 0.4 * 0.9 * 0.9)
    # The damped extrapolation would say something else.
    assert got != pytest.approx(now.tokens_per_step(5))
    # Nothing measured up there: no answer.
    assert policy._chained_tokens_per_step(now, State(acc_sum=(1.0,) * 3,
                                                      acc_drafts=(1.0,) * 3), 3, 5) is None


def test_a_probe_waits_while_the_load_is_far_from_its_history() -> None:
    st, _ = _history(b=8.0)
    assert policy._typical_now(((9.0, 1.0),), st.load_hist)
    assert not policy._typical_now(((100.0, 1.0),), st.load_hist)      # a spike
    assert not policy._typical_now(((1.0, 1.0),), st.load_hist)        # a lull


def _history(b: float) -> tuple[State, Window]:
    w = _window(5, b)
    st, now = State(), NOW - 4 * 3600
    for _ in range(24):
        st = decide(Settings(explore=False, mode="Recommend"), st, w, now=now).state
        now += 600
    return st, w


def _window(k: int, b: float) -> Window:
    s = iid(0.8, 16)
    drafts = 50_000.0
    per_pos = tuple(drafts * v for v in s[:k])
    return Window(k=k, seconds=600, drafts=drafts, draft_tokens=drafts * k,
                  accepted=sum(per_pos), accepted_per_pos=per_pos,
                  generation_tokens=drafts * (1 + sum(s[:k])), requests=500,
                  load=((b, 1.0),))


def test_follow_through_needs_a_kept_step_that_beat_its_prediction() -> None:
    s = Settings()
    won = Outcome(NOW - 3600, 5, 4, predicted=0.01, realized=0.08, verdict="kept")
    assert policy._follow(s, State(outcomes=(won,)), 4) == (3, pytest.approx(0.07))
    # The same direction only, one step, never to a K that already ran here.
    up = Outcome(NOW - 3600, 4, 5, predicted=0.01, realized=0.08, verdict="kept")
    assert policy._follow(s, State(outcomes=(up,)), 5) == (6, pytest.approx(0.07))
    seen = State(outcomes=(won,), points=(CalPoint(k=3, b=1, n=4, t_ms=9, w=3, t=NOW),))
    assert policy._follow(s, seen, 4) is None
    # Not after a step that was rolled back, paid less than predicted, or is not the last.
    for o in (Outcome(NOW, 5, 4, 0.01, 0.08, "rolled back"),
              Outcome(NOW, 5, 4, 0.10, 0.08, "kept"),
              Outcome(NOW, 5, 4, 0.01, -0.01, "kept")):
        assert policy._follow(s, State(outcomes=(o,)), 4) is None
    assert policy._follow(s, State(outcomes=(won,)), 5) is None       # K moved on since


def test_no_follow_through_after_a_step_back_towards_the_initial_k() -> None:
    # Back from a probe at K 3 to the initial K 5, paying more than predicted: that says how
    # bad K 3 was, nothing about K 6.
    back = Outcome(NOW - 3600, 3, 5, predicted=0.10, realized=0.17, verdict="kept")
    assert policy._follow(Settings(initial_k=5), State(outcomes=(back,)), 5) is None
    # Away from it (or with no initial K to go back to) the step's surprise carries on.
    assert policy._follow(Settings(), State(outcomes=(back,)), 5) == (6, pytest.approx(0.07))
    away = Outcome(NOW - 3600, 5, 4, predicted=0.01, realized=0.08, verdict="kept")
    assert policy._follow(Settings(initial_k=5), State(outcomes=(away,)), 4) == \
        (3, pytest.approx(0.07))


def test_goodput_target_follows_through_only_when_the_corrected_gain_clears_the_hurdle(
) -> None:
    from specdecode_operator.autotune import default_profile

    cost = policy._Known(default_profile())
    sv = from_counters(50_000, [50_000 * v for v in iid(0.6, 3)], extend_to=7)
    load = [(8.0, 1.0)]
    s = Settings()
    base = policy.goodput_target(s, 3, sv, [load, load], cost, sv, load, 10_800.0)
    assert base[0] == 3, base[1]          # the model alone keeps K 3 here
    pred = base[3][2] / base[3][3] - 1
    assert pred < 0
    # A bias that lifts K 2 over the hurdle makes it the target, as a probe.
    hurdle = s.min_gain + s.restart_cost_seconds / 10_800.0
    t, why, gain, _ = policy.goodput_target(s, 3, sv, [load, load], cost, sv, load, 10_800.0,
                                            follow=(2, hurdle - pred + 0.01))
    assert t == 2 and "follow-through" in why and why.startswith("K 3 -> 2: probe")
    assert gain == pytest.approx(hurdle + 0.01, abs=1e-9)
    # One that does not is ignored.
    t, why, _, _ = policy.goodput_target(s, 3, sv, [load, load], cost, sv, load, 10_800.0,
                                         follow=(2, hurdle - pred - 0.01))
    assert t == 3
