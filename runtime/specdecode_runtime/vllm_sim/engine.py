"""The simulated engine core: continuous batching with speculative decoding. Pure.

No I/O and no wall clock: the caller passes ``now`` (seconds, any origin) and gets back what the
step did and when it ends. The async server sleeps until then; tests just keep calling ``step``
with the returned end time, which runs hours of simulated traffic in milliseconds.

One step, like vLLM v1's scheduler step:
- waiting requests are admitted up to --max-num-seqs; an admitted request is prefilled in its
  first step and emits its first token there (no drafts are verified in a prefill step);
- every other running request verifies k drafts: it accepts a prefix of them drawn from the
  acceptance profile in force, and emits 1 + accepted tokens (the bonus/correction token);
- the step takes the hardware world's step time for (requests verifying, k, prompt tokens
  prefilled), times --sim-time-scale (specdecode_runtime.hardware).
Counters follow vllm/v1/spec_decode/metrics.py: drafts += requests that verified >= 1 draft,
draft_tokens += k each, accepted += accepted, per_pos[i] += requests that accepted position i.
Like vLLM, the counters count every verified draft even when max_tokens truncates the output.
"""

from __future__ import annotations

import math
import random
from collections import deque
from dataclasses import dataclass, field

from ..hardware import DEFAULT_SIM, Hardware, profile
from .acceptance import AcceptanceSampler, Schedule
from .spec_config import SpecConfig

FINISH_LENGTH = "length"
FINISH_STOP = "stop"
FINISH_ABORT = "abort"


@dataclass
class SimRequest:
    """One request's life in the engine (times on the caller's clock)."""

    request_id: str
    prompt_tokens: int
    max_tokens: int  # hard cap on generated tokens (max_tokens or what fits in the context)
    arrival: float
    eos_at: int | None = None  # natural length when EOS is not ignored
    requested_max_tokens: int | None = None  # the request's max_tokens parameter as sent
    scheduled: float | None = None
    first_token: float | None = None
    last_token: float | None = None
    generated: int = 0
    finish_reason: str | None = None

    @property
    def limit(self) -> int:
        return self.max_tokens if self.eos_at is None else min(self.max_tokens, self.eos_at)


@dataclass(frozen=True)
class Emission:
    """Tokens ``start .. start+count-1`` of a request became available at the step's end."""

    request_id: str
    start: int
    count: int
    finish_reason: str | None


@dataclass(frozen=True)
class FinishedRequest:
    """What vLLM's per-request histograms observe when a request finishes."""

    request_id: str
    reason: str
    prompt_tokens: int
    generation_tokens: int
    max_tokens_param: int
    max_num_generation_tokens: int
    e2e: float
    queue_time: float
    prefill_time: float
    decode_time: float
    inference_time: float
    time_per_output_token: float


@dataclass
class SpecCounts:
    """The four spec_decode counters (cumulative, or one step's increment)."""

    num_drafts: int = 0
    num_draft_tokens: int = 0
    num_accepted_tokens: int = 0
    accepted_per_pos: list[int] = field(default_factory=list)

    def add(self, other: SpecCounts) -> None:
        self.num_drafts += other.num_drafts
        self.num_draft_tokens += other.num_draft_tokens
        self.num_accepted_tokens += other.num_accepted_tokens
        if len(self.accepted_per_pos) < len(other.accepted_per_pos):
            self.accepted_per_pos += [0] * (len(other.accepted_per_pos)
                                            - len(self.accepted_per_pos))
        for i, n in enumerate(other.accepted_per_pos):
            self.accepted_per_pos[i] += n

    def mean_acceptance_length(self) -> float:
        return 1.0 + self.num_accepted_tokens / self.num_drafts if self.num_drafts else 0.0

    def acceptance_rate(self) -> float:
        return self.num_accepted_tokens / self.num_draft_tokens if self.num_draft_tokens else 0.0


@dataclass(frozen=True)
class StepOutput:
    start: float
    end: float
    batch_size: int
    k: int
    profile: str
    prompt_tokens: int
    generation_tokens: int
    spec: SpecCounts | None  # None when speculation is off
    emissions: tuple[Emission, ...]
    ttfts: tuple[float, ...]
    itls: tuple[float, ...]
    finished: tuple[FinishedRequest, ...]
    num_running: int
    num_waiting: int
    kv_cache_usage: float


@dataclass
class EngineTotals:
    steps: int = 0
    prompt_tokens: int = 0
    generation_tokens: int = 0
    busy_seconds: float = 0.0
    spec: SpecCounts = field(default_factory=SpecCounts)


@dataclass
class EngineConfig:
    spec: SpecConfig | None
    schedule: Schedule
    cost: Hardware = field(default_factory=lambda: profile(DEFAULT_SIM))
    max_num_seqs: int = 256
    kv_cache_tokens: int = 131072
    time_scale: float = 1.0
    seed: int = 0
    ready_at: float = 0.0  # schedule times count from here


class EngineCore:
    def __init__(self, config: EngineConfig) -> None:
        self.config = config
        self.waiting: deque[SimRequest] = deque()
        self.running: list[SimRequest] = []
        self.totals = EngineTotals()
        k = config.spec.num_speculative_tokens if config.spec else 0
        self.totals.spec.accepted_per_pos = [0] * k
        self._sampler = AcceptanceSampler(config.seed)
        # vLLM's synthetic rejection sampler fixes acceptance whatever the schedule says.
        synthetic = config.spec.synthetic_acceptance_rates if config.spec else None
        self._synthetic = tuple(synthetic) if synthetic else None

    # ---- requests ----------------------------------------------------------------------------

    def add(self, request: SimRequest) -> None:
        self.waiting.append(request)

    def abort(self, request_id: str, now: float) -> FinishedRequest | None:
        """Drop a request (client went away); its stats, or None if it already finished."""
        for queue in (self.waiting, self.running):
            for r in queue:
                if r.request_id == request_id:
                    queue.remove(r)
                    r.finish_reason = FINISH_ABORT
                    return _finished(r, now)
        return None

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def kv_cache_usage(self) -> float:
        used = sum(r.prompt_tokens + r.generated for r in self.running)
        return min(1.0, used / self.config.kv_cache_tokens)

    def profile_name(self, now: float) -> str:
        if self._synthetic is not None:
            return "synthetic"
        return self.config.schedule.at(now - self.config.ready_at).name

    # ---- one step ----------------------------------------------------------------------------

    def step(self, now: float) -> StepOutput | None:
        """Run one engine step starting at ``now``; None when there is nothing to run."""
        cfg = self.config
        while self.waiting and len(self.running) < cfg.max_num_seqs:
            r = self.waiting.popleft()
            r.scheduled = now
            self.running.append(r)
        batch = len(self.running)
        if batch == 0:
            return None

        spec = cfg.spec
        k = spec.k_for_batch(batch) if spec else 0
        profile = cfg.schedule.at(now - cfg.ready_at)
        survival = self._synthetic[:k] if self._synthetic is not None else profile.survival(k)
        counts = SpecCounts(accepted_per_pos=[0] * (spec.num_speculative_tokens if spec else 0))
        prompt_tokens = 0
        grants: list[tuple[SimRequest, int]] = []
        for r in self.running:
            if r.generated == 0:  # prefill step: prompt in, first token out
                prompt_tokens += r.prompt_tokens
                n = 1
            elif k > 0:
                accepted = self._sampler.accepted(survival)
                counts.num_drafts += 1
                counts.num_draft_tokens += k
                counts.num_accepted_tokens += accepted
                for i in range(accepted):
                    counts.accepted_per_pos[i] += 1
                n = 1 + accepted
            else:
                n = 1
            grants.append((r, min(n, r.limit - r.generated)))

        # The verify batch is the requests past their prefill; a prefill rides in the same
        # forward pass as prompt tokens (chunked prefill), so decoders wait for it too.
        verifying = sum(1 for r, _ in grants if r.generated > 0)
        duration = cfg.cost.step_seconds(verifying, k, prompt_tokens) * cfg.time_scale
        end = now + duration
        emissions: list[Emission] = []
        ttfts: list[float] = []
        itls: list[float] = []
        finished: list[FinishedRequest] = []
        generated = 0
        for r, n in grants:
            if r.first_token is None:
                r.first_token = end
                ttfts.append(end - r.arrival)
            else:
                itls.append(end - (r.last_token if r.last_token is not None else end))
            start = r.generated
            r.generated += n
            r.last_token = end
            generated += n
            if r.generated >= r.limit:
                r.finish_reason = FINISH_LENGTH if r.generated >= r.max_tokens else FINISH_STOP
                finished.append(_finished(r, end))
            emissions.append(Emission(r.request_id, start, n, r.finish_reason))
        self.running = [r for r in self.running if r.finish_reason is None]

        t = self.totals
        t.steps += 1
        t.prompt_tokens += prompt_tokens
        t.generation_tokens += generated
        t.busy_seconds += duration
        if spec:
            t.spec.add(counts)
        return StepOutput(
            start=now, end=end, batch_size=batch, k=k,
            profile="synthetic" if self._synthetic is not None else profile.name,
            prompt_tokens=prompt_tokens, generation_tokens=generated,
            spec=counts if spec else None, emissions=tuple(emissions), ttfts=tuple(ttfts),
            itls=tuple(itls), finished=tuple(finished), num_running=len(self.running),
            num_waiting=len(self.waiting), kv_cache_usage=self.kv_cache_usage())


def _finished(r: SimRequest, now: float) -> FinishedRequest:
    scheduled = r.scheduled if r.scheduled is not None else now
    first = r.first_token if r.first_token is not None else now
    last = r.last_token if r.last_token is not None else now
    decode = max(0.0, last - first)
    return FinishedRequest(
        request_id=r.request_id, reason=r.finish_reason or FINISH_ABORT,
        prompt_tokens=r.prompt_tokens, generation_tokens=r.generated,
        max_tokens_param=r.requested_max_tokens if r.requested_max_tokens is not None
        else r.max_tokens,
        max_num_generation_tokens=r.max_tokens,
        e2e=now - r.arrival, queue_time=scheduled - r.arrival,
        prefill_time=max(0.0, first - scheduled), decode_time=decode,
        inference_time=max(0.0, last - scheduled),
        time_per_output_token=decode / (r.generated - 1) if r.generated > 1 else 0.0)


def natural_length(seed: int, key: str, mean_tokens: float) -> int:
    """Where a request that does not ignore EOS stops: geometric with the given mean,
    reproducible from the seed and the prompt (same prompt, same length, like temperature 0)."""
    if mean_tokens <= 0:
        return 1
    u = random.Random(f"{seed}:eos:{key}").random()
    p = 1.0 / max(mean_tokens, 1.0)
    # Inverse CDF of the geometric distribution on 1, 2, ...
    return max(1, math.ceil(math.log(1.0 - u) / math.log(1.0 - p))) if p < 1 else 1
