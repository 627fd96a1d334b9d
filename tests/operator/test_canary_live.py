"""Canary mode end to end on real parts: the operator process against the real control plane
(kwok runs the pods), a real Prometheus scraping real HTTP endpoints that serve vLLM-format
counters with step-time histograms, one endpoint per pod K.

The operator starts a canary Deployment at the candidate K beside the main one (one replica
less), judges it side by side from Prometheus, then either promotes it (the main Deployment
rolls to its K, the canary is deleted once the rollout is done) or removes it and rejects
its K when it is confidently slower.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from typing import Any

import pytest

from specdecode_operator.autotune.acceptance import iid
from specdecode_runtime.localplane import LocalPlane
from specdecode_runtime.operator_process import OperatorProcess

from ..kube_helpers import apply, events, get_json, get_or_none, sdd_doc, wait_for
from ..vllm_exporter import ExporterFleet, ExporterPod

pytestmark = pytest.mark.plane
S = iid(0.9, 16)   # high acceptance: the tuner wants a longer draft than K 3


def spec() -> dict[str, Any]:
    return {
        "model": {"name": "org/target"},
        "drafter": {"method": "mtp", "model": "org/target-assistant"},
        "draftTokens": {"initial": 3, "min": 1, "max": 12},
        "replicas": 2,
        "autotune": {"mode": "Auto", "intervalSeconds": 5, "windowSeconds": 30,
                     "cooldownSeconds": 0, "costModel": "Prior",
                     "evidence": {"minDrafts": 3000, "minRequests": 5},
                     "verification": {"afterSeconds": 20, "minWindows": 2},
                     "canary": {"enabled": True}},
    }


def k_of(dep: dict[str, Any]) -> int:
    args = dep["spec"]["template"]["spec"]["containers"][0]["args"]
    return int(json.loads(args[args.index("--speculative-config") + 1])
               ["num_speculative_tokens"])


class Kubelet:
    """Plays the pods' vLLM: one exporter per Deployment (main and canary) at its K, with the
    step time ``step_ms(k)``; restarted when the Deployment's K changes, gone with it."""

    def __init__(self, plane: LocalPlane, fleet: ExporterFleet, ns: str, name: str,
                 step_ms: Callable[[int], float]) -> None:
        self.plane, self.fleet, self.ns, self.name, self.step_ms = plane, fleet, ns, name, step_ms
        self.pods: dict[str, ExporterPod] = {}
        self.seen: dict[str, list[int]] = {name: [], f"{name}-canary": []}
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _sync(self, dep_name: str) -> None:
        dep = get_or_none(self.plane, "deployment", dep_name, "-n", self.ns)
        pod = self.pods.get(dep_name)
        k = k_of(dep) if dep and not dep["metadata"].get("deletionTimestamp") else None
        if pod is not None and pod.k != k:
            self.fleet.remove(pod.name)
            del self.pods[dep_name]
        if k is not None and dep_name not in self.pods:
            self.pods[dep_name] = self.fleet.add(ExporterPod(
                self.ns, self.name, k, S, drafts_per_second=200, step_ms=self.step_ms(k)))
            self.seen[dep_name].append(k)

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            for dep_name in self.seen:
                try:
                    self._sync(dep_name)
                except Exception:
                    continue

    def stop(self) -> None:
        self._stop.set()
        self._t.join()


def _start(plane: LocalPlane, fleet: ExporterFleet, ns: str,
           step_ms: Callable[[int], float]) -> Kubelet:
    """The SDD created and rendered at K 3, its pods played with step times ``step_ms``."""
    apply(plane, sdd_doc("m", ns, spec()))
    wait_for("Deployment at K=3", lambda: (d := get_or_none(
        plane, "deployment", "m", "-n", ns)) and k_of(d) == 3)
    return Kubelet(plane, fleet, ns, "m", step_ms=step_ms)


def _canary_started(plane: LocalPlane, ns: str, reasons: list[str]) -> dict[str, Any]:
    def started() -> dict[str, Any] | None:
        st = get_json(plane, "sdd", "m", "-n", ns).get("status") or {}
        r = ((st.get("autotune") or {}).get("lastDecision") or {}).get("reason")
        if r and (not reasons or reasons[-1] != r):
            reasons.append(r)
        dep = get_or_none(plane, "deployment", "m-canary", "-n", ns)
        return dep if dep and (st.get("draftTokens") or {}).get("canary") else None

    return wait_for("a canary Deployment", started, timeout=120)


def test_a_faster_canary_is_promoted_and_its_deployment_deleted_after_the_rollout(
    operator: OperatorProcess, plane: LocalPlane, namespace: str, fleet: ExporterFleet
) -> None:
    kubelet = _start(plane, fleet, namespace, step_ms=lambda k: 20.0 + 0.2 * k)
    reasons: list[str] = []
    try:
        canary = _canary_started(plane, namespace, reasons)
        k_c = k_of(canary)
        assert k_c > 3 and canary["spec"]["replicas"] == 1
        main = get_json(plane, "deployment", "m", "-n", namespace)
        assert main["spec"]["replicas"] == 1 and k_of(main) == 3   # one replica less
        at = get_json(plane, "sdd", "m", "-n", namespace)["status"]["autotune"]
        assert (at["canary"]["from"], at["canary"]["to"]) == (3, k_c)

        def counted() -> dict[str, Any] | None:
            # The canary's pod serves the SDD too: status counts it, Ready waits for it.
            st = get_json(plane, "sdd", "m", "-n", namespace)["status"]
            ready = next(c for c in st["conditions"] if c["type"] == "Ready")
            return st if st.get("readyReplicas") == 2 and ready["status"] == "True" and \
                "canary" in ready["message"] else None

        st = wait_for("the canary's pod counted in the SDD's status", counted, timeout=20)
        assert st["replicas"] == 2 and st["draftTokens"]["canary"] == k_c

        def promoted() -> bool:
            st = get_json(plane, "sdd", "m", "-n", namespace)["status"]
            r = st["autotune"]["lastDecision"]["reason"]
            if reasons[-1] != r:
                reasons.append(r)
            return st["draftTokens"]["current"] == k_c

        wait_for(f"K {k_c} promoted to all replicas", promoted, timeout=150)
        wait_for("the canary Deployment deleted", lambda: get_or_none(
            plane, "deployment", "m-canary", "-n", namespace) is None, timeout=60)
        main = get_json(plane, "deployment", "m", "-n", namespace)
        assert main["spec"]["replicas"] == 2 and k_of(main) == k_c
        sdd = get_json(plane, "sdd", "m", "-n", namespace)
        assert "canary" not in sdd["status"]["draftTokens"]
        assert "canary" not in sdd["status"]["autotune"]
        # Promotion is verified fleet-wide like any change.
        assert sdd["status"]["autotune"]["verification"]["to"] == k_c
        assert any("side by side" in r and "promoted" in r for r in reasons), reasons
        by_reason = {e["reason"] for e in events(plane, namespace, "m")}
        assert {"CanaryStarted", "DraftTokensChanged", "Deleted"} <= by_reason
        assert sdd["metadata"]["generation"] == 1          # the user's spec never changed
        # The test's kubelet polls the Deployments (kubectl every 0.5 s): on a busy machine
        # it may see the main Deployment's new K after the operator has finished the rollout.
        wait_for(f"the main pods played at K {k_c}", lambda: kubelet.seen["m"] == [3, k_c],
                 timeout=30)
        assert kubelet.seen["m-canary"] == [k_c] and kubelet.seen["m"] == [3, k_c]
        print(f"canary promoted: K 3 -> {k_c}; decisions: {reasons}")
    except AssertionError as e:
        raise AssertionError(f"{e}; decisions seen: {reasons}") from None
    finally:
        kubelet.stop()


def test_a_slower_canary_is_removed_and_its_k_rejected(
    operator: OperatorProcess, plane: LocalPlane, namespace: str, fleet: ExporterFleet
) -> None:
    # Any K but 3 costs four times the step time: the canary is much slower.
    kubelet = _start(plane, fleet, namespace, step_ms=lambda k: 20.0 if k == 3 else 80.0)
    reasons: list[str] = []
    try:
        k_c = k_of(_canary_started(plane, namespace, reasons))

        def removed() -> dict[str, Any] | None:
            st = get_json(plane, "sdd", "m", "-n", namespace)["status"]
            r = st["autotune"]["lastDecision"]["reason"]
            if reasons[-1] != r:
                reasons.append(r)
            return st if "canary" not in st["autotune"] and st["autotune"].get(
                "rejected") else None

        st = wait_for("the canary removed", removed, timeout=150)
        assert st["draftTokens"]["current"] == 3
        assert [r["k"] for r in st["autotune"]["rejected"]] == [k_c]
        assert "side by side" in st["autotune"]["rejected"][0]["reason"]
        wait_for("the canary Deployment deleted", lambda: get_or_none(
            plane, "deployment", "m-canary", "-n", namespace) is None, timeout=60)
        main = get_json(plane, "deployment", "m", "-n", namespace)
        assert main["spec"]["replicas"] == 2 and k_of(main) == 3
        by_reason = {e["reason"] for e in events(plane, namespace, "m")}
        assert {"CanaryStarted", "CanaryRejected", "Deleted"} <= by_reason
        assert "DraftTokensChanged" not in by_reason
        assert kubelet.seen["m"] == [3]
        print(f"canary K {k_c} removed; decisions: {reasons}")
    except AssertionError as e:
        raise AssertionError(f"{e}; decisions seen: {reasons}") from None
    finally:
        kubelet.stop()
