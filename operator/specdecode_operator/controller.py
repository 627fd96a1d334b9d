"""The reconcile loop's shell: read the cache, call the pure functions, write only what
changed.

Triggers (SDD events, child events, periodic resync) are coalesced per object: at most one
reconcile of an object runs at a time, and triggers that arrive meanwhile cause exactly one
more pass. Reads come from the watch-fed cache (``cache.py``); the only reads from the
apiserver are cluster facts held for ``discovery_ttl`` (the PodMonitor CRD, the nodes
offering a GPU resource).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from lightkube import ApiError

from . import api, conditions, draft_tokens, failures, metrics, names
from .cache import SDD_KIND, Cache
from .kube import Kube
from .reconcile import needs_apply
from .render import render

log = logging.getLogger(__name__)

Key = tuple[str, str]  # (namespace, name)



def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class Controller:
    kube: Kube
    cache: Cache
    # Seconds a cluster fact holds: the PodMonitor CRD's presence (or absence), and how many
    # nodes offer a GPU resource (asked only while a pod is unschedulable).
    discovery_ttl: float = 60.0
    # False on a standby replica (leader election): triggers are dropped until elected.
    active: bool = True
    # Reconciles in flight at once: hundreds of objects at start-up must queue here rather
    # than time out waiting for one of the API client's pooled connections.
    max_concurrent: int = 32
    # At most one reconcile per object runs (the tuner writes only its own status fields,
    # so it needs no lock with the reconciler).
    _running: dict[Key, asyncio.Task[None]] = field(default_factory=dict)
    _again: set[Key] = field(default_factory=set)
    _pod_monitor: tuple[float, bool] = (0.0, False)
    _nodes: dict[str, tuple[float, int]] = field(default_factory=dict)
    # Triggers held back until the cache has its initial listing (see cache.py).
    _pending: set[Key] = field(default_factory=set)
    # Consecutive failed reconciles per object, and their scheduled retries.
    _failures: dict[Key, int] = field(default_factory=dict)
    _retries: dict[Key, asyncio.TimerHandle] = field(default_factory=dict)
    _slots: asyncio.Semaphore = field(init=False)

    def __post_init__(self) -> None:
        self._slots = asyncio.Semaphore(self.max_concurrent)

    # ---- triggering ----------------------------------------------------------------------
    def trigger(self, namespace: str, name: str) -> None:
        if not self.active:
            return
        key = (namespace, name)
        if not self.cache.synced:
            self._pending.add(key)
            return
        if key in self._running:
            self._again.add(key)
            return
        self._running[key] = asyncio.create_task(self._loop(key), name=f"reconcile {key}")

    def cache_synced(self) -> None:
        """Kopf has listed every watched kind: run the triggers held back meanwhile."""
        if self.cache.synced:
            return
        self.cache.synced = True
        pending, self._pending = self._pending, set()
        for key in sorted(pending):
            self.trigger(*key)

    async def _loop(self, key: Key) -> None:
        try:
            while True:
                self._again.discard(key)
                await self.reconcile_key(*key)
                if key not in self._again:
                    break
        finally:
            self._running.pop(key, None)

    async def idle(self) -> None:
        """Wait until no reconcile is running (tests and shutdown)."""
        while self._running:
            await asyncio.gather(*list(self._running.values()), return_exceptions=True)

    # ---- one pass ------------------------------------------------------------------------
    async def reconcile_key(self, namespace: str, name: str) -> None:
        key = (namespace, name)
        async with self._slots:
            t0 = time.monotonic()
            sdd = None
            try:
                sdd = self.cache.sdd(namespace, name)
                if sdd is not None:  # deleted: garbage collection removes the children
                    await self.reconcile(sdd)
                self._succeeded(key)
            except Exception as e:
                metrics.RECONCILE_ERRORS.inc()
                log.exception("reconcile of %s/%s failed", namespace, name)
                await self._failed(key, sdd, e)
            finally:
                metrics.RECONCILE_SECONDS.observe(time.monotonic() - t0)

    def _succeeded(self, key: Key) -> None:
        self._failures.pop(key, None)
        handle = self._retries.pop(key, None)
        if handle:
            handle.cancel()

    async def _failed(self, key: Key, sdd: dict[str, Any] | None, exc: Exception) -> None:
        """Report the problem on the object (once per distinct problem) and retry later."""
        n = self._failures[key] = self._failures.get(key, 0) + 1
        delay = failures.retry_delay(n)
        if key not in self._retries:
            def fire(k: Key = key) -> None:
                self._retries.pop(k, None)
                self.trigger(*k)
            self._retries[key] = asyncio.get_running_loop().call_later(delay, fire)
        if sdd is None:
            return  # not even read: the API is away; the retry reports once it is back
        reason, message = failures.describe(exc)
        live = sdd.get("status")
        if not failures.is_new_problem(live, reason, message):
            return
        try:
            self.cache.wrote(SDD_KIND, await self.kube.apply_status(
                sdd, failures.degraded_status(live, reason, message, _now()),
                manager=api.OPERATOR_MANAGER))
            await self.kube.event(sdd, "Warning", reason, message)
        except Exception as e:  # the API may be the problem; the retry tries again
            log.warning("%s/%s: could not report %s: %s", *key, reason, e)

    async def _pod_monitor_available(self) -> bool:
        # The CRD rarely appears or goes: look again at most every discovery_ttl seconds.
        checked, available = self._pod_monitor
        if time.monotonic() - checked > self.discovery_ttl:
            available = await self.kube.pod_monitor_available()
            self._pod_monitor = (time.monotonic(), available)
        return available

    async def _nodes_offering(self, resource: str) -> int:
        checked, count = self._nodes.get(resource, (0.0, 0))
        if not checked or time.monotonic() - checked > self.discovery_ttl:
            count = await self.kube.nodes_offering(resource)
            self._nodes[resource] = (time.monotonic(), count)
        return count

    async def reconcile(self, sdd: dict[str, Any]) -> None:
        meta = sdd["metadata"]
        ns, name = meta["namespace"], meta["name"]
        if meta.get("deletionTimestamp"):
            return
        legacy = api.legacy_status(sdd)
        if legacy:
            migrated = await self._migrate_status(sdd)
            if migrated is None:
                return  # the object changed meanwhile: its watch event reconciles it again
            sdd = migrated
        view = api.SpecView.of(sdd)  # the spec, read and defaulted once
        spec, bounds = view.spec, view.bounds
        cur = draft_tokens.current_k(spec, sdd.get("status"))
        old_k = ((sdd.get("status") or {}).get("draftTokens") or {}).get("current")

        manifests = render(sdd, cur.k, spec=spec,
                           pod_monitor_available=await self._pod_monitor_available())
        apply_error = None
        deployment = None
        for m in manifests:
            live = self.cache.child(m["kind"], ns, m["metadata"]["name"])
            why = needs_apply(m, live)
            if why is not None:
                try:
                    live = await self.kube.apply(m)
                    self.cache.wrote(m["kind"], live)
                except ApiError as e:
                    apply_error = f"applying {m['kind']} {name}: {e.status.message}"
                    log.warning("%s/%s: %s", ns, name, apply_error)
                    continue
                verb = {"missing": "Created", "changed": "Updated", "drifted": "Reverted"}[why]
                detail = " (a hand edit of an owned field)" if why == "drifted" else ""
                await self.kube.event(sdd, "Normal", verb,
                                      f"{verb} {m['kind']} {name}{detail}")
                metrics.CHILD_WRITES.labels(kind=m["kind"], reason=why).inc()
            if m["kind"] == "Deployment":
                deployment = live

        pods = self.cache.pods_of(ns, names.label_value(name))
        gpu_resource = view.gpu_resource
        nodes_offering = None
        if conditions._unschedulable(pods):
            nodes_offering = await self._nodes_offering(gpu_resource)
        obs = conditions.Observed(deployment=deployment, pods=pods, gpu_resource=gpu_resource,
                                  nodes_offering_gpu=nodes_offering, apply_error=apply_error)
        new_status = conditions.status(
            sdd, desired_replicas=view.replicas, k=cur.k,
            initial_k=bounds.initial if bounds else None, obs=obs, now=_now(),
        )
        if cur.k is not None:
            metrics.CURRENT_K.labels(namespace=ns, name=name).set(cur.k)
        # A legacy object is applied once even when nothing changed: that releases the
        # reconciler's ownership of the autotuner's fields.
        if legacy or api.reconciler_differs(new_status, sdd.get("status")):
            self.cache.wrote(SDD_KIND, await self.kube.apply_status(
                sdd, new_status, manager=api.OPERATOR_MANAGER))
            await self._status_events(sdd, new_status, old_k, cur)

    async def _migrate_status(self, sdd: dict[str, Any]) -> dict[str, Any] | None:
        """Hand the autotuner's fields of a status written under one field manager to the
        autotuner's manager, as they are (with the K it chose as its target); None when the
        object changed since it was read."""
        meta = sdd["metadata"]
        fields = api.migration_status(sdd.get("status"))
        if not fields:
            return sdd
        try:
            out = await self.kube.apply_status(sdd, fields, manager=api.TUNER_MANAGER,
                                               resource_version=meta.get("resourceVersion"))
        except ApiError as e:
            if e.status.code == 409:
                return None
            raise
        log.info("%s/%s: status migrated to one field manager per writer",
                 meta["namespace"], meta["name"])
        self.cache.wrote(SDD_KIND, out)
        return out

    async def _status_events(
        self, sdd: dict[str, Any], new: dict[str, Any], old_k: Any,
        cur: draft_tokens.CurrentK,
    ) -> None:
        # A change to the autotuner's target was announced by the autotuner.
        if old_k is not None and cur.k is not None and int(old_k) != cur.k \
                and not cur.from_target:
            await self.kube.event(sdd, "Normal", "DraftTokensChanged",
                                  f"K {old_k} -> {cur.k}: {cur.reason}")
        old = {c["type"]: c for c in (sdd.get("status") or {}).get("conditions") or []}
        for c in new["conditions"]:
            if c["type"] != "Degraded":
                continue
            was = old.get("Degraded", {})
            if c["status"] == "True" and (was.get("status") != "True"
                                          or was.get("reason") != c["reason"]):
                await self.kube.event(sdd, "Warning", c["reason"], c["message"])
            elif c["status"] == "False" and was.get("status") == "True":
                await self.kube.event(sdd, "Normal", "Recovered", "no problems observed")
