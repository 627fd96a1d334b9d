"""The liveness watchdog: stuck only when the API answers and the operator does not see it."""

from __future__ import annotations

from specdecode_operator.watchdog import Watchdog

K = ("ns", "a")


def test_api_away_is_never_stuck() -> None:
    w = Watchdog(resync_seconds=60, started=0)
    assert w.problem(10_000, api_answers=False) is None
    assert "no successful list" in (w.problem(10_000, api_answers=True) or "")


def test_watch_that_stops_delivering_is_stuck_after_two_lists() -> None:
    w = Watchdog(resync_seconds=60, started=0)
    w.saw_event(K, "1")
    w.listed(60, {K: "1"})
    assert w.problem(61, True) is None
    w.listed(120, {K: "2"})          # a change the watch has not delivered (yet)
    assert w.problem(121, True) is None
    w.listed(180, {K: "3"})          # still nothing from the watch
    assert "has not delivered" in (w.problem(181, True) or "")
    w.saw_event(K, "3")
    w.listed(240, {K: "3"})
    assert w.problem(241, True) is None


def test_a_slow_watch_that_catches_up_is_fine() -> None:
    w = Watchdog(resync_seconds=60, started=0)
    w.saw_event(K, "1")
    w.listed(60, {K: "2"})
    w.saw_event(K, "2")
    w.listed(120, {K: "4"})
    w.saw_event(K, "4")
    assert w.problem(121, True) is None
