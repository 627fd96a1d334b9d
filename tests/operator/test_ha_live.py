"""Two operator replicas, one active (a Lease): SIGKILL of the active one in the middle of a
K rollout; the standby takes over within a bounded time, finishes the rollout with exactly
one new ReplicaSet and the status complete. Its own plane: a clusterwide session operator
would act as a third replica."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from specdecode_runtime.localplane import LocalPlane
from specdecode_runtime.operator_process import OperatorProcess, install_crds, start_operator

from ..kube_helpers import apply, condition, events, get_json, get_or_none, sdd_doc, wait_for

pytestmark = pytest.mark.plane

LEASE_SECONDS = 6
SPEC = {"model": {"name": "org/target"}, "drafter": {"method": "mtp"}, "replicas": 2,
        "rollout": {"maxSurge": 1, "maxUnavailable": 0},
        "draftTokens": {"initial": 3, "min": 1, "max": 8}}


@pytest.fixture(scope="module")
def haplane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalPlane]:
    with LocalPlane(workdir=tmp_path_factory.mktemp("haplane")) as p:
        install_crds(p)
        yield p


def replica(plane: LocalPlane, work: Path, name: str, ns: str) -> OperatorProcess:
    return start_operator(plane, work / name, env={
        "SPECDECODE_LEADER_ELECTION": "1", "SPECDECODE_POD_NAME": name,
        "SPECDECODE_LEASE_NAMESPACE": ns, "SPECDECODE_LEASE_SECONDS": str(LEASE_SECONDS),
        "SPECDECODE_LEASE_RETRY_SECONDS": "1"},
        # The chart grants the Lease verbs only with ha.enabled (checked in tests/helm), and
        # its rendered default RBAC has no such Role; the Lease lives in the test namespace.
        identity="admin")


def holder(plane: LocalPlane, ns: str) -> str | None:
    lease = get_or_none(plane, "lease", "specdecode-operator", "-n", ns)
    return (lease or {}).get("spec", {}).get("holderIdentity")


def k_of(dep: dict) -> int:
    args = dep["spec"]["template"]["spec"]["containers"][0]["args"]
    return json.loads(args[args.index("--speculative-config") + 1])["num_speculative_tokens"]


def test_standby_takes_over_mid_rollout(haplane: LocalPlane, tmp_path: Path) -> None:
    plane, ns = haplane, "ha"
    plane.kubectl("create", "namespace", ns)
    ops = {n: replica(plane, tmp_path, n, ns) for n in ("op-a", "op-b")}
    try:
        active = wait_for("a lease holder", lambda: holder(plane, ns))
        standby = next(n for n in ops if n != active)
        apply(plane, sdd_doc("m", ns, SPEC))
        wait_for("Ready at K=3", lambda: condition(
            get_json(plane, "sdd", "m", "-n", ns), "Ready").get("status") == "True", 60)
        assert ops[standby].reconciles() == 0  # the standby did nothing

        apply(plane, sdd_doc("m", ns, {**SPEC, "draftTokens": {"initial": 5, "min": 1,
                                                                "max": 8}}))
        wait_for("rollout to K=5 started", lambda: k_of(
            get_json(plane, "deployment", "m", "-n", ns)) == 5)
        killed = time.monotonic()
        assert ops[active].comp and ops[active].comp.proc
        ops[active].comp.proc.kill()  # SIGKILL: no cleanup, the lease is left as it was
        wait_for("standby holds the lease", lambda: holder(plane, ns) == standby,
                 timeout=LEASE_SECONDS * 3)
        took = time.monotonic() - killed
        print(f"take-over: {took:.1f} s after SIGKILL (lease {LEASE_SECONDS} s, retry 1 s)")
        assert took < LEASE_SECONDS + 5

        sdd = wait_for("rollout finished by the standby", lambda: (
            s := get_json(plane, "sdd", "m", "-n", ns))
            and s["status"].get("observedGeneration") == s["metadata"]["generation"]
            and s["status"].get("draftTokens", {}).get("current") == 5
            and s["status"].get("updatedReplicas") == 2
            and condition(s, "Ready").get("status") == "True" and s, timeout=60)
        assert condition(sdd, "Progressing")["reason"] == "RolloutComplete"
        assert ops[standby].reconciles() > 0
        rs = get_json(plane, "rs", "-n", ns, "-l", "specdecode.io/deployment=m")["items"]
        assert len(rs) == 2, [r["metadata"]["name"] for r in rs]  # one new per change
        changed = [e for e in events(plane, ns, "m") if e["reason"] == "DraftTokensChanged"]
        assert len(changed) <= 1, changed
    finally:
        for op in ops.values():
            if op.comp and op.comp.alive:
                op.stop()


def test_sigkill_at_random_points_of_k_rollouts_converges(haplane: LocalPlane,
                                                          tmp_path: Path) -> None:
    """SIGKILL of the operator at a random moment of each of five K changes: each converges
    with exactly one new ReplicaSet per change (the property issue 11 saw hold; kept)."""
    import random

    plane, ns = haplane, "kill"
    plane.kubectl("create", "namespace", ns)
    rnd = random.Random(11)
    op = start_operator(plane, tmp_path / "op")
    try:
        apply(plane, sdd_doc("m", ns, SPEC))
        wait_for("Ready", lambda: condition(
            get_json(plane, "sdd", "m", "-n", ns), "Ready").get("status") == "True", 60)
        for i, k in enumerate([5, 2, 7, 4, 6]):
            apply(plane, sdd_doc("m", ns, {**SPEC, "draftTokens": {"initial": k, "min": 1,
                                                                    "max": 8}}))
            time.sleep(rnd.uniform(0.0, 1.5))  # the fault's random point, not a wait
            assert op.comp and op.comp.proc
            op.comp.proc.kill()
            op.comp = None
            op.start()
            wait_for(f"K={k} converged", lambda k=k: (
                s := get_json(plane, "sdd", "m", "-n", ns))
                and s["status"].get("observedGeneration") == s["metadata"]["generation"]
                and s["status"].get("draftTokens", {}).get("current") == k
                and s["status"].get("updatedReplicas") == 2
                and condition(s, "Ready").get("status") == "True", timeout=90)
            rs = get_json(plane, "rs", "-n", ns, "-l", "specdecode.io/deployment=m")["items"]
            assert len(rs) == i + 2, (k, [r["metadata"]["name"] for r in rs])
            assert k_of(get_json(plane, "deployment", "m", "-n", ns)) == k
    finally:
        op.stop()
