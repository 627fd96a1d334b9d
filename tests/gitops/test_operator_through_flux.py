"""The operator itself from Git: Flux's kustomize-controller applies deploy/ (through a
kustomize overlay) and an upgrade commit - a new CRD field and a changed operator setting -
rolls through, CRD first, like `helm upgrade` does in tests/helm."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import yaml

from ..kube_helpers import get_json, wait_for
from .conftest import (
    DEPLOY,
    OPERATOR_KS,
    OPERATOR_NS,
    OperatorFromDeployment,
    World,
    operator_deployment,
    operator_overlay,
    pod_template_hash,
    run_operator,
)
from .models import sdd

pytestmark = pytest.mark.plane
CRD_NAME = "specdecodedeployments.specdecode.io"
FLUX_MANAGER = "kustomize-controller"


def managers(obj: dict, subresource: str = "") -> set[str]:
    return {m["manager"] for m in obj["metadata"].get("managedFields") or []
            if m.get("subresource", "") == subresource}


def test_flux_installs_the_operator_and_its_rbac_from_deploy(
        world: World, flux_operator: OperatorFromDeployment) -> None:
    """Proves: every object of deploy/specdecode-operator.yaml is applied by Flux (field
    manager kustomize-controller, listed in the Kustomization's inventory), and the operator
    runs with the manifests' ServiceAccount and RBAC: its writes reach the apiserver as
    that ServiceAccount, and an SDD reconciles."""
    plane = world.plane
    ks = world.ks(OPERATOR_KS)
    inventory = {e["id"] for e in ks["status"]["inventory"]["entries"]}
    shipped = [d for d in yaml.safe_load_all(DEPLOY.read_text()) if d]
    for d in shipped:
        ns = d["metadata"].get("namespace", "")
        group = d["apiVersion"].split("/")[0] if "/" in d["apiVersion"] else ""
        assert f"{ns}_{d['metadata']['name']}_{group}_{d['kind']}" in inventory, d["kind"]
    assert FLUX_MANAGER in managers(get_json(plane, "crd", CRD_NAME, "--show-managed-fields"))
    dep = get_json(plane, "deployment", "specdecode-operator", "-n", OPERATOR_NS,
                   "--show-managed-fields")
    assert FLUX_MANAGER in managers(dep)
    assert flux_operator.template_env["SPECDECODE_PROMETHEUS_URL"] == world.prometheus.url

    # An SDD reconciled by the operator authenticated as the chart's ServiceAccount.
    plane.kubectl("create", "namespace", "gitops-rbac")
    since = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime())
    plane.kubectl("apply", "-f", "-", input=yaml.safe_dump(sdd("rbac", "gitops-rbac")))
    wait_for("the operator created the Deployment", lambda: plane.kubectl(
        "get", "deployment", "rbac", "-n", "gitops-rbac", check=False).returncode == 0,
        timeout=60)
    account = dep["spec"]["template"]["spec"]["serviceAccountName"]
    sa = f"system:serviceaccount:{OPERATOR_NS}:{account}"
    writes = plane.audit_writes(sa, since=since)
    assert any(w["objectRef"].get("resource") == "deployments" for w in writes), writes[:3]
    plane.kubectl("delete", "namespace", "gitops-rbac", "--wait=false")


def test_upgrade_commit_rolls_a_new_crd_field_and_operator_setting_through(
        world: World, flux_operator: OperatorFromDeployment, tmp_path: Path) -> None:
    """Proves: one commit that changes the CRD (a new optional spec field, as the next release
    would ship) and an operator setting (SPECDECODE_RESYNC_SECONDS) is applied by Flux: the
    apiserver's CRD has the field (an SDD keeps it on a server-side dry run), the Deployment
    rolls to a new ReplicaSet, and the operator restarted from it runs with the new value."""
    plane, git = world.plane, world.git
    before = operator_deployment(plane)
    old_hash = world.operator.template_hash if world.operator else ""
    docs = [d for d in yaml.safe_load_all(DEPLOY.read_text()) if d]
    crd = next(d for d in docs if d["kind"] == "CustomResourceDefinition")
    spec_props = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"][
        "spec"]["properties"]
    assert "gitopsUpgradeProbe" not in spec_props
    spec_props["gitopsUpgradeProbe"] = {
        "type": "string", "description": "A field only the upgrade test's release has."}
    git.write("operator/specdecode-operator.yaml", yaml.safe_dump_all(docs, sort_keys=False))
    git.write("operator/kustomization.yaml",
              operator_overlay(world.prometheus.url, resync="12"))
    sha = git.commit("upgrade: new CRD field, operator resync 12s")
    world.wait_applied(OPERATOR_KS, sha, timeout=180)

    live = get_json(plane, "crd", CRD_NAME)
    assert "gitopsUpgradeProbe" in live["spec"]["versions"][0]["schema"]["openAPIV3Schema"][
        "properties"]["spec"]["properties"]
    probe = sdd("probe", "default", gitopsUpgradeProbe="kept")
    out = json.loads(plane.kubectl("apply", "--server-side", "--dry-run=server", "-o", "json",
                                   "-f", "-", input=yaml.safe_dump(probe)).stdout)
    assert out["spec"]["gitopsUpgradeProbe"] == "kept"  # not pruned: the schema knows it

    after = wait_for("the operator Deployment's new generation rolled out", lambda: (
        d := operator_deployment(plane))["metadata"]["generation"] > before["metadata"][
            "generation"] and d["status"].get("observedGeneration") == d["metadata"][
            "generation"] and d["status"].get("updatedReplicas") == 1 and d, timeout=60)
    assert pod_template_hash(plane, after) != old_hash
    op = run_operator(world, tmp_path)  # the kubelet's part: restart the pod's process
    assert op.comp and op.comp.proc
    environ = dict(kv.split("=", 1) for kv in Path(f"/proc/{op.comp.proc.pid}/environ")
                   .read_bytes().decode().split("\0") if "=" in kv)
    assert environ["SPECDECODE_RESYNC_SECONDS"] == "12"
