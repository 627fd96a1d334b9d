"""Step cost T(B, k): how long one engine step takes with B running requests at draft length k.

T(B, k) = T_target(B, q = k + 1) + k * T_draft(B). The default profile is measured on an H200
(data/h200-verify-cost.json, a ~30B dense decoder at context 1024). Measured costs are
staircases (odd verify widths were slower than the next even one): values are interpolated
only between measured widths, never smoothed.
"""

from __future__ import annotations

import bisect
import json
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any


def interp(xs: Sequence[float], ys: Sequence[float], x: float) -> float:
    """Piecewise-linear, extrapolating linearly past either end."""
    if len(xs) == 1:
        return ys[0]
    i = bisect.bisect_left(xs, x)
    i = min(max(i, 1), len(xs) - 1)
    x0, x1, y0, y1 = xs[i - 1], xs[i], ys[i - 1], ys[i]
    return y0 + (y1 - y0) * (x - x0) / (x1 - x0)


@dataclass(frozen=True)
class CostProfile:
    """Target verify and draft step times (ms) on a grid of B and q."""

    batch: tuple[int, ...]                          # B grid
    widths: tuple[int, ...]                         # q grid (k + 1)
    target_ms: tuple[tuple[float, ...], ...]        # [B index][q index]
    draft_ms: tuple[float, ...]                     # [B index]

    @classmethod
    def from_rows(cls, rows: list[dict[str, Any]], ctx: int = 1024) -> CostProfile:
        rows = [r for r in rows if r["ctx"] == ctx]
        batch = sorted({int(r["B"]) for r in rows})
        widths = sorted({int(r["q"]) for r in rows})
        grid = {(int(r["B"]), int(r["q"])): float(r["ttarget_ms"]) for r in rows}
        draft = {int(r["B"]): float(r["tdraft_ms"]) for r in rows}
        return cls(
            batch=tuple(batch), widths=tuple(widths),
            target_ms=tuple(tuple(grid[(b, q)] for q in widths) for b in batch),
            draft_ms=tuple(draft[b] for b in batch),
        )

    def step_ms(self, b: float, k: int) -> float:
        """T(B, k) in milliseconds; k = 0 is plain decoding."""
        b = max(1.0, b)
        q = k + 1
        per_b = [interp(list(self.widths), list(row), q) for row in self.target_ms]
        target = interp(list(self.batch), per_b, b)
        draft = interp(list(self.batch), list(self.draft_ms), b) if k else 0.0
        return target + k * draft


def default_table() -> dict[str, Any]:
    """The measured H200 table (h200-verify-cost.json), shipped with the package."""
    text = resources.files("specdecode_operator.autotune").joinpath(
        "data/h200-verify-cost.json").read_text()
    return dict(json.loads(text))


@cache
def default_profile() -> CostProfile:
    return CostProfile.from_rows(default_table()["rows"])
