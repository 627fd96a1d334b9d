"""Step-cost calibration, the regime rule, and verification with rollback (pure)."""

from __future__ import annotations

import math
import random
from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st

from specdecode_operator.autotune import Settings, State, Window, decide, default_profile
from specdecode_operator.autotune import calibration as cal
from specdecode_operator.autotune.acceptance import iid
from specdecode_operator.autotune.verification import Verification

NOW = 1_800_000_000.0


def synthetic_ms(b: float, k: int) -> float:
    """A GPU that is not the H200: lower floor, early knee at 96 tokens, dearer drafter."""
    n = b * (k + 1)
    return 8.0 + 0.3 * b + 0.12 * n + 0.5 * max(0.0, n - 96) + k * (1.5 + 0.01 * b)


def sample(k: int, b: float, t_ms: float, steps: float = 30_000.0) -> cal.StepSample:
    return cal.StepSample(k=k, itl_sum=steps * b * t_ms / 1000, itl_count=steps * b,
                          steps=steps, prompt_tokens=0.0)


# ---- calibration ------------------------------------------------------------------------
def test_recovers_a_synthetic_curve_that_is_not_the_prior() -> None:
    rng = random.Random(7)
    points: tuple[cal.CalPoint, ...] = ()
    t = NOW
    for i in range(80):
        k = 3 if i % 2 else 6
        b = rng.choice([1, 2, 4, 8, 16, 32, 48, 64]) * rng.uniform(0.9, 1.1)
        p, why = cal.point_from_sample(sample(k, b, synthetic_ms(b, k) * rng.gauss(1, 0.02)),
                                       now=t, last_change=None, window_seconds=600)
        assert p is not None, why
        points = cal.add_point(points, p)
        t += 600
    m = cal.fit(points, now=t)
    assert m.source == "fitted" and m.quality.ks == (3, 6)
    grid = [(b, k) for b in (2, 8, 32, 64) for k in range(2, 9)]
    err = max(abs(m.step_ms(b, k) / synthetic_ms(b, k) - 1) for b, k in grid)
    prior_err = max(abs(cal.prior().step_ms(b, k) / synthetic_ms(b, k) - 1) for b, k in grid)
    assert err < 0.10, err               # stated tolerance: 10 % over B 2..64, K 2..8
    assert prior_err > 0.3               # and the prior is far off: the data did the work
    assert m.quality.rms < 0.05
    # Observed Ks are known better than unobserved ones.
    assert m.ratio_se(16, 6, 3) < m.ratio_se(16, 11, 3)


def test_one_k_keeps_the_priors_shape_scaled_and_says_how_sure_it_is() -> None:
    points: tuple[cal.CalPoint, ...] = ()
    for i, b in enumerate((2, 4, 8, 16, 32)):
        p, _ = cal.point_from_sample(sample(5, b, 2 * cal.prior().step_ms(b, 5)),
                                     now=NOW + i, last_change=None, window_seconds=600)
        assert p is not None
        points = cal.add_point(points, p)
    m = cal.fit(points, now=NOW + 10)
    assert m.quality.ks == (5,)
    assert abs(m.step_ms(8, 5) / (2 * cal.prior().step_ms(8, 5)) - 1) < 0.05
    # Another K is priced with the prior's doubt about the drafter's share.
    assert m.ratio_se(8, 8, 5) > 0.01


def test_below_the_data_an_unseen_knee_is_doubted_not_assumed() -> None:
    """A compute-bound machine (linear in verify tokens, no knee) seen only above the
    prior's knee: below the data the fit cannot tell a knee from none. It predicts between
    the two, and says it is unsure there; inside the data it is unchanged."""
    def linear_ms(b: float, k: int) -> float:
        return 5.0 + 1.6 * b * (k + 1) + 0.5 * k

    points: tuple[cal.CalPoint, ...] = ()
    for i, (k, b) in enumerate((k, b) for k in (2, 3, 5) for b in (40, 60, 90)):
        p, _ = cal.point_from_sample(sample(k, b, linear_ms(b, k)), now=NOW + 600 * i,
                                     last_change=None, window_seconds=600)
        assert p is not None
        points = cal.add_point(points, p)
    m = cal.fit(points, now=NOW + 6000)
    assert m.source == "fitted"
    assert m.knee <= cal.KNEE_SEEN * m.quality.n_lo     # no point below the knee it chose
    b, k = 20.0, 1                                       # N = 40: below every point
    gap = m.knee_gap(b, k)
    raw = m.raw_ms(b, k)
    assert gap > 0
    assert m.step_ms(b, k) == raw - gap / 2              # the mean of the two hypotheses
    # Closer to the truth than the knee hypothesis alone (which is the prior's shape).
    assert abs(m.step_ms(b, k) / linear_ms(b, k) - 1) < abs(raw / linear_ms(b, k) - 1)
    # The doubt shows in the ratio's standard error against an observed K.
    no_doubt = replace(m, quality=replace(m.quality, n_lo=m.knee / 4))   # data below it
    assert no_doubt.knee_gap(b, k) == 0.0
    assert m.ratio_se(b, k, 2) > no_doubt.ratio_se(b, k, 2)
    # Inside the data nothing changes.
    assert m.knee_gap(60, 3) == 0.0 and m.step_ms(60, 3) == m.raw_ms(60, 3)


def test_bad_evidence_is_skipped_with_a_reason() -> None:
    def why(s: cal.StepSample, last_change: float | None = None) -> str:
        p, reason = cal.point_from_sample(s, now=NOW, last_change=last_change,
                                          window_seconds=600)
        assert p is None
        return reason

    assert "NaN" in why(replace(sample(3, 8, 20), itl_sum=math.nan))
    assert "no inter-token latency" in why(replace(sample(3, 8, 20), itl_count=0, itl_sum=0))
    # A pod restart reset one histogram but not the other: requests per step make no sense.
    assert "counter reset" in why(replace(sample(3, 8, 20), steps=1.0))
    assert "straddles the K change" in why(sample(3, 8, 20), last_change=NOW - 120)
    assert "too few" in why(sample(3, 8, 20, steps=5))


def test_thin_or_inconsistent_evidence_falls_back() -> None:
    assert cal.fit((), now=NOW).source == "prior"
    one, _ = cal.point_from_sample(sample(3, 8, 20), now=NOW, last_change=None,
                                   window_seconds=600)
    assert one is not None
    m = cal.fit((one,), now=NOW)
    assert m.source == "prior" and "needed" in m.reason
    # Wildly inconsistent step times at the same load: no fit is trusted.
    pts = tuple(cal.CalPoint(k=3, b=8 + i * 0.01, n=32 + i * 3.0, t_ms=(5 if i % 2 else 400),
                             w=4.0, t=NOW) for i in range(8))
    bad = cal.fit(pts, now=NOW)
    assert bad.source == "prior" and "residual" in bad.reason


def test_points_are_bounded_and_old_evidence_fades() -> None:
    pts: tuple[cal.CalPoint, ...] = ()
    for i in range(500):
        pts = cal.add_point(pts, cal.CalPoint(k=i % 13, b=1 + i % 97, n=(1 + i % 97) * 3,
                                              t_ms=20, w=1, t=NOW + i * 600))
    assert len(pts) <= cal.MAX_POINTS
    old = cal.CalPoint(k=3, b=8, n=32, t_ms=20, w=10, t=NOW)
    later = cal.add_point((old,), cal.CalPoint(k=9, b=8, n=80, t_ms=30, w=1,
                                               t=NOW + cal.POINT_HALF_LIFE))
    assert [p.w for p in later if p.k == 3] == [5.0]


# ---- the decision: regime and verification ------------------------------------------------
def window(k: int, b: float, a: float = 0.6, drafts: float = 50_000,
           t_ms: float | None = None) -> Window:
    s = iid(a, 16)
    per_pos = tuple(drafts * v for v in s[:k])
    steps = drafts / b if k else 50_000 / b
    t = default_profile().step_ms(b, k) if t_ms is None else t_ms
    return Window(k=k, seconds=600, drafts=drafts if k else 0.0, draft_tokens=drafts * k,
                  accepted=sum(per_pos), accepted_per_pos=per_pos,
                  generation_tokens=drafts * (1 + sum(s[:k])), requests=500,
                  load=tuple((b, 1.0) for _ in range(5)),
                  itl_sum=steps * b * t / 1000, itl_count=steps * b, steps=steps)


def run(s: Settings, state: State, k: int, loads: list[float], t0: float
        ) -> tuple[State, int, list[int], float]:
    """Evaluate every 5 minutes with the H200 table as the exact cost (the regime rule alone)."""
    ks, t = [], t0
    for b in loads:
        d = decide(s, state, window(k, b), now=t, cost=default_profile())
        state, t = d.state, t + 300
        if d.changed:
            k = d.k_to
            ks.append(k)
    return state, k, ks, t


def settled_at(s: Settings, b: float) -> tuple[State, int, float]:
    state, k, _, t = run(s, State(last_change=NOW - 10 * 86_400), 3, [b] * 12 * 12, NOW)
    return state, k, t


def test_a_twenty_minute_spike_never_triggers_a_change() -> None:
    s = Settings(allow_off=True)
    state, k, t = settled_at(s, 4)
    # 20 minutes at 250 running requests per replica (where speculation loses), then back.
    _, _, ks, _ = run(s, state, k, [250] * 4 + [4] * 24, t)
    assert ks == []


def test_a_spike_into_an_idle_replica_does_not_switch_speculation_off() -> None:
    # The tokens of 20 minutes at 231 outweigh hours at 1 in the goodput expectation; off
    # must also win on the per-request speed averaged over time, which it does not.
    s = Settings(allow_off=True)
    state, k, t = settled_at(s, 1.0)
    _, _, ks, _ = run(s, state, k, [231.0] * 4 + [1.0] * 36, t)
    assert ks == []


def test_a_lasting_shift_does() -> None:
    s = Settings(allow_off=True)
    state, k, t = settled_at(s, 4)
    _, k2, ks, _ = run(s, state, k, [250] * 12 * 6, t)
    assert ks and k2 != k


@settings(max_examples=30, deadline=None)
@given(spike=st.integers(1, 4), peak=st.floats(64, 256), base=st.floats(1, 8))
def test_no_spike_of_twenty_minutes_or_less_changes_k(spike: int, peak: float,
                                                      base: float) -> None:
    # Spikes of 30 minutes and more into a near-idle replica can: the tokens they carry
    # dominate the goodput expectation (see docs/autotuner.md, limits).
    s = Settings(allow_off=True)
    state, k, t = settled_at(s, base)
    _, _, ks, _ = run(s, state, k, [peak] * spike + [base] * 36, t)
    assert ks == []


def test_a_change_that_made_things_worse_is_rolled_back_and_rejected() -> None:
    s = Settings(confirmations=1, verify_after_seconds=1800, verify_min_windows=3,
                 reject_cooldown_seconds=86_400)
    cost = default_profile()
    t_change = NOW
    state = State(last_change=t_change, changes=(t_change,),
                  verify=Verification(k_from=3, k_to=5, time=t_change, predicted=0.15))
    # K 5 runs twice as slow per step as the table says: per-request speed is worse.
    slow = 2 * cost.step_ms(8, 5)
    t = t_change + 600
    d = None
    while t <= t_change + 3600:
        d = decide(s, state, window(5, 8, a=0.6, t_ms=slow), now=t, cost=cost)
        state = d.state
        if d.changed:
            break
        assert "verifying" in d.reason
        t += 300
    assert d is not None and d.changed and d.rollback and d.k_to == 3
    assert [r.k for r in state.rejected] == [5]
    assert state.rejected[0].until == t + 86_400
    assert "realized" in state.rejected[0].evidence
    assert state.outcomes[-1].verdict == "rolled back"
    assert state.outcomes[-1].realized is not None and state.outcomes[-1].realized < -0.2
    # Never tried again before the expiry, even when the model says it would pay.
    later = decide(s, replace(state, last_change=None), window(3, 1, a=0.9), now=t + 7200,
                   cost=cost)
    assert later.k_to != 5
    assert 5 not in [c for c in later.predictions if later.changed and c == later.k_to]
    after = decide(s, replace(state, last_change=None), window(3, 1, a=0.9),
                   now=t + 86_401, cost=cost)
    assert not after.state.rejected


def _verify_probe(speedup: float, at_load: float = 0.05) -> tuple[State, object]:
    """A probe K 5 -> 3 whose decision expected ``at_load`` at the windows' load but only
    +1 % under the load history; K 3 runs ``speedup`` times the table's speed."""
    s = Settings(confirmations=1, verify_after_seconds=1800, verify_min_windows=3)
    cost = default_profile()
    state = State(last_change=NOW, changes=(NOW,), verify=Verification(
        k_from=5, k_to=3, time=NOW, predicted=0.01, probe=True,
        curve=((1.0, at_load), (512.0, at_load))))
    t, d = NOW + 600, None
    while t <= NOW + 3600:
        d = decide(s, state, window(3, 8, t_ms=cost.step_ms(8, 3) / speedup), now=t,
                   cost=cost)
        state = d.state
        if d.changed or state.verify is None:
            break
        t += 300
    return state, d


def test_a_probe_measured_better_at_its_own_load_is_kept() -> None:
    # Measured better where it ran, projected worse under the history through the model's
    # gain curve: the projection rests on the model's load shape, the measurement does not.
    # Only when both say worse does a probe go back.
    # At the table's speed K 3 measures about -1 % here; 4 % faster, about +3 %.
    state, d = _verify_probe(1.04)
    assert d is not None and not d.changed
    out = state.outcomes[-1]
    assert out.verdict == "kept"
    assert out.realized is not None and out.realized < 0     # projected under the history
    # Even when the projection is confidently worse (its upper bound below zero): a
    # measured gain is not a loss the model can overrule.
    state, d = _verify_probe(1.04, at_load=0.08)
    assert d is not None and not d.changed and state.outcomes[-1].verdict == "kept"
    assert not state.rejected
    state, d = _verify_probe(1.0)
    assert d is not None and d.changed and d.rollback and d.k_to == 5


def test_a_change_that_worked_is_kept_and_its_error_recorded() -> None:
    s = Settings(confirmations=1)
    cost = default_profile()
    state = State(last_change=NOW, changes=(NOW,),
                  verify=Verification(k_from=3, k_to=5, time=NOW, predicted=0.05))
    t = NOW + 600
    while state.verify is not None:
        d = decide(s, state, window(5, 8, a=0.8), now=t, cost=cost)
        assert not d.rollback
        state, t = d.state, t + 300
    out = state.outcomes[-1]
    assert out.verdict == "kept" and out.realized is not None and out.realized > 0


def test_nan_latency_never_crashes_and_keeps_the_prior_with_a_reason() -> None:
    w = replace(window(5, 8), itl_sum=math.nan, itl_count=math.nan, steps=math.nan)
    d = decide(Settings(), State(), w, now=NOW)
    assert d.cost_source == "prior" and "NaN" in d.state.cost_note


def test_with_the_prior_as_exact_a_slower_machine_is_no_reason_to_roll_back() -> None:
    # costModel Prior takes the H200 table as exact, but this deployment's steps all take 3x
    # as long as the table says (another GPU): only the table's ratio between the two Ks may
    # be compared with the measured step time, or every change looks like a -67% loss.
    s = Settings(confirmations=1, verify_after_seconds=1800, verify_min_windows=3,
                 cost_model="Prior")
    cost = default_profile()
    state = State(last_change=NOW, changes=(NOW,),
                  verify=Verification(k_from=3, k_to=5, time=NOW, predicted=0.15))
    t, d = NOW + 600, None
    while t <= NOW + 3600 and state.verify is not None:
        d = decide(s, state, window(5, 8, a=0.6, t_ms=3 * cost.step_ms(8, 5)), now=t)
        state = d.state
        assert not d.rollback, d.reason
        t += 300
    assert state.verify is None and state.outcomes[-1].verdict == "kept"


def _fitted_at_b2(s: Settings, every: float) -> tuple[State, float]:
    """Five windows at B = 2, K = 3, ``every`` seconds apart: the model is fitted on them.
    Returns the state and the time of the next evaluation."""
    st, t = State(), NOW
    for _ in range(5):
        st = decide(s, st, window(3, 2, t_ms=synthetic_ms(2, 3)), now=t).state
        t += every
    assert st.cost is not None and st.cost.source == "fitted"
    return st, t


def test_a_window_at_a_new_load_is_fitted_at_once() -> None:
    # Compressed time (and any deployment whose load moves): the fit must not extrapolate the
    # prior's shape for half an hour once a window has measured the new load.
    s = Settings(mode="Recommend")
    st, t = _fitted_at_b2(s, every=300)
    fitted_at = st.cost.time
    # From B = 2 alone the H200 shape, scaled, is far off this world at B = 32 (past its knee).
    assert abs(st.cost.step_ms(32, 3) / synthetic_ms(32, 3) - 1) > 0.3
    st = decide(s, st, window(3, 32, t_ms=synthetic_ms(32, 3)), now=t).state
    assert st.cost is not None and st.cost.time == t and st.cost.quality.n_hi == 32 * 4
    assert abs(st.cost.step_ms(32, 3) / synthetic_ms(32, 3) - 1) < 0.02
    # Another window at a load already seen waits for the regular refit.
    refit_at = st.cost.time
    st = decide(s, st, window(3, 2, t_ms=synthetic_ms(2, 3)), now=t + 300).state
    assert st.cost is not None and st.cost.time == refit_at != fitted_at


def test_idle_time_does_not_spread_the_batch_the_latency_sees() -> None:
    # 40 % of the scrapes idle, 4 requests otherwise: the ITL histogram only has steps at
    # B = 4, so T is seen at B = 4, not at E[B^2]/E[B] of the idle-inclusive series (6.7).
    w = replace(window(3, 4), load=((0.0, 1.0), (0.0, 1.0), (4.0, 1.0), (4.0, 1.0),
                                    (4.0, 1.0)))
    assert w.step_sample().load_cv2 == 0.0
    p, why = cal.point_from_sample(w.step_sample(), now=NOW, last_change=None,
                                   window_seconds=600)
    assert p is not None, why
    assert p.b == 4.0 and p.n == 16.0


def test_the_refit_follows_the_regime_clock() -> None:
    # regimeSeconds compresses the tuner's clock (demos, the real-vLLM tier): the fit then
    # follows new evidence at the same load within regimeSeconds / 6, not 30 minutes.
    def after(s: Settings) -> tuple[float | None, float | None]:
        st, t = _fitted_at_b2(s, every=5)
        before = st.cost.time
        st = decide(s, st, window(3, 2, t_ms=1.5 * synthetic_ms(2, 3)), now=t + 10).state
        assert st.cost is not None
        return before, st.cost.time

    fitted, refit = after(Settings(mode="Recommend", regime_seconds=60))
    assert refit == NOW + 4 * 5 + 5 + 10 != fitted
    fitted, refit = after(Settings(mode="Recommend"))          # 3 h: every 30 min
    assert refit == fitted


def test_the_drafters_per_sequence_cost_is_doubted_in_proportion_to_the_targets() -> None:
    # The H200 table's drafter costs ~nothing per sequence; another drafter need not. At one
    # K the drafter's and the target's per-sequence costs are collinear, so the prior's doubt
    # about the drafter's share is all that widens the doubt about a shorter draft at high
    # load.
    m = cal.prior()
    i, s = cal.DRAFT_PER_SEQ, cal.PER_SEQ
    assert math.sqrt(m.cov[i][i]) >= cal.DRAFT_SEQ_SHARE * m.theta[s] > 0
    table_only = [list(row) for row in m.cov]
    table_only[i][i] = (cal.PRIOR_REL_SD[i] * abs(m.theta[i]) +
                        cal.PRIOR_ABS_SD[i] * abs(m.theta[0])) ** 2
    narrow = replace(m, cov=tuple(tuple(r) for r in table_only))
    assert m.ratio_se(64, 3, 5) > narrow.ratio_se(64, 3, 5)
    # ... and more so the more sequences share the step.
    assert m.ratio_se(64, 3, 5) - narrow.ratio_se(64, 3, 5) > \
        m.ratio_se(4, 3, 5) - narrow.ratio_se(4, 3, 5)
