"""The chart on the real plane: install, upgrade (the CRD changes), uninstall (the CRD stays),
and the operator running with nothing but the chart's ServiceAccount and RBAC.

The chart's Deployment runs on kwok nodes: its pod is fake and never runs the operator. The
operator runs as a local process (``python -m specdecode_operator``, the chart's flags) with a
kubeconfig holding a token of the chart's ServiceAccount (TokenRequest), not admin.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from specdecode_runtime.localplane import LocalPlane

from ..kube_helpers import condition, get_json, get_or_none, sdd_doc, wait_for
from .conftest import CHART, CRD_NAME, ChartOperator, Helm, adopt_crd

pytestmark = pytest.mark.plane

TIMES: dict[str, float] = {}
# What the operator log must never say when RBAC is right: RBAC refusals, and Kopf's fallbacks
# when it may not observe CRDs or namespaces. (A 403 for a terminating namespace is no RBAC
# matter: other tests' namespaces go away while the cluster-wide operator runs.)
FORBIDDEN_LOG = re.compile(r'is forbidden: User "|cannot \w+ resource|Not enough permissions')


def release_of(namespace: str) -> str:
    return f"sdo-{namespace[-6:]}"  # unique per test: ClusterRoles are cluster-scoped


def fullname(release: str) -> str:
    return f"{release}-specdecode-operator"


def install(helm: Helm, plane: LocalPlane, release: str, namespace: str, *args: str,
            chart: Path = CHART, verb: str = "install") -> float:
    if verb == "install":
        adopt_crd(plane, release, namespace)
    t0 = time.monotonic()
    helm.run(verb, release, str(chart), "--namespace", namespace, "--wait", "--timeout", "90s",
             *args)
    return time.monotonic() - t0


@pytest.fixture
def release(plane_helm: Helm, plane: LocalPlane, namespace: str) -> Iterator[str]:
    name = release_of(namespace)
    yield name
    plane_helm.run("uninstall", name, "--namespace", namespace, "--wait", check=False)


@pytest.fixture
def workload_ns(plane: LocalPlane, namespace: str) -> Iterator[str]:
    """A second namespace for SpecDecodeDeployments, apart from the operator's."""
    name = f"{namespace[:50]}-w"
    plane.kubectl("create", "namespace", name)
    yield name
    plane.kubectl("delete", "namespace", name, "--wait=false", check=False)


def crd_description(plane: LocalPlane) -> str:
    crd = get_json(plane, "crd", CRD_NAME)
    return crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["description"]


# ---- install, upgrade, uninstall ---------------------------------------------------------------
def test_install_upgrade_with_crd_change_and_uninstall_keeping_the_crd(
    plane_helm: Helm, plane: LocalPlane, namespace: str, release: str, tmp_path: Path
) -> None:
    TIMES["install"] = install(plane_helm, plane, release, namespace)
    name = fullname(release)
    dep = get_json(plane, "deployment", name, "-n", namespace)
    assert dep["status"].get("readyReplicas") == 1  # --wait saw the (kwok) pod Ready
    assert dep["spec"]["replicas"] == 1
    assert dep["spec"]["strategy"] == {"type": "Recreate"}
    pod = dep["spec"]["template"]["spec"]
    c = pod["containers"][0]
    assert c["command"] == ["python", "-m", "specdecode_operator"]
    assert c["args"] == ["--liveness=http://0.0.0.0:8080/healthz", "--metrics-port=8081"]
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "healthz",
                                             "scheme": "HTTP"}
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert c["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["serviceAccountName"] == name
    for kind in ("serviceaccount", "service"):
        assert get_or_none(plane, kind, name if kind != "service" else f"{name}-metrics",
                           "-n", namespace)
    for kind in ("clusterrole", "clusterrolebinding"):
        assert get_or_none(plane, kind, name) and get_or_none(plane, kind, f"{name}-cluster")
    crd = get_json(plane, "crd", CRD_NAME)
    assert crd["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    assert crd["metadata"]["annotations"]["meta.helm.sh/release-name"] == release
    original = crd_description(plane)

    # Upgrade to a chart copy with a bumped version and a changed CRD: the CRD follows.
    chart = tmp_path / "specdecode-operator"
    shutil.copytree(CHART, chart)
    meta = yaml.safe_load((chart / "Chart.yaml").read_text())
    meta["version"] = "0.1.1"
    (chart / "Chart.yaml").write_text(yaml.safe_dump(meta))
    crd_file = chart / "files" / "crds" / "specdecode.io_specdecodedeployments.yaml"
    changed = yaml.safe_load(crd_file.read_text())
    schema = changed["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    assert schema["description"] == original
    schema["description"] = original + " Upgraded by helm."
    crd_file.write_text(yaml.safe_dump(changed))
    TIMES["upgrade"] = install(plane_helm, plane, release, namespace,
                               "--set", "operator.logLevel=debug", chart=chart, verb="upgrade")
    assert crd_description(plane) == original + " Upgraded by helm."
    crd = get_json(plane, "crd", CRD_NAME)
    assert crd["metadata"]["labels"]["helm.sh/chart"] == "specdecode-operator-0.1.1"
    dep = get_json(plane, "deployment", name, "-n", namespace)
    assert "--verbose" in dep["spec"]["template"]["spec"]["containers"][0]["args"]
    history = json.loads(plane_helm.run("history", release, "-n", namespace, "-o",
                                        "json").stdout)
    assert [h["chart"] for h in history] == ["specdecode-operator-0.1.0",
                                             "specdecode-operator-0.1.1"]

    # A SpecDecodeDeployment (no operator runs here: it only has to survive the uninstall).
    plane.kubectl("apply", "-f", "-", input=yaml.safe_dump(sdd_doc("survivor", namespace, {
        "model": {"name": "org/target"}, "drafter": {"method": "ngram"}})))
    t0 = time.monotonic()
    plane_helm.run("uninstall", release, "--namespace", namespace, "--wait")
    TIMES["uninstall"] = time.monotonic() - t0
    assert get_or_none(plane, "crd", CRD_NAME), "helm uninstall deleted the CRD"
    assert get_or_none(plane, "sdd", "survivor", "-n", namespace)
    assert get_or_none(plane, "deployment", name, "-n", namespace) is None
    assert get_or_none(plane, "serviceaccount", name, "-n", namespace) is None
    assert get_or_none(plane, "clusterrole", name) is None
    assert get_or_none(plane, "clusterrolebinding", f"{name}-cluster") is None
    plane.kubectl("delete", "sdd", "survivor", "-n", namespace)
    print(f"\nhelm install {TIMES['install']:.1f}s, upgrade {TIMES['upgrade']:.1f}s, "
          f"uninstall {TIMES['uninstall']:.1f}s (--wait, kwok pods)")


# ---- the operator with the chart's RBAC ----------------------------------------------------------
SPEC = {"model": {"name": "org/target"}, "drafter": {"method": "mtp"},
        "draftTokens": {"initial": 4, "min": 2, "max": 8}, "replicas": 1,
        "rollout": {"maxSurge": 1, "maxUnavailable": 0}}
USER_MANAGER = "gitops-user"  # the field manager of the user's (or GitOps tool's) applies


def user_apply(plane: LocalPlane, doc: dict[str, Any]) -> None:
    plane.kubectl("apply", "--server-side", f"--field-manager={USER_MANAGER}", "-f", "-",
                  input=yaml.safe_dump(doc))


def rendered_k(dep: dict[str, Any]) -> int | None:
    args = dep["spec"]["template"]["spec"]["containers"][0]["args"]
    if "--speculative-config" not in args:
        return None
    return int(json.loads(args[args.index("--speculative-config") + 1])
               ["num_speculative_tokens"])


def wait_k(plane: LocalPlane, ns: str, name: str, k: int) -> dict[str, Any]:
    wait_for(f"Deployment {name} with K={k}", lambda: rendered_k(
        get_json(plane, "deployment", name, "-n", ns)) == k)
    return wait_for(f"{name} status K={k} and Ready", lambda: (
        s := get_json(plane, "sdd", name, "-n", ns, "--show-managed-fields"))
        and (s.get("status") or {}).get("draftTokens", {}).get("current") == k
        and condition(s, "Ready").get("status") == "True" and s, timeout=45)


def start_operator(plane: LocalPlane, namespace: str, release: str, workdir: Path,
                   args: list[str], operators: list[ChartOperator]) -> ChartOperator:
    kc = plane.service_account_kubeconfig(namespace, fullname(release),
                                          path=workdir / "sa.kubeconfig")
    op = ChartOperator(plane=plane, workdir=workdir, kubeconfig=kc, args=args)
    operators.append(op)
    op.start()
    return op


def assert_no_forbidden(op: ChartOperator) -> None:
    bad = [line for line in op.log().splitlines() if FORBIDDEN_LOG.search(line)]
    assert not bad, "operator hit RBAC limits:\n" + "\n".join(bad[:20])


def can_i(plane: LocalPlane, kc: Path, *args: str) -> bool:
    r = plane.kubectl("auth", "can-i", *args, kubeconfig=kc, check=False)
    return r.stdout.strip() == "yes"


def test_operator_with_the_chart_service_account_cluster_wide_and_no_gitops_drift(
    plane_helm: Helm, plane: LocalPlane, monitoring_crds: LocalPlane, namespace: str,
    release: str, workload_ns: str, tmp_path: Path, operators: list[ChartOperator]
) -> None:
    install(plane_helm, plane, release, namespace)
    op = start_operator(plane, namespace, release, tmp_path, [], operators)
    user = f"system:serviceaccount:{namespace}:{fullname(release)}"
    try:
        ns = workload_ns
        user_apply(plane, sdd_doc("llm", ns, SPEC))
        wait_k(plane, ns, "llm", 4)
        pm = wait_for("PodMonitor", lambda: get_or_none(plane, "podmonitor", "llm", "-n", ns))
        assert pm["metadata"]["ownerReferences"][0]["name"] == "llm"

        # The user changes the initial K: a new K is rolled out and lands in status.
        doc = sdd_doc("llm", ns, {**SPEC, "draftTokens": {"initial": 6, "min": 2, "max": 8}})
        user_apply(plane, doc)
        sdd = wait_k(plane, ns, "llm", 6)
        assert sdd["status"]["observedGeneration"] == sdd["metadata"]["generation"] == 2
        changed = wait_for("DraftTokensChanged event", lambda: [
            e for e in get_json(plane, "events", "-n", ns)["items"]
            if e["reason"] == "DraftTokensChanged"])
        assert "K 4 -> 6" in changed[0]["message"]

        # GitOps: applying the same manifest again changes nothing, and the operator owns
        # only the status subresource of the user's object.
        before = get_json(plane, "sdd", "llm", "-n", ns)["metadata"]
        user_apply(plane, doc)
        diff = plane.kubectl("diff", "--server-side", f"--field-manager={USER_MANAGER}",
                             "-f", "-", input=yaml.safe_dump(doc), check=False)
        assert diff.returncode == 0, diff.stdout + diff.stderr
        after = get_json(plane, "sdd", "llm", "-n", ns, "--show-managed-fields")["metadata"]
        assert after["resourceVersion"] == before["resourceVersion"]
        assert after["generation"] == before["generation"] == 2
        owners = {(m["manager"], m.get("subresource", "")) for m in after["managedFields"]}
        assert {s for m, s in owners if m == "specdecode-operator"} == {"status"}
        assert {m for m, s in owners if s == ""} == {USER_MANAGER}
        assert not after.get("finalizers")
        assert not [a for a in after.get("annotations", {}) if "kopf" in a]

        # Every write was the ServiceAccount's, and none was refused.
        writes = {(w["objectRef"]["resource"], w["objectRef"].get("subresource", ""),
                   w["verb"], w["responseStatus"]["code"])
                  for w in plane.audit_writes(user)
                  if w["objectRef"].get("namespace") == ns}
        for expected in [("deployments", "", "patch"), ("services", "", "patch"),
                         ("poddisruptionbudgets", "", "patch"), ("podmonitors", "", "patch"),
                         ("specdecodedeployments", "status", "patch"),
                         ("events", "", "create")]:
            assert any(w[:3] == expected and w[3] < 300 for w in writes), (expected, writes)
        assert not [w for w in writes if w[3] == 403], writes
        assert_no_forbidden(op)
        assert op.comp is not None and op.comp.alive
    finally:
        op.stop()

    # Not cluster-admin: no Secrets, no deletes but one, no RBAC changes, no spec writes.
    kc = op.kubeconfig
    assert not can_i(plane, kc, "list", "secrets", "--all-namespaces")
    assert not can_i(plane, kc, "delete", "nodes")
    assert not can_i(plane, kc, "create", "clusterrolebindings")
    assert not can_i(plane, kc, "update", "specdecodedeployments.specdecode.io", "-n", ns)
    # The one delete: the canary Deployment of canary mode (docs/helm.md); no other kind.
    assert can_i(plane, kc, "delete", "deployments.apps", "-n", ns)  # the check can say yes
    assert not can_i(plane, kc, "delete", "services", "-n", ns)
    assert not can_i(plane, kc, "delete", "pods", "-n", ns)
    r = plane.kubectl("get", "secrets", "-A", kubeconfig=kc, check=False)
    assert r.returncode != 0 and "Forbidden" in r.stderr, r.stderr
    r = plane.kubectl("delete", "node", "gpu-node-0", "--dry-run=server", kubeconfig=kc,
                      check=False)
    assert r.returncode != 0 and "Forbidden" in r.stderr, r.stderr


def test_operator_with_the_chart_service_account_namespaced(
    plane_helm: Helm, plane: LocalPlane, namespace: str, release: str, workload_ns: str,
    tmp_path: Path, operators: list[ChartOperator]
) -> None:
    ns = workload_ns
    install(plane_helm, plane, release, namespace, "--set", f"operator.namespaces={{{ns}}}")
    dep = get_json(plane, "deployment", fullname(release), "-n", namespace)
    args = dep["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[0] == f"--namespace={ns}"
    assert get_or_none(plane, "clusterrole", fullname(release)) is None
    assert get_or_none(plane, "role", fullname(release), "-n", ns)
    op = start_operator(plane, namespace, release, tmp_path, [f"--namespace={ns}"],
                        operators)
    try:
        user_apply(plane, sdd_doc("scoped", ns, SPEC))
        wait_k(plane, ns, "scoped", 4)
        user_apply(plane, sdd_doc("scoped", ns, {**SPEC, "draftTokens": {
            "initial": 3, "min": 2, "max": 8}}))
        wait_k(plane, ns, "scoped", 3)
        # Unschedulable pods make the operator look at the nodes (list nodes, cluster-wide).
        user_apply(plane, sdd_doc("amd", ns, {**SPEC, "gpu": {"resourceName": "amd.com/gpu"}}))
        wait_for("Degraded NoGPUNodes", lambda: condition(
            get_json(plane, "sdd", "amd", "-n", ns), "Degraded").get("reason") == "NoGPUNodes")
        assert_no_forbidden(op)
    finally:
        op.stop()
    kc = op.kubeconfig
    assert can_i(plane, kc, "patch", "deployments.apps", "-n", ns)
    assert not can_i(plane, kc, "patch", "deployments.apps", "-n", namespace)
    assert not can_i(plane, kc, "list", "specdecodedeployments.specdecode.io", "-A")
