"""render(): spec + K -> manifests, for every drafter method (pure, no cluster)."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from specdecode_operator import crd, draft_tokens
from specdecode_operator.render import (
    ANNOTATION_HASH,
    LABEL_K,
    defaulted_spec,
    render,
    speculative_config,
    vllm_args,
)

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def sdd(spec: dict[str, Any], name: str = "m") -> dict[str, Any]:
    return {"apiVersion": "specdecode.io/v1alpha1", "kind": "SpecDecodeDeployment",
            "metadata": {"name": name, "namespace": "ns", "uid": "u-1", "generation": 1},
            "spec": spec}


BASE = {"model": {"name": "org/target"}}

# (drafter block, K) -> the exact --speculative-config vLLM expects (docs/vllm-reference.md).
CASES = [
    ({"method": "mtp", "model": "google/gemma-4-31B-it-assistant"}, 4,
     '{"method":"mtp","model":"google/gemma-4-31B-it-assistant","num_speculative_tokens":4}'),
    ({"method": "mtp"}, 2, '{"method":"mtp","num_speculative_tokens":2}'),
    ({"method": "eagle", "model": "org/eagle"}, 5,
     '{"method":"eagle","model":"org/eagle","num_speculative_tokens":5}'),
    ({"method": "eagle3", "model": "org/eagle3", "draftTensorParallelSize": 1}, 3,
     '{"method":"eagle3","model":"org/eagle3","num_speculative_tokens":3,'
     '"draft_tensor_parallel_size":1}'),
    ({"method": "draft_model", "model": "org/small", "revision": "v2"}, 6,
     '{"method":"draft_model","model":"org/small","num_speculative_tokens":6,"revision":"v2"}'),
    ({"method": "ngram", "ngram": {"promptLookupMin": 2, "promptLookupMax": 4}}, 3,
     '{"method":"ngram","num_speculative_tokens":3,"prompt_lookup_min":2,'
     '"prompt_lookup_max":4}'),
    ({"method": "ngram"}, 5, '{"method":"ngram","num_speculative_tokens":5}'),
    ({"method": "suffix"}, 8, '{"method":"suffix","num_speculative_tokens":8}'),
]


@pytest.mark.parametrize(("drafter", "k", "expected"), CASES,
                         ids=[f"{c[0]['method']}-{i}" for i, c in enumerate(CASES)])
def test_speculative_config_per_drafter(drafter: dict[str, Any], k: int, expected: str) -> None:
    spec = {**BASE, "drafter": drafter}
    dep = render(sdd(spec), k)[0]
    c = dep["spec"]["template"]["spec"]["containers"][0]
    assert c["command"] == ["vllm", "serve"]
    assert c["args"] == [
        "org/target", "--served-model-name", "org/target", "--host", "0.0.0.0",
        "--port", "8000", "--tensor-parallel-size", "1", "--speculative-config", expected,
    ]
    assert json.loads(expected) == speculative_config(defaulted_spec(spec), k)
    assert dep["spec"]["template"]["metadata"]["labels"][LABEL_K] == str(k)


def test_method_none_renders_no_speculative_config() -> None:
    dep = render(sdd({**BASE, "drafter": {"method": "none"}}), None)[0]
    args = dep["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--speculative-config" not in args
    assert dep["spec"]["template"]["metadata"]["labels"][LABEL_K] == "0"


def test_full_spec_renders_everything_a_gpu_pod_needs() -> None:
    spec = yaml.safe_load((EXAMPLES / "gemma4-31b-mtp-assistant.yaml").read_text())["spec"]
    spec["env"] = [{"name": "VLLM_LOGGING_LEVEL", "value": "DEBUG"}]
    spec["tolerations"] = [{"key": "nvidia.com/gpu", "operator": "Exists",
                            "effect": "NoSchedule"}]
    spec["podMetadata"] = {"labels": {"team": "llm"}, "annotations": {"a": "b"}}
    objs = render(sdd(spec, "gemma"), 6)
    assert [o["kind"] for o in objs] == ["Deployment", "Service", "PodDisruptionBudget"]
    dep, svc, pdb = objs
    pod = dep["spec"]["template"]
    c = pod["spec"]["containers"][0]
    assert c["args"][:2] == ["google/gemma-4-31B-it", "--served-model-name"]
    assert c["args"][2] == "gemma-4-31b"
    assert "--max-model-len" in c["args"] and c["args"][-2:] == [
        "--max-num-seqs=128", "--gpu-memory-utilization=0.92"]
    assert c["resources"]["limits"] == {"memory": "128Gi", "nvidia.com/gpu": "1"}
    assert c["resources"]["requests"] == {"cpu": "8", "memory": "64Gi", "nvidia.com/gpu": "1"}
    env = {e["name"]: e for e in c["env"]}
    assert env["HF_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "hf-token", "key": "token"}
    assert env["HF_HOME"]["value"] == "/root/.cache/huggingface"
    assert env["VLLM_LOGGING_LEVEL"]["value"] == "DEBUG"
    assert c["startupProbe"]["httpGet"]["path"] == "/health"
    assert c["startupProbe"]["failureThreshold"] * c["startupProbe"]["periodSeconds"] >= 1200
    assert c["readinessProbe"]["httpGet"]["path"] == "/health"
    assert {"name": "dshm", "mountPath": "/dev/shm"} in c["volumeMounts"]
    vols = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert vols["dshm"]["emptyDir"]["medium"] == "Memory"
    assert vols["model-cache"]["emptyDir"] == {"sizeLimit": "200Gi"}
    assert pod["spec"]["enableServiceLinks"] is False
    assert pod["spec"]["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-H200"}
    assert pod["spec"]["tolerations"] == spec["tolerations"]
    assert pod["metadata"]["labels"]["team"] == "llm"
    assert pod["metadata"]["labels"]["specdecode.io/deployment"] == "gemma"
    assert pod["metadata"]["annotations"]["prometheus.io/scrape"] == "true"
    assert pod["metadata"]["annotations"]["prometheus.io/port"] == "8000"
    assert dep["spec"]["replicas"] == 2
    assert dep["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 1, "maxUnavailable": 0}
    assert dep["spec"]["selector"] == {"matchLabels": {"specdecode.io/deployment": "gemma"}}
    for o in objs:
        ref = o["metadata"]["ownerReferences"][0]
        assert ref["uid"] == "u-1" and ref["controller"] is True
        assert len(o["metadata"]["annotations"][ANNOTATION_HASH]) == 16
    assert svc["spec"]["ports"][0]["port"] == 8000
    assert pdb["spec"]["maxUnavailable"] == 1


def test_render_is_deterministic_and_hash_tracks_k() -> None:
    s = sdd({**BASE, "drafter": {"method": "mtp"}})
    a, b, c = render(s, 3), render(copy.deepcopy(s), 3), render(s, 4)
    assert a == b
    h = [o["metadata"]["annotations"][ANNOTATION_HASH] for o in (a[0], c[0])]
    assert h[0] != h[1]
    # K only affects the Deployment; Service and PDB stay as they are.
    assert a[1:] == c[1:]


def test_pdb_optional_and_pod_monitor_when_available() -> None:
    spec = {**BASE, "drafter": {"method": "mtp"}, "disruptionBudget": {"enabled": False}}
    kinds = [o["kind"] for o in render(sdd(spec), 2, pod_monitor_available=True)]
    assert kinds == ["Deployment", "Service", "PodMonitor"]


def test_vllm_args_tensor_parallel_and_revision() -> None:
    spec = defaulted_spec({"model": {"name": "x", "revision": "abc"}, "tensorParallelSize": 4,
                           "drafter": {"method": "none"}, "service": {"port": 9000}})
    assert vllm_args(spec, None) == [
        "x", "--served-model-name", "x", "--host", "0.0.0.0", "--port", "9000",
        "--tensor-parallel-size", "4", "--revision", "abc"]


@pytest.mark.parametrize(("workload", "dt", "expected"), [
    ("conversational", None, 6), ("summarization", None, 7), ("code", None, 3),
    ("longform", None, 12), ("custom", None, 5), (None, None, 5),
    ("longform", {"max": 8}, 8),            # preset clamped to the bounds
    ("code", {"min": 4, "max": 9}, 4),
    ("code", {"initial": 9}, 9),            # explicit initial wins over the preset
])
def test_initial_k_from_preset(workload: str | None, dt: dict[str, int] | None,
                               expected: int) -> None:
    spec: dict[str, Any] = {**BASE, "drafter": {"method": "mtp"}}
    if workload:
        spec["workload"] = workload
    if dt:
        spec["draftTokens"] = dt
    b = draft_tokens.bounds(defaulted_spec(spec))
    assert b is not None and b.initial == expected


def test_current_k_follows_the_tuners_target_bounds_and_user_changes() -> None:
    spec = defaulted_spec({**BASE, "drafter": {"method": "mtp"},
                           "draftTokens": {"initial": 4, "min": 2, "max": 8}})
    ck = draft_tokens.current_k

    def target(k: int, initial: int = 4) -> dict[str, Any]:
        return {"autotune": {"target": {"k": k, "initial": initial}},
                "draftTokens": {"current": 4, "initial": 4}}

    assert ck(spec, None).k == 4
    # The running K in status is the reconciler's own output, not an input.
    assert ck(spec, {"draftTokens": {"current": 7, "initial": 4}}).k == 4
    assert ck(spec, target(7)).k == 7 and ck(spec, target(7)).from_target
    assert ck(spec, target(12)).k == 8                                        # clamped
    changed = defaulted_spec({**spec, "draftTokens": {"initial": 3, "min": 2, "max": 8}})
    assert ck(changed, target(7)).k == 3                                      # user wins
    assert ck(changed, target(7, initial=3)).k == 7
    off = defaulted_spec({**spec, "autotune": {"mode": "Off"}})
    assert ck(off, target(7)).k == 4
    rec = defaulted_spec({**spec, "autotune": {"mode": "Recommend"}})
    assert ck(rec, target(7)).k == 7           # a K chosen in Auto stays in Recommend
    none = defaulted_spec({**BASE, "drafter": {"method": "none"}})
    assert ck(none, target(7)).k is None
    # K 0: the autotuner turned speculation off under load; only while allowOff holds.
    off_ok = defaulted_spec({**spec, "autotune": {"allowOff": True}})
    assert ck(off_ok, target(0)).k == 0
    assert ck(spec, target(0)).k == 4
    dep = render(sdd(off_ok), 0)[0]
    assert "--speculative-config" not in dep["spec"]["template"]["spec"]["containers"][0]["args"]
    assert dep["spec"]["template"]["metadata"]["labels"][LABEL_K] == "0"


def test_crd_yaml_is_generated_from_the_python_schema() -> None:
    path = Path(__file__).resolve().parents[2] / "crds" / "specdecode.io_specdecodedeployments.yaml"
    assert path.read_text() == crd.to_yaml(), "crds/ is stale: run `make crds`"


def test_every_schema_field_has_a_description() -> None:
    missing: list[str] = []

    def walk(s: dict[str, Any], path: str) -> None:
        if path and "description" not in s:
            missing.append(path)
        for name, prop in (s.get("properties") or {}).items():
            walk(prop, f"{path}.{name}")
        if isinstance(s.get("items"), dict) and s["items"].get("properties"):
            walk(s["items"], f"{path}[]")

    walk(crd.spec_schema(), "spec")
    assert missing == []


def test_schema_defaults_fill_nested_objects_like_the_apiserver() -> None:
    out = crd.schema_defaults(crd.spec_schema(), {**BASE, "drafter": {"method": "mtp"}})
    assert out["service"] == {"type": "ClusterIP", "port": 8000}
    assert out["rollout"] == {"maxSurge": 1, "maxUnavailable": 0}
    assert out["autotune"]["mode"] == "Auto" and out["autotune"]["cooldownSeconds"] >= 900
    assert "draftTokens" not in out   # no object default: method none can forbid it
    assert crd.schema_defaults(crd.spec_schema(), out) == out


def test_the_api_reference_lists_every_spec_field_as_the_schema_has_it() -> None:
    doc = (Path(__file__).resolve().parents[2] / "docs" / "api.md").read_text()
    assert crd.FIELDS_START in doc, "docs/api.md lost its generated fields section"
    assert doc.split(crd.FIELDS_START, 1)[1] == crd.fields_markdown(), \
        "docs/api.md's field table is stale: run `make crds`"
    # Every leaf of the schema is a row (a new field cannot go undocumented).
    rows = {r[0] for r in crd.field_rows()}
    assert {"spec.autotune.canary.enabled", "spec.autotune.verification.afterSeconds",
            "spec.draftTokens.initial"} <= rows
