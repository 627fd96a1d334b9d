"""The operator as a real child process (``python -m specdecode_operator``), for integration
tests and the demo: its liveness endpoint gates start-up, its /metrics is read back."""

from __future__ import annotations

import os
import re
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from .localplane import LocalPlane
from .localplane.process import Component, free_port, tail

OPERATOR_USER = "specdecode-operator"


@dataclass
class OperatorProcess:
    plane: LocalPlane
    workdir: Path
    kubeconfig: Path
    env: dict[str, str] = field(default_factory=dict)
    comp: Component | None = None
    metrics_port: int = 0
    liveness_port: int = 0
    starts: int = 0

    @property
    def log_path(self) -> Path:
        return self.workdir / f"operator-{self.starts}.log"

    def start(self) -> None:
        self.starts += 1
        self.metrics_port = free_port()
        live = self.liveness_port = free_port()
        self.comp = Component(
            "specdecode-operator",
            [sys.executable, "-m", "specdecode_operator", "--metrics-host=127.0.0.1",
             f"--metrics-port={self.metrics_port}",
             f"--liveness=http://127.0.0.1:{live}/healthz"],
            log_path=self.log_path,
            env={"KUBECONFIG": str(self.kubeconfig), "SPECDECODE_RESYNC_SECONDS": "10",
                 "SPECDECODE_DISCOVERY_TTL": "2", "SPECDECODE_AUTOTUNE_TICK": "1",
                 **self.env},
        )
        self.comp.start()

        def live_ok() -> bool:
            with urllib.request.urlopen(f"http://127.0.0.1:{live}/healthz", timeout=2) as r:
                return r.status == 200

        self.comp.wait_ready(live_ok, timeout=60)

    def stop(self) -> None:
        if self.comp:
            self.comp.stop(grace=10)
            self.comp = None

    def liveness(self) -> tuple[int, str]:
        """The liveness endpoint's HTTP status and body."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.liveness_port}/healthz",
                                        timeout=10) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    def restart(self) -> None:
        self.stop()
        self.start()

    def metric(self, name: str) -> float:
        """Sum of all samples of ``name`` on the operator's /metrics."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics",
                                    timeout=5) as r:
            text = r.read().decode()
        total = 0.0
        for line in text.splitlines():
            m = re.match(rf"^{re.escape(name)}(\{{.*\}})? (\S+)$", line)
            if m:
                total += float(m.group(2))
        return total

    def reconciles(self) -> float:
        return self.metric("specdecode_operator_reconcile_duration_seconds_count")

    def wait_reconciles(self, at_least: float, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while self.reconciles() < at_least:
            if self.comp and not self.comp.alive:
                raise AssertionError(f"operator died:\n{tail(self.log_path)}")
            if time.monotonic() > deadline:
                raise AssertionError(f"operator did not reconcile {at_least} times in "
                                     f"{timeout}s:\n{tail(self.log_path)}")
            time.sleep(0.2)

    def log_tail(self, lines: int = 60) -> str:
        return tail(self.log_path, lines)


REPO = Path(__file__).resolve().parents[2]


def install_crds(plane: LocalPlane) -> None:
    plane.kubectl("apply", "--server-side", "-f", str(REPO / "crds"))
    # `kubectl wait` fails outright while the new CRD has no conditions at all yet.
    deadline = time.monotonic() + 30
    while True:
        r = plane.kubectl("wait", "--for=condition=Established", "--timeout=30s",
                          "crd/specdecodedeployments.specdecode.io", check=False)
        if r.returncode == 0:
            return
        if time.monotonic() > deadline or "accessor error" not in r.stderr:
            raise AssertionError(f"CRD not established: {r.stderr}")
        time.sleep(0.2)


def start_operator(plane: LocalPlane, workdir: Path,
                   env: dict[str, str] | None = None) -> OperatorProcess:
    # A distinct identity so the apiserver's audit log attributes every write to it. (The
    # chart's least-privilege ServiceAccount is tested in tests/helm.)
    kc = plane.user_kubeconfig(OPERATOR_USER, ["system:masters"])
    op = OperatorProcess(plane=plane, workdir=workdir, kubeconfig=kc,
                         env={"PYTHONUNBUFFERED": "1", "PATH": os.environ.get("PATH", ""),
                              **(env or {})})
    op.start()
    return op


def utc_now() -> str:
    # Audit timestamps have microseconds; compare as RFC 3339 strings.
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()) + ".000000Z"


def wait_quiet(op: OperatorProcess, settle: float = 1.5, timeout: float = 60) -> None:
    """Wait until the operator has reconciled nothing for ``settle`` seconds."""
    deadline = time.monotonic() + timeout
    last, since = op.reconciles(), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.25)
        now = op.reconciles()
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= settle:
            return
    raise AssertionError("operator never went quiet")


__all__ = ["OPERATOR_USER", "OperatorProcess", "install_crds", "start_operator", "utc_now",
           "wait_quiet"]
