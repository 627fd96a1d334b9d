"""Shared fixtures: one real local control plane per test run, one namespace per test.

A plane that cannot start (missing binary, component dying, port clash) makes every test that
needs it ERROR with the component's log tail: it never skips.

Isolation (what a test installs, it removes):
- ``fresh_namespace`` creates a namespace per test and deletes it *and waits* until it is
  gone, so no session-wide operator keeps reconciling a previous test's objects.
- ``installed_crds`` removes the CRDs it installed (other tests expect a plane without them).
- A failing test's report carries the logs of the fixtures it used: fixtures register a log
  source with ``log_source`` and the one ``pytest_runtest_makereport`` hook below attaches it.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from specdecode_runtime.localplane import LocalPlane
from specdecode_runtime.operator_process import OperatorProcess, install_crds, start_operator
from specdecode_runtime.prometheus import PrometheusServer

REPO = Path(__file__).resolve().parents[1]
_PLANE: list[LocalPlane] = []
_OPERATOR: list[OperatorProcess] = []
# fixture name -> [(section title, text producer)]; filled while the fixture is alive.
_LOG_SOURCES: dict[str, list[tuple[str, Callable[[], str]]]] = {}


@contextlib.contextmanager
def log_source(fixture: str, title: str, text: Callable[[], str]) -> Iterator[None]:
    """While inside, a failing test that uses ``fixture`` gets ``text()`` in its report."""
    entry = (title, text)
    _LOG_SOURCES.setdefault(fixture, []).append(entry)
    try:
        yield
    finally:
        _LOG_SOURCES[fixture].remove(entry)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    outcome = yield
    rep = outcome.get_result()
    if not rep.failed:
        return
    for fixture in getattr(item, "fixturenames", ()):
        for title, text in list(_LOG_SOURCES.get(fixture, ())):
            try:
                rep.sections.append((title, text()))
            except Exception as e:  # a report must not fail because a log is gone
                rep.sections.append((title, f"(unavailable: {e!r})"))


@pytest.fixture(scope="session")
def plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalPlane]:
    p = LocalPlane(workdir=tmp_path_factory.mktemp("plane"))
    with p, log_source("plane", "control-plane component logs (tail)", p.log_tails):
        _PLANE.append(p)
        yield p
    _PLANE.clear()


@pytest.fixture(scope="session")
def crds(plane: LocalPlane) -> LocalPlane:
    """The project's CRDs installed in the session's plane."""
    install_crds(plane)
    return plane


def _prometheus(workdir: Path) -> PrometheusServer:
    """A real Prometheus scraping file_sd targets every second."""
    return PrometheusServer(workdir, scrape_interval="1s")


@pytest.fixture(scope="session")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrometheusServer]:
    """The session's Prometheus (shared: tests must not stop it; see ``own_prometheus``)."""
    with _prometheus(tmp_path_factory.mktemp("prometheus")) as p:
        yield p


@pytest.fixture
def own_prometheus(tmp_path: Path) -> Iterator[PrometheusServer]:
    """A Prometheus of this test alone, for tests that stop or break it."""
    with _prometheus(tmp_path / "prometheus") as p:
        yield p


@pytest.fixture(scope="session")
def operator(crds: LocalPlane, plane: LocalPlane, prometheus: PrometheusServer,
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[OperatorProcess]:
    """The operator running as a real process against the session's plane and Prometheus,
    under the chart's ServiceAccount and ClusterRoles (operator_process.start_operator)."""
    op = start_operator(plane, tmp_path_factory.mktemp("operator"),
                        env={"SPECDECODE_PROMETHEUS_URL": prometheus.url,
                             "SPECDECODE_PROMETHEUS_TIMEOUT": "2"})
    _OPERATOR.append(op)
    with log_source("operator", "operator log (tail)", lambda: op.log_tail()):
        yield op
    op.stop()
    _OPERATOR.clear()


def namespace_name(prefix: str, request: pytest.FixtureRequest, slug_len: int = 40) -> str:
    slug = re.sub(r"[^a-z0-9-]+", "-", request.node.name.lower()).strip("-")[:slug_len]
    digest = hashlib.sha1(request.node.nodeid.encode()).hexdigest()[:6]
    return f"{prefix}-{slug.strip('-')}-{digest}"


@contextlib.contextmanager
def fresh_namespace(plane: LocalPlane, name: str, timeout: str = "90s") -> Iterator[str]:
    """Create namespace ``name``; afterwards delete it and wait until it is gone (its pods,
    SpecDecodeDeployments and children with it), so later tests start from a clean plane."""
    plane.kubectl("create", "namespace", name)
    try:
        yield name
    finally:
        plane.kubectl("delete", "namespace", name, "--wait=true", f"--timeout={timeout}")


@pytest.fixture
def namespace(plane: LocalPlane, request: pytest.FixtureRequest) -> Iterator[str]:
    with fresh_namespace(plane, namespace_name("t", request)) as name:
        yield name


def stand_in_crd(kind: str, plural: str, group: str = "monitoring.coreos.com"
                 ) -> dict[str, Any]:
    """A minimal CRD (e.g. for prometheus-operator's kinds): the plane has no
    prometheus-operator, only the API group and kind matter (any field is accepted)."""
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{group}"},
        "spec": {
            "group": group,
            "names": {"kind": kind, "plural": plural, "listKind": f"{kind}List",
                      "singular": kind.lower()},
            "scope": "Namespaced",
            "versions": [{"name": "v1", "served": True, "storage": True, "schema": {
                "openAPIV3Schema": {"type": "object",
                                    "x-kubernetes-preserve-unknown-fields": True}}}],
        },
    }


@contextlib.contextmanager
def installed_crds(plane: LocalPlane, docs: list[dict[str, Any]]) -> Iterator[LocalPlane]:
    """Install CRDs for the duration; those that did not exist before are deleted (and
    waited for) afterwards."""
    names = [d["metadata"]["name"] for d in docs]
    existed = {n for n in names if plane.kubectl("get", "crd", n, check=False).returncode == 0}
    try:
        plane.kubectl_apply(docs)
        for name in names:
            plane.kubectl("wait", "--for=condition=Established", "--timeout=30s", f"crd/{name}")
        yield plane
    finally:
        created = [n for n in names if n not in existed]
        if created:
            plane.kubectl("delete", "crd", *created, "--wait=true", "--timeout=60s")


@contextlib.contextmanager
def session_operators_paused() -> Iterator[None]:
    """Stop the session's operator (if an earlier test started it) meanwhile: a test that
    attributes writes or reconciles to one process must be the only one watching."""
    paused = [op for op in _OPERATOR if op.comp is not None]
    for op in paused:
        op.stop()
    try:
        yield
    finally:
        for op in paused:
            op.start()


@contextlib.contextmanager
def solo_operator_for(plane: LocalPlane, namespace: str, workdir: Path,
                      prometheus_url: str) -> Iterator[OperatorProcess]:
    """An operator watching only ``namespace`` (its reconcile, error and decision counters
    count that namespace's objects and nothing else), the session's operator paused."""
    # Its own chart release (ServiceAccount, ClusterRole, a Role in the namespace), as
    # `helm install --set operator.namespaces={ns}` would create, removed afterwards.
    release = f"solo-{hashlib.sha1(namespace.encode()).hexdigest()[:6]}"
    with session_operators_paused():
        op = start_operator(plane, workdir, release=release, namespaces=[namespace],
                            env={"SPECDECODE_PROMETHEUS_URL": prometheus_url,
                                 "SPECDECODE_PROMETHEUS_TIMEOUT": "2"})
        try:
            with log_source("solo_operator", "operator log (tail)", lambda: op.log_tail()):
                yield op
        finally:
            op.stop()
            op.remove_rbac()


@pytest.fixture
def solo_operator(crds: LocalPlane, plane: LocalPlane, prometheus: PrometheusServer,
                  namespace: str, tmp_path: Path) -> Iterator[OperatorProcess]:
    """``solo_operator_for`` this test's namespace and the session's Prometheus."""
    with solo_operator_for(plane, namespace, tmp_path / "solo-operator", prometheus.url) as op:
        yield op
