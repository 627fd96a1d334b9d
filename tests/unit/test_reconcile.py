"""Deciding whether to write: subset comparison, conditions and status (pure)."""

from __future__ import annotations

from typing import Any

from specdecode_operator import api, conditions, failures
from specdecode_operator.reconcile import is_subset, needs_apply
from specdecode_operator.render import render


def _sdd() -> dict[str, Any]:
    return {"metadata": {"name": "m", "namespace": "ns", "uid": "u", "generation": 3},
            "spec": {"model": {"name": "x"}, "drafter": {"method": "mtp"}}}


def test_is_subset_ignores_server_defaults_but_not_changed_values() -> None:
    desired = {"a": 1, "b": {"c": "x", "l": [{"n": 1}]}, "e": []}
    live = {"a": 1, "b": {"c": "x", "l": [{"n": 1, "extra": True}], "d": 2}, "z": 0}
    assert is_subset(desired, live)
    assert not is_subset({**desired, "a": 2}, live)
    assert not is_subset({"b": {"l": [{"n": 1}, {"n": 2}]}}, live)
    assert not is_subset({"f": False}, {"f": 0})   # bool is not int in Kubernetes
    assert not is_subset({"missing": "v"}, live)


def test_needs_apply_reports_missing_changed_drifted_and_none() -> None:
    dep = render(_sdd(), 3)[0]
    assert needs_apply(dep, None) == "missing"
    live = {**dep, "status": {"replicas": 1}}
    live["spec"] = {**dep["spec"], "progressDeadlineSeconds": 2400, "paused": False}
    assert needs_apply(dep, live) is None
    assert needs_apply(render(_sdd(), 4)[0], live) == "changed"
    edited = render(_sdd(), 3)[0]
    edited["spec"]["template"]["spec"]["containers"][0]["args"][-1] = "hand-edit"
    assert needs_apply(dep, edited) == "drifted"


def _obs(dep_status: dict[str, Any], pods: list[dict[str, Any]] | None = None,
         nodes: int | None = None) -> conditions.Observed:
    return conditions.Observed(
        deployment={"metadata": {"generation": 2}, "status": {"observedGeneration": 2,
                                                                **dep_status}},
        pods=pods or [], gpu_resource="nvidia.com/gpu", nodes_offering_gpu=nodes)


def _by_type(cs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in cs}


def test_conditions_ready_progressing_degraded() -> None:
    ok = _by_type(conditions.conditions(_sdd(), 2, _obs(
        {"replicas": 2, "readyReplicas": 2, "updatedReplicas": 2})))
    assert (ok["Ready"]["status"], ok["Progressing"]["status"], ok["Degraded"]["status"]) == \
        ("True", "False", "False")
    assert ok["Ready"]["observedGeneration"] == 3

    rolling = _by_type(conditions.conditions(_sdd(), 2, _obs(
        {"replicas": 3, "readyReplicas": 2, "updatedReplicas": 1})))
    assert rolling["Ready"]["status"] == "False"
    assert rolling["Progressing"]["reason"] == "RollingUpdate"

    pending = {"metadata": {"name": "p"}, "status": {"conditions": [{
        "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
        "message": "0/2 nodes are available: 2 Insufficient amd.com/gpu."}]}}
    nogpu = _by_type(conditions.conditions(_sdd(), 1, _obs({}, [pending], nodes=0)))
    assert nogpu["Degraded"]["reason"] == "NoGPUNodes"
    assert "no node offers nvidia.com/gpu" in nogpu["Degraded"]["message"]
    full = _by_type(conditions.conditions(_sdd(), 1, _obs({}, [pending], nodes=2)))
    assert full["Degraded"]["reason"] == "Unschedulable"
    assert "Insufficient amd.com/gpu" in full["Degraded"]["message"]


def test_stalled_mirrors_degraded_when_only_a_change_helps() -> None:
    ok = _by_type(conditions.conditions(_sdd(), 2, _obs(
        {"replicas": 2, "readyReplicas": 2, "updatedReplicas": 2})))
    assert set(ok) == set(api.RECONCILER_CONDITIONS)
    assert (ok["Stalled"]["status"], ok["Stalled"]["reason"]) == ("False", "AsExpected")
    pending = {"metadata": {"name": "p"}, "status": {"conditions": [{
        "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
        "message": "0/2 nodes are available: 2 Insufficient nvidia.com/gpu."}]}}
    full = _by_type(conditions.conditions(_sdd(), 1, _obs({}, [pending], nodes=2)))
    assert full["Stalled"] == {**full["Degraded"], "type": "Stalled"}
    assert full["Stalled"]["status"] == "True"
    stuck = _by_type(conditions.conditions(_sdd(), 1, _obs({"conditions": [{
        "type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded",
        "message": "ReplicaSet m-1 has timed out progressing."}]})))
    assert (stuck["Stalled"]["status"], stuck["Stalled"]["reason"]) == \
        ("True", "ProgressDeadlineExceeded")
    assert conditions.stalled({"type": "Degraded", "status": "True", "reason": "APIError",
                               "message": "503"})["status"] == "False"


def test_a_failed_reconcile_reports_stalled_on_the_generation_it_looked_at() -> None:
    live = conditions.status(_sdd(), desired_replicas=1, k=4, initial_k=4, obs=_obs(
        {"replicas": 1, "readyReplicas": 1, "updatedReplicas": 1}), now="T0")
    live["observedGeneration"] = 2   # the spec moved on to generation 3
    bad = failures.degraded_status(live, "InvalidSpec", "no such drafter", "T1", 3)
    by = _by_type(bad["conditions"])
    assert bad["observedGeneration"] == 3
    assert (by["Stalled"]["status"], by["Stalled"]["reason"]) == ("True", "InvalidSpec")
    assert by["Stalled"]["observedGeneration"] == by["Degraded"]["observedGeneration"] == 3
    assert by["Ready"] == _by_type(live["conditions"])["Ready"]   # the rest kept as it was
    # A problem a retry may clear: the new generation stays "not observed" (InProgress).
    flaky = failures.degraded_status(live, "APIError", "503 Service Unavailable", "T1", 3)
    assert flaky["observedGeneration"] == 2
    assert _by_type(flaky["conditions"])["Stalled"]["status"] == "False"
    # The same stalled problem on a newer generation is reported again (kstatus must see
    # observedGeneration move); on the same generation it is not.
    assert failures.is_new_problem(bad, "InvalidSpec", "no such drafter", 4)
    assert not failures.is_new_problem(bad, "InvalidSpec", "no such drafter", 3)
    assert not failures.is_new_problem(flaky, "APIError", "503 Service Unavailable", 4)


def test_transition_time_kept_while_status_unchanged() -> None:
    old = [{"type": "Ready", "status": "True", "lastTransitionTime": "T0"}]
    same = conditions.merge_transition_times([{"type": "Ready", "status": "True"}], old, "T1")
    flip = conditions.merge_transition_times([{"type": "Ready", "status": "False"}], old, "T1")
    assert same[0]["lastTransitionTime"] == "T0"
    assert flip[0]["lastTransitionTime"] == "T1"


def test_status_is_stable_when_nothing_changed() -> None:
    obs = _obs({"replicas": 1, "readyReplicas": 1, "updatedReplicas": 1})
    s1 = conditions.status(_sdd(), desired_replicas=1, k=4, initial_k=4, obs=obs, now="T0")
    sdd = {**_sdd(), "status": s1}
    s2 = conditions.status(sdd, desired_replicas=1, k=4, initial_k=4, obs=obs, now="T9")
    assert not api.reconciler_differs(s2, s1)
    # The autotuner's fields beside them are not the reconciler's business.
    live = {**s1, "acceptance": {"rate": "0.70"}, "draftTokens": {**s1["draftTokens"],
                                                                   "recommended": 6},
            "conditions": [{"type": "MetricsAvailable", "status": "True"},
                           *reversed(s1["conditions"])]}
    assert not api.reconciler_differs(s2, live)
    assert api.reconciler_differs({**s2, "readyReplicas": 0}, live)
    assert s1["draftTokens"] == {"current": 4, "initial": 4}
    assert s1["selector"] == "specdecode.io/deployment=m"
