"""Invalid SpecDecodeDeployments are rejected by the real apiserver (OpenAPI + CEL), with
messages that tell the user what to write."""

from __future__ import annotations

from typing import Any

import pytest

from specdecode_runtime.localplane import LocalPlane

from ..kube_helpers import apply, sdd_doc

pytestmark = pytest.mark.plane

OK: dict[str, Any] = {"model": {"name": "org/target"},
                      "drafter": {"method": "mtp", "model": "org/target-assistant"}}


def spec(**changes: Any) -> dict[str, Any]:
    out = {**OK, **changes}
    return {k: v for k, v in out.items() if v is not None}


INVALID = [
    ("min-above-max", spec(draftTokens={"min": 6, "max": 4}),
     "draftTokens.min must be less than or equal to draftTokens.max"),
    ("initial-outside-bounds", spec(draftTokens={"initial": 9, "min": 2, "max": 8}),
     "draftTokens.initial must lie within [draftTokens.min, draftTokens.max]"),
    ("initial-above-16", spec(draftTokens={"initial": 17}),
     "spec.draftTokens.initial: Invalid value: 17: spec.draftTokens.initial in body should be "
     "less than or equal to 16"),
    ("min-zero", spec(draftTokens={"min": 0}),
     "spec.draftTokens.min in body should be greater than or equal to 1"),
    ("eagle3-without-model", spec(drafter={"method": "eagle3"}),
     "drafter.model is required when drafter.method is one of eagle, eagle3, draft_model"),
    ("draft-model-without-model", spec(drafter={"method": "draft_model"}),
     "drafter.model is required when drafter.method is one of eagle, eagle3, draft_model"),
    ("ngram-with-model", spec(drafter={"method": "ngram", "model": "org/x"}),
     "drafter.model must not be set when drafter.method is ngram, suffix, none"),
    ("none-with-draft-tokens", spec(drafter={"method": "none"}, draftTokens={"max": 4}),
     "draftTokens must not be set when drafter.method is none"),
    ("unknown-method", spec(drafter={"method": "medusa", "model": "org/x"}),
     'spec.drafter.method: Unsupported value: "medusa"'),
    ("gpu-not-multiple-of-tp", spec(tensorParallelSize=2, gpu={"count": 3}),
     "gpu.count must be a multiple of tensorParallelSize"),
    ("engine-args-speculative-config", spec(engineArgs=["--speculative-config", "{}"]),
     "engineArgs must not contain --speculative-config (in any spelling vLLM reads as it: "),
    ("engine-args-port", spec(engineArgs=["--port=9000"]),
     "engineArgs must not contain --port (in any spelling vLLM reads as it: --port, --por, "
     "--port=...): the operator renders it; use spec.service.port"),
    ("engine-args-served-name", spec(engineArgs=["--served-model-name", "x"]),
     "use spec.model.servedName"),
    ("engine-args-disable-log-stats", spec(engineArgs=["--disable-log-stats"]),
     "engineArgs must not contain --disable-log-stats"),
    ("engine-args-tp", spec(engineArgs=["-tp", "2"]), "use spec.tensorParallelSize"),
    # Every spelling issue 11 saw reach vLLM 0.32.0's parser as an owned flag.
    *[(f"engine-args-spelling-{i}", spec(engineArgs=[arg, *rest]),
       f"engineArgs must not contain {owned} (")
      for i, (arg, rest, owned) in enumerate([
          ("--speculative_config={}", [], "--speculative-config"),
          ("--tensor_parallel_size", ["8"], "--tensor-parallel-size"),
          ("--disable_log_stats", [], "--disable-log-stats"),
          ("--speculative-conf", ["{}"], "--speculative-config"),
          ("--tensor-parallel", ["4"], "--tensor-parallel-size"),
          ("--disable-log-stat", [], "--disable-log-stats"),
          ("--speculative-config.num_speculative_tokens=9", [], "--speculative-config"),
          ("-sc.num_speculative_tokens=9", [], "--speculative-config"),
          ("-t", ["2"], "--tensor-parallel-size"),
          ("--spec-tokens", ["9"], "--spec-tokens"),
          ("--spec_method=ngram", [], "--spec-method"),
          ("--hf_token=x", [], "--hf-token"),
      ])],
    ("engine-args-config-file", spec(engineArgs=["--config", "/etc/vllm.yaml"]),
     "engineArgs must not contain --config (--config, --config=...): vLLM would read flags "
     "from a file the operator cannot check"),
    ("model-name-is-a-flag", spec(model={"name": "--port"}),
     "model.name must not start with '-': vLLM would read it as a flag; write the Hugging "
     "Face id (org/model) or a path in the pod"),
    ("drafter-model-is-a-flag", spec(drafter={"method": "eagle3", "model": "-tp"}),
     "drafter.model must not start with '-'"),
    ("served-name-is-a-flag", spec(model={"name": "org/m", "servedName": "--x"}),
     "model.servedName must not start with '-'"),
    ("missing-model", spec(model=None), "spec.model: Required value"),
    ("ngram-block-on-mtp", spec(drafter={"method": "mtp", "ngram": {"promptLookupMin": 2}}),
     "drafter.ngram applies only to drafter.method ngram"),
    ("lookup-min-above-max",
     spec(drafter={"method": "ngram", "ngram": {"promptLookupMin": 5, "promptLookupMax": 2}}),
     "drafter.ngram.promptLookupMin must be less than or equal to promptLookupMax"),
    ("two-model-caches", spec(modelCache={"emptyDir": {}, "hostPath": {"path": "/models"}}),
     "modelCache needs exactly one of emptyDir, persistentVolumeClaim, hostPath"),
    ("rollout-all-zero", spec(rollout={"maxSurge": 0, "maxUnavailable": 0}),
     "rollout.maxSurge and rollout.maxUnavailable cannot both be 0"),
    ("unknown-autotune-mode", spec(autotune={"mode": "Sometimes"}),
     'spec.autotune.mode: Unsupported value: "Sometimes"'),
    ("unknown-workload", spec(workload="poetry"), 'spec.workload: Unsupported value: "poetry"'),
    ("draft-tp-mismatch", spec(tensorParallelSize=4, gpu={"count": 4},
                               drafter={"method": "mtp", "draftTensorParallelSize": 2}),
     "drafter.draftTensorParallelSize must be 1 or equal to tensorParallelSize"),
    ("negative-replicas", spec(replicas=-1),
     "spec.replicas in body should be greater than or equal to 0"),
]


@pytest.mark.parametrize(("case", "body", "message"), INVALID, ids=[c[0] for c in INVALID])
def test_invalid_spec_is_rejected_with_a_clear_message(
    crds: LocalPlane, namespace: str, case: str, body: dict[str, Any], message: str
) -> None:
    r = apply(crds, sdd_doc(case, namespace, body), check=False)
    assert r.returncode != 0, f"{case} was accepted"
    assert message in r.stderr, r.stderr
    # Nothing was stored.
    assert crds.kubectl("get", "sdd", case, "-n", namespace, check=False).returncode != 0


def test_valid_variants_are_accepted(crds: LocalPlane, namespace: str) -> None:
    for i, body in enumerate([
        spec(),
        spec(drafter={"method": "mtp"}),                        # in-checkpoint MTP heads
        spec(drafter={"method": "ngram", "ngram": {"promptLookupMax": 4}}),
        spec(drafter={"method": "none"}),
        spec(engineArgs=["--model-impl=transformers", "--max-num-seqs", "64"]),
        # Options that merely start like an owned one, and dotted keys of other configs.
        spec(engineArgs=["--config-format=hf", "--compilation-config.mode=3", "-O3",
                         "--max-num-batched-tokens=8192", "--hf-overrides", "{}"]),
        spec(tensorParallelSize=2, gpu={"count": 4}),
        spec(rollout={"maxSurge": 0, "maxUnavailable": 1}),
        spec(rollout={"maxSurge": "25%", "maxUnavailable": "25%"}),
        spec(modelCache={"persistentVolumeClaim": {"claimName": "models"}}),
    ]):
        r = apply(crds, sdd_doc(f"ok-{i}", namespace, body), check=False)
        assert r.returncode == 0, (body, r.stderr)


def test_defaults_are_applied_by_the_apiserver(crds: LocalPlane, namespace: str) -> None:
    apply(crds, sdd_doc("defaults", namespace, spec()))
    from ..kube_helpers import get_json
    stored = get_json(crds, "sdd", "defaults", "-n", namespace)["spec"]
    from specdecode_operator.render import defaulted_spec
    # The Python view of defaults equals what the apiserver stored.
    assert defaulted_spec(spec()) == stored


def test_a_new_sdd_reads_observed_generation_zero_before_any_write(
        crds: LocalPlane, namespace: str) -> None:
    """The status schema's default: kstatus (Flux) compares status.observedGeneration with
    metadata.generation and reads an object without any status as Current; with the default
    a fresh SDD reads InProgress until the operator's first write (docs/gitops.md). The
    create response is read back from storage before anyone can have written status (an
    operator may run in this session; tests/gitops shows it on GET with the operator
    stopped)."""
    import json
    doc = sdd_doc("fresh", namespace, spec())
    created = json.loads(crds.kubectl("create", "-o", "json", "-f", "-",
                                      input=json.dumps(doc)).stdout)
    assert created["metadata"]["generation"] == 1
    assert created["status"] == {"observedGeneration": 0}
