"""The operator survives the API going away: the real kube-apiserver, then etcd, restarted
under a running operator (what every control-plane upgrade does); afterwards a new SDD and a
spec change reconcile without restarting the operator, and liveness stayed healthy."""

from __future__ import annotations

import json
import time

import pytest

from specdecode_runtime.localplane import LocalPlane
from specdecode_runtime.operator_process import OperatorProcess

from ..kube_helpers import apply, condition, get_or_none, sdd_doc, wait_for

pytestmark = pytest.mark.plane

SPEC = {"model": {"name": "org/target"}, "drafter": {"method": "mtp"}, "replicas": 1,
        "draftTokens": {"initial": 3, "min": 1, "max": 8}}


def ready(plane: LocalPlane, ns: str, name: str) -> bool:
    s = get_or_none(plane, "sdd", name, "-n", ns)
    return bool(s) and condition(s, "Ready").get("status") == "True" \
        and s["status"].get("observedGeneration") == s["metadata"]["generation"]


def k_of(plane: LocalPlane, ns: str, name: str) -> int | None:
    d = get_or_none(plane, "deployment", name, "-n", ns)
    if not d:
        return None
    args = d["spec"]["template"]["spec"]["containers"][0]["args"]
    return json.loads(args[args.index("--speculative-config") + 1])["num_speculative_tokens"]


@pytest.mark.parametrize("component,down", [("kube-apiserver", 10.0), ("etcd", 10.0)])
def test_reconciles_after_restart_without_operator_restart(
    operator: OperatorProcess, plane: LocalPlane, namespace: str, component: str, down: float
) -> None:
    starts = operator.starts
    apply(plane, sdd_doc("before", namespace, SPEC))
    wait_for("before Ready", lambda: ready(plane, namespace, "before"), timeout=60)

    # The outage: the process stops, stays down, comes back through its start-up phase (the
    # operator sees refused connections, then 503s while the apiserver installs its paths).
    plane.restart(component, down_seconds=down, wait_ready=False)
    wait_for("API back", lambda: plane.kubectl("get", "ns", namespace,
                                               check=False).returncode == 0, timeout=120)
    t0 = time.monotonic()
    apply(plane, sdd_doc("after", namespace, SPEC))
    apply(plane, sdd_doc("before", namespace, {**SPEC, "draftTokens": {
        "initial": 5, "min": 1, "max": 8}}))
    wait_for("new SDD reconciled", lambda: ready(plane, namespace, "after"), timeout=120)
    wait_for("spec change rendered", lambda: k_of(plane, namespace, "before") == 5, timeout=60)
    wait_for("spec change Ready", lambda: ready(plane, namespace, "before"), timeout=60)
    print(f"{component} down {down:.0f} s: reconciled {time.monotonic() - t0:.1f} s after "
          "the API answered again")
    assert operator.comp and operator.comp.alive and operator.starts == starts
    code, body = operator.liveness()
    assert code == 200, body
