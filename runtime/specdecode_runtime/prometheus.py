"""A real Prometheus (Debian's package) on 127.0.0.1 for tests and the demo.

It scrapes targets listed in file_sd JSON files in ``targets_dir``: one file per scraped
process, ``[{"targets": ["127.0.0.1:PORT"], "labels": {...}}]``. The pod runner writes them
with the labels the autotuner groups by (namespace, pod, sdd, draft_tokens).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .localplane.process import Component, PlaneError, StartStop, free_port

TARGET_LABELS = ("namespace", "pod", "sdd", "draft_tokens")


def write_target(targets_dir: Path, name: str, address: str, labels: dict[str, str]) -> Path:
    """Atomically write one file_sd target file (Prometheus may read it at any moment)."""
    targets_dir.mkdir(parents=True, exist_ok=True)
    path = targets_dir / f"{name}.json"
    fd, tmp = tempfile.mkstemp(dir=targets_dir, prefix=".tmp-", suffix=".json")
    with os.fdopen(fd, "w") as f:
        json.dump([{"targets": [address], "labels": labels}], f)
    os.replace(tmp, path)
    return path


def remove_target(targets_dir: Path, name: str) -> None:
    (targets_dir / f"{name}.json").unlink(missing_ok=True)


@dataclass
class PrometheusServer(StartStop):
    workdir: Path
    scrape_interval: str = "1s"
    port: int = 0
    binary: str = "prometheus"
    comp: Component | None = field(default=None, init=False)

    @property
    def targets_dir(self) -> Path:
        return self.workdir / "targets"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _config(self) -> Path:
        path = self.workdir / "prometheus.yml"
        path.write_text(yaml.safe_dump({
            "global": {"scrape_interval": self.scrape_interval,
                       "evaluation_interval": self.scrape_interval,
                       "scrape_timeout": self.scrape_interval},
            "scrape_configs": [{
                "job_name": "vllm",
                "file_sd_configs": [{"files": [str(self.targets_dir / "*.json")],
                                     "refresh_interval": "1s"}],
            }],
        }))
        return path

    def start(self) -> None:
        exe = shutil.which(self.binary)
        if exe is None:
            raise PlaneError("prometheus: not installed (hack/install-system-deps.sh installs "
                             "Debian's prometheus package)")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.targets_dir.mkdir(parents=True, exist_ok=True)
        self.port = self.port or free_port()
        self.comp = Component(
            "prometheus",
            [exe, f"--config.file={self._config()}",
             f"--storage.tsdb.path={self.workdir / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}",
             "--storage.tsdb.retention.time=1d",
             "--log.level=warn"],
            log_path=self.workdir / "prometheus.log", ports=[self.port],
        )
        self.comp.start()

        def ready() -> bool:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as r:
                return r.status == 200

        self.comp.wait_ready(ready, timeout=60)

    def stop(self) -> None:
        if self.comp:
            self.comp.stop(grace=10)
            self.comp = None

    def query(self, promql: str) -> list[dict[str, Any]]:
        """Instant query (for tests and the demo); raises on an API error."""
        url = f"{self.url}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
        with urllib.request.urlopen(url, timeout=10) as r:
            body = json.load(r)
        if body.get("status") != "success":
            raise RuntimeError(f"prometheus query failed: {body}")
        return list(body["data"]["result"])

    def api_requests(self, handler: str = "/api/v1/query") -> float:
        """How many requests Prometheus itself counted on ``handler``, all response codes,
        read from its own /metrics (``prometheus_http_requests_total``): what a client
        really sent, independent of the client's own bookkeeping."""
        with urllib.request.urlopen(f"{self.url}/metrics", timeout=10) as r:
            text = r.read().decode()
        total = 0.0
        for line in text.splitlines():
            if line.startswith("prometheus_http_requests_total{") and \
                    f'handler="{handler}"' in line:
                total += float(line.rsplit(" ", 1)[1])
        return total

    def active_targets(self) -> list[dict[str, Any]]:
        with urllib.request.urlopen(f"{self.url}/api/v1/targets?state=active", timeout=10) as r:
            return list(json.load(r)["data"]["activeTargets"])
