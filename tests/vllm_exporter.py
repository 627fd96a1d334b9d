"""Real HTTP endpoints that serve vLLM-format counters which grow with wall time, for tests
of the autotuner against a real Prometheus.

Each ``ExporterPod`` plays one vLLM pod at one K: its counters start at 0 (as after a pod
start), grow at ``drafts_per_second`` with survival ``s``, and its per-position series exist
only for positions 0..K-1. With ``step_ms`` it also serves the step-time series vLLM has
(the inter-token-latency and iteration-tokens histograms, as one bucket each): every running
request observes one step of ``step_ms`` per engine step. Prometheus finds it through a
file_sd target that carries the labels the operator groups by. ``restart_at()`` replaces the
pod when the Deployment's K changes, as a rolling restart would.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from specdecode_runtime.prometheus import remove_target, write_target

HEADER = '{engine="0",model_name="%s"}'


@dataclass
class ExporterPod:
    namespace: str
    sdd: str
    k: int
    s: tuple[float, ...]
    drafts_per_second: float = 200.0
    running: float = 2.0
    started: float = field(default_factory=time.monotonic)
    name: str = ""
    step_ms: float | None = None

    def text(self) -> str:
        t = time.monotonic() - self.started
        drafts = self.drafts_per_second * t
        per_pos = [drafts * v for v in self.s[: self.k]]
        acc = sum(per_pos)
        lab = HEADER % self.sdd
        lines = []

        def counter(name: str, value: float, labels: str = lab) -> None:
            lines.append(f"# TYPE {name} counter")
            lines.append(f"{name}{labels} {value:.1f}")

        counter("vllm:spec_decode_num_drafts_total", drafts)
        counter("vllm:spec_decode_num_draft_tokens_total", drafts * self.k)
        counter("vllm:spec_decode_num_accepted_tokens_total", acc)
        lines.append("# TYPE vllm:spec_decode_num_accepted_tokens_per_pos_total counter")
        for i, a in enumerate(per_pos):
            pl = lab[:-1] + f',position="{i}"}}'
            lines.append(f"vllm:spec_decode_num_accepted_tokens_per_pos_total{pl} {a:.1f}")
        counter("vllm:generation_tokens_total", drafts + acc)
        counter("vllm:request_success_total", (drafts + acc) / 100,
                lab[:-1] + ',finished_reason="length"}')
        lines.append("# TYPE vllm:num_requests_running gauge")
        lines.append(f"vllm:num_requests_running{lab} {self.running}")
        if self.step_ms is not None:
            # One draft per running request per engine step: steps = drafts / running.
            steps = drafts / max(self.running, 1e-9)

            def histogram(name: str, count: float, total: float) -> None:
                lines.append(f"# TYPE {name} histogram")
                lines.append(f'{name}_bucket{lab[:-1]},le="+Inf"}} {count:.1f}')
                lines.append(f"{name}_count{lab} {count:.1f}")
                lines.append(f"{name}_sum{lab} {total:.6f}")

            histogram("vllm:inter_token_latency_seconds", drafts,
                      drafts * self.step_ms / 1000)
            histogram("vllm:iteration_tokens_total", steps, drafts + acc)
            counter("vllm:prompt_tokens_total", 0.0)
        return "\n".join(lines) + "\n"


class ExporterFleet:
    """Serves any number of ExporterPods on 127.0.0.1 and keeps Prometheus' targets current."""

    def __init__(self, targets_dir: Path) -> None:
        self.targets_dir = targets_dir
        self.pods: dict[str, ExporterPod] = {}
        self._servers: dict[str, ThreadingHTTPServer] = {}
        self._lock = threading.Lock()

    def add(self, pod: ExporterPod) -> ExporterPod:
        pod.name = pod.name or f"{pod.sdd}-k{pod.k}-{len(self._servers)}"
        fleet = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                with fleet._lock:
                    p = fleet.pods.get(pod.name)
                body = (p.text() if p else "").encode()
                self.send_response(200 if p else 404)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        with self._lock:
            self.pods[pod.name] = pod
            self._servers[pod.name] = srv
        write_target(self.targets_dir, pod.name, f"127.0.0.1:{srv.server_port}", {
            "namespace": pod.namespace, "pod": pod.name, "sdd": pod.sdd,
            "draft_tokens": str(pod.k)})
        return pod

    def remove(self, name: str) -> None:
        remove_target(self.targets_dir, name)
        with self._lock:
            self.pods.pop(name, None)
            srv = self._servers.pop(name, None)
        if srv:
            srv.shutdown()

    def restart_at(self, old: ExporterPod, k: int,
                   s: tuple[float, ...] | None = None) -> ExporterPod:
        """A rolling restart: the old pod goes, a new one at K starts with counters at 0
        (optionally under a new acceptance profile: the workload shifted)."""
        self.remove(old.name)
        return self.add(ExporterPod(old.namespace, old.sdd, k, s or old.s,
                                    old.drafts_per_second, old.running,
                                    step_ms=old.step_ms))

    def close(self) -> None:
        for name in list(self._servers):
            self.remove(name)
