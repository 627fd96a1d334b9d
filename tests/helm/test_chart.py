"""The chart as files: lint, schema, render, generated copies in sync, RBAC as documented,
flags the operator's CLI accepts, recording rules (promtool), dashboard; and the rendered
manifests accepted by the real apiserver (server-side dry run)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from specdecode_runtime.localplane import LocalPlane

from .conftest import CHART, CRD_FILE, REPO, Helm

FULL_VALUES = CHART / "ci" / "full-values.yaml"
DEPLOY = REPO / "deploy" / "specdecode-operator.yaml"
DOCS = REPO / "docs" / "helm.md"


def by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def one(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = by_kind(docs, kind)
    assert len(found) == 1, f"{len(found)} {kind} rendered"
    return found[0]


# ---- generated copies ----------------------------------------------------------------------------
def test_chart_crd_is_a_copy_of_the_generated_crd() -> None:
    chart_copy = CHART / "files" / "crds" / CRD_FILE.name
    assert chart_copy.read_text() == CRD_FILE.read_text(), (
        "the chart's CRD differs from crds/: run `make chart-crds`")


def test_rendered_crd_is_the_source_crd_plus_helm_metadata(helm: Helm) -> None:
    source = yaml.safe_load(CRD_FILE.read_text())
    crd = one(helm.template(), "CustomResourceDefinition")
    assert crd["spec"] == source["spec"]
    assert crd["metadata"]["name"] == source["metadata"]["name"]
    assert source["metadata"]["labels"].items() <= crd["metadata"]["labels"].items()
    assert crd["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep"}
    unkept = one(helm.template("--set", "crds.keep=false"), "CustomResourceDefinition")
    assert "annotations" not in unkept["metadata"]
    argo = one(helm.template("--set-string",
                             r"crds.annotations.argocd\.argoproj\.io/sync-options=Prune=false"),
               "CustomResourceDefinition")
    assert argo["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep",
                                               "argocd.argoproj.io/sync-options": "Prune=false"}
    assert not by_kind(helm.template("--set", "crds.install=false"), "CustomResourceDefinition")


def test_deploy_manifests_are_rendered_from_the_chart(helm: Helm, tmp_path: Path) -> None:
    out = tmp_path / "deploy.yaml"
    # -o chart-crds: render the chart as it is, without refreshing its CRD copy first.
    subprocess.run(["make", "-s", "-o", "chart-crds", "deploy-manifests", f"DEPLOY_OUT={out}",
                    f"HELM={helm.binary}"], cwd=REPO, check=True, capture_output=True,
                   text=True)
    assert out.read_text() == DEPLOY.read_text(), (
        "deploy/specdecode-operator.yaml is stale: run `make deploy-manifests`")
    docs = [d for d in yaml.safe_load_all(out.read_text()) if d]
    assert docs[0] == {"apiVersion": "v1", "kind": "Namespace",
                       "metadata": {"name": "specdecode-system"}}
    assert {d["metadata"].get("namespace", "specdecode-system") for d in docs} == {
        "specdecode-system"}


# ---- lint, schema, defaults ----------------------------------------------------------------------
@pytest.mark.parametrize("values", [None, FULL_VALUES], ids=["default", "full"])
def test_helm_lint_strict(helm: Helm, values: Path | None) -> None:
    args = ["-f", str(values)] if values else []
    out = helm.run("lint", str(CHART), "--strict", "--kube-version", "1.37.2", *args).stdout
    assert "0 chart(s) failed" in out
    assert "[WARNING]" not in out and "[ERROR]" not in out


@pytest.mark.parametrize(("setting", "message"), [
    ("operator.logLevel=trace", "logLevel"),
    ("operator.namespace=typo", "additional properties 'namespace'"),
    ("replicaCount=2", "replicaCount"),
    ("prometheus.url=prometheus:9090", "url"),
    ("operator.namespaces={Bad_Name}", "namespaces"),
    ("image.digest=latest", "digest"),
])
def test_values_schema_rejects_mistakes(helm: Helm, setting: str, message: str) -> None:
    r = helm.run("template", "x", str(CHART), "--kube-version", "1.37.2", "--set", setting,
                 check=False)
    assert r.returncode != 0, f"--set {setting} was accepted"
    assert "schema" in r.stderr and message in r.stderr, r.stderr


def test_defaults_render_only_the_core_objects(helm: Helm) -> None:
    docs = helm.template()
    assert sorted(d["kind"] for d in docs) == sorted([
        "ServiceAccount", "CustomResourceDefinition", "ClusterRole", "ClusterRole",
        "ClusterRoleBinding", "ClusterRoleBinding", "Service", "Deployment"])
    dep = one(docs, "Deployment")
    assert dep["spec"]["replicas"] == 1 and dep["spec"]["strategy"] == {"type": "Recreate"}
    c = dep["spec"]["template"]["spec"]["containers"][0]
    assert [e["name"] for e in c["env"]] == ["SPECDECODE_RESYNC_SECONDS"]  # no Prometheus URL
    assert c["resources"]["requests"] and c["resources"]["limits"]["memory"]


# ---- the operator accepts what the chart passes --------------------------------------------------
PROBE = """
import json, sys
import specdecode_operator.__main__ as m
m.start_http_server = lambda port, addr: print(json.dumps({"metrics": [port, addr]}))
m.kopf.run = lambda **kw: print(json.dumps({"kopf": kw}, default=repr))
sys.exit(m.main(sys.argv[1:]))
"""


def operator_cli(args: list[str]) -> dict[str, Any]:
    """Run the operator's real argument parsing with the chart's args (kopf.run stubbed)."""
    r = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    out: dict[str, Any] = {}
    for line in r.stdout.splitlines():
        out.update(json.loads(line))
    return out


def test_operator_accepts_the_rendered_command_line(helm: Helm) -> None:
    default = one(helm.template(), "Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert default["command"] == ["python", "-m", "specdecode_operator"]
    got = operator_cli(default["args"])
    assert got["kopf"]["clusterwide"] is True and got["kopf"]["namespaces"] == []
    assert got["kopf"]["standalone"] is True
    assert got["kopf"]["liveness_endpoint"] == "http://0.0.0.0:8080/healthz"
    assert got["metrics"] == [8081, "0.0.0.0"]
    probe = default["livenessProbe"]["httpGet"]
    ports = {p["name"]: p["containerPort"] for p in default["ports"]}
    assert probe["path"] == "/healthz" and ports[probe["port"]] == 8080

    docs = helm.template("-f", str(FULL_VALUES))
    full = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    got = operator_cli(full["args"])
    assert got["kopf"]["clusterwide"] is False
    assert got["kopf"]["namespaces"] == ["team-a", "team-b"]
    assert got["metrics"] == [9100, "0.0.0.0"]
    env = {e["name"]: e.get("value") for e in full["env"]}
    assert env["SPECDECODE_PROMETHEUS_URL"] == "http://prometheus-operated.monitoring.svc:9090"
    assert "--verbose" in full["args"]
    assert full["image"].endswith("@sha256:" + "0" * 64)


# ---- RBAC: exactly the documented table ----------------------------------------------------------
def rbac_rules(docs: list[dict[str, Any]]) -> dict[str, set[tuple[str, str, str]]]:
    """(group, resource, verb) per kind of role: ClusterRole and Role (per namespace)."""
    out: dict[str, set[tuple[str, str, str]]] = {}
    for d in docs:
        if d["kind"] not in ("ClusterRole", "Role"):
            continue
        scope = d["kind"] if d["kind"] == "ClusterRole" else f"Role/{d['metadata']['namespace']}"
        for rule in d["rules"]:
            for g in rule["apiGroups"]:
                for r in rule["resources"]:
                    for v in rule["verbs"]:
                        out.setdefault(scope, set()).add((g, r, v))
    return out


def documented_rbac() -> dict[str, set[tuple[str, str, str]]]:
    """The verb table of docs/helm.md: | group | resource | verb | scope | why |."""
    rows: dict[str, set[tuple[str, str, str]]] = {"cluster": set(), "namespaced": set(),
                                                  "namespaced-mode": set()}
    for line in DOCS.read_text().splitlines():
        cells = [c.strip().strip("`") for c in line.strip().strip("|").split("|")]
        if len(cells) != 5 or not re.fullmatch(r"[a-z/]+", cells[1]):
            continue
        group = "" if cells[0] in ("core", '""') else cells[0]
        for verb in cells[2].split(","):
            rows[cells[3]].add((group, cells[1], verb.strip()))
        assert cells[4], f"no reason given for {cells[:3]}"
    return rows


def test_rbac_is_exactly_the_documented_table(helm: Helm) -> None:
    doc = documented_rbac()
    assert doc["cluster"] and doc["namespaced"] and doc["namespaced-mode"]
    wide = rbac_rules(helm.template())
    assert wide == {"ClusterRole": doc["cluster"] | doc["namespaced"]}
    scoped = rbac_rules(helm.template("--set", "operator.namespaces={a,b}"))
    assert scoped == {"ClusterRole": doc["cluster"] | doc["namespaced-mode"],
                      "Role/a": doc["namespaced"], "Role/b": doc["namespaced"]}
    # Never: secrets, deletes (but the canary Deployment's), spec writes, RBAC, wildcards.
    every = set().union(*wide.values(), *scoped.values())
    assert not [r for r in every if r[1] == "secrets" or "*" in r
                or r[2] in ("deletecollection", "escalate", "bind", "impersonate")
                or (r[2] == "delete" and r != ("apps", "deployments", "delete"))]
    assert ("specdecode.io", "specdecodedeployments", "patch") not in every
    assert ("specdecode.io", "specdecodedeployments", "update") not in every
    rb = by_kind(helm.template("--set", "operator.namespaces={a,b}"), "RoleBinding")
    assert sorted(r["metadata"]["namespace"] for r in rb) == ["a", "b"]


# ---- monitoring objects --------------------------------------------------------------------------
PROMTOOL_TEST = """
rule_files: [rules.yaml]
evaluation_interval: 1m
tests:
  - interval: 1m
    input_series:
{series}
    promql_expr_test:
{expects}
"""


def test_recording_rules_compute_acceptance_with_promtool(helm: Helm, tmp_path: Path) -> None:
    rule = one(helm.template("--set", "prometheusRule.enabled=true"), "PrometheusRule")
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
    # Two pods of one SDD at K=4, per pod and minute: 100 drafts, 400 draft tokens, 300
    # accepted (90, 80, 70, 60 at positions 0..3), 600 generated tokens.
    series = []
    for pod in ("p1", "p2"):
        lbl = f'namespace="ml", sdd="llm", draft_tokens="4", pod="{pod}"'
        for metric, per_min in [("vllm:spec_decode_num_drafts_total", 100),
                                ("vllm:spec_decode_num_draft_tokens_total", 400),
                                ("vllm:spec_decode_num_accepted_tokens_total", 300),
                                ("vllm:generation_tokens_total", 600)]:
            series.append((f"{metric}{{{lbl}}}", f"0+{per_min}x20"))
        for pos, per_min in enumerate([90, 80, 70, 60]):
            series.append((f'vllm:spec_decode_num_accepted_tokens_per_pos_total{{{lbl}, '
                           f'position="{pos}"}}', f"0+{per_min}x20"))
    # Each expectation is round(1000 * value): exact, whatever the float rounding of the rates.
    key = 'namespace="ml", sdd="llm", draft_tokens="4"'
    expects = [("sdd:vllm_spec_decode_acceptance_rate:ratio", key, 750),
               ("sdd:vllm_spec_decode_mean_acceptance_length:ratio", key, 4000),
               ("sdd:vllm_generation_tokens:rate", key, 20000)]
    for pos, share in enumerate([900, 800, 700, 600]):
        expects.append((f'sdd:vllm_spec_decode_position_survival:ratio{{position="{pos}"}}',
                        f'{key}, position="{pos}"', share))
    series_yaml = "\n".join(f"      - series: '{s}'\n        values: '{v}'" for s, v in series)
    expects_yaml = "\n".join(
        f"      - expr: 'round(1000 * {e})'\n        eval_time: 10m\n        exp_samples:\n"
        f"          - labels: '{{{labels}}}'\n            value: {value}"
        for e, labels, value in expects)
    (tmp_path / "test.yaml").write_text(PROMTOOL_TEST.format(series=series_yaml,
                                                             expects=expects_yaml))
    r = subprocess.run(["promtool", "test", "rules", "test.yaml"], cwd=tmp_path,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert {g["name"] for g in rule["spec"]["groups"]} == {"specdecode.rules"}


def test_monitors_relabel_like_the_operator(helm: Helm) -> None:
    from specdecode_operator import render

    sdd = {"metadata": {"name": "llm", "namespace": "ml", "uid": "u"}}
    own = render.pod_monitor(sdd)["spec"]["podMetricsEndpoints"][0]
    docs = helm.template("-f", str(FULL_VALUES))
    pm = one(docs, "PodMonitor")
    ep = pm["spec"]["podMetricsEndpoints"][0]
    assert ep["relabelings"] == own["relabelings"]
    assert ep["port"] == own["port"] and ep["path"] == own["path"]
    assert pm["spec"]["namespaceSelector"] == {"matchNames": ["team-a", "team-b"]}
    assert pm["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    pod_labels = render.common_labels("llm")
    sel = pm["spec"]["selector"]
    assert sel["matchLabels"].items() <= pod_labels.items()
    assert all(e["key"] in pod_labels for e in sel["matchExpressions"])
    sm = one(docs, "ServiceMonitor")
    svc = one(docs, "Service")
    assert sm["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    assert sm["spec"]["endpoints"][0]["port"] == svc["spec"]["ports"][0]["name"] == "metrics"


def test_grafana_dashboard_configmap(helm: Helm) -> None:
    cm = one(helm.template("--set", "grafanaDashboard.enabled=true"), "ConfigMap")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    dash = json.loads(cm["data"]["specdecode-operator.json"])
    exprs = " ".join(t["expr"] for p in dash["panels"] for t in p["targets"])
    for metric in ("vllm:spec_decode_num_accepted_tokens_total",
                   "vllm:spec_decode_num_draft_tokens_total",
                   "vllm:spec_decode_num_accepted_tokens_per_pos_total",
                   "vllm:generation_tokens_total", "specdecode_operator_draft_tokens",
                   "specdecode_operator_autotune_decisions_total"):
        assert metric in exprs, metric
    titles = {p["title"] for p in dash["panels"]}
    assert {"Acceptance rate", "Draft length K", "Generated tokens/s",
            "Operator decisions"} <= titles
    assert len({p["id"] for p in dash["panels"]}) == len(dash["panels"])
    other = one(helm.template("--set", "grafanaDashboard.enabled=true", "--set",
                              "grafanaDashboard.namespace=monitoring"), "ConfigMap")
    assert other["metadata"]["namespace"] == "monitoring"


# ---- the apiserver accepts what the chart renders ------------------------------------------------
def dry_run(plane: LocalPlane, docs: list[dict[str, Any]]) -> str:
    r = plane.kubectl("apply", "--server-side", "--force-conflicts", "--dry-run=server",
                      "--field-manager=chart-test", "-f", "-",
                      input=yaml.safe_dump_all(docs), check=False)
    assert r.returncode == 0, r.stderr
    return r.stdout


@pytest.mark.plane
def test_rendered_manifests_are_accepted_by_the_apiserver(
    helm: Helm, plane: LocalPlane, monitoring_crds: LocalPlane, namespace: str
) -> None:
    # monitoring_crds: stand-ins for the prometheus-operator CRDs (ServiceMonitor, PodMonitor,
    # PrometheusRule accept any fields): the kinds exist, their schemas are not checked.
    default = helm.template(namespace=namespace)
    out = dry_run(plane, default)
    assert out.count("(server dry run)") == len(default)
    full = helm.template("-f", str(FULL_VALUES), "--set",
                         f"operator.namespaces={{{namespace},default}}", namespace=namespace)
    kinds = {d["kind"] for d in full}
    assert {"ServiceMonitor", "PodMonitor", "PrometheusRule", "ConfigMap", "Role",
            "RoleBinding"} <= kinds
    out = dry_run(plane, full)
    assert out.count("(server dry run)") == len(full)
    # The plain manifests too (their namespace has to exist for a dry run of its content).
    plane.kubectl("create", "namespace", "specdecode-system", check=False)
    deploy = [d for d in yaml.safe_load_all(DEPLOY.read_text()) if d]
    assert dry_run(plane, deploy).count("(server dry run)") == len(deploy)


def test_ha_runs_replicas_with_a_lease(helm: Helm) -> None:
    docs = helm.template("--set", "ha.enabled=true", "--set", "replicaCount=2")
    dep = one(docs, "Deployment")
    assert dep["spec"]["replicas"] == 2
    assert dep["spec"]["strategy"]["type"] == "RollingUpdate"
    env = {e["name"]: e for e in dep["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["SPECDECODE_LEADER_ELECTION"]["value"] == "1"
    assert env["SPECDECODE_POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    [role] = [r for r in by_kind(docs, "Role") if r["metadata"]["name"].endswith("-leader")]
    assert role["rules"] == [{"apiGroups": ["coordination.k8s.io"], "resources": ["leases"],
                              "verbs": ["get", "create", "update"]}]
    assert env["SPECDECODE_LEASE_NAMESPACE"]["value"] == role["metadata"]["namespace"]
    # Without ha, one replica and no Lease rights.
    assert not [r for r in by_kind(helm.template(), "Role")
                if r["metadata"]["name"].endswith("-leader")]
