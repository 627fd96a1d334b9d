"""The latency and per-step series follow the hardware world's step times the way vLLM 0.32's
do, so a tuner that calibrates from them learns the world, not a constant."""

from __future__ import annotations

import pytest

from specdecode_runtime.hardware import profile
from specdecode_runtime.vllm_sim.acceptance import constant, parse_profile
from specdecode_runtime.vllm_sim.engine import EngineConfig, EngineCore, SimRequest, StepOutput
from specdecode_runtime.vllm_sim.metrics import CacheInfo, VllmMetrics
from specdecode_runtime.vllm_sim.spec_config import validate

LABELS = {"model_name": "tiny", "engine": "0"}


def engine(hw: str, k: int, *, time_scale: float = 1.0) -> tuple[EngineCore, VllmMetrics]:
    spec = validate({"method": "mtp", "num_speculative_tokens": k}, "org/target") if k else None
    core = EngineCore(EngineConfig(spec=spec, schedule=constant(parse_profile("chat")),
                                   cost=profile(hw), time_scale=time_scale))
    return core, VllmMetrics("tiny", k or None, CacheInfo(131072, 8192))


def value(metrics: VllmMetrics, name: str) -> float:
    got = metrics.registry.get_sample_value(name, LABELS)
    assert got is not None, name
    return got


def run(core: EngineCore, metrics: VllmMetrics, steps: int, now: float = 0.0
        ) -> list[StepOutput]:
    outs = []
    for _ in range(steps):
        out = core.step(now)
        assert out is not None
        metrics.observe_step(out)
        outs.append(out)
        now = out.end
    return outs


@pytest.mark.parametrize(("hw", "b", "k"), [("dense-early-knee", 16, 3), ("moe", 4, 5),
                                            ("small-gpu", 32, 2), ("h200", 8, 0),
                                            ("cpu", 3, 1)])
def test_itl_mean_is_the_worlds_step_time_at_the_batch(hw: str, b: int, k: int) -> None:
    core, metrics = engine(hw, k)
    for i in range(b):  # long requests: none finishes, the batch stays b
        core.add(SimRequest(f"r{i}", prompt_tokens=100, max_tokens=100_000, arrival=0.0))
    n = 40
    run(core, metrics, 1 + n)  # the first step prefills everyone: TTFT, no ITL
    expected = profile(hw).step_seconds(b, k)
    count = value(metrics, "vllm:inter_token_latency_seconds_count")
    assert count == b * n  # once per running request per decode step
    assert value(metrics, "vllm:inter_token_latency_seconds_sum") / count == pytest.approx(
        expected, rel=1e-9)
    assert value(metrics, "vllm:iteration_tokens_total_count") == 1 + n  # once per step
    emitted = value(metrics, "vllm:generation_tokens_total")
    assert value(metrics, "vllm:iteration_tokens_total_sum") == b * 100 + emitted
    assert value(metrics, "vllm:num_requests_running") == b
    assert value(metrics, "vllm:time_to_first_token_seconds_count") == b


def test_time_scale_stretches_the_observed_step_time() -> None:
    core, metrics = engine("dense-early-knee", 3, time_scale=0.25)
    for i in range(8):
        core.add(SimRequest(f"r{i}", prompt_tokens=10, max_tokens=100_000, arrival=0.0))
    run(core, metrics, 21)
    mean = (value(metrics, "vllm:inter_token_latency_seconds_sum")
            / value(metrics, "vllm:inter_token_latency_seconds_count"))
    assert mean == pytest.approx(0.25 * profile("dense-early-knee").step_seconds(8, 3))


def test_a_prefill_in_the_step_lengthens_the_decoders_itl() -> None:
    # chunked prefill shares the step: the 4 running requests verify while the newcomer's
    # prompt is computed in the same pass, and wait for it
    hw = profile("dense-early-knee")
    core, metrics = engine("dense-early-knee", 2)
    for i in range(4):
        core.add(SimRequest(f"r{i}", prompt_tokens=10, max_tokens=100_000, arrival=0.0))
    now = run(core, metrics, 3)[-1].end
    core.add(SimRequest("late", prompt_tokens=500, max_tokens=100_000, arrival=now))
    out = run(core, metrics, 1, now)[0]
    assert out.batch_size == 5 and out.prompt_tokens == 500
    assert out.itls == pytest.approx([hw.step_seconds(4, 2, 500)] * 4)
    assert hw.step_seconds(4, 2, 500) > hw.step_seconds(5, 2)


def test_per_request_decode_time_and_tpot_add_up_to_the_itls() -> None:
    # vLLM: decode time = last token - first token; TPOT = decode time / (tokens - 1); the
    # ITLs of one request sum to its decode time (the real capture shows equal sums)
    core, metrics = engine("small-gpu", 3)
    lengths = (17, 40, 64, 90)
    for i, n in enumerate(lengths):
        core.add(SimRequest(f"r{i}", prompt_tokens=20, max_tokens=n, arrival=0.0))
    outs: list[StepOutput] = []
    now = 0.0
    while core.has_work():
        outs += run(core, metrics, 1, now)
        now = outs[-1].end
    finished = [f for o in outs for f in o.finished]
    assert sorted(f.generation_tokens for f in finished) == sorted(lengths)
    itl_sum = value(metrics, "vllm:inter_token_latency_seconds_sum")
    assert value(metrics, "vllm:request_decode_time_seconds_sum") == pytest.approx(itl_sum)
    assert value(metrics, "vllm:request_decode_time_seconds_count") == len(lengths)
    tpot = sum(f.decode_time / (f.generation_tokens - 1) for f in finished)
    assert value(metrics, "vllm:request_time_per_output_token_seconds_sum") == pytest.approx(tpot)
    # every step's time is the world's at that step's batch
    hw = profile("small-gpu")
    for o in outs:
        verifying = o.batch_size - (len(lengths) if o.prompt_tokens else 0)
        assert o.end - o.start == pytest.approx(hw.step_seconds(verifying, 3, o.prompt_tokens))
    assert value(metrics, "vllm:num_requests_running") == 0
