"""Helm helpers for the chart tests: the helm binary, stand-in prometheus-operator CRDs, and
the operator as a local process running with the chart's ServiceAccount token.

Reuses the session's ``plane`` and per-test ``namespace`` fixtures from tests/conftest.py.
"""

from __future__ import annotations

import os
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from specdecode_runtime.localplane import LocalPlane
from specdecode_runtime.localplane.binaries import locate
from specdecode_runtime.localplane.process import Component, free_port
from specdecode_runtime.operator_process import OperatorProcess

from ..conftest import installed_crds, log_source, stand_in_crd

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "specdecode-operator"
CRD_FILE = REPO / "crds" / "specdecode.io_specdecodedeployments.yaml"
CRD_NAME = "specdecodedeployments.specdecode.io"
# The version `make deploy-manifests` renders for (helm built from source defaults to 1.20).
KUBE_VERSION = "1.37.2"


@dataclass
class Helm:
    binary: Path
    home: Path
    kubeconfig: Path | None = None

    def run(self, *args: str, check: bool = True, timeout: float = 120
            ) -> subprocess.CompletedProcess[str]:
        env = {
            **os.environ,
            "HELM_CACHE_HOME": str(self.home / "cache"),
            "HELM_CONFIG_HOME": str(self.home / "config"),
            "HELM_DATA_HOME": str(self.home / "data"),
        }
        if self.kubeconfig:
            env["KUBECONFIG"] = str(self.kubeconfig)
        proc = subprocess.run([str(self.binary), *args], capture_output=True, text=True,
                              env=env, timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError(f"helm {' '.join(args)} failed ({proc.returncode}):\n"
                                 f"{proc.stderr}{proc.stdout[-2000:]}")
        return proc

    def template(self, *args: str, chart: Path = CHART, release: str = "sdo",
                 namespace: str = "specdecode-system") -> list[dict[str, Any]]:
        out = self.run("template", release, str(chart), "--namespace", namespace,
                       "--kube-version", KUBE_VERSION, *args).stdout
        return [d for d in yaml.safe_load_all(out) if d]


@pytest.fixture(scope="session")
def helm(tmp_path_factory: pytest.TempPathFactory) -> Helm:
    """helm without a cluster (lint, template)."""
    return Helm(binary=locate()["helm"], home=tmp_path_factory.mktemp("helm-home"))


@pytest.fixture(scope="module")
def plane_helm(helm: Helm, plane: LocalPlane) -> Iterator[Helm]:
    """helm talking to the session's plane as admin. At the end, the SpecDecodeDeployment CRD
    goes back to the repo's version, owned by kubectl, as the ``crds`` fixture expects it."""
    yield Helm(binary=helm.binary, home=helm.home, kubeconfig=plane.kubeconfig)
    if plane.kubectl("get", "crd", CRD_NAME, check=False).returncode == 0:
        plane.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRD_FILE))


MONITORING_KINDS = {"ServiceMonitor": "servicemonitors", "PodMonitor": "podmonitors",
                    "PrometheusRule": "prometheusrules"}


@pytest.fixture(scope="module")
def monitoring_crds(plane: LocalPlane) -> Iterator[LocalPlane]:
    """Stand-ins for the prometheus-operator CRDs the optional chart objects need. Those this
    fixture created are deleted afterwards: other modules expect a plane without them."""
    with installed_crds(plane, [stand_in_crd(k, p) for k, p in MONITORING_KINDS.items()]):
        yield plane


def adopt_crd(plane: LocalPlane, release: str, namespace: str) -> None:
    """Let release ``release`` take over an existing CRD (installed by kubectl, or kept by
    an uninstalled release): Helm adopts objects that carry its ownership metadata."""
    if plane.kubectl("get", "crd", CRD_NAME, check=False).returncode != 0:
        return
    plane.kubectl("annotate", "--overwrite", "crd", CRD_NAME,
                  f"meta.helm.sh/release-name={release}",
                  f"meta.helm.sh/release-namespace={namespace}")
    plane.kubectl("label", "--overwrite", "crd", CRD_NAME, "app.kubernetes.io/managed-by=Helm")


@dataclass
class ChartOperator(OperatorProcess):
    """``python -m specdecode_operator`` as the chart runs it, with the flags of the chart's
    Deployment, authenticated by a kubeconfig holding a ServiceAccount token."""

    args: list[str] = field(default_factory=list)

    def start(self) -> None:
        self.starts += 1
        self.metrics_port, live = free_port(), free_port()
        self.comp = Component(
            "specdecode-operator",
            [sys.executable, "-m", "specdecode_operator", *self.args,
             "--metrics-host=127.0.0.1", f"--metrics-port={self.metrics_port}",
             f"--liveness=http://127.0.0.1:{live}/healthz"],
            log_path=self.log_path,
            env={"KUBECONFIG": str(self.kubeconfig), "SPECDECODE_RESYNC_SECONDS": "10",
                 "SPECDECODE_DISCOVERY_TTL": "2", "PYTHONUNBUFFERED": "1", **self.env},
        )
        self.comp.start()

        def live_ok() -> bool:
            with urllib.request.urlopen(f"http://127.0.0.1:{live}/healthz", timeout=2) as r:
                return r.status == 200

        self.comp.wait_ready(live_ok, timeout=60)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


RUNNING: list[ChartOperator] = []


@pytest.fixture
def operators() -> Iterator[list[ChartOperator]]:
    """Operators a test starts (their log is attached to its failure report); stopped after.

    The session's admin operator (tests/conftest.py ``operator``), if an earlier module
    started it, is paused meanwhile: the RBAC tests must see only the ServiceAccount's writes.
    """
    from .. import conftest as root

    paused = [op for op in root._OPERATOR if op.comp is not None]
    for op in paused:
        op.stop()
    try:
        with log_source("operators", "operator log (tail)",
                        lambda: RUNNING[-1].log_tail(40) if RUNNING else "(none started)"):
            yield RUNNING
    finally:
        for op in RUNNING:
            op.stop()
        RUNNING.clear()
        for op in paused:
            op.start()
