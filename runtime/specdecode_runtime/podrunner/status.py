"""Pure: what the runner observed about a pod's process -> the pod status a kubelet would write.

No I/O. The runner patches the result into the pods/status subresource only when it differs
from what the apiserver has (``needs_patch``), so a steady pod costs no writes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

OUR_CONDITIONS = ("Initialized", "ContainersReady", "Ready")


@dataclass(frozen=True)
class Termination:
    exit_code: int
    reason: str  # Completed | Error | StartError
    started_at: str
    finished_at: str
    signal: int | None = None
    message: str = ""

    def as_state(self) -> dict[str, Any]:
        t: dict[str, Any] = {"exitCode": self.exit_code, "reason": self.reason,
                             "startedAt": self.started_at, "finishedAt": self.finished_at}
        if self.signal is not None:
            t["signal"] = self.signal
        if self.message:
            t["message"] = self.message
        return {"terminated": t}


@dataclass(frozen=True)
class Observed:
    """One container's process, as the runner sees it right now."""

    name: str
    image: str
    pid: int | None  # the running process; None while not running
    started_at: str | None  # start of the running process (RFC 3339)
    healthy: bool  # the last health probe answered 200
    started: bool  # healthy at least once since this process started
    restart_count: int
    last_termination: Termination | None = None
    finished: bool = False  # terminated and will not be restarted (restartPolicy)
    backoff_s: float = 0.0  # waiting to restart
    waiting: str | None = None  # explicit waiting reason while not running (RunnerStopped)


def exit_code(returncode: int) -> tuple[int, int | None]:
    """Popen's returncode -> (container exit code, signal): killed by signal N is 128+N."""
    if returncode < 0:
        return 128 - returncode, -returncode
    return returncode, None


def termination_reason(code: int) -> str:
    return "Completed" if code == 0 else "Error"


def should_restart(restart_policy: str, code: int) -> bool:
    if restart_policy == "Never":
        return False
    if restart_policy == "OnFailure":
        return code != 0
    return True  # Always (the default, and the only one Deployments allow)


def restart_delay(failures: int, base: float, cap: float) -> float:
    """Kubelet-style crash-loop back-off: base, 2*base, 4*base, ... capped; 0 before any."""
    if failures <= 0:
        return 0.0
    return float(min(cap, base * 2 ** (failures - 1)))


def phase(obs: Observed) -> str:
    if obs.finished and obs.last_termination is not None:
        return "Succeeded" if obs.last_termination.exit_code == 0 else "Failed"
    if obs.pid is not None or obs.last_termination is not None:
        return "Running"  # restartPolicy Always: a crash-looping pod stays Running
    return "Pending"


def container_status(obs: Observed) -> dict[str, Any]:
    ready = obs.pid is not None and obs.healthy
    cs: dict[str, Any] = {
        "name": obs.name,
        "image": obs.image,
        "imageID": "",
        "ready": ready,
        "started": obs.pid is not None and obs.started,
        "restartCount": obs.restart_count,
    }
    if obs.pid is not None:
        # <runtime>://<id>, as kubelets report it; the id is the local pid.
        cs["containerID"] = f"local://{obs.pid}"
        cs["state"] = {"running": {"startedAt": obs.started_at}}
        if obs.last_termination is not None:
            cs["lastState"] = obs.last_termination.as_state()
    elif obs.waiting:
        cs["state"] = {"waiting": {"reason": obs.waiting}}
        if obs.last_termination is not None:
            cs["lastState"] = obs.last_termination.as_state()
    elif obs.finished and obs.last_termination is not None:
        cs["state"] = obs.last_termination.as_state()
    elif obs.last_termination is not None:
        cs["state"] = {"waiting": {
            "reason": "CrashLoopBackOff",
            "message": f"back-off {obs.backoff_s:g}s restarting failed container={obs.name}",
        }}
        cs["lastState"] = obs.last_termination.as_state()
    else:
        cs["state"] = {"waiting": {"reason": "ContainerCreating"}}
    return cs


def _condition(type_: str, ok: bool, now: str, current: Mapping[str, Any],
               reason: str = "", message: str = "") -> dict[str, Any]:
    status = "True" if ok else "False"
    prev = current.get(type_) or {}
    # The transition time moves only when the status flips.
    since = prev.get("lastTransitionTime") if prev.get("status") == status else None
    c: dict[str, Any] = {"type": type_, "status": status, "lastTransitionTime": since or now}
    if not ok and reason:
        c["reason"] = reason
        c["message"] = message
    else:
        # null deletes the field in a strategic-merge patch: no stale "not ready" reason.
        c["reason"] = c["message"] = None
    return c


def desired_status(obs: Observed, current: Mapping[str, Any] | None, now: str
                   ) -> dict[str, Any]:
    """The status fields the runner owns. Conditions it does not own (PodScheduled) and the
    pod IP are left alone: a strategic-merge patch merges conditions by type."""
    current = current or {}
    by_type = {c.get("type"): c for c in current.get("conditions") or []}
    cs = container_status(obs)
    ready = bool(cs["ready"])
    not_ready = f"containers with unready status: [{obs.name}]"
    return {
        "phase": phase(obs),
        "startTime": current.get("startTime") or now,
        "conditions": [
            _condition("Initialized", True, now, by_type),
            _condition("ContainersReady", ready, now, by_type,
                       "ContainersNotReady", not_ready),
            _condition("Ready", ready, now, by_type, "ContainersNotReady", not_ready),
        ],
        "containerStatuses": [cs],
    }


def _essence(status: Mapping[str, Any]) -> tuple[Any, ...]:
    """What matters for deciding to write: ignores timestamps the runner did not change."""
    conds = {c.get("type"): c.get("status") for c in status.get("conditions") or []
             if c.get("type") in OUR_CONDITIONS}
    css = status.get("containerStatuses") or [{}]
    cs = css[0]
    state = cs.get("state") or {}
    kind = next(iter(state), None)
    detail = state.get(kind) or {}
    last = ((cs.get("lastState") or {}).get("terminated") or {})
    return (
        status.get("phase"),
        tuple(sorted(conds.items())),
        cs.get("ready"), cs.get("started"), cs.get("restartCount"), cs.get("containerID"),
        kind, detail.get("startedAt"), detail.get("exitCode"), detail.get("reason"),
        last.get("exitCode"), last.get("finishedAt"),
    )


def needs_patch(current: Mapping[str, Any] | None, desired: Mapping[str, Any]) -> bool:
    return _essence(current or {}) != _essence(desired)


# The operator annotates pods with the full SDD name when their label holds a short form
# (names longer than a label value allows); the tuner matches series by the full name.
ANNOTATION_SDD_NAME = "specdecode.io/deployment-name"


def target_labels(pod: Mapping[str, Any], sdd_label: str, k_label: str) -> dict[str, str]:
    """The file_sd labels the autotuner groups by (prometheus.TARGET_LABELS)."""
    meta = pod.get("metadata") or {}
    labels = meta.get("labels") or {}
    sdd = (meta.get("annotations") or {}).get(ANNOTATION_SDD_NAME) or labels.get(sdd_label, "")
    return {
        "namespace": str(meta.get("namespace", "")),
        "pod": str(meta.get("name", "")),
        "sdd": str(sdd),
        "draft_tokens": str(labels.get(k_label, "")),
    }
