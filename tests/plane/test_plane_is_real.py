"""The local control plane is a real Kubernetes: schemas, CEL, scheduling, GC, RBAC, SSA."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import pytest
import yaml

from specdecode_runtime.localplane import LocalPlane

pytestmark = pytest.mark.plane


def wait_for(what: str, fn: Callable[[], Any], timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = fn()
        if last:
            return last
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last: {last!r}")


def get_json(plane: LocalPlane, *args: str) -> dict[str, Any]:
    return json.loads(plane.kubectl("get", *args, "-o", "json").stdout)


def test_version_is_stamped(plane: LocalPlane) -> None:
    version = json.loads(plane.kubectl("version", "-o", "json").stdout)["serverVersion"]
    assert version["gitVersion"] == "v1.37.2"
    assert (version["major"], version["minor"]) == ("1", "37")


def test_gpu_nodes_are_ready_with_capacity(plane: LocalPlane) -> None:
    nodes = get_json(plane, "nodes", "-l", "nvidia.com/gpu.present=true")["items"]
    assert len(nodes) == plane.nodes.count
    for n in nodes:
        assert n["status"]["allocatable"]["nvidia.com/gpu"] == str(plane.nodes.gpus_per_node)
        ready = {c["type"]: c["status"] for c in n["status"]["conditions"]}["Ready"]
        assert ready == "True"


WIDGET_CRD = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "widgets.planetest.specdecode.io"},
    "spec": {
        "group": "planetest.specdecode.io",
        "names": {"kind": "Widget", "plural": "widgets", "singular": "widget"},
        "scope": "Namespaced",
        "versions": [{
            "name": "v1",
            "served": True,
            "storage": True,
            "schema": {"openAPIV3Schema": {
                "type": "object",
                "properties": {"spec": {
                    "type": "object",
                    "x-kubernetes-validations": [{
                        "rule": "self.min <= self.max",
                        "message": "spec.min must be less than or equal to spec.max",
                    }],
                    "properties": {
                        "min": {"type": "integer", "minimum": 1},
                        "max": {"type": "integer", "maximum": 16},
                    },
                    "required": ["min", "max"],
                }},
            }},
        }],
    },
}


def widget(name: str, namespace: str, lo: int, hi: int) -> str:
    return yaml.safe_dump({
        "apiVersion": "planetest.specdecode.io/v1", "kind": "Widget",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"min": lo, "max": hi},
    })


def test_cel_rule_rejects_bad_object_through_kubectl_apply(
    plane: LocalPlane, namespace: str
) -> None:
    plane.kubectl_apply([WIDGET_CRD])
    plane.kubectl("wait", "--for=condition=Established", "--timeout=30s",
                  "crd/widgets.planetest.specdecode.io")

    bad = plane.kubectl("apply", "-f", "-", input=widget("bad", namespace, 5, 2), check=False)
    assert bad.returncode != 0
    assert "spec.min must be less than or equal to spec.max" in bad.stderr

    # The schema's own bounds are enforced too, with the field named.
    out_of_range = plane.kubectl(
        "apply", "-f", "-", input=widget("big", namespace, 1, 99), check=False
    )
    assert out_of_range.returncode != 0
    assert "spec.max" in out_of_range.stderr

    good = plane.kubectl("apply", "-f", "-", input=widget("good", namespace, 2, 5))
    assert "widget.planetest.specdecode.io/good created" in good.stdout


def gpu_deployment(name: str, namespace: str, gpus: int, replicas: int = 1) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{
                    "name": "vllm", "image": "vllm/vllm-openai:v0.32.0",
                    "resources": {"limits": {"nvidia.com/gpu": str(gpus)}},
                }]},
            },
        },
    }


def test_gpu_deployment_gets_running_ready_pods(plane: LocalPlane, namespace: str) -> None:
    t0 = time.monotonic()
    plane.kubectl_apply([gpu_deployment("gpu1", namespace, gpus=1, replicas=2)])

    def ready_pods() -> list[dict[str, Any]]:
        pods = get_json(plane, "pods", "-n", namespace, "-l", "app=gpu1")["items"]
        ok = [
            p for p in pods
            if p["status"].get("phase") == "Running"
            and any(c["type"] == "Ready" and c["status"] == "True"
                    for c in p["status"].get("conditions", []))
        ]
        return ok if len(ok) == 2 else []

    pods = wait_for("2 Running+Ready GPU pods", ready_pods, timeout=30)
    elapsed = time.monotonic() - t0
    for p in pods:
        node = get_json(plane, "node", p["spec"]["nodeName"])
        assert node["metadata"]["labels"]["nvidia.com/gpu.present"] == "true"
    print(f"deployment -> 2 ready GPU pods in {elapsed:.1f}s")

    status = wait_for(
        "deployment status readyReplicas=2",
        lambda: (s := get_json(plane, "deployment", "gpu1", "-n", namespace)["status"])
        .get("readyReplicas") == 2 and s,
    )
    assert status["availableReplicas"] == 2


def test_pod_asking_for_more_gpus_than_any_node_stays_pending(
    plane: LocalPlane, namespace: str
) -> None:
    too_many = plane.nodes.gpus_per_node + 1
    plane.kubectl_apply([{
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "greedy", "namespace": namespace},
        "spec": {"containers": [{
            "name": "vllm", "image": "vllm/vllm-openai:v0.32.0",
            "resources": {"limits": {"nvidia.com/gpu": str(too_many)}},
        }]},
    }])

    def unschedulable() -> dict[str, Any] | None:
        pod = get_json(plane, "pod", "greedy", "-n", namespace)
        cond = {c["type"]: c for c in pod["status"].get("conditions", [])}.get("PodScheduled")
        return cond if cond and cond["reason"] == "Unschedulable" else None

    cond = wait_for("PodScheduled=False/Unschedulable", unschedulable)
    assert cond["status"] == "False"
    assert "Insufficient nvidia.com/gpu" in cond["message"]

    def failed_scheduling() -> list[dict[str, Any]]:
        events = get_json(plane, "events", "-n", namespace,
                          "--field-selector", "involvedObject.name=greedy")["items"]
        return [e for e in events if e["reason"] == "FailedScheduling"]

    assert "Insufficient nvidia.com/gpu" in wait_for("FailedScheduling event",
                                                     failed_scheduling)[0]["message"]
    assert get_json(plane, "pod", "greedy", "-n", namespace)["status"]["phase"] == "Pending"


def test_deleting_owner_garbage_collects_owned(plane: LocalPlane, namespace: str) -> None:
    plane.kubectl("create", "configmap", "owner", "-n", namespace)
    owner = get_json(plane, "configmap", "owner", "-n", namespace)
    plane.kubectl_apply([{
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {
            "name": "owned", "namespace": namespace,
            "ownerReferences": [{
                "apiVersion": "v1", "kind": "ConfigMap", "name": "owner",
                "uid": owner["metadata"]["uid"],
            }],
        },
        "data": {"k": "v"},
    }])
    plane.kubectl("delete", "configmap", "owner", "-n", namespace)

    def gone() -> bool:
        r = plane.kubectl("get", "configmap", "owned", "-n", namespace, check=False)
        return r.returncode != 0 and "NotFound" in r.stderr

    wait_for("owned ConfigMap to be garbage-collected", gone)


def test_service_account_is_forbidden_outside_its_role(plane: LocalPlane, namespace: str) -> None:
    plane.kubectl("create", "serviceaccount", "narrow", "-n", namespace)
    plane.kubectl("create", "role", "read-configmaps", "-n", namespace,
                  "--verb=get,list", "--resource=configmaps")
    plane.kubectl("create", "rolebinding", "narrow", "-n", namespace,
                  "--role=read-configmaps", f"--serviceaccount={namespace}:narrow")
    kc = plane.service_account_kubeconfig(namespace, "narrow")

    whoami = json.loads(plane.kubectl("auth", "whoami", "-o", "json", kubeconfig=kc).stdout)
    assert whoami["status"]["userInfo"]["username"] == f"system:serviceaccount:{namespace}:narrow"

    allowed = plane.kubectl("get", "configmaps", "-n", namespace, kubeconfig=kc, check=False)
    assert allowed.returncode == 0, allowed.stderr

    for args in (("get", "secrets", "-n", namespace),
                 ("get", "configmaps", "-n", "default"),
                 ("create", "configmap", "x", "-n", namespace)):
        denied = plane.kubectl(*args, kubeconfig=kc, check=False)
        assert denied.returncode != 0
        assert "Forbidden" in denied.stderr or "forbidden" in denied.stderr, denied.stderr


def test_server_side_apply_records_field_manager(plane: LocalPlane, namespace: str) -> None:
    cm = yaml.safe_dump({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "ssa", "namespace": namespace},
        "data": {"k": "v"},
    })
    plane.kubectl("apply", "--server-side", "--field-manager=specdecode-test", "-f", "-",
                  input=cm)
    obj = get_json(plane, "configmap", "ssa", "-n", namespace, "--show-managed-fields")
    managers = {(m["manager"], m["operation"]) for m in obj["metadata"]["managedFields"]}
    assert ("specdecode-test", "Apply") in managers
    entry = next(m for m in obj["metadata"]["managedFields"] if m["manager"] == "specdecode-test")
    assert "f:k" in entry["fieldsV1"]["f:data"]

    # A second manager changing the same field conflicts: ownership is really tracked.
    conflict = plane.kubectl(
        "apply", "--server-side", "--field-manager=someone-else", "-f", "-",
        input=cm.replace("k: v", "k: w"), check=False,
    )
    assert conflict.returncode != 0
    assert "conflict" in conflict.stderr.lower()
