"""Probing and verification rules added on top of the goodput policy: follow-through, the
spike guard, and verification against the old K's own measurements."""

from __future__ import annotations

from dataclasses import replace

import pytest

from specdecode_operator.autotune import Settings, State, Window, decide, policy
from specdecode_operator.autotune.acceptance import from_counters, iid
from specdecode_operator.autotune.calibration import CalPoint
from specdecode_operator.autotune.goodput import goodput
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


def _window(k: int, b: float, rate: float = 0.8) -> Window:
    s = iid(rate, 16)
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


def _hist(weights: dict[float, float]) -> tuple[float, ...]:
    from specdecode_operator.autotune.regime import LOAD_GRID
    return tuple(weights.get(b, 0.0) for b in LOAD_GRID)


def test_the_untypical_share_counts_the_days_tokens_at_loads_far_from_the_regime() -> None:
    from specdecode_operator.autotune import default_profile

    cost = policy._Known(default_profile())
    steady = State(load_hist=_hist({32: 1.0}), load_hist_long=_hist({24: 0.3, 32: 0.7}))
    assert policy._untypical_share(steady, cost, 5) == 0.0
    # An hour of spikes at 256 running requests in a day at 32: few minutes, many tokens.
    spiky = replace(steady, load_hist_long=_hist({32: 0.95, 256: 0.05}))
    share = policy._untypical_share(spiky, cost, 5)
    assert share > 0.05                        # more than its share of the time
    assert share < 0.5
    assert policy._untypical_share(State(), cost, 5) == 0.0


def test_an_upward_probe_after_a_failed_step_down_needs_the_models_miss_to_allow_it() -> None:
    s = Settings()
    sv = from_counters(50_000, [50_000 * x for x in iid(0.8, 16)[:5]], extend_to=9)

    class _Even:
        """K 6 neither gains nor loses by the model, which is 2 % sure of that."""
        source = "fitted"

        def step_ms(self, b: float, k: int, prefill: float = 0.0) -> float:
            return 20.0 * sv.tokens_per_step(k) / sv.tokens_per_step(5)

        def ratio_se(self, b: float, c: int, k: int, *_p: float) -> float:
            return 0.02

    loads = [[(16.0, 1.0)], [(16.0, 1.0)]]
    curs = [goodput(5, sv.tokens_per_step, ld, _Even()) for ld in loads]
    args = (s, 5, sv, loads, _Even(), curs, 0.047, frozenset({6, 7}), frozenset())
    # The rebound at once needs the point to clear the hurdle: K 6 at +0 % does not.
    assert policy._probe(*args, rebound=True) is None
    # A model that missed the failed step by 6 % can miss K 6 by as much: probed.
    up = policy._probe(*args, rebound=True, miss=0.06)
    assert up is not None and up[0] == 6 and up[1] > 2 * 0.047
    # A small miss does not widen the doubt past twice the hurdle.
    assert policy._probe(*args, rebound=True, miss=0.01) is None
    # Without a failed step down there is no probe upwards at all.
    assert policy._probe(*args, rebound=False, miss=0.06) is None


def test_the_miss_is_the_cost_models_own_error_on_the_last_change() -> None:
    failed = Outcome(NOW, 5, 3, predicted=0.002, realized=-0.059, verdict="rolled back")
    assert policy._miss(State(outcomes=(failed,))) == pytest.approx(0.061)
    carried = Outcome(NOW, 5, 4, predicted=0.05, realized=0.01, verdict="rolled back",
                      correction=0.04)
    assert policy._miss(State(outcomes=(carried,))) == pytest.approx(0.0)
    assert policy._miss(State()) == 0.0


def _step_window(k: int, b: float, rate: float, table) -> Window:
    """A window at K whose step time is the table's at (b, k) and acceptance ``rate``."""
    w = _window(k, b, rate)
    steps = w.drafts / b
    t = table.step_ms(b, k) / 1000.0
    return replace(w, itl_sum=steps * b * t, itl_count=steps * b, steps=steps)


def test_a_step_up_is_verified_at_the_windows_own_mix() -> None:
    from specdecode_operator.autotune import default_profile
    from specdecode_operator.autotune.verification import Verification

    table = default_profile()
    cost = policy._Known(table, source="given")
    # Decided under a history of easy text (acceptance 0.8): K 6 predicted to gain there.
    hist = from_counters(50_000, [50_000 * x for x in iid(0.8, 16)[:5]], extend_to=6)
    curve = policy._gain_curve(5, 6, hist, cost, 0.0)
    v = Verification(k_from=5, k_to=6, time=NOW - 3600, predicted=0.03, curve=curve)
    # The window runs in a hard phase of the mix (0.4): K 6 gains less there, truly.
    w = _step_window(6, 16.0, 0.4, table)
    sv = from_counters(w.drafts, list(w.accepted_per_pos), extend_to=6)
    st, rb = policy._verify(Settings(), State(verify=v), w, sv, cost, NOW)
    assert rb is None and st.verify is not None
    (_t, g, expected), = st.verify.samples
    assert g < v.expected_at(16.0) - 0.01         # the phase's gain is below the history's
    # With the step cost exact, the model's error is zero: the phase is not held against K 6.
    assert g - expected == pytest.approx(0.0, abs=1e-9)


def test_an_upward_probe_is_not_judged_on_windows_far_from_the_regimes_load() -> None:
    from specdecode_operator.autotune import default_profile
    from specdecode_operator.autotune.verification import Verification

    table = default_profile()
    cost = policy._Known(table, source="given")
    v = Verification(k_from=5, k_to=6, time=NOW - 3600, predicted=0.03, probe=True)
    st0 = State(verify=v, load_hist=_hist({16: 1.0}))
    for b, counted in ((16.0, True), (256.0, False)):
        w = _step_window(6, b, 0.8, table)
        sv = from_counters(w.drafts, list(w.accepted_per_pos), extend_to=6)
        st, _ = policy._verify(Settings(), st0, w, sv, cost, NOW)
        assert st.verify is not None and len(st.verify.samples) == int(counted)
    # A step down is judged everywhere, as before.
    down = replace(st0, verify=replace(v, k_to=4))
    w = _step_window(4, 256.0, 0.8, table)
    sv = from_counters(w.drafts, list(w.accepted_per_pos), extend_to=5)
    st, _ = policy._verify(Settings(), down, w, sv, cost, NOW)
    assert st.verify is not None and len(st.verify.samples) == 1
