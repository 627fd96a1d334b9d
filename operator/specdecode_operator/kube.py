"""Thin Kubernetes I/O for the operator: server-side apply, status apply, events, and the
few reads a reconcile does not take from the watch-fed cache (``cache.py``).

Everything here is a direct API call; decisions are made by the pure modules.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

from lightkube import ApiError, AsyncClient, KubeConfig
from lightkube.generic_resource import create_namespaced_resource
from lightkube.operators import exists
from lightkube.resources.apiextensions_v1 import CustomResourceDefinition
from lightkube.resources.apps_v1 import Deployment
from lightkube.resources.core_v1 import Event, Node, Pod, Service
from lightkube.resources.policy_v1 import PodDisruptionBudget
from lightkube.types import PatchType

from . import crd
from .api import LABEL_SDD, MANAGER
from .cache import Cache

log = logging.getLogger(__name__)

SDD = create_namespaced_resource(crd.GROUP, crd.VERSION, crd.KIND, crd.PLURAL)
PodMonitor = create_namespaced_resource("monitoring.coreos.com", "v1", "PodMonitor", "podmonitors")

KINDS: dict[str, Any] = {
    "Deployment": Deployment,
    "Service": Service,
    "PodDisruptionBudget": PodDisruptionBudget,
    "PodMonitor": PodMonitor,
}


def _to_dict(obj: Any) -> dict[str, Any]:
    return obj.to_dict() if hasattr(obj, "to_dict") else dict(obj)


class Kube:
    """The operator's API access. One instance per operator process."""

    def __init__(self, client: AsyncClient) -> None:
        self.client = client

    @classmethod
    def from_env(cls, kubeconfig: str | None = None) -> Kube:
        config = KubeConfig.from_file(kubeconfig) if kubeconfig else KubeConfig.from_env()
        return cls(AsyncClient(config=config, field_manager=MANAGER))

    async def close(self) -> None:
        await self.client.close()

    # ---- reads ---------------------------------------------------------------------------
    async def api_answers(self) -> bool:
        """True when the API server responds at all (any status: 404 and 403 count)."""
        try:
            await self.client.get(SDD, "specdecode-liveness-probe", namespace="default")
        except ApiError:
            return True
        except Exception:
            return False
        return True

    async def list_sdds(self, namespace: str | None = None) -> list[dict[str, Any]]:
        ns = namespace if namespace is not None else "*"
        return [_to_dict(o) async for o in self.client.list(SDD, namespace=ns)]

    async def snapshot(self, namespace: str | None = None) -> Cache:
        """A synced cache from one list of each kind (for a reconcile outside Kopf, e.g. a
        benchmark; the operator's cache is fed by Kopf's watches instead)."""
        ns = namespace if namespace is not None else "*"
        sdds = {(o["metadata"]["namespace"], o["metadata"]["name"]): [o]
                for o in await self.list_sdds(namespace)}
        children: dict[str, dict[tuple[str, str], list[dict[str, Any]]]] = {}
        for kind, res in KINDS.items():
            try:
                objs = [_to_dict(o) async for o in self.client.list(res, namespace=ns)]
            except ApiError as e:
                if e.status.code != 404:  # 404: no PodMonitor CRD
                    raise
                objs = []
            children[kind] = {(o["metadata"]["namespace"], o["metadata"]["name"]): [o]
                              for o in objs}
        pods: dict[tuple[str, str], list[dict[str, Any]]] = {}
        async for p in self.client.list(Pod, namespace=ns, labels={LABEL_SDD: exists()}):
            d = _to_dict(p)
            meta = d["metadata"]
            pods.setdefault((meta["namespace"], meta["labels"][LABEL_SDD]), []).append(d)
        return Cache(sdds=sdds, children=children, pods=pods, synced=True)

    async def nodes_offering(self, resource: str) -> int:
        """How many nodes advertise a non-zero allocatable ``resource``."""
        n = 0
        async for node in self.client.list(Node):
            alloc = (node.status.allocatable or {}) if node.status else {}
            if str(alloc.get(resource, "0")) not in ("0", ""):
                n += 1
        return n

    async def pod_monitor_available(self) -> bool:
        try:
            await self.client.get(CustomResourceDefinition, "podmonitors.monitoring.coreos.com")
        except ApiError as e:
            if e.status.code == 403:
                log.warning("no permission to read CRD podmonitors.monitoring.coreos.com: "
                            "PodMonitors are not created (grant get on "
                            "customresourcedefinitions)")
                return False
            if e.status.code == 404:
                return False
            raise
        return True

    # ---- writes --------------------------------------------------------------------------
    async def apply(self, manifest: dict[str, Any]) -> dict[str, Any]:
        kind = KINDS[manifest["kind"]]
        meta = manifest["metadata"]
        obj = await self.client.patch(
            kind, meta["name"], manifest, namespace=meta["namespace"],
            patch_type=PatchType.APPLY, field_manager=MANAGER, force=True,
        )
        return _to_dict(obj)

    async def delete(self, kind: str, namespace: str, name: str) -> bool:
        """Delete an owned object (its dependents by garbage collection); False when it was
        already gone."""
        try:
            await self.client.delete(KINDS[kind], name, namespace=namespace)
        except ApiError as e:
            if e.status.code == 404:
                return False
            raise
        return True

    async def apply_status(
        self, sdd: dict[str, Any], status: dict[str, Any], *, manager: str = MANAGER,
        resource_version: str | None = None,
    ) -> dict[str, Any]:
        """Server-side apply of the status fields ``manager`` owns; returns the object.

        Fields ``manager`` applied before and leaves out now are removed unless another
        manager owns them too. With ``resource_version`` the write fails with 409 if the
        object changed since it was read.
        """
        meta = sdd["metadata"]
        metadata: dict[str, Any] = {"name": meta["name"], "namespace": meta["namespace"]}
        if resource_version is not None:
            metadata["resourceVersion"] = resource_version
        body = {
            "apiVersion": f"{crd.GROUP}/{crd.VERSION}",
            "kind": crd.KIND,
            "metadata": metadata,
            "status": status,
        }
        obj = await self.client.patch(
            SDD.Status, meta["name"], body, namespace=meta["namespace"],
            patch_type=PatchType.APPLY, field_manager=manager, force=True,
        )
        return _to_dict(obj)

    async def event(self, sdd: dict[str, Any], type_: str, reason: str, message: str) -> None:
        meta = sdd["metadata"]
        now = dt.datetime.now(dt.UTC)
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
            "involvedObject": {
                "apiVersion": f"{crd.GROUP}/{crd.VERSION}", "kind": crd.KIND,
                "name": meta["name"], "namespace": meta["namespace"], "uid": meta["uid"],
            },
            "type": type_,
            "reason": reason,
            "message": message[:1024],
            "source": {"component": MANAGER},
            "reportingComponent": MANAGER,
            "reportingInstance": MANAGER,
            "firstTimestamp": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "lastTimestamp": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "count": 1,
        }
        try:
            await self.client.create(Event.from_dict(body), namespace=meta["namespace"])
        except ApiError as e:  # an event that cannot be posted must not fail the reconcile
            log.warning("could not post event %s on %s/%s: %s", reason, meta["namespace"],
                        meta["name"], e)
