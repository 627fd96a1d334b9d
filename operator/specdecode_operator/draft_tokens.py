"""Which draft length K a SpecDecodeDeployment runs: pure functions of spec and status."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .api import target
from .crd import DEFAULT_INITIAL_K, PRESET_INITIAL_K


@dataclass(frozen=True)
class DraftBounds:
    initial: int
    min: int
    max: int

    def clamp(self, k: int) -> int:
        return max(self.min, min(self.max, k))


def speculative(spec: dict[str, Any]) -> bool:
    return spec["drafter"]["method"] != "none"


def bounds(spec: dict[str, Any]) -> DraftBounds | None:
    """K bounds and initial K; None when speculation is off."""
    if not speculative(spec):
        return None
    dt = spec.get("draftTokens") or {}
    lo, hi = int(dt.get("min", 1)), int(dt.get("max", 12))
    if "initial" in dt:
        initial = int(dt["initial"])
    else:
        initial = PRESET_INITIAL_K.get(spec.get("workload", ""), DEFAULT_INITIAL_K)
    return DraftBounds(initial=max(lo, min(hi, initial)), min=lo, max=hi)


@dataclass(frozen=True)
class CurrentK:
    k: int | None  # None: speculation off (method none); 0: turned off by the autotuner
    reason: str
    from_target: bool = False  # the autotuner's target (which posts its own event)


def current_k(spec: dict[str, Any], status: dict[str, Any] | None) -> CurrentK:
    """The K to render now: the autotuner's target or the initial K.

    ``status.autotune.target`` is the K the autotuner wants and the initial K it was decided
    under. It applies while the spec still resolves to that initial K (an explicit change of
    the initial K or of the preset wins over the tuner) and mode is not Off; bounds that moved
    clamp it; K 0 (speculation off) only while allowOff holds.
    """
    b = bounds(spec)
    if b is None:
        return CurrentK(None, "speculative decoding is off (drafter.method none)")
    at = spec.get("autotune") or {}
    t = target(status)
    if at.get("mode", "Auto") == "Off":
        return CurrentK(b.initial, f"autotune is Off: K pinned to the initial {b.initial}")
    if t is None:
        return CurrentK(b.initial, f"initial K {b.initial}")
    if t.get("initial") is None or int(t["initial"]) != b.initial:
        return CurrentK(b.initial, f"initial K {b.initial} from the spec (the autotuner's "
                                   f"target was chosen under initial K {t.get('initial')})")
    k = int(t["k"])
    if k == 0:
        # The autotuner turned speculation off under load; only while allowOff holds.
        if at.get("allowOff"):
            return CurrentK(0, "speculation off (chosen by the autotuner under load)", True)
        return CurrentK(b.initial, f"allowOff was withdrawn: back to the initial {b.initial}")
    if not b.min <= k <= b.max:
        c = b.clamp(k)
        return CurrentK(c, f"the autotuner's K {k} is outside [{b.min}, {b.max}]: clamped "
                           f"to {c}")
    return CurrentK(k, f"K {k} chosen by the autotuner", True)
