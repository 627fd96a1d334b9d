"""The local pod runner ("process kubelet"): runs labelled pods' containers as local processes.

See docs/pod-runner.md. ``PodRunner`` runs in-process (threads); ``PodRunnerProcess`` runs the
``specdecode-podrunner`` CLI as a child process. Both have start()/stop().
"""

from .harness import PodRunnerProcess
from .runner import PodRunner, RunnerConfig, default_vllm_command

__all__ = ["PodRunner", "PodRunnerProcess", "RunnerConfig", "default_vllm_command"]
