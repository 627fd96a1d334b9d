"""The tuner's side of an SDD's status: pure conversion between status and State, and the
status fields one evaluation produces."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from ..api import TUNER_CONDITION, TUNER_KEYS
from .policy import OFF, Decision, Settings, State, Window, decide

HISTORY = 10


def rfc3339(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def epoch(s: str) -> float:
    return dt.datetime.strptime(s, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC).timestamp()


def state_from_status(status: dict[str, Any] | None) -> State:
    at = (status or {}).get("autotune") or {}
    pending = at.get("pending") or {}
    return State(
        last_change=epoch(at["lastChangeTime"]) if at.get("lastChangeTime") else None,
        changes=tuple(epoch(t) for t in at.get("changes") or []),
        pending_k=pending.get("k"),
        pending_count=int(pending.get("count") or 0),
        survival=tuple(float(v) for v in at.get("survival") or []),
    )


def _fmt(v: float | None, digits: int = 2) -> str | None:
    return None if v is None else f"{v:.{digits}f}"


def acceptance_status(w: Window) -> dict[str, Any]:
    out: dict[str, Any] = {"tokensPerSecond": f"{w.tokens_per_second:.0f}",
                           "windowSeconds": int(w.seconds)}
    if w.drafts > 0:
        out["rate"] = _fmt(w.acceptance_rate)
        out["meanLength"] = _fmt(w.mean_acceptance_length)
        out["perPosition"] = [f"{min(1.0, a / w.drafts):.2f}" for a in w.accepted_per_pos]
    return out


@dataclass(frozen=True)
class Evaluation:
    """What one evaluation of one SDD writes and says."""

    fields: dict[str, Any]                  # status.acceptance / status.autotune
    condition: dict[str, Any]               # MetricsAvailable
    current_k: int                          # K to run from now on
    recommended: int | None
    decision: Decision | None
    events: list[tuple[str, str, str]]      # (type, reason, message)

    @property
    def status(self) -> dict[str, Any]:
        """Every status field the autotuner owns (see ``api``): the whole set it applies."""
        out = dict(self.fields)
        if self.recommended is not None:
            out["draftTokens"] = {"recommended": self.recommended}
        out["conditions"] = [self.condition]
        return out


def evaluate(
    settings: Settings, status: dict[str, Any] | None, current_k: int,
    window: Window | None, *, now: float, unavailable: str | None = None,
    initial_k: int | None = None,
) -> Evaluation:
    """One evaluation: the decision and the status fields that record it (pure).

    ``current_k`` is the K running now (``status.draftTokens.current``); a change of K is
    recorded as ``autotune.target`` together with ``initial_k``, the initial K the spec
    resolves to (the reconciler renders the target only while that holds).
    """
    status = status or {}
    old_at = status.get("autotune") or {}
    old_cond = next((c for c in status.get("conditions") or []
                     if c.get("type") == TUNER_CONDITION), {})
    old_rec = (status.get("draftTokens") or {}).get("recommended")
    events: list[tuple[str, str, str]] = []

    def condition(ok: bool, reason: str, message: str) -> dict[str, Any]:
        c = {"type": TUNER_CONDITION, "status": "True" if ok else "False", "reason": reason,
             "message": message}
        same = old_cond.get("status") == c["status"]
        c["lastTransitionTime"] = old_cond.get("lastTransitionTime") if same and \
            old_cond.get("lastTransitionTime") else rfc3339(now)
        if not ok and (old_cond.get("status") != "False" or old_cond.get("reason") != reason):
            events.append(("Warning", reason, message))
        elif ok and old_cond.get("status") == "False":
            events.append(("Normal", "MetricsRecovered", message))
        return c

    if unavailable is not None or window is None:
        reason = "PrometheusUnavailable" if unavailable is not None else "NoData"
        message = unavailable or (
            f"no vLLM speculative-decoding metrics for K={current_k} in the last "
            f"{settings.window_seconds:.0f}s")
        # Keep K and everything learned so far; only the condition changes.
        fields = {k: status[k] for k in TUNER_KEYS if k in status}
        return Evaluation(fields, condition(False, reason, message), current_k, old_rec,
                          None, events)

    d = decide(settings, state_from_status(status), window, now=now)
    st = d.state
    record = {"time": rfc3339(now), "from": d.k_from, "to": d.k_to,
              "recommended": d.recommended, "policy": settings.policy, "reason": d.reason}
    history = list(old_at.get("history") or [])
    if d.changed or d.recommended != old_rec:
        history = [*history, record][-HISTORY:]
    at: dict[str, Any] = {
        "changes": [rfc3339(t) for t in st.changes],
        "survival": [f"{v:.4f}" for v in st.survival],
        "lastDecision": record,
        "history": history,
    }
    if st.last_change is not None:
        at["lastChangeTime"] = rfc3339(st.last_change)
    if st.pending_k is not None:
        at["pending"] = {"k": st.pending_k, "count": st.pending_count}
    if d.changed and initial_k is not None:
        at["target"] = {"k": d.k_to, "initial": initial_k, "time": rfc3339(now)}
    elif old_at.get("target"):
        at["target"] = old_at["target"]
    acc = acceptance_status(window)
    if d.predicted_gain is not None:
        acc["predictedGain"] = f"{d.predicted_gain:+.3f}"
    if d.changed:
        name = "off" if d.k_to == OFF else str(d.k_to)
        events.append(("Normal", "DraftTokensChanged", f"autotune: K {d.k_from} -> {name}: "
                                                         f"{d.reason}"))
    elif d.recommended != old_rec and d.recommended != d.k_from:
        events.append(("Normal", "DraftTokensRecommended",
                       f"autotune recommends K {d.recommended}: {d.reason}"))
    ok = condition(True, "MetricsFound",
                   f"{window.drafts:.0f} drafts, {window.requests:.0f} requests at K={window.k} "
                   f"in {window.seconds:.0f}s")
    return Evaluation({"acceptance": acc, "autotune": at}, ok, d.k_to, d.recommended, d, events)
