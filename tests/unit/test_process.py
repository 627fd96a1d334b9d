"""Process handling of the local plane, on plain shell processes (no Kubernetes needed)."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import pytest

from specdecode_runtime.localplane.process import Component, PlaneError, free_port


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    return state != "Z"


def test_stop_kills_the_whole_process_group(tmp_path: Path) -> None:
    pidfile = tmp_path / "child.pid"
    comp = Component(
        "parent",
        ["/bin/sh", "-c", f"sleep 300 & echo $! > {pidfile}; wait"],
        log_path=tmp_path / "parent.log",
    )
    comp.start()
    comp.wait_ready(lambda: pidfile.exists() and pidfile.read_text().strip() != "", 10)
    child = int(pidfile.read_text())
    parent = comp.proc.pid if comp.proc else -1
    assert _alive(child) and _alive(parent)
    comp.stop(grace=2)
    deadline = time.monotonic() + 5
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(child)
    assert not _alive(parent)


def test_missing_binary_names_the_component(tmp_path: Path) -> None:
    comp = Component("kube-scheduler", [str(tmp_path / "nope")], log_path=tmp_path / "s.log")
    with pytest.raises(PlaneError, match=r"^kube-scheduler: binary .*nope is missing"):
        comp.start()


def test_port_clash_is_reported_before_start(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        comp = Component("etcd", ["/bin/true"], log_path=tmp_path / "e.log", ports=[port])
        with pytest.raises(PlaneError, match=rf"etcd: port\(s\) \[{port}\] .* already in use"):
            comp.start()


def test_early_exit_reports_code_hint_and_log_tail(tmp_path: Path) -> None:
    comp = Component(
        "kwok",
        ["/bin/sh", "-c", "echo starting; echo 'Error: no stages found' >&2; exit 2"],
        log_path=tmp_path / "kwok.log",
    )
    comp.start()
    with pytest.raises(PlaneError) as err:
        comp.wait_ready(lambda: False, timeout=10)
    msg = str(err.value)
    assert msg.startswith("kwok: exited during start-up with code 2; kwok needs Stage files")
    assert "starting" in msg and "no stages found" in msg


def test_not_ready_in_time_is_reported(tmp_path: Path) -> None:
    comp = Component("slow", ["/bin/sleep", "30"], log_path=tmp_path / "slow.log")
    comp.start()
    try:
        with pytest.raises(PlaneError, match=r"^slow: not ready after 1s"):
            comp.wait_ready(lambda: False, timeout=1)
    finally:
        comp.stop(grace=1)


def test_free_port_is_bindable() -> None:
    port = free_port()
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))
