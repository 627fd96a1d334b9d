"""The GitOps tier's world: its own real plane (pods labelled specdecode.io/deployment are run
by the pod runner as real vLLM stand-in processes, scraped by a real Prometheus), Flux's real
source-controller and kustomize-controller (built by hack/build-flux.sh) and a real Git
repository served over smart HTTP on 127.0.0.1, which the tests commit to.

The operator comes from Git too: Flux applies deploy/specdecode-operator.yaml (through a
kustomize overlay, as users do) - Namespace, CRD, RBAC, Service, Deployment. No container
runtime exists here (kwok fakes the operator's pod), so ``OperatorFromDeployment`` plays the
kubelet: it runs ``python -m specdecode_operator`` with the environment of the Deployment's
pod template as Flux applied it, authenticated with a token of the Deployment's
ServiceAccount (the manifests' RBAC), and restarts it when the template changes.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from specdecode_runtime.flux import NAMESPACE as FLUX_NS
from specdecode_runtime.flux import FluxControllers, git_repository, kustomization
from specdecode_runtime.flux_git import GitServer
from specdecode_runtime.localplane import GPUNodePool, LocalPlane
from specdecode_runtime.operator_process import OperatorProcess
from specdecode_runtime.podrunner import PodRunnerProcess
from specdecode_runtime.prometheus import PrometheusServer

from ..kube_helpers import condition, get_json, get_or_none, wait_for

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy" / "specdecode-operator.yaml"
SOURCE = "fleet"
OPERATOR_NS = "specdecode-system"
OPERATOR_KS = "specdecode-operator"

_STATE: dict[str, Any] = {}
JOURNAL: list[tuple[str, str, str]] = []


@dataclass
class World:
    plane: LocalPlane
    prometheus: PrometheusServer
    runner: PodRunnerProcess
    flux: FluxControllers
    git: GitServer
    operator: OperatorFromDeployment | None = None

    # ---- Flux objects ------------------------------------------------------------------
    def apply(self, *docs: dict[str, Any]) -> None:
        self.plane.kubectl_apply(list(docs))

    def ks(self, name: str) -> dict[str, Any]:
        return get_json(self.plane, "kustomization", name, "-n", FLUX_NS)

    def source_revision(self) -> str:
        art = (get_json(self.plane, "gitrepository", SOURCE, "-n", FLUX_NS).get("status")
               or {}).get("artifact") or {}
        return str(art.get("revision", ""))

    def wait_source(self, sha: str, timeout: float = 60) -> None:
        """The GitRepository's artifact is at commit ``sha`` (asks Flux to look now)."""
        self.flux.reconcile_now("gitrepository", SOURCE)
        wait_for(f"GitRepository at {sha[:8]}", lambda: self.source_revision().endswith(sha),
                 timeout=timeout)

    def wait_applied(self, name: str, sha: str, timeout: float = 120) -> dict[str, Any]:
        """Kustomization ``name`` applied commit ``sha`` and is Ready=True."""
        self.wait_source(sha)
        self.flux.reconcile_now("kustomization", name)

        def done() -> dict[str, Any] | None:
            self.flux.check_alive()
            ks = self.ks(name)
            st = ks.get("status") or {}
            ready = condition(ks, "Ready")
            ok = (str(st.get("lastAppliedRevision", "")).endswith(sha)
                  and ready.get("status") == "True"
                  and st.get("observedGeneration") == ks["metadata"]["generation"])
            return ks if ok else None

        return wait_for(f"Kustomization {name} Ready at {sha[:8]}", done, timeout=timeout)

    def wait_ks(self, name: str, what: str, pred: Any, timeout: float = 120) -> dict[str, Any]:
        def check() -> dict[str, Any] | None:
            self.flux.check_alive()
            ks = self.ks(name)
            return ks if pred(ks) else None

        return wait_for(f"Kustomization {name}: {what}", check, timeout=timeout)

    def ks_events(self, name: str, since: float = 0.0) -> list[str]:
        """Messages of the Kubernetes Events kustomize-controller recorded for Kustomization
        ``name`` at or after unix time ``since`` (what ``kubectl describe`` shows). A failed
        health check lasts only until the retry starts in the status; its event stays."""
        items = get_json(self.plane, "events", "-n", FLUX_NS, "--field-selector",
                         f"involvedObject.kind=Kustomization,involvedObject.name={name}")["items"]
        out = []
        for ev in items:
            ts = ev.get("lastTimestamp") or ev.get("eventTime") or ""
            if ts and _ts({"ts": ts}) >= since - 1:  # event times have second resolution
                out.append(str(ev.get("message", "")))
        return out

    def wait_ks_event(self, name: str, text: str, since: float, timeout: float = 120) -> str:
        def check() -> str | None:
            self.flux.check_alive()
            return next((m for m in self.ks_events(name, since) if text in m), None)

        return str(wait_for(f"Kustomization {name}: an event with {text!r}", check,
                            timeout=timeout))

    def apply_log(self, name: str, since: float = 0.0) -> list[dict[str, Any]]:
        """kustomize-controller's 'server-side apply completed' records for Kustomization
        ``name`` (each is one reconcile's change set: object -> created/configured/
        unchanged), logged at or after unix time ``since``."""
        out = []
        for rec in self.flux.log_records("kustomize-controller"):
            if rec.get("msg") != "server-side apply completed" or rec.get("name") != name:
                continue
            if _ts(rec) >= since:
                out.append(rec)
        return out

    def retire(self, name: str, path: str, namespace: str) -> None:
        """Delete Kustomization ``name`` (prune: true: Flux deletes what it applied, the
        namespace included) and drop its directory from Git."""
        self.plane.kubectl("delete", "kustomization", name, "-n", FLUX_NS, "--timeout=120s")
        wait_for(f"namespace {namespace} gone", lambda: get_or_none(
            self.plane, "namespace", namespace) is None, timeout=120)
        self.git.remove(path)
        self.git.commit(f"remove {path}")

    def sdd(self, namespace: str, name: str) -> dict[str, Any] | None:
        return get_or_none(self.plane, "sdd", name, "-n", namespace)

    def kubectl_get_sdd(self, namespace: str) -> str:
        """What a user sees: ``kubectl get sdd`` (the CRD's printer columns)."""
        return self.plane.kubectl("get", "sdd", "-n", namespace, check=False).stdout.strip()

    def note(self, action: str, ks_name: str, namespace: str, event: str = "") -> None:
        """One row of the table of GitOps actions (printed at the end of the run and quoted
        in docs/gitops.md): what Flux's Kustomization and ``kubectl get sdd`` show now."""
        ks = self.ks(ks_name)
        r = condition(ks, "Ready")
        flux = f"Ready={r.get('status')} {r.get('reason')}: {r.get('message', '')}"
        if event:
            flux += f"\n    event: {event}"
        JOURNAL.append((action, flux, self.kubectl_get_sdd(namespace)))


def _ts(rec: dict[str, Any]) -> float:
    ts = rec.get("ts")
    if isinstance(ts, (int, float)):
        return float(ts)
    if isinstance(ts, str):
        from datetime import datetime

        return datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()
    return 0.0


@dataclass
class OperatorFromDeployment(OperatorProcess):
    """The operator process as the kubelet would run the Deployment's pod: the pod template's
    env, the ServiceAccount's token; ``template_hash`` tells which template it runs."""

    template_hash: str = ""
    template_env: dict[str, str] = field(default_factory=dict)


def operator_deployment(plane: LocalPlane) -> dict[str, Any]:
    return get_json(plane, "deployment", "specdecode-operator", "-n", OPERATOR_NS)


def pod_template_hash(plane: LocalPlane, dep: dict[str, Any]) -> str:
    """The pod-template-hash of the Deployment's newest ReplicaSet (its current template)."""
    rs = get_json(plane, "rs", "-n", OPERATOR_NS, "-l",
                  "app.kubernetes.io/name=specdecode-operator")["items"]
    rev = dep["metadata"].get("annotations", {}).get("deployment.kubernetes.io/revision")
    for r in rs:
        if r["metadata"].get("annotations", {}).get("deployment.kubernetes.io/revision") == rev:
            return str(r["metadata"]["labels"]["pod-template-hash"])
    return ""


def run_operator(world: World, workdir: Path) -> OperatorFromDeployment:
    """Start (or restart, on a new template) the operator from the Deployment Flux applied."""
    plane = world.plane
    dep = wait_for("the operator Deployment rolled out", lambda: (
        d := operator_deployment(plane)) and (d.get("status") or {}).get(
            "observedGeneration") == d["metadata"]["generation"] and d, timeout=60)
    spec = dep["spec"]["template"]["spec"]
    container = next(c for c in spec["containers"] if c["name"] == "operator")
    env = {e["name"]: e["value"] for e in container.get("env") or [] if "value" in e}
    thash = wait_for("the operator's current ReplicaSet", lambda: pod_template_hash(plane, dep))
    kc = plane.service_account_kubeconfig(OPERATOR_NS, spec["serviceAccountName"])
    old = world.operator
    if old is not None:
        old.stop()  # Recreate strategy: the old pod stops before the new one starts
    op = OperatorFromDeployment(
        plane=plane, workdir=workdir, kubeconfig=kc,
        env={"PYTHONUNBUFFERED": "1", "PATH": os.environ.get("PATH", ""), **env},
        template_hash=thash, template_env=env,
        starts=old.starts if old else 0)
    op.start()
    world.operator = op
    return op


@pytest.fixture(scope="session")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    d = tmp_path_factory.mktemp("gitops")
    parts: list[Any] = []
    try:
        plane = LocalPlane(workdir=d / "plane", runner_pods=True,
                           nodes=GPUNodePool(count=2, gpus_per_node=8))
        plane.start()
        parts.append(plane)
        prom = PrometheusServer(d / "prometheus", scrape_interval="1s")
        prom.start()
        parts.append(prom)
        runner = PodRunnerProcess(kubeconfig=plane.kubeconfig, state_dir=d / "runner",
                                  targets_dir=prom.targets_dir,
                                  extra_args=["--backoff-base=0.5", "--max-grace=10"])
        runner.start()
        parts.append(runner)
        flux = FluxControllers(plane, d / "flux")
        flux.start()
        parts.append(flux)
        git = GitServer(d / "git")
        git.start()
        parts.append(git)
        git.write("README.md", "Fleet repository of the GitOps tests.\n")
        sha = git.commit("initial commit")
        w = World(plane=plane, prometheus=prom, runner=runner, flux=flux, git=git)
        w.apply(git_repository(SOURCE, git.url))
        w.wait_source(sha)
        _STATE["world"] = w
        yield w
    finally:
        w = _STATE.pop("world", None)
        if isinstance(w, World) and w.operator is not None:
            w.operator.stop()
        for part in reversed(parts):
            try:
                part.stop()
            except Exception as e:  # keep tearing down the rest
                print(f"teardown of {type(part).__name__} failed: {e}")


def operator_overlay(prometheus_url: str, resync: str = "10") -> str:
    """The user's kustomize overlay over the plain manifests: settings for this cluster, and
    the CRD kept when the Kustomization is deleted (Flux would prune it, and every model)."""
    env = [
        {"name": "SPECDECODE_RESYNC_SECONDS", "value": resync},
        {"name": "SPECDECODE_PROMETHEUS_URL", "value": prometheus_url},
        {"name": "SPECDECODE_PROMETHEUS_TIMEOUT", "value": "2"},
        {"name": "SPECDECODE_AUTOTUNE_TICK", "value": "1"},
        {"name": "SPECDECODE_DISCOVERY_TTL", "value": "2"},
    ]
    return yaml.safe_dump({
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
        "resources": ["specdecode-operator.yaml"],
        "patches": [
            {"target": {"kind": "Deployment", "name": "specdecode-operator"},
             "patch": yaml.safe_dump({
                 "apiVersion": "apps/v1", "kind": "Deployment",
                 "metadata": {"name": "specdecode-operator"},
                 "spec": {"template": {"spec": {"containers": [
                     {"name": "operator", "env": env}]}}}})},
            {"target": {"kind": "CustomResourceDefinition"},
             "patch": yaml.safe_dump({
                 "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
                 "metadata": {"name": "specdecodedeployments.specdecode.io", "annotations": {
                     "kustomize.toolkit.fluxcd.io/prune": "disabled"}}})},
        ],
    }, sort_keys=False)


@pytest.fixture(scope="session")
def flux_operator(world: World, tmp_path_factory: pytest.TempPathFactory
             ) -> OperatorFromDeployment:
    """The operator installed by Flux from deploy/ and running as its Deployment would."""
    git = world.git
    git.copy(DEPLOY, "operator/specdecode-operator.yaml")
    git.write("operator/kustomization.yaml", operator_overlay(world.prometheus.url))
    sha = git.commit("install specdecode-operator from deploy/")
    world.apply(kustomization(OPERATOR_KS, SOURCE, "./operator", interval="30s",
                              timeout="90s"))
    world.wait_applied(OPERATOR_KS, sha, timeout=180)
    return run_operator(world, tmp_path_factory.mktemp("operator"))


def kubectl_json(world: World, *args: str) -> Any:
    return json.loads(world.plane.kubectl(*args, "-o", "json").stdout)


def now() -> float:
    return time.time()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    outcome = yield
    rep = outcome.get_result()
    w = _STATE.get("world")
    if not rep.failed or not isinstance(w, World):
        return
    rep.sections.append(("flux controllers (tail)", w.flux.log_tails(25)))
    if w.operator is not None:
        rep.sections.append(("operator log (tail)", w.operator.log_tail(40)))
    rep.sections.append(("pod runner log (tail)", w.runner.log_tail(20)))
    rep.sections.append(("plane component logs (tail)", w.plane.log_tails(10)))


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not JOURNAL:
        return
    tr = terminalreporter
    tr.section("GitOps actions: what Flux and kubectl get sdd showed")
    for action, flux, sdds in JOURNAL:
        tr.write_line(f"* {action}")
        tr.write_line(f"    flux: {flux[:400]}")
        for line in sdds.splitlines():
            tr.write_line(f"    {line}")
