"""Is the operator stuck? Liveness must fail only when a restart would help: the API answers
but the operator no longer sees it (the periodic list stopped succeeding, or the SDD watch
stopped delivering changes the list shows). An API that is away is not the operator's fault:
watches and writes retry with backoff until it is back, and a restart would not help.

Pure state; the Kopf layer feeds it (watch events, resync lists) and asks it from the probe.
"""

from __future__ import annotations

from dataclasses import dataclass, field

Key = tuple[str, str]


@dataclass
class Watchdog:
    resync_seconds: float
    started: float
    last_list_ok: float | None = None
    # The last resourceVersion the watch delivered, per object.
    watched: dict[Key, str] = field(default_factory=dict)
    # Objects the last list showed newer than the watch had delivered: (listed rv, seen rv).
    lagging: dict[Key, tuple[str, str | None]] = field(default_factory=dict)
    watch_stuck: list[Key] = field(default_factory=list)

    def saw_event(self, key: Key, resource_version: str | None) -> None:
        if resource_version:
            self.watched[key] = resource_version

    def listed(self, now: float, objects: dict[Key, str]) -> None:
        """A periodic list succeeded, showing ``objects`` (key -> resourceVersion)."""
        self.last_list_ok = now
        # Behind at the previous list and still no event since: the watch is not delivering.
        self.watch_stuck = [k for k, (rv, seen) in self.lagging.items()
                            if k in objects and self.watched.get(k) == seen
                            and objects[k] != seen]
        self.lagging = {k: (rv, self.watched.get(k)) for k, rv in objects.items()
                        if self.watched.get(k) != rv}

    def problem(self, now: float, api_answers: bool) -> str | None:
        """Why the operator is stuck, or None. ``api_answers``: the API responded just now."""
        if not api_answers:
            return None
        since = self.last_list_ok if self.last_list_ok is not None else self.started
        if now - since > 3 * self.resync_seconds + 30:
            return f"no successful list of SpecDecodeDeployments for {now - since:.0f} s " \
                   "while the API server answers"
        if self.watch_stuck:
            ns, name = self.watch_stuck[0]
            return f"the watch has not delivered changes to {len(self.watch_stuck)} " \
                   f"object(s) (e.g. {ns}/{name}) over two resyncs while the API server answers"
        return None
