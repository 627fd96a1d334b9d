"""What the operator knows of the cluster, from its watches: the read side of a reconcile.

A reconcile reads the SDD, its children and its pods from here, never from the apiserver, so
a converged operator makes O(1) requests per resync however many SDDs there are (issue 9.5).

The store is Kopf's indices (``handlers.py`` registers one per kind), fed by the watch
streams Kopf holds anyway. Kopf runs no handler until every index has its initial listing,
so a trigger from a watch event never sees a half-filled cache; ``synced`` records that
(the first handler call sets it) for the triggers that do not come from Kopf (the periodic
resync, a freshly elected leader), which the controller holds back until then.

A watch delivers the operator's own writes some time after the write returns. Until it has,
the object as the write returned it (``wrote``) is what a read sees, so the next reconcile
does not compare against the state before its own apply and apply again. The watch's copy
wins again once it is at least as new. "Newer" compares resourceVersions as integers (what
the etcd-backed apiserver gives out); if one is not an integer the watch's copy is taken.

No I/O; the Kopf layer fills it, the controller reads it.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

# Kopf's index shape: key -> the values of the objects that gave that key.
Index = Mapping[Any, Iterable[dict[str, Any]]]
SDD_KIND = "SpecDecodeDeployment"
Own = tuple[str, str, str]  # (kind, namespace, name)


def _rv(obj: Mapping[str, Any] | None) -> int | None:
    rv = ((obj or {}).get("metadata") or {}).get("resourceVersion")
    return int(rv) if isinstance(rv, str) and rv.isdigit() else None


def _first(index: Index, key: Any) -> dict[str, Any] | None:
    values = index.get(key)
    return next(iter(values), None) if values is not None else None


@dataclass
class Cache:
    sdds: Index                      # (namespace, name) -> [SDD]
    children: Mapping[str, Index]    # kind -> (namespace, name) -> [child]
    pods: Index                      # (namespace, the SDD label's value) -> [pod, ...]
    synced: bool = False
    _own: dict[Own, dict[str, Any]] = field(default_factory=dict)

    def sdd(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self._read(SDD_KIND, namespace, name, self.sdds)

    def child(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        index = self.children.get(kind)
        return self._read(kind, namespace, name, index if index is not None else {})

    def pods_of(self, namespace: str, label_value: str) -> list[dict[str, Any]]:
        return [copy.deepcopy(p) for p in self.pods.get((namespace, label_value)) or []]

    def wrote(self, kind: str, obj: dict[str, Any]) -> None:
        """The operator wrote ``obj`` (the apiserver's answer): read it until the watch has."""
        meta = obj.get("metadata") or {}
        if _rv(obj) is not None:
            self._own[(kind, meta.get("namespace", ""), meta["name"])] = obj

    def deleted(self, kind: str, namespace: str, name: str, resource_version: str | None
                ) -> None:
        """The watch delivered a deletion: forget an own write it is not older than."""
        key = (kind, namespace, name)
        own = self._own.get(key)
        if own is None:
            return
        gone = int(resource_version) if resource_version and resource_version.isdigit() \
            else None
        mine = _rv(own)
        if gone is None or mine is None or mine <= gone:
            del self._own[key]

    def _read(self, kind: str, namespace: str, name: str, index: Index
              ) -> dict[str, Any] | None:
        watched = _first(index, (namespace, name))
        own = self._own.get((kind, namespace, name))
        if own is not None:
            mine, seen = _rv(own), _rv(watched)
            if watched is None or (mine is not None and seen is not None and mine > seen):
                return copy.deepcopy(own)   # the watch has not delivered our write yet
            del self._own[(kind, namespace, name)]
        return copy.deepcopy(watched) if watched is not None else None
