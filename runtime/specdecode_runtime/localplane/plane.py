"""A real Kubernetes control plane on 127.0.0.1, without Docker.

etcd -> kube-apiserver (RBAC, generated PKI, ServiceAccount tokens) -> kube-controller-manager
+ kube-scheduler -> kwok, which turns Nodes with ``nvidia.com/gpu`` capacity into Ready fake GPU
nodes and scheduled pods into Running, Ready pods (no container runs).

    with LocalPlane(workdir) as plane:
        plane.kubectl("get", "nodes")
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import ssl
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from . import pki as pki_mod
from .binaries import Binaries, locate
from .process import Component, PlaneError, StartStop, free_port, tail

RUNNER_POD_LABEL = "specdecode.io/deployment"
# kwok selector keys are jq queries; a missing label yields null, which DoesNotExist matches.
RUNNER_PODS_EXCLUDED = {
    "key": f'.metadata.labels["{RUNNER_POD_LABEL}"]',
    "operator": "DoesNotExist",
}


class _BlockDumper(yaml.SafeDumper):
    """Keeps kwok's multi-line statusTemplate readable (literal block) in generated stages."""


_BlockDumper.add_representer(
    str,
    lambda d, v: d.represent_scalar("tag:yaml.org,2002:str", v, style="|" if "\n" in v else None),
)


@dataclass(frozen=True)
class GPUNodePool:
    """Fake GPU nodes with realistic NVIDIA GPU-feature-discovery labels."""

    count: int = 2
    gpus_per_node: int = 8
    product: str = "NVIDIA-H200"
    gpu_memory_mib: int = 143771
    resource_name: str = "nvidia.com/gpu"
    instance_type: str = "gpu-8x-h200"
    name_prefix: str = "gpu-node"

    def manifests(self) -> list[dict[str, Any]]:
        nodes = []
        for i in range(self.count):
            name = f"{self.name_prefix}-{i}"
            resources = {
                "cpu": "96",
                "memory": "1500Gi",
                "pods": "110",
                "ephemeral-storage": "2Ti",
                self.resource_name: str(self.gpus_per_node),
            }
            nodes.append({
                "apiVersion": "v1",
                "kind": "Node",
                "metadata": {
                    "name": name,
                    "labels": {
                        "kubernetes.io/hostname": name,
                        "kubernetes.io/os": "linux",
                        "kubernetes.io/arch": "amd64",
                        "node.kubernetes.io/instance-type": self.instance_type,
                        "topology.kubernetes.io/zone": "local-a",
                        "nvidia.com/gpu.present": "true",
                        "nvidia.com/gpu.product": self.product,
                        "nvidia.com/gpu.count": str(self.gpus_per_node),
                        "nvidia.com/gpu.memory": str(self.gpu_memory_mib),
                        "type": "kwok",
                    },
                    "annotations": {
                        "kwok.x-k8s.io/node": "fake",
                        "node.alpha.kubernetes.io/ttl": "0",
                    },
                },
                "spec": {},
                # Nodes accept status on create; kwok keeps the capacity as created.
                "status": {
                    "capacity": resources,
                    "allocatable": resources,
                    "nodeInfo": {
                        "architecture": "amd64",
                        "operatingSystem": "linux",
                        "kubeletVersion": "fake",
                        "containerRuntimeVersion": "kwok",
                    },
                },
            })
        return nodes


@dataclass
class LocalPlane(StartStop):
    workdir: Path | None = None
    nodes: GPUNodePool = field(default_factory=GPUNodePool)
    controllers: bool = True
    # Leave pods labelled specdecode.io/deployment to the pod runner (podrunner): kwok then
    # neither starts them nor marks them Ready; it still deletes them once terminating.
    runner_pods: bool = False
    binaries: Binaries | None = None
    timings: dict[str, float] = field(default_factory=dict)
    components: list[Component] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._own_workdir = self.workdir is None
        if self.workdir is None:
            self.workdir = Path(tempfile.mkdtemp(prefix="specdecode-plane-"))
        self.workdir = Path(self.workdir).resolve()
        self.apiserver_port = 0
        self.etcd_port = 0

    # ---- paths -------------------------------------------------------------------------
    @property
    def logs(self) -> Path:
        assert self.workdir is not None
        return self.workdir / "logs"

    @property
    def kubeconfig(self) -> Path:
        assert self.workdir is not None
        return self.workdir / "admin.kubeconfig"

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.apiserver_port}"

    # ---- lifecycle ---------------------------------------------------------------------
    def start(self) -> None:
        t0 = time.monotonic()
        assert self.workdir is not None
        self.workdir.mkdir(parents=True, exist_ok=True)
        if self.binaries is None:
            self.binaries = locate()
        self.pki = pki_mod.generate(self.workdir / "pki")
        self._start_etcd()
        self._start_apiserver()
        self._write_kubeconfig(self.kubeconfig, user={
            "client-certificate": str(self.pki.admin_cert),
            "client-key": str(self.pki.admin_key),
        })
        if self.controllers:
            self._start_controllers()
        self._start_kwok()
        self._create_nodes()
        self.timings["total_to_ready_s"] = time.monotonic() - t0

    def stop(self) -> None:
        for comp in reversed(self.components):
            comp.stop()
        self.components.clear()
        if self._own_workdir and self.workdir and os.environ.get("SPECDECODE_KEEP_PLANE") != "1":
            shutil.rmtree(self.workdir, ignore_errors=True)

    def check_alive(self) -> None:
        """Raise with the log tail of any component that died since start."""
        for comp in self.components:
            if not comp.alive:
                code = comp.proc.returncode if comp.proc else None
                raise comp.failure(f"died while the plane was running (exit code {code})")

    def log_tails(self, lines: int = 30) -> str:
        return "\n".join(
            f"--- {c.name} ({c.log_path}) ---\n{tail(c.log_path, lines)}" for c in self.components
        )

    # ---- components --------------------------------------------------------------------
    def _component(self, name: str, argv: list[str], ports: Sequence[int] = ()) -> Component:
        comp = Component(name=name, argv=argv, log_path=self.logs / f"{name}.log", ports=ports)
        comp.start()
        self.components.append(comp)
        return comp

    def _start_etcd(self) -> None:
        assert self.binaries and self.workdir
        self.etcd_port, peer = free_port(), free_port()
        client_url = f"http://127.0.0.1:{self.etcd_port}"
        peer_url = f"http://127.0.0.1:{peer}"
        etcd = self._component("etcd", [
            str(self.binaries["etcd"]),
            "--name=plane",
            f"--data-dir={self.workdir / 'etcd'}",
            f"--listen-client-urls={client_url}",
            f"--advertise-client-urls={client_url}",
            f"--listen-peer-urls={peer_url}",
            f"--initial-advertise-peer-urls={peer_url}",
            f"--initial-cluster=plane={peer_url}",
            "--unsafe-no-fsync=true",
            "--log-level=warn",
        ], ports=[self.etcd_port, peer])

        self.timings["etcd_ready_s"] = etcd.wait_ready(self._etcd_healthy, timeout=60)

    def _etcd_healthy(self) -> bool:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.etcd_port}/health", timeout=2) as r:
            return json.load(r).get("health") == "true"

    def _start_apiserver(self) -> None:
        assert self.binaries
        self.apiserver_port = free_port()
        p = self.pki
        args = [
            str(self.binaries["kube-apiserver"]),
            f"--etcd-servers=http://127.0.0.1:{self.etcd_port}",
            "--bind-address=127.0.0.1",
            f"--secure-port={self.apiserver_port}",
            # Without it the apiserver picks the default-route interface (or dies without one).
            "--advertise-address=127.0.0.1",
            # Endpoints validation rejects loopback addresses for the kubernetes Service.
            "--endpoint-reconciler-type=none",
            f"--tls-cert-file={p.serving_cert}",
            f"--tls-private-key-file={p.serving_key}",
            f"--client-ca-file={p.ca_cert}",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-account-key-file={p.sa_pub}",
            f"--service-account-signing-key-file={p.sa_key}",
            # A /16: room for thousands of Services (a /24 held ~250; scale runs need more).
            "--service-cluster-ip-range=10.0.0.0/16",
            "--authorization-mode=Node,RBAC",
            "--allow-privileged=true",
            "--profiling=false",
            f"--cert-dir={self.workdir / 'pki'}",
            # Audit log of write requests: tests count what the operator really writes.
            f"--audit-policy-file={self._audit_policy()}",
            f"--audit-log-path={self.audit_log}",
            "--audit-log-format=json",
            "--audit-log-mode=blocking",
            "--audit-log-maxsize=500",
        ]
        disabled = ["ServiceAccount"]  # no token controller mounts; pods never really run
        if not self.controllers:
            disabled.append("TaintNodesByCondition")
        args.append(f"--disable-admission-plugins={','.join(disabled)}")
        args.append("--enable-admission-plugins=OwnerReferencesPermissionEnforcement")
        api = self._component("kube-apiserver", args, ports=[self.apiserver_port])
        self.timings["apiserver_ready_s"] = api.wait_ready(self._apiserver_ready, timeout=120)

    def _apiserver_ready(self) -> bool:
        req = urllib.request.Request(f"{self.server}/readyz")
        with urllib.request.urlopen(req, context=self.ssl_context(), timeout=5) as r:
            return r.status == 200

    def restart(self, name: str, down_seconds: float = 0.0, wait_ready: bool = True) -> float:
        """Stop component ``name`` (etcd, kube-apiserver, ...), keep it down for
        ``down_seconds`` (the outage under test), start it again with the same arguments and
        ports; returns the seconds it took to be ready again (what a control-plane upgrade
        does to clients). ``wait_ready=False`` returns as soon as the process runs, so a
        caller sees the start-up phase (503s while paths are being installed)."""
        [comp] = [c for c in self.components if c.name == name]
        comp.stop()
        time.sleep(down_seconds)
        comp.start()
        probe = {"etcd": self._etcd_healthy, "kube-apiserver": self._apiserver_ready}.get(name)
        if not wait_ready or probe is None:
            return 0.0
        return comp.wait_ready(probe, timeout=120)

    def _audit_policy(self) -> Path:
        assert self.workdir
        path = self.workdir / "audit-policy.yaml"
        path.write_text(yaml.safe_dump({
            "apiVersion": "audit.k8s.io/v1",
            "kind": "Policy",
            "omitStages": ["RequestReceived", "ResponseStarted", "Panic"],
            "rules": [
                {"level": "Metadata",
                 "verbs": ["create", "update", "patch", "delete", "deletecollection"]},
                {"level": "None"},
            ],
        }))
        return path

    def _start_controllers(self) -> None:
        assert self.binaries
        self._component("kube-controller-manager", [
            str(self.binaries["kube-controller-manager"]),
            f"--kubeconfig={self.kubeconfig}",
            "--leader-elect=false",
            "--secure-port=0",
            f"--root-ca-file={self.pki.ca_cert}",
            f"--service-account-private-key-file={self.pki.sa_key}",
            "--use-service-account-credentials=false",
            "--controllers=*",
            # Faster GC and deployment progress for tests and the demo.
            "--concurrent-deployment-syncs=10",
        ])
        self._component("kube-scheduler", [
            str(self.binaries["kube-scheduler"]),
            f"--kubeconfig={self.kubeconfig}",
            "--leader-elect=false",
            "--secure-port=0",
        ])

    def _start_kwok(self) -> None:
        assert self.binaries
        args = [
            str(self.binaries["kwok"]),
            f"--kubeconfig={self.kubeconfig}",
            "--manage-all-nodes=true",
            "--node-lease-duration-seconds=40",
            "--cidr=10.244.0.0/16",
            "--server-address=",
        ]
        args += [f"--config={s}" for s in self._kwok_stage_files()]
        self._component("kwok", args)

    def _kwok_stage_files(self) -> list[Path]:
        stages = self.binaries.kwok_stages if self.binaries else []
        if not self.runner_pods:
            return stages
        assert self.workdir
        out = self.workdir / "kwok-stages"
        out.mkdir(parents=True, exist_ok=True)
        files = [s for s in stages if s.name != "pod-ready.yaml"]
        if len(files) == len(stages):
            raise PlaneError(f"runner_pods: no pod-ready.yaml among kwok stages {stages}")
        # pod-delete stays stock: terminating runner pods are still deleted by kwok.
        src = next(s for s in stages if s.name == "pod-ready.yaml")
        doc = yaml.safe_load(src.read_text())
        doc["spec"]["selector"]["matchExpressions"].append(RUNNER_PODS_EXCLUDED)
        dst = out / src.name
        dst.write_text(yaml.dump(doc, Dumper=_BlockDumper, sort_keys=False))
        return [*files, dst]

    def _create_nodes(self) -> None:
        t0 = time.monotonic()
        docs = self.nodes.manifests()
        self.kubectl_apply(docs)
        names = [d["metadata"]["name"] for d in docs]
        deadline = time.monotonic() + 60
        while True:
            self.check_alive()
            out = self.kubectl("get", "nodes", "-o", "json").stdout
            items = {i["metadata"]["name"]: i for i in json.loads(out)["items"]}
            ready = [
                n for n in names
                if n in items and any(
                    c["type"] == "Ready" and c["status"] == "True"
                    for c in items[n].get("status", {}).get("conditions", [])
                ) and not any(
                    t.get("key") == "node.kubernetes.io/not-ready"
                    for t in items[n].get("spec", {}).get("taints", []) or []
                )
            ]
            if len(ready) == len(names):
                break
            if time.monotonic() > deadline:
                raise PlaneError(
                    f"nodes not Ready after 60s (ready: {ready})\n{self.log_tails()}"
                )
            time.sleep(0.2)
        self.timings["nodes_ready_s"] = time.monotonic() - t0

    # ---- clients -----------------------------------------------------------------------
    def ssl_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.pki.ca_cert))
        ctx.load_cert_chain(str(self.pki.admin_cert), str(self.pki.admin_key))
        return ctx

    def _write_kubeconfig(self, path: Path, user: dict[str, str], name: str = "admin") -> Path:
        cfg = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "local", "cluster": {
                "server": self.server, "certificate-authority": str(self.pki.ca_cert)}}],
            "users": [{"name": name, "user": user}],
            "contexts": [{"name": name, "context": {"cluster": "local", "user": name}}],
            "current-context": name,
        }
        path.write_text(yaml.safe_dump(cfg))
        path.chmod(0o600)
        return path

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True,
        kubeconfig: Path | None = None,
    ) -> subprocess.CompletedProcess[str]:
        assert self.binaries
        proc = subprocess.run(
            [str(self.binaries.kubectl), f"--kubeconfig={kubeconfig or self.kubeconfig}", *args],
            input=input, capture_output=True, text=True, timeout=120,
        )
        if check and proc.returncode != 0:
            raise PlaneError(
                f"kubectl {' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()}"
            )
        return proc

    def kubectl_apply(self, docs: list[dict[str, Any]], *extra: str) -> str:
        return self.kubectl(
            "apply", "--server-side", "--field-manager=specdecode-plane", "-f", "-", *extra,
            input=yaml.safe_dump_all(docs),
        ).stdout

    def service_account_kubeconfig(
        self, namespace: str, name: str, path: Path | None = None, duration: str = "2h"
    ) -> Path:
        """A kubeconfig that authenticates as ServiceAccount ``namespace/name`` (TokenRequest)."""
        assert self.workdir
        token = self.kubectl(
            "create", "token", name, "-n", namespace, f"--duration={duration}"
        ).stdout.strip()
        path = path or self.workdir / f"sa-{namespace}-{name}.kubeconfig"
        return self._write_kubeconfig(path, user={"token": token}, name=f"{namespace}-{name}")

    def user_kubeconfig(self, user: str, groups: list[str] | None = None) -> Path:
        """A kubeconfig with a client certificate for ``user`` (in ``groups``)."""
        assert self.workdir
        d = self.workdir / "pki"
        cert, key = d / f"user-{user}.crt", d / f"user-{user}.key"
        pki_mod.client_cert(self.pki, user, groups or [], cert, key)
        return self._write_kubeconfig(
            self.workdir / f"user-{user}.kubeconfig",
            user={"client-certificate": str(cert), "client-key": str(key)}, name=user,
        )

    @property
    def audit_log(self) -> Path:
        return self.logs / "audit.log"

    def audit_writes(self, username: str, since: str = "") -> list[dict[str, Any]]:
        """Write requests (create/update/patch/delete) made by ``username``, from the
        apiserver's audit log, optionally only those at or after RFC 3339 time ``since``."""
        out = []
        with contextlib.suppress(FileNotFoundError), self.audit_log.open() as f:
            for line in f:
                ev = json.loads(line)
                if ev.get("stage") != "ResponseComplete":
                    continue
                if ev.get("user", {}).get("username") != username:
                    continue
                if ev.get("verb") not in ("create", "update", "patch", "delete",
                                          "deletecollection"):
                    continue
                if since and ev.get("requestReceivedTimestamp", "") < since:
                    continue
                out.append(ev)
        return out

    def environ(self) -> dict[str, str]:
        return {"KUBECONFIG": str(self.kubeconfig)}
