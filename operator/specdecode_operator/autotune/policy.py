"""The draft-length decision: pure, deterministic, usable without Kubernetes or Prometheus.

    decision = decide(settings, state, window, now=...)

Every change of K is a rolling restart of GPU pods (minutes of model loading), so a change
must be right, rare and safe. One evaluation:

1. calibrates this deployment's step cost from the window's latency histograms
   (calibration.py; the H200 table is only the prior);
2. folds the window into hours of load and acceptance history (regime.py); a load level
   held for regimeSeconds/3 is a new regime and restarts the load history;
3. verifies the last change against what it predicted at each window's own load and rolls
   it back when the new K is confidently slower than the old one (verification.py);
4. prices every candidate K under the history, with a lower confidence bound that counts
   both acceptance and cost-model doubt, and changes only when the gain rate times the
   regime's expected remaining life pays for the restart, the current window agrees, the
   recommendation is confirmed, and cooldown, daily budget and mode allow;
5. otherwise may probe a K the model has never seen below the current one (at usual load
   only; above it once, after a failed step down: the rebound), or follow through one step
   further after a step that paid more than the model predicted.

In canary mode (2+ replicas) a change first runs on one replica and is judged side by side
with the others (canary.py) before it rolls to all.

See docs/autotuner.md for the derivation of the rule.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from . import acceptance, calibration, regime
from .calibration import CalPoint, CostModel, StepSample
from .canary import Side, judge, side_by_side_gain
from .goodput import Load, StepCost, goodput
from .step_cost import default_profile
from .verification import Outcome, Rejected, Verification, judged, realized_gain

DAY = 86_400.0
OFF = 0  # draft length 0: speculative decoding off
REFIT_SECONDS = 1800.0       # refit the cost model at most this often (and on a new K)
REFITS_PER_REGIME = 6        # ... or this often per regimeSeconds (compressed-time settings)
MAX_LIFE_SECONDS = 12 * 3600.0
LONG_FACTOR = 4.0            # the day-scale load history: recurring spikes stay in view
ACCEPTANCE_HORIZON = 0.5     # of regimeSeconds: the acceptance history's time constant
PROBE_MIN_WINDOWS = 6.0      # windows of step-time evidence before a probe
OUTCOMES = 10


@dataclass(frozen=True)
class Settings:
    """spec.autotune, with the draft-token bounds, as the tuner needs them."""

    k_min: int = 1
    k_max: int = 12
    mode: Literal["Off", "Recommend", "Auto"] = "Auto"
    policy: Literal["goodput", "threshold"] = "goodput"
    window_seconds: float = 600.0
    cooldown_seconds: float = 1800.0
    min_drafts: float = 2000.0
    min_requests: float = 20.0
    max_step: int = 4
    max_changes_per_day: int = 6
    allow_off: bool = False
    # the K the deployment starts from (draftTokens.initial, resolved): the safe default.
    # Leaving it takes a lower confidence bound; coming back takes only the point estimate.
    initial_k: int | None = None
    # goodput policy: the predicted gain (lower confidence bound) must beat min_gain plus
    # the restart cost spread over the regime's expected remaining life.
    min_gain: float = 0.02
    restart_cost_seconds: float = 300.0
    regime_seconds: float = 10_800.0
    cost_model: Literal["Calibrated", "Prior"] = "Calibrated"
    # exploration: one verified try of a K the cost model has never seen, when it cannot
    # rule out a large gain there (value of information), at most once per probe interval
    explore: bool = True
    probe_interval_seconds: float = 21_600.0
    confidence_z: float = 1.64
    confirmations: int = 2
    # verification of each change, and rejection of a K that made things worse
    verify_after_seconds: float = 1800.0
    verify_min_windows: int = 3
    reject_cooldown_seconds: float = 86_400.0
    # canary mode: a change runs on one replica first, judged side by side (canary.py)
    canary: bool = False
    replicas: int = 1
    # threshold policy: the published rule.
    low_acceptance: float = 0.5
    high_acceptance: float = 0.85
    threshold_step: int = 2

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> Settings:
        """From a defaulted SDD spec (see specdecode_operator.crd)."""
        at = spec.get("autotune") or {}
        dt = spec.get("draftTokens") or {}
        thr = at.get("threshold") or {}
        gate = at.get("evidence") or {}
        ver = at.get("verification") or {}
        kw: dict[str, Any] = {
            "k_min": int(dt.get("min", 1)), "k_max": int(dt.get("max", 12)),
            "mode": at.get("mode", "Auto"), "policy": at.get("policy", "goodput"),
        }
        if dt.get("initial") is not None:
            kw["initial_k"] = int(dt["initial"])
        for key, name, conv in (
            ("windowSeconds", "window_seconds", float),
            ("cooldownSeconds", "cooldown_seconds", float),
            ("maxStep", "max_step", int), ("maxChangesPerDay", "max_changes_per_day", int),
            ("allowOff", "allow_off", bool), ("minGain", "min_gain", float),
            ("restartCostSeconds", "restart_cost_seconds", float),
            ("regimeSeconds", "regime_seconds", float),
            ("costModel", "cost_model", str),
            ("rejectCooldownSeconds", "reject_cooldown_seconds", float),
            ("explore", "explore", bool),
        ):
            if key in at:
                kw[name] = conv(at[key])
        kw["canary"] = bool((at.get("canary") or {}).get("enabled", False))
        kw["replicas"] = int(spec.get("replicas", 1))
        if "afterSeconds" in ver:
            kw["verify_after_seconds"] = float(ver["afterSeconds"])
        if "minWindows" in ver:
            kw["verify_min_windows"] = int(ver["minWindows"])
        if "minDrafts" in gate:
            kw["min_drafts"] = float(gate["minDrafts"])
        if "minRequests" in gate:
            kw["min_requests"] = float(gate["minRequests"])
        if "lowAcceptance" in thr:
            kw["low_acceptance"] = float(thr["lowAcceptance"])
        if "highAcceptance" in thr:
            kw["high_acceptance"] = float(thr["highAcceptance"])
        if "step" in thr:
            kw["threshold_step"] = int(thr["step"])
        return cls(**kw)


@dataclass(frozen=True)
class Window:
    """One observation window of one SDD at one K, summed over its pods."""

    k: int                                  # K the pods ran (0: speculation off)
    seconds: float
    drafts: float
    draft_tokens: float
    accepted: float
    accepted_per_pos: tuple[float, ...]     # positions 0..K-1
    generation_tokens: float
    requests: float                         # finished requests
    load: Load                              # running-requests distribution per replica
    # Step-time evidence (NaN: the series were missing).
    itl_sum: float = math.nan               # increase(inter_token_latency_seconds_sum)
    itl_count: float = math.nan             # increase(inter_token_latency_seconds_count)
    steps: float = math.nan                 # increase(iteration_tokens_total_count)
    prompt_tokens: float = 0.0              # increase(prompt_tokens_total)

    @property
    def acceptance_rate(self) -> float | None:
        return self.accepted / self.draft_tokens if self.draft_tokens > 0 else None

    @property
    def mean_acceptance_length(self) -> float | None:
        return 1 + self.accepted / self.drafts if self.drafts > 0 else None

    @property
    def tokens_per_second(self) -> float:
        return self.generation_tokens / self.seconds if self.seconds > 0 else 0.0

    def itl_batch(self) -> float:
        """Running requests per engine step as the latency mean sees them (ITL weights each
        step by its batch: E[B^2]/E[B]); the spread's factor is bounded at 5."""
        return self.itl_count / self.steps * (1 + min(self.step_sample().load_cv2, 4.0))

    def step_sample(self) -> StepSample:
        # The spread of B over busy time only: idle samples (B = 0) have no engine steps and
        # no latency observations, so they do not shift where the ITL mean sees T.
        vals = [b for b, _ in self.load if b > 0]
        mean = sum(vals) / len(vals) if vals else 0.0
        cv2 = (sum((v - mean) ** 2 for v in vals) / len(vals)) / mean ** 2 if mean > 0 else 0.0
        return StepSample(k=self.k, itl_sum=self.itl_sum, itl_count=self.itl_count,
                          steps=self.steps, prompt_tokens=self.prompt_tokens, load_cv2=cv2,
                          load_mean=mean if vals else math.nan)


@dataclass(frozen=True)
class State:
    """What the tuner remembers between evaluations (persisted in status)."""

    last_change: float | None = None                # epoch seconds of the last K change
    changes: tuple[float, ...] = ()                 # change times within the last day
    pending_k: int | None = None                    # recommendation awaiting confirmation
    pending_count: int = 0
    pending_since: float | None = None
    survival: tuple[float, ...] = ()                # last measured S_i (kept while off)
    # calibration
    points: tuple[CalPoint, ...] = ()
    cost: CostModel | None = None                   # the last fit (recomputed from points)
    cost_note: str = ""                             # why the last window was (not) used
    # regime history
    history_time: float | None = None
    history_start: float | None = None
    history_shifted: bool = False                   # history_start is a detected shift
    load_hist: tuple[float, ...] = ()               # EW over regime_seconds
    load_hist_long: tuple[float, ...] = ()          # EW over LONG_FACTOR x regime_seconds
    acc_sum: tuple[float, ...] = ()                 # EW accepted per position
    acc_drafts: tuple[float, ...] = ()              # EW drafts per position
    shift_since: float | None = None                # the load left the history's level
    shift_load: tuple[float, ...] = ()              # ... and what it has been since
    shift_direction: int = 0                        # +1 up, -1 down
    shift_event: str = ""                           # this evaluation saw a shift (not kept)
    mix_since: float | None = None                  # acceptance left the history's level
    mix_acc: tuple[float, ...] = ()                 # ... accepted per position since then
    mix_drafts: tuple[float, ...] = ()              # ... and drafts per position
    mix_direction: int = 0                          # +1 up, -1 down
    mix_event: str = ""                             # this evaluation saw a mix shift
    # verification
    verify: Verification | None = None
    last_probe: float | None = None
    rejected: tuple[Rejected, ...] = ()
    outcomes: tuple[Outcome, ...] = ()
    # canary mode: the candidate K running on one replica, and its side-by-side samples
    canary: Verification | None = None


@dataclass(frozen=True)
class Decision:
    action: Literal["keep", "change"]
    k_from: int
    k_to: int
    recommended: int
    reason: str
    state: State
    predicted_gain: float | None = None             # relative, recommended vs current
    predictions: dict[int, float] = field(default_factory=dict)  # tokens/s per k
    cost_source: str = "prior"                      # the cost model the decision used
    rollback: bool = False
    events: tuple[tuple[str, str, str], ...] = ()   # (type, reason, message) to publish

    @property
    def canary_k(self) -> int | None:
        """The K the canary replica runs after this decision (None: no canary)."""
        return self.state.canary.k_to if self.state.canary is not None else None

    @property
    def changed(self) -> bool:
        return self.action == "change"


class _Known:
    """A cost table taken as exact (the bench's clairvoyant-cost baseline, tests)."""

    def __init__(self, table: StepCost, source: str = "given") -> None:
        self.table, self.source = table, source

    def step_ms(self, b: float, k: int, prefill: float = 0.0) -> float:
        return self.table.step_ms(b, k)

    def ratio_se(self, b: float, c: int, k: int, *_prefill: float) -> float:
        return 0.0


MAX_PROMPT_RATIO = 64.0   # prompt tokens per generated token beyond this is a counter fault


class _Priced:
    """The cost model as candidate Ks are priced: each step also computes the prompt tokens
    that arrive with the requests it finishes, ``rho`` per generated token (measured), so a
    step at K carries rho * B * L(K) prefill tokens. Pricing at zero prefill would ask the
    model about verify widths it has never seen (below all its points on a compute-bound
    deployment, where the prior's shape, not the data, answers)."""

    def __init__(self, model: Any, rho: float, tokens_per_step: Any) -> None:
        self.model, self.rho, self.tps = model, rho, tokens_per_step
        self.source = getattr(model, "source", "prior")

    def prefill(self, b: float, k: int) -> float:
        return self.rho * max(1.0, b) * self.tps(k) if self.rho > 0 else 0.0

    def step_ms(self, b: float, k: int, prefill: float | None = None) -> float:
        return self.model.step_ms(b, k, self.prefill(b, k) if prefill is None else prefill)

    def ratio_se(self, b: float, c: int, k: int, *_prefill: float) -> float:
        return self.model.ratio_se(b, c, k, self.prefill(b, c), self.prefill(b, k))


def _prompt_ratio(window: Window) -> float:
    """Prompt tokens per generated token in the window (0 when unknown or implausible)."""
    p, g = window.prompt_tokens, window.generation_tokens
    if not (math.isfinite(p) and math.isfinite(g)) or p <= 0 or g <= 0:
        return 0.0
    return min(p / g, MAX_PROMPT_RATIO)


def _keep(window_k: int, state: State, reason: str, recommended: int | None = None,
          **kw: Any) -> Decision:
    return Decision("keep", window_k, window_k,
                    window_k if recommended is None else recommended, reason, state, **kw)


def _candidates(s: Settings, k: int) -> list[int]:
    lo, hi = max(s.k_min, k - s.max_step), min(s.k_max, k + s.max_step)
    if k == OFF:
        lo, hi = s.k_min, min(s.k_max, s.k_min + s.max_step)
    out = list(range(lo, hi + 1))
    if s.allow_off:
        out.insert(0, OFF)
    return out


def threshold_target(s: Settings, k: int, rate: float) -> tuple[int, str]:
    """The published rule: acceptance < low -> K-2, > high -> K+2, clamped to [min, max]."""
    if rate < s.low_acceptance:
        t = max(s.k_min, k - s.threshold_step)
        return t, f"acceptance {rate:.2f} < {s.low_acceptance}: K {k} -> {t}"
    if rate > s.high_acceptance:
        t = min(s.k_max, k + s.threshold_step)
        return t, f"acceptance {rate:.2f} > {s.high_acceptance}: K {k} -> {t}"
    return k, f"acceptance {rate:.2f} within [{s.low_acceptance}, {s.high_acceptance}]"


def _hurdle(s: Settings, life: float) -> float:
    """What a change must gain: min_gain plus the restart spread over ``life`` seconds."""
    return s.min_gain + s.restart_cost_seconds / life


def _lcb_gain(s: Settings, k: int, c: int, survival: acceptance.Survival, load: Load,
              cost: Any, cur: float) -> float:
    """Lower confidence bound of the relative gain of c over k under ``load``.

    Acceptance: the candidate's L is lowered by z standard errors of the positions that
    differ. Cost: the model's standard error of T(c)/T(k), averaged over the load.
    """
    se_l = survival.tokens_per_step_se(c, k)

    def l_pess(j: int) -> float:
        return survival.tokens_per_step(j) - (s.confidence_z * se_l if j == c else 0.0)

    tw = sum(w for _, w in load)
    se_t = sum(w * cost.ratio_se(b, c, k) for b, w in load) / tw if tw > 0 else 0.0
    return (goodput(c, l_pess, load, cost) / cur) * math.exp(-s.confidence_z * se_t) - 1.0


def _speed_ratio(k: int, c: int, survival: acceptance.Survival, b: float, cost: Any) -> float:
    """Per-request decode speed of c over k at batch b: (L(c)/T(b,c)) / (L(k)/T(b,k))."""
    return (survival.tokens_per_step(c) / cost.step_ms(b, c)) / (
        survival.tokens_per_step(k) / cost.step_ms(b, k))


def _typical_gain(k: int, c: int, survival: acceptance.Survival, load: Load,
                  cost: Any) -> float:
    """The relative per-request speed change of c over k, averaged over time (not tokens)."""
    tw = sum(w for _, w in load)
    if tw <= 0:
        return 0.0
    acc = sum(w * _speed_ratio(k, c, survival, max(1.0, b), cost) for b, w in load)
    return acc / tw - 1.0


def goodput_target(
    s: Settings, k: int, survival: acceptance.Survival, loads: list[Load], cost: Any,
    now_survival: acceptance.Survival, now_load: Load, life: float,
    rejected: frozenset[int] = frozenset(), probe: frozenset[int] = frozenset(),
    home: int | None = None, follow: tuple[int, float] | None = None,
    rebound: bool = False, probe_life: float | None = None, miss: float = 0.0,
) -> tuple[int, str, float, dict[int, float]]:
    """Best K by the lower confidence bound of its gain under the load histories.

    A candidate is priced under the regime's hours of load; the day's history (``loads[1:]``)
    is a veto: a candidate that would lose under it counts its smallest gain of all
    histories. The hurdle is min_gain + restart_cost / life: a change
    must earn its restart back over the regime's expected remaining life. The current window
    must agree (the candidate's point gain now is positive), so a stale history never
    overrides what runs now. ``home`` (the initial K, measured before): when no candidate
    passes, going back there needs only its point estimate to clear the hurdle, under every
    history and now. Returns (target, reason, predicted gain, point predictions).
    """
    curs = [goodput(k, survival.tokens_per_step, ld, cost) for ld in loads]
    cur_now = goodput(k, now_survival.tokens_per_step, now_load, cost)
    preds: dict[int, float] = {}
    gains: dict[int, float] = {}
    best, best_lo = k, -math.inf
    # Off slows every request at low load: it must also win on the relative per-request
    # speed averaged over time, so that a spike's tokens never switch speculation off for
    # the quiet hours around it.
    for c in _candidates(s, k):
        pc = [goodput(c, survival.tokens_per_step, ld, cost) for ld in loads]
        preds[c] = pc[0]
        rel = [p / cu - 1.0 for p, cu in zip(pc, curs, strict=True)]
        typical = _typical_gain(k, c, survival, loads[0], cost) if c == OFF else math.inf
        # Priced under the regime's hours; the day's history only vetoes: a K that loses
        # over the day is judged by its worst history, one that does not by the regime.
        day_ok = min(rel[1:], default=0.0) >= 0.0
        gains[c] = min(rel[0] if day_ok else min(rel), typical)
        if c == k or c in rejected:
            continue
        lcbs = [_lcb_gain(s, k, c, survival, ld, cost, cu)
                for ld, cu in zip(loads, curs, strict=True)]
        lo = min(lcbs[0] if day_ok else min(lcbs), typical)
        if lo > best_lo:
            best, best_lo = c, lo
    hurdle = _hurdle(s, life)
    gain = gains[best]
    now_gain = (goodput(best, now_survival.tokens_per_step, now_load, cost) / cur_now - 1.0
                if best != k and cur_now > 0 else 0.0)
    if (best == k or best_lo <= hurdle or now_gain <= 0) and home is not None and \
            home != k and home in gains and home not in rejected and cur_now > 0:
        # Safety first: the burden of proof lies on the K that is not the default. Back home
        # needs only the point estimate to clear the hurdle, under every history and now.
        home_now = goodput(home, now_survival.tokens_per_step, now_load, cost) / cur_now - 1.0
        if gains[home] > hurdle and home_now > 0:
            return home, (f"K {k} -> {home}: back to the initial K: predicted "
                          f"{gains[home]:+.1%} under the load history (> {hurdle:.1%} "
                          f"hurdle; now {home_now:+.1%})"), gains[home], preds
    if (best == k or best_lo <= hurdle or now_gain <= 0) and follow is not None and \
            follow[0] in gains and follow[0] not in rejected and cur_now > 0:
        # Follow-through: the last step in this direction paid ``bias`` more than the model
        # said; until the model has seen the next K, its error there is taken to be the same.
        c, bias = follow
        pc = gains[c] + bias
        c_now = goodput(c, now_survival.tokens_per_step, now_load, cost) / cur_now - 1 + bias
        if pc > hurdle and c_now > 0:
            return c, (f"K {k} -> {c}: probe (follow-through): the last step paid "
                       f"{bias:+.1%} more than predicted; corrected {pc:+.1%} under the load "
                       f"history (> {hurdle:.1%} hurdle; now {c_now:+.1%}); verified and "
                       "rolled back if not better"), pc, preds
    if (best == k or best_lo <= hurdle or now_gain <= 0) and probe:
        p_hurdle = hurdle if probe_life is None else _hurdle(s, probe_life)
        p = _probe(s, k, survival, loads, cost, curs, p_hurdle, probe, rejected, rebound,
                   miss)
        if p is not None:
            c, ucb, point = p
            after = (f", after a step down it missed by {miss:.1%}"
                     if c > k and miss > 0 else "")
            return c, (f"K {k} -> {c}: probe of an unmeasured K: the cost model cannot rule "
                       f"out {ucb:+.1%} there (point {point:+.1%}, hurdle {p_hurdle:.1%}"
                       f"{after}); verified and rolled back if not better"), point, preds
    if best == k or best_lo <= hurdle or now_gain <= 0:
        point = max((c for c in gains if c not in rejected or c == k), key=lambda c: gains[c])
        why = (f"K {k} kept: best alternative K {point} predicts {gains[point]:+.1%} "
               f"under the load history")
        if best != k:
            why += f" (K {best}: lower bound {best_lo:+.1%}"
            why += (f", below the {hurdle:.1%} hurdle: min gain + restart cost over "
                    f"{life / 3600:.1f}h)" if best_lo <= hurdle else
                    f", but {now_gain:+.1%} in the current window)")
        return k, why, 0.0, preds
    name = "off" if best == OFF else str(best)
    return best, (
        f"K {k} -> {name}: predicted goodput {gain:+.1%} under the load history (lower bound "
        f"{best_lo:+.1%} > {hurdle:.1%} hurdle over {life / 3600:.1f}h; now {now_gain:+.1%}); "
        f"L({k})={survival.tokens_per_step(k):.2f}, "
        f"L({best})={survival.tokens_per_step(best):.2f}"), gain, preds


SHIFT_FRACTION = 1 / 3  # of regimeSeconds: a load level held this long is a new regime
PROBE_SPAN = 2        # a probe moves K down by at most this much
PROBE_MIN_POINT = -0.03  # never probe a K the model already expects to lose by more
PROBE_AFTER = 1 / 3   # of regimeSeconds of history before the first probe
TYPICAL_BAND = 4.0    # a probe starts only while the load is within this factor of usual


def _probe(s: Settings, k: int, survival: acceptance.Survival, loads: list[Load], cost: Any,
           curs: list[float], hurdle: float, unmeasured: frozenset[int],
           rejected: frozenset[int], rebound: bool = False, miss: float = 0.0
           ) -> tuple[int, float, float] | None:
    """The unmeasured K below the current one that the model likes best, among those whose
    optimistic gain beats twice the hurdle under every history (a probe may cost two
    restarts: there and back). ``rebound``: the probe below just failed; then the K above
    whose point gain alone clears the hurdle instead. ``miss`` (> 0: a probe interval after
    that failure, under a steady load): the K above under the rule for probes below, with
    the model's doubt widened by how much it missed the failed step by."""
    best: tuple[int, float, float] | None = None
    for c in _candidates(s, k):
        # Downwards: below the running K the acceptance is measured exactly, so the probe
        # tests the cost model alone; above it the gain also rests on an extrapolated
        # acceptance tail that no bound vouches for (on the development set every upward
        # probe lost, and a kept one can strand K where the model is wrong). Upwards only on
        # the rebound: the step down cost more than the model said, which is evidence that
        # the step cost rises less towards larger K than it thought (a staircase), and the
        # model refitted on that step must then expect a gain there on its own. A probe
        # interval later (``miss``), its doubt about the K above is widened by that miss: a
        # model that missed one unmeasured K by 6 % can miss the next one by as much.
        if c in (k, OFF) or (c > k) != rebound or c not in unmeasured or c in rejected or \
                abs(k - c) > PROBE_SPAN:
            continue
        points, ucbs = [], []
        for ld, cur in zip(loads, curs, strict=True):
            tw = sum(w for _, w in ld)
            point = goodput(c, survival.tokens_per_step, ld, cost) / cur - 1.0
            se_t = sum(w * cost.ratio_se(b, c, k) for b, w in ld) / tw if tw > 0 else 0.0
            se_t = math.hypot(se_t, miss) if c > k else se_t
            points.append(point)
            ucbs.append((1.0 + point) * math.exp(s.confidence_z * se_t) - 1.0)
        point, ucb = min(points), min(ucbs)
        floor = hurdle if rebound and miss <= 0 else PROBE_MIN_POINT
        if point >= floor and ucb > 2 * hurdle and (best is None or point > best[2]):
            best = (c, ucb, point)
    return best


def _probe_life(state: State, now: float, horizon: float, life: float) -> float:
    """The life a probe's hurdle is priced over. After a detected load shift the regime's
    age is known, and a heavy-tailed regime that began ``age`` ago lasts about as long again
    (Lindy): a probe right after a shift (a long spike looks like one for its first hour)
    must promise more than one hours later. Never below the shift's own length, nor above
    the life a change is priced over."""
    if not state.history_shifted or state.history_start is None:
        return life
    return min(life, max(now - state.history_start, SHIFT_FRACTION * horizon))


def _rebound(state: State, k: int) -> bool:
    """The last change was a step down from ``k`` that was rolled back (each failed step
    allows one rebound: the rebound's own outcome is then the last one)."""
    if not state.outcomes:
        return False
    o = state.outcomes[-1]
    return o.verdict == "rolled back" and o.k_from == k and 0 < o.k_to < k


def _typical_now(now_load: Load, hist: tuple[float, ...]) -> bool:
    """The current window's mean load is within a factor TYPICAL_BAND of the regime
    history's median: a probe is verified at the load it will live under, not in a spike."""
    med, mean_now = regime.median(hist), regime.mean_load(now_load)
    if med is None or mean_now is None:
        return False
    return _within_band(mean_now, med)


def _within_band(b: float, median: float) -> bool:
    return median / TYPICAL_BAND <= max(b, 1.0) <= median * TYPICAL_BAND


CURVE_BATCHES = (1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0)


def _gain_curve(k: int, c: int, survival: acceptance.Survival, cost: Any,
                correction: float) -> tuple[tuple[float, float], ...]:
    """The predicted per-request speed gain of c over k at each batch: what verification
    compares each window with, at that window's own load."""
    return tuple((b, round(_speed_ratio(k, c, survival, b, cost) - 1.0 + correction, 4))
                 for b in CURVE_BATCHES)


def _chained_tokens_per_step(now: acceptance.Survival, state: State, k_now: int,
                             k_old: int) -> float | None:
    """L(k_old) for a window at k_now < k_old: this window's positions, then the acceptance
    history's conditional rates for the positions only the old K drafted; None when the
    history lacks them."""
    a, d = state.acc_sum, state.acc_drafts
    if len(d) < k_old or len(a) < k_old or any(d[i] <= 0 for i in range(k_old)):
        return None
    hist = [a[i] / d[i] for i in range(k_old)]
    s_j, total = now.s[k_now - 1], now.tokens_per_step(k_now)
    for j in range(k_now, k_old):
        prev = hist[j - 1]
        if prev <= 1e-9:
            return None
        s_j *= min(1.0, hist[j] / prev)
        total += s_j
    return total


def _measured_ms(points: tuple[CalPoint, ...], k: int, n: float) -> float | None:
    """Step time at K ``k`` and verify width ``n`` interpolated between this deployment's
    own calibration points at that K (linear, and at most 10 % past either end along the
    end segment); None where they do not reach."""
    pts = sorted((p.n, p.t_ms) for p in points if p.k == k and p.w > 0.5)
    if len(pts) < 2 or not pts[0][0] / 1.1 <= n <= pts[-1][0] * 1.1:
        return None
    i = 1
    while i < len(pts) - 1 and n > pts[i][0]:
        i += 1
    (n0, t0), (n1, t1) = pts[i - 1], pts[i]
    if n1 <= n0:
        return t1
    return t0 + (t1 - t0) * (n - n0) / (n1 - n0)


def _follow(s: Settings, state: State, k: int) -> tuple[int, float] | None:
    """The next K in the direction of the last change, when that change was kept and
    realized more than it predicted, and that K has never run here; with the model's error
    on the last step (realized - predicted)."""
    if not state.outcomes:
        return None
    o = state.outcomes[-1]
    if o.verdict != "kept" or o.realized is None or o.k_to != k or o.k_from in (k, OFF) \
            or k == OFF:
        return None
    # The cost model's own error on that step (a follow-through's prediction already carried
    # the step before's: counting it again would compound it, and dropping it would stop a
    # descent the model keeps underestimating at the second step).
    bias = o.model_error
    if bias is None or o.realized <= 0 or bias <= 0:
        return None
    if s.initial_k is not None and abs(o.k_to - s.initial_k) < abs(o.k_from - s.initial_k):
        # A step back towards the initial K returned to where the tuner started: what it
        # paid says how bad the K it left was, nothing about the K beyond.
        return None
    c = k + (1 if o.k_to > o.k_from else -1)
    if not s.k_min <= c <= s.k_max or any(p.k == c for p in state.points):
        return None
    return c, bias


def _long_survival(state: State, k: int, window: Window, extend_to: int
                   ) -> acceptance.Survival | None:
    """Survival from the acceptance history, no more certain than three windows."""
    a, d = state.acc_sum, state.acc_drafts
    if not d or d[0] <= 0:
        return None
    m = 0
    while m < len(d) and d[m] >= 0.3 * d[0]:
        m += 1
    m = max(1, min(m, len(a)))
    drafts = min(d[0], 3 * window.drafts) if window.drafts > 0 else d[0]
    per_pos = [a[i] / d[i] * drafts for i in range(m)]
    try:
        return acceptance.from_counters(drafts, per_pos, extend_to=extend_to)
    except ValueError:
        return None


def _calibrate(s: Settings, state: State, window: Window, now: float) -> State:
    point, why = calibration.point_from_sample(
        window.step_sample(), now=now, last_change=state.last_change,
        window_seconds=s.window_seconds)
    points = state.points
    new_bin = False
    if point is not None:
        new_bin = calibration.opens_bin(points, point)
        points = calibration.add_point(points, point)
    cost = state.cost
    # Refit while still on the prior too: the third window must not wait half an hour; nor
    # does a window at a new K or a new load (the fit extrapolated there).
    if cost is None or new_bin or cost.time is None or cost.source != "fitted" or \
            now - cost.time >= min(REFIT_SECONDS, s.regime_seconds / REFITS_PER_REGIME):
        cost = calibration.fit(points, now=now, previous=cost)
    note = "window used" if point is not None else f"window not used: {why}"
    return replace(state, points=points, cost=cost, cost_note=note)


def _verify(s: Settings, state: State, window: Window, survival: acceptance.Survival | None,
            cost: Any, now: float) -> tuple[State, Decision | None]:
    """Add this window's realized gain to the open verification; roll back or close it."""
    v = state.verify
    if v is None:
        return state, None
    usable, _why = calibration.point_from_sample(
        window.step_sample(), now=now, last_change=v.time, window_seconds=s.window_seconds)
    step_up = 0 < v.k_from < v.k_to
    # An upward probe is judged at the load it was started under: beyond it its gain rests on
    # an acceptance tail and a cost slope in K that no window there has measured.
    typical = not (v.probe and step_up) or _typical_now(window.load, state.load_hist)
    if window.k == v.k_to and usable is not None and typical:
        t_new = 1000.0 * window.itl_sum / window.itl_count
        b = window.itl_batch()
        prefill = max(0.0, window.prompt_tokens) / window.steps
        l_new = 1.0 + window.accepted / window.drafts if window.drafts > 0 and v.k_to else 1.0
        long_s = _long_survival(state, v.k_from, window, max(v.k_from, 1))
        sv = survival if survival is not None and v.k_to > 0 else long_s
        l_old = sv.tokens_per_step(v.k_from) if sv is not None else None
        if l_old is not None and sv is survival and 0 < v.k_to < v.k_from:
            # Positions above the new K are not drafted now, but the old K measured them:
            # chain the history's conditional acceptance onto this window's, instead of the
            # extrapolated tail (which no measurement vouches for).
            l_old = _chained_tokens_per_step(survival, state, v.k_to, v.k_from) or l_old
        if l_old is not None:
            # The old K as measured here at this width when it ran at such loads; the model
            # only where it never did (a smooth fit misses the GEMM staircase between Ks).
            # Prompt tokens arrive with finished requests: the old K, finishing L_old / L_new
            # times as many per step, computed that much more prefill per step.
            pre_old = prefill * l_old / l_new if l_new > 0 else prefill
            t_old = None if isinstance(cost, _Known) else _measured_ms(
                state.points, v.k_from, b * (v.k_from + 1) + pre_old)
            if t_old is None:
                t_old = cost.step_ms(b, v.k_from, pre_old)
            if isinstance(cost, _Known) and cost.source == "prior":
                # A table not fitted to this deployment (the H200 prior taken as exact) is in
                # another machine's units: only its ratio between the two Ks applies here.
                t_old *= t_new / cost.step_ms(b, v.k_to, prefill)
            g = realized_gain(l_new, t_new, l_old, t_old)
            expected = v.expected_at(b)
            if survival is not None and step_up:
                # A step up measures both Ks' acceptance in this window: expect the gain at
                # this window's mix, so that the error is the cost model's alone (a mix that
                # flaps would otherwise read as the new K's loss or gain).
                priced = _Priced(cost, _prompt_ratio(window), survival.tokens_per_step)
                expected = _speed_ratio(v.k_from, v.k_to, survival, max(1.0, b), priced) \
                    - 1.0 + v.correction
            v = replace(v, samples=(*v.samples, (now, g, expected)))
            state = replace(state, verify=v)
    age = now - v.time
    mean, se, raw = judged(v, s.window_seconds)
    done = age >= s.verify_after_seconds and len(v.samples) >= s.verify_min_windows
    if not done:
        if age > 4 * max(s.verify_after_seconds, s.window_seconds):
            out = Outcome(v.time, v.k_from, v.k_to, v.predicted,
                          mean if v.samples else None, "inconclusive", v.correction)
            return replace(state, verify=None,
                           outcomes=(*state.outcomes, out)[-OUTCOMES:]), None
        return state, None
    upper = mean + s.confidence_z * se
    # Confidently worse goes back (safety); a probe goes back unless it was better. Either
    # needs the new K measured worse at its own windows' load too: the projection under the
    # load history rests on the model's load shape, which a measured gain outranks.
    if raw < 0 and (upper < 0 or (v.probe and mean < 0)):
        evidence = (f"K {v.k_to} realized {mean:+.1%} under the load history (upper bound "
                    f"{upper:+.1%}; {raw:+.1%} measured at the load of its {len(v.samples)} "
                    f"windows) vs K {v.k_from}; predicted {v.predicted:+.1%}")
        out = Outcome(v.time, v.k_from, v.k_to, v.predicted, mean, "rolled back",
                      v.correction)
        rej = tuple(r for r in state.rejected if r.k != v.k_to and r.until > now)
        if upper < 0:   # confidently worse: not again until the cooldown expires
            rej = (*rej, Rejected(v.k_to, now + s.reject_cooldown_seconds, evidence))
        st = replace(state, verify=None, outcomes=(*state.outcomes, out)[-OUTCOMES:],
                     rejected=rej,
                     last_change=now, changes=(*state.changes, now),
                     pending_k=None, pending_count=0, pending_since=None)
        name = "off" if v.k_from == OFF else str(v.k_from)
        why = (f"rollback K {v.k_to} -> {name}: {evidence}" + (
            f"; K {v.k_to} rejected for {s.reject_cooldown_seconds / 3600:.3g}h"
            if upper < 0 else "; the probe was not better"))
        if s.mode == "Recommend":
            return st, _keep(window.k, st, why + " (Recommend mode: not applied)",
                             recommended=v.k_from, rollback=True)
        return st, Decision("change", window.k, v.k_from, v.k_from, why, st, rollback=True,
                            events=(("Warning", "DraftTokensRolledBack", why),))
    out = Outcome(v.time, v.k_from, v.k_to, v.predicted, mean, "kept", v.correction)
    # A probe that paid says the model is wrong in that direction: the next probe there
    # need not wait out the probe interval (which exists to bound the cost of failed ones).
    last_probe = None if v.probe else state.last_probe
    return replace(state, verify=None, outcomes=(*state.outcomes, out)[-OUTCOMES:],
                   last_probe=last_probe), None


UNTYPICAL_SHARE = 0.05  # of the day's tokens at untypical load: no probe upwards beyond it


def _miss(state: State) -> float:
    """How far the cost model missed the last change's outcome by (its own error there)."""
    e = state.outcomes[-1].model_error if state.outcomes else None
    return abs(e) if e is not None else 0.0


def _untypical_share(state: State, cost: Any, k: int) -> float:
    """The share of the day history's tokens (at K ``k``) at loads outside TYPICAL_BAND of
    the regime's median, where an upward probe, verified at typical load only, is never
    measured. On the MoE world one drafted token more wins 1 % at 30 running requests and
    loses 6 % at 256: a verdict at one load says nothing about the other."""
    med = regime.median(state.load_hist)
    dist = regime.distribution(state.load_hist_long)
    if med is None or not dist:
        return 0.0
    tokens = [(b, w * max(1.0, b) / cost.step_ms(max(1.0, b), k)) for b, w in dist]
    total = sum(t for _, t in tokens)
    return sum(t for b, t in tokens if not _within_band(b, med)) / total if total > 0 \
        else 0.0


def canary_on(s: Settings) -> bool:
    """Canary mode applies: asked for, with a replica to spare, under the goodput policy."""
    return s.canary and s.replicas >= 2 and s.policy == "goodput" and s.mode == "Auto"


def _side(w: Window) -> Side | None:
    """A window as one side of the canary comparison (None: no usable latency evidence)."""
    if not all(math.isfinite(v) and v > 0 for v in (w.itl_sum, w.itl_count, w.steps)):
        return None
    length = 1.0 + w.accepted / w.drafts if w.k != OFF and w.drafts > 0 else 1.0
    return Side(k=w.k, length=length, step_ms=1000.0 * w.itl_sum / w.itl_count,
                batch=w.itl_batch())


def _canary_step(s: Settings, state: State, window: Window, canary_window: Window | None,
                 cost: Any, now: float) -> Decision:
    """One evaluation while a canary runs: add its side-by-side sample, then judge it."""
    c = state.canary
    assert c is not None
    k = window.k
    name = "off" if c.k_to == OFF else str(c.k_to)

    def ended(verdict: str, realized: float | None) -> State:
        out = Outcome(now, c.k_from, c.k_to, c.predicted, realized, verdict, c.correction)
        return replace(state, canary=None, last_change=now,
                       outcomes=(*state.outcomes, out)[-OUTCOMES:])

    if not canary_on(s):
        why = (f"canary K {name} removed: canary mode no longer applies (enabled, 2+ "
               f"replicas, Auto mode and the goodput policy); K {k} stays")
        return _keep(k, ended("inconclusive", None), why,
                     events=(("Warning", "CanaryAbandoned", why),))
    cw = canary_window
    if cw is not None and cw.k == c.k_to and k == c.k_from and now - c.time >= s.window_seconds:
        # Only windows wholly after the canary started (its restart is not its speed).
        main, can = _side(window), _side(cw)
        if main is not None and can is not None and (c.k_to == OFF or cw.drafts > 0):
            g = side_by_side_gain(main, can, lambda b, j: cost.step_ms(b, j))
            c = replace(c, samples=(*c.samples, (now, g, c.expected_at(can.batch))))
            state = replace(state, canary=c)
        # The canary's window is a measured step time at its K: calibration evidence.
        if not isinstance(cost, _Known):
            kept = (state.last_change, state.cost_note)
            st = _calibrate(s, replace(state, last_change=c.time), cw, now)
            state = replace(st, last_change=kept[0], cost_note=kept[1])
    v = judge(c, now=now, after_seconds=s.verify_after_seconds,
              min_windows=s.verify_min_windows, window_seconds=s.window_seconds,
              z=s.confidence_z)
    if v.action == "wait":
        so_far = sum(g for _, g, _ in c.samples) / len(c.samples) if c.samples else None
        return _keep(k, state, (
            f"canary K {name} on 1 of {s.replicas} replicas: {v.windows} windows side by "
            f"side{f', {so_far:+.1%} so far' if so_far is not None else ''}, "
            f"{now - c.time:.0f}/{s.verify_after_seconds:.0f}s"), recommended=c.k_to)
    if v.action == "abandon":
        why = (f"canary K {name} removed: only {v.windows} usable windows in "
               f"{now - c.time:.0f}s (pod not ready, no traffic or no latency series); "
               f"K {k} stays")
        return _keep(k, ended("inconclusive", None), why,
                     events=(("Warning", "CanaryAbandoned", why),))
    evidence = (f"canary K {name} measured {v.mean:+.1%} vs K {c.k_from} side by side "
                f"(upper bound {v.upper:+.1%}, {v.windows} windows); predicted "
                f"{c.predicted:+.1%}")
    if v.action == "promote":
        st = ended("kept", v.mean)
        # The side-by-side screen cannot see a difference between the canary's machine and
        # the others': the promoted K is verified fleet-wide like any change.
        st = replace(st, verify=replace(c, time=now, samples=()))
        return Decision("change", k, c.k_to, c.k_to, f"K {k} -> {name}: {evidence}: "
                        "promoted to all replicas", st, predicted_gain=c.predicted)
    # Confidently worse: removed, and not tried again until the cooldown expires.
    st = ended("rolled back", v.mean)
    rej = (*(r for r in st.rejected if r.k != c.k_to and r.until > now),
           Rejected(c.k_to, now + s.reject_cooldown_seconds, evidence))
    why = (f"{evidence}: removed, K {k} stays; K {name} rejected for "
           f"{s.reject_cooldown_seconds / 3600:.3g}h")
    return _keep(k, replace(st, rejected=rej), why,
                 events=(("Warning", "CanaryRejected", why),))


def decide(
    settings: Settings, state: State, window: Window, *, now: float,
    cost: StepCost | None = None, canary_window: Window | None = None,
) -> Decision:
    """Keep K or change it, with a human-readable reason and the tuner's new state.

    ``window`` holds the counters of the K that runs now; with no metrics at all there is
    nothing to decide and the caller reports that instead of calling this. ``cost`` given
    means that table is taken as exact (no calibration); otherwise the step cost is
    calibrated from the windows, with the shipped H200 table as the prior.
    ``canary_window``: in canary mode, the counters of the canary replica (at the canary's
    K) over the same window, while a canary runs (canary.py).
    """
    d = _decide(settings, replace(state, shift_event="", mix_event=""), window, now=now,
                cost=cost, canary_window=canary_window)
    # A detected shift is news whatever the decision: said in the reason and an Event.
    for note, reason in ((d.state.shift_event, "LoadShifted"),
                         (d.state.mix_event, "AcceptanceShifted")):
        if note:
            d = replace(d, reason=d.reason + "; " + note,
                        events=(*d.events, ("Normal", reason, note)))
    return replace(d, state=replace(d.state, shift_event="", mix_event=""))


def _decide(
    settings: Settings, state: State, window: Window, *, now: float,
    cost: StepCost | None = None, canary_window: Window | None = None,
) -> Decision:
    """decide() before the load-shift note is added to the reason."""
    s = settings
    state = replace(state, changes=tuple(t for t in state.changes if now - t < DAY),
                    rejected=tuple(r for r in state.rejected if r.until > now))
    k = window.k
    if s.mode == "Off":
        return _keep(k, state, "autotune is Off")

    model: Any
    if cost is not None:
        model = _Known(cost)
    elif s.cost_model == "Prior":
        model = _Known(default_profile(), "prior")
        state = replace(state, cost=None, cost_note="costModel: Prior (the H200 table as exact)")
    else:
        if state.canary is None:   # while a canary runs the main pods are not the fleet
            state = _calibrate(s, state, window, now)
        model = state.cost or calibration.prior()
        if not state.points and not math.isfinite(window.itl_count):
            # No latency series at all (an older vLLM, or a scrape without them): nothing
            # could ever resolve the prior's doubt, so the table is taken as exact, as before
            # calibration existed.
            model = _Known(default_profile(), "prior")
    source = getattr(model, "source", "prior")
    kw: dict[str, Any] = {"cost_source": source}

    # History first: the load the next K will live under includes this window.
    horizon = s.regime_seconds
    hist = regime.update_load(state.load_hist, state.history_time, window.load, now=now,
                              window_seconds=window.seconds, horizon=horizon)
    hist_long = regime.update_load(state.load_hist_long, state.history_time, window.load,
                                   now=now, window_seconds=window.seconds,
                                   horizon=LONG_FACTOR * horizon)
    acc, dr = state.acc_sum, state.acc_drafts
    m_since, m_acc, m_dr, m_dir = (state.mix_since, state.mix_acc, state.mix_drafts,
                                   state.mix_direction)
    mix_note = ""
    if k != OFF and window.drafts > 0 and len(window.accepted_per_pos) == k:
        acc, dr = regime.update_acceptance(acc, dr, state.history_time, window.drafts,
                                           window.accepted_per_pos, now=now,
                                           window_seconds=window.seconds,
                                           horizon=ACCEPTANCE_HORIZON * horizon)
        # A lasting change of the task mix restarts the acceptance history from it, as a
        # lasting load shift restarts the load history.
        m_since, m_acc, m_dr, m_dir, mixed = regime.mix_shift(
            state.acc_sum, state.acc_drafts, m_since, m_acc, m_dr, m_dir,
            state.history_time, window.drafts, window.accepted_per_pos, now=now,
            window_seconds=window.seconds, shift_seconds=SHIFT_FRACTION * horizon)
        if mixed and m_since is not None:
            old_a = regime.accepted_per_draft(state.acc_sum, state.acc_drafts, k) or 0.0
            new_a = regime.accepted_per_draft(m_acc, m_dr, k) or 0.0
            acc, dr = m_acc, m_dr
            mix_note = (f"acceptance shifted {'up' if m_dir > 0 else 'down'} "
                        f"{(now - m_since) / 60:.0f} min ago ({old_a:.2f} -> {new_a:.2f} "
                        f"accepted tokens per draft at K {k}): the acceptance history "
                        "restarts there")
            m_since, m_acc, m_dr, m_dir = None, (), (), 0
    # A lasting shift of the load (longer than any spike should matter) restarts the load
    # histories from it, instead of letting them catch up over hours.
    since, away, direction, shifted = regime.shift(
        state.load_hist_long, state.shift_since, state.shift_load, state.shift_direction,
        state.history_time, window.load, now=now, window_seconds=window.seconds,
        shift_seconds=SHIFT_FRACTION * horizon)
    start = now if state.history_start is None else state.history_start
    shift_note = ""
    if shifted and since is not None:
        old_med, new_med = regime.median(hist_long), regime.median(away)
        hist, hist_long, start = away, away, since
        state = replace(state, history_shifted=True)
        shift_note = (f"the load shifted {'up' if direction > 0 else 'down'} "
                      f"{(now - since) / 60:.0f} min ago (median {old_med:.3g} -> "
                      f"{new_med:.3g} running requests): the load history restarts there")
        since, away, direction = None, (), 0
    state = replace(state, load_hist=hist, load_hist_long=hist_long, acc_sum=acc,
                    acc_drafts=dr, history_time=now, history_start=start,
                    shift_since=since, shift_load=away, shift_direction=direction,
                    shift_event=shift_note, mix_since=m_since, mix_acc=m_acc,
                    mix_drafts=m_dr, mix_direction=m_dir, mix_event=mix_note)
    if shifted or mix_note:
        state = replace(state, pending_k=None, pending_count=0, pending_since=None)

    # A running canary is judged first: its windows carry their own evidence (a thin one
    # only widens its standard error), and one that never yields any must still end.
    if state.canary is not None:
        return replace(_canary_step(s, state, window, canary_window, model, now),
                       cost_source=source)

    # Evidence gate: never act on a handful of drafts.
    if k != OFF and (window.drafts < s.min_drafts or window.requests < s.min_requests):
        return _keep(k, replace(state, pending_k=None, pending_count=0, pending_since=None), (
            f"evidence gate: {window.drafts:.0f}/{s.min_drafts:.0f} drafts, "
            f"{window.requests:.0f}/{s.min_requests:.0f} requests in the window"), **kw)
    if k == OFF and window.requests < s.min_requests:
        return _keep(k, state, f"evidence gate: {window.requests:.0f} requests", **kw)

    extend = min(s.k_max, k + s.max_step)
    survival: acceptance.Survival | None = None
    if k != OFF:
        survival = acceptance.from_counters(window.drafts, window.accepted_per_pos,
                                            extend_to=extend)
        state = replace(state, survival=tuple(round(v, 4) for v in survival.s[:k]))
    elif state.survival:
        # Off: no drafts to measure; judge re-enabling from the last measured profile.
        last = state.survival
        pseudo = 10_000.0
        survival = acceptance.from_counters(pseudo, [v * pseudo for v in last],
                                            extend_to=min(s.k_max, len(last) + s.max_step))
    else:
        return _keep(k, state, "speculation is off and no acceptance was ever measured", **kw)

    # Verification of the last change comes before any new idea.
    state, rb = _verify(s, state, window, survival, model, now)
    if rb is not None:
        return replace(rb, cost_source=source)
    if state.verify is not None:
        v = state.verify
        return _keep(k, state, (f"verifying K {v.k_from} -> {v.k_to}: {len(v.samples)} "
                                f"windows, {now - v.time:.0f}/{s.verify_after_seconds:.0f}s"),
                     **kw)

    gain: float | None = None
    preds: dict[int, float] = {}
    is_probe = False
    correction = 0.0
    curve: tuple[tuple[float, float], ...] = ()
    if s.policy == "threshold":
        rate = window.acceptance_rate
        if rate is None:
            return _keep(k, state, "no draft tokens in the window", **kw)
        target, why = threshold_target(s, k, rate)
    else:
        long_s = (_long_survival(state, k, window, extend) if k != OFF else None) or survival
        loads = [regime.distribution(h) or list(window.load)
                 for h in (state.load_hist, state.load_hist_long)]
        age = now - state.pending_since if state.pending_since is not None else 0.0
        life = regime.remaining_life(age, horizon, MAX_LIFE_SECONDS)
        probe_life = _probe_life(state, now, horizon, life)
        probe: frozenset[int] = frozenset()
        evidence = sum(p.w for p in state.points)
        seen_for = now - (state.history_start or now)
        rebound = _rebound(state, k)
        interval = state.last_probe is None or \
            now - state.last_probe >= s.probe_interval_seconds
        if s.explore and cost is None and source == "fitted" and \
                evidence >= PROBE_MIN_WINDOWS and seen_for >= PROBE_AFTER * s.regime_seconds and \
                _typical_now(window.load, state.load_hist) and (rebound or interval):
            seen = {p.k for p in state.points}
            probe = frozenset(c for c in range(s.k_min, s.k_max + 1) if c not in seen)
        # Back to the initial K needs less proof than leaving it, once it has been measured
        # here (the model's doubt about it is then doubt about the K that runs now).
        home = s.initial_k if s.initial_k is not None and (
            isinstance(model, _Known) or any(p.k == s.initial_k for p in state.points)) else None
        priced = _Priced(model, _prompt_ratio(window), long_s.tokens_per_step)
        # Upwards under the rule for probes below only a probe interval after a failed step
        # down (the interval bounds what failed probes cost) and under a steady day: an
        # upward probe is verified at typical load, and spikes are where one loses.
        miss = _miss(state) if probe and rebound and interval and \
            _untypical_share(state, priced, k) <= UNTYPICAL_SHARE else 0.0
        follow = _follow(s, state, k) if s.explore and cost is None and source == "fitted" \
            else None
        target, why, gain, preds = goodput_target(
            s, k, long_s, loads, priced, survival, window.load, life,
            frozenset(r.k for r in state.rejected), probe, home, follow, rebound, probe_life,
            miss)
        is_probe = why.startswith(f"K {k} -> {target}: probe")
        if follow is not None and target == follow[0] and "(follow-through)" in why:
            correction = follow[1]
        if target != k:
            curve = _gain_curve(k, target, long_s, priced, correction)
    kw.update(predicted_gain=gain, predictions=preds)

    if target == k:
        return _keep(k, replace(state, pending_k=None, pending_count=0, pending_since=None),
                     why, **kw)

    # Hysteresis: the same target on consecutive evaluations before acting.
    same = state.pending_k == target
    count = state.pending_count + 1 if same else 1
    state = replace(state, pending_k=target, pending_count=count,
                    pending_since=state.pending_since if same else now)
    if count < s.confirmations:
        return _keep(k, state, f"{why}; awaiting confirmation ({count}/{s.confirmations})",
                     recommended=target, **kw)
    if state.last_change is not None and now - state.last_change < s.cooldown_seconds:
        left = s.cooldown_seconds - (now - state.last_change)
        return _keep(k, state, f"{why}; cooldown: {left:.0f}s left", recommended=target, **kw)
    if len(state.changes) >= s.max_changes_per_day:
        return _keep(k, state, f"{why}; daily budget of {s.max_changes_per_day} changes "
                     "used", recommended=target, **kw)
    if s.mode == "Recommend":
        return _keep(k, state, f"{why} (Recommend mode: not applied)", recommended=target,
                     **kw)
    verify = Verification(k_from=k, k_to=target, time=now, predicted=gain or 0.0,
                          probe=is_probe, correction=correction, curve=curve) \
        if s.policy == "goodput" else None
    if verify is not None and canary_on(s):
        # Canary mode: the candidate runs on one replica first; the main replicas keep K.
        st = replace(state, last_change=now, changes=(*state.changes, now), pending_k=None,
                     pending_count=0, pending_since=None, canary=verify,
                     last_probe=now if is_probe else state.last_probe)
        name = "off" if target == OFF else str(target)
        msg = (f"canary: K {name} on 1 of {s.replicas} replicas, judged side by side with "
               f"K {k} before it rolls to all ({why})")
        return _keep(k, st, msg, recommended=target,
                     events=(("Normal", "CanaryStarted", msg),), **kw)
    new_state = replace(state, last_change=now, changes=(*state.changes, now),
                        pending_k=None, pending_count=0, pending_since=None, verify=verify,
                        last_probe=now if is_probe else state.last_probe)
    return Decision("change", k, target, target, why, new_state, **kw)
