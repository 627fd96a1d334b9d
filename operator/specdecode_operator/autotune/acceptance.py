"""Acceptance from vLLM's counters: survival S_i, tokens per step L(k), and their uncertainty.

S_i = P(the first i draft tokens are all accepted) = accepted_per_pos[i-1] / drafts, exact
for chained drafters at a fixed K; L(k) = 1 + S_1 + ... + S_k for every k <= K. Nothing is
observed past K: there the last conditional acceptance S_K / S_(K-1) is held, damped, and
trusted less (docs/draft-length-math.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

# Conditional acceptance past the observed K shrinks by this factor per extra position:
# later positions are never easier than earlier ones in the published profiles.
EXTRAPOLATION_DAMPING = 0.97
# Relative standard error added per extrapolated position (on top of sampling noise).
EXTRAPOLATION_REL_ERROR = 0.05


@dataclass(frozen=True)
class Survival:
    """Survival estimates for positions 1..len(s); ``observed`` of them measured."""

    s: tuple[float, ...]        # S_1..S_n
    se: tuple[float, ...]       # standard error of each S_i
    observed: int               # positions measured at the running K

    def tokens_per_step(self, k: int) -> float:
        """L(k) = 1 + S_1 + ... + S_k (k = 0: no speculation, one token per step)."""
        return 1.0 + sum(self.s[:k])

    def tokens_per_step_se(self, k: int, base: int = 0) -> float:
        """Standard error of L(k) - L(base): the part that differs between two draft lengths.

        Sampling errors of the S_i are positively correlated (nested events); summing the
        standard errors is the conservative bound.
        """
        lo, hi = sorted((k, base))
        return sum(self.se[lo:hi])

    @property
    def acceptance_rate(self) -> float:
        """vLLM's accepted / draft tokens at the observed K: (S_1 + ... + S_K) / K."""
        k = self.observed
        return sum(self.s[:k]) / k if k else 0.0


def from_counters(
    drafts: float, accepted_per_pos: tuple[float, ...] | list[float], extend_to: int
) -> Survival:
    """Survival for positions 1..max(K, extend_to) from one window's counter increases.

    Counter increases come from Prometheus' increase(), which extrapolates: values can be
    fractional and, with noise, slightly non-monotonic; S is clamped to [0, 1] and made
    non-increasing (an empirical P(first i accepted) cannot grow with i).
    """
    k = len(accepted_per_pos)
    if drafts <= 0 or k == 0:
        raise ValueError("no drafts observed")
    s: list[float] = []
    se: list[float] = []
    prev = 1.0
    for a in accepted_per_pos:
        v = min(prev, max(0.0, a / drafts))
        s.append(v)
        se.append(math.sqrt(max(v * (1 - v), 1e-4) / drafts))
        prev = v
    n = max(k, extend_to)
    if n > k:
        # Last observed conditional acceptance, with a weak prior when S_(K-1) is tiny.
        prev_s = s[-2] if k >= 2 else 1.0
        cond = s[-1] / prev_s if prev_s > 1e-9 else 0.0
        for j in range(k + 1, n + 1):
            cond *= EXTRAPOLATION_DAMPING
            v = s[-1] * cond
            s.append(v)
            se.append(se[k - 1] + v * EXTRAPOLATION_REL_ERROR * (j - k))
    return Survival(s=tuple(s), se=tuple(se), observed=k)


def iid(a: float, n: int) -> tuple[float, ...]:
    """S_i = a^i (Leviathan et al.): the textbook profile, for tests and simulations."""
    return tuple(a ** i for i in range(1, n + 1))
