"""A tiny stand-in HTTP server the pod runner tests control (``python fake_vllm.py serve M
--port P --host H ...``): /health is 503 during SPECDECODE_SIM_STARTUP_DELAY seconds and
while the file named by FAKE_HEALTH_FILE contains "fail"; FAKE_IGNORE_SIGTERM=1 makes it
ignore SIGTERM (to test the SIGKILL after the grace period)."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

T0 = time.monotonic()


def healthy() -> bool:
    if time.monotonic() - T0 < float(os.environ.get("SPECDECODE_SIM_STARTUP_DELAY", "0")):
        return False
    flag = os.environ.get("FAKE_HEALTH_FILE")
    return not (flag and Path(flag).exists() and "fail" in Path(flag).read_text())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("cmd")
    ap.add_argument("model")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--host", required=True)
    ap.add_argument("--served-model-name", default=None)
    args, _ = ap.parse_known_args()
    name = args.served_model_name or args.model

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path == "/health":
                code, body = (200, b"") if healthy() else (503, b"starting")
            elif self.path == "/metrics":
                code, body = 200, f'vllm:num_requests_running{{model_name="{name}"}} 0\n'.encode()
            elif self.path == "/v1/models":
                code, body = 200, json.dumps({"data": [{"id": name}]}).encode()
            else:
                code, body = 404, b""
            self.send_response(code)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a: object) -> None:
            pass

    if os.environ.get("FAKE_IGNORE_SIGTERM") == "1":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    else:
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    server = ThreadingHTTPServer((args.host, args.port), Handler)
    print(f"fake vllm {name} on {args.host}:{args.port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
