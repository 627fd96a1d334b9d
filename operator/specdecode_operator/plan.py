"""One reconcile as data: what to apply and why, the status to apply, the events to post.

``plan`` is a pure function of the SDD, its spec view and what the cache shows of its
children and pods (``Observation``); the controller executes the plan and does nothing else
of its own. Creating, updating or reverting a child is an ``Apply`` with its reason and its
event; the reconciler's status is applied only when it differs from the live one, and its
events (a K change, a new problem, a recovery) are posted after it.

The status describes what was observed. When a plan has applies, the controller plans
again after executing them, from the cache, which then holds the apply responses (and with
the apply error, if one failed), so the status it writes describes the children as applied:
a Deployment whose generation the apply bumped reads as a rollout in progress.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from . import api, conditions, draft_tokens, names
from .reconcile import needs_apply
from .render import render

VERBS = {"missing": "Created", "changed": "Updated", "drifted": "Reverted"}


@dataclass(frozen=True)
class Event:
    type: str       # Normal | Warning
    reason: str
    message: str


@dataclass(frozen=True)
class Apply:
    manifest: dict[str, Any]
    reason: str     # missing | changed | drifted (reconcile.needs_apply)

    @property
    def kind(self) -> str:
        return str(self.manifest["kind"])

    def event(self, sdd_name: str) -> Event:
        verb = VERBS[self.reason]
        detail = " (a hand edit of an owned field)" if self.reason == "drifted" else ""
        return Event("Normal", verb, f"{verb} {self.kind} {sdd_name}{detail}")


@dataclass(frozen=True)
class Delete:
    """The one deletion the operator makes: its canary Deployment once the canary ended."""

    kind: str
    namespace: str
    name: str
    why: str

    def event(self) -> Event:
        return Event("Normal", "Deleted", f"Deleted {self.kind} {self.name}: {self.why}")


@dataclass(frozen=True)
class Observation:
    """What the cache and the cluster facts show for one SDD."""

    children: Mapping[str, dict[str, Any] | None]   # kind -> the live child, None: absent
    pods: list[dict[str, Any]]
    pod_monitor_available: bool
    nodes_offering_gpu: int | None   # None: not asked (no pod was unschedulable)
    now: str                          # for the conditions' lastTransitionTime
    apply_error: str | None = None    # an apply of this pass failed (re-planning after it)
    canary: dict[str, Any] | None = None   # the live canary Deployment (canary mode)


@dataclass(frozen=True)
class Plan:
    k: int | None                                     # the K rendered
    applies: tuple[Apply, ...] = ()
    status: dict[str, Any] | None = None              # None: the live status is current
    deletes: tuple[Delete, ...] = ()                  # after the applies
    events: tuple[Event, ...] = field(default=())     # after the status


def plan(sdd: dict[str, Any], view: api.SpecView, obs: Observation,
         *, legacy: bool = False) -> Plan:
    """The reconcile of ``sdd`` (``view``: its spec view). ``legacy``: the status was written
    by an earlier version, so it is applied once even unchanged (that releases the
    reconciler's ownership of the autotuner's fields)."""
    live_status = sdd.get("status")
    cur = draft_tokens.current_k(view.spec, live_status)
    canary = draft_tokens.canary_k(view.spec, live_status, cur)
    manifests = render(sdd, cur.k, spec=view.spec, canary_k=canary,
                       pod_monitor_available=obs.pod_monitor_available)
    canary_name = names.canary_name(sdd["metadata"]["name"])
    applies = []
    for m in manifests:
        is_canary = m["kind"] == "Deployment" and m["metadata"]["name"] == canary_name
        why = needs_apply(m, obs.canary if is_canary else obs.children.get(m["kind"]))
        if why is not None:
            applies.append(Apply(m, why))
    deletes = _canary_deletes(sdd, view, obs, canary, applies)

    observed = conditions.Observed(
        deployment=obs.children.get("Deployment"), pods=obs.pods,
        gpu_resource=view.gpu_resource, nodes_offering_gpu=obs.nodes_offering_gpu,
        apply_error=obs.apply_error, canary=obs.canary, canary_wanted=canary is not None)
    bounds = view.bounds
    status = conditions.status(
        sdd, desired_replicas=view.replicas - (1 if canary is not None else 0), k=cur.k,
        initial_k=bounds.initial if bounds else None, obs=observed, now=obs.now)
    if canary is not None and "draftTokens" in status:
        status["draftTokens"]["canary"] = canary
    if not legacy and not api.reconciler_differs(status, live_status):
        return Plan(k=cur.k, applies=tuple(applies), deletes=deletes)
    return Plan(k=cur.k, applies=tuple(applies), status=status, deletes=deletes,
                events=tuple(status_events(live_status, status, cur)))


def _rolled_out(dep: dict[str, Any] | None, replicas: int) -> bool:
    """The Deployment runs its current template on all ``replicas``, available, and no more."""
    if dep is None:
        return False
    st = dep.get("status") or {}
    gen = (dep.get("metadata") or {}).get("generation") or 0
    return int(st.get("observedGeneration") or -1) >= gen and \
        int(st.get("updatedReplicas") or 0) >= replicas and \
        int(st.get("availableReplicas") or 0) >= replicas and \
        int(st.get("replicas") or 0) <= replicas


def _canary_deletes(sdd: dict[str, Any], view: api.SpecView, obs: Observation,
                    canary: int | None, applies: list[Apply]) -> tuple[Delete, ...]:
    """Delete the canary Deployment once no canary is wanted and the main Deployment has
    taken its place: rolled out on every replica (so promoting or ending a canary never
    drops capacity), or at once when pods cannot be scheduled (the canary's GPU is then
    what the main pods wait for)."""
    live = obs.canary
    meta = sdd["metadata"]
    if canary is not None or live is None or (live.get("metadata") or {}).get(
            "deletionTimestamp"):
        return ()
    owners = (live.get("metadata") or {}).get("ownerReferences") or []
    if not any(o.get("uid") == meta.get("uid") for o in owners):
        return ()   # not this SDD's (a leftover of another object of the same name)
    main_pending = any(a.kind == "Deployment" and a.manifest["metadata"]["name"] !=
                       live["metadata"]["name"] for a in applies)
    stuck = conditions._unschedulable(obs.pods)
    if not stuck and (main_pending or not _rolled_out(obs.children.get("Deployment"),
                                                      view.replicas)):
        return ()
    why = ("pods are unschedulable: its GPU goes back to the main Deployment" if stuck
           else f"the canary ended and the main Deployment runs all {view.replicas} replicas")
    return (Delete("Deployment", meta["namespace"], live["metadata"]["name"], why),)


def status_events(old_status: dict[str, Any] | None, new: dict[str, Any],
                  cur: draft_tokens.CurrentK) -> list[Event]:
    """Events for a status change: a K change not made by the autotuner (which announces its
    own), a Degraded problem that is new, and a recovery from one."""
    out = []
    old_k = ((old_status or {}).get("draftTokens") or {}).get("current")
    if old_k is not None and cur.k is not None and int(old_k) != cur.k \
            and not cur.from_target:
        out.append(Event("Normal", "DraftTokensChanged", f"K {old_k} -> {cur.k}: {cur.reason}"))
    old = {c["type"]: c for c in (old_status or {}).get("conditions") or []}
    for c in new["conditions"]:
        if c["type"] != "Degraded":
            continue
        was = old.get("Degraded", {})
        if c["status"] == "True" and (was.get("status") != "True"
                                      or was.get("reason") != c["reason"]):
            out.append(Event("Warning", c["reason"], c["message"]))
        elif c["status"] == "False" and was.get("status") == "True":
            out.append(Event("Normal", "Recovered", "no problems observed"))
    return out
