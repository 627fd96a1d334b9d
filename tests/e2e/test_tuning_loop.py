"""The whole loop, as the demo runs it: control plane, Prometheus, operator, pod runner running
the vLLM stand-in, load. K must go up while acceptance is high (code) and down after the
traffic shifts to creative prose, each change a rolling restart of real local processes.

The assertions are about what can be observed whatever the tuner's policy: a change up was
decided under the code workload, a later change down under creative prose, the pods really
run each new K, and requests lost to the rolling restarts stay within what the load
generator's retry rule allows (see ``max_errors_per_rollout``).
"""

from __future__ import annotations

import itertools
import json
import time
from pathlib import Path

import pytest
import yaml

from specdecode_runtime.demo import NAME, NAMESPACE, LoadThread, Stack, demo_sdd
from specdecode_runtime.loadgen import LoadGenerator

from ..kube_helpers import get_json, wait_for
from .helpers import k_changes, max_errors_per_rollout, pods_at, ready, running_k

pytestmark = pytest.mark.plane
SHIFT_AT = 80.0
CONCURRENCY = 24


REASONS: list[str] = []   # the tuner's decisions as seen, for a failure's message


def current_k(stack: Stack) -> int | None:
    st = stack.sdd(NAMESPACE, NAME).get("status") or {}
    at = st.get("autotune") or {}
    r = (at.get("lastDecision") or {}).get("reason")
    cm = at.get("costModel") or {}
    r = r and f"[{cm.get('source')}: {cm.get('reason')}; {cm.get('note')}] {r}"
    if r and (not REASONS or REASONS[-1] != r):
        REASONS.append(r)
    return (st.get("draftTokens") or {}).get("current")


def test_k_follows_the_workload_through_rolling_restarts(stack: Stack, tmp_path: Path) -> None:
    assert stack.plane and stack.prometheus and stack.runner
    plane = stack.plane
    t0 = time.monotonic()
    plane.kubectl("create", "namespace", NAMESPACE)
    epoch = time.time()
    # costModel Prior (demo_sdd's default): the loop on a minute scale; the calibrated model
    # needs a probe after regimeSeconds (>= 10 min) to leave K 3 (docs/autotuner.md).
    doc = demo_sdd(epoch, SHIFT_AT, interval=5, window=30, cooldown=20)
    plane.kubectl("apply", "-f", "-", input=yaml.safe_dump(doc))
    load = LoadThread(LoadGenerator(stack.prometheus.targets_dir,
                                    {(NAMESPACE, NAME): CONCURRENCY}))
    shift = epoch + SHIFT_AT
    try:
        wait_for("K 3 at start", lambda: current_k(stack) == 3, timeout=30)
        # Code-heavy traffic: high acceptance at low load -> K goes up. The stand-in's
        # workload turns to creative prose at the shift (a wall-clock schedule in the SDD), so
        # the rise is only to be expected before it: wait for the event until then.
        up = wait_for("K raised under the code workload", lambda: (
            k := current_k(stack)) and k > 3 and k, timeout=max(1.0, shift - time.time()))

        # A rolling restart: a new pod at the new K really runs the stand-in with that K.
        pod = wait_for(f"a Ready pod at K={up}", lambda: [
            p for p in pods_at(plane, up) if ready(p)], timeout=60)[0]
        assert running_k(stack, pod) == up
        wait_for("the K=3 pods gone", lambda: not pods_at(plane, 3), timeout=60)

        # Creative prose: acceptance collapses -> K comes down (from wherever it went).
        down = wait_for("K lowered after the shift", lambda: (
            k := current_k(stack)) and k < up and k, timeout=max(1.0, shift - time.time()) + 150)
        sdd = stack.sdd(NAMESPACE, NAME)
        # The event is posted just after the status write that changed K: wait for it.
        moves = wait_for(f"the DraftTokensChanged events up to K={down}", lambda: (
            m := k_changes(plane)) and m[-1][1] == down and m, timeout=30)
        # The path really went up, then down: a chain of changes starting at 3, the first up
        # decided before the shift, a later one down decided after it, ending at the current K.
        assert moves and moves[0][0] == 3 and moves[-1][1] == down, moves
        assert all(a[1] == b[0] for a, b in itertools.pairwise(moves)), moves  # a chain
        first_up = next(i for i, m in enumerate(moves) if m[1] > m[0])
        assert moves[first_up][2] < shift, (moves, shift)
        assert any(m[1] < m[0] and m[2] >= shift for m in moves[first_up + 1:]), (moves, shift)
        rs = get_json(plane, "rs", "-n", NAMESPACE, "-l", f"specdecode.io/deployment={NAME}")
        ks = {r["spec"]["template"]["metadata"]["labels"]["specdecode.io/draft-tokens"]
              for r in rs["items"]}
        assert {"3", str(up), str(down)} <= ks          # one ReplicaSet per rollout
        assert sdd["metadata"]["generation"] == 1       # the user's spec never changed
        gen = load.gen.stats[(NAMESPACE, NAME)]
        print(f"e2e: K path {[(a, b) for a, b, _ in moves]} in {time.monotonic() - t0:.0f}s; "
              f"up at +{moves[first_up][2] - epoch:.0f}s (shift at +{SHIFT_AT:.0f}s); "
              f"{gen.ok} requests, {gen.errors} failed over {len(moves)} rolling restarts "
              f"(bound {max_errors_per_rollout(CONCURRENCY) * len(moves)})")
        assert gen.ok > 50
        assert gen.errors <= max_errors_per_rollout(CONCURRENCY) * len(moves), \
            (gen.errors, len(moves))
        at = stack.sdd(NAMESPACE, NAME)["status"]["autotune"]
        print(f"e2e: status.autotune {len(json.dumps(at, separators=(',', ':')))} bytes: "
              f"{json.dumps(at)}")
    except AssertionError as e:
        raise AssertionError(f"{e}; decisions seen: {REASONS}") from None
    finally:
        load.stop()
