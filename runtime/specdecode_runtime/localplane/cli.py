"""``specdecode-cluster``: start the local control plane for humans and keep it up until Ctrl-C."""

from __future__ import annotations

import argparse
import signal
import sys
import time
from pathlib import Path

from .plane import GPUNodePool, LocalPlane
from .process import PlaneError


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="specdecode-cluster",
        description="Run a real Kubernetes control plane on 127.0.0.1 with fake GPU nodes.",
    )
    ap.add_argument("--dir", type=Path, default=Path(".plane"),
                    help="state directory: kubeconfig, PKI, logs (default ./.plane)")
    ap.add_argument("--gpu-nodes", type=int, default=2, help="fake GPU nodes (default 2)")
    ap.add_argument("--gpus-per-node", type=int, default=8, help="GPUs per node (default 8)")
    ap.add_argument("--runner-pods", action="store_true",
                    help="leave pods labelled specdecode.io/deployment to specdecode-podrunner: "
                         "kwok does not mark them Ready (see docs/pod-runner.md)")
    args = ap.parse_args(argv)

    directory = args.dir.resolve()
    if directory.exists():
        # A previous run's etcd data and certificates would not match this plane.
        import shutil
        shutil.rmtree(directory)
    plane = LocalPlane(
        workdir=directory,
        nodes=GPUNodePool(count=args.gpu_nodes, gpus_per_node=args.gpus_per_node),
        runner_pods=args.runner_pods,
    )
    stop = False

    def on_signal(*_: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    print("starting etcd, kube-apiserver, controller-manager, scheduler, kwok ...", flush=True)
    try:
        plane.start()
    except PlaneError as e:
        plane.stop()
        print(f"error: {e}", file=sys.stderr)
        return 1
    t = plane.timings
    print(
        f"plane ready in {t['total_to_ready_s']:.1f}s "
        f"(etcd {t['etcd_ready_s']:.1f}s, apiserver {t['apiserver_ready_s']:.1f}s, "
        f"nodes {t['nodes_ready_s']:.1f}s)\n"
        f"logs: {plane.logs}\n\n"
        f"  export KUBECONFIG={plane.kubeconfig}\n"
        f"  kubectl get nodes -L nvidia.com/gpu.product\n\n"
        + (f"  specdecode-podrunner --kubeconfig {plane.kubeconfig} "
           f"--state-dir {directory / 'podrunner'}\n\n" if args.runner_pods else "")
        + "Ctrl-C stops the plane.",
        flush=True,
    )
    try:
        while not stop:
            plane.check_alive()
            time.sleep(0.5)
    except PlaneError as e:
        print(f"error: {e}", file=sys.stderr)
        plane.stop()
        return 1
    print("stopping ...", flush=True)
    plane.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
