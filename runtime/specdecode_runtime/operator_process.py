"""The operator as a real child process (``python -m specdecode_operator``), for integration
tests and the demo: its liveness endpoint gates start-up, its /metrics is read back.

By default it runs as the Helm chart would: under the chart's ServiceAccount, bound to the
chart's ClusterRoles (read from ``deploy/specdecode-operator.yaml``, the chart rendered with
its defaults; a drift test keeps the two equal), so every tier that starts it exercises the
chart's RBAC rather than ``system:masters``.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from specdecode_operator.crd import to_yaml as crd_yaml

from .localplane import LocalPlane
from .localplane.process import Component, free_port, tail

# The identity of ``start_operator(..., identity="admin")`` (a client certificate).
OPERATOR_USER = "specdecode-operator"
CHART_NAMESPACE = "specdecode-system"
CHART_SERVICE_ACCOUNT = "specdecode-operator"
CHART_USER = f"system:serviceaccount:{CHART_NAMESPACE}:{CHART_SERVICE_ACCOUNT}"
RBAC_KINDS = ("Namespace", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role",
              "RoleBinding")
Verb = tuple[str, str, str]  # (apiGroup, resource, verb); "" is the core group
# The chart and its rendered manifests come from the checkout: running the operator under
# the chart's RBAC is a test-harness feature (the CRD itself comes from the package).
REPO = Path(__file__).resolve().parents[2]


@dataclass
class OperatorProcess:
    plane: LocalPlane
    workdir: Path
    kubeconfig: Path
    env: dict[str, str] = field(default_factory=dict)
    args: list[str] = field(default_factory=list)
    username: str = OPERATOR_USER  # as the apiserver (and its audit log) knows it
    rbac: list[dict[str, Any]] = field(default_factory=list)  # removed by remove_rbac()
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
            [sys.executable, "-m", "specdecode_operator", *self.args,
             "--metrics-host=127.0.0.1",
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

    def remove_rbac(self) -> None:
        """Delete the RBAC objects of a per-test release (start_operator(release=...))."""
        if self.rbac:
            remove_rbac(self.plane, self.rbac)
            self.rbac = []

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
        """Reconcile passes finished, *including those that raised* (see reconcile_errors)."""
        return self.metric("specdecode_operator_reconcile_duration_seconds_count")

    def reconcile_errors(self) -> float:
        return self.metric("specdecode_operator_reconcile_errors_total")

    def decisions(self) -> float:
        """Tuning evaluations written, all outcomes (keep, recommend, change, unavailable)."""
        return self.metric("specdecode_operator_autotune_decisions_total")

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def assert_no_errors(self) -> None:
        """No traceback and no ERROR line in this process' log."""
        bad = [ln for ln in self.log_text().splitlines()
               if "Traceback" in ln or " ERROR " in ln]
        assert not bad, "operator logged errors:\n" + "\n".join(bad[:20]) + \
            f"\n{self.log_tail(80)}"

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


def install_crds(plane: LocalPlane) -> None:
    # From the installed operator package (what `make crds` writes to crds/), so this works
    # from a wheel as well as from a checkout.
    plane.kubectl("apply", "--server-side", "-f", "-", input=crd_yaml())
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


def _drop_verbs(docs: list[dict[str, Any]], drop: Iterable[Verb]) -> list[dict[str, Any]]:
    drop = set(drop)
    for d in docs:
        for rule in d.get("rules") or []:
            rule["verbs"] = [v for v in rule["verbs"]
                             if not any((g, r, v) in drop for g in rule.get("apiGroups", [])
                                        for r in rule.get("resources", []))]
        if "rules" in d:
            d["rules"] = [r for r in d["rules"] if r["verbs"]]
    return docs


def chart_rbac_docs(drop: Iterable[Verb] = (), release: str = "",
                    namespaces: Iterable[str] = ()) -> list[dict[str, Any]]:
    """The chart's ServiceAccount, (Cluster)Roles and bindings, minus the verbs in ``drop``
    (hack/rbac-minimality removes them one at a time). Default: as rendered in deploy/ (the
    chart's defaults, cluster-wide). With ``release`` or ``namespaces``: ``helm template``
    of the chart for that release, watching only ``namespaces`` (a Role in each)."""
    namespaces = list(namespaces)
    if not release and not namespaces:
        text = (REPO / "deploy" / "specdecode-operator.yaml").read_text()
    else:
        from .localplane.binaries import locate
        cmd = [str(locate()["helm"]), "template", release or CHART_SERVICE_ACCOUNT,
               str(REPO / "charts" / "specdecode-operator"), "--namespace", CHART_NAMESPACE,
               "--kube-version", "1.37.2"]
        if namespaces:
            cmd += ["--set", "operator.namespaces={" + ",".join(namespaces) + "}"]
        text = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    docs = [d for d in yaml.safe_load_all(text) if d and d["kind"] in RBAC_KINDS]
    return _drop_verbs(docs, drop)


def chart_service_account(plane: LocalPlane, workdir: Path, drop: Iterable[Verb] = (),
                          release: str = "", namespaces: Iterable[str] = ()
                          ) -> tuple[Path, str, list[dict[str, Any]]]:
    """Install the chart's RBAC (idempotent; ``drop`` replaces the roles' rules) and return
    a kubeconfig holding a token of its ServiceAccount, that account's username, and the
    objects installed (for ``remove_rbac``)."""
    docs = chart_rbac_docs(drop, release, namespaces)
    if not any(d["kind"] == "Namespace" for d in docs):  # helm template renders none
        docs.insert(0, {"apiVersion": "v1", "kind": "Namespace",
                        "metadata": {"name": CHART_NAMESPACE}})
    plane.kubectl("apply", "--server-side", "--force-conflicts",
                  "--field-manager=specdecode-tests", "-f", "-",
                  input=yaml.safe_dump_all(docs))
    sa = next(d["metadata"]["name"] for d in docs if d["kind"] == "ServiceAccount")
    workdir.mkdir(parents=True, exist_ok=True)
    kc = plane.service_account_kubeconfig(CHART_NAMESPACE, sa, path=workdir / "sa.kubeconfig",
                                          duration="12h")
    return kc, f"system:serviceaccount:{CHART_NAMESPACE}:{sa}", docs


def remove_rbac(plane: LocalPlane, docs: list[dict[str, Any]]) -> None:
    """Delete what ``chart_service_account`` installed (never the shared Namespace)."""
    docs = [d for d in docs if d["kind"] != "Namespace"]
    plane.kubectl("delete", "--ignore-not-found", "--wait=true", "-f", "-",
                  input=yaml.safe_dump_all(docs))


def rbac_drop_from_env() -> list[Verb]:
    """``SPECDECODE_TEST_RBAC_DROP=apps/deployments:patch,/pods:watch`` (hack/rbac-minimality):
    verbs to remove from the chart's roles for a run."""
    out: list[Verb] = []
    for item in filter(None, os.environ.get("SPECDECODE_TEST_RBAC_DROP", "").split(",")):
        gr, verb = item.rsplit(":", 1)
        group, resource = gr.split("/", 1)
        out.append((group, resource, verb))
    return out


def start_operator(plane: LocalPlane, workdir: Path, env: dict[str, str] | None = None,
                   args: list[str] | None = None, identity: str = "chart",
                   release: str = "", namespaces: Iterable[str] = ()) -> OperatorProcess:
    """Start the operator; ``identity="chart"`` (default) runs it under the chart's
    ServiceAccount and RBAC (``release``/``namespaces``: see chart_rbac_docs; the operator
    then watches only ``namespaces``), ``"admin"`` as user ``specdecode-operator`` in
    system:masters."""
    workdir.mkdir(parents=True, exist_ok=True)
    namespaces = list(namespaces)
    args = [*(args or []), *(f"--namespace={n}" for n in namespaces)]
    rbac: list[dict[str, Any]] = []
    if identity == "chart":
        kc, user, rbac = chart_service_account(plane, workdir, rbac_drop_from_env(), release,
                                               namespaces)
    elif identity == "admin":
        kc, user = plane.user_kubeconfig(OPERATOR_USER, ["system:masters"]), OPERATOR_USER
    else:
        raise ValueError(f"identity must be 'chart' or 'admin', not {identity!r}")
    op = OperatorProcess(plane=plane, workdir=workdir, kubeconfig=kc, username=user,
                         args=args, rbac=rbac if release else [],
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


__all__ = ["CHART_USER", "OPERATOR_USER", "OperatorProcess", "chart_rbac_docs",
           "chart_service_account", "install_crds", "remove_rbac", "start_operator", "utc_now",
           "wait_quiet"]
