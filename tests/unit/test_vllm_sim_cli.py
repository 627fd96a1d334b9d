"""The command line takes what `vllm serve` takes; --sim-* flags also come from the env."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from specdecode_runtime.hardware import DEFAULT_SIM
from specdecode_runtime.vllm_sim.cli import main
from specdecode_runtime.vllm_sim.serve_args import (
    DEFAULT_MAX_MODEL_LEN,
    StartupError,
    UsageError,
    parse_args,
    parse_human_int,
)

NO_ENV: dict[str, str] = {}


def test_serve_form_and_defaults() -> None:
    a = parse_args(["serve", "google/gemma-4-31B-it"], NO_ENV)
    assert a.model == "google/gemma-4-31B-it"
    assert a.model_name == "google/gemma-4-31B-it"  # no --served-model-name: the model path
    assert (a.host, a.port, a.max_num_seqs, a.tensor_parallel_size) == ("0.0.0.0", 8000, 256, 1)
    assert a.max_model_len == DEFAULT_MAX_MODEL_LEN
    assert a.speculative_config is None and not a.disable_log_stats
    assert a.sim.time_scale == 1.0 and a.sim.startup_delay == 0.0 and a.sim.seed == 0


def test_api_server_form_from_the_fixture_commands() -> None:
    # the exact-k3 capture's command line (reference/README.md)
    argv = ["--model", "/models/target", "--served-model-name", "tiny", "--host", "127.0.0.1",
            "--port", "8022", "--dtype", "bfloat16", "--max-model-len", "512", "--enforce-eager",
            "--kv-cache-memory-bytes", "67108864", "--speculative-config",
            '{"method":"draft_model","model":"/models/draft_exact","num_speculative_tokens":3}']
    a = parse_args(argv, NO_ENV)
    assert (a.model, a.model_name, a.host, a.port, a.max_model_len) == (
        "/models/target", "tiny", "127.0.0.1", 8022, 512)
    assert a.speculative_config is not None
    assert a.speculative_config.num_speculative_tokens == 3
    assert a.kv_cache_memory_bytes == "67108864"
    assert a.ignored == ("--dtype bfloat16", "--enforce-eager")


def test_operator_rendered_args() -> None:
    # tests/operator/test_reconcile_live.py: what the operator puts after `vllm serve`.
    argv = ["serve", "google/gemma-4-31B-it", "--served-model-name", "gemma-4-31b", "--host",
            "0.0.0.0", "--port", "8000", "--tensor-parallel-size", "1", "--max-model-len",
            "32768", "--speculative-config",
            '{"method":"mtp","model":"google/gemma-4-31B-it-assistant","num_speculative_tokens":6}',
            "--max-num-seqs=128", "--gpu-memory-utilization=0.92"]
    a = parse_args(argv, NO_ENV)
    assert (a.model_name, a.max_model_len, a.max_num_seqs) == ("gemma-4-31b", 32768, 128)
    assert a.gpu_memory_utilization == "0.92"
    assert a.speculative_config is not None
    assert a.speculative_config.num_speculative_tokens == 6


def test_unknown_flags_with_and_without_values_are_tolerated() -> None:
    a = parse_args(["serve", "--trust-remote-code", "m", "--dtype", "bfloat16",
                    "--enforce-eager", "--gpu-memory-utilization=0.92", "--no-enable-log-requests",
                    "--swap-space", "4", "--enable-chunked-prefill", "--block-size", "16",
                    "--disable-access-log-for-endpoints", "/health", "--hf-token"], NO_ENV)
    assert a.model == "m"
    assert a.ignored == ("--trust-remote-code", "--dtype bfloat16", "--enforce-eager",
                         "--no-enable-log-requests", "--swap-space 4",
                         "--enable-chunked-prefill", "--block-size 16",
                         "--disable-access-log-for-endpoints /health", "--hf-token")


def test_served_model_names_and_aliases() -> None:
    a = parse_args(["serve", "m", "--served-model-name", "a", "b", "-tp", "4", "-sc",
                    '{"method":"mtp","num_speculative_tokens":2}'], NO_ENV)
    assert a.served_model_names == ("a", "b") and a.model_name == "a"
    assert a.tensor_parallel_size == 4
    assert a.speculative_config is not None


def test_dotted_speculative_config_keys() -> None:
    a = parse_args(["serve", "m", "--speculative-config.method", "ngram",
                    "--speculative-config.num_speculative_tokens", "5",
                    "--speculative-config.prompt_lookup_max=4"], NO_ENV)
    assert a.speculative_config is not None
    assert dict(a.speculative_config.raw) == {
        "method": "ngram", "num_speculative_tokens": 5, "prompt_lookup_max": 4}


def test_disable_log_stats_and_human_readable_lengths() -> None:
    assert parse_args(["serve", "m", "--disable-log-stats"], NO_ENV).disable_log_stats
    assert parse_args(["serve", "m", "--max-model-len", "1K"], NO_ENV).max_model_len == 1024
    assert parse_args(["serve", "m", "--max-model-len", "auto"], NO_ENV).max_model_len == \
        DEFAULT_MAX_MODEL_LEN
    assert parse_human_int("25.6k") == 25600 and parse_human_int("1k") == 1000


def test_sim_flags_and_env() -> None:
    env = {"SPECDECODE_SIM_SCHEDULE": "0:code,300:creative", "SPECDECODE_SIM_SEED": "7",
           "SPECDECODE_SIM_STARTUP_DELAY": "2.5", "SPECDECODE_SIM_TIME_SCALE": "0.01",
           "SPECDECODE_SIM_PROFILE": "gsm8k"}
    a = parse_args(["serve", "m"], env)
    assert a.sim.schedule.describe() == "0:code,300:creative"
    assert (a.sim.seed, a.sim.startup_delay, a.sim.time_scale) == (7, 2.5, 0.01)
    # Flags win over env.
    b = parse_args(["serve", "m", "--sim-seed", "3", "--sim-schedule", "60:creative"], env)
    assert b.sim.seed == 3
    # A schedule that starts later runs the --sim-profile (here from env) before it.
    assert b.sim.schedule.describe() == "0:gsm8k,60:creative"
    assert parse_args(["serve", "m", "--seed", "11"], NO_ENV).sim.seed == 11


@pytest.mark.parametrize("argv", [
    ["serve"],  # no model
    ["serve", "m", "--port"],
    ["serve", "m", "--port", "http"],
    ["serve", "m", "--max-num-seqs", "0"],
    ["serve", "m", "extra-positional"],
    ["serve", "m", "--sim-profile", "nope"],
    ["serve", "m", "--sim-time-scale", "0"],
    ["serve", "m", "--speculative-config", "{oops"],
])
def test_usage_errors(argv: list[str]) -> None:
    with pytest.raises(UsageError):
        parse_args(argv, NO_ENV)


def test_kubernetes_service_link_trap() -> None:
    """vLLM refuses VLLM_PORT=tcp://... (a Service named vllm); so does the stand-in."""
    with pytest.raises(StartupError, match="appears to be a URI"):
        parse_args(["serve", "m"], {"VLLM_PORT": "tcp://10.96.0.12:8000"})


def test_non_default_args_are_typed_for_the_log() -> None:
    a = parse_args(["serve", "m", "--port", "8010", "--speculative-config",
                    json.dumps({"method": "ngram", "num_speculative_tokens": 2})], NO_ENV)
    assert a.non_default["port"] == 8010
    assert a.non_default["speculative_config"] == {"method": "ngram", "num_speculative_tokens": 2}


def test_hardware_world_by_name_flag_or_env_default_not_the_h200() -> None:
    assert parse_args(["serve", "m"], NO_ENV).sim.hardware.name == DEFAULT_SIM != "h200"
    assert parse_args(["serve", "m", "--sim-hardware", "moe"], NO_ENV).sim.hardware.name == "moe"
    env = {"SPECDECODE_SIM_HARDWARE": "small-gpu"}
    assert parse_args(["serve", "m"], env).sim.hardware.name == "small-gpu"
    with pytest.raises(UsageError, match=r"--sim-hardware: unknown hardware 'a100'; known: "):
        parse_args(["serve", "m", "--sim-hardware", "a100"], NO_ENV)


def test_cost_file_is_a_world_of_its_own(tmp_path: Path) -> None:
    rows = [{"B": b, "ctx": 1024, "q": q, "ttarget_ms": 10.0 * b + q, "tdraft_ms": 1.0}
            for b in (1, 8) for q in (1, 2, 4)]
    f = tmp_path / "mine.json"
    f.write_text(json.dumps({"rows": rows}))
    hw = parse_args(["serve", "m", "--sim-cost-file", str(f)], NO_ENV).sim.hardware
    assert hw.step_seconds(1, 0) == pytest.approx(0.011)
    with pytest.raises(UsageError, match="both given"):
        parse_args(["serve", "m", "--sim-cost-file", str(f), "--sim-hardware", "moe"], NO_ENV)
    with pytest.raises(UsageError, match="no such file"):
        parse_args(["serve", "m", "--sim-cost-file", str(tmp_path / "nope.json")], NO_ENV)
    f.write_text("{not json")
    with pytest.raises(UsageError, match="not a cost table"):
        parse_args(["serve", "m", "--sim-cost-file", str(f)], NO_ENV)


def test_help_lists_the_hardware_worlds(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in ("h200", "h200-perturbed", "moe", "dense-early-knee", "small-gpu", "cpu"):
        assert f"\n  {name} " in out
