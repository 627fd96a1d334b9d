"""The pod runner as a child process (``python -m specdecode_runtime.podrunner``), for tests
and demos: a crash of the runner cannot take the caller down, and stop() leaves nothing behind.

    with PodRunnerProcess(kubeconfig=plane.kubeconfig, state_dir=d / "runner",
                          targets_dir=prom.targets_dir) as runner:
        ...
"""

from __future__ import annotations

import json
import shlex
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..localplane.process import Component, StartStop, tail


@dataclass
class PodRunnerProcess(StartStop):
    kubeconfig: Path
    state_dir: Path
    targets_dir: Path | None = None
    vllm_command: Sequence[str] | None = None  # None: specdecode-sim next to this Python
    namespace: str | None = None
    extra_args: Sequence[str] = ()
    env: dict[str, str] = field(default_factory=dict)
    comp: Component | None = field(default=None, init=False)

    @property
    def log_path(self) -> Path:
        return self.state_dir / "podrunner.log"

    def argv(self) -> list[str]:
        argv = [sys.executable, "-m", "specdecode_runtime.podrunner",
                f"--kubeconfig={self.kubeconfig}", f"--state-dir={self.state_dir}"]
        if self.targets_dir is not None:
            argv.append(f"--targets-dir={self.targets_dir}")
        if self.vllm_command:
            argv.append(f"--vllm-command={shlex.join(self.vllm_command)}")
        if self.namespace:
            argv.append(f"--namespace={self.namespace}")
        return argv + list(self.extra_args)

    def start(self, timeout: float = 60.0) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        marker = self.state_dir / "runner.json"
        marker.unlink(missing_ok=True)
        self.comp = Component("specdecode-podrunner", self.argv(), log_path=self.log_path,
                              env={"PYTHONUNBUFFERED": "1", **self.env})
        self.comp.start()
        comp = self.comp

        def ready() -> bool:
            # Written after the first successful sync against the apiserver.
            return comp.proc is not None and json.loads(marker.read_text())["pid"] == \
                comp.proc.pid

        comp.wait_ready(ready, timeout=timeout)

    def stop(self, grace: float = 40.0) -> None:
        """SIGTERM: the runner stops its pods' processes (each within --max-grace) first."""
        if self.comp is not None:
            self.comp.stop(grace=grace)
            self.comp = None

    @property
    def alive(self) -> bool:
        return self.comp is not None and self.comp.alive

    def pod_state(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The runner's record of a pod's process (pid, port, log, restarts) or None."""
        try:
            return dict(json.loads((self.state_dir / "pods" / f"{namespace}_{name}.json")
                                   .read_text()))
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    def pod_log(self, namespace: str, name: str, lines: int = 40) -> str:
        return tail(self.state_dir / "logs" / f"{namespace}_{name}.log", lines)

    def log_tail(self, lines: int = 60) -> str:
        return tail(self.log_path, lines)
