"""Goodput: output tokens per second per replica, expected over the observed load.

goodput(k) = E_B[ B * L(k) / T(B, k) ]. Taken over the distribution of B, not at its mean:
the best k at B = 8 and at B = 128 differ, and the mean of a bimodal load hides both.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

# (running requests B, weight)
Load = Sequence[tuple[float, float]]


class StepCost(Protocol):
    """Anything that prices one engine step: the H200 table, or a calibrated model."""

    def step_ms(self, b: float, k: int) -> float: ...


def goodput(
    k: int, tokens_per_step: Callable[[int], float], load: Load, cost: StepCost
) -> float:
    """Expected tokens/s per replica at draft length k (k = 0: speculation off)."""
    total_w = sum(w for _, w in load)
    if total_w <= 0:
        raise ValueError("empty load distribution")
    acc = 0.0
    for b, w in load:
        b = max(1.0, b)
        acc += w * b * tokens_per_step(k) / (cost.step_ms(b, k) / 1000.0)
    return acc / total_w
