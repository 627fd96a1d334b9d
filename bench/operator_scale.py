"""Operator latency and scale on the real local control plane and a real Prometheus.

    python bench/operator_scale.py [--objects 50] [--sdds 200]

1. Time from `kubectl apply` of a SpecDecodeDeployment to its Deployment existing, p50/p99
   over --objects objects applied one after another (the operator runs as a process).
2. API writes per no-op reconcile: reconciles triggered with nothing to change, writes counted
   in the apiserver's audit log.
3. One tuning cycle over --sdds SDDs, each with an endpoint serving vLLM counters scraped by
   Prometheus: Prometheus queries per cycle (at 1 SDD and at --sdds), cycle time, and the
   pure decide() latency.
4. Scale: --scale SDDs applied at once: time until every one has a status, then the
   operator's API writes in a quiet minute (a periodic resync included) and after a restart
   of the operator (its first full pass over everything). Baseline: the time to status of
   ten SDDs applied the same way just before, in the same run (per SDD).

    python bench/operator_scale.py --only scale --scale 500

5. Reads: --scale SDDs, the operator converged, with the operator's default timings (resync
   60 s, tuning tick 10 s): the apiserver's GET/LIST and write requests per minute
   (``apiserver_request_total`` by verb), against the same plane with the same objects and
   the operator stopped, measured in the same run.

    python bench/operator_scale.py --only reads --scale 500
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from specdecode_operator.autotune import Settings, State, decide  # noqa: E402
from specdecode_operator.autotune.acceptance import iid  # noqa: E402
from specdecode_operator.autotune.loop import Tuner  # noqa: E402
from specdecode_operator.autotune.observe import Labels, PrometheusClient  # noqa: E402
from specdecode_operator.controller import Controller  # noqa: E402
from specdecode_operator.kube import Kube  # noqa: E402
from specdecode_runtime.localplane import GPUNodePool, LocalPlane  # noqa: E402
from specdecode_runtime.operator_process import (  # noqa: E402
    install_crds,
    start_operator,
    utc_now,
    wait_quiet,
)
from specdecode_runtime.prometheus import PrometheusServer  # noqa: E402
from tests.vllm_exporter import ExporterFleet, ExporterPod  # noqa: E402


def sdd(name: str, ns: str, mode: str = "Auto") -> dict:
    return {"apiVersion": "specdecode.io/v1alpha1", "kind": "SpecDecodeDeployment",
            "metadata": {"name": name, "namespace": ns},
            "spec": {"model": {"name": "org/target"},
                     "drafter": {"method": "mtp", "model": "org/assistant"},
                     "draftTokens": {"initial": 3, "min": 1, "max": 8},
                     "autotune": {"mode": mode, "intervalSeconds": 3600,
                                  "evidence": {"minDrafts": 100, "minRequests": 1}}}}


def watch_deployments(plane: LocalPlane, ns: str, seen: dict[str, float],
                      stop: threading.Event) -> subprocess.Popen[str]:
    """`kubectl get -w`: records when each Deployment is first seen."""
    assert plane.binaries
    proc = subprocess.Popen(
        [str(plane.binaries.kubectl), f"--kubeconfig={plane.kubeconfig}", "get", "deployments",
         "-n", ns, "-w", "--output-watch-events", "-o",
         "jsonpath={.object.metadata.name}{\"\\n\"}"],
        stdout=subprocess.PIPE, text=True)

    def read() -> None:
        assert proc.stdout
        for line in proc.stdout:
            name = line.strip()
            if name and name not in seen:
                seen[name] = time.monotonic()
            if stop.is_set():
                break

    threading.Thread(target=read, daemon=True).start()
    return proc


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(p / 100 * (len(xs) - 1)))]


def wait_ready(plane: LocalPlane, ns: str, n: int, label: str, *, timeout: float,
               poll: float) -> None:
    """Until every pod is Ready (kwok is slow with hundreds) or the timeout; says how long."""
    t0 = time.monotonic()
    while with_status(plane, ns, ready=True) < n and time.monotonic() - t0 < timeout:
        time.sleep(poll)
    print(f"{label}: Ready on {with_status(plane, ns, ready=True)}/{n} after another "
          f"{time.monotonic() - t0:.1f} s")


def with_status(plane: LocalPlane, ns: str, ready: bool = False) -> int:
    """How many SDDs have a status (``ready``: and are Ready)."""
    items = json.loads(plane.kubectl("get", "sdd", "-n", ns, "-o", "json").stdout)["items"]
    return sum(1 for o in items if (o.get("status") or {}).get("observedGeneration") and (
        not ready or any(c.get("type") == "Ready" and c.get("status") == "True"
                         for c in o["status"].get("conditions") or [])))


def writes_by_kind(writes: list[dict]) -> str:
    def kind(w: dict) -> str:
        ref = w["objectRef"]
        sub = f"/{ref['subresource']}" if ref.get("subresource") else ""
        return f"{w['verb']} {ref.get('resource')}{sub}"
    kinds = Counter(kind(w) for w in writes)
    return ", ".join(f"{k}: {v}" for k, v in sorted(kinds.items())) or "none"


def apply_and_wait_status(plane: LocalPlane, ns: str, n: int) -> None:
    plane.kubectl("create", "namespace", ns)
    docs = [sdd(f"s{i:04d}", ns, "Recommend") for i in range(n)]
    t0 = time.monotonic()
    for i in range(0, n, 100):  # kubectl apply of a few hundred KB at a time
        plane.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(docs[i:i + 100]))
    applied = time.monotonic() - t0
    done = 0
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and (done := with_status(plane, ns)) < n:
        time.sleep(1.0)
    took = time.monotonic() - t0
    services = len(json.loads(plane.kubectl("get", "svc", "-n", ns, "-o", "json")
                              .stdout)["items"])
    print(f"scale: {n} SDDs applied in {applied:.1f} s; status on {done}/{n} after "
          f"{took:.1f} s ({took / n * 1000:.0f} ms per SDD); {services} Services")


def scale(plane: LocalPlane, prom: PrometheusServer, work: Path, n: int, quiet: float) -> None:
    """Section 4: n SDDs at once; status on all; writes when quiet and after a restart. The
    baseline is 10 SDDs applied the same way first, in the same run."""
    ns = "bench-scale"
    op = start_operator(plane, work / "op-scale", env={"SPECDECODE_PROMETHEUS_URL": prom.url})
    try:
        apply_and_wait_status(plane, "bench-scale-base", 10)
        apply_and_wait_status(plane, ns, n)
        # Quiet means settled: every pod Ready (kwok is slow with hundreds), then no reconcile.
        wait_ready(plane, ns, n, "scale", timeout=300, poll=2.0)
        wait_quiet(op, settle=5, timeout=600)
        since = utc_now()
        time.sleep(quiet)
        writes = [w for w in plane.audit_writes(op.username, since)
                  if w["objectRef"].get("namespace") == ns]
        print(f"scale: API writes in a quiet {quiet:.0f} s (resync every "
              f"{os.environ.get('SPECDECODE_RESYNC_SECONDS', '60')} s): {len(writes)} "
              f"({writes_by_kind(writes)})")
        since, before = utc_now(), 0.0
        op.restart()
        t0 = time.monotonic()
        op.wait_reconciles(before + n, timeout=600)
        wait_quiet(op, settle=5, timeout=600)
        writes = [w for w in plane.audit_writes(op.username, since)
                  if w["objectRef"].get("namespace") == ns]
        print(f"scale: after an operator restart, {op.reconciles():.0f} reconciles in "
              f"{time.monotonic() - t0:.1f} s, API writes: {len(writes)} "
              f"({writes_by_kind(writes)})")
    finally:
        op.stop()


READ_VERBS = ("GET", "LIST")
WRITE_VERBS = ("POST", "PUT", "PATCH", "APPLY", "DELETE", "DELETECOLLECTION")
_REQ = re.compile(r'^apiserver_request_total\{(.*)\} (\S+)$')


def request_counts(plane: LocalPlane) -> Counter[tuple[str, str]]:
    """The apiserver's requests so far by (verb, resource[/subresource])."""
    out: Counter[tuple[str, str]] = Counter()
    for line in plane.kubectl("get", "--raw", "/metrics").stdout.splitlines():
        m = _REQ.match(line)
        if not m:
            continue
        labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1)))
        what = labels.get("resource", "") + (f"/{labels['subresource']}"
                                             if labels.get("subresource") else "")
        out[(labels.get("verb", ""), what)] += int(float(m.group(2)))
    return out


def per_minute(plane: LocalPlane, seconds: float) -> tuple[float, float, Counter[str]]:
    """GET/LIST and writes per minute over the next ``seconds``, and reads by resource."""
    before = request_counts(plane)
    time.sleep(seconds)
    diff = request_counts(plane)
    diff.subtract(before)
    scale_ = 60.0 / seconds
    reads = sum(v for (verb, _), v in diff.items() if verb in READ_VERBS) * scale_
    writes = sum(v for (verb, _), v in diff.items() if verb in WRITE_VERBS) * scale_
    by_resource: Counter[str] = Counter()
    for (verb, what), v in diff.items():
        if verb in READ_VERBS and v:
            by_resource[f"{verb} {what}"] += round(v * scale_)
    return reads, writes, by_resource


def reads(plane: LocalPlane, prom: PrometheusServer, work: Path, n: int, quiet: float) -> None:
    """Section 5: API requests per minute of the converged operator over n SDDs, against the
    plane with the same objects and the operator stopped (same run)."""
    ns = "bench-reads"
    defaults = {"SPECDECODE_PROMETHEUS_URL": prom.url, "SPECDECODE_RESYNC_SECONDS": "60",
                "SPECDECODE_AUTOTUNE_TICK": "10", "SPECDECODE_DISCOVERY_TTL": "60"}
    op = start_operator(plane, work / "op-reads", env=defaults)
    try:
        apply_and_wait_status(plane, ns, n)
        wait_ready(plane, ns, n, "reads", timeout=600, poll=5.0)
        wait_quiet(op, settle=10, timeout=600)
        r_op, w_op, top = per_minute(plane, quiet)
        passes = op.reconciles()
    finally:
        op.stop()
    r_idle, w_idle, top_idle = per_minute(plane, quiet)
    print(f"reads: plane idle ({n} SDDs, operator stopped): {r_idle:.0f} GET/LIST and "
          f"{w_idle:.0f} writes per minute")
    print(f"reads: converged operator over {n} SDDs (resync 60 s, {passes:.0f} reconciles "
          f"in its life): {r_op:.0f} GET/LIST and {w_op:.0f} writes per minute; the "
          f"operator's share {r_op - r_idle:.0f} GET/LIST ({(r_op - r_idle) / n:.2f} per SDD), "
          f"{w_op - w_idle:.0f} writes")
    extra = top.copy()
    extra.subtract(top_idle)
    print("reads: GET/LIST per minute above idle, by resource: " + ", ".join(
        f"{k}: {v}" for k, v in extra.most_common(8) if v > 0))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--objects", type=int, default=50)
    ap.add_argument("--sdds", type=int, default=200)
    ap.add_argument("--scale", type=int, default=500)
    ap.add_argument("--quiet-seconds", type=float, default=60)
    ap.add_argument("--only", choices=["scale", "reads"], help="run only this section")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="specdecode-bench-"))
    # Room for every pod of section 4 (one GPU each): unschedulable pods are not "quiet".
    nodes = GPUNodePool(count=max(4, -(-(args.scale + 10) // 64)), gpus_per_node=64)
    with LocalPlane(workdir=work / "plane", nodes=nodes) as plane, \
            PrometheusServer(work / "prom", scrape_interval="2s") as prom:
        install_crds(plane)
        if args.only == "scale":
            scale(plane, prom, work, args.scale, args.quiet_seconds)
            return 0
        if args.only == "reads":
            reads(plane, prom, work, args.scale, args.quiet_seconds)
            return 0
        op = start_operator(plane, work / "op", env={"SPECDECODE_PROMETHEUS_URL": prom.url})
        try:
            # 1. apply -> Deployment latency
            ns = "bench-apply"
            plane.kubectl("create", "namespace", ns)
            seen: dict[str, float] = {}
            stop = threading.Event()
            watcher = watch_deployments(plane, ns, seen, stop)
            time.sleep(1.0)
            applied: dict[str, float] = {}
            for i in range(args.objects):
                name = f"m{i:03d}"
                applied[name] = time.monotonic()
                plane.kubectl("apply", "-f", "-", input=yaml.safe_dump(sdd(name, ns)))
                time.sleep(0.2)
            deadline = time.monotonic() + 60
            while len(seen) < args.objects and time.monotonic() < deadline:
                time.sleep(0.1)
            stop.set()
            watcher.terminate()
            lat = [seen[n] - applied[n] for n in applied if n in seen]
            print(f"apply -> Deployment created, {len(lat)}/{args.objects} objects: "
                  f"p50 {statistics.median(lat) * 1000:.0f} ms, p99 {pct(lat, 99) * 1000:.0f} "
                  f"ms, max {max(lat) * 1000:.0f} ms (includes kubectl's own start-up)")

            # 2. writes per no-op reconcile
            wait_quiet(op, settle=3, timeout=120)
            since, before = utc_now(), op.reconciles()
            for i in range(args.objects):
                plane.kubectl("label", "sdd", f"m{i:03d}", "-n", ns, "touch=1")
            op.wait_reconciles(before + args.objects, timeout=120)
            wait_quiet(op, settle=3)
            n = op.reconciles() - before
            writes = [w for w in plane.audit_writes(op.username, since)
                      if w["objectRef"].get("namespace") == ns]
            print(f"no-op reconciles: {n:.0f}, API writes during them: {len(writes)} "
                  f"({len(writes) / n:.2f} per reconcile)")
        finally:
            op.stop()

        # 3. a tuning cycle over many SDDs (in-process, against the same apiserver/Prometheus)
        fleet = ExporterFleet(prom.targets_dir)
        ns = "bench-tune"
        plane.kubectl("create", "namespace", ns)

        async def cycle() -> tuple[int, int, float]:
            kube = Kube.from_env(str(plane.kubeconfig))
            try:
                # The tuner judges the K that runs: reconcile first (status.draftTokens).
                ctl = Controller(kube, await kube.snapshot(ns))
                for o in await kube.list_sdds(ns):
                    ctl.trigger(ns, o["metadata"]["name"])
                await ctl.idle()
                tuner = Tuner(kube, PrometheusClient(prom.url), Labels(), namespaces=[ns])
                t0 = time.perf_counter()
                r = await tuner.cycle()
                secs = time.perf_counter() - t0
                return r.evaluated, r.queries, secs
            finally:
                await kube.close()

        results = {}
        created = 0
        for n in (1, args.sdds):
            docs = [sdd(f"t{i:03d}", ns, "Recommend") for i in range(created, n)]
            if docs:
                plane.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(docs))
            for i in range(created, n):
                fleet.add(ExporterPod(ns, f"t{i:03d}", 3, iid(0.8, 16)))
            created = n
            time.sleep(8)  # a few scrapes
            results[n] = asyncio.run(cycle())
        fleet.close()
        for n, (evaluated, queries, secs) in results.items():
            print(f"tuning cycle over {n} SDDs: {evaluated} evaluated, {queries} Prometheus "
                  f"queries, {secs:.2f} s ({secs / max(1, evaluated) * 1000:.0f} ms per SDD, "
                  f"including its status write)")
        scale(plane, prom, work, args.scale, args.quiet_seconds)
    # Pure decision latency.
    from tests.unit.test_autotune import window  # a realistic window, K=5

    s, st, win = Settings(), State(), window(iid(0.8, 16), k=5, b=16)
    t0 = time.perf_counter()
    for _ in range(2000):
        decide(s, st, win, now=0.0)
    print(f"decide(): {(time.perf_counter() - t0) / 2000 * 1e6:.0f} us per decision")
    return 0


if __name__ == "__main__":
    sys.exit(main())
