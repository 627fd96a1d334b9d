"""The engine core on a virtual clock: counters, acceptance, schedules, throughput vs K and B."""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

import specdecode_runtime.vllm_sim as vllm_sim
from specdecode_runtime.vllm_sim.acceptance import constant, parse_profile, parse_schedule
from specdecode_runtime.vllm_sim.engine import (
    EngineConfig,
    EngineCore,
    SimRequest,
    StepOutput,
    natural_length,
)
from specdecode_runtime.vllm_sim.metrics import CacheInfo, VllmMetrics
from specdecode_runtime.vllm_sim.spec_config import SpecConfig, validate

REFERENCE = Path(vllm_sim.__file__).parent / "reference"


def mtp(k: int, **extra: object) -> SpecConfig:
    return validate({"method": "mtp", "num_speculative_tokens": k, **extra}, "Qwen/Qwen3-Next")


def core(spec: SpecConfig | None, profile: str = "chat", **kw: object) -> EngineCore:
    return EngineCore(EngineConfig(spec=spec, schedule=constant(parse_profile(profile)),
                                   **kw))  # type: ignore[arg-type]


def req(i: int, now: float, max_tokens: int = 64, prompt: int = 10) -> SimRequest:
    return SimRequest(f"r{i}", prompt_tokens=prompt, max_tokens=max_tokens, arrival=now)


def drain(engine: EngineCore, now: float, outs: list[StepOutput] | None = None) -> float:
    while engine.has_work():
        out = engine.step(now)
        assert out is not None
        if outs is not None:
            outs.append(out)
        now = out.end
    return now


def closed_loop(engine: EngineCore, concurrency: int, *, steps: int, max_tokens: int = 256,
                start: float = 0.0) -> tuple[int, float, list[StepOutput]]:
    """Keep ``concurrency`` requests in flight for ``steps`` steps: (tokens, seconds, outputs)."""
    n = 0
    now = start
    for _ in range(concurrency):
        engine.add(req(n, now, max_tokens))
        n += 1
    outs: list[StepOutput] = []
    for _ in range(steps):
        out = engine.step(now)
        assert out is not None
        outs.append(out)
        now = out.end
        for _ in out.finished:
            engine.add(req(n, now, max_tokens))
            n += 1
    return sum(o.generation_tokens for o in outs), now - start, outs


# ---- the real captures, replayed ---------------------------------------------------------------

# The captures' request set (reference/README.md): prompt tokens of the 8 requests (64 tokens
# each, 0-3 one after another, 4-7 at the same time).
PROMPTS = (6, 8, 14, 8, 7, 12, 18, 27)


def replay_fixture_traffic(spec: SpecConfig | None, profile: str) -> str:
    engine = core(spec, profile)
    metrics = VllmMetrics("tiny", spec.num_speculative_tokens if spec else None,
                          CacheInfo(65536, 512))
    now = 0.0
    outs: list[StepOutput] = []
    for i, p in enumerate(PROMPTS[:4]):
        engine.add(req(i, now, 64, p))
        now = drain(engine, now, outs)
    for i, p in enumerate(PROMPTS[4:], start=4):
        engine.add(req(i, now, 64, p))
    drain(engine, now, outs)
    for o in outs:
        metrics.observe_step(o)
    return metrics.exposition().decode()


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name.startswith("vllm:") and not s.name.endswith("_created"):
                out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


COMPARED = (
    "vllm:spec_decode_num_drafts_total", "vllm:spec_decode_num_draft_tokens_total",
    "vllm:spec_decode_num_accepted_tokens_total",
    "vllm:spec_decode_num_accepted_tokens_per_pos_total", "vllm:generation_tokens_total",
    "vllm:prompt_tokens_total", "vllm:request_success_total",
    "vllm:inter_token_latency_seconds_count", "vllm:time_to_first_token_seconds_count",
    "vllm:request_generation_tokens_sum", "vllm:iteration_tokens_total_sum",
    "vllm:num_requests_running",
)


@pytest.mark.parametrize(("capture", "spec", "profile"), [
    ("metrics-exact-k3.txt", validate({"method": "draft_model", "model": "/models/draft_exact",
                                       "num_speculative_tokens": 3}, "/models/target"),
     "perfect"),
    ("metrics-nospec.txt", None, "chat"),
])
def test_fixture_traffic_gives_the_captured_counters(capture: str, spec: SpecConfig | None,
                                                     profile: str) -> None:
    """Same requests as the real vLLM CPU runs, a drafter identical to the target (accepts
    everything) or no speculation: every count the capture has comes out the same."""
    real = samples((REFERENCE / capture).read_text())
    sim = samples(replay_fixture_traffic(spec, profile))
    compared = {k: v for k, v in real.items() if k[0] in COMPARED}
    assert len(compared) >= (15 if spec else 10)
    assert {k: sim.get(k) for k in compared} == compared
    # Engine steps: the real server split the 4 concurrent arrivals over 2 steps, we don't.
    steps = ("vllm:iteration_tokens_total_count", (("engine", "0"), ("model_name", "tiny")))
    assert 0 <= real[steps] - sim[steps] <= 1


# ---- counters and acceptance -------------------------------------------------------------------

def test_counter_identities_and_acceptance_match_the_profile() -> None:
    k = 4
    profile = parse_profile("gsm8k")
    engine = core(mtp(k), "gsm8k", max_num_seqs=16, seed=3)
    _, _, outs = closed_loop(engine, 16, steps=600)
    s = engine.totals.spec
    decode_request_steps = sum(len(o.itls) for o in outs)
    assert s.num_drafts == decode_request_steps  # every decode request-step carried K drafts
    assert s.num_draft_tokens == k * s.num_drafts
    assert len(s.accepted_per_pos) == k
    assert sum(s.accepted_per_pos) == s.num_accepted_tokens
    assert s.accepted_per_pos == sorted(s.accepted_per_pos, reverse=True)
    assert s.num_drafts > 5000
    for i, expected in enumerate(profile.survival(k)):
        assert s.accepted_per_pos[i] / s.num_drafts == pytest.approx(expected, abs=0.03)
    assert s.acceptance_rate() == pytest.approx(profile.acceptance_rate(k), abs=0.02)
    assert s.mean_acceptance_length() == pytest.approx(profile.mean_acceptance_length(k),
                                                       abs=0.08)


def test_same_seed_same_run_other_seed_other_run() -> None:
    def run(seed: int) -> list[int]:
        engine = core(mtp(3), "chat", seed=seed)
        closed_loop(engine, 4, steps=200)
        return engine.totals.spec.accepted_per_pos
    assert run(5) == run(5)
    assert run(5) != run(6)


def test_mean_acceptance_length_falls_when_the_schedule_switches() -> None:
    k = 5
    engine = EngineCore(EngineConfig(spec=mtp(k), schedule=parse_schedule("0:code,60:creative"),
                                     max_num_seqs=8, ready_at=100.0))
    # Traffic starts 100 s after the origin; the switch is at ready_at + 60 s.
    _, _, before = closed_loop(engine, 8, steps=1500, start=100.0)
    assert before[-1].end < 160.0 and {o.profile for o in before} == {"code"}
    _, _, after = closed_loop(engine, 8, steps=1500, start=160.0)
    assert {o.profile for o in after} == {"creative"}

    def mal(outs: list[StepOutput]) -> float:
        drafts = sum(o.spec.num_drafts for o in outs if o.spec)
        return 1 + sum(o.spec.num_accepted_tokens for o in outs if o.spec) / drafts
    code, creative = parse_profile("code"), parse_profile("creative")
    assert mal(before) == pytest.approx(code.mean_acceptance_length(k), abs=0.1)
    assert mal(after) == pytest.approx(creative.mean_acceptance_length(k), abs=0.1)
    assert mal(after) < mal(before) - 2


def test_synthetic_rates_override_the_profile() -> None:
    spec = mtp(3, rejection_sample_method="synthetic", synthetic_acceptance_rates=[1, 1, 0])
    engine = core(spec, "none")
    closed_loop(engine, 4, steps=100)
    assert engine.totals.spec.accepted_per_pos[:2] == [engine.totals.spec.num_drafts] * 2
    assert engine.totals.spec.accepted_per_pos[2] == 0


# ---- throughput vs K and load ------------------------------------------------------------------

def tokens_per_second(k: int, batch: int, profile: str = "code", steps: int = 300) -> float:
    engine = core(mtp(k) if k else None, profile, max_num_seqs=batch, seed=1)
    tokens, seconds, _ = closed_loop(engine, batch, steps=steps, max_tokens=512)
    return tokens / seconds


def test_throughput_rises_with_k_at_low_load_and_best_k_falls_at_high_load() -> None:
    ks = (0, 1, 2, 3, 4, 5, 6, 8, 10)
    low = {k: tokens_per_second(k, 1) for k in ks}
    high = {k: tokens_per_second(k, 128, steps=60) for k in ks}
    assert low[0] < low[1] < low[2] < low[3] < low[4]
    best_low, best_high = max(low, key=low.__getitem__), max(high, key=high.__getitem__)
    assert best_low >= 5
    assert low[best_low] > 2.5 * low[0]  # high acceptance, batch 1: memory-bound, K pays
    assert best_high < best_low
    assert high[best_high] / high[0] < low[best_low] / low[0]
    # Verification of many drafts at batch 128 is compute-bound: K=10 loses to the best.
    assert high[10] < 0.9 * high[best_high]


def test_low_acceptance_at_high_load_turns_speculation_off() -> None:
    ks = (0, 1, 2, 3, 4)
    tps = {k: tokens_per_second(k, 128, "creative", steps=60) for k in ks}
    assert max(tps, key=tps.__getitem__) == 0


def test_time_scale_stretches_every_step() -> None:
    a, b = core(mtp(2), time_scale=1.0), core(mtp(2), time_scale=0.01)
    for e in (a, b):
        e.add(req(0, 0.0))
    oa, ob = a.step(0.0), b.step(0.0)
    assert oa is not None and ob is not None
    assert ob.end == pytest.approx(oa.end * 0.01)
    assert oa.end > 0.01  # a real step of the default world takes >10 ms


# ---- scheduling --------------------------------------------------------------------------------

def test_max_num_seqs_bounds_the_batch() -> None:
    engine = core(mtp(2), max_num_seqs=4)
    for i in range(10):
        engine.add(req(i, 0.0, max_tokens=8))
    out = engine.step(0.0)
    assert out is not None
    assert (out.batch_size, out.num_running, out.num_waiting) == (4, 4, 6)
    outs: list[StepOutput] = []
    drain(engine, out.end, outs)
    assert max(o.batch_size for o in outs) == 4
    assert engine.totals.generation_tokens == 80


def test_no_speculation_emits_one_token_per_step() -> None:
    engine = core(None)
    engine.add(req(0, 0.0, max_tokens=20))
    outs: list[StepOutput] = []
    drain(engine, 0.0, outs)
    assert len(outs) == 20 and all(o.generation_tokens == 1 and o.spec is None for o in outs)
    assert all(o.k == 0 for o in outs)


def test_batch_size_schedule_turns_drafting_off_at_high_batch() -> None:
    spec = mtp(4, num_speculative_tokens_per_batch_size=[[1, 4, 4], [5, 1000, 0]])
    engine = core(spec)
    _, _, outs = closed_loop(engine, 8, steps=50)
    assert {o.k for o in outs} == {0}
    assert engine.totals.spec.num_drafts == 0
    small = core(spec)
    _, _, outs = closed_loop(small, 2, steps=50)
    assert {o.k for o in outs} == {4} and small.totals.spec.num_draft_tokens > 0


def test_abort_and_natural_stop() -> None:
    engine = core(mtp(2))
    engine.add(req(0, 0.0))
    engine.add(SimRequest("eos", prompt_tokens=5, max_tokens=100, arrival=0.0, eos_at=3))
    out = engine.step(0.0)
    assert out is not None
    finished = engine.abort("r0", out.end)
    assert finished is not None and finished.reason == "abort"
    assert engine.abort("r0", out.end) is None
    outs: list[StepOutput] = []
    drain(engine, out.end, outs)
    assert [f.reason for o in outs for f in o.finished] == ["stop"]
    assert outs[-1].finished[0].generation_tokens == 3


def test_natural_length_is_reproducible_with_the_requested_mean() -> None:
    assert natural_length(0, "p", 100) == natural_length(0, "p", 100)
    lengths = [natural_length(0, f"prompt {i}", 100) for i in range(4000)]
    assert min(lengths) >= 1
    assert sum(lengths) / len(lengths) == pytest.approx(100, rel=0.08)
