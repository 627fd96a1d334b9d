"""Did the last change work? Measured speed of the new K against the old K at the same load.

After a change from K_old to K_new, every window at K_new gives one sample of the realized
gain in per-request decode speed, which is robust to load whether clients are closed-loop
(fixed concurrency: throughput = B x speed) or open-loop (fixed arrival rate: the same
tokens, served faster):

    realized = [L(K_new) / T(B, K_new)]_measured / [L(K_old) / T(B, K_old)]_counterfactual - 1

The numerator is measured (accepted / drafts, and the mean step time from the latency
histogram). The denominator is what K_old would do at *this* window's batch and task mix:
L(K_old) from the same window's per-position counters (exact when K_old < K_new, the damped
tail above), and T(B, K_old) from the calibrated model, which has seen K_old run. Once the
new K has run ``verify_after_seconds`` and enough windows, the samples' mean and standard
error decide: confidently worse than the old K (upper bound below zero) is a rollback, and
K_new is rejected until ``reject_cooldown_seconds`` have passed.

Pure.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

MIN_SE = 0.02     # one window's realized gain is never known better than this


@dataclass(frozen=True)
class Verification:
    """A change under verification."""

    k_from: int
    k_to: int
    time: float                         # when the change was made
    predicted: float                    # the decision's predicted relative gain
    probe: bool = False                 # an exploratory change: kept only if better
    samples: tuple[tuple[float, float], ...] = ()   # (time, realized gain) per window


@dataclass(frozen=True)
class Outcome:
    """Predicted against realized for one change (the tuner's own error log)."""

    time: float
    k_from: int
    k_to: int
    predicted: float
    realized: float | None
    verdict: str                        # kept | rolled back | inconclusive


@dataclass(frozen=True)
class Rejected:
    k: int
    until: float
    evidence: str


def realized_gain(l_new: float, t_new_ms: float, l_old: float, t_old_ms: float) -> float:
    return (l_new / t_new_ms) / (l_old / t_old_ms) - 1.0


def summary(samples: Sequence[tuple[float, float]], window_seconds: float
            ) -> tuple[float, float, float]:
    """(mean, standard error, effective independent windows) of the realized gains.

    Windows overlap when the evaluation interval is shorter than the window: the effective
    count is the span covered in windows, not the number of samples.
    """
    if not samples:
        return 0.0, math.inf, 0.0
    xs = [g for _, g in samples]
    n = len(xs)
    m = sum(xs) / n
    sd = math.sqrt(sum((x - m) ** 2 for x in xs) / (n - 1)) if n > 1 else MIN_SE
    span = samples[-1][0] - samples[0][0]
    n_eff = min(float(n), 1.0 + span / window_seconds) if window_seconds > 0 else float(n)
    return m, max(sd, MIN_SE) / math.sqrt(n_eff), n_eff
