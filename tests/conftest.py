"""Shared fixtures: one real local control plane per test run, one namespace per test.

A plane that cannot start (missing binary, component dying, port clash) makes every test that
needs it ERROR with the component's log tail: it never skips.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from specdecode_runtime.localplane import LocalPlane
from specdecode_runtime.operator_process import OperatorProcess, install_crds, start_operator
from specdecode_runtime.prometheus import PrometheusServer

REPO = Path(__file__).resolve().parents[1]
_PLANE: list[LocalPlane] = []
_OPERATOR: list[OperatorProcess] = []


@pytest.fixture(scope="session")
def plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalPlane]:
    p = LocalPlane(workdir=tmp_path_factory.mktemp("plane"))
    with p:
        _PLANE.append(p)
        yield p
    _PLANE.clear()


@pytest.fixture(scope="session")
def crds(plane: LocalPlane) -> LocalPlane:
    """The project's CRDs installed in the session's plane."""
    install_crds(plane)
    return plane


@pytest.fixture(scope="session")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrometheusServer]:
    """A real Prometheus scraping file_sd targets every second."""
    with PrometheusServer(tmp_path_factory.mktemp("prometheus"), scrape_interval="1s") as p:
        yield p


@pytest.fixture(scope="session")
def operator(crds: LocalPlane, plane: LocalPlane, prometheus: PrometheusServer,
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[OperatorProcess]:
    """The operator running as a real process against the session's plane and Prometheus."""
    op = start_operator(plane, tmp_path_factory.mktemp("operator"),
                        env={"SPECDECODE_PROMETHEUS_URL": prometheus.url,
                             "SPECDECODE_PROMETHEUS_TIMEOUT": "2"})
    _OPERATOR.append(op)
    yield op
    op.stop()
    _OPERATOR.clear()


@pytest.fixture
def namespace(plane: LocalPlane, request: pytest.FixtureRequest) -> Iterator[str]:
    slug = re.sub(r"[^a-z0-9-]+", "-", request.node.name.lower()).strip("-")[:40].strip("-")
    digest = hashlib.sha1(request.node.nodeid.encode()).hexdigest()[:6]
    name = f"t-{slug}-{digest}"
    plane.kubectl("create", "namespace", name)
    yield name
    plane.kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    outcome = yield
    rep = outcome.get_result()
    if rep.failed and _PLANE and "plane" in getattr(item, "fixturenames", ()):
        rep.sections.append(("control-plane component logs (tail)", _PLANE[0].log_tails()))
    if rep.failed and _OPERATOR and "operator" in getattr(item, "fixturenames", ()):
        rep.sections.append(("operator log (tail)", _OPERATOR[0].log_tail()))
