"""Step-cost calibration: this deployment's T(B, k), measured from its own vLLM metrics.

The shipped H200 table (step_cost.py) is a prior, not the truth. Each observation window at
one K gives one point: the mean step time as decoding requests see it
(``vllm:inter_token_latency_seconds`` sum / count: one observation per running request per
engine step), at the window's mean decode batch (ITL count / ``vllm:iteration_tokens_total``
count = requests per engine step) and prefill load (``vllm:prompt_tokens_total`` per step).
Windows at one K across hours of varying load trace T against the verify width
N = B (k + 1) + prefill tokens per step.

The model is a small roofline family, linear in its parameters once the knee n0 is fixed:

    T(B, k) = f + s B + v N + h max(0, N - n0)      target: floor, per sequence (KV reads),
                                                     per verify token, past the knee
            + k (d0 + d1 B)                          k drafter steps
            + r ripple_prior(B, k)                   the prior's staircase (CUDA-graph
                                                     padding), kept only if the data agree

fitted by Bayesian (ridge) least squares on relative residuals, with the prior's parameters
scaled to the data as the prior mean, and the knee chosen on a grid. What the data cannot
separate stays at the prior's shape: with one K the drafter's share (k d0 is collinear with
f) and the split of s and v keep the prior's ratio, and their prior variance carries into
the uncertainty of every prediction at another K; outside the observed N range the hinge
keeps the prior's slope scaled to the data. The posterior covariance gives the standard
error of T(B, c) / T(B, k), which the policy charges against a change.

Everything here is pure and deterministic. Bad evidence never raises: it is skipped, or the
previous fit / the prior is kept, with the reason in words.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from functools import cache
from typing import Literal

from .step_cost import CostProfile, default_profile

NAMES = ("floor", "perSeq", "perToken", "hinge", "draftFloor", "draftPerSeq", "ripple")
P = len(NAMES)
RIPPLE = NAMES.index("ripple")
HINGE = NAMES.index("hinge")
PER_SEQ = NAMES.index("perSeq")
DRAFT_PER_SEQ = NAMES.index("draftPerSeq")
KNEE_SEEN = 1.25   # a knee this close above the lowest observed verify width is not seen
KNEES = (16.0, 24.0, 32.0, 48.0, 64.0, 96.0, 128.0, 192.0, 256.0, 384.0, 512.0, 1024.0, 2048.0)
# Prior standard deviation of each parameter, relative to its (scaled) prior value: how far
# another GPU/model may plausibly be from the H200 shape. The drafter's share is wide because
# drafters differ (one MTP layer vs a separate small model vs MoE targets with dense drafters).
PRIOR_REL_SD = (0.5, 1.0, 1.0, 1.0, 0.6, 0.6, 0.25)
# ... plus this much of the step floor (per unit of the feature), so that a parameter the
# prior puts at ~0 can still move.
PRIOR_ABS_SD = (0.01, 0.002, 0.01, 0.002, 0.01, 0.0005, 0.05)
# ... and the drafter's per-sequence cost (its own KV reads, per draft step) is doubted by
# this share of the target's: the H200 table's one-layer MTP drafter has ~0, a separate ~1 B
# drafter on an 8 B target about a tenth of the target's. At one K the two are collinear
# (k d1 B against s B), so only this doubt says that a shorter draft may save more per
# sequence at high load than the table's drafter would (measured: without it, an L4-class
# GPU at 64 requests stayed a day at K 5 with K 3 7 % faster, its doubt at 6 % of the ratio).
DRAFT_SEQ_SHARE = 0.5
KNEE_PENALTY = 0.1            # per octave of knee moved away from the prior's, squared: weak, the
                              # knee is where the data put it (CPU: ~0; H200: ~128)
MIN_SIGMA = 0.015             # floor on the relative noise of one point (misfit, jitter)
MAX_RMS = 0.25                # a fit worse than this (relative RMS) is not trusted
MAX_RATIO_SE = 1.0
MIN_WINDOWS = 3             # windows of evidence (any K, any load) before a fit counts
MAX_POINTS = 48
BINS_PER_OCTAVE = 2           # of verify width per point (finer: see docs/autotuner.md)
POINT_WEIGHT_CAP = 12.0       # a bin never outweighs new evidence by more than this
POINT_HALF_LIFE = 3 * 86_400.0  # old evidence fades (driver, model or traffic drift)
MIN_ITL_OBSERVATIONS = 100.0
# A window whose load swung is a mix of step times, not a point on T(N): its running-
# requests spread (Poisson at B=2 is 0.5), or the gauge's busy-time mean B and the counters'
# per-step mean B disagreeing (a spike that filled most of the window) say so.
MAX_LOAD_CV2 = 0.5
MAX_BATCH_DISAGREEMENT = 1.5


@dataclass(frozen=True)
class CalPoint:
    """Aggregated step-time evidence at one K and one half-octave of verify width."""

    k: int
    b: float            # effective decode batch (request-weighted)
    n: float            # verify tokens per step, prefill included
    t_ms: float         # mean step time
    w: float            # evidence weight (windows, decayed)
    t: float            # the time w refers to (epoch seconds; weights decay from it)


@dataclass(frozen=True)
class Quality:
    points: int = 0
    ks: tuple[int, ...] = ()
    n_lo: float = 0.0
    n_hi: float = 0.0
    rms: float = 0.0            # relative RMS residual of the fit


@dataclass(frozen=True)
class CostModel:
    """A step-cost model with its uncertainty: what the policy prices candidate Ks with."""

    theta: tuple[float, ...]
    knee: float
    cov: tuple[tuple[float, ...], ...]     # posterior covariance of theta (ms^2)
    source: Literal["prior", "fitted"] = "prior"
    reason: str = "no step-time observations yet"
    quality: Quality = field(default_factory=Quality)
    time: float | None = None              # when it was fitted

    def features(self, b: float, k: int, prefill: float = 0.0) -> list[float]:
        return _features(max(1.0, b), k, prefill, self.knee)

    def raw_ms(self, b: float, k: int, prefill: float = 0.0) -> float:
        return sum(a * c for a, c in zip(self.features(b, k, prefill), self.theta, strict=True))

    def knee_gap(self, b: float, k: int, prefill: float = 0.0) -> float:
        """How much lower T would be below the data if the roofline had no knee there (ms).

        A knee at or below all the observed verify widths is not seen by the data: a fit
        through points above it puts it wherever the prior does, and below it the prior's
        memory-bound slope, not the data's, answers (a compute-bound CPU has no knee at all).
        Below the data both hypotheses fit equally; they differ by the hinge's slope times
        the distance to the knee."""
        if self.source != "fitted" or self.quality.n_lo <= 0 or \
                self.knee > KNEE_SEEN * self.quality.n_lo:
            return 0.0
        n = max(1.0, b) * (k + 1) + prefill
        return max(0.0, self.theta[HINGE]) * max(0.0, min(self.knee, self.quality.n_lo) - n)

    def step_ms(self, b: float, k: int, prefill: float = 0.0) -> float:
        """T(B, k) in milliseconds (never below a tenth of the floor, far outside the data):
        below the data under an unseen knee, the mean of the knee and no-knee hypotheses."""
        t = self.raw_ms(b, k, prefill) - 0.5 * self.knee_gap(b, k, prefill)
        return max(t, 0.1 * max(self.theta[0], 0.01))

    def ratio_se(self, b: float, c: int, k: int, prefill_c: float = 0.0,
                 prefill_k: float = 0.0) -> float:
        """Standard error of log T(B, c) - log T(B, k): the model's doubt about a change."""
        if c == k:
            return 0.0
        tc, tk = self.step_ms(b, c, prefill_c), self.step_ms(b, k, prefill_k)
        g = [xc / tc - xk / tk for xc, xk in zip(self.features(b, c, prefill_c),
                                                   self.features(b, k, prefill_k),
                                                   strict=True)]
        var = sum(g[i] * self.cov[i][j] * g[j] for i in range(P) for j in range(P))
        # The unseen knee's doubt: the two hypotheses' log ratios differ by d; as an equal
        # mixture, that is a standard deviation of d / 2.
        gc, gk = self.knee_gap(b, c, prefill_c), self.knee_gap(b, k, prefill_k)
        if gc > 0 or gk > 0:
            d = math.log(max(tc + 0.5 * gc, 1e-9) / max(tc - 0.5 * gc, 1e-9)) - \
                math.log(max(tk + 0.5 * gk, 1e-9) / max(tk - 0.5 * gk, 1e-9))
            var += (d / 2) ** 2
        # Capped: beyond ~100% the model knows nothing, and exp() of it must stay finite.
        return min(MAX_RATIO_SE, math.sqrt(max(var, 0.0)))

    def params(self) -> dict[str, float]:
        return {**{n: round(v, 4) for n, v in zip(NAMES, self.theta, strict=True)},
                "knee": self.knee}


# ---- the prior ------------------------------------------------------------------------
def _features(b: float, k: int, prefill: float, knee: float) -> list[float]:
    n = b * (k + 1) + prefill
    return [1.0, b, n, max(0.0, n - knee), float(k), k * b, _ripple(b, k)]


@cache
def _ripple(b: float, k: int) -> float:
    """The prior table's staircase: table minus its smooth part (0 at smooth points)."""
    table = default_profile()
    base = _prior_smooth()
    return table.step_ms(b, k) - _smooth(base, b, k)


def _smooth(fit: tuple[tuple[float, ...], float], b: float, k: int) -> float:
    th, knee = fit
    x = _features_smooth(b, k, knee)
    return sum(a * c for a, c in zip(x, th, strict=True))


def _features_smooth(b: float, k: int, knee: float) -> list[float]:
    n = b * (k + 1)
    return [1.0, b, n, max(0.0, n - knee), float(k), k * b]


@cache
def _prior_smooth() -> tuple[tuple[float, ...], float]:
    """Least-squares fit of the smooth family to the H200 table (relative residuals)."""
    table: CostProfile = default_profile()
    pts = [(float(b), q - 1, table.step_ms(b, q - 1)) for b in table.batch
           for q in table.widths]
    best: tuple[float, tuple[float, ...], float] | None = None
    for knee in KNEES:
        rows = [[x / t for x in _features_smooth(b, k, knee)] for b, k, t in pts]
        ys = [1.0] * len(rows)
        th = _solve_normal(rows, ys, [1.0] * len(rows), [1e6] * 6, [0.0] * 6)
        if th is None:
            continue
        sse = sum((sum(a * c for a, c in zip(r, th, strict=True)) - 1.0) ** 2 for r in rows)
        if best is None or sse < best[0]:
            best = (sse, tuple(th), knee)
    assert best is not None
    return best[1], best[2]


@cache
def prior() -> CostModel:
    """The H200 table as a model: its smooth fit plus its staircase, with the prior doubt."""
    th, knee = _prior_smooth()
    theta = (*th, 1.0)
    return CostModel(theta=theta, knee=knee, cov=_diag([_sd(i, theta) ** 2 for i in range(P)]),
                     source="prior", reason="no step-time observations yet")


def _sd(i: int, theta: Sequence[float]) -> float:
    # Relative to the parameter, with an absolute floor tied to the step floor so that a
    # parameter the prior puts at ~0 can still move.
    sd = PRIOR_REL_SD[i] * abs(theta[i]) + PRIOR_ABS_SD[i] * abs(theta[0])
    if i == DRAFT_PER_SEQ:
        sd += DRAFT_SEQ_SHARE * abs(theta[PER_SEQ])
    return sd


def _diag(v: Sequence[float]) -> tuple[tuple[float, ...], ...]:
    return tuple(tuple(v[i] if i == j else 0.0 for j in range(len(v))) for i in range(len(v)))


# ---- linear algebra (tiny, dependency-free) ---------------------------------------------
def _inverse(a: list[list[float]]) -> list[list[float]] | None:
    n = len(a)
    m = [row[:] + [1.0 if i == j else 0.0 for j in range(n)] for i, row in enumerate(a)]
    for c in range(n):
        piv = max(range(c, n), key=lambda r: abs(m[r][c]))
        if abs(m[piv][c]) < 1e-12:
            return None
        m[c], m[piv] = m[piv], m[c]
        p = m[c][c]
        m[c] = [v / p for v in m[c]]
        for r in range(n):
            if r != c and m[r][c] != 0.0:
                f = m[r][c]
                m[r] = [vr - f * vc for vr, vc in zip(m[r], m[c], strict=True)]
    return [row[n:] for row in m]


def _posterior(
    rows: Sequence[Sequence[float]], ys: Sequence[float], ws: Sequence[float],
    prior_var: Sequence[float], prior_mean: Sequence[float],
) -> tuple[list[float], list[list[float]]] | None:
    """Mean and covariance of theta for weighted least squares with a Gaussian prior."""
    p = len(prior_mean)
    a = [[0.0] * p for _ in range(p)]
    rhs = [0.0] * p
    for x, y, w in zip(rows, ys, ws, strict=True):
        for i in range(p):
            wx = w * x[i]
            if wx == 0.0:
                continue
            rhs[i] += wx * y
            ai = a[i]
            for j in range(p):
                ai[j] += wx * x[j]
    for i in range(p):
        a[i][i] += 1.0 / prior_var[i]
        rhs[i] += prior_mean[i] / prior_var[i]
    inv = _inverse(a)
    if inv is None:
        return None
    mean = [sum(inv[i][j] * rhs[j] for j in range(p)) for i in range(p)]
    return mean, inv


# Physical signs: a step never gets cheaper with more sequences, tokens or drafts, and the
# roofline bends up at its knee. Only the prior's staircase (ripple) is free.
NONNEGATIVE = (True, True, True, True, True, True, False)


def _posterior_nonneg(
    rows: Sequence[Sequence[float]], ys: Sequence[float], ws: Sequence[float],
    prior_var: Sequence[float], prior_mean: Sequence[float],
) -> tuple[list[float], list[list[float]]] | None:
    """The posterior with the sign constraints (active set: a parameter that comes out
    negative is pinned at zero and the rest re-solved)."""
    var, mean = list(prior_var), [max(0.0, m) if NONNEGATIVE[i] else m
                                  for i, m in enumerate(prior_mean)]
    post = None
    for _ in range(len(var)):
        post = _posterior(rows, ys, ws, var, mean)
        if post is None:
            return None
        neg = [i for i, v in enumerate(post[0]) if NONNEGATIVE[i] and v < 0]
        if not neg:
            return post
        for i in neg:
            var[i], mean[i] = 1e-12, 0.0
    return post


def _solve_normal(rows: Sequence[Sequence[float]], ys: Sequence[float], ws: Sequence[float],
                  prior_var: Sequence[float], prior_mean: Sequence[float]) -> list[float] | None:
    post = _posterior_nonneg(rows, ys, ws, [*prior_var, 1.0][:len(prior_mean)], prior_mean)
    return None if post is None else post[0]


# ---- evidence ---------------------------------------------------------------------------
@dataclass(frozen=True)
class StepSample:
    """One window's step-time evidence at one K (sums over the SDD's pods)."""

    k: int
    itl_sum: float          # increase(vllm:inter_token_latency_seconds_sum)
    itl_count: float        # increase(vllm:inter_token_latency_seconds_count)
    steps: float            # increase(vllm:iteration_tokens_total_count)
    prompt_tokens: float    # increase(vllm:prompt_tokens_total)
    load_cv2: float = 0.0   # squared coefficient of variation of the running requests
    load_mean: float = math.nan  # the running-requests gauge's mean over busy time


def point_from_sample(
    s: StepSample, *, now: float, last_change: float | None, window_seconds: float,
) -> tuple[CalPoint | None, str]:
    """One calibration point from a window, or None with the reason it is not evidence."""
    vals = (s.itl_sum, s.itl_count, s.steps, s.prompt_tokens)
    if not all(math.isfinite(v) for v in vals):
        return None, "latency series missing or NaN"
    if s.itl_count <= 0 or s.itl_sum <= 0:
        return None, "no inter-token latency observations in the window"
    if s.steps <= 0:
        return None, "no iteration-tokens observations in the window"
    if last_change is not None and now - last_change < window_seconds:
        return None, (f"window straddles the K change {now - last_change:.0f}s ago "
                      "(old and new pods, restarts)")
    if s.itl_count < MIN_ITL_OBSERVATIONS:
        return None, f"too few latency observations ({s.itl_count:.0f})"
    if s.load_cv2 > MAX_LOAD_CV2:
        return None, (f"the load changed within the window (running requests vary "
                      f"{math.sqrt(s.load_cv2):.0%}): a mix of step times, not one point")
    t_ms = 1000.0 * s.itl_sum / s.itl_count
    b = s.itl_count / s.steps
    if math.isfinite(s.load_mean) and s.load_mean > 0 and \
            max(b / s.load_mean, s.load_mean / b) > MAX_BATCH_DISAGREEMENT:
        return None, (f"the load changed within the window (the gauge's {s.load_mean:.3g} "
                      f"running requests vs {b:.3g} per engine step)")
    if not 0.05 <= t_ms <= 60_000:
        return None, f"implausible mean step time {t_ms:.3g} ms (histogram reset?)"
    if not 0.5 <= b <= 8192:
        return None, (f"latency and iteration histograms disagree ({b:.3g} requests per "
                      "step; a counter reset?)")
    # ITL weights each step by its batch: it sees T at E[B^2]/E[B], not at the mean B.
    b_eff = b * (1.0 + max(0.0, s.load_cv2))   # load_cv2 <= MAX_LOAD_CV2 here
    n = b_eff * (s.k + 1) + max(0.0, s.prompt_tokens) / s.steps
    return CalPoint(k=s.k, b=b_eff, n=n, t_ms=t_ms, w=1.0, t=now), "ok"


def _bin(p: CalPoint) -> tuple[int, int]:
    return p.k, round(BINS_PER_OCTAVE * math.log2(max(p.n, 1.0)))


def opens_bin(points: Sequence[CalPoint], p: CalPoint) -> bool:
    """Whether ``p`` is evidence where the points have none: a new K or a new half-octave of
    verify width (the fit so far extrapolated there; refit now, not in half an hour)."""
    return all(_bin(q) != _bin(p) for q in points)


def add_point(points: Sequence[CalPoint], p: CalPoint) -> tuple[CalPoint, ...]:
    """Merge a point into its (K, half-octave of N) bin; bounded, old evidence fades."""
    out: list[CalPoint] = []
    merged = False
    for q in points:
        # Weights are kept as of the newest point's time (t), so decay is applied once.
        decay = 0.5 ** (max(0.0, p.t - q.t) / POINT_HALF_LIFE)
        q = replace(q, w=q.w * decay, t=max(q.t, p.t))
        if not merged and _bin(q) == _bin(p):
            w = q.w + p.w
            q = CalPoint(k=p.k, b=(q.b * q.w + p.b * p.w) / w, n=(q.n * q.w + p.n * p.w) / w,
                         t_ms=(q.t_ms * q.w + p.t_ms * p.w) / w,
                         w=min(w, POINT_WEIGHT_CAP), t=p.t)
            merged = True
        out.append(q)
    if not merged:
        out.append(p)
    if len(out) > MAX_POINTS:
        out.sort(key=lambda q: (q.w, q.t))
        out = out[len(out) - MAX_POINTS:]
    return tuple(sorted(out, key=lambda q: (q.k, q.n)))


# ---- the fit ----------------------------------------------------------------------------
def fit(points: Sequence[CalPoint], *, now: float,
        previous: CostModel | None = None) -> CostModel:
    """This deployment's cost model from its points; the prior (or the previous fit) with a
    reason when the evidence does not support one."""
    base = prior()
    keep = previous if previous is not None and previous.source == "fitted" else base

    def fallback(reason: str) -> CostModel:
        return replace(keep, reason=f"{reason}; kept the {keep.source} model"
                       if keep is not base else reason, time=now)

    pts = [p for p in points if p.w > 1e-3 and p.t_ms > 0 and math.isfinite(p.t_ms)]
    windows = sum(p.w for p in pts)
    if windows < MIN_WINDOWS - 1e-3:  # decayed weights: three windows are 2.9999
        return replace(base, reason=f"{windows:.0f} windows of step-time evidence, "
                       f"{MIN_WINDOWS} needed", quality=_quality(pts, 0.0), time=now)
    # Scale: the prior's shape brought to this hardware's level (geometric mean ratio).
    logs = [math.log(p.t_ms / base.step_ms(p.b, p.k, p.n - p.b * (p.k + 1))) for p in pts]
    wsum = sum(min(p.w, 4.0) for p in pts)
    c = math.exp(sum(lr * min(p.w, 4.0) for lr, p in zip(logs, pts, strict=True)) / wsum)
    c = min(50.0, max(0.02, c))
    mean0 = [c * v for v in base.theta]
    var0 = [_sd(i, mean0) ** 2 for i in range(P)]
    # A fitted model is smooth: the H200 staircase belongs to the H200's kernels, and left
    # free it bends the fit between the few Ks observed (measured: it did more harm than good
    # on every world but the perturbed H200).
    mean0[RIPPLE], var0[RIPPLE] = 0.0, 1e-12

    def solve(knee: float, sigma: float) -> tuple[float, list[float], list[list[float]]] | None:
        rows, ws = [], []
        for p in pts:
            x = _features(p.b, p.k, p.n - p.b * (p.k + 1), knee)
            rows.append([v / p.t_ms for v in x])
            ws.append(min(p.w, 4.0) / sigma ** 2)
        post = _posterior_nonneg(rows, [1.0] * len(rows), ws, var0, mean0)
        if post is None:
            return None
        th, cov = post
        obj = sum(w * (sum(a * b for a, b in zip(r, th, strict=True)) - 1.0) ** 2
                  for r, w in zip(rows, ws, strict=True))
        obj += sum((th[i] - mean0[i]) ** 2 / var0[i] for i in range(P))
        obj += KNEE_PENALTY * math.log2(knee / base.knee) ** 2
        return obj, th, cov

    sigma = max(MIN_SIGMA, 0.03)
    best: tuple[float, float, list[float], list[list[float]]] | None = None
    # Knee search: the whole grid, or, refining a previous fit, its neighbourhood (the knee
    # moves little between refits; this keeps a refit cheap).
    knees = sorted({*KNEES, base.knee})
    if previous is not None and previous.source == "fitted" and previous.knee in knees:
        i = knees.index(previous.knee)
        knees = sorted({*knees[max(0, i - 2):i + 3], base.knee})
    for knee in knees:
        r = solve(knee, sigma)
        if r is not None and all(math.isfinite(v) for v in r[1]) and \
                (best is None or r[0] < best[0]):
            best = (r[0], knee, r[1], r[2])
    if best is None:
        return fallback("fit did not converge (singular system)")
    _, knee, th, _cov = best
    rel = [(_dot(_features(p.b, p.k, p.n - p.b * (p.k + 1), knee), th) / p.t_ms - 1.0)
           for p in pts]
    rms = math.sqrt(sum(min(p.w, 4.0) * r * r for r, p in zip(rel, pts, strict=True)) / wsum)
    sigma = max(MIN_SIGMA, rms * math.sqrt(len(pts) / max(1, len(pts) - 2)))
    r2 = solve(knee, sigma)
    if r2 is None or not all(math.isfinite(v) for v in r2[1]):
        return fallback("fit did not converge")
    _, th, cov = r2
    model = CostModel(theta=tuple(th), knee=knee, cov=tuple(tuple(r) for r in cov),
                      source="fitted", quality=_quality(pts, rms), time=now,
                      reason=f"fitted to {len(pts)} points at K {_ks(pts)}")
    if rms > MAX_RMS:
        return fallback(f"fit residual {rms:.0%} too large")
    lo, hi = model.quality.n_lo, model.quality.n_hi
    bad = [(b, k) for b in (1, 2, 4, 8, 16, 32, 64, 128, 256, 512) for k in range(1, 13)
           if lo / 2 <= b * (k + 1) <= 2 * hi and model.raw_ms(b, k) <= 0]
    if bad:
        return fallback(f"fit gives non-positive step times (B={bad[0][0]}, K={bad[0][1]})")
    return model


def _dot(a: Sequence[float], b: Sequence[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))


def _ks(pts: Sequence[CalPoint]) -> str:
    return ",".join(str(k) for k in sorted({p.k for p in pts}))


def _quality(pts: Sequence[CalPoint], rms: float) -> Quality:
    if not pts:
        return Quality()
    return Quality(points=len(pts), ks=tuple(sorted({p.k for p in pts})),
                   n_lo=min(p.n for p in pts), n_hi=max(p.n for p in pts), rms=rms)
