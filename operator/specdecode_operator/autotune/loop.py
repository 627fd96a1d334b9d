"""The tuning cycle's shell: list SDDs, query Prometheus once for all of them, evaluate each,
apply the autotuner's own status fields and post events. Decisions are made by the pure
modules.

The tuner never touches the reconciler: it reads the running K from
``status.draftTokens.current`` and applies its fields (including ``autotune.target``, the K it
wants) under its own field manager; the SDD's watch event triggers the reconcile that renders
the target.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from lightkube import ApiError

from .. import api, crd, draft_tokens, metrics
from ..kube import Kube
from ..render import defaulted_spec
from .observe import Key, Labels, PrometheusClient, PrometheusError, windows
from .policy import Settings, Window
from .tuning_status import evaluate

log = logging.getLogger(__name__)


@dataclass
class CycleReport:
    evaluated: int = 0
    written: int = 0
    queries: int = 0
    seconds: float = 0.0


@dataclass
class Tuner:
    kube: Kube
    prometheus: PrometheusClient | None
    labels: Labels = field(default_factory=Labels.from_env)
    namespaces: list[str | None] = field(default_factory=lambda: [None])
    tick_seconds: float = 10.0
    parallelism: int = 8  # SDDs evaluated at once (each is a read and maybe a status write)
    _last_eval: dict[tuple[str, str], float] = field(default_factory=dict)

    @classmethod
    def from_env(cls, kube: Kube) -> Tuner:
        url = os.environ.get("SPECDECODE_PROMETHEUS_URL", "")
        prom = PrometheusClient(url, timeout=float(
            os.environ.get("SPECDECODE_PROMETHEUS_TIMEOUT", "5"))) if url else None
        scope: list[str | None] = [
            n for n in os.environ.get("SPECDECODE_NAMESPACES", "").split(",") if n] or [None]
        return cls(kube, prom, namespaces=scope,
                   tick_seconds=float(os.environ.get("SPECDECODE_AUTOTUNE_TICK", "10")))

    async def run_forever(self) -> None:
        while True:
            try:
                await self.cycle()
            except ApiError as e:  # e.g. 429 while the apiserver's storage initializes
                log.warning("tuning cycle skipped: Kubernetes API: %s", e.status.message)
            except Exception:  # a failed cycle must not stop tuning for good
                log.exception("tuning cycle failed")
            await asyncio.sleep(self.tick_seconds)

    def _due(self, sdd: dict[str, Any], now: float) -> tuple[dict[str, Any], Settings] | None:
        spec = defaulted_spec(sdd["spec"])
        if not draft_tokens.speculative(spec):
            return None
        if (sdd["metadata"].get("annotations") or {}).get(crd.PAUSE_ANNOTATION) == "true":
            return None
        settings = Settings.from_spec(spec)
        if settings.mode == "Off":
            return None
        key = (sdd["metadata"]["namespace"], sdd["metadata"]["name"])
        if now - self._last_eval.get(key, 0.0) < spec["autotune"]["intervalSeconds"]:
            return None
        return spec, settings

    async def cycle(self, now: float | None = None) -> CycleReport:
        t0 = time.monotonic()
        now = time.time() if now is None else now
        report = CycleReport()
        due: list[tuple[dict[str, Any], dict[str, Any], Settings]] = []
        for ns in self.namespaces:
            for sdd in await self.kube.list_sdds(ns):
                d = self._due(sdd, now)
                if d:
                    due.append((sdd, *d))
        if not due:
            return report

        # One set of queries per distinct window length (one set with the defaults).
        by_window: dict[int, list[tuple[dict[str, Any], dict[str, Any], Settings]]] = \
            defaultdict(list)
        for item in due:
            by_window[int(item[1]["autotune"]["windowSeconds"])].append(item)
        for window_s, items in by_window.items():
            found: dict[Key, Window] = {}
            unavailable = None
            if self.prometheus is None:
                unavailable = "no Prometheus configured (SPECDECODE_PROMETHEUS_URL)"
            else:
                before = self.prometheus.queries_made
                try:
                    results = await self.prometheus.cycle(window_s, self.labels)
                    found = windows(results, window_s, self.labels)
                except PrometheusError as e:
                    unavailable = f"Prometheus at {self.prometheus.url} failed: {e}"
                    metrics.PROMETHEUS_ERRORS.inc()
                made = self.prometheus.queries_made - before
                report.queries += made
                metrics.PROMETHEUS_QUERIES.inc(made)
            sem = asyncio.Semaphore(self.parallelism)

            async def one(sdd: dict[str, Any], spec: dict[str, Any], settings: Settings,
                          found: dict[Key, Window] = found,
                          unavailable: str | None = unavailable,
                          sem: asyncio.Semaphore = sem) -> bool | None:
                async with sem:
                    return await self._evaluate_one(sdd, spec, settings, found,
                                                    unavailable, now)

            outcomes = await asyncio.gather(*(one(*item) for item in items))
            report.evaluated += sum(w is not None for w in outcomes)
            report.written += sum(bool(w) for w in outcomes)
        report.seconds = time.monotonic() - t0
        metrics.TUNING_CYCLE_SECONDS.observe(report.seconds)
        return report

    async def _evaluate_one(
        self, sdd: dict[str, Any], spec: dict[str, Any], settings: Settings,
        found: dict[Key, Window], unavailable: str | None, now: float,
    ) -> bool | None:
        """Evaluate one listed SDD (``spec`` defaulted): True if its status was written,
        None if it was not evaluated."""
        ns, name = sdd["metadata"]["namespace"], sdd["metadata"]["name"]
        bounds = draft_tokens.bounds(spec)
        live = sdd.get("status") or {}
        running = (live.get("draftTokens") or {}).get("current")
        if bounds is None or running is None:
            return None  # not reconciled yet: nothing runs whose metrics could be judged
        status = api.with_legacy_target(live)
        if draft_tokens.current_k(spec, status).k != int(running):
            return None  # the reconciler has not rendered the target yet (or the spec moved)
        self._last_eval[(ns, name)] = now
        k = int(running)
        window = found.get((ns, name, k))
        ev = evaluate(settings, status, k, window, now=now, unavailable=unavailable,
                      initial_k=bounds.initial)
        d = ev.decision
        outcome = "unavailable" if d is None else (
            "change" if d.changed else ("recommend" if d.recommended != d.k_from else "keep"))
        metrics.DECISIONS.labels(outcome=outcome).inc()
        if window is not None and window.acceptance_rate is not None:
            metrics.ACCEPTANCE.labels(namespace=ns, name=name).set(window.acceptance_rate)
        written = api.tuner_differs(ev.status, live)
        if written:
            await self.kube.apply_status(sdd, ev.status, manager=api.TUNER_MANAGER)
        for type_, reason, message in ev.events:
            await self.kube.event(sdd, type_, reason, message)
        if d is not None and d.changed:
            log.info("%s/%s: %s", ns, name, d.reason)
        return written
