"""The SpecDecodeDeployment API as the operator's code sees it: names, typed views of the spec,
and who writes which status field.

The spec is read and defaulted once per reconcile or evaluation (``SpecView.of``); defaults
come from the CRD schema in ``crd.py`` only.

Status has two writers, each applying only its own fields with server-side apply under its
own field manager (conditions are a map-list keyed by type and ``draftTokens`` is a granular
struct, so the apiserver merges the two owners field by field):

- the reconciler (``specdecode-operator``): ``observedGeneration``, ``replicas``,
  ``readyReplicas``, ``updatedReplicas``, ``selector``, ``draftTokens.current``,
  ``draftTokens.initial``, conditions Ready, Progressing, Degraded, Stalled;
- the autotuner (``specdecode-autotuner``): ``acceptance``, ``autotune`` (including
  ``autotune.target``, the K it wants), ``draftTokens.recommended``, condition
  MetricsAvailable.

Pure functions only.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from . import crd

# ---- names -----------------------------------------------------------------------------------
OPERATOR_MANAGER = "specdecode-operator"   # the reconciler's field manager (and the children's)
TUNER_MANAGER = "specdecode-autotuner"     # the autotuner's field manager (status only)

# ---- status ownership ------------------------------------------------------------------------
RECONCILER_KEYS = ("observedGeneration", "replicas", "readyReplicas", "updatedReplicas",
                   "selector")
RECONCILER_DRAFT_TOKENS = ("current", "initial", "canary")
RECONCILER_CONDITIONS = ("Ready", "Progressing", "Degraded", "Stalled")
# Degraded reasons that do not go away without a change (of the spec, the cluster's nodes or
# RBAC): the reconciler reports them as Stalled=True too, which kstatus (Flux's health check)
# reads as Failed. The others (APIError, ReconcileError) are retried with backoff and may pass.
STALLED_REASONS = frozenset({"InvalidSpec", "ApplyFailed", "NoGPUNodes", "Unschedulable",
                             "ProgressDeadlineExceeded"})
TUNER_KEYS = ("acceptance", "autotune")
TUNER_DRAFT_TOKENS = ("recommended",)
TUNER_CONDITION = "MetricsAvailable"

Status = dict[str, Any]


def _view(status: Status | None, keys: tuple[str, ...], dt_keys: tuple[str, ...],
          cond_types: tuple[str, ...]) -> Status:
    status = status or {}
    out: Status = {k: status[k] for k in keys if k in status}
    dt = {k: v for k, v in (status.get("draftTokens") or {}).items() if k in dt_keys}
    if dt:
        out["draftTokens"] = dt
    conds = sorted((c for c in status.get("conditions") or [] if c.get("type") in cond_types),
                   key=lambda c: str(c.get("type")))
    if conds:
        out["conditions"] = conds
    return out


def reconciler_view(status: Status | None) -> Status:
    """The part of ``status`` the reconciler owns (conditions sorted by type)."""
    return _view(status, RECONCILER_KEYS, RECONCILER_DRAFT_TOKENS, RECONCILER_CONDITIONS)


def tuner_view(status: Status | None) -> Status:
    """The part of ``status`` the autotuner owns (conditions sorted by type)."""
    return _view(status, TUNER_KEYS, TUNER_DRAFT_TOKENS, (TUNER_CONDITION,))


def reconciler_differs(applied: Status, live: Status | None) -> bool:
    """True when applying the reconciler's ``applied`` fields would change ``live``."""
    return reconciler_view(applied) != reconciler_view(live)


def tuner_differs(applied: Status, live: Status | None) -> bool:
    """True when applying the autotuner's ``applied`` fields would change ``live``."""
    return tuner_view(applied) != tuner_view(live)


# ---- the autotuner's target ------------------------------------------------------------------
@dataclass(frozen=True)
class Target:
    """``status.autotune.target``: the K the autotuner wants, and the initial K it was decided
    under (it applies only while the spec resolves to that initial K)."""

    k: int
    initial: int | None
    time: str | None = None

    @classmethod
    def from_status(cls, status: Status | None) -> Target | None:
        t = ((status or {}).get("autotune") or {}).get("target")
        if not isinstance(t, dict) or t.get("k") is None:
            return None
        initial = t.get("initial")
        return cls(int(t["k"]), None if initial is None else int(initial), t.get("time"))

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"k": self.k}
        if self.initial is not None:
            out["initial"] = self.initial
        if self.time is not None:
            out["time"] = self.time
        return out


def target(status: Status | None) -> dict[str, Any] | None:
    """``status.autotune.target`` as a dict, or None."""
    t = Target.from_status(status)
    return None if t is None else t.to_dict()


def with_legacy_target(status: Status | None) -> Status:
    """``status`` with ``autotune.target`` filled in from a status written before the split.

    Before the split the tuner wrote its K straight into ``draftTokens.current``; a current K
    that differs from the initial one it started from is such a choice. After the split the
    reconciler renders the initial K unless a target says otherwise, so that case cannot arise
    without a target.
    """
    status = dict(status or {})
    if target(status) is not None:
        return status
    dt = status.get("draftTokens") or {}
    cur, initial = dt.get("current"), dt.get("initial")
    if cur is None or initial is None or int(cur) == int(initial):
        return status
    at = dict(status.get("autotune") or {})
    at["target"] = Target(int(cur), int(initial), at.get("lastChangeTime") or None).to_dict()
    status["autotune"] = at
    return status


# ---- migration from one field manager for all of status --------------------------------------
def _owns_tuner_field(fields: dict[str, Any]) -> bool:
    st = fields.get("f:status") or {}
    if any(f"f:{k}" in st for k in TUNER_KEYS):
        return True
    if any(f"f:{k}" in (st.get("f:draftTokens") or {}) for k in TUNER_DRAFT_TOKENS):
        return True
    for key in st.get("f:conditions") or {}:
        if key.startswith("k:"):
            try:
                if json.loads(key[2:]).get("type") == TUNER_CONDITION:
                    return True
            except ValueError:
                continue
    return False


def legacy_status(sdd: dict[str, Any]) -> bool:
    """True when the reconciler's field manager still owns some of the autotuner's fields
    (status written by a version in which one manager owned all of it)."""
    for m in (sdd.get("metadata") or {}).get("managedFields") or []:
        if m.get("manager") == OPERATOR_MANAGER and m.get("subresource") == "status" \
                and _owns_tuner_field(m.get("fieldsV1") or {}):
            return True
    return False


def migration_status(status: Status | None) -> Status:
    """The autotuner's fields of a legacy ``status``, to apply under the autotuner's manager
    before the reconciler applies its narrower set (server-side apply removes fields their
    only manager stops sending)."""
    return tuner_view(with_legacy_target(status))


# ---- labels, annotations, defaults -----------------------------------------------------------
MANAGER = OPERATOR_MANAGER
LABEL_SDD = "specdecode.io/deployment"          # on every owned object and pod: the SDD's name
LABEL_K = "specdecode.io/draft-tokens"          # on pods: the K they run (metrics split by it)
LABEL_DRAFTER = "specdecode.io/drafter"
LABEL_CANARY = "specdecode.io/canary"            # on the canary Deployment and its pod: "true"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
ANNOTATION_HASH = "specdecode.io/rendered-hash"
ANNOTATION_SPEC_CONFIG = "specdecode.io/speculative-config"
PAUSE_ANNOTATION = crd.PAUSE_ANNOTATION         # "true" pauses the autotuner for one SDD

_SPEC_SCHEMA = crd.spec_schema()


def _schema(*path: str) -> dict[str, Any]:
    s = _SPEC_SCHEMA
    for name in path:
        s = s["properties"][name]
    return s


# Defaults live in the CRD schema only; these read them from there.
DEFAULT_GPU_RESOURCE: str = _schema("gpu", "resourceName")["default"]


def defaulted_spec(spec: dict[str, Any]) -> dict[str, Any]:
    """The spec as the apiserver stores it: schema defaults applied (idempotent)."""
    return crd.schema_defaults(_SPEC_SCHEMA, spec)


def _defaulted(path: str, value: dict[str, Any] | None) -> dict[str, Any]:
    """An optional object of the spec with its schema defaults, present or not."""
    return crd.schema_defaults(_schema(path), dict(value or {}))  # type: ignore[no-any-return]


# ---- typed views of the spec, read and defaulted once per reconcile or evaluation ------------
@dataclass(frozen=True)
class DraftBounds:
    initial: int
    min: int
    max: int

    def clamp(self, k: int) -> int:
        return max(self.min, min(self.max, k))


@dataclass(frozen=True)
class AutotuneSpec:
    mode: str             # Off, Recommend, Auto
    allow_off: bool
    interval_seconds: float
    window_seconds: int
    paused: bool          # the PAUSE_ANNOTATION is "true"


@dataclass(frozen=True)
class SpecView:
    """One SDD's spec as the operator acts on it."""

    spec: dict[str, Any]           # schema defaults applied (what render and Settings read)
    method: str                    # drafter.method; "none": speculation off
    bounds: DraftBounds | None     # None when speculation is off
    autotune: AutotuneSpec
    replicas: int
    gpu_resource: str

    @property
    def speculative(self) -> bool:
        return self.method != "none"

    @classmethod
    def of(cls, sdd: dict[str, Any]) -> SpecView:
        spec = defaulted_spec(sdd["spec"])
        annotations = (sdd.get("metadata") or {}).get("annotations") or {}
        at = spec["autotune"]
        return cls(
            spec=spec,
            method=spec["drafter"]["method"],
            bounds=bounds(spec),
            autotune=AutotuneSpec(
                mode=at["mode"], allow_off=bool(at["allowOff"]),
                interval_seconds=float(at["intervalSeconds"]),
                window_seconds=int(at["windowSeconds"]),
                paused=annotations.get(PAUSE_ANNOTATION) == "true"),
            replicas=int(spec["replicas"]),
            gpu_resource=(spec.get("gpu") or {}).get("resourceName", DEFAULT_GPU_RESOURCE),
        )


def bounds(spec: dict[str, Any]) -> DraftBounds | None:
    """K bounds and the resolved initial K of a defaulted spec; None when speculation is off.

    The initial K is draftTokens.initial, else the workload preset, clamped to [min, max].
    """
    if spec["drafter"]["method"] == "none":
        return None
    dt = _defaulted("draftTokens", spec.get("draftTokens"))
    lo, hi = int(dt["min"]), int(dt["max"])
    if "initial" in dt:
        initial = int(dt["initial"])
    else:
        initial = crd.PRESET_INITIAL_K.get(spec.get("workload", ""), crd.DEFAULT_INITIAL_K)
    return DraftBounds(initial=max(lo, min(hi, initial)), min=lo, max=hi)
