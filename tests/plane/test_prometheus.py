"""The real Prometheus harness: file_sd targets are scraped with their labels."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from specdecode_runtime.prometheus import PrometheusServer, remove_target, write_target

from ..kube_helpers import wait_for


class _Counter(BaseHTTPRequestHandler):
    value = 0

    def do_GET(self) -> None:
        _Counter.value += 5
        body = (f"# TYPE demo_total counter\ndemo_total {_Counter.value}\n").encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; version=0.0.4")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def test_prometheus_scrapes_file_sd_targets_with_labels(tmp_path: Path) -> None:
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Counter)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        with PrometheusServer(tmp_path / "prom") as prom:
            labels = {"namespace": "ns", "pod": "p-1", "sdd": "m", "draft_tokens": "4"}
            write_target(prom.targets_dir, "ns_p-1", f"127.0.0.1:{srv.server_port}", labels)
            res = wait_for("a scraped sample", lambda: prom.query("demo_total"), timeout=30)
            metric = res[0]["metric"]
            assert {k: metric[k] for k in labels} == labels
            wait_for("rate > 0", lambda: prom.query("rate(demo_total[5s]) > 0"), timeout=30)
            remove_target(prom.targets_dir, "ns_p-1")
            wait_for("target dropped", lambda: not prom.active_targets(), timeout=30)
    finally:
        srv.shutdown()
