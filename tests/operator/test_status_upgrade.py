"""The status split on the real apiserver: the upgrade from one field manager for all of status
(the tuner's K in draftTokens.current) loses nothing and rolls out nothing, and afterwards each
writer's server-side apply leaves the other's fields alone."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from specdecode_operator import api
from specdecode_operator.kube import Kube
from specdecode_operator.render import render
from specdecode_runtime.localplane import LocalPlane
from specdecode_runtime.operator_process import OperatorProcess, wait_quiet

from ..kube_helpers import apply, condition, events, get_json, sdd_doc, wait_for

pytestmark = pytest.mark.plane

PAUSE = "specdecode.io/autotune-paused"
SPEC: dict[str, Any] = {
    "model": {"name": "org/target"},
    "drafter": {"method": "mtp", "model": "org/target-assistant"},
    "draftTokens": {"initial": 3, "min": 1, "max": 12},
    "replicas": 1,
    "autotune": {"mode": "Auto", "intervalSeconds": 5, "windowSeconds": 30},
}
# What the tuner had learned before the upgrade (today's shape, nothing of it derivable).
ACCEPTANCE = {"rate": "0.83", "meanLength": "4.10", "perPosition": ["0.95", "0.90", "0.85"],
              "tokensPerSecond": "812", "windowSeconds": 600}
AUTOTUNE = {
    "lastChangeTime": "2026-11-30T10:00:00Z", "changes": ["2026-11-30T10:00:00Z"],
    "pending": {"k": 8, "count": 1}, "survival": ["0.9500", "0.9000", "0.8500"],
    "lastDecision": {"time": "2026-11-30T10:00:00Z", "from": 3, "to": 7, "recommended": 7,
                     "policy": "goodput", "reason": "K 3 -> 7: predicted goodput +12%"},
    "history": [{"time": "2026-11-30T10:00:00Z", "from": 3, "to": 7, "recommended": 7,
                 "policy": "goodput", "reason": "K 3 -> 7: predicted goodput +12%"}],
}
METRICS = {"type": "MetricsAvailable", "status": "True", "reason": "MetricsFound",
           "message": "25000 drafts, 300 requests at K=7 in 600s",
           "lastTransitionTime": "2026-11-30T09:00:00Z"}


def _k(dep: dict[str, Any]) -> int:
    args = dep["spec"]["template"]["spec"]["containers"][0]["args"]
    return int(json.loads(args[args.index("--speculative-config") + 1])["num_speculative_tokens"])


def _replica_sets(plane: LocalPlane, ns: str, name: str) -> set[str]:
    items = get_json(plane, "replicasets", "-n", ns, "-l",
                     f"specdecode.io/deployment={name}")["items"]
    return {rs["metadata"]["name"] for rs in items}


def _owned(sdd: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """status fields (fieldsV1 under f:status) per field manager."""
    return {m["manager"]: m["fieldsV1"].get("f:status", {})
            for m in sdd["metadata"]["managedFields"] if m.get("subresource") == "status"}


def _rolled_out(plane: LocalPlane, ns: str, name: str) -> dict[str, Any] | None:
    dep = get_json(plane, "deployment", name, "-n", ns)
    st = dep.get("status") or {}
    done = st.get("observedGeneration") == dep["metadata"]["generation"] \
        and st.get("updatedReplicas") == st.get("readyReplicas") == st.get("replicas") == 1
    return dep if done else None


def _write_as_the_old_operator(plane: LocalPlane, sdd: dict[str, Any], k: int) -> None:
    """What a pre-split operator left behind: the Deployment rendered at the tuner's K and
    the whole status, tuner fields included, applied under one field manager."""
    live = sdd["status"]
    status = {
        **{f: live[f] for f in api.RECONCILER_KEYS},
        "draftTokens": {"current": k, "initial": live["draftTokens"]["initial"],
                        "recommended": k},
        "acceptance": ACCEPTANCE, "autotune": AUTOTUNE,
        "conditions": [*[c for c in live["conditions"]
                         if c["type"] in api.RECONCILER_CONDITIONS], METRICS],
    }

    async def go() -> None:
        kube = Kube.from_env(str(plane.kubeconfig))
        try:
            await kube.apply(render(sdd, k)[0])
            await kube.apply_status(sdd, status, manager=api.OPERATOR_MANAGER)
        finally:
            await kube.close()

    asyncio.run(go())


def test_upgrade_from_one_status_manager_keeps_tuner_state_and_k_without_a_rollout(
    operator: OperatorProcess, plane: LocalPlane, namespace: str
) -> None:
    doc = sdd_doc("up", namespace, SPEC)
    doc["metadata"]["annotations"] = {PAUSE: "true"}  # the tuner stays out until step 4
    apply(plane, doc)
    wait_for("Ready at K 3", lambda: condition(
        get_json(plane, "sdd", "up", "-n", namespace), "Ready").get("status") == "True"
        and _k(get_json(plane, "deployment", "up", "-n", namespace)) == 3, timeout=45)

    # 1. Today's shape, written while the operator is down.
    operator.stop()
    try:
        _write_as_the_old_operator(plane, get_json(plane, "sdd", "up", "-n", namespace), 7)
        dep = wait_for("the old operator's K 7 rolled out",
                       lambda: _rolled_out(plane, namespace, "up"), timeout=45)
        assert _k(dep) == 7
        before = get_json(plane, "sdd", "up", "-n", namespace, "--show-managed-fields")
        assert api.legacy_status(before)
        replica_sets, generation = _replica_sets(plane, namespace, "up"), \
            dep["metadata"]["generation"]
    finally:
        operator.start()

    # 2. The new operator migrates: each manager ends up owning only its fields.
    sdd = wait_for("the status split", lambda: (
        s := get_json(plane, "sdd", "up", "-n", namespace, "--show-managed-fields"))
        and not api.legacy_status(s) and s, timeout=30)
    wait_quiet(operator)
    sdd = get_json(plane, "sdd", "up", "-n", namespace, "--show-managed-fields")
    st = sdd["status"]
    assert st["acceptance"] == ACCEPTANCE
    assert {k: v for k, v in st["autotune"].items() if k != "target"} == AUTOTUNE
    assert st["autotune"]["target"] == {"k": 7, "initial": 3, "time": AUTOTUNE["lastChangeTime"]}
    assert st["draftTokens"] == {"current": 7, "initial": 3, "recommended": 7}
    assert condition(sdd, "MetricsAvailable") == METRICS
    assert condition(sdd, "Ready")["status"] == "True"

    owned = _owned(sdd)
    assert set(owned) == {api.OPERATOR_MANAGER, api.TUNER_MANAGER}, owned
    rec, tun = owned[api.OPERATOR_MANAGER], owned[api.TUNER_MANAGER]
    assert {f for f in rec if f != "."} == {
        "f:observedGeneration", "f:replicas", "f:readyReplicas", "f:updatedReplicas",
        "f:selector", "f:draftTokens", "f:conditions"}
    assert {f for f in rec["f:draftTokens"] if f != "."} == {"f:current", "f:initial"}
    assert {k for k in rec["f:conditions"] if k != "."} == {
        f'k:{{"type":"{t}"}}' for t in api.RECONCILER_CONDITIONS}
    assert {f for f in tun if f != "."} == {"f:acceptance", "f:autotune", "f:draftTokens",
                                           "f:conditions"}
    assert {f for f in tun["f:draftTokens"] if f != "."} == {"f:recommended"}
    assert {k for k in tun["f:conditions"] if k != "."} == {'k:{"type":"MetricsAvailable"}'}

    # 3. No rollout: same K, same template, no new ReplicaSet, no K-change event.
    dep = get_json(plane, "deployment", "up", "-n", namespace)
    assert _k(dep) == 7 and dep["metadata"]["generation"] == generation
    assert _replica_sets(plane, namespace, "up") == replica_sets
    assert not [e for e in events(plane, namespace, "up") if e["reason"] == "DraftTokensChanged"]

    # 4. Each writer's apply leaves the other's fields alone. The reconciler: a scale.
    plane.kubectl("scale", "sdd", "up", "-n", namespace, "--replicas=2")
    sdd = wait_for("replicas 2 in status", lambda: (
        s := get_json(plane, "sdd", "up", "-n", namespace))
        and s["status"].get("replicas") == 2 and s, timeout=30)
    assert sdd["status"]["acceptance"] == ACCEPTANCE
    assert sdd["status"]["draftTokens"]["recommended"] == 7
    assert condition(sdd, "MetricsAvailable") == METRICS
    # The tuner: unpaused, it finds no metrics (none are served here) and says so.
    plane.kubectl("annotate", "sdd", "up", "-n", namespace, f"{PAUSE}-")
    sdd = wait_for("MetricsAvailable=False", lambda: (
        s := get_json(plane, "sdd", "up", "-n", namespace))
        and condition(s, "MetricsAvailable").get("reason") == "NoData" and s, timeout=30)
    st = sdd["status"]
    assert st["replicas"] == 2 and st["draftTokens"]["current"] == 7
    assert {c["type"] for c in st["conditions"]} == {"Ready", "Progressing", "Degraded",
                                                     "Stalled", "MetricsAvailable"}
    assert st["acceptance"] == ACCEPTANCE           # kept while there is no new window
    assert st["autotune"]["target"]["k"] == 7
    assert _k(get_json(plane, "deployment", "up", "-n", namespace)) == 7
