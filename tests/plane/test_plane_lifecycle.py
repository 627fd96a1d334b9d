"""Start-up failures are reported with the component and why; teardown leaves nothing behind."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from specdecode_runtime.localplane import Binaries, GPUNodePool, LocalPlane, PlaneError, locate
from specdecode_runtime.localplane.binaries import REQUIRED

pytestmark = pytest.mark.plane


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead for our purposes.
    state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    return state != "Z"


def _bin_dir_with(tmp_path: Path, real: Binaries, replace: dict[str, str]) -> Binaries:
    d = tmp_path / "bin"
    d.mkdir()
    for name in REQUIRED:
        if name in replace:
            script = d / name
            script.write_text("#!/bin/sh\n" + replace[name])
            script.chmod(script.stat().st_mode | stat.S_IEXEC)
        else:
            (d / name).symlink_to(real[name])
    (d / "kwok-stages").symlink_to(real.directory / "kwok-stages")
    return Binaries(directory=d, kubectl=real.kubectl)


def test_second_plane_runs_beside_the_first_and_teardown_leaves_no_process(
    plane: LocalPlane, tmp_path: Path
) -> None:
    other = LocalPlane(workdir=tmp_path / "p2", binaries=plane.binaries,
                       nodes=GPUNodePool(count=1, gpus_per_node=4))
    with other:
        assert other.apiserver_port != plane.apiserver_port
        nodes = other.kubectl("get", "nodes", "-o", "name").stdout.split()
        assert nodes == ["node/gpu-node-0"]
        pids = [c.proc.pid for c in other.components if c.proc]
        assert len(pids) == 5  # etcd, apiserver, controller-manager, scheduler, kwok
        assert all(_pid_alive(p) for p in pids)
        print("second plane timings:", {k: round(v, 2) for k, v in other.timings.items()})
    assert not any(_pid_alive(p) for p in pids)
    # The session's plane is untouched.
    plane.check_alive()
    plane.kubectl("get", "--raw", "/readyz")


def test_component_that_dies_at_start_is_named_with_its_log(
    plane: LocalPlane, tmp_path: Path
) -> None:
    assert plane.binaries is not None
    broken = _bin_dir_with(tmp_path, plane.binaries, {
        "etcd": "echo 'listen tcp 127.0.0.1:2379: bind: address already in use' >&2; exit 3\n",
    })
    p = LocalPlane(workdir=tmp_path / "p", binaries=broken)
    with pytest.raises(PlaneError) as err:
        p.start()
    p.stop()
    msg = str(err.value)
    assert msg.startswith("etcd: exited during start-up with code 3")
    assert "port clash" in msg
    assert "bind: address already in use" in msg  # the log tail


def test_broken_apiserver_binary_fails_with_its_log(plane: LocalPlane, tmp_path: Path) -> None:
    assert plane.binaries is not None
    broken = _bin_dir_with(tmp_path, plane.binaries, {
        "kube-apiserver": "echo 'Error: unknown flag: --bogus' >&2; exit 1\n",
    })
    p = LocalPlane(workdir=tmp_path / "p", binaries=broken)
    with pytest.raises(PlaneError) as err:
        p.start()
    p.stop()
    assert "kube-apiserver: exited during start-up with code 1" in str(err.value)
    assert "unknown flag: --bogus" in str(err.value)
    # etcd was started first and must have been torn down with the failed plane.
    assert not any(c.alive for c in p.components)


def test_missing_binary_is_an_error_naming_it(
    plane: LocalPlane, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert plane.binaries is not None
    d = tmp_path / "partial"
    d.mkdir()
    (d / "etcd").symlink_to(plane.binaries["etcd"])
    monkeypatch.setenv("SPECDECODE_BIN_DIR", str(d))
    with pytest.raises(PlaneError, match="lacks kube-apiserver, kube-controller-manager"):
        locate()
