"""Kopf registrations: every trigger funnels into ``Controller.trigger``.

Only event handlers and a startup task are used, so Kopf stores nothing on the user's object
(no progress annotations, no finalizers): GitOps tools see no drift.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import time
from collections.abc import Iterator
from typing import Any

import kopf

from . import crd, leader
from .autotune.loop import Tuner
from .controller import Controller
from .kube import Kube
from .names import sdd_name
from .render import LABEL_SDD, MANAGER
from .watchdog import Watchdog

log = logging.getLogger(__name__)

RESYNC_SECONDS = float(os.environ.get("SPECDECODE_RESYNC_SECONDS", "60"))
CHILD_FILTER = {"app.kubernetes.io/managed-by": MANAGER, LABEL_SDD: kopf.PRESENT}

_controller: Controller | None = None
_watchdog = Watchdog(resync_seconds=RESYNC_SECONDS, started=time.monotonic())


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


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    global _controller
    settings.posting.enabled = False  # we post our own Events, only for real changes
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.networking.error_backoffs = _Backoffs()
    kube = Kube.from_env(os.environ.get("KUBECONFIG") or None)
    ctl = _controller = Controller(kube, active=not leader.ENABLED)

    async def act() -> None:
        """Start reconciling and tuning (at once, or when this replica is elected)."""
        ctl.active = True
        memo["resync"] = asyncio.create_task(_resync_forever(ctl, first_now=leader.ENABLED))
        memo["tuner"] = asyncio.create_task(Tuner.from_env(kube).run_forever())

    if leader.ENABLED:
        memo["leader"] = asyncio.create_task(leader.Elector(kube.client).run(act))
    else:
        await act()


@kopf.on.probe(id="watchdog")
async def watchdog(memo: kopf.Memo, **_: Any) -> str:
    """Liveness: raising makes Kopf's endpoint answer 500 (the kubelet restarts the pod)."""
    task = memo.get("resync")
    if not controller().active:
        return "standby"
    if task is not None and task.done():
        raise kopf.PermanentError("the periodic resync loop has ended")
    problem = _watchdog.problem(time.monotonic(), await controller().kube.api_answers())
    if problem:
        raise kopf.PermanentError(problem)
    return "ok"


@kopf.on.cleanup()
async def cleanup(memo: kopf.Memo, **_: Any) -> None:
    for name in ("leader", "resync", "tuner"):
        task = memo.get(name)
        if task:
            task.cancel()
    if _controller is not None:
        await _controller.idle()
        await _controller.kube.close()


async def _resync_forever(ctl: Controller, first_now: bool = False) -> None:
    """Level-based safety net: revisit every object periodically, whatever events were lost.
    ``first_now``: a replica that just took over visits everything at once."""
    scope = [n for n in os.environ.get("SPECDECODE_NAMESPACES", "").split(",") if n] or [None]
    while True:
        if not first_now:
            await asyncio.sleep(RESYNC_SECONDS)
        first_now = False
        try:
            for namespace in scope:
                listed = await ctl.kube.list_sdds(namespace)
                for sdd in listed:
                    ctl.trigger(sdd["metadata"]["namespace"], sdd["metadata"]["name"])
                _watchdog.listed(time.monotonic(), {
                    (o["metadata"]["namespace"], o["metadata"]["name"]):
                        o["metadata"].get("resourceVersion", "") for o in listed})
        except Exception:  # keep the loop alive; the next round tries again
            log.exception("periodic resync failed")


@kopf.on.event(crd.GROUP, crd.VERSION, crd.PLURAL)
async def sdd_event(event: dict[str, Any], name: str, namespace: str, **_: Any) -> None:
    _watchdog.saw_event((namespace, name),
                        ((event.get("object") or {}).get("metadata") or {}).get("resourceVersion"))
    if event.get("type") == "DELETED":
        return
    controller().trigger(namespace, name)


def _child_event(labels: dict[str, str], namespace: str, event: dict[str, Any],
                 annotations: dict[str, str] | None = None) -> None:
    # A long SDD name is annotated in full; its label holds a short form (names.py).
    owner = sdd_name(labels, annotations or {}, LABEL_SDD)
    if owner:
        controller().trigger(namespace, owner)


@kopf.on.event("apps", "v1", "deployments", labels=CHILD_FILTER)
async def deployment_event(labels: dict[str, str], namespace: str, event: dict[str, Any],
                           annotations: dict[str, str], **_: Any) -> None:
    _child_event(labels, namespace, event, annotations)


@kopf.on.event("v1", "services", labels=CHILD_FILTER)
async def service_event(labels: dict[str, str], namespace: str, event: dict[str, Any],
                        annotations: dict[str, str], **_: Any) -> None:
    _child_event(labels, namespace, event, annotations)


@kopf.on.event("policy", "v1", "poddisruptionbudgets", labels=CHILD_FILTER)
async def pdb_event(labels: dict[str, str], namespace: str, event: dict[str, Any],
                    annotations: dict[str, str], **_: Any) -> None:
    _child_event(labels, namespace, event, annotations)


@kopf.on.event("v1", "pods", labels=CHILD_FILTER)
async def pod_event(labels: dict[str, str], namespace: str, event: dict[str, Any],
                    annotations: dict[str, str], **_: Any) -> None:
    _child_event(labels, namespace, event, annotations)
