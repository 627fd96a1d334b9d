"""This round's rules: windows whose load swung are no calibration points, candidates are
priced with their prefill, verification compares each window with the prediction at that
window's load, the model's own error carries through a follow-through, and a lasting load
shift restarts the load history."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest

from specdecode_operator.autotune import Settings, State, Window, decide, policy, regime
from specdecode_operator.autotune import calibration as cal
from specdecode_operator.autotune.acceptance import from_counters, iid
from specdecode_operator.autotune.goodput import goodput
from specdecode_operator.autotune.tuning_status import state_from_status, state_to_status
from specdecode_operator.autotune.verification import Outcome, Verification, judged

NOW = 1_800_000_000.0


def _sample(b_counters: float, gauge_mean: float, cv2: float = 0.0) -> cal.StepSample:
    steps = 10_000.0
    return cal.StepSample(k=3, itl_sum=steps * b_counters * 0.05, itl_count=steps * b_counters,
                          steps=steps, prompt_tokens=0.0, load_cv2=cv2, load_mean=gauge_mean)


def test_a_window_whose_load_swung_is_not_a_calibration_point() -> None:
    ok, why = cal.point_from_sample(_sample(32, 30), now=NOW, last_change=None,
                                    window_seconds=600)
    assert ok is not None and why == "ok"
    # A spike that filled most of the window: the gauge (time) says 250, the counters (per
    # engine step, where the quick base-load steps dominate) 160.
    bad, why = cal.point_from_sample(_sample(160, 250), now=NOW, last_change=None,
                                     window_seconds=600)
    assert bad is None and "load changed within the window" in why
    spread, why = cal.point_from_sample(_sample(32, 32, cv2=1.2), now=NOW, last_change=None,
                                        window_seconds=600)
    assert spread is None and "load changed" in why
    # Without the gauge's mean (an older status, a missing series) only the spread counts.
    old, _ = cal.point_from_sample(_sample(160, math.nan), now=NOW, last_change=None,
                                   window_seconds=600)
    assert old is not None


class _Linear:
    """T = 10 ms + 1 ms per verify token (prefill included): a compute-bound toy."""

    source = "fitted"

    def step_ms(self, b: float, k: int, prefill: float = 0.0) -> float:
        return 10.0 + b * (k + 1) + prefill

    def ratio_se(self, b: float, c: int, k: int, *_p: float) -> float:
        return 0.0


def test_candidates_are_priced_with_the_prompt_tokens_their_steps_carry() -> None:
    tps = {1: 1.8, 3: 3.0}.__getitem__
    priced = policy._Priced(_Linear(), 0.5, tps)
    # 0.5 prompt tokens per generated token: a step at K=3, B=10 carries 10 * 3.0 * 0.5.
    assert priced.step_ms(10, 3) == pytest.approx(10 + 40 + 15)
    assert priced.step_ms(10, 1) == pytest.approx(10 + 20 + 9)
    assert policy._Priced(_Linear(), 0.0, tps).step_ms(10, 3) == pytest.approx(50)
    w = Window(k=3, seconds=600, drafts=1, draft_tokens=3, accepted=1, accepted_per_pos=(1, 0, 0),
               generation_tokens=1000, requests=10, load=((8.0, 1.0),), prompt_tokens=400)
    assert policy._prompt_ratio(w) == pytest.approx(0.4)
    assert policy._prompt_ratio(replace(w, prompt_tokens=math.nan)) == 0.0


def test_verification_judges_the_prediction_at_each_windows_own_load() -> None:
    # Predicted +6% under the day's load history: -10% at 4 running requests, +20% at 48.
    v = Verification(k_from=5, k_to=1, time=NOW, predicted=0.06,
                     curve=((4.0, -0.10), (48.0, 0.20)))
    assert v.expected_at(4.0) == pytest.approx(-0.10)
    assert v.expected_at(2.0) == pytest.approx(-0.10)      # flat past the ends
    assert v.expected_at(math.sqrt(4 * 48)) == pytest.approx(0.05)
    # Every window happened to fall in the quiet phase and measured what was predicted
    # there: the change is what it promised, whatever the raw gain says.
    quiet = replace(v, samples=tuple((NOW + 600 * i, -0.11, -0.10) for i in range(1, 5)))
    gain, _se, raw = judged(quiet, 600)
    assert raw == pytest.approx(-0.11) and gain == pytest.approx(0.05)
    # The same raw gain where +20% was predicted: a miss of 31 points.
    busy = replace(v, samples=tuple((NOW + 600 * i, -0.11, 0.20) for i in range(1, 5)))
    assert judged(busy, 600)[0] == pytest.approx(-0.25)


def test_a_change_that_loses_in_the_quiet_phase_it_predicted_to_lose_in_is_kept() -> None:
    s = iid(0.7, 16)
    v = Verification(k_from=5, k_to=3, time=NOW - 3600, predicted=0.06,
                     curve=((1.0, -0.12), (512.0, -0.12)),
                     samples=tuple((NOW - 3600 + 600 * i, -0.12, -0.12) for i in range(1, 5)))
    st = State(last_change=NOW - 3600, changes=(NOW - 3600,), verify=v)
    drafts = 20_000.0
    per_pos = tuple(drafts * x for x in s[:3])
    w = Window(k=3, seconds=600, drafts=drafts, draft_tokens=3 * drafts,
               accepted=sum(per_pos), accepted_per_pos=per_pos,
               generation_tokens=drafts * (1 + sum(s[:3])), requests=500, load=((4.0, 1.0),))
    d = decide(Settings(), st, w, now=NOW)
    assert not d.rollback and d.state.outcomes[-1].verdict == "kept"
    assert d.state.outcomes[-1].realized == pytest.approx(0.06)
    # Measured far below what was predicted at that load: confidently worse, rolled back.
    worse = replace(v, samples=tuple((t, -0.30, e) for t, _, e in v.samples))
    d2 = decide(Settings(), replace(st, verify=worse), w, now=NOW)
    assert d2.rollback and d2.k_to == 5


def test_the_models_own_error_carries_through_not_the_corrected_prediction() -> None:
    # A follow-through predicted +6% = the model's +1% plus the +5% the step before missed.
    o = Outcome(NOW, 4, 3, predicted=0.06, realized=0.08, verdict="kept", correction=0.05)
    assert o.model_error == pytest.approx(0.07)
    nxt = policy._follow(Settings(), State(outcomes=(o,)), 3)
    assert nxt == (2, pytest.approx(0.07))
    assert Outcome(NOW, 4, 3, 0.06, None, "inconclusive").model_error is None


def _steady_window(rate: float, b: float, k: int = 5) -> Window:
    """A 10-minute window at K ``k``, per-position acceptance ``rate``, ``b`` running."""
    drafts = 20_000.0
    sv = iid(rate, 16)
    per_pos = tuple(drafts * x for x in sv[:k])
    return Window(k=k, seconds=600, drafts=drafts, draft_tokens=k * drafts,
                  accepted=sum(per_pos), accepted_per_pos=per_pos,
                  generation_tokens=drafts * (1 + sum(sv[:k])), requests=500,
                  load=((b, 1.0),))


def _run_load(levels: list[float], st: State | None = None,
              settings: Settings | None = None) -> tuple[State, list[str]]:
    """Evaluations every 5 minutes, one window per entry (running requests per replica)."""
    s = settings or Settings(explore=False, mode="Recommend")
    st = st or State()
    notes, now = [], NOW
    for b in levels:
        d = decide(s, st, _steady_window(0.7, b), now=now)
        st = d.state
        notes += [m for _t, r, m in d.events if r == "LoadShifted"]
        now += 300
    return st, notes


def test_a_lasting_load_shift_restarts_the_history_and_a_spike_does_not() -> None:
    per_hour = 12
    base = [8.0] * (6 * per_hour)
    # A 45-minute spike (shorter than a third of the 3 h regime): the history just absorbs it.
    st, notes = _run_load(base + [64.0] * 9 + [8.0] * per_hour)
    assert notes == [] and st.shift_since is None and not st.history_shifted
    assert regime.median(st.load_hist) == 8.0
    # The same level held for 90 minutes: a new regime; the history is the new level only.
    st, notes = _run_load(base + [64.0] * 18)
    assert len(notes) == 1 and "shifted up" in notes[0]
    assert regime.median(st.load_hist) == 64.0 and regime.median(st.load_hist_long) == 64.0
    assert st.history_start is not None and st.history_start > NOW + 6 * 3600 - 1
    assert st.history_shifted
    # Down works the same way; a departure that turns around in between starts over.
    st, notes = _run_load(base + [64.0] * 6 + [2.0] * 6 + [8.0] * 6)
    assert notes == []


def test_a_shift_under_way_survives_a_restart_of_the_operator() -> None:
    st, _ = _run_load([8.0] * 72 + [64.0] * 6)
    assert st.shift_since is not None and st.shift_direction == 1
    back = state_from_status({"autotune": state_to_status(st)})
    assert back.shift_since == pytest.approx(st.shift_since)
    assert back.shift_direction == 1
    assert back.shift_load == pytest.approx(st.shift_load, rel=1e-3)


def test_a_probe_after_a_load_shift_is_priced_over_the_regimes_known_age() -> None:
    horizon, life = 10_800.0, 10_800.0
    fresh = State(history_start=NOW - 3600, history_shifted=True)
    # An hour after the shift began: it lasts about as long again (Lindy), not a horizon.
    assert policy._probe_life(fresh, NOW, horizon, life) == pytest.approx(3600)
    # Older regimes earn the usual life; never below the shift's own length.
    assert policy._probe_life(fresh, NOW + 6 * 3600, horizon, life) == pytest.approx(life)
    assert policy._probe_life(fresh, NOW - 1800, horizon, life) == pytest.approx(horizon / 3)
    # A history that began with the deployment does not know its regime's age.
    assert policy._probe_life(replace(fresh, history_shifted=False), NOW, horizon, life) == life
    # The flag survives an operator restart.
    back = state_from_status({"autotune": state_to_status(fresh)})
    assert back.history_shifted and back.history_start == pytest.approx(NOW - 3600)
    assert not state_from_status({"autotune": state_to_status(State())}).history_shifted


def test_only_a_failed_step_down_from_here_allows_the_probe_upwards() -> None:
    failed = Outcome(NOW, 5, 4, predicted=0.0, realized=-0.11, verdict="rolled back")
    assert policy._rebound(State(outcomes=(failed,)), 5)
    assert not policy._rebound(State(outcomes=(failed,)), 4)      # not from where K is
    for o in (Outcome(NOW, 5, 4, 0.0, 0.05, "kept"),
              Outcome(NOW, 4, 5, 0.0, -0.1, "rolled back")):       # a failed step up
        assert not policy._rebound(State(outcomes=(o,)), 5)
    assert not policy._rebound(State(), 5)


def test_the_rebound_probes_upwards_only_where_the_models_point_clears_the_hurdle() -> None:
    s = Settings()
    sv = from_counters(50_000, [50_000 * x for x in iid(0.8, 16)[:5]], extend_to=9)

    class _Cheap:
        """Step cost flat in K above 5 (a staircase step): K 6, 7 gain on their own."""
        source = "fitted"

        def step_ms(self, b: float, k: int, prefill: float = 0.0) -> float:
            return 20.0 + (2.0 if k > 7 else 0.0)

        def ratio_se(self, b: float, c: int, k: int, *_p: float) -> float:
            return 0.05

    loads = [[(16.0, 1.0)], [(16.0, 1.0)]]
    curs = [goodput(5, sv.tokens_per_step, ld, _Cheap()) for ld in loads]
    up = policy._probe(s, 5, sv, loads, _Cheap(), curs, 0.03, frozenset({3, 4, 6, 7}),
                       frozenset(), rebound=True)
    assert up is not None and up[0] in (6, 7) and up[2] >= 0.03
    # Not without the rebound (downwards only), and never to a K the model expects to lose.
    down = policy._probe(s, 5, sv, loads, _Cheap(), curs, 0.03, frozenset({6, 7}),
                         frozenset(), rebound=False)
    assert down is None
    assert policy._probe(s, 5, sv, loads, _Cheap(), curs, 0.5, frozenset({6, 7}),
                         frozenset(), rebound=True) is None


def _run_mix(rates: list[float], k: int = 5) -> tuple[State, list[str]]:
    """Evaluations every 5 minutes at steady load; each entry is the window's per-position
    acceptance rate (a new task mix changes it)."""
    s = Settings(explore=False, mode="Recommend")
    st, notes, now = State(), [], NOW
    for a in rates:
        d = decide(s, st, _steady_window(a, 8.0, k), now=now)
        st = d.state
        notes += [m for _t, r, m in d.events if r == "AcceptanceShifted"]
        assert (st.mix_since is None) == (st.mix_direction == 0)
        now += 300
    return st, notes


def _history_rate(st: State, k: int = 5) -> float:
    per_draft = regime.accepted_per_draft(st.acc_sum, st.acc_drafts, k)
    assert per_draft is not None
    return per_draft


def test_a_lasting_change_of_the_task_mix_restarts_the_acceptance_history() -> None:
    base = [0.8] * 72                     # 6 h of one mix
    new = sum(iid(0.5, 16)[:5])           # accepted per draft under the other mix
    old = sum(iid(0.8, 16)[:5])
    # 30 minutes of the other mix (shorter than a third of the 3 h regime): absorbed.
    st, notes = _run_mix(base + [0.5] * 6 + [0.8] * 12)
    assert notes == [] and st.mix_since is None
    assert _history_rate(st) > 0.9 * old
    # 90 minutes: a new mix; the history is the new mix's own counts, not a blend.
    st, notes = _run_mix(base + [0.5] * 18)
    assert len(notes) == 1 and "acceptance shifted down" in notes[0]
    assert _history_rate(st) == pytest.approx(new, rel=0.01)
    # Without the rule the history would still remember the old mix after 90 minutes.
    blended, _ = _run_mix(base + [0.5] * 11)
    assert _history_rate(blended) > 1.1 * new


def test_an_acceptance_shift_under_way_survives_a_restart_of_the_operator() -> None:
    st, _ = _run_mix([0.8] * 72 + [0.5] * 6)
    assert st.mix_since is not None and st.mix_direction == -1
    back = state_from_status({"autotune": state_to_status(st)})
    assert back.mix_since == pytest.approx(st.mix_since)
    assert back.mix_direction == -1
    assert back.mix_acc == pytest.approx(st.mix_acc, rel=1e-3)
    assert back.mix_drafts == pytest.approx(st.mix_drafts, rel=1e-3)
