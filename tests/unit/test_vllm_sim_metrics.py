"""/metrics of the stand-in against real vLLM 0.32 captures (names, types, HELP, labels, buckets,
order), plus the counter semantics the autotuner relies on."""

from __future__ import annotations

import itertools
import re
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

import specdecode_runtime.vllm_sim as vllm_sim
from specdecode_runtime.vllm_sim.acceptance import constant, parse_profile
from specdecode_runtime.vllm_sim.engine import EngineConfig, EngineCore, SimRequest
from specdecode_runtime.vllm_sim.metrics import NOT_EMITTED, CacheInfo, VllmMetrics
from specdecode_runtime.vllm_sim.spec_config import validate

REFERENCE = Path(vllm_sim.__file__).parent / "reference"
_SPEC_COUNTERS = (
    "vllm:spec_decode_num_drafts", "vllm:spec_decode_num_draft_tokens",
    "vllm:spec_decode_num_accepted_tokens", "vllm:spec_decode_num_accepted_tokens_per_pos",
)
# The four counters and their _created gauges (the parser reports those as gauge families).
SPEC_FAMILIES = {*_SPEC_COUNTERS, *(f"{n}_created" for n in _SPEC_COUNTERS)}


def capture(name: str) -> str:
    return (REFERENCE / name).read_text()


def sim_text(k: int | None, *, log_stats: bool = True, max_model_len: int = 512) -> str:
    # The captures' server: served as "tiny", --max-model-len 512, 64 MiB KV cache (65536 tok).
    return VllmMetrics("tiny", k, CacheInfo(65536, max_model_len),
                       log_stats=log_stats).exposition().decode()


def families(text: str) -> dict[str, dict[str, Any]]:
    """name -> type, HELP, label-name sets and histogram bounds, in exposition order."""
    out: dict[str, dict[str, Any]] = {}
    for fam in text_string_to_metric_families(text):
        bounds = sorted({float(s.labels["le"]) for s in fam.samples if "le" in s.labels})
        out[fam.name] = {
            "type": fam.type, "help": fam.documentation,
            "labels": {tuple(sorted(s.labels)) for s in fam.samples},
            "bounds": bounds,
            "positions": sorted({s.labels["position"] for s in fam.samples
                                 if "position" in s.labels}, key=int),
        }
    return out


@pytest.mark.parametrize(("k", "capture_name"), [(5, "metrics-noisy-k5.txt"),
                                                  (3, "metrics-exact-k3.txt"),
                                                  (None, "metrics-nospec.txt")])
def test_families_match_the_real_server(k: int | None, capture_name: str) -> None:
    real, sim = families(capture(capture_name)), families(sim_text(k))
    # Everything the stand-in emits exists in vLLM, identically.
    assert set(sim) <= set(real), set(sim) - set(real)
    for name, fam in sim.items():
        if name.startswith(("python_", "process_")):
            assert fam["type"] == real[name]["type"]
            continue
        assert fam == real[name], name
    # Only the documented families (and their _created gauges) are missing (docs/vllm-sim.md).
    assert {n.removesuffix("_created") for n in set(real) - set(sim)} == set(NOT_EMITTED)
    # Same order as vLLM registers them.
    vllm_real = [n for n in real if n.startswith("vllm:")]
    assert [n for n in sim if n.startswith("vllm:")] == vllm_real


def test_spec_decode_families_exist_only_with_speculation() -> None:
    sim_spec, sim_off = families(sim_text(5)), families(sim_text(None))
    real_spec = families(capture("metrics-noisy-k5.txt"))
    real_off = families(capture("metrics-nospec.txt"))
    assert {n for n in sim_spec if n.startswith("vllm:spec_decode")} == SPEC_FAMILIES
    assert {n for n in real_spec if n.startswith("vllm:spec_decode")} == SPEC_FAMILIES
    for name in SPEC_FAMILIES:
        assert sim_spec[name] == real_spec[name]
    assert not [n for n in sim_off if "spec_decode" in n]
    assert not [n for n in real_off if "spec_decode" in n]


@pytest.mark.parametrize("k", [1, 3, 7])
def test_per_position_series_only_for_the_startup_k(k: int) -> None:
    fam = families(sim_text(k))["vllm:spec_decode_num_accepted_tokens_per_pos"]
    assert fam["positions"] == [str(i) for i in range(k)]


def _series_lines(text: str) -> list[str]:
    """Every vllm:* sample line without its value (and without _created timestamps)."""
    return [line.rsplit(" ", 1)[0] for line in text.splitlines()
            if line.startswith("vllm:") and not line.startswith("vllm:cache_config_info")]


def test_exposition_lines_are_byte_identical_except_values() -> None:
    """Label order, quoting, bucket formatting, _created pairing: as prometheus_client in vLLM."""
    assert _series_lines(sim_text(5)) == _series_lines(capture("metrics-noisy-k5.txt"))
    assert _series_lines(sim_text(None)) == _series_lines(capture("metrics-nospec.txt"))
    # HELP/TYPE lines too.
    def meta(text: str) -> list[str]:
        return [line for line in text.splitlines() if line.startswith("# ") and " vllm:" in line]
    assert meta(sim_text(5)) == meta(capture("metrics-noisy-k5.txt"))


def test_token_buckets_follow_max_model_len() -> None:
    fam = families(sim_text(None, max_model_len=32768))["vllm:request_prompt_tokens"]
    assert fam["bounds"][-2:] == [20000.0, float("inf")]
    cache = [line for line in sim_text(None).splitlines()
             if line.startswith("vllm:cache_config_info")]
    real = [line for line in capture("metrics-nospec.txt").splitlines()
            if line.startswith("vllm:cache_config_info")]
    names = re.compile(r'(\w+)="')
    assert names.findall(cache[0]) == names.findall(real[0])


def values(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples
            if s.name.startswith("vllm:")}


def test_counters_start_at_zero_each_with_created() -> None:
    v = values(sim_text(4))
    totals = {k: x for k, x in v.items() if k[0].endswith("_total") and "iteration" not in k[0]}
    assert len(totals) > 30
    assert all(x == 0 for x in totals.values())
    for name, labels in totals:
        assert (name[: -len("_total")] + "_created", labels) in v


def test_counters_are_monotonic_and_consistent_under_traffic() -> None:
    k = 3
    spec = validate({"method": "mtp", "num_speculative_tokens": k}, "Qwen/Qwen3-Next")
    engine = EngineCore(EngineConfig(spec=spec, schedule=constant(parse_profile("chat")),
                                     max_num_seqs=8))
    metrics = VllmMetrics("tiny", k, CacheInfo(65536, 512))
    snapshots = [values(metrics.exposition().decode())]
    now, n = 0.0, 0
    for _round in range(5):
        for _ in range(6):
            engine.add(SimRequest(f"r{n}", prompt_tokens=9, max_tokens=40, arrival=now))
            n += 1
        while engine.has_work():
            out = engine.step(now)
            assert out is not None
            metrics.observe_step(out)
            now = out.end
        snapshots.append(values(metrics.exposition().decode()))
    monotonic = [key for key in snapshots[0]
                 if key[0].endswith(("_total", "_count", "_sum", "_bucket"))]
    for before, after in itertools.pairwise(snapshots):
        for key in monotonic:
            assert after[key] >= before[key], key
    last = snapshots[-1]
    lv = (("engine", "0"), ("model_name", "tiny"))
    assert last[("vllm:generation_tokens_total", lv)] == 30 * 40
    assert last[("vllm:prompt_tokens_total", lv)] == 30 * 9
    assert last[("vllm:request_success_total", (*lv[:1], ("finished_reason", "length"),
                                                 lv[1]))] == 30
    drafts = last[("vllm:spec_decode_num_drafts_total", lv)]
    assert last[("vllm:spec_decode_num_draft_tokens_total", lv)] == k * drafts
    assert sum(last[("vllm:spec_decode_num_accepted_tokens_per_pos_total",
                     (*lv, ("position", str(i))))] for i in range(k)) == \
        last[("vllm:spec_decode_num_accepted_tokens_total", lv)]
    # One inter-token latency observation per decode request-step, as in the captures.
    assert last[("vllm:inter_token_latency_seconds_count", lv)] == drafts
    assert last[("vllm:num_requests_running", lv)] == 0


def test_disable_log_stats_removes_every_vllm_family() -> None:
    fams = families(sim_text(4, log_stats=False))
    assert not [n for n in fams if n.startswith("vllm:")]
    assert "python_gc_objects_collected" in fams and "process_cpu_seconds" in fams
