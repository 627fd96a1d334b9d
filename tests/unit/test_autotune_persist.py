"""The tuner's whole State in status.autotune: round trip, bounds, and the failure paths of
the shell (missing or reset latency series, a window across a K change, unreadable state,
one SDD's failing status write)."""

from __future__ import annotations

import asyncio
import json
import math
from dataclasses import fields, is_dataclass, replace
from typing import Any

from specdecode_operator import api
from specdecode_operator.autotune.calibration import MAX_RMS
from specdecode_operator.autotune.loop import Tuner
from specdecode_operator.autotune.policy import Settings, State, Window, decide
from specdecode_operator.autotune.tuning_status import (
    evaluate,
    read_state,
    state_from_status,
    state_to_status,
)
from specdecode_operator.autotune.verification import Outcome, Rejected, Verification
from specdecode_operator.controller import Controller

from ..fake_kube import FakeKube, api_error
from ..fake_prometheus import StubPrometheus

T0 = 1_800_000_000
SETTINGS = Settings(cooldown_seconds=0, verify_after_seconds=1200, regime_seconds=3600)


def world_ms(b: float, k: int) -> float:
    """A step cost that is not the tuner's prior (and K 5 is much slower than it says)."""
    return 40.0 if k == 5 else 10 + 0.2 * b + 0.05 * b * (k + 1) + 0.8 * k


def win(k: int, *, b: float = 8.0, rate: float = 0.85, seconds: float = 600.0,
        pods: int = 2, step_ms: float | None = None, **over: float) -> Window:
    t = world_ms(b, k) if step_ms is None else step_ms
    steps = seconds * 1000 / t * pods
    drafts = steps * b if k else 0.0
    per = tuple(drafts * rate ** (i + 1) for i in range(k))
    kw: dict[str, Any] = {
        "itl_sum": steps * b * t / 1000, "itl_count": steps * b, "steps": steps,
        "prompt_tokens": steps * 20.0, **over}
    return Window(k=k, seconds=seconds, drafts=drafts, draft_tokens=drafts * k,
                  accepted=sum(per), accepted_per_pos=per,
                  generation_tokens=drafts + sum(per) if k else steps * b, requests=500.0,
                  load=tuple((b, 1.0) for _ in range(5 * pods)), **kw)


def run(n: int, stop: Any = None) -> list[State]:
    """decide() over n windows of the world above, at K 3 and, from the 20th window on, at
    K 5 (as after a change: the tuner only probes downwards, so this world would not take it
    there by itself); the states after each."""
    st, k, now, out = State(), 3, T0, []
    for i in range(n):
        if i == 20 and k == 3:
            k = 5
            st = replace(st, last_change=float(now - 1800), changes=(float(now - 1800),))
        d = decide(SETTINGS, st, win(k), now=now)
        st, k, now = d.state, d.k_to, now + 600
        out.append(st)
        if stop is not None and stop(st):
            break
    return out


def verifying(st: State) -> State:
    """``st`` with a check of a change 3 -> 5 under way (two windows measured)."""
    v = Verification(k_from=3, k_to=5, time=T0 + 600.0, predicted=0.08, probe=True,
                     samples=((T0 + 1200.0, -0.21, 0.08), (T0 + 1800.0, -0.19, 0.08)))
    return replace(st, verify=v)


def with_records(st: State) -> State:
    """``st`` after that change was rolled back: K 5 rejected, the outcome recorded."""
    return replace(st, rejected=(Rejected(k=5, until=T0 + 86_400.0,
                                          evidence="measured -20% (predicted +8%)"),),
                   outcomes=(Outcome(time=T0 + 600.0, k_from=3, k_to=5, predicted=0.08,
                                     realized=-0.2, verdict="rolled back"),))


def close(a: Any, b: Any, path: str = "state") -> None:
    """Equal, floats up to the persisted rounding (6 significant digits, 4 for gains)."""
    if is_dataclass(a) and not isinstance(a, type):
        assert type(a) is type(b), path
        for f in fields(a):
            close(getattr(a, f.name), getattr(b, f.name), f"{path}.{f.name}")
    elif isinstance(a, tuple):
        assert isinstance(b, tuple) and len(a) == len(b), f"{path}: {a} != {b}"
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            close(x, y, f"{path}[{i}]")
    elif isinstance(a, float) and not isinstance(b, bool):
        assert isinstance(b, float | int), path
        assert math.isclose(a, b, rel_tol=1e-3, abs_tol=1e-9) or \
            math.isclose(a, b, abs_tol=0.5 if a > 1e6 else 1e-9), f"{path}: {a} != {b}"
    else:
        assert a == b, f"{path}: {a!r} != {b!r}"


def test_the_whole_state_round_trips_through_status() -> None:
    final = with_records(run(40)[-1])
    assert final.cost is not None
    assert final.cost.source == "fitted" and final.points and final.load_hist
    for st in (verifying(final), final):
        status = {"autotune": json.loads(json.dumps(state_to_status(st)))}
        back, problems = read_state(status)
        assert problems == []
        close(st, back)
        # Same state, same next decisions.
        for i, k in enumerate((3, 5)):
            now = T0 + 600 * (60 + i)
            a, b = decide(SETTINGS, st, win(k), now=now), decide(SETTINGS, back, win(k),
                                                                   now=now)
            assert (a.action, a.k_to, a.recommended) == (b.action, b.k_to, b.recommended)


def test_the_persisted_state_stays_small() -> None:
    st = with_records(run(40)[-1])
    # A verification with more samples than a day allows.
    st = replace(st, verify=replace(verifying(st).verify,
                                    samples=tuple((T0 + i, -0.1, 0.08) for i in range(200))))
    at = state_to_status(st)
    assert len(at["verification"]["samples"]) == 48
    size = len(json.dumps(at, separators=(",", ":")))
    assert size < 4096, size


def test_an_older_operators_status_reads_without_problems() -> None:
    old = {"autotune": {"changes": ["2027-01-15T08:00:00Z"], "lastChangeTime":
                        "2027-01-15T08:00:00Z", "pending": {"k": 5, "count": 1},
                        "survival": ["0.8500", "0.7200"], "lastDecision": {"reason": "x"}}}
    st, problems = read_state(old)
    assert problems == [] and st.pending_k == 5 and st.survival == (0.85, 0.72)
    assert st.points == () and st.cost is None and st.verify is None


def test_corrupt_sections_start_fresh_with_a_reason_and_keep_k() -> None:
    good = state_to_status(run(40)[-1])
    bad = json.loads(json.dumps(good))
    bad["calibration"]["points"] = [["x", 1]]
    bad["regime"]["load"] = [1.0, 2.0]           # another load grid
    bad["verification"] = {"from": 3}            # partial
    st, problems = read_state({"autotune": bad})
    assert [p.split(" ")[0] for p in problems] == [
        "status.autotune.calibration", "status.autotune.regime",
        "status.autotune.verification"]
    assert st.points == () and st.load_hist == () and st.rejected == ()
    assert st.changes == state_from_status({"autotune": good}).changes   # the rest is kept
    assert read_state({"autotune": "garbage"})[1]
    # Evaluated with a target that would otherwise be confirmed: K stays, the reason says why.
    bad["pending"] = {"k": 5, "count": 5}
    ev = evaluate(replace(SETTINGS, explore=False), {"autotune": bad}, 3, win(3, rate=0.97),
                  now=T0 + 86_400 * 3)
    assert ev.current_k == 3 and not ev.decision.changed
    assert "status.autotune.calibration unreadable" in ev.fields["autotune"]["lastDecision"][
        "reason"]
    assert any(e[1] == "AutotuneStateReset" for e in ev.events)


def _fitted() -> tuple[State, int]:
    st = run(40)[-1]
    return replace(st, last_change=T0 - 86_400.0, changes=()), T0 + 600 * 41


def test_unusable_latency_windows_leave_the_model_alone_with_a_reason() -> None:
    st, now = _fitted()
    status = {"autotune": state_to_status(st)}
    cases = {
        "latency series missing or NaN": win(3, itl_sum=math.nan, itl_count=math.nan,
                                              steps=math.nan),
        "histogram reset": win(3, itl_sum=0.0001),
        "histograms disagree": win(3, steps=1.0),
    }
    for why, w in cases.items():
        ev = evaluate(SETTINGS, status, 3, w, now=now)
        at = ev.fields["autotune"]
        back = state_from_status({"autotune": at})
        assert len(back.points) == len(st.points) and all(  # weights unchanged (rounded)
            math.isclose(a.w, b.w, rel_tol=1e-3) for a, b in zip(back.points, st.points,
                                                                  strict=True)), why
        assert at["costModel"]["source"] == "Calibrated", why
        assert "window not used" in at["costModel"]["note"], why
        assert ev.current_k == 3, why
    # A window that covers a K change (old and new pods) is not evidence either.
    st2 = replace(st, last_change=float(now - 120))
    ev = evaluate(SETTINGS, {"autotune": state_to_status(st2)}, 3, win(3), now=now)
    assert "straddles the K change" in ev.fields["autotune"]["costModel"]["note"]
    assert ev.current_k == 3


def test_cost_model_status_states_its_prediction_and_the_record_names_it() -> None:
    st, now = _fitted()
    w = win(3)
    ev = evaluate(SETTINGS, {"autotune": state_to_status(st)}, 3, w, now=now)
    cm = ev.fields["autotune"]["costModel"]
    assert set(cm["params"]) >= {"floor", "perSeq", "perToken", "hinge", "draftFloor",
                                 "draftPerSeq", "knee"}
    assert {3, 5} <= set(cm["quality"]["ks"])  # both Ks the pods ran
    # The world's step time at the window's batch, and its tokens/s (both pods).
    assert math.isclose(cm["measuredStepMs"], world_ms(8.0, 3), rel_tol=1e-3)
    # Within what the tuner trusts of a fit (its RMS bound): this world's K 5 is far off
    # the roofline, which pulls a two-K fit.
    assert abs(cm["predictedStepMs"] / world_ms(8.0, 3) - 1) < MAX_RMS
    assert abs(cm["predictedTokensPerSecond"] / w.tokens_per_second - 1) < MAX_RMS
    assert cm["atBatch"] == 8.0
    assert ev.fields["autotune"]["lastDecision"]["costModel"] == "Calibrated"
    # Without latency series the record says Prior.
    ev = evaluate(SETTINGS, None, 3, win(3, itl_sum=math.nan, itl_count=math.nan,
                                          steps=math.nan), now=now)
    assert ev.fields["autotune"]["lastDecision"]["costModel"] == "Prior"
    assert ev.fields["autotune"]["costModel"]["source"] == "Prior"


SPEC: dict[str, Any] = {
    "model": {"name": "org/target"},
    "drafter": {"method": "mtp"},
    "draftTokens": {"initial": 3, "min": 1, "max": 12},
    "autotune": {"mode": "Auto", "intervalSeconds": 5, "windowSeconds": 60},
}


class RejectingKube(FakeKube):
    """The apiserver rejects one SDD's status (422), as it would an oversized one."""

    async def apply_status(self, sdd: dict[str, Any], status: dict[str, Any], *,
                           manager: str = "", resource_version: str | None = None
                           ) -> dict[str, Any]:
        if manager == api.TUNER_MANAGER and sdd["metadata"]["name"] == "bad":
            raise api_error(422, "status.autotune: Too many: must have at most 48 items")
        return await super().apply_status(sdd, status, manager=manager,
                                          resource_version=resource_version)


def test_one_sdds_failing_status_write_does_not_stop_the_others() -> None:
    def one(name: str, v: float, **extra: str) -> dict[str, Any]:
        return {"metric": {"namespace": "ns", "sdd": name, "draft_tokens": "3", **extra},
                "value": [0, str(v)]}

    names = ("bad", "good")
    results: dict[str, list[dict[str, Any]]] = {
        key: [one(n, v) for n in names] for key, v in (
            ("drafts", 2e4), ("draft_tokens", 6e4), ("accepted", 4e4),
            ("generation_tokens", 6e4), ("requests", 400.0))}
    results["per_position"] = [one(n, 2e4 * 0.8 ** (i + 1), position=str(i))
                               for n in names for i in range(3)]

    async def go() -> tuple[RejectingKube, Any]:
        fake = RejectingKube()
        for n in names:
            fake.add_sdd(n, SPEC)
        ctl = Controller(fake, fake.cache())  # type: ignore[arg-type]
        for n in names:
            await ctl.reconcile_key("ns", n)
        tuner = Tuner(fake, StubPrometheus(results), namespaces=["ns"])  # type: ignore[arg-type]
        return fake, await tuner.cycle(now=1_000_000.0)

    fake, report = asyncio.run(go())
    assert report.failed == 1 and report.evaluated == 1 and report.written == 1
    assert "autotune" in fake.status_of("good")
    assert "autotune" not in fake.status_of("bad")


def test_predicted_tokens_per_second_counts_idle_time_as_idle() -> None:
    # Two of five load quantiles of each pod idle: those 40 % of the window generate nothing,
    # so the prediction is 3/5 of the all-busy one (at the same step time).
    st, now = _fitted()
    busy = win(3)
    idle = replace(busy, load=tuple((0.0 if i % 5 < 2 else 8.0, 1.0) for i in range(10)))
    at = {"autotune": state_to_status(st)}
    p_busy = evaluate(SETTINGS, at, 3, busy, now=now).fields["autotune"]["costModel"]
    p_idle = evaluate(SETTINGS, at, 3, idle, now=now).fields["autotune"]["costModel"]
    assert p_idle["predictedStepMs"] == p_busy["predictedStepMs"]
    assert math.isclose(p_idle["predictedTokensPerSecond"],
                        0.6 * p_busy["predictedTokensPerSecond"], rel_tol=1e-3)
