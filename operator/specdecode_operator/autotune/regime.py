"""The regime a new K will live under: load and acceptance over hours, not the last window.

A change of K is a rolling restart. It pays only if the gain, summed over the time the new K
stays in place, beats what the restart loses. The new K will serve the traffic of the next
hours, so the tuner prices candidates against an exponentially weighted history of load
(time constant ``horizon``, hours) and of acceptance (half of it: task mixes drift faster
than capacity planning), both kept in its state. A 20-minute spike moves the load history
by 1 - exp(-20 min / horizon) of its weight: too little to pay for a restart. A lasting
shift would take over the history only within about one horizon, so a shift is detected
instead (``shift``): once every window for ``shift_seconds`` (longer than any spike the
tuner should ignore) has sat at a load at least SHIFT_FACTOR away from the history's median,
the history restarts from those windows: the old level is gone, and the new one has lasted
that long.

Pure; the histories are bounded (a fixed load grid, one pair of sums per draft position).
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence

# Running requests per replica, on a log grid: a window's load quantiles are spread over
# their two nearest grid points (log-linear), so the history keeps its shape in 19 numbers.
LOAD_GRID: tuple[float, ...] = (1, 1.5, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192,
                                256, 384, 512)


def _spread(b: float) -> list[tuple[int, float]]:
    b = min(max(b, LOAD_GRID[0]), LOAD_GRID[-1])
    i = bisect.bisect_left(LOAD_GRID, b)
    if LOAD_GRID[min(i, len(LOAD_GRID) - 1)] == b:
        return [(i, 1.0)]
    lo, hi = LOAD_GRID[i - 1], LOAD_GRID[i]
    x = math.log(b / lo) / math.log(hi / lo)
    return [(i - 1, 1.0 - x), (i, x)]


def decay(last: float | None, now: float, tau: float) -> float:
    if last is None or tau <= 0:
        return 0.0
    return math.exp(-max(0.0, now - last) / tau)


def new_seconds(last: float | None, now: float, window_seconds: float) -> float:
    """Seconds of this window not covered by the previous one (windows overlap)."""
    if last is None:
        return window_seconds
    return max(0.0, min(window_seconds, now - last))


def update_load(
    hist: Sequence[float], last: float | None, load: Sequence[tuple[float, float]], *,
    now: float, window_seconds: float, horizon: float,
) -> tuple[float, ...]:
    """Decay the history to ``now`` and add the window's new seconds of load."""
    d = decay(last, now, horizon)
    out = [v * d for v in hist] if len(hist) == len(LOAD_GRID) else [0.0] * len(LOAD_GRID)
    mass = new_seconds(last, now, window_seconds)
    total = sum(w for _, w in load)
    if total > 0 and mass > 0:
        for b, w in load:
            if not math.isfinite(b):
                continue
            for i, f in _spread(b):
                out[i] += mass * f * w / total
    return tuple(out)


def distribution(hist: Sequence[float]) -> list[tuple[float, float]]:
    """The load history as (running requests, weight) pairs."""
    return [(b, w) for b, w in zip(LOAD_GRID, hist, strict=False) if w > 1e-9]


def update_acceptance(
    acc: Sequence[float], drafts: Sequence[float], last: float | None,
    window_drafts: float, per_pos: Sequence[float], *, now: float, window_seconds: float,
    horizon: float,
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Exponentially weighted per-position accepted counts and drafts.

    Positions past the running K keep their decayed history (a larger K measured them
    once); the survival identity makes position i's acceptance independent of how many
    tokens are drafted after it.
    """
    d = decay(last, now, horizon)
    n = max(len(acc), len(per_pos))
    a_out = [(acc[i] if i < len(acc) else 0.0) * d for i in range(n)]
    d_out = [(drafts[i] if i < len(drafts) else 0.0) * d for i in range(n)]
    frac = new_seconds(last, now, window_seconds) / window_seconds if window_seconds else 1.0
    if window_drafts > 0:
        for i, a in enumerate(per_pos):
            a_out[i] += a * frac
            d_out[i] += window_drafts * frac
    return tuple(a_out), tuple(d_out)


def remaining_life(age: float, horizon: float, cap: float) -> float:
    """Expected remaining life of a regime that has lasted ``age`` seconds.

    Regime lengths of traffic are heavy-tailed (minutes of spikes, hours of shifts, days of
    a deployment's purpose); for a Pareto tail with exponent 1 the expected remaining life
    equals the age (the Lindy property). A regime the tuner sees in its history has lasted
    about a horizon already, hence horizon + age, capped.
    """
    return min(cap, horizon + max(0.0, age))


SHIFT_FACTOR = 2.0     # a window's mean load this far from the history's median is "away"


def median(hist: Sequence[float]) -> float | None:
    """The history's time-weighted median load (None when empty)."""
    dist = distribution(hist)
    total = sum(w for _, w in dist)
    if total <= 0:
        return None
    acc = 0.0
    for b, w in dist:
        acc += w
        if acc >= total / 2:
            return b
    return dist[-1][0]


def mean_load(load: Sequence[tuple[float, float]]) -> float | None:
    tw = sum(w for _, w in load)
    if tw <= 0:
        return None
    return sum(b * w for b, w in load) / tw


def shift(
    hist: Sequence[float], since: float | None, away: Sequence[float], direction: int,
    last: float | None, load: Sequence[tuple[float, float]], *, now: float,
    window_seconds: float, shift_seconds: float,
) -> tuple[float | None, tuple[float, ...], int, bool]:
    """Track a lasting departure of the load from the history.

    Returns (since, away, direction, shifted): when the departure started (None: the load
    is at home), the load seen since then (undecayed seconds per grid point), its direction
    (+1 up, -1 down), and whether it has now lasted ``shift_seconds`` (the caller then
    restarts its histories from ``away``, and the departure is the new regime).
    """
    med, m = median(hist), mean_load(load)
    if med is None or m is None:
        return since, tuple(away), direction, False
    m = max(m, 1.0)
    d = 1 if m >= med * SHIFT_FACTOR else -1 if m <= med / SHIFT_FACTOR else 0
    if d == 0:
        return None, (), 0, False      # home again
    if since is None or d != direction:
        # A new departure, or one turned the other way (a spike and its aftermath, not a
        # new level): it starts here.
        since, away, last = now, (), None
    away = update_load(away, last, load, now=now, window_seconds=window_seconds,
                       horizon=math.inf)
    return since, away, d, now - since >= shift_seconds


MIX_SHIFT_FACTOR = 1.15   # a window's accepted tokens per draft this far from the history's


def accepted_per_draft(acc: Sequence[float], drafts: Sequence[float], k: int) -> float | None:
    """The history's accepted tokens per draft at draft length ``k`` (None: positions the
    history has not measured)."""
    if k <= 0 or len(acc) < k or len(drafts) < k or any(drafts[i] <= 0 for i in range(k)):
        return None
    return sum(acc[i] / drafts[i] for i in range(k))


def mix_shift(
    acc: Sequence[float], drafts: Sequence[float], since: float | None,
    away_acc: Sequence[float], away_drafts: Sequence[float], direction: int,
    last: float | None, window_drafts: float, per_pos: Sequence[float], *, now: float,
    window_seconds: float, shift_seconds: float,
) -> tuple[float | None, tuple[float, ...], tuple[float, ...], int, bool]:
    """The task mix's counterpart of ``shift``: a lasting departure of acceptance.

    A window's accepted tokens per draft at least MIX_SHIFT_FACTOR away from what the
    acceptance history expects at the same K, in every window for ``shift_seconds``, is a
    new task mix: the caller restarts the acceptance history from the departure's own
    counts (``away_acc``, ``away_drafts``: per position, undecayed), instead of letting the
    old mix fade over hours. Returns (since, away_acc, away_drafts, direction, shifted).
    """
    k = len(per_pos)
    h = accepted_per_draft(acc, drafts, k)
    if h is None or h <= 0 or window_drafts <= 0:
        return since, tuple(away_acc), tuple(away_drafts), direction, False
    a = sum(per_pos) / window_drafts
    d = 1 if a >= h * MIX_SHIFT_FACTOR else -1 if a <= h / MIX_SHIFT_FACTOR else 0
    if d == 0:
        return None, (), (), 0, False
    if since is None or d != direction:
        since, away_acc, away_drafts, last = now, (), (), None
    away_acc, away_drafts = update_acceptance(
        away_acc, away_drafts, last, window_drafts, per_pos, now=now,
        window_seconds=window_seconds, horizon=math.inf)
    return since, away_acc, away_drafts, d, now - since >= shift_seconds
