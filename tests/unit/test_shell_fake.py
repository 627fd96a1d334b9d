"""The operator's shells (Controller, Tuner) on an in-memory Kubernetes port: coalescing, zero
writes, the two status writers working through status alone, and a failing apply."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from specdecode_operator import api
from specdecode_operator.autotune.loop import Tuner
from specdecode_operator.controller import Controller

from ..fake_kube import FakeKube, api_error, pod
from ..fake_prometheus import StubPrometheus

SPEC: dict[str, Any] = {
    "model": {"name": "org/target"},
    "drafter": {"method": "mtp"},
    "draftTokens": {"initial": 3, "min": 1, "max": 12},
    "autotune": {"mode": "Auto", "intervalSeconds": 5, "windowSeconds": 60},
}


def _k(fake: FakeKube, name: str = "m") -> int:
    dep = fake.children[("Deployment", "ns", name)]
    args = dep["spec"]["template"]["spec"]["containers"][0]["args"]
    return int(json.loads(args[args.index("--speculative-config") + 1])["num_speculative_tokens"])


def test_triggers_during_a_reconcile_coalesce_into_exactly_one_more_pass() -> None:
    async def go() -> list[tuple[str, ...]]:
        fake = FakeKube(gate=asyncio.Event())
        fake.add_sdd("m", SPEC)
        ctl = Controller(fake, fake.cache())  # type: ignore[arg-type]
        ctl.trigger("ns", "m")
        await asyncio.sleep(0)          # the first pass is now waiting in its first apply
        for _ in range(5):
            ctl.trigger("ns", "m")
        assert fake.gate is not None
        fake.gate.set()
        await ctl.idle()
        return [c for c in fake.calls if c[0] == "cache_sdd"]

    assert len(asyncio.run(go())) == 2


def test_a_reconcile_with_nothing_to_change_writes_nothing() -> None:
    async def go() -> FakeKube:
        fake = FakeKube()
        fake.add_sdd("m", SPEC)
        ctl = Controller(fake, fake.cache())  # type: ignore[arg-type]
        await ctl.reconcile_key("ns", "m")
        assert {c[1] for c in fake.writes() if c[0] == "apply"} == {
            "Deployment", "Service", "PodDisruptionBudget"}
        fake.calls.clear()
        await ctl.reconcile_key("ns", "m")
        return fake

    fake = asyncio.run(go())
    assert fake.writes() == []
    assert fake.calls == [("cache_sdd", "m")]    # it did look, in the cache only


def _results(ns: str, name: str, k: int, rate: float) -> dict[str, list[dict[str, Any]]]:
    """One cycle's Prometheus answers for one SDD at K ``k`` with i.i.d. acceptance ``rate``."""
    labels = {"namespace": ns, "sdd": name, "draft_tokens": str(k)}
    drafts = 20_000.0
    per_pos = [drafts * rate ** (i + 1) for i in range(k)]

    def one(v: float, **extra: str) -> dict[str, Any]:
        return {"metric": {**labels, **extra}, "value": [0, str(v)]}

    return {
        "drafts": [one(drafts)], "draft_tokens": [one(drafts * k)],
        "accepted": [one(sum(per_pos))], "generation_tokens": [one(90_000.0)],
        "requests": [one(400.0)],
        "per_position": [one(a, position=str(i)) for i, a in enumerate(per_pos)],
        "running": [one(8.0, q=str(q)) for q in (0.1, 0.3, 0.5, 0.7, 0.9)],
    }


def test_the_tuners_target_is_what_the_next_reconcile_renders() -> None:
    async def go() -> tuple[FakeKube, list[int]]:
        fake = FakeKube()
        fake.add_sdd("m", SPEC)
        ctl = Controller(fake, fake.cache())  # type: ignore[arg-type]
        await ctl.reconcile_key("ns", "m")
        assert _k(fake) == 3
        tuner = Tuner(fake, StubPrometheus(_results("ns", "m", 3, 0.9)),  # type: ignore[arg-type]
                      namespaces=["ns"])
        seen = []
        for i in range(3):   # the decision needs two confirming evaluations
            await tuner.cycle(now=1_000_000.0 + 60 * i)
            await ctl.reconcile_key("ns", "m")   # what the SDD's watch event triggers
            seen.append(_k(fake))
        return fake, seen

    fake, seen = asyncio.run(go())
    assert seen[0] == 3 and seen[-1] > 3
    st = fake.status_of("m")
    assert st["autotune"]["target"]["k"] == seen[-1]
    assert st["autotune"]["target"]["initial"] == 3
    assert st["draftTokens"] == {"current": seen[-1], "initial": 3,
                                 "recommended": seen[-1]}
    # Each writer applied only its own fields; neither removed the other's.
    tuner_fields = fake.status_fields_of(api.TUNER_MANAGER, "m")
    assert set(tuner_fields) == {"acceptance", "autotune", "draftTokens", "conditions"}
    assert tuner_fields["draftTokens"] == {"recommended": seen[-1]}
    assert [c["type"] for c in tuner_fields["conditions"]] == ["MetricsAvailable"]
    reconciler = fake.status_fields_of(api.OPERATOR_MANAGER, "m")
    assert set(reconciler["draftTokens"]) == {"current", "initial"}
    assert {c["type"] for c in reconciler["conditions"]} == {"Ready", "Progressing",
                                                             "Degraded", "Stalled"}
    changes = [e for e in fake.events if e[2] == "DraftTokensChanged"]
    assert len(changes) == 1 and changes[0][3].startswith(f"autotune: K 3 -> {seen[-1]}")


def test_the_tuner_skips_an_sdd_the_reconciler_has_not_caught_up_with() -> None:
    async def go() -> tuple[int, int]:
        fake = FakeKube()
        fake.add_sdd("m", SPEC)
        tuner = Tuner(fake, StubPrometheus(_results("ns", "m", 3, 0.9)),  # type: ignore[arg-type]
                      namespaces=["ns"])
        before = await tuner.cycle(now=1_000_000.0)      # never reconciled: no running K
        ctl = Controller(fake, fake.cache())  # type: ignore[arg-type]
        await ctl.reconcile_key("ns", "m")
        after = await tuner.cycle(now=1_000_001.0)
        return before.evaluated, after.evaluated

    assert asyncio.run(go()) == (0, 1)


def test_a_failing_apply_is_a_degraded_condition_and_the_next_pass_recovers() -> None:
    async def go() -> tuple[FakeKube, dict[str, Any]]:
        fake = FakeKube(fail_apply={"Deployment": api_error(
            422, 'Deployment.apps "m" is invalid: spec.template: admission denied')})
        fake.add_sdd("m", SPEC)
        ctl = Controller(fake, fake.cache())  # type: ignore[arg-type]
        await ctl.reconcile_key("ns", "m")            # must not raise
        failed = fake.status_of("m")
        fake.fail_apply.clear()
        await ctl.reconcile_key("ns", "m")
        return fake, failed

    fake, failed = asyncio.run(go())
    degraded = {c["type"]: c for c in failed["conditions"]}["Degraded"]
    assert (degraded["status"], degraded["reason"]) == ("True", "ApplyFailed")
    assert "admission denied" in degraded["message"]
    assert ("Service", "ns", "m") in fake.children          # the others were still applied
    assert ("Deployment", "ns", "m") in fake.children       # and then the Deployment
    now = {c["type"]: c for c in fake.status_of("m")["conditions"]}["Degraded"]
    assert now["status"] == "False"
    reasons = [e[2] for e in fake.events]
    assert "ApplyFailed" in reasons and reasons[-1] == "Recovered"


def test_the_next_pass_reads_its_own_writes_while_the_watch_lags() -> None:
    async def go() -> FakeKube:
        fake = FakeKube()
        fake.add_sdd("m", SPEC)
        ctl = Controller(fake, fake.cache())  # type: ignore[arg-type]
        fake.hold_watch()                      # nothing the operator writes is delivered
        await ctl.reconcile_key("ns", "m")
        assert {c[0] for c in fake.writes()} == {"apply", "apply_status", "event"}
        fake.calls.clear()
        await ctl.reconcile_key("ns", "m")     # e.g. a pod event before the watch caught up
        assert fake.writes() == []
        fake.deliver()
        await ctl.reconcile_key("ns", "m")
        return fake

    assert asyncio.run(go()).writes() == []


def test_triggers_before_the_cache_has_synced_wait_for_it() -> None:
    async def go() -> tuple[list[tuple[str, ...]], FakeKube]:
        fake = FakeKube()
        fake.add_sdd("m", SPEC)
        ctl = Controller(fake, fake.cache(synced=False))  # type: ignore[arg-type]
        ctl.trigger("ns", "m")                 # e.g. the resync of a freshly elected leader
        await ctl.idle()
        before = list(fake.calls)
        ctl.cache_synced()
        await ctl.idle()
        return before, fake

    before, fake = asyncio.run(go())
    assert before == []
    assert ("Deployment", "ns", "m") in fake.children


def test_unschedulable_pods_ask_for_the_nodes_once_per_discovery_ttl() -> None:
    async def go() -> tuple[FakeKube, dict[str, Any]]:
        fake = FakeKube(gpu_nodes=0)
        fake.add_sdd("m", SPEC)
        fake.pods.append(pod("m-1", "m", unschedulable=True))
        ctl = Controller(fake, fake.cache())  # type: ignore[arg-type]
        for _ in range(3):
            await ctl.reconcile_key("ns", "m")
        return fake, fake.status_of("m")

    fake, status = asyncio.run(go())
    assert [c for c in fake.calls if c[0] == "nodes_offering"] == [
        ("nodes_offering", "nvidia.com/gpu")]
    degraded = {c["type"]: c for c in status["conditions"]}["Degraded"]
    assert degraded["reason"] == "NoGPUNodes"


def test_a_resync_burst_asks_for_the_pod_monitor_crd_once() -> None:
    async def go() -> FakeKube:
        fake = FakeKube()
        for i in range(20):
            fake.add_sdd(f"m{i}", SPEC)
        ctl = Controller(fake, fake.cache(), max_concurrent=8)  # type: ignore[arg-type]
        for i in range(20):
            ctl.trigger("ns", f"m{i}")
        await ctl.idle()
        return fake

    fake = asyncio.run(go())
    assert [c for c in fake.calls if c[0] == "pod_monitor_available"] == [
        ("pod_monitor_available",)]
    assert sum(1 for c in fake.calls if c == ("apply", "Deployment")) == 20


def test_the_controller_runs_a_canary_and_deletes_it_once_the_main_deployment_took_over(
) -> None:
    spec = {**SPEC, "replicas": 2, "autotune": {**SPEC["autotune"],
                                                "canary": {"enabled": True}}}

    async def go() -> FakeKube:
        fake = FakeKube()
        fake.add_sdd("m", spec)
        ctl = Controller(fake, fake.cache())  # type: ignore[arg-type]
        await ctl.reconcile_key("ns", "m")
        # The autotuner starts a canary at K 5 (its own status field).
        sdd = fake.sdds[("ns", "m")]
        await fake.apply_status(sdd, {"autotune": {"canary": {
            "from": 3, "to": 5, "since": "2026-01-01T00:00:00Z"}}},
            manager=api.TUNER_MANAGER)
        await ctl.reconcile_key("ns", "m")
        assert _k(fake, "m-canary") == 5 and _k(fake) == 3
        assert fake.children[("Deployment", "ns", "m")]["spec"]["replicas"] == 1
        assert fake.status_of("m")["draftTokens"]["canary"] == 5
        # It is promoted: the target moves to 5 and the canary leaves the tuner's status.
        await fake.apply_status(sdd, {"autotune": {"target": {"k": 5, "initial": 3}}},
                                manager=api.TUNER_MANAGER)
        await ctl.reconcile_key("ns", "m")
        main = fake.children[("Deployment", "ns", "m")]
        assert _k(fake) == 5 and main["spec"]["replicas"] == 2
        assert ("Deployment", "ns", "m-canary") in fake.children   # not rolled out yet
        assert ("delete", "Deployment") not in fake.calls
        main["status"] = {"observedGeneration": main["metadata"]["generation"],
                          "replicas": 2, "updatedReplicas": 2, "availableReplicas": 2,
                          "readyReplicas": 2}
        await ctl.reconcile_key("ns", "m")
        return fake

    fake = asyncio.run(go())
    assert ("Deployment", "ns", "m-canary") not in fake.children
    assert [e[2] for e in fake.events].count("Deleted") == 1
    assert "canary" not in fake.status_of("m")["draftTokens"]
