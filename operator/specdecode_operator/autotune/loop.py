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
import time
from collections import defaultdict
from dataclasses import dataclass, field, replace
from typing import Any

from lightkube import ApiError

from .. import api, draft_tokens, metrics
from ..config import OperatorConfig
from ..kube import Kube
from .observe import Key, Labels, PrometheusClient, PrometheusError, windows
from .policy import Settings, Window
from .tuning_status import evaluate

log = logging.getLogger(__name__)


@dataclass
class CycleReport:
    evaluated: int = 0
    written: int = 0
    queries: int = 0
    failed: int = 0      # SDDs whose evaluation or status write failed (the others go on)
    seconds: float = 0.0


@dataclass
class Tuner:
    kube: Kube
    prometheus: PrometheusClient | None
    labels: Labels = field(default_factory=Labels)
    namespaces: list[str | None] = field(default_factory=lambda: [None])
    tick_seconds: float = 10.0
    parallelism: int = 8  # SDDs evaluated at once (each is a read and maybe a status write)
    _last_eval: dict[tuple[str, str], float] = field(default_factory=dict)

    @classmethod
    def from_config(cls, kube: Kube, config: OperatorConfig) -> Tuner:
        prom = PrometheusClient(config.prometheus_url, timeout=config.prometheus_timeout) \
            if config.prometheus_url else None
        return cls(kube, prom, labels=config.labels, namespaces=config.scope,
                   tick_seconds=config.autotune_tick)

    async def run_forever(self) -> None:
        while True:
            try:
                await self.cycle()
            except ApiError as e:  # e.g. 429 while the apiserver's storage initializes
                log.warning("tuning cycle skipped: Kubernetes API: %s", e.status.message)
            except Exception:  # a failed cycle must not stop tuning for good
                log.exception("tuning cycle failed")
            await asyncio.sleep(self.tick_seconds)

    def _due(self, sdd: dict[str, Any], now: float) -> tuple[api.SpecView, Settings] | None:
        view = api.SpecView.of(sdd)  # the spec, read and defaulted once per evaluation
        if not view.speculative or view.autotune.paused or view.autotune.mode == "Off":
            return None
        key = (sdd["metadata"]["namespace"], sdd["metadata"]["name"])
        if now - self._last_eval.get(key, 0.0) < view.autotune.interval_seconds:
            return None
        settings = Settings.from_spec(view.spec)
        if view.bounds is not None:  # the resolved initial K (explicit or from the preset)
            settings = replace(settings, initial_k=view.bounds.initial)
        return view, settings

    async def cycle(self, now: float | None = None) -> CycleReport:
        t0 = time.monotonic()
        now = time.time() if now is None else now
        report = CycleReport()
        due: list[tuple[dict[str, Any], api.SpecView, Settings]] = []
        for ns in self.namespaces:
            for sdd in await self.kube.list_sdds(ns):
                d = self._due(sdd, now)
                if d:
                    due.append((sdd, *d))
        if not due:
            return report

        # One set of queries per distinct window length (one set with the defaults).
        by_window: dict[int, list[tuple[dict[str, Any], api.SpecView, Settings]]] = \
            defaultdict(list)
        for item in due:
            by_window[item[1].autotune.window_seconds].append(item)
        for window_s, items in by_window.items():
            found: dict[Key, Window] = {}
            unavailable = None
            if self.prometheus is None:
                unavailable = ("no Prometheus configured (--prometheus-url, "
                               "SPECDECODE_PROMETHEUS_URL)")
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

            async def one(sdd: dict[str, Any], view: api.SpecView, settings: Settings,
                          found: dict[Key, Window] = found,
                          unavailable: str | None = unavailable,
                          sem: asyncio.Semaphore = sem) -> bool | None:
                async with sem:
                    return await self._evaluate_one(sdd, view, settings, found,
                                                    unavailable, now)

            # One SDD failing (deleted meanwhile: 404; its status rejected: 422) must not
            # stop the others' evaluations.
            outcomes = await asyncio.gather(*(one(*item) for item in items),
                                            return_exceptions=True)
            for item, w in zip(items, outcomes, strict=True):
                if isinstance(w, BaseException):
                    if not isinstance(w, Exception):
                        raise w     # cancellation and the like end the cycle
                    report.failed += 1
                    meta = item[0]["metadata"]
                    msg = w.status.message if isinstance(w, ApiError) else repr(w)
                    log.warning("%s/%s: tuning evaluation failed: %s", meta["namespace"],
                                meta["name"], msg)
                    continue
                report.evaluated += w is not None
                report.written += bool(w)
        report.seconds = time.monotonic() - t0
        metrics.TUNING_CYCLE_SECONDS.observe(report.seconds)
        return report

    async def _evaluate_one(
        self, sdd: dict[str, Any], view: api.SpecView, settings: Settings,
        found: dict[Key, Window], unavailable: str | None, now: float,
    ) -> bool | None:
        """Evaluate one listed SDD: True if its status was written, None if it was not
        evaluated."""
        ns, name = sdd["metadata"]["namespace"], sdd["metadata"]["name"]
        spec, bounds = view.spec, view.bounds
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
        # Canary mode: the canary replica's pods carry their own K label, so the same
        # queries return its window beside the main replicas'.
        canary_to = ((status.get("autotune") or {}).get("canary") or {}).get("to")
        canary_window = found.get((ns, name, int(canary_to))) \
            if isinstance(canary_to, int) and canary_to != k else None
        ev = evaluate(settings, status, k, window, now=now, unavailable=unavailable,
                      initial_k=bounds.initial, canary_window=canary_window)
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
