"""A reconcile that fails reaches the user: Degraded with a reason, one Warning Event per
distinct problem (not per retry), retries with backoff, recovery when the problem goes.

The failing object is one the current CRD refuses but an older CRD stored (an upgrade): the
CRD is swapped for one without the engineArgs rules while it is created."""

from __future__ import annotations

import copy

import pytest
import yaml

from specdecode_operator import crd
from specdecode_runtime.localplane import LocalPlane
from specdecode_runtime.operator_process import OperatorProcess, install_crds

from ..kube_helpers import apply, condition, events, get_json, get_or_none, sdd_doc, wait_for

pytestmark = pytest.mark.plane

SPEC = {"model": {"name": "org/target"}, "drafter": {"method": "mtp"}, "replicas": 1}


def older_crd() -> dict:
    doc = copy.deepcopy(crd.crd())
    for v in doc["spec"]["versions"]:
        v["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["engineArgs"].pop(
            "x-kubernetes-validations")
    return doc


def test_failed_reconcile_is_degraded_once_retried_and_recovers(
    operator: OperatorProcess, crds: LocalPlane, namespace: str
) -> None:
    plane = crds
    bad = {**SPEC, "engineArgs": ["--tensor_parallel_size", "8"]}
    try:
        plane.kubectl("apply", "--server-side", "--force-conflicts", "-f", "-",
                      input=yaml.safe_dump(older_crd()))
        wait_for("older CRD accepts the spec", lambda: apply(
            plane, sdd_doc("old", namespace, bad), check=False).returncode == 0)
    finally:
        plane.kubectl("apply", "--server-side", "--force-conflicts", "-f", "-",
                      input=yaml.safe_dump(crd.crd()))
        install_crds(plane)
    sdd = wait_for("Degraded InvalidSpec", lambda: (
        s := get_json(plane, "sdd", "old", "-n", namespace))
        and condition(s, "Degraded").get("reason") == "InvalidSpec" and s)
    deg = condition(sdd, "Degraded")
    assert deg["status"] == "True"
    assert "--tensor-parallel-size" in deg["message"] and "use spec.tensorParallelSize" \
        in deg["message"], deg
    # Only a change fixes it: Stalled (kstatus: Failed) on the generation the operator read.
    stalled = condition(sdd, "Stalled")
    assert (stalled["status"], stalled["reason"], stalled["message"]) == \
        ("True", "InvalidSpec", deg["message"])
    assert sdd["status"]["observedGeneration"] == sdd["metadata"]["generation"]
    assert get_or_none(plane, "deployment", "old", "-n", namespace) is None
    # Retried with backoff, without any change to the object...
    errors = operator.metric("specdecode_operator_reconcile_errors_total")
    wait_for("three more failed retries", lambda: operator.metric(
        "specdecode_operator_reconcile_errors_total") >= errors + 3, timeout=30)
    # ... and reported once.
    warnings = [e for e in events(plane, namespace, "old") if e["reason"] == "InvalidSpec"]
    assert len(warnings) == 1 and warnings[0]["type"] == "Warning"
    assert warnings[0].get("count", 1) == 1
    # The user fixes the spec (the current CRD allows the update): it recovers.
    apply(plane, sdd_doc("old", namespace, SPEC))
    fixed = wait_for("Degraded False", lambda: (
        s := get_json(plane, "sdd", "old", "-n", namespace))
        and condition(s, "Degraded").get("status") == "False" and s)
    assert condition(fixed, "Stalled")["status"] == "False"
    assert get_or_none(plane, "deployment", "old", "-n", namespace)
    assert any(e["reason"] == "Recovered" for e in events(plane, namespace, "old"))
