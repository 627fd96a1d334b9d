"""Kopf registrations: every trigger funnels into ``Controller.trigger``.

Kopf's indices are the reconcile's cache (``cache.py``): one per kind, fed by the watches
Kopf holds for the event handlers below (SDDs, children, pods), so a reconcile reads nothing
from the apiserver. Kopf runs no handler before every index has its initial listing.

Only event handlers and a startup task are used, so Kopf stores nothing on the user's object
(no progress annotations, no finalizers): GitOps tools see no drift. The configuration comes
in Kopf's memo (``memo.config``, set by ``__main__``); the startup handler puts the controller
and the liveness watchdog there (``memo.controller``, ``memo.watchdog``), where every handler
finds them.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Iterator
from typing import Any

import kopf

from . import crd, leader
from .api import LABEL_MANAGED_BY, LABEL_SDD, MANAGER
from .autotune.loop import Tuner
from .cache import SDD_KIND, Cache
from .config import OperatorConfig
from .controller import Controller
from .kube import Kube
from .names import sdd_name
from .watchdog import Watchdog

log = logging.getLogger(__name__)

CHILD_FILTER = {LABEL_MANAGED_BY: MANAGER, LABEL_SDD: kopf.PRESENT}


class _Backoffs:
    """Kopf's API retry delays: 1, 2, 5, then every 10 s for ever. A finite list makes Kopf
    give up (and stop watching) when the API server is away longer than its sum, e.g. its
    503s while a restarted apiserver installs its paths."""

    def __iter__(self) -> Iterator[float]:
        yield from (1, 2, 5)
        yield from itertools.repeat(10)


def controller() -> Controller:
    if _controller is None:
        raise RuntimeError("the operator has not started")
    return _controller


def _controller(memo: kopf.Memo) -> Controller:
    ctl = memo.get("controller")
    if ctl is None:
        raise RuntimeError("the operator has not started")
    return ctl  # type: ignore[no-any-return]


def _watchdog(memo: kopf.Memo) -> Watchdog:
    return memo["watchdog"]  # type: ignore[no-any-return]


# ---- the cache: Kopf indices ---------------------------------------------------------------
Entry = dict[tuple[str, str], dict[str, Any]]


def _ours(body: kopf.Body) -> bool:
    """A child of an SDD: our labels, or (labels edited away) an SDD owner reference, so a
    hand edit of the labels reads as drift rather than as a missing child."""
    labels = body.get("metadata", {}).get("labels") or {}
    if labels.get(LABEL_MANAGED_BY) == MANAGER and LABEL_SDD in labels:
        return True
    return any(ref.get("kind") == crd.KIND and
               str(ref.get("apiVersion", "")).startswith(f"{crd.GROUP}/")
               for ref in body.get("metadata", {}).get("ownerReferences") or [])


def _child(namespace: str, name: str, body: kopf.Body) -> Entry:
    # {} (not None) drops an object that stopped being ours from the index.
    return {(namespace, name): dict(body)} if _ours(body) else {}


@kopf.index(crd.GROUP, crd.VERSION, crd.PLURAL)
def sdd_index(namespace: str, name: str, body: kopf.Body, **_: Any) -> Entry:
    return {(namespace, name): dict(body)}


@kopf.index("apps", "v1", "deployments")
def deployment_index(namespace: str, name: str, body: kopf.Body, **_: Any) -> Entry:
    return _child(namespace, name, body)


@kopf.index("v1", "services")
def service_index(namespace: str, name: str, body: kopf.Body, **_: Any) -> Entry:
    return _child(namespace, name, body)


@kopf.index("policy", "v1", "poddisruptionbudgets")
def pdb_index(namespace: str, name: str, body: kopf.Body, **_: Any) -> Entry:
    return _child(namespace, name, body)


@kopf.index("monitoring.coreos.com", "v1", "podmonitors")
def podmonitor_index(namespace: str, name: str, body: kopf.Body, **_: Any) -> Entry:
    return _child(namespace, name, body)


@kopf.index("v1", "pods", labels={LABEL_SDD: kopf.PRESENT})
def pod_index(namespace: str, labels: dict[str, str], body: kopf.Body, **_: Any) -> Entry:
    return {(namespace, labels[LABEL_SDD]): dict(body)}


def cache_of(indices: dict[str, Any]) -> Cache:
    """The controller's cache over Kopf's (live) indices, as handed to any handler."""
    return Cache(sdds=indices["sdd_index"], pods=indices["pod_index"], children={
        "Deployment": indices["deployment_index"], "Service": indices["service_index"],
        "PodDisruptionBudget": indices["pdb_index"],
        "PodMonitor": indices["podmonitor_index"]})


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **kwargs: Any) -> None:
    config = memo.get("config")
    if not isinstance(config, OperatorConfig):
        raise RuntimeError("no operator configuration in Kopf's memo: start the operator with "
                           "`python -m specdecode_operator` (or `specdecode-operator`)")
    settings.posting.enabled = False  # we post our own Events, only for real changes
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.networking.error_backoffs = _Backoffs()
    kube = Kube.from_env(config.kubeconfig)
    ctl = Controller(kube, cache_of(kwargs), discovery_ttl=config.discovery_ttl,
                     active=not config.leader.enabled,
                     max_concurrent=config.max_concurrent_reconciles)
    memo["controller"] = ctl
    memo["watchdog"] = Watchdog(resync_seconds=config.resync_seconds, started=time.monotonic())

    async def act() -> None:
        """Start reconciling and tuning (at once, or when this replica is elected)."""
        ctl.active = True
        memo["resync"] = asyncio.create_task(
            _resync_forever(ctl, config, memo["watchdog"], first_now=config.leader.enabled))
        memo["tuner"] = asyncio.create_task(Tuner.from_config(kube, config).run_forever())

    if config.leader.enabled:
        memo["leader"] = asyncio.create_task(
            leader.Elector(kube.client, config.leader).run(act))
    else:
        await act()


@kopf.on.probe(id="watchdog")
async def watchdog(memo: kopf.Memo, **_: Any) -> str:
    """Liveness: raising makes Kopf's endpoint answer 500 (the kubelet restarts the pod)."""
    task = memo.get("resync")
    ctl = _controller(memo)
    if not ctl.active:
        return "standby"
    if task is not None and task.done():
        raise kopf.PermanentError("the periodic resync loop has ended")
    problem = _watchdog(memo).problem(time.monotonic(), await ctl.kube.api_answers())
    if problem:
        raise kopf.PermanentError(problem)
    return "ok"


@kopf.on.cleanup()
async def cleanup(memo: kopf.Memo, **_: Any) -> None:
    for name in ("leader", "resync", "tuner"):
        task = memo.get(name)
        if task:
            task.cancel()
    ctl = memo.get("controller")
    if ctl is not None:
        await ctl.idle()
        await ctl.kube.close()


async def _resync_forever(ctl: Controller, config: OperatorConfig, dog: Watchdog,
                          first_now: bool = False) -> None:
    """Level-based safety net: revisit every object periodically, whatever events were lost.
    ``first_now``: a replica that just took over visits everything at once."""
    while True:
        if not first_now:
            await asyncio.sleep(config.resync_seconds)
        first_now = False
        try:
            for namespace in config.scope:
                listed = await ctl.kube.list_sdds(namespace)
                for sdd in listed:
                    ctl.trigger(sdd["metadata"]["namespace"], sdd["metadata"]["name"])
                dog.listed(time.monotonic(), {
                    (o["metadata"]["namespace"], o["metadata"]["name"]):
                        o["metadata"].get("resourceVersion", "") for o in listed})
        except Exception:  # keep the loop alive; the next round tries again
            log.exception("periodic resync failed")


@kopf.on.event(crd.GROUP, crd.VERSION, crd.PLURAL)
async def sdd_event(event: dict[str, Any], name: str, namespace: str, memo: kopf.Memo,
                    **_: Any) -> None:
    dog = memo.get("watchdog")
    if dog is not None:
        dog.saw_event((namespace, name),
                      ((event.get("object") or {}).get("metadata") or {}).get("resourceVersion"))
    ctl = _controller(memo)
    ctl.cache_synced()  # Kopf calls handlers only once every index has its initial listing
    if event.get("type") == "DELETED":
        _forget(ctl, SDD_KIND, event)
        return
    ctl.trigger(namespace, name)


def _forget(ctl: Controller, kind: str, event: dict[str, Any]) -> None:
    meta = (event.get("object") or {}).get("metadata") or {}
    ctl.cache.deleted(kind, meta.get("namespace", ""), meta.get("name", ""),
                      meta.get("resourceVersion"))


def _child_event(labels: dict[str, str], namespace: str, memo: kopf.Memo,
                 annotations: dict[str, str] | None = None, kind: str = "",
                 event: dict[str, Any] | None = None) -> None:
    ctl = _controller(memo)
    ctl.cache_synced()
    if kind and event and event.get("type") == "DELETED":
        _forget(ctl, kind, event)
    # A long SDD name is annotated in full; its label holds a short form (names.py).
    owner = sdd_name(labels, annotations or {}, LABEL_SDD)
    if owner:
        ctl.trigger(namespace, owner)


@kopf.on.event("apps", "v1", "deployments", labels=CHILD_FILTER)
async def deployment_event(labels: dict[str, str], namespace: str, annotations: dict[str, str],
                           memo: kopf.Memo, event: dict[str, Any], **_: Any) -> None:
    _child_event(labels, namespace, memo, annotations, "Deployment", event)


@kopf.on.event("v1", "services", labels=CHILD_FILTER)
async def service_event(labels: dict[str, str], namespace: str, annotations: dict[str, str],
                        memo: kopf.Memo, event: dict[str, Any], **_: Any) -> None:
    _child_event(labels, namespace, memo, annotations, "Service", event)


@kopf.on.event("policy", "v1", "poddisruptionbudgets", labels=CHILD_FILTER)
async def pdb_event(labels: dict[str, str], namespace: str, annotations: dict[str, str],
                    memo: kopf.Memo, event: dict[str, Any], **_: Any) -> None:
    _child_event(labels, namespace, memo, annotations, "PodDisruptionBudget", event)


@kopf.on.event("monitoring.coreos.com", "v1", "podmonitors", labels=CHILD_FILTER)
async def podmonitor_event(labels: dict[str, str], namespace: str,
                           annotations: dict[str, str], memo: kopf.Memo,
                           event: dict[str, Any], **_: Any) -> None:
    _child_event(labels, namespace, memo, annotations, "PodMonitor", event)


@kopf.on.event("v1", "pods", labels=CHILD_FILTER)
async def pod_event(labels: dict[str, str], namespace: str, annotations: dict[str, str],
                    memo: kopf.Memo, **_: Any) -> None:
    _child_event(labels, namespace, memo, annotations)
