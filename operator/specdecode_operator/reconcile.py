"""Deciding what to write: pure comparison of rendered manifests with live objects.

A reconcile with nothing to change must make zero write calls, so the shell applies a child
only when ``needs_apply`` says so: the live object lacks the render's hash (the render
changed) or a rendered field differs from the live one (someone edited it by hand).
"""

from __future__ import annotations

from typing import Any

from .api import ANNOTATION_HASH


def is_subset(desired: Any, live: Any) -> bool:
    """Every field set in ``desired`` has the same value in ``live``.

    Extra fields in ``live`` (apiserver defaults, other managers' fields) are ignored.
    Lists must have the same length and match element-wise.
    """
    if isinstance(desired, dict):
        # The apiserver drops empty lists and maps: absent equals empty.
        return isinstance(live, dict) and all(
            is_subset(v, live[k]) if k in live else v in ([], {}, None)
            for k, v in desired.items()
        )
    if isinstance(desired, list):
        return isinstance(live, list) and len(desired) == len(live) and all(
            is_subset(d, lv) for d, lv in zip(desired, live, strict=True)
        )
    if isinstance(desired, bool) or isinstance(live, bool):
        return desired is live  # True == 1 in Python, not in Kubernetes
    return bool(desired == live)


def _owned_view(manifest: dict[str, Any]) -> dict[str, Any]:
    """The parts of a manifest the apiserver keeps as written (no status, no metadata noise)."""
    meta = manifest["metadata"]
    view = {k: v for k, v in manifest.items() if k not in ("metadata", "status")}
    view["metadata"] = {k: meta[k] for k in ("labels", "annotations", "ownerReferences")
                        if k in meta}
    return view


def needs_apply(desired: dict[str, Any], live: dict[str, Any] | None) -> str | None:
    """Why ``desired`` must be applied, or None when the live object already matches."""
    if live is None:
        return "missing"
    live_hash = ((live.get("metadata") or {}).get("annotations") or {}).get(ANNOTATION_HASH)
    if live_hash != desired["metadata"]["annotations"][ANNOTATION_HASH]:
        return "changed"
    if not is_subset(_owned_view(desired), live):
        return "drifted"
    return None
