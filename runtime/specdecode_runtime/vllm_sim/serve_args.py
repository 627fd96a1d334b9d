"""What ``specdecode-sim`` was asked to run: the ``vllm serve`` command line (and the older
``python -m vllm.entrypoints.openai.api_server --model M``) parsed into ServeArgs. Pure.

vLLM flags the simulator does not use are accepted and logged, so a pod spec written for the
real image runs unchanged. Every --sim-* flag can also come from SPECDECODE_SIM_* in the
environment, because the pod runner passes the container's env, not extra args.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..hardware import DEFAULT_SIM, Hardware, from_table_json, profile
from .acceptance import DEFAULT_PROFILE, ProfileError, Schedule, constant, parse_profile
from .acceptance import parse_schedule as _parse_schedule
from .spec_config import SpecConfig, validate

PROG = "specdecode-sim"
VLLM_VERSION = "0.32.0"
DEFAULT_MAX_MODEL_LEN = 8192  # vLLM reads it from the model config; the sim has none
ENV_PREFIX = "SPECDECODE_SIM_"

# Simulator flags: name -> (type, default, help). Env: SPECDECODE_SIM_<NAME in caps>.
SIM_FLAGS: dict[str, tuple[type, Any, str]] = {
    "--sim-profile": (str, DEFAULT_PROFILE, "acceptance profile: a built-in name, iid:A or "
                      "list:S1/S2/..."),
    "--sim-schedule": (str, None, "profiles over time: SECONDS:PROFILE,... (seconds since ready)"),
    "--sim-schedule-epoch": (float, None, "Unix time the schedule counts from (default: "
                             "readiness); shared by every pod, so a restart keeps the clock"),
    "--sim-seed": (int, None, "seed of acceptance draws and EOS lengths (default: --seed, 0)"),
    "--sim-time-scale": (float, 1.0, "multiply every simulated step duration by this"),
    "--sim-startup-delay": (float, 0.0, "seconds of simulated model loading (port not "
                            "listening)"),
    "--sim-hardware": (str, None, f"step-cost world: a name from specdecode_runtime.hardware "
                       f"(default {DEFAULT_SIM})"),
    "--sim-cost-file": (str, None, "your own measured step-cost table (h200-verify-cost.json "
                        "format) instead of --sim-hardware"),
    "--sim-eos-mean-tokens": (float, 256.0, "mean output length of requests that do not set "
                              "ignore_eos"),
    "--sim-kv-cache-tokens": (int, 131072, "KV cache capacity in tokens (kv_cache_usage_perc)"),
    "--sim-log-interval": (float, 10.0, "seconds between the engine stats log lines"),
}

# vLLM flags the sim reads (value-taking). Aliases map to the canonical name.
VALUE_FLAGS = {
    "--host", "--port", "--served-model-name", "--model", "--tensor-parallel-size",
    "--max-model-len", "--max-num-seqs", "--speculative-config", "--gpu-memory-utilization",
    "--kv-cache-memory-bytes", "--seed", "--api-key", *SIM_FLAGS,
}
ALIASES = {"-tp": "--tensor-parallel-size", "-sc": "--speculative-config"}
MULTI_VALUE = {"--served-model-name", "--api-key"}  # nargs="+"
BOOL_FLAGS = {"--disable-log-stats", "--enable-log-stats"}
# vLLM 0.32 boolean flags that do not start with --enable-/--disable-/--no- (from
# `vllm serve --help`); needed to tell `--flag MODEL` from `--flag VALUE`.
VLLM_BOOLEANS = {
    "--aggregate-engine-logging", "--allow-credentials", "--allow-deprecated-quantization",
    "--async-scheduling", "--cohere-is-reasoning-model", "--cudagraph-metrics",
    "--data-parallel-external-lb", "--data-parallel-hybrid-lb",
    "--data-parallel-multi-port-external-lb", "--dcp-q-replicate", "--enforce-eager",
    "--exclude-tools-when-tool-choice-none", "--fail-on-environ-validation",
    "--fully-sharded-loras", "--grpc", "--headless", "--interleave-mm-strings",
    "--jit-monitor-verbose", "--kv-cache-metrics", "--kv-sharing-fast-prefill",
    "--language-model-only", "--log-error-stack", "--long-prefill-token-threshold-adaptive",
    "--mm-device-do-normalize", "--mm-encoder-only", "--numa-bind",
    "--ray-workers-use-nsight", "--return-sampling-mask", "--return-tokens-as-token-ids",
    "--scheduler-reserve-full-isl", "--skip-mm-profiling", "--skip-tokenizer-init",
    "--sleep-mode-offload-cudagraph", "--specialize-active-lora", "--swa-bounded-replay",
    "--tokens-only", "--trust-remote-code", "--trust-request-chat-template",
    "--trust-request-mm-kwargs", "--use-fp64-gumbel", "--use-replayssm", "--use-tqdm-on-load",
    "-dph", "-dpe",
}
VLLM_VALUE_EXCEPTIONS = {"--disable-access-log-for-endpoints"}


class UsageError(ValueError):
    """argparse-style error: exit status 2."""


class StartupError(ValueError):
    """vLLM would fail while starting: exit status 1, message already vLLM-shaped."""


@dataclass(frozen=True)
class SimOptions:
    schedule: Schedule
    seed: int = 0
    time_scale: float = 1.0
    startup_delay: float = 0.0
    cost_file: str | None = None
    hardware: Hardware = field(default_factory=lambda: profile(DEFAULT_SIM))
    eos_mean_tokens: float = 256.0
    kv_cache_tokens: int = 131072
    log_interval: float = 10.0
    schedule_epoch: float | None = None


@dataclass(frozen=True)
class ServeArgs:
    model: str
    served_model_names: tuple[str, ...]
    sim: SimOptions
    host: str = "0.0.0.0"
    port: int = 8000
    tensor_parallel_size: int = 1
    max_model_len: int = DEFAULT_MAX_MODEL_LEN
    max_num_seqs: int = 256
    speculative_config: SpecConfig | None = None
    disable_log_stats: bool = False
    api_keys: tuple[str, ...] = ()
    gpu_memory_utilization: str = "0.92"
    kv_cache_memory_bytes: str | None = None
    non_default: dict[str, Any] = field(default_factory=dict)  # as vLLM logs them
    ignored: tuple[str, ...] = ()  # vLLM flags without effect here, as given

    @property
    def model_name(self) -> str:
        """The model_name metric label: the first served name, else the model path."""
        return self.served_model_names[0]


def parse_human_int(text: str, *, allow_auto: bool = False) -> int:
    """vLLM's human-readable ints: 1k = 1000, 1K = 1024, 25.6k = 25600 (-1/auto if allowed)."""
    t = text.strip()
    if allow_auto and t in ("-1", "auto"):
        return -1
    m = re.fullmatch(r"([0-9]*\.?[0-9]+)([kKmMgG]?)", t)
    if not m:
        raise ValueError(text)
    number, suffix = float(m.group(1)), m.group(2)
    scale = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9,
             "K": 2**10, "M": 2**20, "G": 2**30}[suffix]
    value = number * scale
    if not value.is_integer() and suffix == "":
        raise ValueError(text)
    return int(value)


def _is_value_token(tok: str) -> bool:
    return not tok.startswith("-") or re.fullmatch(r"-\d+(\.\d+)?", tok) is not None


def _is_unknown_boolean(name: str) -> bool:
    if name in VLLM_VALUE_EXCEPTIONS:
        return False
    return name in VLLM_BOOLEANS or name.startswith(("--enable-", "--disable-", "--no-"))


def _tokenize(argv: Sequence[str]) -> tuple[str | None, dict[str, list[str]], list[str], bool,
                                             dict[str, Any]]:
    """(positional model, known flag values, ignored flags as given, disable_log_stats,
    dotted --speculative-config.KEY values)."""
    args = list(argv)
    if args and args[0] == "serve":
        args = args[1:]
    positional: str | None = None
    values: dict[str, list[str]] = {}
    ignored: list[str] = []
    dotted: dict[str, Any] = {}
    disable_stats = False
    i = 0
    while i < len(args):
        tok = args[i]
        i += 1
        if tok == "--":
            continue
        if not tok.startswith("-"):
            if positional is None:
                positional = tok
                continue
            raise UsageError(f"unrecognized arguments: {tok}")
        name, eq, inline = tok.partition("=")
        name = ALIASES.get(name, name)
        if name.startswith("--speculative-config."):
            key = name[len("--speculative-config."):]
            if not eq:
                if i >= len(args):
                    raise UsageError(f"argument {name}: expected one argument")
                inline, i = args[i], i + 1
            try:
                dotted[key] = json.loads(inline)
            except ValueError:
                dotted[key] = inline
            continue
        if name in BOOL_FLAGS:
            if eq:
                raise UsageError(f"argument {name}: ignored explicit argument '{inline}'")
            disable_stats = name == "--disable-log-stats" or (
                disable_stats and name != "--enable-log-stats")
            continue
        if name in VALUE_FLAGS:
            if eq:
                got = [inline]
            else:
                got = []
                while i < len(args) and _is_value_token(args[i]):
                    got.append(args[i])
                    i += 1
                    if name not in MULTI_VALUE:
                        break
                if not got:
                    what = "at least one argument" if name in MULTI_VALUE else "one argument"
                    raise UsageError(f"argument {name}: expected {what}")
            values[name] = got
            continue
        # A vLLM flag the simulator has no use for: keep it (and its value) out of the way.
        if eq:
            ignored.append(tok)
        elif (not _is_unknown_boolean(name) and i < len(args) and _is_value_token(args[i])):
            ignored.append(f"{tok} {args[i]}")
            i += 1
        else:
            ignored.append(tok)
    return positional, values, ignored, disable_stats, dotted


def _shown(text: str) -> Any:
    """A flag value as vLLM's "non-default args" log line shows it (typed, JSON parsed)."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def _one(values: dict[str, list[str]], name: str) -> str | None:
    got = values.get(name)
    return got[-1] if got else None


def _typed(name: str, text: str, kind: type) -> Any:
    try:
        return kind(text)
    except ValueError:
        raise UsageError(f"argument {name}: invalid {kind.__name__} value: '{text}'") from None


def _sim_value(values: dict[str, list[str]], env: Mapping[str, str], name: str) -> Any:
    kind, default, _ = SIM_FLAGS[name]
    text = _one(values, name)
    source = name
    if text is None:
        env_name = ENV_PREFIX + name[len("--sim-"):].upper().replace("-", "_")
        text, source = env.get(env_name), env_name
    if text is None or text == "":
        return default
    return _typed(source, text, kind)


def parse_args(argv: Sequence[str], env: Mapping[str, str] | None = None) -> ServeArgs:
    """ServeArgs from a vLLM command line; UsageError / StartupError / SpecConfigError."""
    env = os.environ if env is None else env
    positional, values, ignored, disable_stats, dotted = _tokenize(argv)
    model = positional or _one(values, "--model")
    if model is None:
        raise UsageError("the following arguments are required: model_tag (or --model)")

    def int_flag(name: str, default: int, minimum: int) -> int:
        text = _one(values, name)
        if text is None:
            return default
        try:
            v = parse_human_int(text) if name == "--max-model-len" else int(text)
        except ValueError:
            raise UsageError(f"argument {name}: invalid int value: '{text}'") from None
        if v < minimum:
            raise UsageError(f"argument {name}: must be >= {minimum}, got {v}")
        return v

    port = int_flag("--port", 8000, 0)
    if port > 65535:
        raise UsageError(f"argument --port: {port} is not a valid port")
    tp = int_flag("--tensor-parallel-size", 1, 1)
    max_model_len = DEFAULT_MAX_MODEL_LEN
    if _one(values, "--max-model-len") is not None:
        text = _one(values, "--max-model-len") or ""
        try:
            max_model_len = parse_human_int(text, allow_auto=True)
        except ValueError:
            raise UsageError(f"argument --max-model-len: invalid value: '{text}'") from None
        if max_model_len == -1:
            max_model_len = DEFAULT_MAX_MODEL_LEN
        elif max_model_len < 1:
            raise UsageError(f"argument --max-model-len: must be >= 1, got {max_model_len}")
    max_num_seqs = int_flag("--max-num-seqs", 256, 1)

    spec: SpecConfig | None = None
    spec_text = _one(values, "--speculative-config")
    if spec_text is not None or dotted:
        raw: Any = {}
        if spec_text is not None:
            try:
                raw = json.loads(spec_text)
            except ValueError:
                raise UsageError(f"argument --speculative-config/-sc: invalid loads value: "
                                 f"'{spec_text}'") from None
        if dotted:
            if not isinstance(raw, dict):
                raw = {}
            raw = {**raw, **dotted}
        spec = validate(raw, model, tp)

    port_env = env.get("VLLM_PORT", "")
    if "://" in port_env:
        # The Kubernetes service-link trap (docs/vllm-sim.md): vLLM refuses to start.
        raise StartupError(
            f"ValueError: VLLM_PORT '{port_env}' appears to be a URI. This may be caused by a "
            "Kubernetes service discovery issue, check the warning in: "
            "https://docs.vllm.ai/en/stable/serving/env_vars.html")

    try:
        schedule_text = _sim_value(values, env, "--sim-schedule")
        profile = parse_profile(_sim_value(values, env, "--sim-profile"))
        schedule = _parse_schedule(schedule_text) if schedule_text else constant(profile)
        if schedule_text and schedule.entries[0][0] > 0:
            schedule = Schedule(((0.0, profile), *schedule.entries))
    except ProfileError as e:
        raise UsageError(str(e)) from None
    seed = _sim_value(values, env, "--sim-seed")
    if seed is None:
        seed = int(_one(values, "--seed") or 0)
    cost_file = _sim_value(values, env, "--sim-cost-file")
    hardware = _hardware(_sim_value(values, env, "--sim-hardware"), cost_file)
    sim = SimOptions(
        schedule=schedule, seed=seed,
        time_scale=_sim_value(values, env, "--sim-time-scale"),
        startup_delay=_sim_value(values, env, "--sim-startup-delay"),
        cost_file=cost_file, hardware=hardware,
        eos_mean_tokens=_sim_value(values, env, "--sim-eos-mean-tokens"),
        kv_cache_tokens=_sim_value(values, env, "--sim-kv-cache-tokens"),
        log_interval=_sim_value(values, env, "--sim-log-interval"),
        schedule_epoch=_sim_value(values, env, "--sim-schedule-epoch"),
    )
    if sim.time_scale <= 0:
        raise UsageError("--sim-time-scale must be > 0")
    if sim.kv_cache_tokens < 1:
        raise UsageError("--sim-kv-cache-tokens must be >= 1")

    api_keys = tuple(values.get("--api-key") or ())
    if not api_keys and env.get("VLLM_API_KEY"):
        api_keys = (env["VLLM_API_KEY"],)
    served = tuple(values.get("--served-model-name") or (model,))
    non_default: dict[str, Any] = {"model": model}
    for name, got in values.items():
        if not name.startswith("--sim-"):
            shown = [_shown(v) for v in got]
            non_default[name[2:].replace("-", "_")] = shown if name in MULTI_VALUE else shown[-1]
    if disable_stats:
        non_default["disable_log_stats"] = True
    return ServeArgs(
        model=model, served_model_names=served, sim=sim,
        host=_one(values, "--host") or "0.0.0.0", port=port, tensor_parallel_size=tp,
        max_model_len=max_model_len, max_num_seqs=max_num_seqs, speculative_config=spec,
        disable_log_stats=disable_stats, api_keys=api_keys,
        gpu_memory_utilization=_one(values, "--gpu-memory-utilization") or "0.92",
        kv_cache_memory_bytes=_one(values, "--kv-cache-memory-bytes"),
        non_default=non_default, ignored=tuple(ignored))


def _hardware(name: str | None, cost_file: str | None) -> Hardware:
    """The world the engine plays: a named profile, or a measured table from a file."""
    if name and cost_file:
        raise UsageError("--sim-hardware and --sim-cost-file both given; use one")
    if cost_file:
        path = Path(cost_file)
        if not path.is_file():
            raise UsageError(f"--sim-cost-file: {cost_file}: no such file")
        try:
            return from_table_json(path.name, path.read_text())
        except (ValueError, KeyError, TypeError) as e:
            raise UsageError(f"--sim-cost-file: {cost_file}: not a cost table ({e})") from None
    try:
        return profile(name or DEFAULT_SIM)
    except ValueError as e:
        raise UsageError(f"--sim-hardware: {e}") from None
