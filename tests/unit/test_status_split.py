"""Who writes which status field, and the migration from one field manager (pure)."""

from __future__ import annotations

from typing import Any

from specdecode_operator import api
from specdecode_operator.autotune.policy import Settings, Window
from specdecode_operator.autotune.tuning_status import evaluate

# A status as written before the split: one manager, the tuner's K in draftTokens.current.
LEGACY: dict[str, Any] = {
    "observedGeneration": 1, "replicas": 1, "readyReplicas": 1, "updatedReplicas": 1,
    "selector": "specdecode.io/deployment=m",
    "draftTokens": {"current": 7, "initial": 3, "recommended": 7},
    "acceptance": {"rate": "0.81", "windowSeconds": 600},
    "autotune": {"lastChangeTime": "2026-11-30T10:00:00Z", "changes": [],
                 "survival": ["0.9000"], "history": []},
    "conditions": [
        {"type": "Ready", "status": "True"}, {"type": "Progressing", "status": "False"},
        {"type": "Degraded", "status": "False"},
        {"type": "MetricsAvailable", "status": "True", "reason": "MetricsFound"},
    ],
}


def _managed(manager: str, status_fields: dict[str, Any]) -> dict[str, Any]:
    return {"manager": manager, "operation": "Apply", "subresource": "status",
            "fieldsType": "FieldsV1", "fieldsV1": {"f:status": status_fields}}


def test_views_partition_status_between_the_two_writers() -> None:
    rec, tun = api.reconciler_view(LEGACY), api.tuner_view(LEGACY)
    assert rec["draftTokens"] == {"current": 7, "initial": 3}
    assert tun["draftTokens"] == {"recommended": 7}
    assert [c["type"] for c in rec["conditions"]] == ["Degraded", "Progressing", "Ready"]
    assert [c["type"] for c in tun["conditions"]] == ["MetricsAvailable"]
    # Every top-level field has exactly one writer.
    assert set(rec) & set(tun) == {"draftTokens", "conditions"}
    assert set(rec) | set(tun) == set(LEGACY)


def test_legacy_is_detected_from_managed_fields() -> None:
    old = _managed(api.OPERATOR_MANAGER, {
        "f:acceptance": {}, "f:draftTokens": {"f:current": {}, "f:recommended": {}},
        "f:conditions": {'k:{"type":"MetricsAvailable"}': {}, 'k:{"type":"Ready"}': {}}})
    assert api.legacy_status({"metadata": {"managedFields": [old]}})
    only_cond = _managed(api.OPERATOR_MANAGER, {
        "f:conditions": {'k:{"type":"MetricsAvailable"}': {".": {}}}})
    assert api.legacy_status({"metadata": {"managedFields": [only_cond]}})
    split = [
        _managed(api.OPERATOR_MANAGER, {
            "f:replicas": {}, "f:draftTokens": {"f:current": {}, "f:initial": {}},
            "f:conditions": {'k:{"type":"Ready"}': {}}}),
        _managed(api.TUNER_MANAGER, {
            "f:acceptance": {}, "f:autotune": {}, "f:draftTokens": {"f:recommended": {}},
            "f:conditions": {'k:{"type":"MetricsAvailable"}': {}}}),
    ]
    assert not api.legacy_status({"metadata": {"managedFields": split}})
    assert not api.legacy_status({"metadata": {}})


def test_migration_keeps_the_tuners_state_and_turns_its_k_into_the_target() -> None:
    m = api.migration_status(LEGACY)
    assert m["acceptance"] == LEGACY["acceptance"]
    assert m["autotune"]["survival"] == ["0.9000"]
    assert m["autotune"]["target"] == {"k": 7, "initial": 3, "time": "2026-11-30T10:00:00Z"}
    assert m["draftTokens"] == {"recommended": 7}
    assert [c["type"] for c in m["conditions"]] == ["MetricsAvailable"]
    assert "replicas" not in m
    # A K that never moved needs no target.
    same = {**LEGACY, "draftTokens": {"current": 3, "initial": 3}}
    assert "target" not in api.migration_status(same)["autotune"]
    # An explicit target is never overwritten.
    tgt = {**LEGACY, "autotune": {"target": {"k": 5, "initial": 3}}}
    assert api.migration_status(tgt)["autotune"]["target"] == {"k": 5, "initial": 3}


def _window(k: int, rate: float) -> Window:
    drafts = 10_000.0
    per_pos = tuple(drafts * rate ** (i + 1) for i in range(k))
    return Window(k=k, seconds=600, drafts=drafts, draft_tokens=drafts * k,
                  accepted=sum(per_pos), accepted_per_pos=per_pos, generation_tokens=60_000,
                  requests=500, load=((8.0, 1.0),))


def test_a_change_of_k_is_the_tuners_target_and_only_its_fields_are_applied() -> None:
    s = Settings(confirmations=1, cooldown_seconds=0)
    live = {"draftTokens": {"current": 3, "initial": 3}, "replicas": 1}
    ev = evaluate(s, live, 3, _window(3, 0.95), now=1e9, initial_k=3)
    assert ev.decision is not None and ev.decision.changed
    st = ev.status
    assert st["autotune"]["target"]["k"] == ev.decision.k_to > 3
    assert st["autotune"]["target"]["initial"] == 3
    assert set(st) == {"acceptance", "autotune", "draftTokens", "conditions"}
    assert st["draftTokens"] == {"recommended": ev.decision.k_to}  # never current
    assert api.tuner_differs(st, live)
    # Applied and read back: nothing new to write.
    assert not api.tuner_differs(st, {**live, **st,
                                      "draftTokens": {**live["draftTokens"],
                                                      **st["draftTokens"]}})
    # The next evaluation keeps the target while it does not change K again.
    after = {**live, **st, "draftTokens": {"current": ev.decision.k_to, "initial": 3}}
    again = evaluate(Settings(cooldown_seconds=3600), after, ev.decision.k_to,
                     _window(ev.decision.k_to, 0.95), now=1e9 + 60, initial_k=3)
    assert again.status["autotune"]["target"] == st["autotune"]["target"]
