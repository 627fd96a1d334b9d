"""The draft-length decision: pure, deterministic, usable without Kubernetes or Prometheus.

    decision = decide(settings, state, window, now=...)

Every change of K is a rolling restart of GPU pods (minutes of model loading), so a change
must be right, rare and safe: an evidence gate, a confidence bound on the predicted gain net
of the restart cost, hysteresis (the same recommendation on consecutive evaluations), a
cooldown and a daily change budget all have to agree before K moves.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Literal

from . import acceptance
from .goodput import Load, goodput
from .step_cost import CostProfile, default_profile

DAY = 86_400.0
OFF = 0  # draft length 0: speculative decoding off


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
    # goodput policy: the predicted gain (lower confidence bound) must beat both.
    min_gain: float = 0.02
    restart_cost_seconds: float = 300.0
    horizon_seconds: float = 7200.0
    confidence_z: float = 1.64
    confirmations: int = 2
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
        kw: dict[str, Any] = {
            "k_min": int(dt.get("min", 1)), "k_max": int(dt.get("max", 12)),
            "mode": at.get("mode", "Auto"), "policy": at.get("policy", "goodput"),
        }
        for key, name, conv in (
            ("windowSeconds", "window_seconds", float),
            ("cooldownSeconds", "cooldown_seconds", float),
            ("maxStep", "max_step", int), ("maxChangesPerDay", "max_changes_per_day", int),
            ("allowOff", "allow_off", bool), ("minGain", "min_gain", float),
            ("restartCostSeconds", "restart_cost_seconds", float),
        ):
            if key in at:
                kw[name] = conv(at[key])
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

    @property
    def acceptance_rate(self) -> float | None:
        return self.accepted / self.draft_tokens if self.draft_tokens > 0 else None

    @property
    def mean_acceptance_length(self) -> float | None:
        return 1 + self.accepted / self.drafts if self.drafts > 0 else None

    @property
    def tokens_per_second(self) -> float:
        return self.generation_tokens / self.seconds if self.seconds > 0 else 0.0


@dataclass(frozen=True)
class State:
    """What the tuner remembers between evaluations (persisted in status)."""

    last_change: float | None = None                # epoch seconds of the last K change
    changes: tuple[float, ...] = ()                 # change times within the last day
    pending_k: int | None = None                    # recommendation awaiting confirmation
    pending_count: int = 0
    survival: tuple[float, ...] = ()                # last measured S_i (kept while off)


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

    @property
    def changed(self) -> bool:
        return self.action == "change"


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


def goodput_target(
    s: Settings, w: Window, survival: acceptance.Survival, cost: CostProfile
) -> tuple[int, str, float, dict[int, float]]:
    """Best K by the lower confidence bound of its predicted goodput gain over the current K.

    Returns (target, reason, predicted gain of the target, point predictions per k).
    """
    k = w.k
    cur = goodput(k, survival.tokens_per_step, w.load, cost)
    preds: dict[int, float] = {}
    best, best_lo = k, 0.0
    for c in _candidates(s, k):
        preds[c] = goodput(c, survival.tokens_per_step, w.load, cost)
        if c == k:
            continue
        # Pessimistic tokens per step for the candidate relative to the current K: the
        # positions that differ (added above K, or dropped below it) may be worth more or
        # less than estimated, and either way the error counts against the change.
        se = survival.tokens_per_step_se(c, k)

        def l_pess(j: int, c: int = c, se: float = se) -> float:
            return survival.tokens_per_step(j) - (s.confidence_z * se if j == c else 0.0)

        lo = goodput(c, l_pess, w.load, cost) / cur - 1.0
        if lo > best_lo:
            best, best_lo = c, lo
    hurdle = s.min_gain + s.restart_cost_seconds / s.horizon_seconds
    gain = preds[best] / cur - 1.0 if cur > 0 else 0.0
    if best == k or best_lo <= hurdle:
        point = max(preds, key=lambda c: preds[c])
        return k, (
            f"K {k} kept: best alternative K {point} predicts {preds[point] / cur - 1:+.1%} "
            f"(lower bound {best_lo:+.1%}), below the {hurdle:.1%} hurdle "
            f"(min gain + restart cost)"), 0.0, preds
    name = "off" if best == OFF else str(best)
    return best, (
        f"K {k} -> {name}: predicted goodput {gain:+.1%} (lower bound {best_lo:+.1%} > "
        f"{hurdle:.1%} hurdle); L({k})={survival.tokens_per_step(k):.2f}, "
        f"L({best})={survival.tokens_per_step(best):.2f}"), gain, preds


def decide(
    settings: Settings, state: State, window: Window, *, now: float,
    cost: CostProfile | None = None,
) -> Decision:
    """Keep K or change it, with a human-readable reason and the tuner's new state.

    ``window`` holds the counters of the K that runs now; with no metrics at all there is
    nothing to decide and the caller reports that instead of calling this.
    """
    s = settings
    cost = cost or default_profile()
    state = replace(state, changes=tuple(t for t in state.changes if now - t < DAY))
    k = window.k
    if s.mode == "Off":
        return _keep(k, state, "autotune is Off")

    # Evidence gate: never act on a handful of drafts.
    if k != OFF and (window.drafts < s.min_drafts or window.requests < s.min_requests):
        return _keep(k, replace(state, pending_k=None, pending_count=0), (
            f"evidence gate: {window.drafts:.0f}/{s.min_drafts:.0f} drafts, "
            f"{window.requests:.0f}/{s.min_requests:.0f} requests in the window"))
    if k == OFF and window.requests < s.min_requests:
        return _keep(k, state, f"evidence gate: {window.requests:.0f} requests")

    survival: acceptance.Survival | None = None
    if k != OFF:
        survival = acceptance.from_counters(window.drafts, window.accepted_per_pos,
                                            extend_to=min(s.k_max, k + s.max_step))
        state = replace(state, survival=tuple(round(v, 4) for v in survival.s[:k]))
    elif state.survival:
        # Off: no drafts to measure; judge re-enabling from the last measured profile.
        last = state.survival
        pseudo = 10_000.0
        survival = acceptance.from_counters(pseudo, [v * pseudo for v in last],
                                            extend_to=min(s.k_max, len(last) + s.max_step))
    else:
        return _keep(k, state, "speculation is off and no acceptance was ever measured")

    gain: float | None = None
    preds: dict[int, float] = {}
    if s.policy == "threshold":
        rate = window.acceptance_rate
        if rate is None:
            return _keep(k, state, "no draft tokens in the window")
        target, why = threshold_target(s, k, rate)
    else:
        target, why, gain, preds = goodput_target(s, window, survival, cost)

    if target == k:
        return _keep(k, replace(state, pending_k=None, pending_count=0), why,
                     predicted_gain=gain, predictions=preds)

    # Hysteresis: the same target on consecutive evaluations before acting.
    count = state.pending_count + 1 if state.pending_k == target else 1
    state = replace(state, pending_k=target, pending_count=count)
    if count < s.confirmations:
        return _keep(k, state, f"{why}; awaiting confirmation ({count}/{s.confirmations})",
                     recommended=target, predicted_gain=gain, predictions=preds)
    if state.last_change is not None and now - state.last_change < s.cooldown_seconds:
        left = s.cooldown_seconds - (now - state.last_change)
        return _keep(k, state, f"{why}; cooldown: {left:.0f}s left", recommended=target,
                     predicted_gain=gain, predictions=preds)
    if len(state.changes) >= s.max_changes_per_day:
        return _keep(k, state, f"{why}; daily budget of {s.max_changes_per_day} changes "
                     "used", recommended=target, predicted_gain=gain, predictions=preds)
    if s.mode == "Recommend":
        return _keep(k, state, f"{why} (Recommend mode: not applied)", recommended=target,
                     predicted_gain=gain, predictions=preds)
    new_state = replace(state, last_change=now, changes=(*state.changes, now),
                        pending_k=None, pending_count=0)
    return Decision("change", k, target, target, why, new_state, predicted_gain=gain,
                    predictions=preds)
