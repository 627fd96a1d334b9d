"""``specdecode-podrunner``: run labelled pods of a (local) cluster as local processes."""

from __future__ import annotations

import argparse
import logging
import shlex
import signal
import sys
import threading
from pathlib import Path

from .runner import LABEL_SDD, PodRunner, RunnerConfig, default_vllm_command


def parse_args(argv: list[str] | None = None) -> RunnerConfig:
    ap = argparse.ArgumentParser(
        prog="specdecode-podrunner",
        description="Run the first container of every scheduled pod labelled "
                    f"{LABEL_SDD} as a local process on 127.0.0.1 and mirror its /health "
                    "into the pod's status. Pair with `specdecode-cluster --runner-pods`.",
    )
    ap.add_argument("--kubeconfig", type=Path, default=None,
                    help="admin kubeconfig (default: $KUBECONFIG, ~/.kube/config)")
    ap.add_argument("--namespace", "-n", default=None,
                    help="only pods in this namespace (default: all namespaces)")
    ap.add_argument("--node", default=None,
                    help="only pods bound to this node (default: any node)")
    ap.add_argument("--state-dir", type=Path, default=Path(".podrunner"),
                    help="per-pod logs (logs/) and pid files (pods/) (default ./.podrunner)")
    ap.add_argument("--targets-dir", type=Path, default=None,
                    help="write Prometheus file_sd targets here (default: none)")
    ap.add_argument("--vllm-command", default=None,
                    help="what a container's `vllm` runs, shell-split (default: "
                         f"{default_vllm_command()[0]}); e.g. '/opt/vllm/bin/vllm'")
    ap.add_argument("--sync-interval", type=float, default=1.0,
                    help="seconds between syncs and health probes (default 1)")
    ap.add_argument("--max-grace", type=float, default=30.0,
                    help="cap on a pod's termination grace period, seconds (default 30)")
    ap.add_argument("--backoff-base", type=float, default=1.0,
                    help="first restart delay after an exit, seconds; doubles (default 1)")
    ap.add_argument("--backoff-max", type=float, default=30.0,
                    help="longest restart delay, seconds (default 30)")
    ap.add_argument("--log-level", default="INFO", help="runner log level (default INFO)")
    a = ap.parse_args(argv)
    logging.basicConfig(level=a.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("httpx", "httpx2", "httpcore", "httpcore2"):  # one line per API request
        logging.getLogger(noisy).setLevel(logging.WARNING)
    cfg = RunnerConfig(
        kubeconfig=a.kubeconfig, namespace=a.namespace, node=a.node, state_dir=a.state_dir,
        targets_dir=a.targets_dir, sync_interval=a.sync_interval, max_grace=a.max_grace,
        backoff_base=a.backoff_base, backoff_max=a.backoff_max,
    )
    if a.vllm_command:
        cfg.vllm_command = shlex.split(a.vllm_command)
    return cfg


def main(argv: list[str] | None = None) -> int:
    cfg = parse_args(argv)
    log = logging.getLogger("specdecode.podrunner")
    if not Path(cfg.vllm_command[0]).exists() and "/" in cfg.vllm_command[0]:
        # Not fatal: pods with other commands still run; vllm pods will crash-loop visibly.
        log.warning("vllm command %s does not exist", cfg.vllm_command[0])
    done = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: done.set())
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    runner = PodRunner(cfg)
    try:
        runner.start()
    except Exception as e:
        log.error("cannot start: %s", e)
        return 1
    done.wait()
    log.info("stopping: terminating %d process(es)", len(runner.snapshot()))
    runner.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
