"""Which draft length K a SpecDecodeDeployment runs: pure functions of spec and status."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .api import DraftBounds, Target, bounds

__all__ = ["CurrentK", "DraftBounds", "bounds", "canary_k", "current_k", "speculative"]


def speculative(spec: dict[str, Any]) -> bool:
    return spec["drafter"]["method"] != "none"


@dataclass(frozen=True)
class CurrentK:
    k: int | None  # None: speculation off (method none); 0: turned off by the autotuner
    reason: str
    from_target: bool = False  # the autotuner's target (which posts its own event)


def current_k(spec: dict[str, Any], status: dict[str, Any] | None) -> CurrentK:
    """The K to render now (``spec`` defaulted): the autotuner's target or the initial K.

    ``status.autotune.target`` is the K the autotuner wants and the initial K it was decided
    under. It applies while the spec still resolves to that initial K (an explicit change of
    the initial K or of the preset wins over the tuner) and mode is not Off; bounds that moved
    clamp it; K 0 (speculation off) only while allowOff holds.
    """
    b = bounds(spec)
    if b is None:
        return CurrentK(None, "speculative decoding is off (drafter.method none)")
    at = spec["autotune"]
    t = Target.from_status(status)
    if at["mode"] == "Off":
        return CurrentK(b.initial, f"autotune is Off: K pinned to the initial {b.initial}")
    if t is None:
        return CurrentK(b.initial, f"initial K {b.initial}")
    if t.initial != b.initial:
        return CurrentK(b.initial, f"initial K {b.initial} from the spec (the autotuner's "
                                   f"target was chosen under initial K {t.initial})")
    k = t.k
    if k == 0:
        # The autotuner turned speculation off under load; only while allowOff holds.
        if at["allowOff"]:
            return CurrentK(0, "speculation off (chosen by the autotuner under load)", True)
        return CurrentK(b.initial, f"allowOff was withdrawn: back to the initial {b.initial}")
    if not b.min <= k <= b.max:
        c = b.clamp(k)
        return CurrentK(c, f"the autotuner's K {k} is outside [{b.min}, {b.max}]: clamped "
                           f"to {c}")
    return CurrentK(k, f"K {k} chosen by the autotuner", True)


def canary_k(spec: dict[str, Any], status: dict[str, Any] | None, current: CurrentK
             ) -> int | None:
    """The K of the canary replica to render (``spec`` defaulted), or None: no canary.

    ``status.autotune.canary`` is the canary the autotuner runs: the candidate K on one
    replica beside ``current``. It is rendered only while canary mode applies (enabled, 2+
    replicas, mode Auto), it was started from the K that runs now, and its K is allowed.
    """
    at = spec["autotune"]
    c = ((status or {}).get("autotune") or {}).get("canary")
    if current.k is None or not isinstance(c, dict) or at["mode"] != "Auto" or \
            not (at.get("canary") or {}).get("enabled") or int(spec["replicas"]) < 2:
        return None
    try:
        k_from, k_to = int(c["from"]), int(c["to"])
    except (KeyError, TypeError, ValueError):
        return None
    b = bounds(spec)
    if b is None or k_from != current.k or k_to == current.k:
        return None
    if k_to == 0:
        return 0 if at["allowOff"] else None
    return k_to if b.min <= k_to <= b.max else None
