"""Kopf registrations: every trigger funnels into ``Controller.trigger``.

Only event handlers and a startup task are used, so Kopf stores nothing on the user's object
(no progress annotations, no finalizers): GitOps tools see no drift. The configuration comes
in Kopf's memo (``memo.config``, set by ``__main__``); the startup handler puts the controller
there (``memo.controller``), where every handler finds it.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import kopf

from . import crd
from .api import LABEL_MANAGED_BY, LABEL_SDD, MANAGER
from .autotune.loop import Tuner
from .config import OperatorConfig
from .controller import Controller
from .kube import Kube

log = logging.getLogger(__name__)

CHILD_FILTER = {LABEL_MANAGED_BY: MANAGER, LABEL_SDD: kopf.PRESENT}


def _controller(memo: kopf.Memo) -> Controller:
    ctl = memo.get("controller")
    if ctl is None:
        raise RuntimeError("the operator has not started")
    return ctl  # type: ignore[no-any-return]


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    config = memo.get("config")
    if not isinstance(config, OperatorConfig):
        raise RuntimeError("no operator configuration in Kopf's memo: start the operator with "
                           "`python -m specdecode_operator` (or `specdecode-operator`)")
    settings.posting.enabled = False  # we post our own Events, only for real changes
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.networking.error_backoffs = [1, 2, 5, 10]
    kube = Kube.from_env(config.kubeconfig)
    ctl = Controller(kube, discovery_ttl=config.discovery_ttl)
    memo["controller"] = ctl
    memo["resync"] = asyncio.create_task(_resync_forever(ctl, config))
    memo["tuner"] = asyncio.create_task(Tuner.from_config(kube, config).run_forever())


@kopf.on.cleanup()
async def cleanup(memo: kopf.Memo, **_: Any) -> None:
    for name in ("resync", "tuner"):
        task = memo.get(name)
        if task:
            task.cancel()
    ctl = memo.get("controller")
    if ctl is not None:
        await ctl.idle()
        await ctl.kube.close()


async def _resync_forever(ctl: Controller, config: OperatorConfig) -> None:
    """Level-based safety net: revisit every object periodically, whatever events were lost."""
    while True:
        await asyncio.sleep(config.resync_seconds)
        try:
            for namespace in config.scope:
                for sdd in await ctl.kube.list_sdds(namespace):
                    ctl.trigger(sdd["metadata"]["namespace"], sdd["metadata"]["name"])
        except Exception:  # keep the loop alive; the next round tries again
            log.exception("periodic resync failed")


@kopf.on.event(crd.GROUP, crd.VERSION, crd.PLURAL)
async def sdd_event(event: dict[str, Any], name: str, namespace: str, memo: kopf.Memo,
                    **_: Any) -> None:
    if event.get("type") == "DELETED":
        return
    _controller(memo).trigger(namespace, name)


def _child_event(labels: dict[str, str], namespace: str, memo: kopf.Memo) -> None:
    owner = labels.get(LABEL_SDD)
    if owner:
        _controller(memo).trigger(namespace, owner)


@kopf.on.event("apps", "v1", "deployments", labels=CHILD_FILTER)
async def deployment_event(labels: dict[str, str], namespace: str, memo: kopf.Memo,
                           **_: Any) -> None:
    _child_event(labels, namespace, memo)


@kopf.on.event("v1", "services", labels=CHILD_FILTER)
async def service_event(labels: dict[str, str], namespace: str, memo: kopf.Memo,
                        **_: Any) -> None:
    _child_event(labels, namespace, memo)


@kopf.on.event("policy", "v1", "poddisruptionbudgets", labels=CHILD_FILTER)
async def pdb_event(labels: dict[str, str], namespace: str, memo: kopf.Memo,
                    **_: Any) -> None:
    _child_event(labels, namespace, memo)


@kopf.on.event("v1", "pods", labels=CHILD_FILTER)
async def pod_event(labels: dict[str, str], namespace: str, memo: kopf.Memo,
                    **_: Any) -> None:
    _child_event(labels, namespace, memo)
