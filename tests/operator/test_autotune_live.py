"""The autotuner end to end on real parts: the operator process, the real control plane, a
real Prometheus scraping real HTTP endpoints that serve vLLM-format counters."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from specdecode_operator.autotune.acceptance import iid
from specdecode_operator.autotune.loop import Tuner
from specdecode_operator.autotune.observe import Labels, PrometheusClient
from specdecode_operator.kube import Kube
from specdecode_runtime.localplane import LocalPlane
from specdecode_runtime.operator_process import OperatorProcess
from specdecode_runtime.prometheus import PrometheusServer

from ..conftest import solo_operator_for
from ..kube_helpers import (
    apply,
    condition,
    events,
    get_json,
    last_decision,
    sdd_doc,
    wait_for,
    wait_next_decision,
)
from ..vllm_exporter import ExporterFleet, ExporterPod

pytestmark = pytest.mark.plane


def spec(mode: str = "Auto", **autotune: Any) -> dict[str, Any]:
    return {
        "model": {"name": "org/target"},
        "drafter": {"method": "mtp", "model": "org/target-assistant"},
        "draftTokens": {"initial": 3, "min": 1, "max": 12},
        "replicas": 1,
        "autotune": {"mode": mode, "intervalSeconds": 5, "windowSeconds": 30,
                     "cooldownSeconds": 3600, "evidence": {"minDrafts": 3000, "minRequests": 5},
                     **autotune},
    }


def deployed_k(plane: LocalPlane, ns: str, name: str) -> int:
    dep = get_json(plane, "deployment", name, "-n", ns)
    args = dep["spec"]["template"]["spec"]["containers"][0]["args"]
    cfg = json.loads(args[args.index("--speculative-config") + 1])
    return int(cfg["num_speculative_tokens"])


class KFollower:
    """Plays the kubelet: when the Deployment's K changes, restart the exporter pod at it."""

    def __init__(self, plane: LocalPlane, fleet: ExporterFleet, pod: ExporterPod) -> None:
        self.plane, self.fleet, self.pod = plane, fleet, pod
        self.seen: list[int] = [pod.k]
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            try:
                k = deployed_k(self.plane, self.pod.namespace, self.pod.sdd)
            except Exception:
                continue
            if k != self.pod.k:
                self.pod = self.fleet.restart_at(self.pod, k)
                self.seen.append(k)

    def stop(self) -> None:
        self._stop.set()
        self._t.join()


def test_auto_changes_k_once_after_the_evidence_gate_then_holds_in_cooldown(
    operator: OperatorProcess, plane: LocalPlane, namespace: str, fleet: ExporterFleet
) -> None:
    # Verification of the change is immediate here (it is persisted now, and would hold K
    # for its 30 minutes first): this test is about the cooldown.
    apply(plane, sdd_doc("auto", namespace, spec(
        verification={"afterSeconds": 0, "minWindows": 0})))
    wait_for("Deployment at K=3", lambda: deployed_k(plane, namespace, "auto") == 3)
    pod = fleet.add(ExporterPod(namespace, "auto", 3, iid(0.9, 16), drafts_per_second=200))
    follower = KFollower(plane, fleet, pod)
    reasons: list[str] = []
    try:
        def changed() -> bool:
            s = get_json(plane, "sdd", "auto", "-n", namespace).get("status") or {}
            r = ((s.get("autotune") or {}).get("lastDecision") or {}).get("reason")
            if r and (not reasons or reasons[-1] != r):
                reasons.append(r)
            return (s.get("draftTokens") or {}).get("current", 3) != 3

        wait_for("the autotuner to change K", changed, timeout=90)
        assert any(r.startswith("evidence gate") for r in reasons), reasons
        sdd = get_json(plane, "sdd", "auto", "-n", namespace)
        new_k = sdd["status"]["draftTokens"]["current"]
        assert 3 < new_k <= 3 + 4                  # up, by at most maxStep (high acceptance)
        wait_for("Deployment at the new K", lambda: deployed_k(plane, namespace, "auto")
                 == new_k)
        last = sdd["status"]["autotune"]["lastDecision"]
        assert (last["from"], last["to"], last["policy"]) == (3, new_k, "goodput")
        # The tuner asked for it through its target; the reconciler rendered it.
        assert sdd["status"]["autotune"]["target"]["k"] == new_k
        assert sdd["status"]["autotune"]["target"]["initial"] == 3
        assert "predicted goodput" in last["reason"]

        # The workload shifts (creative prose): the tuner wants K down, the cooldown holds it.
        wait_for("the exporter to follow the rollout", lambda: follower.pod.k == new_k)
        follower.pod = fleet.restart_at(follower.pod, new_k, s=iid(0.3, 16))
        later: list[str] = []

        def cooldown_reason() -> str | None:
            s = get_json(plane, "sdd", "auto", "-n", namespace)["status"]
            r = s["autotune"]["lastDecision"]["reason"]
            if not later or later[-1] != r:
                later.append(r)
            return r if "cooldown" in r else None

        try:
            wait_for("a decision held by the cooldown", cooldown_reason, timeout=90)
        except AssertionError as e:
            raise AssertionError(f"{e}; decisions seen: {later}") from None
        assert deployed_k(plane, namespace, "auto") == new_k
        sdd = get_json(plane, "sdd", "auto", "-n", namespace)
        assert sdd["status"]["draftTokens"]["recommended"] < new_k
        assert len(sdd["status"]["autotune"]["changes"]) == 1
        changes = [e for e in events(plane, namespace, "auto")
                   if e["reason"] == "DraftTokensChanged"]
        assert len(changes) == 1 and f"K 3 -> {new_k}" in changes[0]["message"]
        assert follower.seen == [3, new_k]
        acc = sdd["status"]["acceptance"]
        assert float(acc["rate"]) < 0.2 and len(acc["perPosition"]) == new_k  # the shift
        assert condition(sdd, "MetricsAvailable")["status"] == "True"
        # The user's spec is untouched by all of this.
        assert sdd["metadata"]["generation"] == 1
        row = plane.kubectl("get", "sdd", "auto", "-n", namespace, "--no-headers").stdout.split()
        assert row[3] == str(new_k) and row[4] == acc["rate"]
    finally:
        follower.stop()


def test_recommend_mode_changes_status_only(
    operator: OperatorProcess, plane: LocalPlane, namespace: str, fleet: ExporterFleet
) -> None:
    apply(plane, sdd_doc("rec", namespace, spec("Recommend")))
    wait_for("Deployment at K=3", lambda: deployed_k(plane, namespace, "rec") == 3)
    fleet.add(ExporterPod(namespace, "rec", 3, iid(0.9, 16), drafts_per_second=200))
    sdd = wait_for("a recommendation", lambda: (
        s := get_json(plane, "sdd", "rec", "-n", namespace))
        and (s.get("status", {}).get("draftTokens") or {}).get("recommended", 3) > 3 and s,
        timeout=90)
    # Another evaluation (a later lastDecision), and still nothing applied.
    sdd = wait_next_decision(plane, namespace, "rec", last_decision(sdd))
    assert deployed_k(plane, namespace, "rec") == 3
    assert sdd["status"]["draftTokens"]["current"] == 3
    assert "Recommend mode" in sdd["status"]["autotune"]["lastDecision"]["reason"]
    reasons = {e["reason"] for e in events(plane, namespace, "rec")}
    assert "DraftTokensRecommended" in reasons and "DraftTokensChanged" not in reasons


def test_prometheus_down_sets_metrics_unavailable_and_keeps_k(
    crds: LocalPlane, plane: LocalPlane, namespace: str, own_prometheus: PrometheusServer,
    tmp_path: Path,
) -> None:
    """Stops Prometheus: its own Prometheus, exporters and operator, never the session's."""
    prometheus = own_prometheus
    fleet = ExporterFleet(prometheus.targets_dir)
    with solo_operator_for(plane, namespace, tmp_path / "op", prometheus.url) as operator:
        try:
            _prometheus_down(operator, plane, namespace, fleet, prometheus)
        finally:
            fleet.close()


def _prometheus_down(operator: OperatorProcess, plane: LocalPlane, namespace: str,
                     fleet: ExporterFleet, prometheus: PrometheusServer) -> None:
    apply(plane, sdd_doc("down", namespace, spec(evidence={"minDrafts": 10 ** 9,
                                                           "minRequests": 5})))
    fleet.add(ExporterPod(namespace, "down", 3, iid(0.9, 16)))
    wait_for("MetricsAvailable=True", lambda: condition(
        get_json(plane, "sdd", "down", "-n", namespace), "MetricsAvailable"
    ).get("status") == "True", timeout=60)
    prometheus.stop()
    try:
        sdd = wait_for("MetricsAvailable=False", lambda: (
            s := get_json(plane, "sdd", "down", "-n", namespace))
            and condition(s, "MetricsAvailable").get("status") == "False" and s, timeout=60)
        c = condition(sdd, "MetricsAvailable")
        assert c["reason"] == "PrometheusUnavailable"
        assert prometheus.url in c["message"]
        assert sdd["status"]["draftTokens"]["current"] == 3
        assert deployed_k(plane, namespace, "down") == 3
        assert any(e["reason"] == "PrometheusUnavailable" and e["type"] == "Warning"
                   for e in events(plane, namespace, "down"))
        assert operator.comp is not None and operator.comp.alive
        assert operator.reconcile_errors() == 0
    finally:
        prometheus.start()  # same port and data: the operator's URL stays valid
    wait_for("MetricsAvailable=True again", lambda: condition(
        get_json(plane, "sdd", "down", "-n", namespace), "MetricsAvailable"
    ).get("status") == "True", timeout=60)
    assert any(e["reason"] == "MetricsRecovered" for e in events(plane, namespace, "down"))


def test_queries_per_cycle_do_not_grow_with_the_number_of_sdds(
    operator: OperatorProcess, plane: LocalPlane, namespace: str,
    own_prometheus: PrometheusServer,
) -> None:
    """One tuning cycle, run in-process against the real apiserver and a Prometheus nobody
    else queries: the queries counted are those Prometheus itself received (its own
    prometheus_http_requests_total), not the client's bookkeeping."""
    prometheus = own_prometheus
    fleet = ExporterFleet(prometheus.targets_dir)

    async def one_cycle() -> tuple[int, int, float]:
        kube = Kube.from_env(str(plane.kubeconfig))
        try:
            tuner = Tuner(kube, PrometheusClient(prometheus.url),
                          labels=Labels(), namespaces=[namespace])
            t0 = time.perf_counter()
            report = await tuner.cycle()
            secs = time.perf_counter() - t0
            return report.evaluated, report.queries, secs
        finally:
            await kube.close()

    measured: dict[int, tuple[float, int, float]] = {}
    try:
        for n in (1, 25):
            for i in range(n):
                apply(plane, sdd_doc(f"q{i}", namespace, spec("Recommend")))
                if i >= len(fleet.pods):
                    fleet.add(ExporterPod(namespace, f"q{i}", 3, iid(0.8, 16)))
            # The tuner judges the K that runs: wait until the operator has reconciled each.
            for i in range(n):
                wait_for(f"q{i} reconciled", lambda i=i: (get_json(
                    plane, "sdd", f"q{i}", "-n", namespace).get("status") or {}
                ).get("draftTokens"))
            before = prometheus.api_requests()
            evaluated, reported, seconds = asyncio.run(one_cycle())
            received = prometheus.api_requests() - before
            assert evaluated == n
            assert received == reported, (received, reported)  # its own count is honest
            measured[n] = (received, reported, seconds)
    finally:
        fleet.close()
    print(f"queries Prometheus received per cycle (received, reported, s): {measured}")
    assert measured[1][0] > 0
    assert measured[1][0] == measured[25][0]
