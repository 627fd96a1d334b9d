"""Prometheus results -> observation windows, and the tuner's status fields (pure)."""

from __future__ import annotations

import math
from typing import Any

from specdecode_operator.autotune import Settings, State, Window
from specdecode_operator.autotune.acceptance import iid
from specdecode_operator.autotune.observe import Labels, queries, windows
from specdecode_operator.autotune.tuning_status import evaluate, state_from_status

L = Labels()
NOW = 1_800_000_000.0


def sample(ns: str, sdd: str, k: int | str, value: float | str, **extra: str) -> dict[str, Any]:
    m = {"namespace": ns, "sdd": sdd, "draft_tokens": str(k), **extra}
    return {"metric": m, "value": [NOW, str(value)]}


def results_for(ns: str, sdd: str, k: int, drafts: float, s: tuple[float, ...],
                running: tuple[float, ...] = (2.0,)) -> dict[str, list[dict[str, Any]]]:
    per_pos = [drafts * v for v in s[:k]]
    return {
        "drafts": [sample(ns, sdd, k, drafts)],
        "draft_tokens": [sample(ns, sdd, k, drafts * k)],
        "accepted": [sample(ns, sdd, k, sum(per_pos))],
        "generation_tokens": [sample(ns, sdd, k, drafts + sum(per_pos))],
        "requests": [sample(ns, sdd, k, 40)],
        "per_position": [sample(ns, sdd, k, a, position=str(i)) for i, a in enumerate(per_pos)],
        "running": [sample(ns, sdd, k, b, pod=f"p{i}", q="0.5") for i, b in enumerate(running)],
    }


def merge(*rs: dict[str, list[dict[str, Any]]]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for r in rs:
        for k, v in r.items():
            out.setdefault(k, []).extend(v)
    return out


def test_query_count_does_not_grow_with_sdds_and_groups_by_sdd_and_k() -> None:
    q = queries(600, L)
    assert len(q) == 11
    for name in ("drafts", "per_position", "generation_tokens"):
        assert "sum by (namespace, sdd, draft_tokens" in q[name]
        assert "[600s]" in q[name]
    assert q["per_position"].endswith("vllm:spec_decode_num_accepted_tokens_per_pos_total"
                                      "[600s]))")
    assert q["running"].count("quantile_over_time") == 5
    custom = queries(60, Labels(namespace="ns", sdd="app", k="k"))
    assert "sum by (ns, app, k)" in custom["drafts"]


def test_windows_split_by_sdd_and_k_never_mix() -> None:
    s = iid(0.8, 8)
    res = merge(results_for("a", "m", 3, 1000, s), results_for("a", "m", 5, 200, iid(0.5, 8)),
                results_for("b", "m", 3, 50, s))
    ws = windows(res, 600, L)
    assert set(ws) == {("a", "m", 3), ("a", "m", 5), ("b", "m", 3)}
    w = ws[("a", "m", 3)]
    assert w.k == 3 and w.drafts == 1000 and len(w.accepted_per_pos) == 3
    assert math.isclose(w.accepted_per_pos[1], 1000 * s[1])
    assert ws[("a", "m", 5)].drafts == 200


def test_nan_missing_positions_and_foreign_series_are_dropped() -> None:
    res = results_for("a", "m", 3, 1000, iid(0.8, 8))
    res["per_position"] = res["per_position"][:2]                  # position 2 vanished
    res["drafts"].append({"metric": {"namespace": "a"}, "value": [NOW, "5"]})  # not ours
    res["requests"].append(sample("a", "m", 3, "NaN"))
    w = windows(res, 600, L)[("a", "m", 3)]
    assert w.drafts == 0 and w.accepted_per_pos == ()              # not enough evidence
    assert w.requests == 40


def test_load_distribution_from_running_quantiles() -> None:
    res = results_for("a", "m", 3, 1000, iid(0.8, 8), running=(4.0, 60.0))
    w = windows(res, 600, L)[("a", "m", 3)]
    assert sorted(b for b, _ in w.load) == [4.0, 60.0]


def _window(k: int, a: float, drafts: float = 50_000) -> Window:
    s = iid(a, 16)
    pp = tuple(drafts * v for v in s[:k])
    return Window(k=k, seconds=600, drafts=drafts, draft_tokens=drafts * k, accepted=sum(pp),
                  accepted_per_pos=pp, generation_tokens=drafts + sum(pp), requests=200,
                  load=((2.0, 1.0),))


def test_evaluation_records_decision_history_and_state() -> None:
    s = Settings(confirmations=1)
    ev = evaluate(s, {}, 3, _window(3, 0.9), now=NOW)
    assert ev.decision is not None and ev.decision.changed
    assert ev.current_k == ev.decision.k_to > 3
    at = ev.fields["autotune"]
    assert at["lastDecision"]["from"] == 3 and at["lastDecision"]["to"] == ev.current_k
    assert at["history"] == [at["lastDecision"]]
    assert at["lastChangeTime"] == "2027-01-15T08:00:00Z"
    assert ev.fields["acceptance"]["rate"] == f"{(0.9 + 0.81 + 0.729) / 3:.2f}"
    assert ev.fields["acceptance"]["perPosition"] == ["0.90", "0.81", "0.73"]
    assert ev.condition["status"] == "True"
    assert [e[1] for e in ev.events] == ["DraftTokensChanged"]
    st = state_from_status({"autotune": at})
    assert st.last_change == NOW and st.changes == (NOW,)


def test_history_is_bounded_and_survives_round_trips() -> None:
    # The threshold policy: it follows each window, so the history fills (the goodput policy
    # no longer chases acceptance flipping every minute).
    s = Settings(policy="threshold", confirmations=1, cooldown_seconds=0,
                 max_changes_per_day=100)
    status: dict[str, Any] = {}
    k, a = 3, 0.95
    for i in range(15):
        a = 0.95 if i % 2 == 0 else 0.3
        ev = evaluate(s, status, k, _window(k, a), now=NOW + i * 60)
        status = {**ev.fields, "draftTokens": {"current": ev.current_k,
                                               "recommended": ev.recommended},
                  "conditions": [ev.condition]}
        k = ev.current_k
    assert len(status["autotune"]["history"]) == 10
    assert status["autotune"]["history"][-1]["time"] == "2027-01-15T08:14:00Z"


def test_prometheus_down_keeps_k_and_state_and_warns_once() -> None:
    s = Settings(confirmations=1)
    # Acceptance 0.5 at K=3 and B=2: K=3 is the optimum, so only the condition changes.
    ok = evaluate(s, {}, 3, _window(3, 0.5), now=NOW)
    status = {**ok.fields, "conditions": [ok.condition]}
    down = evaluate(s, status, 3, None, now=NOW + 60, unavailable="connection refused")
    assert down.current_k == 3 and down.decision is None
    assert down.fields == ok.fields
    assert (down.condition["status"], down.condition["reason"]) == \
        ("False", "PrometheusUnavailable")
    assert [e[1] for e in down.events] == ["PrometheusUnavailable"]
    still = evaluate(s, {**status, "conditions": [down.condition]}, 3, None, now=NOW + 120,
                     unavailable="connection refused")
    assert still.events == []                                     # no event storm
    assert still.condition["lastTransitionTime"] == down.condition["lastTransitionTime"]
    back = evaluate(s, {**status, "conditions": [down.condition]}, 3, _window(3, 0.5),
                    now=NOW + 180)
    assert back.condition["status"] == "True"
    assert [e[1] for e in back.events] == ["MetricsRecovered"]


def test_no_data_is_its_own_reason() -> None:
    ev = evaluate(Settings(), {}, 4, None, now=NOW)
    assert ev.condition["reason"] == "NoData" and "K=4" in ev.condition["message"]


def test_state_from_empty_status() -> None:
    assert state_from_status(None) == State()


def test_step_time_series_are_queried_and_parsed_per_sdd_and_k() -> None:
    q = queries(600, L)
    for name, metric in (("itl_sum", "vllm:inter_token_latency_seconds_sum"),
                         ("itl_count", "vllm:inter_token_latency_seconds_count"),
                         ("steps", "vllm:iteration_tokens_total_count"),
                         ("prompt_tokens", "vllm:prompt_tokens_total")):
        assert q[name] == f"sum by (namespace, sdd, draft_tokens) (increase({metric}[600s]))"
    res = results_for("a", "m", 3, 1000, iid(0.8, 8))
    res.update(itl_sum=[sample("a", "m", 3, 12.5), sample("a", "m", 3, 2.5)],
               itl_count=[sample("a", "m", 3, 500)], steps=[sample("a", "m", 3, "NaN")],
               prompt_tokens=[sample("a", "m", 3, 7000), sample("b", "m", 3, 1)])
    w = windows(res, 600, L)[("a", "m", 3)]
    assert (w.itl_sum, w.itl_count, w.prompt_tokens) == (15.0, 500.0, 7000.0)
    assert math.isnan(w.steps)     # a NaN sample is dropped: the series counts as missing


def test_missing_step_time_series_leave_the_fields_nan() -> None:
    w = windows(results_for("a", "m", 3, 1000, iid(0.8, 8)), 600, L)[("a", "m", 3)]
    assert all(math.isnan(v) for v in (w.itl_sum, w.itl_count, w.steps, w.prompt_tokens))
