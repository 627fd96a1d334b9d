"""Canary mode in the reconcile plan (pure): the canary Deployment rendered from the
autotuner's status, the main Deployment one replica smaller, and the canary deleted only
once the main Deployment has taken its place."""

from __future__ import annotations

import copy
from typing import Any

from specdecode_operator import api
from specdecode_operator.plan import Observation, Plan, plan

from .test_plan import NOW, k_of, sdd

SPEC: dict[str, Any] = {"model": {"name": "org/target"}, "drafter": {"method": "mtp"},
                        "draftTokens": {"initial": 3, "min": 1, "max": 8}, "replicas": 3,
                        "autotune": {"canary": {"enabled": True}}}
CANARY = {"from": 3, "to": 5, "since": NOW, "predictedGain": 0.06, "probe": False,
          "samples": []}


def status(canary: dict[str, Any] | None = CANARY) -> dict[str, Any]:
    at: dict[str, Any] = {"canary": canary} if canary else {}
    return {"draftTokens": {"current": 3, "initial": 3}, "autotune": at}


def run(obj: dict[str, Any], children: dict[str, Any] | None = None,
        canary: dict[str, Any] | None = None, pods: list[dict[str, Any]] | None = None
        ) -> Plan:
    obs = Observation(children=children or {}, pods=pods or [], pod_monitor_available=False,
                      nodes_offering_gpu=None, now=NOW, canary=canary)
    return plan(obj, api.SpecView.of(obj), obs)


def live(manifest: dict[str, Any], *, replicas: int, updated: int, uid: str = "u-1",
         generation: int = 1) -> dict[str, Any]:
    out = copy.deepcopy(manifest)
    out["metadata"].update(generation=generation, resourceVersion="20", uid="d-1")
    out["metadata"]["ownerReferences"][0]["uid"] = uid
    out["status"] = {"observedGeneration": generation, "replicas": replicas,
                     "updatedReplicas": updated, "availableReplicas": updated,
                     "readyReplicas": updated}
    return out


def by_name(p: Plan) -> dict[str, dict[str, Any]]:
    """The Deployments the plan applies, by name."""
    return {a.manifest["metadata"]["name"]: a.manifest for a in p.applies
            if a.kind == "Deployment"}


def test_a_running_canary_renders_one_replica_at_its_k_beside_the_others() -> None:
    p = run(sdd(SPEC, status()))
    deps = by_name(p)
    main, can = deps["m"], deps["m-canary"]
    assert (main["spec"]["replicas"], k_of(main)) == (2, 3)
    assert (can["spec"]["replicas"], k_of(can)) == (1, 5)
    # Its own selector never counts the main pods; its pod keeps the SDD label, so the
    # Service, PDB and PodMonitor select it with the others.
    sel = can["spec"]["selector"]["matchLabels"]
    labels = can["spec"]["template"]["metadata"]["labels"]
    assert sel == {api.LABEL_SDD: "m", api.LABEL_CANARY: "true"}
    assert labels[api.LABEL_SDD] == "m" and labels[api.LABEL_K] == "5"
    assert api.LABEL_CANARY not in main["spec"]["template"]["metadata"]["labels"]
    svc = next(a.manifest for a in p.applies if a.kind == "Service")
    assert svc["spec"]["selector"] == {api.LABEL_SDD: "m"}
    assert p.status is not None and p.status["draftTokens"]["canary"] == 5
    assert not p.deletes


def test_no_canary_without_canary_mode_two_replicas_or_the_running_k() -> None:
    for spec in ({**SPEC, "replicas": 1}, {**SPEC, "autotune": {}},
                 {**SPEC, "autotune": {"canary": {"enabled": True}, "mode": "Recommend"}}):
        p = run(sdd(spec, status()))
        assert set(by_name(p)) == {"m"}, spec
        assert "canary" not in (p.status or {}).get("draftTokens", {})
    # Started from another K than the one running (the spec's initial K moved since).
    p = run(sdd(SPEC, status({**CANARY, "from": 4})))
    assert set(by_name(p)) == {"m"}
    # A K outside the bounds is never rendered.
    assert set(by_name(run(sdd(SPEC, status({**CANARY, "to": 9}))))) == {"m"}


def test_the_canary_is_deleted_only_once_the_main_deployment_has_taken_its_place() -> None:
    running = run(sdd(SPEC, status()))
    deps = by_name(running)
    canary_live = live(deps["m-canary"], replicas=1, updated=1)
    ended = sdd(SPEC, status(None))
    main_now = next(a.manifest for a in run(ended).applies if a.kind == "Deployment")
    # The main Deployment is scaled back up but not rolled out yet: the canary stays.
    rolling = live(main_now, replicas=3, updated=2)
    assert not run(ended, {"Deployment": rolling}, canary_live).deletes
    # Its apply is still pending (the live one has 2 replicas): the canary stays.
    assert not run(ended, {"Deployment": live(deps["m"], replicas=2, updated=2)},
                   canary_live).deletes
    # Rolled out on all 3: deleted, with its reason.
    p = run(ended, {"Deployment": live(main_now, replicas=3, updated=3)}, canary_live)
    assert [(d.kind, d.name) for d in p.deletes] == [("Deployment", "m-canary")]
    assert "all 3 replicas" in p.deletes[0].why
    # Another object's leftover of the same name is never deleted.
    assert not run(ended, {"Deployment": live(main_now, replicas=3, updated=3)},
                   live(deps["m-canary"], replicas=1, updated=1, uid="other")).deletes


def test_unschedulable_pods_free_the_canarys_gpu_at_once() -> None:
    deps = by_name(run(sdd(SPEC, status())))
    ended = sdd(SPEC, status(None))
    main_now = next(a.manifest for a in run(ended).applies if a.kind == "Deployment")
    pending = {"metadata": {"name": "m-x", "namespace": "ns", "labels": {api.LABEL_SDD: "m"}},
               "status": {"conditions": [{"type": "PodScheduled", "status": "False",
                                          "reason": "Unschedulable", "message": "no GPU"}]}}
    p = run(ended, {"Deployment": live(main_now, replicas=3, updated=2)},
            live(deps["m-canary"], replicas=1, updated=1), pods=[pending])
    assert [d.name for d in p.deletes] == ["m-canary"] and "unschedulable" in p.deletes[0].why


def test_the_status_counts_the_canarys_pod_with_the_others() -> None:
    deps = by_name(run(sdd(SPEC, status())))
    main = live(deps["m"], replicas=2, updated=2)

    def ready(p: Plan) -> dict[str, Any]:
        assert p.status is not None
        return next(c for c in p.status["conditions"] if c["type"] == "Ready")

    # The canary's pod is not ready yet: the SDD serves 2 of its 3 replicas.
    starting = run(sdd(SPEC, status()), {"Deployment": main},
                   live(deps["m-canary"], replicas=1, updated=0))
    assert starting.status is not None
    assert (starting.status["replicas"], starting.status["readyReplicas"]) == (3, 2)
    assert ready(starting)["status"] == "False" and "2/3" in ready(starting)["message"]
    # Its Deployment not even created yet: the same.
    assert ready(run(sdd(SPEC, status()), {"Deployment": main}))["status"] == "False"
    # Ready: all 3 count, one of them the canary.
    up = run(sdd(SPEC, status()), {"Deployment": main},
             live(deps["m-canary"], replicas=1, updated=1))
    assert up.status is not None
    assert (up.status["replicas"], up.status["readyReplicas"]) == (3, 3)
    assert ready(up)["status"] == "True" and "3/3" in ready(up)["message"]
    # Without canary mode the counts are the main Deployment's alone.
    plain = run(sdd({**SPEC, "autotune": {}}, status(None)),
                {"Deployment": live(deps["m"], replicas=3, updated=3)})
    assert plain.status is not None and plain.status["readyReplicas"] == 3
    assert ready(plain)["status"] == "True" and "canary" not in ready(plain)["message"]
