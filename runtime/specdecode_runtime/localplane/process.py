"""Child processes of the local plane: started in their own process group, logged to a file,
waited for with a readiness probe, and torn down so that nothing is left behind."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Self


class PlaneError(RuntimeError):
    """A component could not be started or died; the message names it and says why."""


class StartStop:
    """``with x:`` for things with start() and stop(): a failed start stops what did start."""

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def free_port() -> int:
    """A port that is free on 127.0.0.1 right now (the caller binds it soon after)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        # As the servers bind (Go and etcd set SO_REUSEADDR): connections of a stopped server
        # lingering in TIME_WAIT do not keep its port from a restart.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return "(no log written)"
    return "\n".join(text.splitlines()[-lines:]) or "(log is empty)"


# Substrings in a component's log that explain a failed start better than its exit code.
_HINTS = {
    "address already in use": "port clash: another process holds one of its ports",
    "bind: permission denied": "cannot bind its port",
    "no such file or directory": "a file it needs is missing",
    "no stages found": "kwok needs Stage files (--config)",
}


@dataclass
class Component:
    """One process of the plane (etcd, kube-apiserver, ...)."""

    name: str
    argv: Sequence[str]
    log_path: Path
    env: dict[str, str] | None = None
    ports: Sequence[int] = ()
    proc: subprocess.Popen[bytes] | None = field(default=None, init=False)
    started_at: float = field(default=0.0, init=False)

    def start(self) -> None:
        binary = Path(self.argv[0])
        if not binary.is_file() or not os.access(binary, os.X_OK):
            raise PlaneError(
                f"{self.name}: binary {binary} is missing or not executable "
                "(run hack/build-binaries.sh or set SPECDECODE_BIN_DIR)"
            )
        busy = [p for p in self.ports if not port_is_free(p)]
        if busy:
            raise PlaneError(f"{self.name}: port(s) {busy} on 127.0.0.1 are already in use")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        env = {**os.environ, **(self.env or {})}
        self.proc = subprocess.Popen(
            list(self.argv),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,  # own process group: teardown kills its children too
        )
        log.close()
        self.started_at = time.monotonic()

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def failure(self, why: str) -> PlaneError:
        log = tail(self.log_path)
        hint = next((h for k, h in _HINTS.items() if k in log.lower()), None)
        reason = f"{why}; {hint}" if hint else why
        return PlaneError(f"{self.name}: {reason}\n--- {self.log_path} (tail) ---\n{log}")

    def wait_ready(self, probe: Callable[[], bool], timeout: float) -> float:
        """Poll ``probe`` until it is true; returns seconds since start."""
        deadline = time.monotonic() + timeout
        while True:
            if not self.alive:
                code = self.proc.returncode if self.proc else None
                raise self.failure(f"exited during start-up with code {code}")
            try:
                if probe():
                    return time.monotonic() - self.started_at
            except Exception:
                pass
            if time.monotonic() > deadline:
                raise self.failure(f"not ready after {timeout:.0f}s")
            time.sleep(0.1)

    def stop(self, grace: float = 10.0) -> None:
        if self.proc is None:
            return
        pgid = self.proc.pid
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(pgid, sig)
            except ProcessLookupError:
                break
            try:
                self.proc.wait(timeout=wait)
                # The leader is gone; sweep any straggler left in the group.
                os.killpg(pgid, signal.SIGKILL)
            except ProcessLookupError:
                break
            except subprocess.TimeoutExpired:
                continue
            break
        self.proc = None
