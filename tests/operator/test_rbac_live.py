"""The chart's RBAC is sufficient: one scenario that makes the operator use every verb of the
chart's roles, run by the session operator, which runs under the chart's ServiceAccount
(operator_process.start_operator) with OwnerReferencesPermissionEnforcement on in the plane.

Minimality is the converse: hack/rbac-minimality removes one verb at a time
(SPECDECODE_TEST_RBAC_DROP) and runs this test, which must then fail (docs/testing.md).
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from specdecode_runtime.localplane import LocalPlane
from specdecode_runtime.operator_process import CHART_USER, OperatorProcess

from ..conftest import installed_crds, stand_in_crd
from ..kube_helpers import apply, condition, events, get_json, get_or_none, sdd_doc, wait_for

pytestmark = pytest.mark.plane
FORBIDDEN = re.compile(r"forbidden|Not enough permissions|cannot \w+ resource", re.I)
SPEC = {"model": {"name": "org/target"}, "drafter": {"method": "mtp"},
        "draftTokens": {"initial": 4, "min": 2, "max": 8}, "replicas": 1}


def test_the_chart_role_suffices_for_every_operator_path(
    operator: OperatorProcess, plane: LocalPlane, namespace: str
) -> None:
    assert operator.username == CHART_USER
    log_start = len(operator.log_text())
    with installed_crds(plane, [stand_in_crd("PodMonitor", "podmonitors")]):
        # Create: Deployment, Service, PDB, PodMonitor (its CRD read: crd get), each with a
        # blocking ownerReference (specdecodedeployments/finalizers update), Events, status.
        apply(plane, sdd_doc("rbac", namespace, SPEC))
        pokes = iter(range(1, 10_000))

        def children() -> dict[str, Any] | None:
            # Discovery of the PodMonitor CRD is cached 2 s: poke until a reconcile sees it.
            plane.kubectl("label", "--overwrite", "sdd", "rbac", "-n", namespace,
                          f"poke={next(pokes)}")
            got = {k: get_or_none(plane, k, "rbac", "-n", namespace)
                   for k in ("deployment", "service", "pdb", "podmonitor")}
            return got if all(got.values()) else None

        kids = wait_for("all four children", children, timeout=60)
        for kind, obj in kids.items():
            ref = obj["metadata"]["ownerReferences"][0]
            assert (ref["kind"], ref.get("blockOwnerDeletion")) == (
                "SpecDecodeDeployment", True), (kind, ref)
        sdd = wait_for("Ready and MetricsAvailable reported", lambda: (
            s := get_json(plane, "sdd", "rbac", "-n", namespace))
            and condition(s, "Ready").get("status") == "True"
            and condition(s, "MetricsAvailable") and s, timeout=60)
        assert sdd["status"]["draftTokens"]["current"] == 4
        assert "Created" in {e["reason"] for e in events(plane, namespace, "rbac")}

        # Patch: hand edits of every child are reverted (watch events trigger the reconcile).
        plane.kubectl("patch", "deployment", "rbac", "-n", namespace, "--type=json", "-p",
                      json.dumps([{"op": "replace",
                                   "path": "/spec/template/spec/containers/0/args/0",
                                   "value": "org/other"}]))
        plane.kubectl("patch", "service", "rbac", "-n", namespace, "--type=merge", "-p",
                      json.dumps({"spec": {"selector": {"specdecode.io/deployment": "x"}}}))
        plane.kubectl("patch", "pdb", "rbac", "-n", namespace, "--type=merge", "-p",
                      json.dumps({"spec": {"maxUnavailable": 3}}))
        plane.kubectl("patch", "podmonitor", "rbac", "-n", namespace, "--type=merge", "-p",
                      json.dumps({"spec": {"selector": {"matchLabels": {
                          "specdecode.io/deployment": "x"}}}}))
        reverted = {
            "Deployment": lambda: get_json(plane, "deployment", "rbac", "-n", namespace)
            ["spec"]["template"]["spec"]["containers"][0]["args"][0] == "org/target",
            "Service": lambda: get_json(plane, "service", "rbac", "-n", namespace)["spec"]
            ["selector"] == {"specdecode.io/deployment": "rbac"},
            "PDB": lambda: get_json(plane, "pdb", "rbac", "-n", namespace)["spec"]
            ["maxUnavailable"] == 1,
            # Not watched: reverted by the next periodic resync (10 s here).
            "PodMonitor": lambda: get_json(plane, "podmonitor", "rbac", "-n", namespace)
            ["spec"]["selector"] == {"matchLabels": {"specdecode.io/deployment": "rbac"}},
        }
        for kind, done in reverted.items():
            wait_for(f"the hand edit of the {kind} reverted", done, timeout=45)

        # Nodes list: a pod that cannot schedule for want of the GPU resource.
        apply(plane, sdd_doc("amd", namespace, {**SPEC, "gpu": {"resourceName": "amd.com/gpu"}}))
        wait_for("Degraded=NoGPUNodes", lambda: condition(
            get_json(plane, "sdd", "amd", "-n", namespace), "Degraded").get("reason")
            == "NoGPUNodes", timeout=45)
        for name in ("rbac", "amd"):
            plane.kubectl("delete", "sdd", name, "-n", namespace)
    assert operator.comp is not None and operator.comp.alive
    denied = [ln for ln in operator.log_text()[log_start:].splitlines() if FORBIDDEN.search(ln)]
    assert not denied, "the operator hit RBAC limits:\n" + "\n".join(denied[:20])
