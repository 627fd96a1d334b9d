"""The local demo: the whole loop on one machine, no GPU.

A real control plane with fake GPU nodes, a real Prometheus, the operator, the pod runner
running the vLLM stand-in for each pod, and a load generator. One SpecDecodeDeployment (Gemma
4 31B with its MTP assistant, embedded below) serves code-heavy traffic first, then creative
prose: watch the operator raise K while acceptance is high and lower it after the shift, each
change a rolling restart. The stand-in plays a hardware world that is not the H200 table the
tuner ships as its prior (``--hardware``, default small-gpu), so the tuner has to learn the
step cost from the pods' latency histograms. Ctrl-C (or --duration) stops everything and leaves
a PNG plot of K, acceptance, tokens/s and step time (measured, the world's, the H200 prior's
and the tuner's calibrated model) over time.

    python -m specdecode_runtime.demo [--duration 420] [--shift-at 180] [--hardware small-gpu]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import itertools
import json
import shutil
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from . import hardware
from .loadgen import LoadGenerator
from .localplane import LocalPlane, PlaneError
from .localplane.process import StartStop
from .operator_process import OperatorProcess, install_crds, start_operator
from .podrunner import PodRunnerProcess
from .prometheus import PrometheusServer

NAMESPACE = "demo"
NAME = "gemma4-31b"
# A world the shipped prior gets wrong: steps ~3x the H200's, a drafter pass twice as costly
# relative to the target, the knee late. The true best K still rises on code and falls on
# creative prose at the demo's load, so the story holds, but the tuner's tokens/s predictions
# and the best K after the shift (2, where the prior says 3) need its own calibration.
DEMO_HARDWARE = "small-gpu"


def demo_sdd(epoch: float, shift_at: float, interval: int, window: int,
             cooldown: int, hardware_name: str = DEMO_HARDWARE,
             cost_model: str = "Prior", canary: bool = False) -> dict[str, Any]:
    """The embedded default: Gemma 4 31B + assistant drafter, tuned on short windows, served
    by stand-in pods that play ``hardware_name`` (a name from specdecode_runtime.hardware).
    ``canary``: 2 replicas in canary mode (each change runs on one replica first)."""
    hardware.profile(hardware_name)  # unknown names fail here, not in every pod
    doc = {
        "apiVersion": "specdecode.io/v1alpha1",
        "kind": "SpecDecodeDeployment",
        "metadata": {"name": NAME, "namespace": NAMESPACE},
        "spec": {
            "model": {"name": "google/gemma-4-31B-it", "servedName": "gemma-4-31b"},
            "drafter": {"method": "mtp", "model": "google/gemma-4-31B-it-assistant"},
            "workload": "code",                       # initial K 3
            "draftTokens": {"min": 1, "max": 10},
            "replicas": 1,
            "gpu": {"count": 1},
            # The stand-in's workload: code-heavy, then creative prose, on a wall clock that
            # every pod shares (a restart does not rewind it).
            "env": [
                {"name": "SPECDECODE_SIM_SCHEDULE", "value": f"0:code,{shift_at:.0f}:creative"},
                {"name": "SPECDECODE_SIM_SCHEDULE_EPOCH", "value": f"{epoch:.0f}"},
                {"name": "SPECDECODE_SIM_STARTUP_DELAY", "value": "3"},
                {"name": "SPECDECODE_SIM_HARDWARE", "value": hardware_name},
            ],
            "autotune": {
                "mode": "Auto", "policy": "goodput",
                # The demo squeezes hours into minutes. The calibrated tuner leaves its initial
                # K only on hours of this deployment's own evidence (docs/autotuner.md), so
                # the minute-scale demo decides on the shipped table by default; its step-time
                # panel still shows the stand-in's world against that table.
                "costModel": cost_model,
                "intervalSeconds": interval, "windowSeconds": window,
                "cooldownSeconds": cooldown, "maxChangesPerDay": 100,
                # Hours squeezed into minutes: a one-minute regime (the acceptance history
                # follows the workload within about a minute) and a restart that costs
                # seconds, in proportion.
                "regimeSeconds": 60, "restartCostSeconds": 5,
                "evidence": {"minDrafts": 2000, "minRequests": 10},
                # Each change is verified before the next: on the demo's minute scale,
                # three windows instead of the production half hour.
                "verification": {"afterSeconds": 3 * window, "minWindows": 3},
            },
        },
    }
    if canary:
        doc["spec"]["replicas"] = 2
        doc["spec"]["autotune"]["canary"] = {"enabled": True}
    return doc


@dataclass
class Stack(StartStop):
    """Everything the demo (and the end-to-end test) runs, started in order, stopped in
    reverse; every process in its own group, nothing left behind."""

    workdir: Path
    plane: LocalPlane | None = None
    prometheus: PrometheusServer | None = None
    operator: OperatorProcess | None = None
    runner: PodRunnerProcess | None = None

    def start(self, log: Any = print) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        t0 = time.monotonic()
        log("starting the control plane (etcd, kube-apiserver, controllers, kwok) ...")
        self.plane = LocalPlane(workdir=self.workdir / "plane", runner_pods=True)
        self.plane.start()
        log("starting Prometheus ...")
        self.prometheus = PrometheusServer(self.workdir / "prometheus", scrape_interval="2s")
        self.prometheus.start()
        install_crds(self.plane)
        log("starting the operator and the pod runner ...")
        self.operator = start_operator(self.plane, self.workdir / "operator", env={
            "SPECDECODE_PROMETHEUS_URL": self.prometheus.url,
            "SPECDECODE_AUTOTUNE_TICK": "1"})
        self.runner = PodRunnerProcess(kubeconfig=self.plane.kubeconfig,
                                       state_dir=self.workdir / "runner",
                                       targets_dir=self.prometheus.targets_dir)
        self.runner.start()
        log(f"stack up in {time.monotonic() - t0:.1f}s; "
            f"export KUBECONFIG={self.plane.kubeconfig}")

    def stop(self) -> None:
        for part in (self.runner, self.operator, self.prometheus, self.plane):
            if part is not None:
                with contextlib.suppress(Exception):
                    part.stop()

    def sdd(self, namespace: str, name: str) -> dict[str, Any]:
        assert self.plane
        return dict(json.loads(self.plane.kubectl("get", "sdd", name, "-n", namespace,
                                                  "-o", "json").stdout))

    def prom_value(self, promql: str) -> float | None:
        assert self.prometheus
        try:
            res = self.prometheus.query(promql)
        except Exception:
            return None
        return float(res[0]["value"][1]) if res else None


class LoadThread:
    """The async load generator on its own thread and event loop."""

    def __init__(self, gen: LoadGenerator) -> None:
        self.gen = gen
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        self.loop.run_until_complete(self.gen.run())

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.gen.stop)
        self.thread.join(timeout=30)


def _number(v: Any) -> float | None:
    try:
        x = float(v)
    except (TypeError, ValueError):
        return None
    return x if x == x else None


# The tuner's calibrated roofline (docs/autotuner.md): T = floor + perSeq B + perToken N
# + hinge max(0, N - knee) + k (draftFloor + draftPerSeq B), N = B (k + 1) + prefill, in ms.
_ROOFLINE = ("floor", "perSeq", "perToken", "hinge", "draftFloor", "draftPerSeq", "knee")


def predicted_step_ms(cost_model: Any, b: float, k: int, prefill: float = 0.0) -> float | None:
    """The step time the tuner's cost model predicts at (B, k), read defensively from
    status.autotune.costModel: a prediction it states, else its roofline parameters, else
    None (an older operator, or no model yet)."""
    if not isinstance(cost_model, dict):
        return None
    for key, scale in (("predictedStepMs", 1.0), ("stepMs", 1.0),
                       ("predictedStepSeconds", 1000.0)):
        if (v := _number(cost_model.get(key))) is not None:
            return v * scale
    params = cost_model.get("params")
    if not isinstance(params, dict):
        return None
    values = [_number(params.get(n)) for n in _ROOFLINE]
    if any(v is None for v in values):
        return None
    f, per_seq, per_token, hinge, d0, d1, knee = (float(v or 0.0) for v in values)
    b = max(b, 1.0)
    n = b * (k + 1) + prefill
    return f + per_seq * b + per_token * n + hinge * max(0.0, n - knee) + k * (d0 + d1 * b)


def sample(stack: Stack, t: float, workload: str,
           world: hardware.Hardware | None = None) -> dict[str, Any]:
    world = world or hardware.profile(DEMO_HARDWARE)
    s = stack.sdd(NAMESPACE, NAME)
    st = s.get("status") or {}
    dtk = st.get("draftTokens") or {}
    autotune = st.get("autotune") or {}
    last = autotune.get("lastDecision") or {}
    sel = f'sdd="{NAME}",namespace="{NAMESPACE}"'
    acc = stack.prom_value(
        f"sum(rate(vllm:spec_decode_num_accepted_tokens_total{{{sel}}}[20s]))"
        f" / sum(rate(vllm:spec_decode_num_draft_tokens_total{{{sel}}}[20s]))")
    length = stack.prom_value(
        f"1 + sum(rate(vllm:spec_decode_num_accepted_tokens_total{{{sel}}}[20s]))"
        f" / sum(rate(vllm:spec_decode_num_drafts_total{{{sel}}}[20s]))")
    tps = stack.prom_value(f"sum(rate(vllm:generation_tokens_total{{{sel}}}[20s]))")
    # vLLM observes the ITL once per running request per engine step (the step time), and
    # iteration_tokens once per step: their counts give the decode batch per step.
    def rate(series: str) -> str:
        return f"sum(rate({series}{{{sel}}}[20s]))"

    itl, steps = "vllm:inter_token_latency_seconds", rate("vllm:iteration_tokens_total_count")
    step_s = stack.prom_value(f"{rate(itl + '_sum')} / {rate(itl + '_count')}")
    batch = stack.prom_value(f"{rate(itl + '_count')} / {steps}")
    prefill = stack.prom_value(f"{rate('vllm:prompt_tokens_total')} / {steps}")
    k = dtk.get("current")
    world_ms = prior_ms = model_ms = None
    if batch is not None and isinstance(k, int):
        world_ms = 1000 * world.step_seconds(batch, k, prefill or 0.0)
        prior_ms = 1000 * hardware.profile("h200").step_seconds(batch, k, prefill or 0.0)
        model_ms = predicted_step_ms(autotune.get("costModel"), batch, k, prefill or 0.0)
    cost_model = autotune.get("costModel")
    return {
        "t": round(t, 1), "workload": workload, "k": dtk.get("current"),
        "canary": dtk.get("canary"), "recommended": dtk.get("recommended"),
        "acceptance": acc, "mean_length": length,
        "tokens_per_s": tps, "ready": st.get("readyReplicas", 0),
        "decision": last.get("reason", ""), "changes": len(autotune.get("changes") or []),
        "batch": batch, "step_ms": None if step_s is None else 1000 * step_s,
        "world_ms": world_ms, "prior_ms": prior_ms, "model_ms": model_ms,
        "model_source": (cost_model.get("source") if isinstance(cost_model, dict) else None),
        "model_tokens_per_s": (_number(cost_model.get("predictedTokensPerSecond"))
                               if isinstance(cost_model, dict) else None),
    }


def _fmt(v: float | None, spec: str) -> str:
    return "-" if v is None or v != v else format(v, spec)


def line(row: dict[str, Any]) -> str:
    canary = f" canary={row['canary']}" if row.get("canary") is not None else ""
    return (f"t={row['t']:6.0f}s  {row['workload']:8s} K={row['k']!s:>2}{canary} "
            f"rec={row['recommended']!s:>2}  acc={_fmt(row['acceptance'], '.2f'):>4}  "
            f"len={_fmt(row['mean_length'], '.2f'):>4}  tok/s={_fmt(row['tokens_per_s'], '.0f'):>5}"
            f"  T={_fmt(row['step_ms'], '.0f'):>3}ms (world {_fmt(row['world_ms'], '.0f')}, "
            f"model {_fmt(row['model_ms'], '.0f')})  ready={row['ready']}"
            f"  | {row['decision'][:80]}")


def plot(rows: list[dict[str, Any]], shift_at: float, path: Path,
         hardware_name: str = DEMO_HARDWARE) -> Path | None:
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = [r["t"] for r in rows]

    def ys(key: str) -> list[float]:
        return [float("nan") if r.get(key) is None else float(r[key]) for r in rows]

    fig, axes = plt.subplots(4, 1, figsize=(10, 10.5), sharex=True)
    series = [
        ("draft tokens K", [r["k"] for r in rows], "tab:blue"),
        ("acceptance rate", [r["acceptance"] for r in rows], "tab:green"),
        ("tokens/s", [r["tokens_per_s"] for r in rows], "tab:orange"),
    ]
    for ax, (label, values, color) in zip(axes, series, strict=False):
        ax.plot(t, [float("nan") if y is None else y for y in values], color=color,
                drawstyle="steps-post" if label.startswith("draft") else "default")
        ax.set_ylabel(label)
    if any(r.get("canary") is not None for r in rows):
        axes[0].plot(t, ys("canary"), color="tab:red", drawstyle="steps-post",
                     linestyle=":", label="canary replica's K")
        axes[0].legend(loc="upper right", fontsize=8)
    if any(r.get("model_tokens_per_s") is not None for r in rows):
        axes[2].plot(t, ys("model_tokens_per_s"), color="tab:blue", linestyle="--",
                     label="tuner's prediction")
        axes[2].legend(loc="upper right", fontsize=8)
    # The calibration panel: what the pods measure (ITL sum/count), what the world really
    # costs at that batch and K, the H200 prior, and the tuner's calibrated model (once it
    # publishes one in status.autotune.costModel).
    ax = axes[3]
    ax.plot(t, ys("step_ms"), color="tab:orange", label="measured (ITL sum/count)")
    ax.plot(t, ys("world_ms"), color="black", linestyle=":", label=f"{hardware_name} world")
    ax.plot(t, ys("prior_ms"), color="grey", linestyle="--", label="H200 prior")
    if any(r.get("model_ms") is not None for r in rows):
        ax.plot(t, ys("model_ms"), color="tab:blue", label="tuner's calibrated model")
    ax.set_ylabel("step time (ms)\nat the measured batch, K")
    ax.legend(loc="upper right", fontsize=8)
    for ax in axes:
        ax.axvline(shift_at, color="grey", linestyle="--", linewidth=1)
        ax.grid(alpha=0.3)
    axes[1].set_ylim(0, 1)
    axes[0].set_title(f"specdecode-operator demo on {hardware_name}: code-heavy traffic, then "
                      "creative prose (dashed line)")
    axes[-1].set_xlabel("seconds since the SpecDecodeDeployment was applied")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def run(args: argparse.Namespace) -> int:
    workdir: Path = args.dir.resolve()
    if workdir.exists():
        shutil.rmtree(workdir)  # a previous run's etcd data and certificates do not fit
    world = hardware.profile(args.hardware)
    stack = Stack(workdir)
    rows: list[dict[str, Any]] = []
    load: LoadThread | None = None
    stopping = False

    def on_signal(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        stack.start()
        assert stack.plane and stack.prometheus
        stack.plane.kubectl("create", "namespace", NAMESPACE)
        epoch = time.time()
        doc = demo_sdd(epoch, args.shift_at, args.interval, args.window, args.cooldown,
                       args.hardware, args.cost_model, canary=args.canary)
        (workdir / "sdd.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
        stack.plane.kubectl("apply", "-f", str(workdir / "sdd.yaml"))
        print(f"applied {workdir / 'sdd.yaml'}: code-heavy traffic now, creative prose from "
              f"t={args.shift_at:.0f}s, pods playing {args.hardware} "
              f"({world.description}); Ctrl-C stops and writes the plot\n"
              f"  watch it too: KUBECONFIG={stack.plane.kubeconfig} "
              f".venv/bin/kubectl get sdd -n {NAMESPACE} -w\n", flush=True)
        load = LoadThread(LoadGenerator(stack.prometheus.targets_dir,
                                        {(NAMESPACE, NAME): args.concurrency}))
        with (workdir / "timeline.csv").open("w", newline="") as f:
            writer: csv.DictWriter[str] | None = None
            while not stopping:
                t = time.time() - epoch
                if args.duration and t > args.duration:
                    break
                row = sample(stack, t, "code" if t < args.shift_at else "creative", world)
                rows.append(row)
                if writer is None:
                    writer = csv.DictWriter(f, fieldnames=list(row))
                    writer.writeheader()
                writer.writerow(row)
                f.flush()
                print(line(row), flush=True)
                stack.plane.check_alive()
                if not (stack.operator and stack.operator.comp and stack.operator.comp.alive):
                    raise PlaneError(f"the operator died; log: {workdir / 'operator'}")
                time.sleep(args.every)
    except PlaneError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    finally:
        print("\nstopping ...", flush=True)
        if load:
            load.stop()
        stack.stop()
        png = plot(rows, args.shift_at, workdir / "demo.png", args.hardware)
        ks = [r["k"] for r in rows if r["k"] is not None]
        changes = sum(1 for a, b in itertools.pairwise(ks) if a != b)
        if rows:
            print(f"{len(rows)} samples over {rows[-1]['t']:.0f}s; K went "
                  f"{' -> '.join(str(k) for i, k in enumerate(ks) if i == 0 or ks[i-1] != k)}"
                  f" ({changes} changes)")
        if png:
            print(f"plot: {png}\ntimeline: {workdir / 'timeline.csv'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="specdecode-demo",
                                 description="Run the local specdecode-operator demo.")
    ap.add_argument("--dir", type=Path, default=Path(".demo"), help="state directory")
    ap.add_argument("--duration", type=float, default=420,
                    help="seconds to run after applying the SDD; 0 = until Ctrl-C")
    ap.add_argument("--shift-at", type=float, default=180,
                    help="seconds until the traffic shifts from code to creative prose")
    ap.add_argument("--concurrency", type=int, default=24,
                    help="concurrent requests (load decides whether a long draft pays)")
    ap.add_argument("--interval", type=int, default=5, help="autotune.intervalSeconds")
    ap.add_argument("--window", type=int, default=30, help="autotune.windowSeconds")
    ap.add_argument("--cooldown", type=int, default=60, help="autotune.cooldownSeconds")
    ap.add_argument("--cost-model", default="Prior", choices=["Prior", "Calibrated"],
                    help="autotune.costModel: Calibrated needs hours of evidence before it "
                         "leaves the initial K, longer than the demo (default %(default)s)")
    ap.add_argument("--every", type=float, default=3.0, help="seconds between status lines")
    ap.add_argument("--hardware", default=DEMO_HARDWARE, choices=sorted(hardware.PROFILES),
                    help="the step-cost world the stand-in pods play "
                    f"(default {DEMO_HARDWARE}: not the tuner's H200 prior)")
    ap.add_argument("--canary", action="store_true",
                    help="2 replicas in canary mode: each change runs on one replica first, "
                         "judged side by side with the other before it rolls to both")
    return run(ap.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
