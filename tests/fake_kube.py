"""An in-memory stand-in for the operator's Kubernetes port (``specdecode_operator.kube.Kube``)
for the fast middle tier: the shell's logic (coalescing, zero writes, the two status writers,
failures) in milliseconds. The real-plane tiers check that the real apiserver behaves so.

Status writes follow server-side apply's merge for this CRD's status: each field manager's
last applied fields are kept; top-level fields, the ``draftTokens`` struct's fields and the
``conditions`` entries (keyed by type) merge across managers, and a field a manager stops
sending goes unless another manager sent it too.

Reads go through the operator's real ``Cache`` over index views of the fake's objects (the
shape Kopf's indices have). By default the "watch" delivers at once; ``hold_watch()`` freezes
what the cache's indices show until ``deliver()``, to test reads that lag the operator's own
writes.
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from lightkube import ApiError
from lightkube.models import meta_v1

from specdecode_operator.api import LABEL_SDD
from specdecode_operator.cache import Cache

Key = tuple[str, str]
KINDS = ("Deployment", "Service", "PodDisruptionBudget", "PodMonitor")


class _IndexView(Mapping[Any, list[dict[str, Any]]]):
    """A Kopf-index-shaped view (key -> [objects]) computed from the fake's state."""

    def __init__(self, build: Callable[[], dict[Any, list[dict[str, Any]]]],
                 on_read: Callable[[Any], None] | None = None) -> None:
        self._build, self._on_read = build, on_read

    def __getitem__(self, key: Any) -> list[dict[str, Any]]:
        if self._on_read:
            self._on_read(key)
        return self._build()[key]

    def __iter__(self) -> Iterator[Any]:
        return iter(self._build())

    def __len__(self) -> int:
        return len(self._build())


def api_error(code: int, message: str) -> ApiError:
    return ApiError(status=meta_v1.Status(code=code, message=message))


def _merge_status(applied: list[dict[str, Any]]) -> dict[str, Any]:
    """Live status from each manager's applied status (in the order they were applied)."""
    out: dict[str, Any] = {}
    conds: dict[str, dict[str, Any]] = {}
    for st in applied:
        for k, v in st.items():
            if k == "draftTokens":
                out["draftTokens"] = {**out.get("draftTokens", {}), **v}
            elif k == "conditions":
                for c in v:
                    conds[c["type"]] = c
            else:
                out[k] = v
    if conds:
        out["conditions"] = list(conds.values())
    return copy.deepcopy(out)


@dataclass
class FakeKube:
    sdds: dict[Key, dict[str, Any]] = field(default_factory=dict)
    children: dict[tuple[str, str, str], dict[str, Any]] = field(default_factory=dict)
    pods: list[dict[str, Any]] = field(default_factory=list)
    gpu_nodes: int = 1
    pod_monitor_crd: bool = False
    fail_apply: dict[str, ApiError] = field(default_factory=dict)   # kind -> error to raise
    calls: list[tuple[str, ...]] = field(default_factory=list)      # (verb, what) in order
    events: list[tuple[str, str, str, str]] = field(default_factory=list)  # name, type, ...
    gate: asyncio.Event | None = None   # when set up, apply waits for it (tests block a pass)
    _status_by_manager: dict[Key, dict[str, dict[str, Any]]] = field(default_factory=dict)
    _rv: int = 0
    # What the watch has delivered, frozen by hold_watch(); None: everything, at once.
    _watched: tuple[Any, Any, Any] | None = None

    # ---- the watch-fed cache -------------------------------------------------------------
    def cache(self, synced: bool = True) -> Cache:
        """The operator's cache over what this fake's watch delivered."""
        return Cache(
            sdds=_IndexView(lambda: {k: [o] for k, o in self._seen()[0].items()},
                            lambda key: self.calls.append(("cache_sdd", key[1]))),
            children={kind: _IndexView(lambda kind=kind: {
                (ns, n): [o] for (k, ns, n), o in self._seen()[1].items() if k == kind})
                for kind in KINDS},
            pods=_IndexView(self._pods_by_label), synced=synced)

    def hold_watch(self) -> None:
        """From now on the cache shows what exists now, until deliver()."""
        self._watched = copy.deepcopy((self.sdds, self.children, self.pods))

    def deliver(self) -> None:
        self._watched = None

    def _seen(self) -> tuple[Any, Any, Any]:
        return self._watched if self._watched is not None else (
            self.sdds, self.children, self.pods)

    def _pods_by_label(self) -> dict[Any, list[dict[str, Any]]]:
        out: dict[Any, list[dict[str, Any]]] = {}
        for p in self._seen()[2]:
            label = (p["metadata"].get("labels") or {}).get(LABEL_SDD)
            if label:
                out.setdefault((p["metadata"]["namespace"], label), []).append(p)
        return out

    # ---- test helpers --------------------------------------------------------------------
    def add_sdd(self, name: str, spec: dict[str, Any], namespace: str = "ns",
                annotations: dict[str, str] | None = None) -> None:
        self._rv += 1
        self.sdds[(namespace, name)] = {
            "apiVersion": "specdecode.io/v1alpha1", "kind": "SpecDecodeDeployment",
            "metadata": {"name": name, "namespace": namespace, "uid": f"uid-{name}",
                         "generation": 1, "resourceVersion": str(self._rv),
                         "annotations": annotations or {}},
            "spec": copy.deepcopy(spec),
        }

    def writes(self) -> list[tuple[str, ...]]:
        return [c for c in self.calls if c[0] in ("apply", "apply_status", "event", "delete")]

    def status_of(self, name: str, namespace: str = "ns") -> dict[str, Any]:
        return copy.deepcopy(self.sdds[(namespace, name)].get("status") or {})

    def status_fields_of(self, manager: str, name: str, namespace: str = "ns"
                         ) -> dict[str, Any]:
        return copy.deepcopy(self._status_by_manager.get((namespace, name), {}).get(manager)
                             or {})

    # ---- reads ---------------------------------------------------------------------------
    async def list_sdds(self, namespace: str | None = None) -> list[dict[str, Any]]:
        self.calls.append(("list_sdds", namespace or "*"))
        return [copy.deepcopy(o) for (ns, _), o in sorted(self.sdds.items())
                if namespace is None or ns == namespace]

    async def nodes_offering(self, resource: str) -> int:
        self.calls.append(("nodes_offering", resource))
        return self.gpu_nodes

    async def pod_monitor_available(self) -> bool:
        self.calls.append(("pod_monitor_available",))
        await asyncio.sleep(0)   # a request: other reconciles run meanwhile
        return self.pod_monitor_crd

    # ---- writes --------------------------------------------------------------------------
    async def apply(self, manifest: dict[str, Any]) -> dict[str, Any]:
        kind, meta = manifest["kind"], manifest["metadata"]
        self.calls.append(("apply", kind))
        if self.gate is not None:
            await self.gate.wait()
        if kind in self.fail_apply:
            raise self.fail_apply[kind]
        key = (kind, meta["namespace"], meta["name"])
        live = copy.deepcopy(manifest)
        old = self.children.get(key)
        gen = int(((old or {}).get("metadata") or {}).get("generation", 0))
        changed = old is None or {k: v for k, v in old.items() if k != "status"} != {
            k: v for k, v in manifest.items() if k != "status"}
        live["metadata"]["generation"] = gen + 1 if changed else gen
        self._rv += 1
        live["metadata"]["resourceVersion"] = str(self._rv)
        if old and "status" in old:
            live["status"] = old["status"]
        self.children[key] = live
        return copy.deepcopy(live)

    async def delete(self, kind: str, namespace: str, name: str) -> bool:
        self.calls.append(("delete", kind))
        self._rv += 1
        return self.children.pop((kind, namespace, name), None) is not None

    async def apply_status(
        self, sdd: dict[str, Any], status: dict[str, Any], *, manager: str = "",
        resource_version: str | None = None,
    ) -> dict[str, Any]:
        meta = sdd["metadata"]
        key = (meta["namespace"], meta["name"])
        self.calls.append(("apply_status", manager))
        live = self.sdds.get(key)
        if live is None:
            raise api_error(404, "not found")
        if resource_version is not None and resource_version != \
                live["metadata"]["resourceVersion"]:
            raise api_error(409, "the object has been modified")
        by_manager = self._status_by_manager.setdefault(key, {})
        by_manager.pop(manager, None)   # re-inserted last: the latest apply wins shared fields
        by_manager[manager] = copy.deepcopy(status)
        new = _merge_status(list(by_manager.values()))
        if new != live.get("status"):
            live["status"] = new
            self._rv += 1
            live["metadata"]["resourceVersion"] = str(self._rv)
        return copy.deepcopy(live)

    async def event(self, sdd: dict[str, Any], type_: str, reason: str, message: str) -> None:
        self.calls.append(("event", reason))
        self.events.append((sdd["metadata"]["name"], type_, reason, message))

    async def close(self) -> None:
        pass


def pod(name: str, sdd: str, namespace: str = "ns", unschedulable: bool = False
        ) -> dict[str, Any]:
    conds = [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
              "message": "0/1 nodes are available: 1 Insufficient nvidia.com/gpu."}] \
        if unschedulable else []
    return {"metadata": {"name": name, "namespace": namespace, "labels": {LABEL_SDD: sdd}},
            "status": {"conditions": conds}}
