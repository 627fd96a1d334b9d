"""What the end-to-end tests read back from the stack: K changes, pods at a K, the stand-in
process a pod really runs, and how many requests a restart may fail."""

from __future__ import annotations

import calendar
import json
import math
import re
import time
from pathlib import Path
from typing import Any

from specdecode_runtime.demo import NAME, NAMESPACE, Stack
from specdecode_runtime.localplane import LocalPlane

from ..kube_helpers import events, get_json


def max_errors_per_rollout(concurrency: int) -> int:
    """Requests a rolling restart may fail. When the old pod stops, each worker loses at most
    its one in-flight request, then keeps choosing among addresses whose /health answered in
    the last second (LoadGenerator._ready caches it 1 s) and backs off 0.3 s per error: at
    most 1 + ceil(1.0 / 0.3) = 5 errors per worker and rollout before the dead address drops
    out. Measured on 2 shared cores: 9 errors over 2 rolling restarts (K 3 -> 6 -> 3, 1804
    requests); the bound is the worst case of that rule, not a fit to one run."""
    return concurrency * (1 + math.ceil(1.0 / 0.3))


def k_changes(plane: LocalPlane) -> list[tuple[int, int, float]]:
    """(from, to, time) of every K change, from the operator's DraftTokensChanged (and, for a
    change that verification undid, DraftTokensRolledBack) events
    (status.autotune.history keeps only the last few decisions)."""
    out = []
    for e in events(plane, NAMESPACE, NAME):
        m = re.search(r"K (\d+) -> (\d+|off)", e["message"])
        if e["reason"] in ("DraftTokensChanged", "DraftTokensRolledBack") and m:
            t = calendar.timegm(time.strptime(e["firstTimestamp"], "%Y-%m-%dT%H:%M:%SZ"))
            out += [(int(m.group(1)), 0 if m.group(2) == "off" else int(m.group(2)), t)]
    return sorted(out, key=lambda c: c[2])


def pods_at(plane: LocalPlane, k: int, extra: str = "") -> list[dict[str, Any]]:
    """The SDD's live pods at draft length ``k`` (``extra``: more label selectors)."""
    sel = f"specdecode.io/deployment={NAME},specdecode.io/draft-tokens={k}{extra}"
    pods = get_json(plane, "pods", "-n", NAMESPACE, "-l", sel)
    return [p for p in pods["items"] if not p["metadata"].get("deletionTimestamp")]


def ready(pod: dict[str, Any]) -> bool:
    return any(c["type"] == "Ready" and c["status"] == "True"
               for c in pod["status"].get("conditions", []))


def running_k(stack: Stack, pod: dict[str, Any]) -> int:
    """The num_speculative_tokens the pod's stand-in process was really started with."""
    assert stack.runner
    state = stack.runner.pod_state(NAMESPACE, pod["metadata"]["name"])
    assert state is not None, pod["metadata"]["name"]
    cmdline = Path(f"/proc/{state['pid']}/cmdline").read_bytes().split(b"\0")
    return int(json.loads(cmdline[cmdline.index(b"--speculative-config") + 1])
               ["num_speculative_tokens"])
