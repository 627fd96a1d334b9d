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

from . import api, conditions, failures, metrics, names, plan
from .cache import SDD_KIND, Cache
from .kube import Kube

log = logging.getLogger(__name__)

Key = tuple[str, str]  # (namespace, name)
CHILD_KINDS = ("Deployment", "Service", "PodDisruptionBudget", "PodMonitor")



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
    _facts_lock: asyncio.Lock = field(init=False)

    def __post_init__(self) -> None:
        self._slots = asyncio.Semaphore(self.max_concurrent)
        self._facts_lock = asyncio.Lock()

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
            return  # gone from the cache: deleted meanwhile
        reason, message = failures.describe(exc)
        live, gen = sdd.get("status"), sdd["metadata"].get("generation")
        if not failures.is_new_problem(live, reason, message, gen):
            return
        try:
            self.cache.wrote(SDD_KIND, await self.kube.apply_status(
                sdd, failures.degraded_status(live, reason, message, _now(), gen),
                manager=api.OPERATOR_MANAGER))
            await self.kube.event(sdd, "Warning", reason, message)
        except Exception as e:  # the API may be the problem; the retry tries again
            log.warning("%s/%s: could not report %s: %s", *key, reason, e)

    async def _pod_monitor_available(self) -> bool:
        # The CRD rarely appears or goes: look again at most every discovery_ttl seconds.
        # The reconciles of a resync run at once: one asks, the others wait for its answer.
        async with self._facts_lock:
            checked, available = self._pod_monitor
            if time.monotonic() - checked > self.discovery_ttl:
                available = await self.kube.pod_monitor_available()
                self._pod_monitor = (time.monotonic(), available)
        return available

    async def _nodes_offering(self, resource: str) -> int:
        async with self._facts_lock:
            checked, count = self._nodes.get(resource, (0.0, 0))
            if not checked or time.monotonic() - checked > self.discovery_ttl:
                count = await self.kube.nodes_offering(resource)
                self._nodes[resource] = (time.monotonic(), count)
        return count

    async def _observe(self, sdd: dict[str, Any], view: api.SpecView,
                       apply_error: str | None = None) -> plan.Observation:
        meta = sdd["metadata"]
        ns, name = meta["namespace"], meta["name"]
        child = names.child_name(name)
        children = {kind: self.cache.child(kind, ns, names.service_name(name)
                                           if kind == "Service" else child)
                    for kind in CHILD_KINDS}
        canary = self.cache.child("Deployment", ns, names.canary_name(name))
        pods = self.cache.pods_of(ns, names.label_value(name))
        nodes = await self._nodes_offering(view.gpu_resource) \
            if conditions._unschedulable(pods) else None
        return plan.Observation(children=children, pods=pods,
                                pod_monitor_available=await self._pod_monitor_available(),
                                nodes_offering_gpu=nodes, now=_now(),
                                apply_error=apply_error, canary=canary)

    async def reconcile(self, sdd: dict[str, Any]) -> None:
        """Plan from the cache, execute the plan (plan.py says what and why)."""
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
        p = plan.plan(sdd, view, await self._observe(sdd, view), legacy=legacy)
        if p.applies or p.deletes:
            apply_error = None
            for a in p.applies:
                try:
                    self.cache.wrote(a.kind, await self.kube.apply(a.manifest))
                except ApiError as e:
                    apply_error = f"applying {a.kind} {name}: {e.status.message}"
                    log.warning("%s/%s: %s", ns, name, apply_error)
                    continue
                ev = a.event(name)
                await self.kube.event(sdd, ev.type, ev.reason, ev.message)
                metrics.CHILD_WRITES.labels(kind=a.kind, reason=a.reason).inc()
            for d in p.deletes:
                try:
                    gone = await self.kube.delete(d.kind, d.namespace, d.name)
                except ApiError as e:
                    apply_error = f"deleting {d.kind} {d.name}: {e.status.message}"
                    log.warning("%s/%s: %s", ns, name, apply_error)
                    continue
                if gone:   # not already deleted by an earlier pass the watch has not shown
                    dev = d.event()
                    await self.kube.event(sdd, dev.type, dev.reason, dev.message)
                    metrics.CHILD_WRITES.labels(kind=d.kind, reason="deleted").inc()
            # The status describes the children as applied: the cache holds the responses.
            p = plan.plan(sdd, view, await self._observe(sdd, view, apply_error),
                          legacy=legacy)
        if p.k is not None:
            metrics.CURRENT_K.labels(namespace=ns, name=name).set(p.k)
        if p.status is not None:
            self.cache.wrote(SDD_KIND, await self.kube.apply_status(
                sdd, p.status, manager=api.OPERATOR_MANAGER))
            for ev in p.events:
                await self.kube.event(sdd, ev.type, ev.reason, ev.message)

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
