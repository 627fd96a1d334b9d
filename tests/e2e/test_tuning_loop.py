"""The whole loop, as the demo runs it: control plane, Prometheus, operator, pod runner running
the vLLM stand-in, load. K must go up while acceptance is high (code) and down after the
traffic shifts to creative prose, each change a rolling restart of real local processes."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from specdecode_runtime.demo import NAME, NAMESPACE, LoadThread, Stack, demo_sdd
from specdecode_runtime.loadgen import LoadGenerator

from ..kube_helpers import get_json, wait_for

pytestmark = pytest.mark.plane
SHIFT_AT = 80.0


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    s = Stack(tmp_path / "stack")
    try:
        s.start(log=lambda *_: None)
        yield s
    finally:
        s.stop()


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
    doc = demo_sdd(epoch, SHIFT_AT, interval=5, window=30, cooldown=20)
    plane.kubectl("apply", "-f", "-", input=yaml.safe_dump(doc))
    load = LoadThread(LoadGenerator(stack.prometheus.targets_dir, {(NAMESPACE, NAME): 24}))
    try:
        wait_for("K 3 at start", lambda: current_k(stack) == 3, timeout=30)
        # Code-heavy traffic: high acceptance at low load -> K goes up.
        up = wait_for("K raised", lambda: (k := current_k(stack)) and k > 3 and k,
                      timeout=SHIFT_AT - 5)
        assert time.time() - epoch < SHIFT_AT, "K must rise before the shift"

        def pods_at(k: int) -> list[dict]:
            pods = get_json(plane, "pods", "-n", NAMESPACE, "-l",
                            f"specdecode.io/deployment={NAME},specdecode.io/draft-tokens={k}")
            return [p for p in pods["items"] if not p["metadata"].get("deletionTimestamp")]

        # A rolling restart: a new pod at the new K really runs the stand-in with that K.
        pod = wait_for(f"a Ready pod at K={up}", lambda: [
            p for p in pods_at(up) if any(c["type"] == "Ready" and c["status"] == "True"
                                          for c in p["status"].get("conditions", []))],
            timeout=60)[0]
        state = stack.runner.pod_state(NAMESPACE, pod["metadata"]["name"])
        assert state is not None
        cmdline = Path(f"/proc/{state['pid']}/cmdline").read_bytes().split(b"\0")
        cfg = json.loads(cmdline[cmdline.index(b"--speculative-config") + 1])
        assert cfg["num_speculative_tokens"] == up
        wait_for("the K=3 pods gone", lambda: not pods_at(3), timeout=60)

        # Creative prose: acceptance collapses -> K comes down.
        down = wait_for("K lowered after the shift", lambda: (
            k := current_k(stack)) and k < up and k, timeout=150)
        assert time.time() - epoch > SHIFT_AT
        sdd = stack.sdd(NAMESPACE, NAME)
        history = sdd["status"]["autotune"]["history"]
        moves = [(h["from"], h["to"]) for h in history if h["from"] != h["to"]]
        assert (moves[0] == (3, up) and moves[-1] == (up, down)) or moves[-1][1] == down
        rs = get_json(plane, "rs", "-n", NAMESPACE, "-l", f"specdecode.io/deployment={NAME}")
        ks = {r["spec"]["template"]["metadata"]["labels"]["specdecode.io/draft-tokens"]
              for r in rs["items"]}
        assert {"3", str(up), str(down)} <= ks          # one ReplicaSet per rollout
        assert sdd["metadata"]["generation"] == 1       # the user's spec never changed
        gen = load.gen.stats[(NAMESPACE, NAME)]
        assert gen.ok > 50
        print(f"e2e: K 3 -> {up} -> {down} in {time.monotonic() - t0:.0f}s; "
              f"{gen.ok} requests ({gen.errors} failed during restarts)")
        at = stack.sdd(NAMESPACE, NAME)["status"]["autotune"]
        print(f"e2e: status.autotune {len(json.dumps(at, separators=(',', ':')))} bytes: "
              f"{json.dumps(at)}")
    except AssertionError as e:
        raise AssertionError(f"{e}; decisions seen: {REASONS}") from None
    finally:
        load.stop()
