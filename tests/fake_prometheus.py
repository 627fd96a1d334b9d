"""An in-memory stand-in for the tuner's Prometheus port, for the fast tier only: it answers
every cycle with fixed query results (the parsing and the decision stay real). The tiers
that claim to test Prometheus run the real server."""

from __future__ import annotations

from typing import Any

from specdecode_operator.autotune.observe import Labels


class StubPrometheus:
    """Answers every cycle with the given results; counts the queries a cycle stands for."""

    url = "http://prometheus.invalid"

    def __init__(self, results: dict[str, list[dict[str, Any]]]) -> None:
        self.results, self.queries_made = results, 0

    async def cycle(self, window_seconds: int, labels: Labels) -> dict[str, Any]:
        self.queries_made += len(self.results)
        return self.results
