"""``python -m specdecode_operator`` (or ``specdecode-operator``): run the operator.

Kopf settings that matter in production:
- ``--namespace`` (repeatable) scopes the operator; default: the whole cluster.
- ``--liveness`` serves Kopf's liveness endpoint for the pod's livenessProbe.
- ``--metrics-port`` serves the operator's own Prometheus metrics.
- One replica (Deployment strategy Recreate) runs standalone. For a hot standby, run two
  replicas with ``--peering NAME``: Kopf's peering (the KopfPeering CRDs) keeps exactly one
  active; it needs kopf's peering CRDs installed.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

import kopf
from prometheus_client import start_http_server

from . import handlers  # noqa: F401  (registers the handlers)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="specdecode-operator",
                                 description="Run the specdecode-operator (Kopf).")
    ap.add_argument("-n", "--namespace", action="append", default=[],
                    help="watch only this namespace (repeatable); default: all namespaces")
    ap.add_argument("--liveness", default=os.environ.get(
        "SPECDECODE_LIVENESS", "http://0.0.0.0:8080/healthz"),
        help="liveness endpoint URL, or '' to disable (default %(default)s)")
    ap.add_argument("--metrics-port", type=int,
                    default=int(os.environ.get("SPECDECODE_METRICS_PORT", "8081")),
                    help="port of the operator's /metrics, 0 to disable (default %(default)s)")
    ap.add_argument("--metrics-host", default=os.environ.get("SPECDECODE_METRICS_HOST",
                                                             "0.0.0.0"))
    ap.add_argument("--peering", default=os.environ.get("SPECDECODE_PEERING", ""),
                    help="Kopf peering name for active/standby replicas; default standalone")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args(argv)

    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # One line per API request drowns the operator's own messages.
    logging.getLogger("httpx2").setLevel(logging.WARNING)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    if not args.verbose:  # Kopf logs every handled watch event and liveness probe at INFO
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
        logging.getLogger("kopf.activities.probe").setLevel(logging.WARNING)
    if args.namespace:
        os.environ["SPECDECODE_NAMESPACES"] = ",".join(args.namespace)
    if args.metrics_port:
        start_http_server(args.metrics_port, addr=args.metrics_host)
    kopf.run(
        clusterwide=not args.namespace,
        namespaces=args.namespace,
        standalone=not args.peering,
        peering_name=args.peering or None,
        liveness_endpoint=args.liveness or None,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
