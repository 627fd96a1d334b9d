"""The operator's own Prometheus metrics (served by ``--metrics-port``)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

RECONCILE_SECONDS = Histogram(
    "specdecode_operator_reconcile_duration_seconds", "Duration of one reconcile pass.",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
RECONCILE_ERRORS = Counter(
    "specdecode_operator_reconcile_errors_total", "Reconcile passes that raised an error.")
CHILD_WRITES = Counter(
    "specdecode_operator_child_writes_total",
    "Server-side applies of owned objects, by kind and reason (missing, changed, drifted).",
    ["kind", "reason"],
)
CURRENT_K = Gauge(
    "specdecode_operator_draft_tokens", "Draft length K the operator renders, per SDD.",
    ["namespace", "name"],
)
DECISIONS = Counter(
    "specdecode_operator_autotune_decisions_total",
    "Tuning evaluations by outcome: keep, recommend, change, unavailable.", ["outcome"],
)
ACCEPTANCE = Gauge(
    "specdecode_operator_acceptance_rate",
    "Observed draft acceptance rate at the current K, per SDD.", ["namespace", "name"],
)
PROMETHEUS_QUERIES = Counter(
    "specdecode_operator_prometheus_queries_total", "Queries sent to Prometheus.")
PROMETHEUS_ERRORS = Counter(
    "specdecode_operator_prometheus_errors_total", "Tuning cycles Prometheus failed.")
TUNING_CYCLE_SECONDS = Histogram(
    "specdecode_operator_tuning_cycle_seconds", "Duration of one tuning cycle (all SDDs).",
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
