"""The reconcile plan (pure): real render output against live objects as the cache holds
them; no I/O."""

from __future__ import annotations

import copy
import json
from typing import Any

from specdecode_operator import api
from specdecode_operator.plan import Event, Observation, Plan, plan

SPEC: dict[str, Any] = {"model": {"name": "org/target"}, "drafter": {"method": "mtp"},
                        "draftTokens": {"initial": 3, "min": 1, "max": 8}}
NOW = "2026-01-01T00:00:00Z"


def sdd(spec: dict[str, Any] | None = None, status: dict[str, Any] | None = None
        ) -> dict[str, Any]:
    o: dict[str, Any] = {"apiVersion": "specdecode.io/v1alpha1",
                         "kind": "SpecDecodeDeployment",
                         "metadata": {"name": "m", "namespace": "ns", "uid": "u-1",
                                      "generation": 2, "resourceVersion": "10"},
                         "spec": copy.deepcopy(spec or SPEC)}
    if status is not None:
        o["status"] = status
    return o


def run(obj: dict[str, Any], children: dict[str, dict[str, Any] | None] | None = None,
        pods: list[dict[str, Any]] | None = None, **facts: Any) -> Plan:
    legacy = facts.pop("legacy", False)
    obs = Observation(children=children or {}, pods=pods or [],
                      pod_monitor_available=facts.pop("pod_monitor_available", False),
                      nodes_offering_gpu=facts.pop("nodes_offering_gpu", None), now=NOW,
                      **facts)
    return plan(obj, api.SpecView.of(obj), obs, legacy=legacy)


def as_applied(p: Plan, ready: int = 1) -> dict[str, dict[str, Any]]:
    """The children the apiserver holds after the plan's applies (with a rollout done)."""
    out = {}
    for a in p.applies:
        live = copy.deepcopy(a.manifest)
        live["metadata"].update(generation=1, resourceVersion="20", uid=f"u-{a.kind}",
                                creationTimestamp=NOW)     # fields the apiserver adds
        if a.kind == "Deployment":
            live["status"] = {"observedGeneration": 1, "replicas": ready,
                              "readyReplicas": ready, "updatedReplicas": ready}
        out[a.kind] = live
    return out


def k_of(manifest: dict[str, Any]) -> int:
    args = manifest["spec"]["template"]["spec"]["containers"][0]["args"]
    return int(json.loads(args[args.index("--speculative-config") + 1])
               ["num_speculative_tokens"])


def cond(status: dict[str, Any], type_: str) -> dict[str, Any]:
    return {c["type"]: c for c in status["conditions"]}[type_]


def test_a_new_sdd_creates_its_children_with_events_and_a_status() -> None:
    p = run(sdd())
    assert [(a.kind, a.reason) for a in p.applies] == [
        ("Deployment", "missing"), ("Service", "missing"), ("PodDisruptionBudget", "missing")]
    assert p.applies[0].event("m") == Event("Normal", "Created",
                                            "Created Deployment m")
    assert p.k == 3 and k_of(p.applies[0].manifest) == 3
    assert p.status is not None and p.status["draftTokens"] == {"current": 3, "initial": 3}
    assert cond(p.status, "Ready")["status"] == "False"
    assert p.events == ()          # no K change, no problem yet


def test_a_pod_monitor_is_planned_once_its_crd_exists() -> None:
    assert "PodMonitor" in {a.kind for a in run(sdd(), pod_monitor_available=True).applies}


def test_converged_children_and_status_plan_nothing() -> None:
    children = as_applied(run(sdd()))
    status = run(sdd(), children).status
    assert status is not None and cond(status, "Ready")["status"] == "True"
    p = run(sdd(status=status), children)
    assert p == Plan(k=3)


def test_a_legacy_status_is_applied_even_unchanged() -> None:
    children = as_applied(run(sdd()))
    status = run(sdd(), children).status
    p = run(sdd(status=status), children, legacy=True)
    assert p.applies == () and p.status == status


def test_a_hand_edit_is_reverted_with_its_reason() -> None:
    children = as_applied(run(sdd()))
    children["Service"]["spec"]["selector"] = {"specdecode.io/deployment": "x"}
    [a] = run(sdd(), children).applies
    assert (a.kind, a.reason) == ("Service", "drifted")
    assert a.event("m") == Event("Normal", "Reverted",
                                 "Reverted Service m (a hand edit of an owned field)")


def test_the_tuners_target_is_rendered_without_an_event_of_the_reconciler() -> None:
    children = as_applied(run(sdd()))
    status = run(sdd(), children).status
    assert status is not None
    target = {**status, "autotune": {"target": {"k": 5, "initial": 3, "time": NOW}}}
    p = run(sdd(status=target), children)
    assert [(a.kind, a.reason) for a in p.applies] == [("Deployment", "changed")]
    assert p.k == 5 and k_of(p.applies[0].manifest) == 5
    assert p.events == ()          # the autotuner announced its own change


def test_a_spec_change_of_k_is_announced_after_the_status() -> None:
    children = as_applied(run(sdd()))
    status = run(sdd(), children).status
    spec = {**SPEC, "draftTokens": {"initial": 4, "min": 1, "max": 8}}
    p = run(sdd(spec, status), children)
    assert p.k == 4 and p.status is not None
    assert p.status["draftTokens"]["current"] == 4
    assert [e.reason for e in p.events] == ["DraftTokensChanged"]
    assert p.events[0].message.startswith("K 3 -> 4: ")


def test_problems_are_warned_once_and_a_recovery_is_announced() -> None:
    children = as_applied(run(sdd()), ready=0)
    stuck = {"metadata": {"name": "m-1", "namespace": "ns"}, "status": {"conditions": [
        {"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
         "message": "0/1 nodes are available: 1 Insufficient nvidia.com/gpu."}]}}
    p = run(sdd(), children, [stuck], nodes_offering_gpu=0)
    assert p.status is not None
    assert cond(p.status, "Degraded")["reason"] == "NoGPUNodes"
    assert [(e.type, e.reason) for e in p.events] == [("Warning", "NoGPUNodes")]
    again = run(sdd(status=p.status), children, [stuck], nodes_offering_gpu=0)
    assert again.status is None and again.events == ()
    failed = run(sdd(status=p.status), children,
                 apply_error="applying Deployment m: admission denied")
    assert failed.status is not None
    assert cond(failed.status, "Degraded")["reason"] == "ApplyFailed"
    assert [(e.type, e.reason) for e in failed.events] == [("Warning", "ApplyFailed")]
    fine = run(sdd(status=failed.status), as_applied(run(sdd())))
    assert fine.status is not None
    assert [(e.type, e.reason) for e in fine.events] == [("Normal", "Recovered")]


def test_an_apply_bumping_the_deployments_generation_reads_as_a_rollout() -> None:
    children = as_applied(run(sdd()))
    status = run(sdd(), children).status
    rolled = copy.deepcopy(children)
    rolled["Deployment"]["metadata"]["generation"] = 2     # the apply's response
    p = run(sdd(status=status), rolled)
    assert p.status is not None
    assert cond(p.status, "Progressing")["reason"] == "RollingUpdate"
    assert cond(p.status, "Ready")["status"] == "False"
