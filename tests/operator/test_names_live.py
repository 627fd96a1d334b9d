"""SDD names the apiserver accepts, from the natural `llama-3.1-8b` to 253 characters: each
gets its Deployment, a Service that selects its pods, a PDB and a status, on the real plane.
Children are found through their owner reference, not by recomputing their names."""

from __future__ import annotations

import re
from typing import Any

import pytest

from specdecode_runtime.localplane import LocalPlane
from specdecode_runtime.operator_process import OperatorProcess

from ..kube_helpers import apply, condition, events, get_json, sdd_doc, wait_for

pytestmark = pytest.mark.plane

SPEC = {"model": {"name": "org/target"}, "drafter": {"method": "mtp"}, "replicas": 1}
DNS1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


def long_name(n: int) -> str:
    """A valid DNS subdomain of exactly n characters, with dots, as generated names look."""
    parts, out = ["llama", "3", "1", "8b", "instruct"], ""
    i = 0
    while len(out) < n:
        out += ("." if out else "") + parts[i % len(parts)]
        i += 1
    return out[:n].rstrip(".") + "x" * (n - len(out[:n].rstrip(".")))


NAMES = {"dotted": "llama-3.1-8b", "63": long_name(63), "64": long_name(64),
         "253": long_name(253)}


def owned(plane: LocalPlane, kind: str, ns: str, uid: str) -> list[dict[str, Any]]:
    return [o for o in get_json(plane, kind, "-n", ns)["items"]
            if any(r["uid"] == uid for r in o["metadata"].get("ownerReferences") or [])]


@pytest.mark.parametrize("case", sorted(NAMES))
def test_every_accepted_name_gets_children_and_status(
    operator: OperatorProcess, plane: LocalPlane, namespace: str, case: str
) -> None:
    name = NAMES[case]
    assert len(name) == {"dotted": 12, "63": 63, "64": 64, "253": 253}[case]
    apply(plane, sdd_doc(name, namespace, SPEC))
    uid = get_json(plane, "sdd", name, "-n", namespace)["metadata"]["uid"]
    sdd = wait_for(f"{case}: Ready", lambda: (
        s := get_json(plane, "sdd", name, "-n", namespace))
        and condition(s, "Ready").get("status") == "True" and s, timeout=60)
    assert sdd["status"]["observedGeneration"] == sdd["metadata"]["generation"]
    assert condition(sdd, "Degraded").get("status") == "False"

    [dep] = owned(plane, "deployments", namespace, uid)
    [svc] = owned(plane, "services", namespace, uid)
    [pdb] = owned(plane, "pdb", namespace, uid)
    assert DNS1035.match(svc["metadata"]["name"]), svc["metadata"]["name"]
    if len(name) <= 63:  # names that always fitted keep them (no rollout on upgrade)
        assert dep["metadata"]["name"] == name and pdb["metadata"]["name"] == name
    # The Service and the status selector select the Deployment's pods.
    pods = get_json(plane, "pods", "-n", namespace, "-l", sdd["status"]["selector"])["items"]
    assert [p["metadata"]["ownerReferences"][0]["name"] for p in pods] and all(
        p["metadata"]["labels"].get(k) == v
        for p in pods for k, v in svc["spec"]["selector"].items())
    assert dep["spec"]["selector"]["matchLabels"] == svc["spec"]["selector"]
    assert pdb["spec"]["selector"]["matchLabels"] == svc["spec"]["selector"]
    # The full name reaches whatever maps pods back to the SDD (pod runner, PodMonitor).
    for p in pods:
        full = (p["metadata"].get("annotations") or {}).get("specdecode.io/deployment-name")
        assert (full or p["metadata"]["labels"]["specdecode.io/deployment"]) == name
    # Clients find the Service from the SDD's events.
    created = " ".join(e["message"] for e in events(plane, namespace, name)
                       if e["reason"] == "Created")
    assert "Service" in created
