"""A reconcile that fails reaches the user: the problem as a Degraded condition with a reason,
and when to try again (capped exponential backoff). Pure functions; the controller does I/O.
"""

from __future__ import annotations

import os
from typing import Any

from lightkube import ApiError

from . import api, conditions
from .render import InvalidSpec

RETRY_BASE_SECONDS = float(os.environ.get("SPECDECODE_RETRY_BASE_SECONDS", "1"))
RETRY_MAX_SECONDS = float(os.environ.get("SPECDECODE_RETRY_MAX_SECONDS", "60"))


def describe(exc: BaseException) -> tuple[str, str]:
    """(reason, message) of a failed reconcile. The message names the problem, not the
    attempt, so a retry that fails the same way is recognised as the same problem."""
    if isinstance(exc, InvalidSpec):
        return "InvalidSpec", str(exc)
    if isinstance(exc, ApiError):
        st = exc.status
        return "APIError", f"the API server answered {st.code} {st.reason}: {st.message}"
    text = str(exc) or type(exc).__name__
    return "ReconcileError", f"{type(exc).__name__}: {text}"[:1000]


def retry_delay(failures: int) -> float:
    """Seconds before retry number ``failures`` (1, 2, ...): base * 2^(n-1), capped."""
    return min(RETRY_MAX_SECONDS, RETRY_BASE_SECONDS * 2 ** max(0, failures - 1))


def degraded_status(live: dict[str, Any] | None, reason: str, message: str,
                    now: str, generation: int | None = None) -> dict[str, Any]:
    """The reconciler's status as it is, with Degraded=True for this problem and Stalled
    following it (``conditions.stalled``).

    When the problem is stalled (it will not pass on a retry) and ``generation`` is given, the
    reconciler has looked at that generation and concluded: observedGeneration moves to it, so
    kstatus reads Failed instead of "generation not observed yet" (InProgress). A problem a
    retry may clear leaves observedGeneration where it was: a new generation stays InProgress.
    """
    out = api.reconciler_view(live)
    degraded = {"type": "Degraded", "status": "True", "reason": reason, "message": message}
    stalled = conditions.stalled(degraded)
    conds = [c for c in out.get("conditions") or [] if c.get("type") not in ("Degraded",
                                                                            "Stalled")]
    conds += [degraded, stalled]
    if stalled["status"] == "True" and generation is not None:
        out["observedGeneration"] = generation
        for c in (degraded, stalled):
            c["observedGeneration"] = generation
    out["conditions"] = sorted(
        conditions.merge_transition_times(conds, (live or {}).get("conditions") or [], now),
        key=lambda c: str(c["type"]))
    return out


def is_new_problem(live: dict[str, Any] | None, reason: str, message: str,
                   generation: int | None = None) -> bool:
    """False when the live Degraded condition already reports this problem (no new Event),
    and, for a stalled problem with ``generation`` given, already for that generation."""
    stalled_now = reason in api.STALLED_REASONS and generation is not None
    if stalled_now and (live or {}).get("observedGeneration") != generation:
        return True
    for c in (live or {}).get("conditions") or []:
        if c.get("type") == "Degraded":
            return not (c.get("status") == "True" and c.get("reason") == reason
                        and c.get("message") == message)
    return True
