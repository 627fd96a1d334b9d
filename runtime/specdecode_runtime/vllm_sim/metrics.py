"""vLLM's Prometheus metrics, exposed exactly as vLLM 0.32 does.

vLLM registers its metrics with prometheus_client; using the same library with the same names,
HELP strings, label names and buckets reproduces the exposition byte for byte (labels are
sorted on output, each counter gets its _created gauge). Families are created in vLLM's order
(vllm/v1/spec_decode/metrics.py, then vllm/v1/metrics/loggers.py) and every labelled series is
created at startup, so counters read 0 before traffic like the real server.
Checked against the real captures in reference/ by tests/unit/test_vllm_sim_metrics.py.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from .engine import FinishedRequest, StepOutput

CONTENT_TYPE = CONTENT_TYPE_LATEST  # "text/plain; version=1.0.0; charset=utf-8", as captured

TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5,
                5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0)
ITL_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0,
               7.5, 10.0, 20.0, 40.0, 80.0)
REQUEST_LATENCY_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0,
                           40.0, 50.0, 60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0)
ITERATION_TOKENS_BUCKETS = (1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384)
PARAMS_N_BUCKETS = (1, 2, 5, 10, 20)
PREEMPTION_BUCKETS = (1, 2, 3, 4, 5, 10, 20)
FINISHED_REASONS = ("stop", "length", "abort", "error", "repetition")

# Families of a real vLLM /metrics that the stand-in does not emit (docs/vllm-sim.md).
NOT_EMITTED = (
    "http_requests", "http_request_size_bytes", "http_response_size_bytes",
    "http_request_duration_highr_seconds", "http_request_duration_seconds",
)

# vLLM's vllm:cache_config_info label set (values are the stand-in's own).
CACHE_CONFIG_LABELS = (
    "_block_size_resolved", "block_size", "cache_dtype", "cache_hit_alignment_tokens",
    "effective_attention_block_size", "enable_mamba_shared_prefix_checkpoint",
    "enable_prefix_caching", "engine", "gpu_memory_utilization", "hash_block_size",
    "is_attention_free", "kv_cache_dtype_skip_layers", "kv_cache_layout",
    "kv_cache_max_concurrency", "kv_cache_memory_bytes", "kv_cache_size_tokens",
    "kv_offloading_backend", "kv_offloading_size", "kv_sharing_fast_prefill",
    "mamba_block_size", "mamba_cache_dtype", "mamba_cache_mode", "mamba_page_size_padded",
    "mamba_ssm_cache_dtype", "num_cpu_blocks", "num_gpu_blocks", "num_gpu_blocks_override",
    "prefix_cache_retention_interval", "prefix_caching_hash_algo", "prefix_match_unit",
    "replayssm_buffer_len", "skip_page_size_padded", "sliding_window", "swa_bounded_replay",
    "use_kda_recoverssm", "use_replayssm", "user_specified_block_size",
)
BLOCK_SIZE = 16  # vLLM's default KV block size on GPUs


def build_1_2_5_buckets(max_value: int) -> list[int]:
    """vLLM's token-count buckets: 1, 2, 5, 10, 20, 50, ... up to max_model_len."""
    out: list[int] = []
    exponent = 0
    while True:
        for m in (1, 2, 5):
            v = m * 10**exponent
            if v > max_value:
                return out
            out.append(v)
        exponent += 1


@dataclass(frozen=True)
class CacheInfo:
    kv_cache_tokens: int
    max_model_len: int
    gpu_memory_utilization: str = "0.92"
    kv_cache_memory_bytes: str = "None"

    def labels(self) -> dict[str, str]:
        blocks = self.kv_cache_tokens // BLOCK_SIZE
        values = {
            "_block_size_resolved": "True", "block_size": str(BLOCK_SIZE), "cache_dtype": "auto",
            "cache_hit_alignment_tokens": "None",
            "effective_attention_block_size": str(BLOCK_SIZE),
            "enable_mamba_shared_prefix_checkpoint": "False", "enable_prefix_caching": "True",
            "engine": "0", "gpu_memory_utilization": self.gpu_memory_utilization,
            "hash_block_size": "None", "is_attention_free": "False",
            "kv_cache_dtype_skip_layers": "[]", "kv_cache_layout": "None",
            "kv_cache_max_concurrency": str(round(self.kv_cache_tokens / self.max_model_len, 2)),
            "kv_cache_memory_bytes": self.kv_cache_memory_bytes,
            "kv_cache_size_tokens": str(blocks * BLOCK_SIZE), "kv_offloading_backend": "native",
            "kv_offloading_size": "None", "kv_sharing_fast_prefill": "False",
            "mamba_block_size": "None", "mamba_cache_dtype": "auto", "mamba_cache_mode": "none",
            "mamba_page_size_padded": "None", "mamba_ssm_cache_dtype": "float32",
            "num_cpu_blocks": "None", "num_gpu_blocks": str(blocks),
            "num_gpu_blocks_override": "None", "prefix_cache_retention_interval": "0",
            "prefix_caching_hash_algo": "sha256", "prefix_match_unit": "None",
            "replayssm_buffer_len": "16", "skip_page_size_padded": "None",
            "sliding_window": "None", "swa_bounded_replay": "True",
            "use_kda_recoverssm": "False", "use_replayssm": "False",
            "user_specified_block_size": "False",
        }
        return {k: values[k] for k in CACHE_CONFIG_LABELS}


class VllmMetrics:
    """The engine's vllm:* families in a private registry (plus python_*/process_*)."""

    def __init__(self, model_name: str, num_speculative_tokens: int | None,
                 cache: CacheInfo, *, log_stats: bool = True,
                 registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        # The process collectors a vLLM process has from prometheus_client's default registry.
        GCCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        ProcessCollector(registry=self.registry)
        self.enabled = log_stats  # --disable-log-stats: no vllm:* families at all
        if not self.enabled:
            return
        r, labels = self.registry, ["model_name", "engine"]
        lv = {"model_name": model_name, "engine": "0"}
        self._labels = lv

        def counter(name: str, doc: str, extra: Sequence[str] = ()) -> Counter:
            return Counter(name, doc, [*labels, *extra], registry=r)

        def hist(name: str, doc: str, buckets: Sequence[float]) -> Histogram:
            return Histogram(name, doc, labels, buckets=buckets, registry=r).labels(**lv)

        # vllm/v1/spec_decode/metrics.py: only when speculation is configured.
        self.spec_k = num_speculative_tokens
        if num_speculative_tokens is not None:
            self.spec_drafts = counter("vllm:spec_decode_num_drafts",
                                       "Number of spec decoding drafts.").labels(**lv)
            self.spec_draft_tokens = counter("vllm:spec_decode_num_draft_tokens",
                                             "Number of draft tokens.").labels(**lv)
            self.spec_accepted = counter("vllm:spec_decode_num_accepted_tokens",
                                         "Number of accepted tokens.").labels(**lv)
            per_pos = counter("vllm:spec_decode_num_accepted_tokens_per_pos",
                              "Accepted tokens per draft position.", ["position"])
            # Series for positions 0..K-1 of the K the server started with, nothing more.
            self.spec_per_pos = [per_pos.labels(**lv, position=str(i))
                                 for i in range(num_speculative_tokens)]

        mfu = "(for Model Flops Utilization calculations)."
        for name, what in (("flops", "floating point operations"),
                           ("read_bytes", "bytes read from memory"),
                           ("write_bytes", "bytes written to memory")):
            # 0 unless --enable-mfu-metrics, as in the captures.
            counter(f"vllm:estimated_{name}_per_gpu",
                    f"Estimated number of {what} per GPU {mfu}").labels(**lv)

        self.running = Gauge("vllm:num_requests_running",
                             "Number of requests in model execution batches.", labels,
                             registry=r).labels(**lv)
        self.waiting = Gauge("vllm:num_requests_waiting",
                             "Number of requests waiting to be processed.", labels,
                             registry=r).labels(**lv)
        by_reason = Gauge(
            "vllm:num_requests_waiting_by_reason",
            "Number of waiting requests by reason. Reason labels: 'capacity' = waiting for "
            "scheduling capacity; 'deferred' = deferred by transient constraints (LoRA budget, "
            "KV transfer, blocked status). Sum of all reasons equals vllm:num_requests_waiting.",
            [*labels, "reason"], registry=r)
        self.waiting_capacity = by_reason.labels(**lv, reason="capacity")
        by_reason.labels(**lv, reason="deferred")
        sleep = Gauge(
            "vllm:engine_sleep_state",
            "Engine sleep state; awake = 0 means engine is sleeping; awake = 1 means engine is "
            "awake; weights_offloaded = 1 means sleep level 1; discard_all = 1 means sleep "
            "level 2.", [*labels, "sleep_state"], registry=r)
        sleep.labels(**lv, sleep_state="awake").set(1)
        sleep.labels(**lv, sleep_state="weights_offloaded")
        sleep.labels(**lv, sleep_state="discard_all")
        self.kv_usage = Gauge("vllm:kv_cache_usage_perc",
                              "KV-cache usage. 1 means 100 percent usage.", labels,
                              registry=r).labels(**lv)
        self.prefix_queries = counter(
            "vllm:prefix_cache_queries",
            "Prefix cache queries, in terms of number of queried tokens.").labels(**lv)
        counter("vllm:prefix_cache_hits",
                "Prefix cache hits, in terms of number of cached tokens.").labels(**lv)
        counter("vllm:external_prefix_cache_queries",
                "External prefix cache queries from KV connector cross-instance cache sharing, "
                "in terms of number of queried tokens.").labels(**lv)
        counter("vllm:external_prefix_cache_hits",
                "External prefix cache hits from KV connector cross-instance cache sharing, in "
                "terms of number of cached tokens.").labels(**lv)
        counter("vllm:mm_cache_queries",
                "Multi-modal cache queries, in terms of number of queried items.").labels(**lv)
        counter("vllm:mm_cache_hits",
                "Multi-modal cache hits, in terms of number of cached items.").labels(**lv)
        counter("vllm:num_preemptions",
                "Cumulative number of preemption from the engine.").labels(**lv)
        self.prompt_tokens = counter("vllm:prompt_tokens",
                                     "Number of prefill tokens processed.").labels(**lv)
        by_source = counter("vllm:prompt_tokens_by_source", "Number of prompt tokens by source.",
                            ["source"])
        self.prompt_local = by_source.labels(**lv, source="local_compute")
        for source in ("local_cache_hit", "external_kv_transfer"):
            by_source.labels(**lv, source=source)
        counter("vllm:prompt_tokens_cached",
                "Number of cached prompt tokens (local + external).").labels(**lv)
        cached = counter(
            "vllm:prompt_tokens_cached_by_source",
            "Prefix-cache hit tokens by the cache tier that supplied them: device (local HBM), "
            "host (offloaded to DRAM), disk, p2p (transferred from another vLLM instance) or "
            "external_unspecified. Counted at admission; sums to vllm:prefix_cache_hits + "
            "vllm:external_prefix_cache_hits.", ["source"])
        for source in ("device", "host", "p2p", "disk", "external_unspecified"):
            cached.labels(**lv, source=source)
        self.generation_tokens = counter("vllm:generation_tokens",
                                         "Number of generation tokens processed.").labels(**lv)
        success = counter("vllm:request_success", "Count of successfully processed requests.",
                          ["finished_reason"])
        self.success = {reason: success.labels(**lv, finished_reason=reason)
                        for reason in FINISHED_REASONS}
        rejections = Counter(
            "vllm:admission_rejections",
            "Number of admission attempts rejected by a queue limit, by reason.",
            ["model_name", "reason"], registry=r)
        for reason in ("max_num_queued_reqs", "max_num_queued_tokens"):
            rejections.labels(model_name=model_name, reason=reason)

        token_buckets = build_1_2_5_buckets(cache.max_model_len)
        self.req_prompt_tokens = hist("vllm:request_prompt_tokens",
                                      "Number of prefill tokens processed.", token_buckets)
        self.req_generation_tokens = hist("vllm:request_generation_tokens",
                                          "Number of generation tokens processed.",
                                          token_buckets)
        self.iteration_tokens = hist("vllm:iteration_tokens_total",
                                     "Histogram of number of tokens per engine_step.",
                                     ITERATION_TOKENS_BUCKETS)
        self.max_num_generation_tokens = hist(
            "vllm:request_max_num_generation_tokens",
            "Histogram of maximum number of requested generation tokens.", token_buckets)
        self.params_n = hist("vllm:request_params_n", "Histogram of the n request parameter.",
                             PARAMS_N_BUCKETS)
        self.params_max_tokens = hist("vllm:request_params_max_tokens",
                                      "Histogram of the max_tokens request parameter.",
                                      token_buckets)
        self.ttft = hist("vllm:time_to_first_token_seconds",
                         "Histogram of time to first token in seconds.", TTFT_BUCKETS)
        self.itl = hist("vllm:inter_token_latency_seconds",
                        "Histogram of inter-token latency in seconds.", ITL_BUCKETS)
        self.tpot = hist("vllm:request_time_per_output_token_seconds",
                         "Histogram of time_per_output_token_seconds per request.", ITL_BUCKETS)
        self.e2e = hist("vllm:e2e_request_latency_seconds",
                        "Histogram of e2e request latency in seconds.", REQUEST_LATENCY_BUCKETS)
        self.queue_time = hist("vllm:request_queue_time_seconds",
                               "Histogram of time spent in WAITING phase for request.",
                               REQUEST_LATENCY_BUCKETS)
        self.inference_time = hist("vllm:request_inference_time_seconds",
                                   "Histogram of time spent in RUNNING phase for request.",
                                   REQUEST_LATENCY_BUCKETS)
        self.prefill_time = hist("vllm:request_prefill_time_seconds",
                                 "Histogram of time spent in PREFILL phase for request.",
                                 REQUEST_LATENCY_BUCKETS)
        self.decode_time = hist("vllm:request_decode_time_seconds",
                                "Histogram of time spent in DECODE phase for request.",
                                REQUEST_LATENCY_BUCKETS)
        self.preemptions = hist("vllm:request_num_preemptions",
                                "Histogram of the number of times a request was preempted.",
                                PREEMPTION_BUCKETS)
        self.prefill_kv_computed = hist(
            "vllm:request_prefill_kv_computed_tokens",
            "Histogram of new KV tokens computed during prefill (excluding cached tokens).",
            token_buckets)
        Gauge("vllm:cache_config_info", "Information of the LLMEngine CacheConfig",
              list(CACHE_CONFIG_LABELS), registry=r).labels(**cache.labels()).set(1)

    # ---- updates -------------------------------------------------------------------------------

    def set_load(self, running: int, waiting: int, kv_cache_usage: float) -> None:
        if not self.enabled:
            return
        self.running.set(running)
        self.waiting.set(waiting)
        self.waiting_capacity.set(waiting)
        self.kv_usage.set(kv_cache_usage)

    def observe_step(self, out: StepOutput) -> None:
        if not self.enabled:
            return
        self.set_load(out.num_running, out.num_waiting, out.kv_cache_usage)
        if out.prompt_tokens:
            self.prompt_tokens.inc(out.prompt_tokens)
            self.prompt_local.inc(out.prompt_tokens)
            self.prefix_queries.inc(out.prompt_tokens)
        if out.generation_tokens:
            self.generation_tokens.inc(out.generation_tokens)
        self.iteration_tokens.observe(out.prompt_tokens + out.generation_tokens)
        for v in out.ttfts:
            self.ttft.observe(v)
        for v in out.itls:
            self.itl.observe(v)
        if out.spec is not None and self.spec_k is not None:
            s = out.spec
            self.spec_drafts.inc(s.num_drafts)
            self.spec_draft_tokens.inc(s.num_draft_tokens)
            self.spec_accepted.inc(s.num_accepted_tokens)
            for child, n in zip(self.spec_per_pos, s.accepted_per_pos, strict=False):
                if n:
                    child.inc(n)
        for f in out.finished:
            self.observe_finished(f)

    def observe_finished(self, f: FinishedRequest) -> None:
        if not self.enabled:
            return
        self.success[f.reason].inc()
        self.e2e.observe(f.e2e)
        self.queue_time.observe(f.queue_time)
        self.prefill_time.observe(f.prefill_time)
        self.decode_time.observe(f.decode_time)
        self.inference_time.observe(f.inference_time)
        self.tpot.observe(f.time_per_output_token)
        self.req_prompt_tokens.observe(f.prompt_tokens)
        self.req_generation_tokens.observe(f.generation_tokens)
        self.max_num_generation_tokens.observe(f.max_num_generation_tokens)
        self.params_n.observe(1)
        self.params_max_tokens.observe(f.max_tokens_param)
        self.preemptions.observe(0)
        self.prefill_kv_computed.observe(f.prompt_tokens)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


# ---- the periodic log lines of vllm/v1/metrics/loggers.py and spec_decode/metrics.py ---------

@dataclass
class IntervalStats:
    prompt_tokens: int = 0
    generation_tokens: int = 0
    num_drafts: int = 0
    num_draft_tokens: int = 0
    num_accepted_tokens: int = 0
    accepted_per_pos: list[int] | None = None

    def add(self, out: StepOutput) -> None:
        self.prompt_tokens += out.prompt_tokens
        self.generation_tokens += out.generation_tokens
        if out.spec is not None:
            self.num_drafts += out.spec.num_drafts
            self.num_draft_tokens += out.spec.num_draft_tokens
            self.num_accepted_tokens += out.spec.num_accepted_tokens
            if self.accepted_per_pos is None:
                self.accepted_per_pos = [0] * len(out.spec.accepted_per_pos)
            for i, n in enumerate(out.spec.accepted_per_pos):
                self.accepted_per_pos[i] += n

    @property
    def active(self) -> bool:
        return bool(self.prompt_tokens or self.generation_tokens)


def format_stats(s: IntervalStats, seconds: float, running: int, waiting: int,
                 kv_usage: float) -> list[str]:
    """The "Engine 000: ..." line, and the "SpecDecoding metrics: ..." line when drafts ran."""
    dt = max(seconds, 1e-9)
    lines = [f"Engine 000: Avg prompt throughput: {s.prompt_tokens / dt:.1f} tokens/s, "
             f"Avg generation throughput: {s.generation_tokens / dt:.1f} tokens/s, "
             f"Running: {running} reqs, Waiting: {waiting} reqs, "
             f"GPU KV cache usage: {kv_usage * 100:.1f}%, Prefix cache hit rate: 0.0%"]
    if s.num_drafts:
        per_pos = ", ".join(f"{n / s.num_drafts:.3f}" for n in s.accepted_per_pos or [])
        lines.append(
            f"SpecDecoding metrics: Mean acceptance length: "
            f"{1 + s.num_accepted_tokens / s.num_drafts:.2f}, "
            f"Accepted throughput: {s.num_accepted_tokens / dt:.2f} tokens/s, "
            f"Drafted throughput: {s.num_draft_tokens / dt:.2f} tokens/s, "
            f"Accepted: {s.num_accepted_tokens} tokens, Drafted: {s.num_draft_tokens} tokens, "
            f"Per-position acceptance rate: {per_pos}, "
            f"Avg Draft acceptance rate: {100 * s.num_accepted_tokens / s.num_draft_tokens:.1f}%")
    return lines
