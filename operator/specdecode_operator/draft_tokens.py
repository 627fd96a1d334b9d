"""Which draft length K a SpecDecodeDeployment runs: pure functions of spec and status."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

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


def current_k(spec: dict[str, Any], status: dict[str, Any] | None) -> CurrentK:
    """The K to render now.

    Status carries the K the operator runs (``draftTokens.current``) and the initial K it
    started from. The user's explicit change of the initial K (or of the preset) wins over the
    tuner; bounds that moved clamp the current K; mode Off pins K to the initial value.
    """
    b = bounds(spec)
    if b is None:
        return CurrentK(None, "speculative decoding is off (drafter.method none)")
    dt = (status or {}).get("draftTokens") or {}
    cur, seen_initial = dt.get("current"), dt.get("initial")
    mode = (spec.get("autotune") or {}).get("mode", "Auto")
    if cur is None:
        return CurrentK(b.initial, f"initial K {b.initial}")
    if mode == "Off":
        return CurrentK(b.initial, f"autotune is Off: K pinned to the initial {b.initial}")
    if seen_initial is not None and int(seen_initial) != b.initial:
        return CurrentK(b.initial, f"initial K changed to {b.initial} in the spec")
    if int(cur) == 0:
        # The autotuner turned speculation off under load; only while allowOff holds.
        if (spec.get("autotune") or {}).get("allowOff"):
            return CurrentK(0, "speculation off (chosen by the autotuner under load)")
        return CurrentK(b.initial, f"allowOff was withdrawn: back to the initial {b.initial}")
    if not b.min <= int(cur) <= b.max:
        k = b.clamp(int(cur))
        return CurrentK(k, f"K {cur} is outside [{b.min}, {b.max}]: clamped to {k}")
    return CurrentK(int(cur), f"K {cur} from status")
