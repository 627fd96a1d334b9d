"""The tuning cycle's shell: list SDDs, query Prometheus once for all of them, evaluate each
under its object lock, write status and events. Decisions are made by the pure modules."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from lightkube import ApiError

from .. import crd, draft_tokens, metrics
from ..render import defaulted_spec
from .observe import Key, Labels, PrometheusClient, PrometheusError, windows
from .policy import Settings, Window
from .tuning_status import evaluate

if TYPE_CHECKING:
    from ..controller import Controller

log = logging.getLogger(__name__)


@dataclass
class CycleReport:
    evaluated: int = 0
    written: int = 0
    queries: int = 0
    seconds: float = 0.0


@dataclass
class Tuner:
    controller: Controller
    prometheus: PrometheusClient | None
    labels: Labels = field(default_factory=Labels.from_env)
    namespaces: list[str | None] = field(default_factory=lambda: [None])
    tick_seconds: float = 10.0
    parallelism: int = 8  # SDDs evaluated at once (each is a read and maybe a status write)
    _last_eval: dict[tuple[str, str], float] = field(default_factory=dict)

    @classmethod
    def from_env(cls, controller: Controller) -> Tuner:
        url = os.environ.get("SPECDECODE_PROMETHEUS_URL", "")
        prom = PrometheusClient(url, timeout=float(
            os.environ.get("SPECDECODE_PROMETHEUS_TIMEOUT", "5"))) if url else None
        scope: list[str | None] = [
            n for n in os.environ.get("SPECDECODE_NAMESPACES", "").split(",") if n] or [None]
        return cls(controller, prom, namespaces=scope,
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
            for sdd in await self.controller.kube.list_sdds(ns):
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

            async def one(sdd: dict[str, Any], settings: Settings,
                          found: dict[Key, Window] = found,
                          unavailable: str | None = unavailable,
                          sem: asyncio.Semaphore = sem) -> bool:
                async with sem:
                    return await self._evaluate_one(sdd, settings, found, unavailable, now)

            written = await asyncio.gather(*(one(sdd, st) for sdd, _spec, st in items))
            report.evaluated += len(items)
            report.written += sum(written)
        report.seconds = time.monotonic() - t0
        metrics.TUNING_CYCLE_SECONDS.observe(report.seconds)
        return report

    async def _evaluate_one(
        self, listed: dict[str, Any], settings: Settings, found: dict[Key, Window],
        unavailable: str | None, now: float,
    ) -> bool:
        ns, name = listed["metadata"]["namespace"], listed["metadata"]["name"]
        self._last_eval[(ns, name)] = now
        async with self.controller.lock(ns, name):
            sdd = await self.controller.kube.get_sdd(ns, name)  # fresh, under the lock
            if sdd is None:
                return False
            spec = defaulted_spec(sdd["spec"])
            cur = draft_tokens.current_k(spec, sdd.get("status"))
            if cur.k is None:
                return False
            window = found.get((ns, name, cur.k))
            ev = evaluate(settings, sdd.get("status"), cur.k, window, now=now,
                          unavailable=unavailable)
            d = ev.decision
            outcome = "unavailable" if d is None else (
                "change" if d.changed else ("recommend" if d.recommended != d.k_from
                                            else "keep"))
            metrics.DECISIONS.labels(outcome=outcome).inc()
            if window is not None and window.acceptance_rate is not None:
                metrics.ACCEPTANCE.labels(namespace=ns, name=name).set(window.acceptance_rate)
            written = await self.controller.apply_tuner_status(
                sdd, ev.fields, ev.condition, ev.current_k, ev.recommended)
            for type_, reason, message in ev.events:
                await self.controller.kube.event(sdd, type_, reason, message)
            if d is not None and d.changed:
                log.info("%s/%s: %s", ns, name, d.reason)
        if written:
            self.controller.trigger(ns, name)  # render the new K now, not at the next event
        return written
