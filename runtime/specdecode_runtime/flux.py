"""Flux's source-controller and kustomize-controller as real processes against the local plane.

The binaries and their CRDs come from ``hack/build-flux.sh`` (built from the controllers' Go
modules; the CRDs are the modules' own ``config/crd/bases``). Every address they bind is on
127.0.0.1: metrics, health probes and source-controller's artifact server, whose advertised
address (the URL kustomize-controller downloads artifacts from) is the same loopback port.
No notification-controller runs: ``--events-addr`` stays empty, events go to the apiserver.

    with FluxControllers(plane, workdir) as flux:
        flux.kubectl_apply([...GitRepository..., ...Kustomization...])
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .localplane import LocalPlane
from .localplane.process import Component, PlaneError, StartStop, free_port, tail

REPO_ROOT = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO_ROOT / "hack" / "build-flux.sh"
NAMESPACE = "flux-system"
CONTROLLERS = ("source-controller", "kustomize-controller")


@dataclass(frozen=True)
class FluxBinaries:
    directory: Path

    def __getitem__(self, name: str) -> Path:
        return self.directory / name

    @property
    def glua(self) -> Path:
        """gopher-lua's interpreter (Argo CD's Lua), for the Argo CD health-check test."""
        return self.directory / "glua"

    @property
    def crds(self) -> list[Path]:
        return sorted((self.directory / "crds").glob("*.yaml"))


def locate_flux(build: bool = True) -> FluxBinaries:
    """``SPECDECODE_FLUX_DIR`` or the (cached) output of hack/build-flux.sh. A missing binary
    is an error, never a reason to skip."""
    env_dir = os.environ.get("SPECDECODE_FLUX_DIR")
    if env_dir:
        directory = Path(env_dir)
    elif build and BUILD_SCRIPT.is_file():
        proc = subprocess.run(["bash", str(BUILD_SCRIPT)], stdout=subprocess.PIPE, text=True)
        if proc.returncode != 0:
            raise PlaneError(f"hack/build-flux.sh failed with exit code {proc.returncode}")
        directory = Path(proc.stdout.strip().splitlines()[-1])
    else:
        raise PlaneError("Flux controllers not found: set SPECDECODE_FLUX_DIR to the directory "
                         "printed by hack/build-flux.sh")
    missing = [c for c in (*CONTROLLERS, "glua") if not os.access(directory / c, os.X_OK)]
    bins = FluxBinaries(directory)
    if missing or not bins.crds:
        raise PlaneError(f"{directory} lacks {', '.join(missing) or 'crds/*.yaml'} "
                         "(rebuild: hack/build-flux.sh)")
    return bins


@dataclass
class FluxControllers(StartStop):
    plane: LocalPlane
    workdir: Path
    binaries: FluxBinaries | None = None
    # How often a Kustomization may requeue at most: controller-runtime's default rate
    # limiter is fine; these are the controllers' own flags, kept at their defaults otherwise.
    extra_args: dict[str, list[str]] = field(default_factory=dict)
    components: dict[str, Component] = field(default_factory=dict)
    storage_port: int = 0

    def log_path(self, name: str) -> Path:
        return self.workdir / f"{name}.log"

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        if self.binaries is None:
            self.binaries = locate_flux()
        self.install_crds()
        self.plane.kubectl_apply([{"apiVersion": "v1", "kind": "Namespace",
                                   "metadata": {"name": NAMESPACE}}])
        self.storage_port = free_port()
        storage = f"127.0.0.1:{self.storage_port}"
        (self.workdir / "storage").mkdir(exist_ok=True)
        common = ["--log-level=debug", "--log-encoding=json", "--events-addr=",
                  "--enable-leader-election=false", "--watch-all-namespaces=true"]
        argv = {
            "source-controller": [
                f"--storage-path={self.workdir / 'storage'}",
                f"--storage-addr={storage}", f"--storage-adv-addr={storage}",
            ],
            "kustomize-controller": ["--no-remote-bases=true"],
        }
        for name in CONTROLLERS:
            metrics, health = free_port(), free_port()
            # Each controller its own identity (cluster-admin, as Flux installs them) so the
            # apiserver's audit log tells them apart; field managers are their own names.
            kc = self.plane.user_kubeconfig(f"flux-{name}", ["system:masters"])
            comp = Component(
                name, [str(self.binaries[name]), f"--metrics-addr=127.0.0.1:{metrics}",
                       f"--health-addr=127.0.0.1:{health}",
                       *common, *argv[name], *self.extra_args.get(name, [])],
                log_path=self.log_path(name),
                # controller-runtime reads KUBECONFIG (the controllers have no flag for it).
                env={"RUNTIME_NAMESPACE": NAMESPACE, "KUBECONFIG": str(kc)},
                ports=[metrics, health] + ([self.storage_port]
                                           if name == "source-controller" else []),
            )
            comp.start()
            self.components[name] = comp

            def ready(port: int = health) -> bool:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as r:
                    return r.status == 200

            comp.wait_ready(ready, timeout=120)

    def install_crds(self) -> None:
        assert self.binaries
        args = ["apply", "--server-side", "--field-manager=flux-install"]
        for crd in self.binaries.crds:
            args += ["-f", str(crd)]
        self.plane.kubectl(*args)
        names = [f"crd/{yaml.safe_load(c.read_text())['metadata']['name']}"
                 for c in self.binaries.crds]
        self.plane.kubectl("wait", "--for=condition=Established", "--timeout=60s", *names)

    def stop(self) -> None:
        for comp in reversed(list(self.components.values())):
            comp.stop(grace=10)
        self.components.clear()

    def check_alive(self) -> None:
        for comp in self.components.values():
            if not comp.alive:
                raise comp.failure("died while the tests ran")

    def log_tails(self, lines: int = 30) -> str:
        return "\n".join(f"--- {n} ---\n{tail(self.log_path(n), lines)}"
                         for n in self.components)

    def log_records(self, name: str) -> list[dict[str, Any]]:
        """The controller's JSON log lines (``--log-encoding=json``), oldest first."""
        out = []
        try:
            text = self.log_path(name).read_text(errors="replace")
        except FileNotFoundError:
            return out
        for line in text.splitlines():
            if line.startswith("{"):
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError:
                    continue
        return out

    def reconcile_now(self, kind: str, name: str, namespace: str = NAMESPACE) -> str:
        """What ``flux reconcile`` does: set the requestedAt annotation; returns its value."""
        token = f"{time.time():.6f}"
        self.plane.kubectl("annotate", "--overwrite", "-n", namespace, kind, name,
                           f"reconcile.fluxcd.io/requestedAt={token}")
        return token


def git_repository(name: str, url: str, interval: str = "5s", branch: str = "main",
                   namespace: str = NAMESPACE) -> dict[str, Any]:
    return {
        "apiVersion": "source.toolkit.fluxcd.io/v1", "kind": "GitRepository",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"interval": interval, "url": url, "ref": {"branch": branch},
                 "timeout": "20s"},
    }


def kustomization(name: str, source: str, path: str, *, interval: str = "10s",
                  prune: bool = True, wait: bool = True, timeout: str = "60s",
                  target_namespace: str | None = None, namespace: str = NAMESPACE,
                  **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "interval": interval, "retryInterval": "5s", "path": path, "prune": prune,
        "wait": wait, "timeout": timeout,
        "sourceRef": {"kind": "GitRepository", "name": source},
        **spec,
    }
    if target_namespace:
        body["targetNamespace"] = target_namespace
    return {"apiVersion": "kustomize.toolkit.fluxcd.io/v1", "kind": "Kustomization",
            "metadata": {"name": name, "namespace": namespace}, "spec": body}


__all__ = ["CONTROLLERS", "NAMESPACE", "FluxBinaries", "FluxControllers", "git_repository",
           "kustomization", "locate_flux"]
