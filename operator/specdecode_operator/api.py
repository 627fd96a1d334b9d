"""The SpecDecodeDeployment API as the operator's code sees it: names, and who writes what.

Status has two writers, each applying only its own fields with server-side apply under its
own field manager (conditions are a map-list keyed by type and ``draftTokens`` is a granular
struct, so the apiserver merges the two owners field by field):

- the reconciler (``specdecode-operator``): ``observedGeneration``, ``replicas``,
  ``readyReplicas``, ``updatedReplicas``, ``selector``, ``draftTokens.current``,
  ``draftTokens.initial``, conditions Ready, Progressing, Degraded;
- the autotuner (``specdecode-autotuner``): ``acceptance``, ``autotune`` (including
  ``autotune.target``, the K it wants), ``draftTokens.recommended``, condition
  MetricsAvailable.

Pure functions only.
"""

from __future__ import annotations

import json
from typing import Any

# ---- names -----------------------------------------------------------------------------------
OPERATOR_MANAGER = "specdecode-operator"   # the reconciler's field manager (and the children's)
TUNER_MANAGER = "specdecode-autotuner"     # the autotuner's field manager (status only)

# ---- status ownership ------------------------------------------------------------------------
RECONCILER_KEYS = ("observedGeneration", "replicas", "readyReplicas", "updatedReplicas",
                   "selector")
RECONCILER_DRAFT_TOKENS = ("current", "initial")
RECONCILER_CONDITIONS = ("Ready", "Progressing", "Degraded")
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
def target(status: Status | None) -> dict[str, Any] | None:
    """``status.autotune.target``: the K the autotuner wants, and the initial K it was
    decided under (it applies only while the spec resolves to that initial K)."""
    t = ((status or {}).get("autotune") or {}).get("target")
    return t if isinstance(t, dict) and "k" in t else None


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
    t: dict[str, Any] = {"k": int(cur), "initial": int(initial)}
    if at.get("lastChangeTime"):
        t["time"] = at["lastChangeTime"]
    at["target"] = t
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
