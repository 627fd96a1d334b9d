"""The operator as a real process against the real control plane: create, change, hand edit,
scale, delete, restart, and problems the schema cannot catch."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from specdecode_runtime.localplane import LocalPlane
from specdecode_runtime.operator_process import OperatorProcess, utc_now, wait_quiet

from ..conftest import installed_crds, stand_in_crd
from ..kube_helpers import apply, condition, events, get_json, get_or_none, sdd_doc, wait_for

pytestmark = pytest.mark.plane
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def container(dep: dict[str, Any]) -> dict[str, Any]:
    return dep["spec"]["template"]["spec"]["containers"][0]


def deployment(plane: LocalPlane, ns: str, name: str) -> dict[str, Any]:
    return wait_for(f"Deployment {name}", lambda: get_or_none(plane, "deployment", name, "-n", ns))


def wait_ready(plane: LocalPlane, ns: str, name: str, timeout: float = 45) -> dict[str, Any]:
    return wait_for(
        f"{name} Ready",
        lambda: (s := get_json(plane, "sdd", name, "-n", ns))
        and condition(s, "Ready").get("status") == "True" and s,
        timeout=timeout,
    )


EXPECTED_ARGS = {
    "gemma4-31b-mtp-assistant.yaml": (
        "gemma4-31b",
        ["google/gemma-4-31B-it", "--served-model-name", "gemma-4-31b", "--host", "0.0.0.0",
         "--port", "8000", "--tensor-parallel-size", "1", "--max-model-len", "32768",
         "--speculative-config",
         '{"method":"mtp","model":"google/gemma-4-31B-it-assistant","num_speculative_tokens":6}',
         "--max-num-seqs=128", "--gpu-memory-utilization=0.92"],
    ),
    "qwen3-next-mtp-in-checkpoint.yaml": (
        "qwen3-next-80b",
        ["Qwen/Qwen3-Next-80B-A3B-Instruct", "--served-model-name", "qwen3-next", "--host",
         "0.0.0.0", "--port", "8000", "--tensor-parallel-size", "4", "--speculative-config",
         '{"method":"mtp","num_speculative_tokens":3}', "--max-num-seqs=256"],
    ),
    "llama31-8b-eagle3.yaml": (
        "llama31-8b",
        ["meta-llama/Llama-3.1-8B-Instruct", "--served-model-name",
         "meta-llama/Llama-3.1-8B-Instruct", "--host", "0.0.0.0", "--port", "8000",
         "--tensor-parallel-size", "1", "--max-model-len", "16384", "--speculative-config",
         '{"method":"eagle3","model":"yuhuili/EAGLE3-LLaMA3.1-Instruct-8B",'
         '"num_speculative_tokens":4}'],
    ),
    "gemma3-27b-ngram.yaml": (
        "gemma3-27b-summarize",
        ["google/gemma-3-27b-it", "--served-model-name", "google/gemma-3-27b-it", "--host",
         "0.0.0.0", "--port", "8000", "--tensor-parallel-size", "1", "--speculative-config",
         '{"method":"ngram","num_speculative_tokens":7,"prompt_lookup_min":2,'
         '"prompt_lookup_max":5}'],
    ),
}


@pytest.mark.parametrize("example", sorted(EXPECTED_ARGS))
def test_example_becomes_a_ready_deployment_with_exact_vllm_args(
    operator: OperatorProcess, plane: LocalPlane, namespace: str, example: str
) -> None:
    name, args = EXPECTED_ARGS[example]
    plane.kubectl("apply", "-n", namespace, "-f", str(EXAMPLES / example))
    dep = deployment(plane, namespace, name)
    c = container(dep)
    assert c["command"] == ["vllm", "serve"]
    assert c["args"] == args
    sdd = wait_ready(plane, namespace, name)
    k = json.loads(args[args.index("--speculative-config") + 1])["num_speculative_tokens"]
    assert sdd["status"]["draftTokens"]["current"] == k
    assert dep["spec"]["template"]["metadata"]["labels"]["specdecode.io/draft-tokens"] == str(k)
    assert sdd["status"]["observedGeneration"] == sdd["metadata"]["generation"]
    assert sdd["status"]["readyReplicas"] == sdd["spec"]["replicas"]
    svc = get_json(plane, "service", name, "-n", namespace)
    assert svc["spec"]["selector"] == {"specdecode.io/deployment": name}
    assert get_json(plane, "pdb", name, "-n", namespace)["spec"]["maxUnavailable"] == 1
    # The printer columns show the model, drafter and K.
    row = plane.kubectl("get", "sdd", name, "-n", namespace, "--no-headers").stdout.split()
    assert row[:3] == [name, sdd["spec"]["model"]["name"], sdd["spec"]["drafter"]["method"]]
    assert row[3] == str(k)
    reasons = {e["reason"] for e in events(plane, namespace, name)}
    assert "Created" in reasons


BASIC = {"model": {"name": "org/target"}, "drafter": {"method": "mtp"},
         "draftTokens": {"initial": 4, "min": 2, "max": 8}, "replicas": 2,
         "rollout": {"maxSurge": 1, "maxUnavailable": 0}}


def test_spec_change_rolls_out_a_new_k(operator: OperatorProcess, plane: LocalPlane,
                                       namespace: str) -> None:
    apply(plane, sdd_doc("roll", namespace, BASIC))
    wait_ready(plane, namespace, "roll")
    before = get_json(plane, "deployment", "roll", "-n", namespace)
    apply(plane, sdd_doc("roll", namespace, {**BASIC, "draftTokens": {"initial": 6, "min": 2,
                                                                       "max": 8}}))

    def rolled() -> dict[str, Any] | None:
        d = get_json(plane, "deployment", "roll", "-n", namespace)
        return d if '"num_speculative_tokens":6' in " ".join(container(d)["args"]) else None

    after = wait_for("Deployment with K=6", rolled)
    assert after["metadata"]["generation"] == before["metadata"]["generation"] + 1
    assert after["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 1, "maxUnavailable": 0}
    sdd = wait_for("status K=6 and Ready", lambda: (
        s := get_json(plane, "sdd", "roll", "-n", namespace))
        and s["status"]["draftTokens"]["current"] == 6
        and condition(s, "Ready").get("status") == "True"
        and s["status"]["updatedReplicas"] == 2 and s)
    assert condition(sdd, "Progressing")["reason"] == "RolloutComplete"
    # Two ReplicaSets: the rollout really happened, pods now carry K=6.
    rs = get_json(plane, "rs", "-n", namespace, "-l", "specdecode.io/deployment=roll")["items"]
    assert len(rs) == 2
    pods = get_json(plane, "pods", "-n", namespace, "-l",
                    "specdecode.io/deployment=roll,specdecode.io/draft-tokens=6")["items"]
    assert len(pods) >= 2
    changed = [e for e in events(plane, namespace, "roll") if e["reason"] == "DraftTokensChanged"]
    assert changed and "K 4 -> 6" in changed[0]["message"]


def test_hand_edit_of_owned_fields_is_reverted(operator: OperatorProcess, plane: LocalPlane,
                                               namespace: str) -> None:
    apply(plane, sdd_doc("edit", namespace, BASIC))
    orig = container(deployment(plane, namespace, "edit"))["args"]
    wait_ready(plane, namespace, "edit")
    plane.kubectl("patch", "deployment", "edit", "-n", namespace, "--type=json", "-p",
                  json.dumps([{"op": "replace",
                               "path": "/spec/template/spec/containers/0/args/0",
                               "value": "org/other"}]))
    plane.kubectl("scale", "deployment", "edit", "-n", namespace, "--replicas=5")
    plane.kubectl("patch", "service", "edit", "-n", namespace, "--type=merge", "-p",
                  json.dumps({"spec": {"selector": {"specdecode.io/deployment": "nope"}}}))
    wait_for("args reverted", lambda: container(
        get_json(plane, "deployment", "edit", "-n", namespace))["args"] == orig)
    wait_for("replicas reverted", lambda: get_json(
        plane, "deployment", "edit", "-n", namespace)["spec"]["replicas"] == 2)
    wait_for("service selector reverted", lambda: get_json(
        plane, "service", "edit", "-n", namespace)["spec"]["selector"]
        == {"specdecode.io/deployment": "edit"})
    assert any(e["reason"] == "Reverted" for e in events(plane, namespace, "edit"))
    # A deleted child comes back.
    plane.kubectl("delete", "pdb", "edit", "-n", namespace)
    wait_for("PDB recreated", lambda: get_or_none(plane, "pdb", "edit", "-n", namespace))


def test_scale_subresource_drives_replicas(operator: OperatorProcess, plane: LocalPlane,
                                           namespace: str) -> None:
    apply(plane, sdd_doc("scale", namespace, BASIC))
    wait_ready(plane, namespace, "scale")
    plane.kubectl("scale", "sdd", "scale", "-n", namespace, "--replicas=3")
    wait_for("Deployment scaled to 3", lambda: get_json(
        plane, "deployment", "scale", "-n", namespace)["spec"]["replicas"] == 3)
    sdd = wait_ready(plane, namespace, "scale")
    wait_for("status.replicas 3", lambda: get_json(
        plane, "sdd", "scale", "-n", namespace)["status"]["readyReplicas"] == 3)
    scale = json.loads(plane.kubectl(
        "get", "--raw",
        f"/apis/specdecode.io/v1alpha1/namespaces/{namespace}/specdecodedeployments/scale/scale",
    ).stdout)
    assert scale["status"]["selector"] == "specdecode.io/deployment=scale"
    assert sdd["spec"]["replicas"] == 3


def test_delete_garbage_collects_children(operator: OperatorProcess, plane: LocalPlane,
                                          namespace: str) -> None:
    apply(plane, sdd_doc("gone", namespace, BASIC))
    wait_ready(plane, namespace, "gone")
    sdd = get_json(plane, "sdd", "gone", "-n", namespace)
    assert not sdd["metadata"].get("finalizers")  # no finalizer: deletion is never blocked
    plane.kubectl("delete", "sdd", "gone", "-n", namespace, "--wait=true")
    for kind in ("deployment", "service", "pdb"):
        wait_for(f"{kind} garbage-collected",
                 lambda k=kind: get_or_none(plane, k, "gone", "-n", namespace) is None)
    wait_for("pods gone", lambda: not get_json(
        plane, "pods", "-n", namespace, "-l", "specdecode.io/deployment=gone")["items"])


def test_missing_gpu_resource_is_a_condition_and_warning_not_a_crash(
    operator: OperatorProcess, plane: LocalPlane, namespace: str
) -> None:
    apply(plane, sdd_doc("amd", namespace, {**BASIC, "gpu": {"resourceName": "amd.com/gpu"}}))
    sdd = wait_for("Degraded=True", lambda: (
        s := get_json(plane, "sdd", "amd", "-n", namespace))
        and condition(s, "Degraded").get("status") == "True" and s)
    deg = condition(sdd, "Degraded")
    assert deg["reason"] == "NoGPUNodes"
    assert "no node offers amd.com/gpu" in deg["message"]
    assert condition(sdd, "Ready")["status"] == "False"
    # (The autotuner may also warn: no metrics from pods that cannot run.)
    warnings = [e for e in events(plane, namespace, "amd") if e["type"] == "Warning"]
    assert "NoGPUNodes" in {e["reason"] for e in warnings}
    assert operator.comp is not None and operator.comp.alive

    # More GPUs than any node has: Unschedulable, with the scheduler's words.
    apply(plane, sdd_doc("big", namespace, {**BASIC, "tensorParallelSize": 16,
                                            "gpu": {"count": 16}}))
    sdd = wait_for("Degraded=Unschedulable", lambda: (
        s := get_json(plane, "sdd", "big", "-n", namespace))
        and condition(s, "Degraded").get("reason") == "Unschedulable" and s)
    assert "Insufficient nvidia.com/gpu" in condition(sdd, "Degraded")["message"]

    # Fixing the spec clears the condition.
    apply(plane, sdd_doc("amd", namespace, BASIC))
    wait_for("Degraded=False", lambda: condition(
        get_json(plane, "sdd", "amd", "-n", namespace), "Degraded").get("status") == "False",
        timeout=45)
    assert any(e["reason"] == "Recovered" for e in events(plane, namespace, "amd"))


def test_operator_never_writes_the_user_object(operator: OperatorProcess, plane: LocalPlane,
                                               namespace: str) -> None:
    apply(plane, sdd_doc("mine", namespace, BASIC))
    wait_ready(plane, namespace, "mine")
    sdd = get_json(plane, "sdd", "mine", "-n", namespace, "--show-managed-fields")
    by_manager: dict[str, dict[str, Any]] = {}
    for m in sdd["metadata"]["managedFields"]:
        by_manager.setdefault(m["manager"], {})[m.get("subresource", "")] = m["fieldsV1"]
    assert set(by_manager["specdecode-operator"]) == {"status"}
    assert "f:metadata" not in json.dumps(by_manager["specdecode-operator"]["status"])
    assert sdd["metadata"].get("annotations", {}) == {
        "kubectl.kubernetes.io/last-applied-configuration":
            sdd["metadata"]["annotations"]["kubectl.kubernetes.io/last-applied-configuration"]}
    assert sdd["metadata"]["generation"] == 1


def test_no_op_reconcile_and_restart_make_zero_writes(
    solo_operator: OperatorProcess, plane: LocalPlane, namespace: str
) -> None:
    """Reconciles that find nothing to do write nothing, and none of them failed: "zero
    writes" must not be what every reconcile raising looks like. The operator here watches
    only this namespace, so its counters count this test's objects, not other tests'."""
    operator, n = solo_operator, len(EXPECTED_ARGS)
    for i, example in enumerate(sorted(EXPECTED_ARGS)):
        doc = yaml.safe_load((EXAMPLES / example).read_text())
        doc["metadata"]["name"] = f"quiet-{i}"
        apply(plane, doc, "-n", namespace)
    for i in range(n):
        wait_ready(plane, namespace, f"quiet-{i}")
        # The autotuner's first evaluation (no metrics for these pods) is a real change too.
        wait_for("MetricsAvailable reported", lambda i=i: condition(
            get_json(plane, "sdd", f"quiet-{i}", "-n", namespace), "MetricsAvailable"))
    wait_quiet(operator)
    # The audit log does see this operator's writes (creating the children above).
    created = [w for w in plane.audit_writes(operator.username)
               if w["objectRef"].get("namespace") == namespace]
    assert {w["objectRef"]["resource"] for w in created} >= {
        "deployments", "services", "poddisruptionbudgets", "specdecodedeployments", "events"}
    assert operator.reconcile_errors() == 0

    # 1. Triggers that change nothing: a label on the SDD (one reconcile of quiet-0) and a
    # periodic resync (one of each SDD; SPECDECODE_RESYNC_SECONDS=10).
    since = utc_now()
    before = operator.reconciles()
    plane.kubectl("label", "sdd", "quiet-0", "-n", namespace, "touched=yes")
    operator.wait_reconciles(before + 1 + n, timeout=30)
    wait_quiet(operator)
    writes = [w for w in plane.audit_writes(operator.username, since)
              if w["objectRef"].get("namespace") == namespace]
    assert writes == [], [(w["verb"], w["requestURI"]) for w in writes]
    assert operator.reconcile_errors() == 0
    operator.assert_no_errors()

    # 2. Restart: the new process reconciles every object and writes nothing.
    operator.restart()
    since = utc_now()
    operator.wait_reconciles(n)
    wait_quiet(operator)
    writes = [w for w in plane.audit_writes(operator.username, since)
              if w["objectRef"].get("namespace") == namespace]
    assert writes == [], [(w["verb"], w["requestURI"]) for w in writes]
    assert operator.reconcile_errors() == 0
    operator.assert_no_errors()
    print(f"no-op reconciles: {operator.reconciles():.0f} after restart, 0 writes, 0 errors")


def test_pod_monitor_is_created_once_its_crd_exists(
    operator: OperatorProcess, plane: LocalPlane, namespace: str
) -> None:
    apply(plane, sdd_doc("mon", namespace, BASIC))
    wait_ready(plane, namespace, "mon")
    assert plane.kubectl("get", "podmonitors", "-n", namespace, check=False).returncode != 0
    # The stand-in CRD is removed at the end: other tests expect a plane without it.
    with installed_crds(plane, [stand_in_crd("PodMonitor", "podmonitors")]):
        pokes = iter(range(1, 10_000))

        def pod_monitor() -> dict[str, Any] | None:
            # A reconcile after the operator's discovery cache expired creates it
            # (SPECDECODE_DISCOVERY_TTL=2): trigger one per poll until one does.
            plane.kubectl("label", "--overwrite", "sdd", "mon", "-n", namespace,
                          f"poke={next(pokes)}")
            return get_or_none(plane, "podmonitor", "mon", "-n", namespace)

        pm = wait_for("PodMonitor", pod_monitor)
        assert pm["spec"]["selector"] == {"matchLabels": {"specdecode.io/deployment": "mon"}}
        assert pm["metadata"]["ownerReferences"][0]["kind"] == "SpecDecodeDeployment"
        plane.kubectl("delete", "sdd", "mon", "-n", namespace)


def test_a_rejected_child_apply_is_degraded_apply_failed_and_recovers(
    operator: OperatorProcess, plane: LocalPlane, namespace: str
) -> None:
    """The apiserver refuses one child (a ResourceQuota allowing no Services): the failure is
    reported (Degraded=ApplyFailed, with the apiserver's words), the other children are still
    applied, and once the quota goes the Service is created and the condition clears."""
    plane.kubectl_apply([{"apiVersion": "v1", "kind": "ResourceQuota",
                          "metadata": {"name": "no-services", "namespace": namespace},
                          "spec": {"hard": {"services": "0"}}}])
    apply(plane, sdd_doc("quota", namespace, BASIC))
    sdd = wait_for("Degraded=ApplyFailed", lambda: (
        s := get_or_none(plane, "sdd", "quota", "-n", namespace))
        and condition(s, "Degraded").get("reason") == "ApplyFailed" and s, timeout=45)
    msg = condition(sdd, "Degraded")["message"]
    assert msg.startswith("applying Service quota:") and "quota" in msg, msg
    assert condition(sdd, "Degraded")["status"] == "True"
    assert get_or_none(plane, "service", "quota", "-n", namespace) is None
    deployment(plane, namespace, "quota")  # the other children are applied regardless
    assert operator.comp is not None and operator.comp.alive

    plane.kubectl("delete", "resourcequota", "no-services", "-n", namespace)
    wait_for("Service created once allowed", lambda: get_or_none(
        plane, "service", "quota", "-n", namespace), timeout=45)
    wait_for("Degraded cleared", lambda: condition(
        get_json(plane, "sdd", "quota", "-n", namespace), "Degraded").get("status") == "False",
        timeout=45)
