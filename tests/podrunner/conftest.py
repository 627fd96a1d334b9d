"""Fixtures of the pod runner tests: their own plane with ``runner_pods=True`` (kwok leaves
labelled pods alone) and the ``specdecode-podrunner`` CLI running against it.

The runner handles only gpu-node-0 (``--node``), so a test can run a second, in-process
runner for gpu-node-1. ``vllm`` resolves to the real stand-in, ``specdecode-sim`` next to this
Python (its absence is an error, not a skip); tests that need to flip health or ignore SIGTERM
run ``fake_vllm.py`` as the pod's own command.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from specdecode_runtime.localplane import GPUNodePool, LocalPlane
from specdecode_runtime.podrunner import PodRunnerProcess

from ..conftest import fresh_namespace, log_source, namespace_name

HERE = Path(__file__).resolve().parent
FAKE_VLLM = [sys.executable, str(HERE / "fake_vllm.py")]
SIM = Path(sys.executable).parent / "specdecode-sim"
RUNNER_NODE = "gpu-node-0"
OTHER_NODE = "gpu-node-1"


@pytest.fixture(scope="session")
def rplane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalPlane]:
    p = LocalPlane(workdir=tmp_path_factory.mktemp("runner-plane"), runner_pods=True,
                   nodes=GPUNodePool(count=2, gpus_per_node=8))
    with p, log_source("rplane", "runner plane component logs (tail)",
                       lambda: p.log_tails(15)):
        yield p


@pytest.fixture(scope="session")
def runner(rplane: LocalPlane, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[PodRunnerProcess]:
    if not SIM.exists():
        raise RuntimeError(f"{SIM} is missing: install the runtime (pip install -e ./runtime)")
    d = tmp_path_factory.mktemp("podrunner")
    r = PodRunnerProcess(
        kubeconfig=rplane.kubeconfig, state_dir=d / "state", targets_dir=d / "targets",
        vllm_command=None,  # the default: specdecode-sim next to this Python
        # Fast crash-loop back-off and short grace keep the module quick.
        extra_args=[f"--node={RUNNER_NODE}", "--backoff-base=0.5", "--max-grace=10",
                    "--log-level=DEBUG"],
    )
    with r, log_source("runner", "pod runner log (tail)", lambda: r.log_tail(80)):
        yield r


@pytest.fixture
def rns(rplane: LocalPlane, request: pytest.FixtureRequest) -> Iterator[str]:
    with fresh_namespace(rplane, namespace_name("r", request, 30)) as name:
        yield name
