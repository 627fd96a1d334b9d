"""The tuner's side of an SDD's status: pure conversion between status and State, and the
status fields one evaluation produces."""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass, replace
from typing import Any

from ..api import TUNER_CONDITION, TUNER_KEYS
from . import calibration
from .calibration import NAMES, CalPoint, CostModel, P, Quality
from .observe import LOAD_QUANTILES
from .policy import OFF, Decision, Settings, State, Window, decide
from .regime import LOAD_GRID
from .step_cost import default_profile
from .verification import Outcome, Rejected, Verification

HISTORY = 10


def rfc3339(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def epoch(s: str) -> float:
    return dt.datetime.strptime(s, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC).timestamp()


# Bounds on what is persisted (etcd objects stay small; see docs/autotuner.md).
MAX_SAMPLES = 48        # verification samples (newest kept)
SIG = 6                 # significant digits of persisted floats


def _r(v: float, sig: int = SIG) -> float:
    """A float rounded to ``sig`` significant digits (JSON-friendly, stable)."""
    if not math.isfinite(v):
        return 0.0
    return float(f"{v:.{sig}g}")


def _t(v: float) -> int:
    return round(v)


def _cov_pack(cov: tuple[tuple[float, ...], ...]) -> list[float]:
    return [_r(cov[i][j]) for i in range(len(cov)) for j in range(i, len(cov))]


def _cov_unpack(vals: list[Any]) -> tuple[tuple[float, ...], ...]:
    n = P
    if len(vals) != n * (n + 1) // 2:
        raise ValueError(f"covariance has {len(vals)} values, {n * (n + 1) // 2} expected")
    m = [[0.0] * n for _ in range(n)]
    it = iter(float(v) for v in vals)
    for i in range(n):
        for j in range(i, n):
            m[i][j] = m[j][i] = next(it)
    return tuple(tuple(r) for r in m)


SOURCE = {"fitted": "Calibrated", "prior": "Prior", "given": "Given"}


def state_to_status(state: State) -> dict[str, Any]:
    """The tuner's whole State as ``status.autotune`` fields (pure; bounded; floats rounded).

    ``state_from_status(state_to_status(s))`` equals ``s`` up to that rounding.
    """
    at: dict[str, Any] = {
        "changes": [rfc3339(t) for t in state.changes],
        "survival": [f"{v:.4f}" for v in state.survival],
    }
    if state.last_change is not None:
        at["lastChangeTime"] = rfc3339(state.last_change)
    if state.pending_k is not None:
        at["pending"] = {"k": state.pending_k, "count": state.pending_count}
        if state.pending_since is not None:
            at["pending"]["since"] = rfc3339(state.pending_since)
    at["calibration"] = {
        "points": [[p.k, _r(p.b), _r(p.n), _r(p.t_ms), _r(p.w, 4), _t(p.t)]
                   for p in state.points],
        "note": state.cost_note,
    }
    if state.cost is not None:
        c = state.cost
        at["calibration"]["fit"] = {
            "source": c.source, "reason": c.reason, "knee": _r(c.knee),
            "theta": [_r(v) for v in c.theta], "covariance": _cov_pack(c.cov),
            "quality": {"points": c.quality.points, "ks": list(c.quality.ks),
                        "nLo": _r(c.quality.n_lo), "nHi": _r(c.quality.n_hi),
                        "rms": _r(c.quality.rms, 4)},
        }
        if c.time is not None:
            at["calibration"]["fit"]["time"] = _t(c.time)
    reg: dict[str, Any] = {
        "load": [_r(v, 4) for v in state.load_hist],
        "loadLong": [_r(v, 4) for v in state.load_hist_long],
        "accepted": [_r(v, 5) for v in state.acc_sum],
        "drafts": [_r(v, 5) for v in state.acc_drafts],
    }
    if state.history_time is not None:
        reg["time"] = _t(state.history_time)
    if state.history_start is not None:
        reg["start"] = _t(state.history_start)
    if state.history_shifted:
        reg["shifted"] = True
    if state.shift_since is not None:
        reg["shift"] = {"since": _t(state.shift_since), "direction": state.shift_direction,
                        "load": [_r(v, 4) for v in state.shift_load]}
    if state.mix_since is not None:
        reg["mixShift"] = {"since": _t(state.mix_since), "direction": state.mix_direction,
                           "accepted": [_r(v, 5) for v in state.mix_acc],
                           "drafts": [_r(v, 5) for v in state.mix_drafts]}
    at["regime"] = reg
    if state.verify is not None:
        at["verification"] = _change_to_status(state.verify)
    if state.canary is not None:
        at["canary"] = _change_to_status(state.canary)
    if state.last_probe is not None:
        at["lastProbeTime"] = rfc3339(state.last_probe)
    at["rejected"] = [{"k": r.k, "until": rfc3339(r.until), "reason": r.evidence}
                      for r in state.rejected]
    at["outcomes"] = [{"time": rfc3339(o.time), "from": o.k_from, "to": o.k_to,
                       "predicted": _r(o.predicted, 4), "verdict": o.verdict,
                       **({"correction": _r(o.correction, 4)} if o.correction else {}),
                       **({} if o.realized is None else {"realized": _r(o.realized, 4)})}
                      for o in state.outcomes]
    return at


def _change_to_status(v: Verification) -> dict[str, Any]:
    """A change under verification (or a canary under judgement) as status fields."""
    return {
        "from": v.k_from, "to": v.k_to, "since": rfc3339(v.time),
        "predictedGain": _r(v.predicted, 4), "probe": v.probe,
        **({"correction": _r(v.correction, 4)} if v.correction else {}),
        "samples": [[_t(t), _r(g, 4), _r(e, 4)] for t, g, e in v.samples[-MAX_SAMPLES:]],
        **({"predictedByBatch": [[_r(b, 4), _r(g, 4)] for b, g in v.curve]}
           if v.curve else {}),
    }


def _change_from_status(v: dict[str, Any]) -> Verification:
    return Verification(
        k_from=int(v["from"]), k_to=int(v["to"]), time=epoch(v["since"]),
        predicted=_f(v.get("predictedGain", 0.0)), probe=bool(v.get("probe")),
        correction=_f(v.get("correction") or 0.0),
        # [t, g] (before the expected gain was kept): the history-level prediction
        samples=tuple((_f(x[0]), _f(x[1]),
                       _f(x[2]) if len(x) > 2 else _f(v.get("predictedGain", 0.0)))
                      for x in v.get("samples") or [] if len(x) >= 2),
        curve=tuple((_f(b), _f(g)) for b, g in v.get("predictedByBatch") or []))


def _f(v: Any) -> float:
    x = float(v)
    if not math.isfinite(x):
        raise ValueError(f"not a finite number: {v!r}")
    return x


def _sections(at: dict[str, Any]) -> list[tuple[str, Any]]:
    """Parsers of the State's parts, one per status section (each may fail alone)."""
    def basics() -> dict[str, Any]:
        pending = at.get("pending") or {}
        return {
            "last_change": epoch(at["lastChangeTime"]) if at.get("lastChangeTime") else None,
            "changes": tuple(epoch(t) for t in at.get("changes") or []),
            "pending_k": None if pending.get("k") is None else int(pending["k"]),
            "pending_count": int(pending.get("count") or 0),
            "pending_since": epoch(pending["since"]) if pending.get("since") else None,
            "survival": tuple(_f(v) for v in at.get("survival") or []),
        }

    def calib() -> dict[str, Any]:
        cal = at.get("calibration")
        if cal is None:
            return {}
        points = tuple(CalPoint(k=int(k), b=_f(b), n=_f(n), t_ms=_f(t_ms), w=_f(w), t=_f(t))
                       for k, b, n, t_ms, w, t in cal.get("points") or [])
        out: dict[str, Any] = {"points": points, "cost_note": str(cal.get("note") or "")}
        fit = cal.get("fit")
        if fit is not None:
            theta = tuple(_f(v) for v in fit["theta"])
            if len(theta) != P:
                raise ValueError(f"theta has {len(theta)} values, {P} expected")
            q = fit["quality"]
            source = fit.get("source")
            if source not in ("prior", "fitted"):
                raise ValueError(f"unknown cost model source {source!r}")
            out["cost"] = CostModel(
                theta=theta, knee=_f(fit["knee"]), cov=_cov_unpack(fit["covariance"]),
                source=source, reason=str(fit.get("reason") or ""),
                quality=Quality(points=int(q["points"]), ks=tuple(int(k) for k in q["ks"]),
                                n_lo=_f(q["nLo"]), n_hi=_f(q["nHi"]), rms=_f(q["rms"])),
                time=_f(fit["time"]) if fit.get("time") is not None else None)
        return out

    def regime_() -> dict[str, Any]:
        reg = at.get("regime")
        if reg is None:
            return {}
        load = tuple(_f(v) for v in reg.get("load") or [])
        load_long = tuple(_f(v) for v in reg.get("loadLong") or [])
        for h in (load, load_long):
            if h and len(h) != len(LOAD_GRID):
                raise ValueError(f"load history has {len(h)} values, {len(LOAD_GRID)} "
                                 "expected (another load grid)")
        acc = tuple(_f(v) for v in reg.get("accepted") or [])
        dr = tuple(_f(v) for v in reg.get("drafts") or [])
        if len(acc) != len(dr):
            raise ValueError("accepted and drafts histories differ in length")
        sh = reg.get("shift") or {}
        shift_load = tuple(_f(v) for v in sh.get("load") or [])
        if shift_load and len(shift_load) != len(LOAD_GRID):
            raise ValueError(f"shift load has {len(shift_load)} values, {len(LOAD_GRID)} "
                             "expected (another load grid)")
        shift = {"shift_since": _f(sh["since"]), "shift_load": shift_load,
                 "shift_direction": int(sh.get("direction") or 0)} \
            if sh.get("since") is not None else {}
        mx = reg.get("mixShift") or {}
        mix_acc = tuple(_f(v) for v in mx.get("accepted") or [])
        mix_dr = tuple(_f(v) for v in mx.get("drafts") or [])
        if len(mix_acc) != len(mix_dr):
            raise ValueError("acceptance shift: accepted and drafts differ in length")
        mix = {"mix_since": _f(mx["since"]), "mix_acc": mix_acc, "mix_drafts": mix_dr,
               "mix_direction": int(mx.get("direction") or 0)} \
            if mx.get("since") is not None else {}
        return {**shift, **mix, "load_hist": load, "load_hist_long": load_long, "acc_sum": acc,
                "acc_drafts": dr,
                "history_time": _f(reg["time"]) if reg.get("time") is not None else None,
                "history_start": _f(reg["start"]) if reg.get("start") is not None else None,
                "history_shifted": bool(reg.get("shifted", False))}

    def verification() -> dict[str, Any]:
        out: dict[str, Any] = {}
        v = at.get("verification")
        if v is not None:
            out["verify"] = _change_from_status(v)
        if at.get("lastProbeTime"):
            out["last_probe"] = epoch(at["lastProbeTime"])
        out["rejected"] = tuple(Rejected(int(r["k"]), epoch(r["until"]),
                                         str(r.get("reason") or ""))
                                for r in at.get("rejected") or [])
        out["outcomes"] = tuple(
            Outcome(epoch(o["time"]), int(o["from"]), int(o["to"]), _f(o["predicted"]),
                    None if o.get("realized") is None else _f(o["realized"]),
                    str(o.get("verdict") or ""), _f(o.get("correction") or 0.0))
            for o in at.get("outcomes") or [])
        return out

    def canary() -> dict[str, Any]:
        c = at.get("canary")
        return {"canary": _change_from_status(c)} if c is not None else {}

    return [("", basics), ("calibration", calib), ("regime", regime_),
            ("verification", verification), ("canary", canary)]


def read_state(status: dict[str, Any] | None) -> tuple[State, list[str]]:
    """``status.autotune`` as the tuner's State, and what could not be read.

    Never raises: a section that is corrupt or from another version starts fresh (its
    defaults) and is named in the returned problems; the others are kept. A status from an
    operator that persisted less simply lacks sections (nothing to report).
    """
    at = (status or {}).get("autotune") or {}
    if not isinstance(at, dict):
        return State(), ["status.autotune is not an object: started fresh"]
    kw: dict[str, Any] = {}
    problems: list[str] = []
    for name, parse in _sections(at):
        try:
            kw.update(parse())
        except (KeyError, TypeError, ValueError, IndexError, AttributeError) as e:
            where = f"status.autotune.{name}" if name else "status.autotune"
            problems.append(f"{where} unreadable ({type(e).__name__}: {e}): started fresh")
    return State(**kw), problems


def state_from_status(status: dict[str, Any] | None) -> State:
    return read_state(status)[0]


class _Table:
    """The H200 table taken as exact: what decide() prices with when it has no latency
    series or costModel is Prior."""

    def step_ms(self, b: float, k: int, prefill: float = 0.0) -> float:
        return default_profile().step_ms(b, k)


def _model_used(settings: Settings, state: State, window: Window) -> Any:
    # Mirrors decide(): Prior mode, or no latency evidence ever -> the table as exact.
    if settings.cost_model == "Prior" or (
            not state.points and not math.isfinite(window.itl_count)):
        return _Table()
    return state.cost or calibration.prior()


def cost_model_status(settings: Settings, state: State, d: Decision,
                      window: Window) -> dict[str, Any]:
    """``status.autotune.costModel``: the step-cost model the decision used, in words and
    numbers, with its prediction for the running K at the window's load."""
    model = _model_used(settings, state, window)
    fitted = isinstance(model, CostModel) and model.source == "fitted"
    shown = model if isinstance(model, CostModel) else calibration.prior()
    if isinstance(model, _Table):
        reason = state.cost_note if settings.cost_model == "Prior" else (
            "no latency series (vllm:inter_token_latency_seconds) seen yet: the H200 table "
            "as exact")
    else:
        reason = model.reason
    out: dict[str, Any] = {
        "source": "Calibrated" if fitted else "Prior",
        "reason": reason,
        "note": state.cost_note,
        "params": {**{n: _r(v, 4) for n, v in zip(NAMES, shown.theta, strict=True)},
                   "knee": _r(shown.knee, 4)},
    }
    q = shown.quality
    out["quality"] = {"points": q.points, "ks": list(q.ks), "nLo": _r(q.n_lo, 4),
                      "nHi": _r(q.n_hi, 4), "rms": _r(q.rms, 3)}
    k = window.k
    sample = window.step_sample()
    if all(math.isfinite(v) and v > 0 for v in (sample.itl_count, sample.steps,
                                                  sample.itl_sum)):
        # At the window's ITL-weighted batch, where the measured mean ITL is one step time.
        b = sample.itl_count / sample.steps * (1 + max(0.0, min(sample.load_cv2, 4.0)))
        prefill = max(0.0, sample.prompt_tokens) / sample.steps \
            if math.isfinite(sample.prompt_tokens) else 0.0
        out["atBatch"] = _r(b, 4)
        out["measuredStepMs"] = _r(1000.0 * sample.itl_sum / sample.itl_count, 4)
    else:
        vals = [b for b, _ in window.load]
        b, prefill = (sum(vals) / len(vals) if vals else 1.0), 0.0
        out["atBatch"] = _r(b, 4)
    out["predictedStepMs"] = _r(model.step_ms(b, k, prefill), 4)
    # Tokens/s of all pods: per-replica E_B[B L / T(B, k)] over the window's load (with its
    # prefill per step), times the pods (one load sample per pod and quantile). Idle time
    # (B = 0) generates nothing: B counts as it is, only T is priced at one request or more.
    length = (window.mean_acceptance_length or 1.0) if k != OFF else 1.0
    pods = max(1, round(len(window.load) / len(LOAD_QUANTILES)))
    tw = sum(w for _, w in window.load)
    if tw > 0:
        per_replica = sum(w * max(0.0, bb) * length
                          / (model.step_ms(max(1.0, bb), k, prefill) / 1000)
                          for bb, w in window.load) / tw
        out["predictedTokensPerSecond"] = _r(per_replica * pods, 4)
    if isinstance(model, CostModel) and model.time is not None:
        out["time"] = rfc3339(model.time)
    return out


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
    initial_k: int | None = None, canary_window: Window | None = None,
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

    state, problems = read_state(status)
    d = decide(settings, state, window, now=now, canary_window=canary_window)
    if problems and (d.changed or (d.state.canary is not None and state.canary is None)):
        # A state that could not be read is no basis for a restart: keep K this time.
        kept = replace(d.state, last_change=state.last_change, changes=state.changes,
                       verify=state.verify, last_probe=state.last_probe,
                       outcomes=state.outcomes, rejected=state.rejected,
                       canary=state.canary)
        d = Decision("keep", d.k_from, d.k_from, d.recommended,
                     f"K kept while the tuner's state restarts; would have: {d.reason}",
                     kept, d.predicted_gain, d.predictions, d.cost_source)
    st = d.state
    cost = cost_model_status(settings, st, d, window)
    reason = "; ".join([*problems, d.reason])
    record = {"time": rfc3339(now), "from": d.k_from, "to": d.k_to,
              "recommended": d.recommended, "policy": settings.policy,
              "costModel": cost["source"], "reason": reason}
    history = list(old_at.get("history") or [])
    if d.changed or d.recommended != old_rec:
        history = [*history, record][-HISTORY:]
    at: dict[str, Any] = {**state_to_status(st), "costModel": cost,
                          "lastDecision": record, "history": history}
    if problems:
        events.append(("Warning", "AutotuneStateReset", "; ".join(problems)))
    events.extend(d.events)
    if d.changed and initial_k is not None:
        at["target"] = {"k": d.k_to, "initial": initial_k, "time": rfc3339(now)}
    elif old_at.get("target"):
        at["target"] = old_at["target"]
    acc = acceptance_status(window)
    if d.predicted_gain is not None:
        acc["predictedGain"] = f"{d.predicted_gain:+.3f}"
    if d.changed and not d.rollback:
        name = "off" if d.k_to == OFF else str(d.k_to)
        events.append(("Normal", "DraftTokensChanged", f"autotune: K {d.k_from} -> {name}: "
                                                         f"{d.reason}"))
    elif d.recommended != old_rec and d.recommended != d.k_from and d.canary_k is None:
        events.append(("Normal", "DraftTokensRecommended",
                       f"autotune recommends K {d.recommended}: {d.reason}"))
    ok = condition(True, "MetricsFound",
                   f"{window.drafts:.0f} drafts, {window.requests:.0f} requests at K={window.k} "
                   f"in {window.seconds:.0f}s")
    return Evaluation({"acceptance": acc, "autotune": at}, ok, d.k_to, d.recommended, d, events)
