"""The operator's configuration: built once in ``__main__`` from the command line and the
environment, then handed to the controller and the tuner through Kopf's memo.

Nothing else in the operator reads the environment. Every setting has a flag; the environment
variables (the names earlier versions read, kept for existing deployments) supply the flags'
defaults, so an explicit flag wins.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from .autotune.observe import Labels


@dataclass(frozen=True)
class LeaderElection:
    """Active/standby replicas through a coordination.k8s.io Lease (``leader``)."""

    enabled: bool = False
    lease_name: str = "specdecode-operator"
    lease_namespace: str = "default"
    lease_seconds: int = 15          # a holder that has not renewed for this long has lost it
    retry_seconds: float = 2.0       # between attempts to acquire or renew
    identity: str = ""               # the holder's name (the pod's); empty: hostname-pid


@dataclass(frozen=True)
class OperatorConfig:
    namespaces: tuple[str, ...] = ()          # watched namespaces; empty: the whole cluster
    kubeconfig: str | None = None             # None: in-cluster or ~/.kube/config
    prometheus_url: str = ""                  # empty: no autotuning data
    prometheus_timeout: float = 5.0
    autotune_tick: float = 10.0               # seconds between tuning cycles
    resync_seconds: float = 60.0              # level-based revisit of every object
    discovery_ttl: float = 60.0               # how long "is the PodMonitor CRD there" holds
    max_concurrent_reconciles: int = 32       # reconciles in flight at once
    labels: Labels = field(default_factory=Labels)
    liveness: str = "http://0.0.0.0:8080/healthz"
    metrics_port: int = 8081
    metrics_host: str = "0.0.0.0"
    leader: LeaderElection = field(default_factory=LeaderElection)
    verbose: bool = False

    @property
    def scope(self) -> list[str | None]:
        """Namespaces to list in: each watched one, or None for all."""
        return list(self.namespaces) or [None]


def _number(minimum: float, strict: bool) -> Callable[[str], float]:
    def conv(text: str) -> float:
        try:
            v = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if v < minimum or (strict and v == minimum):
            raise argparse.ArgumentTypeError(
                f"{text} must be {'greater than' if strict else 'at least'} {minimum:g}")
        return v
    return conv


def _integer(lo: int, hi: int | None, what: str, bad: str) -> Callable[[str], int]:
    """An integer in [lo, hi] (hi None: unbounded); ``bad`` words the range error."""
    def conv(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a {what}: {text!r}") from None
        if v < lo or (hi is not None and v > hi):
            raise argparse.ArgumentTypeError(f"{text} {bad}")
        return v
    return conv


_count = _integer(1, None, "whole number", "must be at least 1")
_port = _integer(0, 65535, "port number", "is not a port (0..65535)")


def _switch(text: str) -> bool:
    t = text.strip().lower()
    if t in ("1", "true", "yes", "on"):
        return True
    if t in ("", "0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"not true or false: {text!r}")


# flag, environment variable, type, default, help
_SETTINGS: list[tuple[str, str, Callable[[str], object], str, str]] = [
    ("--prometheus-url", "SPECDECODE_PROMETHEUS_URL", str, "",
     "Prometheus base URL the autotuner queries; empty: none"),
    ("--prometheus-timeout", "SPECDECODE_PROMETHEUS_TIMEOUT", _number(0, True), "5",
     "seconds per Prometheus query"),
    ("--autotune-tick", "SPECDECODE_AUTOTUNE_TICK", _number(0, True), "10",
     "seconds between tuning cycles"),
    ("--resync-seconds", "SPECDECODE_RESYNC_SECONDS", _number(0, True), "60",
     "seconds between level-based reconciles of every object"),
    ("--discovery-ttl", "SPECDECODE_DISCOVERY_TTL", _number(0, False), "60",
     "seconds the PodMonitor CRD's presence is cached"),
    ("--max-concurrent-reconciles", "SPECDECODE_MAX_CONCURRENT_RECONCILES", _count, "32",
     "reconciles in flight at once (the API client pools 100 connections)"),
    ("--liveness", "SPECDECODE_LIVENESS", str, "http://0.0.0.0:8080/healthz",
     "liveness endpoint URL, or '' to disable"),
    ("--metrics-port", "SPECDECODE_METRICS_PORT", _port, "8081",
     "port of the operator's /metrics, 0 to disable"),
    ("--metrics-host", "SPECDECODE_METRICS_HOST", str, "0.0.0.0",
     "address of the operator's /metrics"),
    ("--leader-election", "SPECDECODE_LEADER_ELECTION", _switch, "false",
     "true: active/standby replicas, the active one holds a Lease (docs/helm.md)"),
    ("--lease-name", "SPECDECODE_LEASE_NAME", str, "specdecode-operator",
     "name of the leader-election Lease"),
    ("--lease-namespace", "SPECDECODE_LEASE_NAMESPACE", str, "default",
     "namespace of the leader-election Lease"),
    ("--lease-seconds", "SPECDECODE_LEASE_SECONDS", _count, "15",
     "seconds a holder that stopped renewing keeps the Lease"),
    ("--lease-retry-seconds", "SPECDECODE_LEASE_RETRY_SECONDS", _number(0, True), "2",
     "seconds between attempts to acquire or renew the Lease"),
    ("--leader-identity", "SPECDECODE_POD_NAME", str, "",
     "this replica's name in the Lease (the pod's name); default hostname-pid"),
]
_LABELS = {"namespace": "SPECDECODE_PROM_LABEL_NAMESPACE", "sdd": "SPECDECODE_PROM_LABEL_SDD",
           "k": "SPECDECODE_PROM_LABEL_K", "pod": "SPECDECODE_PROM_LABEL_POD"}


def parser(environ: Mapping[str, str]) -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="specdecode-operator",
                                 description="Run the specdecode-operator (Kopf).")
    ap.add_argument("-n", "--namespace", action="append", default=[],
                    help="watch only this namespace (repeatable; env SPECDECODE_NAMESPACES, "
                         "comma-separated); default: all namespaces")
    for flag, env, conv, default, text in _SETTINGS:
        ap.add_argument(flag, type=conv, default=environ.get(env, default),
                        help=f"{text} (env {env}; default %(default)s)")
    ap.add_argument("-v", "--verbose", action="store_true")
    return ap


def parse(argv: Sequence[str] | None, environ: Mapping[str, str]) -> OperatorConfig:
    """The configuration from ``argv`` and ``environ`` (a bad value exits with a message
    naming the flag, as argparse does)."""
    ap = parser(environ)
    for _flag, env, conv, _default, _text in _SETTINGS:
        if env in environ:  # name the variable, not the flag, when it is the variable's fault
            try:
                conv(environ[env])
            except argparse.ArgumentTypeError as e:
                ap.error(f"environment variable {env}: {e}")
    args = ap.parse_args(argv)
    if args.leader_election and args.lease_retry_seconds >= args.lease_seconds:
        # The holder gives up when it has not renewed for lease - retry seconds.
        ap.error(f"--lease-retry-seconds ({args.lease_retry_seconds:g}) must be less than "
                 f"--lease-seconds ({args.lease_seconds})")
    namespaces = args.namespace or [
        n.strip() for n in environ.get("SPECDECODE_NAMESPACES", "").split(",") if n.strip()]
    labels = Labels(**{f: environ.get(env) or getattr(Labels, f) for f, env in _LABELS.items()})
    return OperatorConfig(
        namespaces=tuple(dict.fromkeys(namespaces)),
        kubeconfig=environ.get("KUBECONFIG") or None,
        prometheus_url=args.prometheus_url,
        prometheus_timeout=args.prometheus_timeout,
        autotune_tick=args.autotune_tick,
        resync_seconds=args.resync_seconds,
        discovery_ttl=args.discovery_ttl,
        max_concurrent_reconciles=args.max_concurrent_reconciles,
        labels=labels,
        liveness=args.liveness,
        metrics_port=args.metrics_port,
        metrics_host=args.metrics_host,
        leader=LeaderElection(
            enabled=args.leader_election, lease_name=args.lease_name,
            lease_namespace=args.lease_namespace, lease_seconds=args.lease_seconds,
            retry_seconds=args.lease_retry_seconds, identity=args.leader_identity),
        verbose=args.verbose,
    )
