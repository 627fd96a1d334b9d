"""The SpecDecodeDeployment CRD: the one source of truth for the API schema.

``crds/specdecode.io_specdecodedeployments.yaml`` is generated from ``crd()`` (``make crds``);
a test fails when the two differ. Defaults live here, in the schema, so the apiserver applies
them; ``specdecode_operator.spec`` applies the same schema defaults when reading a spec.
"""

from __future__ import annotations

import copy
import json
from typing import Any

from . import vllm_flags

GROUP = "specdecode.io"
VERSION = "v1alpha1"
KIND = "SpecDecodeDeployment"
PLURAL = "specdecodedeployments"
SINGULAR = "specdecodedeployment"
SHORT_NAMES = ["sdd"]
CRD_NAME = f"{PLURAL}.{GROUP}"

DEFAULT_IMAGE = "vllm/vllm-openai:v0.33.0"
MAX_DRAFT_TOKENS = 16
# Initial K per workload preset when draftTokens.initial is not set (clamped to [min, max]).
PRESET_INITIAL_K = {"conversational": 6, "summarization": 7, "code": 3, "longform": 12}
DEFAULT_INITIAL_K = 5
DRAFTER_METHODS = ["mtp", "eagle", "eagle3", "draft_model", "ngram", "suffix", "none"]
# Methods whose drafter is a separate checkpoint; mtp may or may not have one (Gemma 4
# assistant checkpoints vs in-checkpoint heads of DeepSeek/Qwen/GLM).
METHODS_REQUIRING_MODEL = ["eagle", "eagle3", "draft_model"]
METHODS_FORBIDDING_MODEL = ["ngram", "suffix", "none"]

# Engine flags the operator renders itself, with the field a user sets instead (vllm_flags).
OWNED_FLAGS = vllm_flags.OWNED
# Longest engineArgs entry: bounds the cost of the CEL checks (a JSON config fits easily).
MAX_ENGINE_ARG_LENGTH = 4096


# ---- schema builders -------------------------------------------------------------------------
def _s(type_: str, description: str, **kw: Any) -> dict[str, Any]:
    return {"type": type_, "description": description, **kw}


def string(description: str, **kw: Any) -> dict[str, Any]:
    return _s("string", description, **kw)


def integer(description: str, **kw: Any) -> dict[str, Any]:
    return _s("integer", description, **kw)


def boolean(description: str, **kw: Any) -> dict[str, Any]:
    return _s("boolean", description, **kw)


def number(description: str, **kw: Any) -> dict[str, Any]:
    return _s("number", description, **kw)


def obj(
    description: str,
    properties: dict[str, Any] | None = None,
    *,
    required: list[str] | None = None,
    rules: list[tuple[str, str]] | None = None,
    **kw: Any,
) -> dict[str, Any]:
    out = _s("object", description, **kw)
    if properties is not None:
        out["properties"] = properties
    if required:
        out["required"] = required
    if rules:
        out["x-kubernetes-validations"] = [{"rule": r, "message": m} for r, m in rules]
    return out


def array(description: str, items: dict[str, Any], **kw: Any) -> dict[str, Any]:
    return _s("array", description, items=items, **kw)


def string_map(description: str) -> dict[str, Any]:
    return obj(description, additionalProperties={"type": "string"})


def int_or_string(description: str, **kw: Any) -> dict[str, Any]:
    return {"description": description, "x-kubernetes-int-or-string": True,
            "anyOf": [{"type": "integer"}, {"type": "string"}], **kw}


def opaque(description: str, type_: str = "object") -> dict[str, Any]:
    """A Kubernetes core type passed through to the pod as written (validated by the pod API)."""
    if type_ == "array":
        return array(description, {"type": "object", "x-kubernetes-preserve-unknown-fields": True})
    return obj(description, **{"x-kubernetes-preserve-unknown-fields": True})


def quantity_map(description: str) -> dict[str, Any]:
    return obj(description, additionalProperties=int_or_string(
        "A resource quantity such as 8, 500m, 64Gi.",
        pattern=r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$",
    ))


# ---- the spec ------------------------------------------------------------------------------
def _model() -> dict[str, Any]:
    return obj(
        "The target model vLLM serves.",
        {
            "name": string(
                "Hugging Face model id (e.g. google/gemma-4-31B-it) or a path inside the pod. "
                "Rendered as `vllm serve <name>`.",
                minLength=1, maxLength=512,
                **{"x-kubernetes-validations": not_a_flag(
                    "model.name", "the Hugging Face id (org/model) or a path in the pod")},
            ),
            "servedName": string(
                "Model name clients use in API requests (--served-model-name). "
                "Defaults to model.name.", minLength=1, maxLength=256,
                **{"x-kubernetes-validations": not_a_flag(
                    "model.servedName", "the name clients put in requests")},
            ),
            "revision": string("Model revision: branch, tag or commit (--revision).",
                               minLength=1, maxLength=128,
                               **{"x-kubernetes-validations": not_a_flag(
                                   "model.revision", "a branch, tag or commit")}),
            "maxModelLen": integer("Maximum context length in tokens (--max-model-len).",
                                   minimum=16, maximum=10_000_000),
            "hfTokenSecretRef": obj(
                "Secret holding a Hugging Face token, exposed to vLLM as HF_TOKEN.",
                {
                    "name": string("Secret name in the same namespace.", minLength=1,
                                   maxLength=253),
                    "key": string("Key in the Secret.", default="token", minLength=1,
                                  maxLength=253),
                },
                required=["name"],
            ),
        },
        required=["name"],
    )


def _drafter() -> dict[str, Any]:
    need = ", ".join(METHODS_REQUIRING_MODEL)
    forbid = ", ".join(METHODS_FORBIDDING_MODEL)
    return obj(
        "How draft tokens are proposed. mtp with model: a separate MTP checkpoint such as a "
        "Gemma 4 assistant (google/gemma-4-31B-it-assistant). mtp without model: MTP heads "
        "inside the target checkpoint (DeepSeek-V3, Qwen3-Next/3.5, GLM-4.x). eagle/eagle3: an "
        "EAGLE head checkpoint. draft_model: a small model of the same family. ngram/suffix: "
        "prompt lookup, no drafter weights. none: speculative decoding off.",
        {
            "method": string("Speculative decoding method.", enum=DRAFTER_METHODS),
            "model": string(
                "Drafter checkpoint (Hugging Face id or path). Required for "
                f"{need}; optional for mtp; not allowed for {forbid}.",
                minLength=1, maxLength=512,
                **{"x-kubernetes-validations": not_a_flag(
                    "drafter.model", "the Hugging Face id (org/model) or a path in the pod")},
            ),
            "revision": string("Drafter checkpoint revision.", minLength=1, maxLength=128,
                               **{"x-kubernetes-validations": not_a_flag(
                                   "drafter.revision", "a branch, tag or commit")}),
            "draftTensorParallelSize": integer(
                "Tensor parallel size of the drafter: 1 or the target's tensorParallelSize.",
                minimum=1, maximum=64,
            ),
            "ngram": obj(
                "Prompt-lookup window for method ngram.",
                {
                    "promptLookupMin": integer("Shortest n-gram to match (prompt_lookup_min).",
                                               minimum=1, maximum=64),
                    "promptLookupMax": integer("Longest n-gram to match (prompt_lookup_max).",
                                               minimum=1, maximum=64),
                },
                rules=[(
                    "!has(self.promptLookupMin) || !has(self.promptLookupMax) || "
                    "self.promptLookupMin <= self.promptLookupMax",
                    "drafter.ngram.promptLookupMin must be less than or equal to "
                    "promptLookupMax",
                )],
            ),
        },
        required=["method"],
        rules=[
            (
                f"!(self.method in {METHODS_REQUIRING_MODEL!r}) || has(self.model)",
                f"drafter.model is required when drafter.method is one of {need}: set it to "
                "the drafter checkpoint, e.g. yuhuili/EAGLE3-LLaMA3.1-Instruct-8B",
            ),
            (
                f"!(self.method in {METHODS_FORBIDDING_MODEL!r}) || !has(self.model)",
                f"drafter.model must not be set when drafter.method is {forbid}: these "
                "methods use no drafter checkpoint; remove drafter.model",
            ),
            (
                "!has(self.ngram) || self.method == 'ngram'",
                "drafter.ngram applies only to drafter.method ngram; remove it or set "
                "method: ngram",
            ),
            (
                "!has(self.revision) || has(self.model)",
                "drafter.revision needs drafter.model",
            ),
        ],
    )


def _draft_tokens() -> dict[str, Any]:
    k = MAX_DRAFT_TOKENS
    return obj(
        "Draft length K (vLLM num_speculative_tokens) and the bounds the autotuner keeps it "
        "in. Not allowed when drafter.method is none.",
        {
            "initial": integer(
                "K to start with. Default: from spec.workload (conversational 6, "
                f"summarization 7, code 3, longform 12, otherwise {DEFAULT_INITIAL_K}), "
                "clamped to [min, max].", minimum=1, maximum=k,
            ),
            "min": integer("Smallest K the autotuner may choose.", minimum=1, maximum=k,
                           default=1),
            "max": integer("Largest K the autotuner may choose.", minimum=1, maximum=k,
                           default=12),
        },
        rules=[
            ("self.min <= self.max",
             "draftTokens.min must be less than or equal to draftTokens.max"),
            ("!has(self.initial) || (self.min <= self.initial && self.initial <= self.max)",
             "draftTokens.initial must lie within [draftTokens.min, draftTokens.max]"),
        ],
    )


def _gpu() -> dict[str, Any]:
    return obj(
        "GPUs per replica and where they come from.",
        {
            "count": integer(
                "GPUs per replica. Default: tensorParallelSize. Must be a multiple of "
                "tensorParallelSize.", minimum=1, maximum=64,
            ),
            "resourceName": string(
                "Extended resource that provides the GPUs.", default="nvidia.com/gpu",
                pattern=r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
                        r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$",
                maxLength=253,
            ),
            "product": string(
                "Run only on nodes whose nvidia.com/gpu.product label has this value "
                "(e.g. NVIDIA-H200).", minLength=1, maxLength=63,
            ),
        },
    )


def _cel_literal(s: str) -> str:
    if "'" in s or "\\" in s:
        raise ValueError(f"not a plain CEL string literal: {s}")
    return s


def not_a_flag(field: str, what: str) -> list[dict[str, str]]:
    """vLLM's parser reads an argument starting with '-' as a flag, never as a name."""
    return [{"rule": "!self.startsWith('-')",
             "message": f"{field} must not start with '-': vLLM would read it as a flag; "
                        f"write {what}"}]


def _engine_args() -> dict[str, Any]:
    # One rule per owned flag, matching every spelling vLLM's parser reads as it (see
    # vllm_flags: prefixes, underscores, =value, dotted sub-keys, short aliases).
    rules = [(f"self.all(a, !a.matches('{_cel_literal(vllm_flags.spelling_regex(flag))}'))",
              vllm_flags.message(flag)) for flag in OWNED_FLAGS]
    return array(
        "Extra vLLM serve flags, passed through in order (e.g. --max-num-seqs=128). Flags the "
        "operator renders are rejected with the field to use instead, in every spelling vLLM "
        "accepts for them.",
        string("One command-line argument.", maxLength=MAX_ENGINE_ARG_LENGTH),
        maxItems=128,
        **{"x-kubernetes-validations": [{"rule": r, "message": m} for r, m in rules]},
    )


def _model_cache() -> dict[str, Any]:
    return obj(
        "Where model weights are cached (mounted at mountPath; HF_HOME points there). Set "
        "exactly one of emptyDir, persistentVolumeClaim, hostPath.",
        {
            "mountPath": string("Mount path in the vLLM container.",
                                default="/root/.cache/huggingface", pattern="^/.*"),
            "emptyDir": obj("A per-pod cache that is lost when the pod goes.", {
                "sizeLimit": int_or_string("Size limit, e.g. 200Gi."),
            }),
            "persistentVolumeClaim": obj("A shared cache on an existing PVC.", {
                "claimName": string("PVC name in the same namespace.", minLength=1),
                "readOnly": boolean("Mount read-only.", default=False),
            }, required=["claimName"]),
            "hostPath": obj("A directory on the node.", {
                "path": string("Absolute path on the node.", pattern="^/.*"),
            }, required=["path"]),
        },
        rules=[(
            "[has(self.emptyDir), has(self.persistentVolumeClaim), has(self.hostPath)]"
            ".filter(x, x).size() == 1",
            "modelCache needs exactly one of emptyDir, persistentVolumeClaim, hostPath",
        )],
    )


PAUSE_ANNOTATION = "specdecode.io/autotune-paused"


def _autotune() -> dict[str, Any]:
    return obj(
        "Draft-length autotuning from vLLM's acceptance metrics in Prometheus. Auto: the "
        "operator changes K (each change is a rolling restart); Recommend: it only writes "
        "the recommended K to status; Off: K stays at draftTokens.initial. The annotation "
        f"{PAUSE_ANNOTATION}: \"true\" pauses it.",
        {
            "mode": string("Autotuning mode.", enum=["Off", "Recommend", "Auto"],
                           default="Auto"),
            "policy": string(
                "goodput: pick the K with the best predicted tokens/s under the observed "
                "load, net of the restart cost. threshold: the published rule (acceptance "
                "below lowAcceptance -> K-step, above highAcceptance -> K+step).",
                enum=["goodput", "threshold"], default="goodput"),
            "intervalSeconds": integer("How often K is evaluated.", minimum=5,
                                       maximum=86_400, default=60),
            "windowSeconds": integer("Metrics window of one evaluation.", minimum=30,
                                     maximum=86_400, default=600),
            "cooldownSeconds": integer(
                "Minimum time between two K changes (each is a rolling restart).",
                minimum=0, maximum=604_800, default=1800),
            "maxStep": integer("Largest change of K in one decision.", minimum=1,
                               maximum=15, default=4),
            "maxChangesPerDay": integer("K changes allowed in any 24 hours.", minimum=0,
                                        maximum=1000, default=6),
            "allowOff": boolean(
                "Allow turning speculative decoding off (K=0) when load makes it a loss.",
                default=False),
            "minGain": number("Smallest predicted relative goodput gain (lower confidence "
                              "bound) worth a change, before the restart cost.",
                              minimum=0, maximum=1, default=0.02),
            "restartCostSeconds": integer(
                "Serving time lost per replica per change (model load); a rolling change "
                "of R replicas loses R x this of one replica's capacity, charged against "
                "the gain over the regime's expected remaining life.", minimum=0,
                maximum=86_400, default=300),
            "regimeSeconds": integer(
                "Time constant of the load history candidate Ks are priced against (the "
                "acceptance history uses half of it, a day-scale load history four times "
                "it). A change must earn its restart back over the regime's expected "
                "remaining life, so load swings much shorter than this never cause one. "
                "Below an hour only for compressed-time tests and demos.",
                minimum=60, maximum=604_800, default=10_800),
            "costModel": string(
                "Calibrated: fit this deployment's step cost from its vLLM latency "
                "histograms, with the shipped H200 table as the prior. Prior: use the "
                "table only (with its uncertainty).",
                enum=["Calibrated", "Prior"], default="Calibrated"),
            "explore": boolean(
                "Allow one verified try of a K next to the current one that was never "
                "measured, when the cost model cannot rule out a large gain there (at most "
                "every 6 h; rolled back unless it measured better).", default=True),
            "rejectCooldownSeconds": integer(
                "How long a K that verification found worse than the K before it is not "
                "tried again.", minimum=0, maximum=2_592_000, default=86_400),
            "verification": obj(
                "Verification of every change: the new K's measured per-request decode "
                "speed against the old K's at the same load; confidently worse is rolled "
                "back.", {
                    "afterSeconds": integer("Time the new K runs before the verdict.",
                                            minimum=0, maximum=86_400, default=1800),
                    "minWindows": integer("Windows at the new K before the verdict.",
                                          minimum=0, maximum=100, default=3),
                }, default={}),
            "canary": obj(
                "Canary mode (needs 2+ replicas and the goodput policy in Auto mode): a "
                "change of K first runs on one replica, a second Deployment named after "
                "the SDD with -canary, behind the same Service, and is judged side by "
                "side with the other replicas for verification.afterSeconds; it then "
                "rolls to all replicas (verified fleet-wide like any change) or, when "
                "confidently worse, is removed and its K rejected.", {
                    "enabled": boolean("Try each change on one replica first.",
                                       default=False),
                }, default={}),
            "evidence": obj("Evidence gate: no decision on less data than this.", {
                "minDrafts": integer("Drafts in the window.", minimum=0, default=2000),
                "minRequests": integer("Finished requests in the window.", minimum=0,
                                       default=20),
            }, default={}),
            "threshold": obj(
                "Parameters of the threshold policy.",
                {
                    "lowAcceptance": number("Acceptance rate below which K drops.",
                                            minimum=0, maximum=1, default=0.5),
                    "highAcceptance": number("Acceptance rate above which K grows.",
                                             minimum=0, maximum=1, default=0.85),
                    "step": integer("Change of K per decision.", minimum=1, maximum=8,
                                    default=2),
                },
                rules=[("!has(self.lowAcceptance) || !has(self.highAcceptance) || "
                        "self.lowAcceptance < self.highAcceptance",
                        "autotune.threshold.lowAcceptance must be less than highAcceptance")],
                default={},
            ),
        },
        default={},
    )


def spec_schema() -> dict[str, Any]:
    return obj(
        "Desired state of a model served by vLLM with speculative decoding.",
        {
            "model": _model(),
            "drafter": _drafter(),
            "draftTokens": _draft_tokens(),
            "workload": string(
                "Workload preset: the traffic this model mostly serves. Sets the initial K "
                "when draftTokens.initial is not set.",
                enum=["conversational", "summarization", "code", "longform", "custom"],
            ),
            "replicas": integer("Number of vLLM pods.", minimum=0, maximum=1000, default=1),
            "image": string("vLLM container image.", default=DEFAULT_IMAGE, minLength=1),
            "imagePullPolicy": string("Image pull policy.",
                                      enum=["Always", "IfNotPresent", "Never"]),
            "tensorParallelSize": integer("Tensor parallel size (--tensor-parallel-size).",
                                          minimum=1, maximum=64, default=1),
            "gpu": _gpu(),
            "resources": obj(
                "CPU and memory (and other) requests and limits of the vLLM container. GPU "
                "limits come from spec.gpu; do not set them here.",
                {"requests": quantity_map("Requests."), "limits": quantity_map("Limits.")},
            ),
            "engineArgs": _engine_args(),
            "env": opaque("Extra environment variables (core/v1 EnvVar).", "array"),
            "modelCache": _model_cache(),
            "nodeSelector": string_map("Node labels the pods must match."),
            "tolerations": opaque("Pod tolerations (core/v1 Toleration).", "array"),
            "affinity": opaque("Pod affinity (core/v1 Affinity)."),
            "priorityClassName": string("PriorityClass of the pods.", maxLength=253),
            "imagePullSecrets": array(
                "Secrets for pulling the image.",
                obj("A Secret reference.", {"name": string("Secret name.", minLength=1)},
                    required=["name"]),
            ),
            "serviceAccountName": string("ServiceAccount the pods run as.", maxLength=253),
            "podMetadata": obj("Extra labels and annotations for the pods.", {
                "labels": string_map("Pod labels."),
                "annotations": string_map("Pod annotations."),
            }),
            "service": obj("The Service in front of the pods.", {
                "type": string("Service type.", enum=["ClusterIP", "NodePort", "LoadBalancer"],
                               default="ClusterIP"),
                "port": integer("Port of the Service and of vLLM's HTTP server.",
                                minimum=1, maximum=65535, default=8000),
            }, default={}),
            "rollout": obj(
                "Rolling-update settings used for every change, including K changes. The "
                "default surges one pod (needs spare GPUs); set maxSurge 0 and maxUnavailable "
                "1 where no spare GPUs exist.",
                {
                    "maxSurge": int_or_string("Extra pods during a rollout.", default=1),
                    "maxUnavailable": int_or_string("Pods that may be down during a rollout.",
                                                    default=0),
                },
                rules=[(
                    "!has(self.maxSurge) || !has(self.maxUnavailable) || "
                    "!(self.maxSurge == 0 && self.maxUnavailable == 0)",
                    "rollout.maxSurge and rollout.maxUnavailable cannot both be 0",
                )],
                default={},
            ),
            "disruptionBudget": obj(
                "PodDisruptionBudget for voluntary disruptions (node drains).",
                {
                    "enabled": boolean("Create a PodDisruptionBudget.", default=True),
                    "maxUnavailable": int_or_string("Pods that may be disrupted at once.",
                                                    default=1),
                },
                default={},
            ),
            "autotune": _autotune(),
        },
        required=["model", "drafter"],
        rules=[
            (
                "self.drafter.method != 'none' || !has(self.draftTokens)",
                "draftTokens must not be set when drafter.method is none (speculative "
                "decoding off); remove draftTokens",
            ),
            (
                "!has(self.gpu) || !has(self.gpu.count) || "
                "self.gpu.count % self.tensorParallelSize == 0",
                "gpu.count must be a multiple of tensorParallelSize",
            ),
            (
                "!has(self.drafter.draftTensorParallelSize) || "
                "self.drafter.draftTensorParallelSize == 1 || "
                "self.drafter.draftTensorParallelSize == self.tensorParallelSize",
                "drafter.draftTensorParallelSize must be 1 or equal to tensorParallelSize",
            ),
        ],
    )


def _decision_schema() -> dict[str, Any]:
    return obj("A tuning decision.", {
        "time": string("When it was made.", format="date-time"),
        "from": integer("K before."),
        "to": integer("K after (equal to from when kept)."),
        "recommended": integer("K the policy recommended."),
        "policy": string("Policy that decided."),
        "costModel": string("Step-cost model the decision priced Ks with: Calibrated "
                            "(fitted to this deployment's latency series) or Prior (the "
                            "shipped H200 table)."),
        "reason": string("Why, in words."),
    })


def _tuner_state_schema() -> dict[str, Any]:
    """The parts of status.autotune the autotuner reads back (docs/autotuner.md)."""
    nums = array("Numbers.", number("A number."))
    quality = obj("How much evidence the model rests on.", {
        "points": integer("Calibration points (K x half-octave of verify width)."),
        "ks": array("Ks observed.", integer("K.")),
        "nLo": number("Smallest verify width per step observed (tokens)."),
        "nHi": number("Largest verify width per step observed (tokens)."),
        "rms": number("Relative RMS residual of the fit."),
    })
    params = obj("Step time T(B, k) = floor + perSeq B + perToken N + hinge max(0, N - knee)"
                 " + k (draftFloor + draftPerSeq B) (+ ripple x the H200 staircase), "
                 "N = B (k + 1) + prefill tokens per step, in milliseconds.", {
                     n: number(d) for n, d in (
                         ("floor", "Fixed cost of a step (ms)."),
                         ("perSeq", "Per running sequence (KV reads, ms)."),
                         ("perToken", "Per verified token (ms)."),
                         ("hinge", "Extra per token past the knee (ms)."),
                         ("draftFloor", "Fixed cost of one drafter step (ms)."),
                         ("draftPerSeq", "Per sequence of one drafter step (ms)."),
                         ("ripple", "Weight of the H200 table's staircase."),
                         ("knee", "Verify width where the step turns compute-bound."))})
    return {
        "costModel": obj(
            "The step-cost model the last decision used (for people and dashboards).", {
                "source": string("Calibrated: fitted to this deployment's vLLM latency "
                                 "series. Prior: the shipped H200 table.",
                                 enum=["Calibrated", "Prior"]),
                "reason": string("Why this model, in words."),
                "note": string("Whether the last window was used as calibration evidence, "
                               "and why not."),
                "params": params,
                "quality": quality,
                "atBatch": number("Decode batch (ITL-weighted running requests per step) "
                                  "of the last window."),
                "measuredStepMs": number("Mean step time measured in the last window (ms)."),
                "predictedStepMs": number("Step time the model predicts for the running K "
                                          "at atBatch (ms)."),
                "predictedTokensPerSecond": number(
                    "Generated tokens/s of all pods the model predicts for the running K at "
                    "the last window's load and acceptance."),
                "time": string("When the model was fitted.", format="date-time"),
            }),
        "calibration": obj("Step-time evidence and the fit (read back by the autotuner).", {
            "points": array("Calibration points [k, batch, verifyTokens, stepMs, weight, "
                            "epochSeconds], one per K and half-octave of verify width.",
                            nums, maxItems=64),
            "note": string("Whether the last window was used, and why not."),
            "fit": obj("The fitted model with its posterior.", {
                "source": string("fitted or prior.", enum=["fitted", "prior"]),
                "reason": string("Why, in words."),
                "knee": number("Knee (verify tokens per step)."),
                "theta": array("Parameters (floor, perSeq, perToken, hinge, draftFloor, "
                               "draftPerSeq, ripple).", number("A number."), maxItems=16),
                "covariance": array("Posterior covariance of theta (upper triangle, by "
                                    "rows).", number("A number."), maxItems=136),
                "quality": quality,
                "time": integer("When it was fitted (epoch seconds)."),
            }),
        }),
        "regime": obj("Load and acceptance histories candidate Ks are priced against.", {
            "time": integer("Last update (epoch seconds)."),
            "start": integer("First update (epoch seconds), or when the last load shift "
                             "began."),
            "shifted": boolean("start is a detected load shift: the regime's age is known "
                               "(probes are priced over it)."),
            "load": array("Exponentially weighted seconds at each running-requests grid "
                          "point (1, 1.5, 2, 3, 4, ... 512) over regimeSeconds.",
                          number("Seconds."), maxItems=64),
            "loadLong": array("The same over 4 x regimeSeconds.", number("Seconds."),
                              maxItems=64),
            "accepted": array("Exponentially weighted accepted drafts per position.",
                              number("Count."), maxItems=32),
            "drafts": array("Exponentially weighted drafts per position.", number("Count."),
                            maxItems=32),
            "shift": obj("A departure of the load from the history's level, under way: held "
                         "for a third of regimeSeconds, it restarts the load history.", {
                             "since": integer("When it started (epoch seconds)."),
                             "direction": integer("1: up, -1: down."),
                             "load": array("Seconds at each load grid point since then.",
                                           number("Seconds."), maxItems=64),
                         }),
            "mixShift": obj("A departure of acceptance (accepted tokens per draft) from the "
                            "history's level, under way: held for a third of "
                            "regimeSeconds, it restarts the acceptance history.", {
                                "since": integer("When it started (epoch seconds)."),
                                "direction": integer("1: up, -1: down."),
                                "accepted": array("Accepted tokens per position since then.",
                                                  number("Count."), maxItems=32),
                                "drafts": array("Drafts per position since then.",
                                                number("Count."), maxItems=32),
                            }),
        }),
        "verification": obj("The open check of the last change.", {
            "from": integer("K before the change."),
            "to": integer("K after the change."),
            "since": string("When the change was made.", format="date-time"),
            "predictedGain": number("Relative goodput gain the change predicted."),
            "probe": boolean("An exploratory change (kept only if measured better)."),
            "correction": number("What predictedGain added to the cost model's own "
                                 "prediction: the model's error on the step before, carried "
                                 "forward (follow-through)."),
            "samples": array("[epochSeconds, realized gain, gain predicted at the "
                             "window's batch] per window at the new K (newest 48).", nums,
                             maxItems=48),
            "predictedByBatch": array("[running requests, predicted gain] pairs: the "
                                      "decision's prediction as a function of the load, "
                                      "which each window is compared with.", nums,
                                      maxItems=32),
        }),
        "canary": obj("The canary under judgement (canary mode): the candidate K runs on "
                      "one replica while the others keep the current K.", {
            "from": integer("K of the other replicas."),
            "to": integer("K of the canary replica."),
            "since": string("When the canary was started.", format="date-time"),
            "predictedGain": number("Relative goodput gain the decision predicted."),
            "probe": boolean("An exploratory change (the fleet-wide verification after a "
                             "promotion keeps it only if measured better)."),
            "correction": number("What predictedGain added to the cost model's own "
                                 "prediction (follow-through)."),
            "samples": array("[epochSeconds, side-by-side gain, gain predicted at the "
                             "canary's batch] per window (newest 48).", nums, maxItems=48),
            "predictedByBatch": array("[running requests, predicted gain] pairs.", nums,
                                      maxItems=32),
        }),
        "lastProbeTime": string("When a never-measured K was last tried.",
                                format="date-time"),
        "rejected": array("Ks verification found worse than the K before them: not tried "
                          "again until their time.", obj("A rejected K.", {
                              "k": integer("K."),
                              "until": string("Not tried before.", format="date-time"),
                              "reason": string("The evidence, in words."),
                          }), maxItems=32),
        "outcomes": array("Predicted against realized gain of the last changes (at most "
                          "10).", obj("One verified change.", {
                              "time": string("When the change was made.",
                                             format="date-time"),
                              "from": integer("K before."),
                              "to": integer("K after."),
                              "predicted": number("Predicted relative gain."),
                              "realized": number("Realized relative gain under the load "
                                                 "history: the prediction plus the mean "
                                                 "error measured over the verification "
                                                 "windows (each at its own load)."),
                              "verdict": string("kept, rolled back or inconclusive."),
                              "correction": number("What predicted added to the cost "
                                                   "model's own prediction."),
                          }), maxItems=10),
    }


def status_schema() -> dict[str, Any]:
    condition = obj(
        "A condition (Kubernetes API conventions).",
        {
            "type": string("Condition type: Ready, Progressing, Degraded, Stalled, "
                           "MetricsAvailable."),
            "status": string("True, False or Unknown.", enum=["True", "False", "Unknown"]),
            "reason": string("CamelCase reason."),
            "message": string("Human-readable details."),
            "lastTransitionTime": string("When the status last changed.", format="date-time"),
            "observedGeneration": integer("Generation the condition was computed from."),
        },
        required=["type", "status"],
    )
    # The default makes an object the operator has not looked at yet read observedGeneration
    # 0 (the apiserver defaults status on every read, create included): kstatus (Flux's
    # health check) then reads it as InProgress, not as Current, which it reads for an
    # object with no status at all. docs/gitops.md, "Flux health".
    return obj(
        "Observed state, written by the operator only: the reconciler (field manager "
        "specdecode-operator) and the autotuner (specdecode-autotuner) each apply their own "
        "fields. Until the operator's first write it reads observedGeneration 0.",
        {
            "observedGeneration": integer("Last spec generation the operator acted on (0: "
                                          "not yet looked at)."),
            "replicas": integer("Pods of the SDD's Deployments (in canary mode the canary's "
                                "too)."),
            "readyReplicas": integer("Ready pods (the canary's included)."),
            "updatedReplicas": integer("Pods running their Deployment's current template."),
            "selector": string("Label selector of the pods (for the scale subresource)."),
            "draftTokens": obj("Draft length state.", {
                "current": integer("K the Deployment runs now (rendered by the operator from "
                                   "the initial K and autotune.target)."),
                "initial": integer("Initial K resolved from the spec (draftTokens.initial "
                                   "or the workload preset) that current started from."),
                "recommended": integer("K the autotuner recommends."),
                "canary": integer("K of the canary replica (canary mode), while the "
                                  "Deployment <name>-canary is rendered."),
            }),
            "acceptance": obj("Observed acceptance of draft tokens at the current K.", {
                "rate": string("Accepted / proposed draft tokens, e.g. 0.71."),
                "meanLength": string("Tokens per verify step including the bonus token."),
                "perPosition": array("Survival S_i: share of drafts whose first i tokens "
                                     "were all accepted, i = 1..K.", string("A fraction.")),
                "tokensPerSecond": string("Generated tokens/s over the window, all pods."),
                "predictedGain": string("Predicted goodput gain of the recommended K."),
                "windowSeconds": integer("Length of the window these come from."),
            }),
            "autotune": obj("The autotuner's persisted state.", {
                "target": obj(
                    "The K the autotuner wants. The operator renders it while the spec "
                    "still resolves to the initial K it was decided under and mode is not "
                    "Off (K 0 only while allowOff holds; clamped to the bounds).",
                    {
                        "k": integer("Draft length K the autotuner chose (0: speculation "
                                     "off)."),
                        "initial": integer("Initial K the spec resolved to when it was "
                                           "chosen."),
                        "time": string("When it was chosen.", format="date-time"),
                    },
                ),
                "lastChangeTime": string("When K last changed.", format="date-time"),
                "changes": array("K changes in the last 24 hours.",
                                 string("Time.", format="date-time"), maxItems=1000),
                "pending": obj("A recommendation awaiting confirmation.", {
                    "k": integer("Recommended K."),
                    "count": integer("Consecutive evaluations that recommended it."),
                    "since": string("When it was first recommended.", format="date-time"),
                }),
                "survival": array("Last measured survival profile (kept while off).",
                                  string("A fraction."), maxItems=16),
                "lastDecision": _decision_schema(),
                "history": array("Recent decisions that changed or recommended a K "
                                 "(newest last, at most 10).", _decision_schema(),
                                 maxItems=10),
                **_tuner_state_schema(),
            }),
            "conditions": array("Conditions.", condition,
                                **{"x-kubernetes-list-type": "map",
                                   "x-kubernetes-list-map-keys": ["type"]}),
        },
        default={"observedGeneration": 0},
    )


def crd() -> dict[str, Any]:
    """The CustomResourceDefinition manifest."""
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": CRD_NAME,
            "labels": {"app.kubernetes.io/name": "specdecode-operator",
                       "app.kubernetes.io/part-of": "specdecode-operator"},
        },
        "spec": {
            "group": GROUP,
            "names": {
                "kind": KIND,
                "listKind": f"{KIND}List",
                "plural": PLURAL,
                "singular": SINGULAR,
                "shortNames": SHORT_NAMES,
                "categories": ["all", "specdecode"],
            },
            "scope": "Namespaced",
            "versions": [{
                "name": VERSION,
                "served": True,
                "storage": True,
                "subresources": {
                    "status": {},
                    "scale": {
                        "specReplicasPath": ".spec.replicas",
                        "statusReplicasPath": ".status.replicas",
                        "labelSelectorPath": ".status.selector",
                    },
                },
                "additionalPrinterColumns": [
                    {"name": "Model", "type": "string", "jsonPath": ".spec.model.name"},
                    {"name": "Drafter", "type": "string", "jsonPath": ".spec.drafter.method"},
                    {"name": "K", "type": "integer", "jsonPath": ".status.draftTokens.current"},
                    {"name": "Acceptance", "type": "string",
                     "jsonPath": ".status.acceptance.rate"},
                    {"name": "Ready", "type": "string",
                     "jsonPath": ".status.conditions[?(@.type==\"Ready\")].status"},
                    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
                ],
                "schema": {"openAPIV3Schema": obj(
                    "SpecDecodeDeployment serves a model with vLLM speculative decoding and "
                    "tunes its draft length.",
                    {
                        "apiVersion": string("API version."),
                        "kind": string("Kind."),
                        "metadata": {"type": "object"},
                        "spec": spec_schema(),
                        "status": status_schema(),
                    },
                    required=["spec"],
                )},
            }],
        },
    }


def schema_defaults(schema: dict[str, Any], value: Any) -> Any:
    """Apply the schema's defaults to ``value`` the way the apiserver does (pure, no I/O).

    Defaults apply to absent properties of objects that are present; an absent object is not
    created unless it has a default itself.
    """
    if schema.get("type") != "object" or not isinstance(value, dict):
        return value
    out = copy.deepcopy(value)
    for name, prop in schema.get("properties", {}).items():
        if name not in out and "default" in prop:
            out[name] = copy.deepcopy(prop["default"])
        if name in out:
            out[name] = schema_defaults(prop, out[name])
    return out


def to_yaml() -> str:
    import yaml

    header = "# Generated by `make crds` from specdecode_operator/crd.py. Do not edit.\n"
    return header + yaml.safe_dump(crd(), sort_keys=False, width=100)


def _type(schema: dict[str, Any]) -> str:
    if schema.get("x-kubernetes-int-or-string"):
        return "int-or-string"
    t = str(schema.get("type", "object"))
    if t == "array":
        return f"array of {_type(schema.get('items') or {})}"
    return t


def _constraints(schema: dict[str, Any]) -> str:
    parts = []
    if "default" in schema and schema["default"] not in ({}, []):
        parts.append(f"default `{json.dumps(schema['default'])}`")
    lo, hi = schema.get("minimum"), schema.get("maximum")
    if lo is not None or hi is not None:
        parts.append(f"range {'' if lo is None else lo}..{'' if hi is None else hi}")
    if "enum" in schema:
        parts.append("one of " + ", ".join(f"`{v}`" for v in schema["enum"]))
    return "; ".join(parts)


def field_rows(schema: dict[str, Any] | None = None, path: str = "spec"
               ) -> list[tuple[str, str, str]]:
    """(field, type, description with default, range and allowed values) for every field of
    the spec schema, depth first in schema order: the reference table in docs/api.md."""
    schema = spec_schema() if schema is None else schema
    rows = []
    for name, sub in (schema.get("properties") or {}).items():
        p = f"{path}.{name}"
        desc = " ".join(str(sub.get("description", "")).split())
        extra = _constraints(sub)
        rows.append((p, _type(sub), f"{desc} {extra}".strip()))
        rows += field_rows(sub, p)
        items = sub.get("items") or {}
        if items.get("properties"):
            rows += field_rows(items, f"{p}[]")
    return rows


# docs/api.md ends with the generated table, after this heading and note.
FIELDS_START = ("## All spec fields\n\nGenerated from the schema (`python -m "
                "specdecode_operator.crd --fields`; `make crds` writes\nit here, and a unit "
                "test fails when it is stale).\n\n")


def fields_markdown() -> str:
    """docs/api.md's "All spec fields" table (``python -m specdecode_operator.crd --fields``;
    a unit test fails when the document differs)."""
    lines = ["| field | type | description |", "|---|---|---|"]
    bar = "\\|"   # a literal | inside a table cell
    for f, t, d in field_rows():
        lines.append(f"| `{f}` | {t} | {d.replace('|', bar)} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    import sys

    print(fields_markdown() if "--fields" in sys.argv[1:] else to_yaml(), end="")
