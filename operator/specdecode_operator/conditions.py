"""Status of a SpecDecodeDeployment from what the operator observed: pure functions."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .api import LABEL_SDD, STALLED_REASONS
from .names import label_value


@dataclass(frozen=True)
class Observed:
    """What the shell read from the cluster for one SpecDecodeDeployment."""

    deployment: dict[str, Any] | None
    pods: list[dict[str, Any]]
    gpu_resource: str
    nodes_offering_gpu: int | None  # None: not checked (no pod was unschedulable)
    apply_error: str | None = None
    canary: dict[str, Any] | None = None    # the live canary Deployment (canary mode)
    canary_wanted: bool = False             # the autotuner runs a canary now


def _counts(dep: dict[str, Any] | None) -> tuple[int, int, int]:
    """(replicas, ready, updated) of a live Deployment (0s: absent or being deleted)."""
    if not dep or (dep.get("metadata") or {}).get("deletionTimestamp"):
        return 0, 0, 0
    st = dep.get("status") or {}
    return (int(st.get("replicas") or 0), int(st.get("readyReplicas") or 0),
            int(st.get("updatedReplicas") or 0))


def _condition(type_: str, status: bool, reason: str, message: str) -> dict[str, Any]:
    return {"type": type_, "status": "True" if status else "False", "reason": reason,
            "message": message}


def stalled(degraded: dict[str, Any]) -> dict[str, Any]:
    """The Stalled condition for a Degraded one, with its reason and message: True when the
    problem needs a change to go away (``api.STALLED_REASONS``), else False (no problem, or
    one a retry may clear). kstatus, which Flux's health check runs, reads Stalled=True as
    Failed instead of waiting out its timeout; Degraded is not a condition type it knows."""
    degraded_now = degraded.get("status") == "True"
    return _condition("Stalled", degraded_now and degraded.get("reason") in STALLED_REASONS,
                      str(degraded.get("reason") or ""), str(degraded.get("message") or ""))


def _unschedulable(pods: list[dict[str, Any]]) -> str | None:
    for p in pods:
        if (p.get("metadata") or {}).get("deletionTimestamp"):
            continue
        for c in (p.get("status") or {}).get("conditions") or []:
            if c.get("type") == "PodScheduled" and c.get("status") == "False" \
                    and c.get("reason") == "Unschedulable":
                return f"pod {p['metadata']['name']}: {c.get('message', 'unschedulable')}"
    return None


def conditions(sdd: dict[str, Any], desired_replicas: int, obs: Observed) -> list[dict[str, Any]]:
    dep = obs.deployment or {}
    st = dep.get("status") or {}
    gen = (dep.get("metadata") or {}).get("generation", 0)
    ready = int(st.get("readyReplicas") or 0)
    updated = int(st.get("updatedReplicas") or 0)
    total = int(st.get("replicas") or 0)
    dep_conds = {c["type"]: c for c in st.get("conditions") or []}
    synced = bool(dep) and int(st.get("observedGeneration") or 0) >= int(gen)

    rolling = (not synced) or updated < desired_replicas or total > updated
    deadline = dep_conds.get("Progressing", {})
    stuck = (deadline.get("status") == "False"
             and deadline.get("reason") == "ProgressDeadlineExceeded")

    # A running canary serves one of the SDD's replicas: it counts towards Ready, and until
    # its pod is ready the SDD is one replica short, as in a rolling restart.
    _, can_ready, _ = _counts(obs.canary)
    can_want = 1 if obs.canary_wanted else 0
    out = []
    if desired_replicas + can_want == 0:
        out.append(_condition("Ready", False, "ScaledToZero", "spec.replicas is 0"))
    elif ready >= desired_replicas and not rolling and can_ready >= can_want:
        out.append(_condition("Ready", True, "AllReplicasReady",
                              f"{ready + can_ready}/{desired_replicas + can_want} replicas "
                              "ready" + (" (one is the canary)" if can_want else "")))
    else:
        out.append(_condition(
            "Ready", False, "ReplicasNotReady",
            f"{ready + can_ready}/{desired_replicas + can_want} replicas ready, {updated} "
            "updated" + (f" (canary: {can_ready}/1 ready)" if can_want else "")))

    if stuck:
        out.append(_condition("Progressing", False, "ProgressDeadlineExceeded",
                              deadline.get("message", "rollout is stuck")))
    elif rolling:
        out.append(_condition("Progressing", True, "RollingUpdate",
                              f"{updated}/{desired_replicas} replicas run the current template"))
    else:
        out.append(_condition("Progressing", False, "RolloutComplete",
                              "all replicas run the current template"))

    unsched = _unschedulable(obs.pods)
    if obs.apply_error:
        out.append(_condition("Degraded", True, "ApplyFailed", obs.apply_error))
    elif unsched and obs.nodes_offering_gpu == 0:
        out.append(_condition(
            "Degraded", True, "NoGPUNodes",
            f"no node offers {obs.gpu_resource}: install the device plugin or set "
            f"spec.gpu.resourceName; {unsched}",
        ))
    elif unsched:
        out.append(_condition("Degraded", True, "Unschedulable", unsched))
    elif stuck:
        out.append(_condition("Degraded", True, "ProgressDeadlineExceeded",
                              deadline.get("message", "rollout is stuck")))
    else:
        out.append(_condition("Degraded", False, "AsExpected", "no problems observed"))
    out.append(stalled(out[-1]))
    gen_sdd = sdd["metadata"].get("generation")
    for c in out:
        c["observedGeneration"] = gen_sdd
    return out


def merge_transition_times(
    new: list[dict[str, Any]], old: list[dict[str, Any]], now: str
) -> list[dict[str, Any]]:
    """Keep lastTransitionTime where a condition's status did not change."""
    prev = {c["type"]: c for c in old or []}
    out = []
    for c in new:
        p = prev.get(c["type"])
        t = p.get("lastTransitionTime") if p and p.get("status") == c["status"] else None
        out.append({**c, "lastTransitionTime": t or now})
    return out


def status(
    sdd: dict[str, Any], *, desired_replicas: int, k: int | None, initial_k: int | None,
    obs: Observed, now: str,
) -> dict[str, Any]:
    """The reconciler's status fields (see ``api``): the whole set it applies."""
    old = sdd.get("status") or {}
    st = (obs.deployment or {}).get("status") or {}
    name = sdd["metadata"]["name"]
    # Pod counts over the main Deployment and a live canary one: the SDD's pods (its
    # scale subresource's status.replicas, and its selector, cover both).
    can = _counts(obs.canary)
    out: dict[str, Any] = {
        "observedGeneration": sdd["metadata"].get("generation"),
        "replicas": int(st.get("replicas") or 0) + can[0],
        "readyReplicas": int(st.get("readyReplicas") or 0) + can[1],
        "updatedReplicas": int(st.get("updatedReplicas") or 0) + can[2],
        "selector": f"{LABEL_SDD}={label_value(name)}",
        "conditions": merge_transition_times(
            conditions(sdd, desired_replicas, obs), old.get("conditions") or [], now),
    }
    if k is not None:
        dt = {"current": k}
        if initial_k is not None:
            dt["initial"] = initial_k
        out["draftTokens"] = dt
    return out
