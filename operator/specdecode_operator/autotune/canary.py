"""Canary mode: try a candidate K on one replica and judge it side by side with the others.

With 2+ replicas, a change the policy decides does not restart every replica. One replica
(a second Deployment, ``<name>-canary``) runs the candidate K while the others keep the
current K, behind the same Service, so both see the same traffic at the same time. Each
evaluation window then gives one sample of

    gain = [L(K_c) / T(K_c)]_canary / [L(K) / T(K)]_main - 1

the per-request decode speed of the canary over the main replicas, both measured (the
acceptance length from each one's drafts, the mean step time from each one's latency
histogram). The main replicas' T is moved to the canary's batch with the cost model's own
slope, because a faster replica finishes its requests sooner and runs fewer at once.

The comparison needs no model of what the old K would do now, and a load that changes
between windows changes both sides alike. Like the verification of a rolling change, the
canary is judged at the level of the load history: each window's measured gain minus the
gain the decision predicted at that window's batch is the model's error, added to the
history-level prediction, so one phase of a flapping load does not decide alone. What it
cannot remove is a difference between the machines the pods landed on (a few percent; in
the benchmark +-3 % per replica), so the canary is only removed when it is confidently
worse (upper bound below zero: the K is then rejected like a rolled-back one), and a
promoted K is verified fleet-wide afterwards like any change.

After ``verify_after_seconds`` and ``verify_min_windows`` windows: promote (the main
replicas roll to K_c) or remove. A canary that yields no usable windows for four times that
long is abandoned (removed, K unchanged).

Pure.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from .verification import Verification, summary


@dataclass(frozen=True)
class Side:
    """One side's window, reduced to what the side-by-side comparison needs."""

    k: int
    length: float        # tokens per step: 1 + accepted / drafts (1 with speculation off)
    step_ms: float       # mean step time: ITL sum / count
    batch: float         # ITL-weighted running requests per engine step


def side_by_side_gain(main: Side, canary: Side, step_ms: Callable[[float, int], float]
                      ) -> float:
    """Relative per-request decode speed of the canary over the main replicas, with the
    main replicas' step time moved to the canary's batch by the model's ``step_ms(b, k)``."""
    at_main, at_canary = step_ms(main.batch, main.k), step_ms(canary.batch, main.k)
    t_main = main.step_ms * (at_canary / at_main if at_main > 0 and at_canary > 0 else 1.0)
    return (canary.length / canary.step_ms) / (main.length / t_main) - 1.0


@dataclass(frozen=True)
class Verdict:
    action: str          # wait | promote | remove | abandon
    mean: float = 0.0
    upper: float = math.inf
    windows: int = 0


def judge(c: Verification, *, now: float, after_seconds: float, min_windows: int,
          window_seconds: float, z: float) -> Verdict:
    """What to do with the canary ``c`` (its samples: (time, side-by-side gain, expected))."""
    # Judged at the level of the load history, as verification.judged does: each window's
    # error against what the decision predicted at that window's batch, added to the
    # history-level prediction (a flapping load's phase must not decide alone).
    samples = [(t, c.predicted + g - e) for t, g, e in c.samples]
    age = now - c.time
    # A canary that yields no usable window for this long (its pod never got ready, no
    # traffic; or tuning was paused meanwhile: its samples are stale) must not hold the
    # deployment in two Ks for ever, nor be judged on old evidence.
    last = samples[-1][0] if samples else c.time
    if now - last > 4 * max(after_seconds, window_seconds):
        return Verdict("abandon", windows=len(samples))
    if age < after_seconds or len(samples) < max(1, min_windows):
        return Verdict("wait", windows=len(samples))
    mean, se, _ = summary(samples, window_seconds)
    upper = mean + z * se
    # Removed only when confidently worse: a canary's machine may differ from the others'
    # by a few percent, which no side-by-side can tell from the K; the fleet-wide
    # verification after the promotion judges the rest (and rolls back a failed probe).
    return Verdict("promote" if upper >= 0 else "remove", mean, upper, len(samples))
