"""Pure rendering: a SpecDecodeDeployment and the K to run -> the manifests it owns.

No I/O. The Kopf layer applies the result with server-side apply.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from . import crd, names, vllm_flags
from .api import (  # the operator's names live in api.py; imported from here too
    ANNOTATION_HASH,
    ANNOTATION_SPEC_CONFIG,
    DEFAULT_GPU_RESOURCE,
    LABEL_CANARY,
    LABEL_DRAFTER,
    LABEL_K,
    LABEL_MANAGED_BY,
    LABEL_SDD,
    MANAGER,
    defaulted_spec,
)

HTTP_PORT_NAME = "http"
SHM_SIZE = "16Gi"


def speculative_config(spec: dict[str, Any], k: int) -> dict[str, Any]:
    """vLLM's --speculative-config for this spec at draft length ``k`` (docs/vllm-reference.md)."""
    d = spec["drafter"]
    cfg: dict[str, Any] = {"method": d["method"]}
    if "model" in d:
        cfg["model"] = d["model"]
    cfg["num_speculative_tokens"] = k
    if "revision" in d:
        cfg["revision"] = d["revision"]
    if "draftTensorParallelSize" in d:
        cfg["draft_tensor_parallel_size"] = d["draftTensorParallelSize"]
    if d["method"] == "ngram":
        ng = d.get("ngram") or {}
        if "promptLookupMin" in ng:
            cfg["prompt_lookup_min"] = ng["promptLookupMin"]
        if "promptLookupMax" in ng:
            cfg["prompt_lookup_max"] = ng["promptLookupMax"]
    return cfg


class InvalidSpec(ValueError):
    """A spec the CRD's validation should have refused (an older CRD, or a hand-made object):
    rendering it would hand vLLM flags that override what the operator renders."""


def check_args(spec: dict[str, Any]) -> None:
    """Defence in depth behind the CRD's CEL rules: the same checks, from the same source."""
    problems = vllm_flags.problems(list(spec.get("engineArgs", [])))
    names_ = {"model.name": spec["model"].get("name"),
              "model.servedName": spec["model"].get("servedName"),
              "model.revision": spec["model"].get("revision"),
              "drafter.model": (spec.get("drafter") or {}).get("model"),
              "drafter.revision": (spec.get("drafter") or {}).get("revision")}
    problems += [f"{field} must not start with '-': vLLM would read it as a flag"
                 for field, value in names_.items() if str(value or "").startswith("-")]
    if problems:
        raise InvalidSpec("; ".join(problems))


def vllm_args(spec: dict[str, Any], k: int | None) -> list[str]:
    """Arguments after ``vllm serve``."""
    check_args(spec)
    model = spec["model"]
    args = [
        model["name"],
        "--served-model-name", model.get("servedName", model["name"]),
        "--host", "0.0.0.0",
        "--port", str(spec["service"]["port"]),
        "--tensor-parallel-size", str(spec["tensorParallelSize"]),
    ]
    if "revision" in model:
        args += ["--revision", model["revision"]]
    if "maxModelLen" in model:
        args += ["--max-model-len", str(model["maxModelLen"])]
    if k:  # None (method none) and 0 (off under load) render no speculation
        cfg = json.dumps(speculative_config(spec, k), separators=(",", ":"))
        args += ["--speculative-config", cfg]
    return args + list(spec.get("engineArgs", []))


def selector_labels(name: str) -> dict[str, str]:
    """Labels selecting the pods of SDD ``name`` (always a valid label value, see names)."""
    return {LABEL_SDD: names.label_value(name)}


def common_labels(name: str) -> dict[str, str]:
    value = names.label_value(name)
    return {
        "app.kubernetes.io/name": "vllm",
        "app.kubernetes.io/instance": value,
        "app.kubernetes.io/component": "inference-server",
        LABEL_MANAGED_BY: MANAGER,
        LABEL_SDD: value,
    }


def name_annotations(name: str) -> dict[str, str]:
    """The full SDD name, on children and pods whose names or labels carry a short form only
    (absent otherwise, so objects of names that always fitted render as before)."""
    return {names.ANNOTATION_NAME: name} if names.is_derived(name) else {}


def owner_reference(sdd: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": f"{crd.GROUP}/{crd.VERSION}",
        "kind": crd.KIND,
        "name": sdd["metadata"]["name"],
        "uid": sdd["metadata"]["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def child_metadata(sdd: dict[str, Any], kind: str) -> dict[str, Any]:
    """Every owned object is named from the SDD (names.child_name / service_name), in its
    namespace, with its labels and its owner."""
    name = sdd["metadata"]["name"]
    child = names.service_name(name) if kind == "Service" else names.child_name(name)
    meta: dict[str, Any] = {"name": child, "namespace": sdd["metadata"]["namespace"],
                            "labels": common_labels(name),
                            "ownerReferences": [owner_reference(sdd)]}
    if ann := name_annotations(name):
        meta["annotations"] = ann
    return meta


def _gpu_count(spec: dict[str, Any]) -> int:
    return int((spec.get("gpu") or {}).get("count", spec["tensorParallelSize"]))


def _container(spec: dict[str, Any], k: int | None) -> dict[str, Any]:
    gpu = spec.get("gpu") or {}
    gpu_resource = gpu.get("resourceName", DEFAULT_GPU_RESOURCE)
    gpus = str(_gpu_count(spec))
    res = spec.get("resources") or {}
    limits = {**{n: str(q) for n, q in (res.get("limits") or {}).items()}, gpu_resource: gpus}
    requests = {**{n: str(q) for n, q in (res.get("requests") or {}).items()}, gpu_resource: gpus}

    env: list[dict[str, Any]] = []
    secret = spec["model"].get("hfTokenSecretRef")
    if secret:
        env.append({"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {
            "name": secret["name"], "key": secret.get("key", "token")}}})
    mounts = [{"name": "dshm", "mountPath": "/dev/shm"}]
    cache = spec.get("modelCache")
    if cache:
        env.append({"name": "HF_HOME", "value": cache["mountPath"]})
        mount: dict[str, Any] = {"name": "model-cache", "mountPath": cache["mountPath"]}
        if (cache.get("persistentVolumeClaim") or {}).get("readOnly"):
            mount["readOnly"] = True
        mounts.append(mount)
    env += list(spec.get("env", []))

    port = spec["service"]["port"]
    health = {"path": "/health", "port": HTTP_PORT_NAME}
    container: dict[str, Any] = {
        "name": "vllm",
        "image": spec["image"],
        "command": ["vllm", "serve"],
        "args": vllm_args(spec, k),
        "ports": [{"name": HTTP_PORT_NAME, "containerPort": port, "protocol": "TCP"}],
        "resources": {"limits": limits, "requests": requests},
        "volumeMounts": mounts,
        # Loading tens of GB of weights takes minutes: the port is closed until then.
        "startupProbe": {"httpGet": health, "periodSeconds": 10, "failureThreshold": 180,
                         "timeoutSeconds": 5},
        "readinessProbe": {"httpGet": health, "periodSeconds": 5, "failureThreshold": 3,
                           "timeoutSeconds": 5},
        # /health turns 503 when the engine died; restart it then.
        "livenessProbe": {"httpGet": health, "periodSeconds": 15, "failureThreshold": 4,
                          "timeoutSeconds": 10},
    }
    if env:
        container["env"] = env
    if "imagePullPolicy" in spec:
        container["imagePullPolicy"] = spec["imagePullPolicy"]
    return container


def _volumes(spec: dict[str, Any]) -> list[dict[str, Any]]:
    vols: list[dict[str, Any]] = [
        {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": SHM_SIZE}},
    ]
    cache = spec.get("modelCache")
    if cache:
        if "persistentVolumeClaim" in cache:
            pvc = cache["persistentVolumeClaim"]
            src: dict[str, Any] = {"persistentVolumeClaim": {
                "claimName": pvc["claimName"], "readOnly": bool(pvc.get("readOnly", False))}}
        elif "hostPath" in cache:
            src = {"hostPath": {"path": cache["hostPath"]["path"], "type": "DirectoryOrCreate"}}
        else:
            ed = cache.get("emptyDir") or {}
            src = {"emptyDir": {"sizeLimit": str(ed["sizeLimit"])} if "sizeLimit" in ed else {}}
        vols.append({"name": "model-cache", **src})
    return vols


def deployment(sdd: dict[str, Any], spec: dict[str, Any], k: int | None) -> dict[str, Any]:
    name = sdd["metadata"]["name"]
    user_meta = spec.get("podMetadata") or {}
    pod_labels = {
        **user_meta.get("labels", {}),
        **common_labels(name),
        LABEL_K: str(k or 0),
        LABEL_DRAFTER: spec["drafter"]["method"],
    }
    port = spec["service"]["port"]
    pod_annotations = {
        **user_meta.get("annotations", {}),
        **name_annotations(name),
        "prometheus.io/scrape": "true",
        "prometheus.io/port": str(port),
        "prometheus.io/path": "/metrics",
    }
    if k:
        pod_annotations[ANNOTATION_SPEC_CONFIG] = json.dumps(
            speculative_config(spec, k), separators=(",", ":"))
    node_selector = dict(spec.get("nodeSelector") or {})
    product = (spec.get("gpu") or {}).get("product")
    if product:
        node_selector["nvidia.com/gpu.product"] = product

    pod_spec: dict[str, Any] = {
        # A Service named vllm would inject VLLM_PORT=tcp://... and vLLM refuses to start.
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": 60,
        "containers": [_container(spec, k)],
        "volumes": _volumes(spec),
    }
    for field in ("tolerations", "affinity", "priorityClassName", "imagePullSecrets",
                  "serviceAccountName"):
        if spec.get(field):
            pod_spec[field] = spec[field]
    if node_selector:
        pod_spec["nodeSelector"] = node_selector

    rollout = spec["rollout"]
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": child_metadata(sdd, "Deployment"),
        "spec": {
            "replicas": spec["replicas"],
            "selector": {"matchLabels": selector_labels(name)},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {
                "maxSurge": rollout["maxSurge"], "maxUnavailable": rollout["maxUnavailable"]}},
            "revisionHistoryLimit": 5,
            # Model loading is slow; report a stuck rollout only after the startup budget.
            "progressDeadlineSeconds": 2400,
            "template": {
                "metadata": {"labels": pod_labels, "annotations": pod_annotations},
                "spec": pod_spec,
            },
        },
    }


def service(sdd: dict[str, Any], spec: dict[str, Any]) -> dict[str, Any]:
    name = sdd["metadata"]["name"]
    svc = spec["service"]
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": child_metadata(sdd, "Service"),
        "spec": {
            "type": svc["type"],
            "selector": selector_labels(name),
            "ports": [{"name": HTTP_PORT_NAME, "port": svc["port"],
                       "targetPort": HTTP_PORT_NAME, "protocol": "TCP"}],
        },
    }


def pod_disruption_budget(sdd: dict[str, Any], spec: dict[str, Any]) -> dict[str, Any] | None:
    budget = spec["disruptionBudget"]
    if not budget["enabled"]:
        return None
    name = sdd["metadata"]["name"]
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": child_metadata(sdd, "PodDisruptionBudget"),
        "spec": {"maxUnavailable": budget["maxUnavailable"],
                 "selector": {"matchLabels": selector_labels(name)}},
    }


def pod_monitor(sdd: dict[str, Any]) -> dict[str, Any]:
    name = sdd["metadata"]["name"]
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PodMonitor",
        "metadata": child_metadata(sdd, "PodMonitor"),
        "spec": {
            "selector": {"matchLabels": selector_labels(name)},
            "podMetricsEndpoints": [{
                "port": HTTP_PORT_NAME, "path": "/metrics", "interval": "15s",
                # Keep the SDD and K on every series: the autotuner groups by them.
                "relabelings": [
                    {"sourceLabels": [f"__meta_kubernetes_pod_label_{_prom(LABEL_SDD)}"],
                     "targetLabel": "sdd"},
                    # A long name's pods carry a short label; the full name is annotated.
                    {"sourceLabels": [
                        f"__meta_kubernetes_pod_annotation_{_prom(names.ANNOTATION_NAME)}"],
                     "regex": "(.+)", "targetLabel": "sdd"},
                    {"sourceLabels": [f"__meta_kubernetes_pod_label_{_prom(LABEL_K)}"],
                     "targetLabel": "draft_tokens"},
                ],
            }],
        },
    }


def _prom(label: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in label)


def content_hash(manifest: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()[:16]


def with_hash(manifest: dict[str, Any]) -> dict[str, Any]:
    """Stamp the manifest with a hash of itself: a changed render is seen without a diff."""
    h = content_hash(manifest)
    out = json.loads(json.dumps(manifest))
    out["metadata"].setdefault("annotations", {})[ANNOTATION_HASH] = h
    return out


def canary_deployment(sdd: dict[str, Any], spec: dict[str, Any], k: int) -> dict[str, Any]:
    """The canary replica (canary mode): one pod at the candidate K, behind the SDD's
    Service, PodDisruptionBudget and PodMonitor like the others (same SDD label).

    Its selector adds the canary label, so it never counts the main pods. The main
    Deployment's selector (immutable, the SDD label alone) does match the canary's pod, which
    Kubernetes tolerates because each ReplicaSet and pod has one controller owner: neither
    Deployment adopts the other's.
    """
    dep = deployment(sdd, spec, k)
    dep["metadata"]["name"] = names.canary_name(sdd["metadata"]["name"])
    dep["metadata"]["labels"][LABEL_CANARY] = "true"
    dep["spec"]["replicas"] = 1
    dep["spec"]["selector"]["matchLabels"][LABEL_CANARY] = "true"
    dep["spec"]["template"]["metadata"]["labels"][LABEL_CANARY] = "true"
    return dep


def render(
    sdd: dict[str, Any], k: int | None, *, pod_monitor_available: bool = False,
    spec: dict[str, Any] | None = None, canary_k: int | None = None,
) -> list[dict[str, Any]]:
    """All objects owned by ``sdd`` when it runs draft length ``k`` (None: speculation off).

    ``spec``: the SDD's spec already defaulted (``api.SpecView.spec``), to default it once.
    ``canary_k``: a canary replica runs that K (draft_tokens.canary_k); the main Deployment
    then has one replica less.
    """
    spec = defaulted_spec(sdd["spec"]) if spec is None else spec
    main = deployment(sdd, spec, k)
    out = [main, service(sdd, spec)]
    if canary_k is not None:
        main["spec"]["replicas"] = max(0, int(spec["replicas"]) - 1)
        out.append(canary_deployment(sdd, spec, canary_k))
    pdb = pod_disruption_budget(sdd, spec)
    if pdb:
        out.append(pdb)
    if pod_monitor_available:
        out.append(pod_monitor(sdd))
    return [with_hash(m) for m in out]
