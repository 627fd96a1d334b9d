"""Observation windows from Prometheus: one query per metric for ALL SpecDecodeDeployments.

Series are grouped by the labels that map a pod to its SDD and to the K it runs (see
``Labels``), so two Ks are never mixed in one estimate: during and after a rollout the old
and new K are separate groups, and ``increase()`` absorbs the counter resets of restarted
pods. Query building and result parsing are pure; ``PrometheusClient`` is the only I/O.
"""

from __future__ import annotations

import math
import os
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import httpx

from .policy import Window

Key = tuple[str, str, int]  # (namespace, sdd, K)


@dataclass(frozen=True)
class Labels:
    """Prometheus label names that carry the namespace, the SDD and K of a series."""

    namespace: str = "namespace"
    sdd: str = "sdd"
    k: str = "draft_tokens"
    pod: str = "pod"

    @classmethod
    def from_env(cls) -> Labels:
        return cls(
            namespace=os.environ.get("SPECDECODE_PROM_LABEL_NAMESPACE", "namespace"),
            sdd=os.environ.get("SPECDECODE_PROM_LABEL_SDD", "sdd"),
            k=os.environ.get("SPECDECODE_PROM_LABEL_K", "draft_tokens"),
            pod=os.environ.get("SPECDECODE_PROM_LABEL_POD", "pod"),
        )


COUNTERS = {
    "drafts": "vllm:spec_decode_num_drafts_total",
    "draft_tokens": "vllm:spec_decode_num_draft_tokens_total",
    "accepted": "vllm:spec_decode_num_accepted_tokens_total",
    "generation_tokens": "vllm:generation_tokens_total",
    "requests": "vllm:request_success_total",
}
# Step-time evidence for the cost-model calibration (calibration.py): the ITL histogram's
# sum and count, the engine steps (one iteration_tokens observation per step) and prefill.
STEP_COUNTERS = {
    "itl_sum": "vllm:inter_token_latency_seconds_sum",
    "itl_count": "vllm:inter_token_latency_seconds_count",
    "steps": "vllm:iteration_tokens_total_count",
    "prompt_tokens": "vllm:prompt_tokens_total",
}
PER_POSITION = "vllm:spec_decode_num_accepted_tokens_per_pos_total"
RUNNING = "vllm:num_requests_running"
LOAD_QUANTILES = (0.1, 0.3, 0.5, 0.7, 0.9)


def queries(window_seconds: int, labels: Labels) -> dict[str, str]:
    """The PromQL of one tuning cycle: a fixed set, whatever the number of SDDs."""
    by = f"{labels.namespace}, {labels.sdd}, {labels.k}"
    w = f"{int(window_seconds)}s"
    out = {name: f"sum by ({by}) (increase({metric}[{w}]))"
           for name, metric in {**COUNTERS, **STEP_COUNTERS}.items()}
    out["per_position"] = f"sum by ({by}, position) (increase({PER_POSITION}[{w}]))"
    # All load quantiles in one query: each series' quantile tagged with a "q" label.
    parts = [
        f'label_replace(quantile_over_time({q}, {RUNNING}[{w}]), "q", "{q}", "", "")'
        for q in LOAD_QUANTILES
    ]
    out["running"] = " or ".join(parts)
    return out


def _key(metric: dict[str, str], labels: Labels) -> Key | None:
    try:
        return (metric[labels.namespace], metric[labels.sdd], int(metric[labels.k]))
    except (KeyError, ValueError):
        return None  # a series without our labels (not ours, or mislabelled)


def _value(sample: dict[str, Any]) -> float | None:
    try:
        v = float(sample["value"][1])
    except (KeyError, IndexError, TypeError, ValueError):
        return None
    return v if math.isfinite(v) and v >= 0 else None


def windows(
    results: dict[str, list[dict[str, Any]]], window_seconds: float, labels: Labels
) -> dict[Key, Window]:
    """Parse one cycle's query results into a Window per (namespace, sdd, K).

    NaN, negative and unlabeled samples are dropped; a K whose per-position series are
    incomplete yields no spec-decode counters (treated as not enough evidence). A missing
    step-time series leaves its field NaN (the calibration then skips the window).
    """
    sums: dict[Key, dict[str, float]] = defaultdict(dict)
    for name in (*COUNTERS, *STEP_COUNTERS):
        for sample in results.get(name, []):
            key, v = _key(sample.get("metric", {}), labels), _value(sample)
            if key is not None and v is not None:
                sums[key][name] = sums[key].get(name, 0.0) + v
    per_pos: dict[Key, dict[int, float]] = defaultdict(dict)
    for sample in results.get("per_position", []):
        m = sample.get("metric", {})
        key, v = _key(m, labels), _value(sample)
        if key is None or v is None or "position" not in m:
            continue
        per_pos[key][int(m["position"])] = v
    load: dict[Key, list[tuple[float, float]]] = defaultdict(list)
    for sample in results.get("running", []):
        key, v = _key(sample.get("metric", {}), labels), _value(sample)
        if key is not None and v is not None:
            load[key].append((v, 1.0))

    out: dict[Key, Window] = {}
    for key in set(sums) | set(load):
        k = key[2]
        s = sums.get(key, {})
        positions = per_pos.get(key, {})
        # Positions exist only for 0..K-1 of the K a pod started with.
        pos = tuple(positions.get(i, math.nan) for i in range(k))
        complete = k > 0 and all(math.isfinite(p) for p in pos)
        out[key] = Window(
            k=k,
            seconds=float(window_seconds),
            drafts=s.get("drafts", 0.0) if complete else 0.0,
            draft_tokens=s.get("draft_tokens", 0.0) if complete else 0.0,
            accepted=s.get("accepted", 0.0) if complete else 0.0,
            accepted_per_pos=pos if complete else (),
            generation_tokens=s.get("generation_tokens", 0.0),
            requests=s.get("requests", 0.0),
            load=tuple(load.get(key, ())) or ((1.0, 1.0),),
            itl_sum=s.get("itl_sum", math.nan),
            itl_count=s.get("itl_count", math.nan),
            steps=s.get("steps", math.nan),
            prompt_tokens=s.get("prompt_tokens", math.nan),
        )
    return out


class PrometheusError(RuntimeError):
    """Prometheus could not answer: down, slow, or an error response."""


@dataclass
class PrometheusClient:
    url: str
    timeout: float = 5.0
    queries_made: int = 0

    async def query(self, client: httpx.AsyncClient, promql: str) -> list[dict[str, Any]]:
        self.queries_made += 1
        try:
            r = await client.get(f"{self.url.rstrip('/')}/api/v1/query",
                                 params={"query": promql}, timeout=self.timeout)
        except httpx.HTTPError as e:
            raise PrometheusError(f"{type(e).__name__}: {e}") from e
        try:
            body = r.json()
        except ValueError as e:
            raise PrometheusError(f"HTTP {r.status_code}: not JSON") from e
        if r.status_code != 200 or body.get("status") != "success":
            raise PrometheusError(f"HTTP {r.status_code}: {body.get('error', body)}")
        return list(body.get("data", {}).get("result", []))

    async def cycle(self, window_seconds: int, labels: Labels) -> dict[str, list[dict[str, Any]]]:
        """Run one cycle's queries (a fixed number) and return their raw results."""
        async with httpx.AsyncClient() as client:
            return {name: await self.query(client, q)
                    for name, q in queries(window_seconds, labels).items()}
