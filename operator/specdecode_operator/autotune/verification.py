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

import itertools
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
    # what ``predicted`` added to the model's own point (a follow-through's carried error)
    correction: float = 0.0
    # (time, realized gain, the gain predicted at that window's batch) per window
    samples: tuple[tuple[float, float, float], ...] = ()
    # the predicted gain as a function of the batch B: [(B, gain)], ascending in B
    curve: tuple[tuple[float, float], ...] = ()

    def expected_at(self, b: float) -> float:
        """The gain the decision predicted at batch ``b`` (log-linear between the curve's
        points, flat past its ends); the history-level prediction without a curve."""
        c = self.curve
        if not c:
            return self.predicted
        if b <= c[0][0]:
            return c[0][1]
        for (b0, g0), (b1, g1) in itertools.pairwise(c):
            if b <= b1:
                x = math.log(b / b0) / math.log(b1 / b0) if b1 > b0 else 1.0
                return g0 + (g1 - g0) * x
        return c[-1][1]


@dataclass(frozen=True)
class Outcome:
    """Predicted against realized for one change (the tuner's own error log)."""

    time: float
    k_from: int
    k_to: int
    predicted: float
    realized: float | None
    verdict: str                        # kept | rolled back | inconclusive
    correction: float = 0.0             # predicted - the model's own point

    @property
    def model_error(self) -> float | None:
        """Realized minus what the cost model alone predicted."""
        return None if self.realized is None else \
            self.realized - (self.predicted - self.correction)


@dataclass(frozen=True)
class Rejected:
    k: int
    until: float
    evidence: str


def realized_gain(l_new: float, t_new_ms: float, l_old: float, t_old_ms: float) -> float:
    return (l_new / t_new_ms) / (l_old / t_old_ms) - 1.0


def judged(v: Verification, window_seconds: float) -> tuple[float, float, float]:
    """(gain under the load history, its standard error, mean realized gain) of a change.

    Each window measures the gain at its own load, and the decision predicted a gain at that
    load too: their difference is the model's error at the new K. The change is judged by
    the history-level prediction plus that mean error, not by the raw realized gain: under a
    load that flaps between phases a K that wins on the day can lose in the phase its
    verification happens to run in, and is still the right K.
    """
    errors = [(t, g - e) for t, g, e in v.samples]
    mean_err, se, _ = summary(errors, window_seconds)
    raw = sum(g for _, g, _ in v.samples) / len(v.samples) if v.samples else 0.0
    return v.predicted + mean_err, se, raw


def summary(samples: Sequence[tuple[float, float]], window_seconds: float
            ) -> tuple[float, float, float]:
    """(mean, standard error, effective independent windows) of per-window values.

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
