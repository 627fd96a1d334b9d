"""``specdecode-sim``: the command, compatible with ``vllm serve``.

Parsing lives in serve_args (pure); this module prints errors the way vLLM does and runs the
server. Nothing imports it back, so the dependency runs one way: cli -> serve_args, server.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from ..hardware import PROFILES
from .serve_args import (
    ENV_PREFIX,
    PROG,
    SIM_FLAGS,
    VLLM_VERSION,
    StartupError,
    UsageError,
    parse_args,
)
from .spec_config import SpecConfigError

USAGE = f"""usage: {PROG} serve MODEL [vLLM serve flags] [--sim-* flags]
       {PROG} --model MODEL [flags]      (python -m vllm.entrypoints.openai.api_server form)

A vLLM {VLLM_VERSION} stand-in: OpenAI API + vLLM's /metrics, speculative decoding simulated.
vLLM flags used: --host, --port, --served-model-name, --model, --tensor-parallel-size/-tp,
  --max-model-len, --max-num-seqs, --speculative-config/-sc (JSON or --speculative-config.KEY V),
  --disable-log-stats, --seed, --api-key, --gpu-memory-utilization, --kv-cache-memory-bytes.
  Any other flag is accepted and logged.
Simulator flags (env {ENV_PREFIX}<NAME>, e.g. --sim-time-scale -> {ENV_PREFIX}TIME_SCALE):
""" + "".join(f"  {n:<22} {h} (default: {d})\n" for n, (_, d, h) in SIM_FLAGS.items()) + (
    "Hardware worlds (--sim-hardware):\n"
    + "".join(f"  {p.name:<17} {p.description}\n" for p in PROFILES.values()))


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in argv):
        print(USAGE, end="")
        return 0
    if argv in (["--version"], ["-v"]):
        print(VLLM_VERSION)
        return 0
    try:
        args = parse_args(argv)
    except UsageError as e:
        print(f"usage: {PROG} serve MODEL [options]", file=sys.stderr)
        print(f"{PROG} serve: error: {e}", file=sys.stderr)
        return 2
    except SpecConfigError as e:
        print(e.render(), file=sys.stderr)
        return 1
    except StartupError as e:
        print(str(e), file=sys.stderr)
        return 1
    from .server import run  # imported late: aiohttp is only needed to serve

    return run(args)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
