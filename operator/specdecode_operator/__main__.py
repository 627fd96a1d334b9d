"""``python -m specdecode_operator`` (or ``specdecode-operator``): run the operator.

Kopf settings that matter in production:
- ``--namespace`` (repeatable) scopes the operator; default: the whole cluster.
- ``--liveness`` serves Kopf's liveness endpoint for the pod's livenessProbe.
- ``--metrics-port`` serves the operator's own Prometheus metrics.
- One replica (Deployment strategy Recreate) runs alone. For a hot standby, run two replicas
  with ``--leader-election=true`` (``leader``: a Lease, not Kopf's peering, which stays off).
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping

import kopf
from prometheus_client import start_http_server

from . import handlers  # noqa: F401  (registers the handlers)
from .config import parse


def main(argv: list[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    config = parse(argv, os.environ if environ is None else environ)
    logging.basicConfig(
        level=logging.DEBUG if config.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # One line per API request drowns the operator's own messages.
    logging.getLogger("httpx2").setLevel(logging.WARNING)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    if not config.verbose:  # Kopf logs every handled watch event and liveness probe at INFO
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
        logging.getLogger("kopf.activities.probe").setLevel(logging.WARNING)
    if config.metrics_port:
        start_http_server(config.metrics_port, addr=config.metrics_host)
    kopf.run(
        clusterwide=not config.namespaces,
        namespaces=list(config.namespaces),
        standalone=True,  # no Kopf peering: replicas elect one active through a Lease
        liveness_endpoint=config.liveness or None,
        memo=kopf.Memo(config=config),  # handlers.startup builds the controller from it
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
