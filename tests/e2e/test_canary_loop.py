"""Canary mode through the whole loop, as the demo runs it: control plane, Prometheus,
operator, pod runner running the vLLM stand-in on the small-GPU profile, load.

Under the code workload the tuner wants a longer draft than K 3. In canary mode it does not
roll every replica: one replica (the ``-canary`` Deployment) runs the candidate K as a real
stand-in process beside the main replica, both behind the same Service and load, and the
tuner judges the two side by side from Prometheus (acceptance and the step-time histograms
the stand-in emits). The stand-in really is faster at the longer draft under code, so the
canary must be promoted: the main Deployment rolls to its K on both replicas, and the
canary Deployment is deleted only after that rollout, never dropping a replica.

The assertions hold whatever K the policy picks: the canary runs a K above 3 on one pod
while the main pod stays at 3, the promotion is to that K, and requests lost to the three
restarts (canary start, main rollout, canary deletion) stay within the load generator's
retry bound.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
import yaml

from specdecode_runtime.demo import NAME, NAMESPACE, LoadThread, Stack, demo_sdd
from specdecode_runtime.loadgen import LoadGenerator

from ..kube_helpers import events, get_json, get_or_none, wait_for
from .helpers import max_errors_per_rollout, pods_at, ready, running_k

pytestmark = pytest.mark.plane
CONCURRENCY = 24
CANARY = f"{NAME}-canary"


def canary_sdd(epoch: float) -> dict[str, Any]:
    """The demo's SDD on 2 replicas in canary mode, code traffic all along."""
    return demo_sdd(epoch, shift_at=24 * 3600.0, interval=5, window=30, cooldown=20,
                    canary=True)


def test_a_canary_on_one_stand_in_replica_is_promoted_to_all(stack: Stack) -> None:
    assert stack.plane and stack.prometheus and stack.runner
    plane = stack.plane
    t0 = time.monotonic()
    plane.kubectl("create", "namespace", NAMESPACE)
    plane.kubectl("apply", "-f", "-", input=yaml.safe_dump(canary_sdd(time.time())))
    load = LoadThread(LoadGenerator(stack.prometheus.targets_dir,
                                    {(NAMESPACE, NAME): CONCURRENCY}))
    reasons: list[str] = []

    def status() -> dict[str, Any]:
        st = stack.sdd(NAMESPACE, NAME).get("status") or {}
        r = ((st.get("autotune") or {}).get("lastDecision") or {}).get("reason")
        if r and (not reasons or reasons[-1] != r):
            reasons.append(r)
        return st

    try:
        wait_for("2 Ready pods at K 3", lambda: len(
            [p for p in pods_at(plane, 3) if ready(p)]) == 2, timeout=60)

        # The canary: one pod at the candidate K, a real stand-in process at that K.
        def canary_started() -> int | None:
            k = (status().get("draftTokens") or {}).get("canary")
            return k if k and get_or_none(plane, "deployment", CANARY, "-n", NAMESPACE) \
                else None

        k_c = wait_for("a canary at a longer draft", canary_started, timeout=150)
        assert k_c > 3, reasons
        pod = wait_for(f"the canary pod Ready at K {k_c}", lambda: [
            p for p in pods_at(plane, k_c, ",specdecode.io/canary=true") if ready(p)],
            timeout=60)[0]
        assert running_k(stack, pod) == k_c
        main = get_json(plane, "deployment", NAME, "-n", NAMESPACE)
        assert main["spec"]["replicas"] == 1        # one replica less while the canary runs
        at = status()["autotune"]
        assert (at["canary"]["from"], at["canary"]["to"]) == (3, k_c)
        assert status()["draftTokens"]["current"] == 3

        # Judged side by side, then promoted: the main Deployment rolls to K_c.
        wait_for(f"K {k_c} promoted", lambda: status()["draftTokens"]["current"] == k_c,
                 timeout=240)
        assert any("side by side" in r and "promoted" in r for r in reasons), reasons
        # The canary goes only once both main replicas run K_c: capacity never drops.
        wait_for("the canary Deployment deleted", lambda: get_or_none(
            plane, "deployment", CANARY, "-n", NAMESPACE) is None, timeout=120)
        main = get_json(plane, "deployment", NAME, "-n", NAMESPACE)
        assert main["spec"]["replicas"] == 2
        ready_main = [p for p in pods_at(plane, k_c) if ready(p)
                      and "specdecode.io/canary" not in p["metadata"]["labels"]]
        assert len(ready_main) == 2, ready_main
        assert all(running_k(stack, p) == k_c for p in ready_main)
        wait_for("the K 3 pods gone", lambda: not pods_at(plane, 3), timeout=60)

        sdd = stack.sdd(NAMESPACE, NAME)
        assert "canary" not in sdd["status"]["draftTokens"]
        assert "canary" not in sdd["status"]["autotune"]
        assert sdd["status"]["autotune"]["verification"]["to"] == k_c   # verified fleet-wide
        assert sdd["metadata"]["generation"] == 1       # the user's spec never changed
        by_reason = {e["reason"] for e in events(plane, NAMESPACE, NAME)}
        assert {"CanaryStarted", "DraftTokensChanged", "Deleted"} <= by_reason, by_reason
        gen = load.gen.stats[(NAMESPACE, NAME)]
        bound = max_errors_per_rollout(CONCURRENCY) * 3
        print(f"e2e canary: K 3 -> canary {k_c} -> promoted in {time.monotonic() - t0:.0f}s; "
              f"{gen.ok} requests, {gen.errors} failed (bound {bound}); decisions: {reasons}")
        assert gen.ok > 50
        assert gen.errors <= bound, gen.errors
    except AssertionError as e:
        raise AssertionError(f"{e}; decisions seen: {reasons}") from None
    finally:
        load.stop()
