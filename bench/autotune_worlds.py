"""Worlds for the autotuner benchmark: what a deployment really does, and what Prometheus shows.

A world is a hardware step-cost curve (runtime/specdecode_runtime/hardware.py: an MoE model,
a dense model with an early roofline knee, a small memory-bound GPU, the H200 table
perturbed by +-10 %, a CPU), a day of traffic (task mix and running requests per replica,
minute by minute) and the acceptance behaviour of the drafter. None of it is the tuner's
model: the step costs are not the H200 prior, acceptance falls slightly with K (vLLM PR
#48892) and decays past the published positions faster than the tuner's extrapolation
assumes, replicas differ, and every series the tuner reads is noisy.

The tuner sees only what Prometheus would: per window at the running K, summed over the
pods, counter increases of drafts, per-position accepted tokens, generated tokens, finished
requests, the inter-token-latency histogram's sum and count, the iteration-tokens
histogram's count, prompt tokens, and per-pod quantiles of the running-requests gauge.
"""

from __future__ import annotations

import math
import random
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "operator"))
sys.path.insert(0, str(ROOT / "runtime"))

from specdecode_operator.autotune import Window  # noqa: E402
from specdecode_runtime.hardware import Hardware, profile  # noqa: E402

DT = 60.0                  # world resolution (s)
STEPS = 24 * 60            # one day
K_MAX = 12
REPLICAS = 2               # default; --replicas in the bench changes it per run
RESTART_SECONDS = 300.0    # per replica; rolling, one replica at a time
TOKENS_PER_REQUEST = 350.0
PREFILL_PER_REQUEST = 120.0  # prompt tokens computed per request (prefix cache absorbs most)
STEP_NOISE = 0.03          # per replica-minute multiplicative noise on step times
SERIES_NOISE = 0.004       # increase() extrapolation differs per series


def _chain(conds: list[float]) -> tuple[float, ...]:
    out, s = [], 1.0
    for c in conds:
        s *= c
        out.append(s)
    return tuple(out)


def _extend(s: tuple[float, ...], n: int = 16, damping: float = 0.9) -> tuple[float, ...]:
    out = list(s)
    cond = s[-1] / s[-2]
    while len(out) < n:
        cond *= damping      # steeper than the tuner's 0.97: its extrapolation is optimistic
        out.append(out[-1] * cond)
    return tuple(out)


# Per-position survival S_1..S_16 anchored on published measurements, with world-specific
# tails (not the tuner's).
ACCEPTANCE: dict[str, tuple[float, ...]] = {
    "chat": _extend((.74, .54, .41, .30, .22, .16, .12, .08, .05, .02)),        # EAGLE MT-Bench
    "math": _extend((.762, .616, .513, .424, .364, .309, .272, .237)),          # MTP gsm8k
    "code": _chain([0.95, 0.92, 0.89, 0.86, 0.83, 0.8, 0.77, 0.74, 0.7, 0.66, 0.62, 0.58,
                    0.54, 0.5, 0.46, 0.42]),
    "summarization": _chain([0.85, 0.8, 0.76, 0.72, 0.68, 0.64, 0.6, 0.56, 0.52, 0.48, 0.44,
                             0.4, 0.36, 0.32, 0.3, 0.28]),
    "creative": _chain([0.6, 0.48, 0.4, 0.33, 0.28, 0.24, 0.2, 0.17, 0.15, 0.13, 0.11, 0.1,
                        0.1, 0.1, 0.1, 0.1]),
}
K_PENALTY = 0.01   # acceptance of every position falls 1 % per extra drafted token

Mix = dict[str, float]


def survival(mix: Mix, k: int) -> tuple[float, ...]:
    total = sum(mix.values())
    f = 1.0 - K_PENALTY * max(0, k - 1)
    return tuple(f * sum(w * ACCEPTANCE[t][i] for t, w in mix.items()) / total
                 for i in range(16))


@dataclass(frozen=True)
class Scenario:
    name: str
    mix: Callable[[float, random.Random], Mix]       # hour -> task weights
    load: Callable[[float, random.Random], float]    # hour -> running requests per replica
    allow_off: bool = False


def _blend(a: Mix, b: Mix, x: float) -> Mix:
    return {k: a.get(k, 0) * (1 - x) + b.get(k, 0) * x for k in set(a) | set(b)}


def phases(*ph: tuple[float, Mix]) -> Callable[[float, random.Random], Mix]:
    def mix(h: float, rng: random.Random) -> Mix:
        cur = ph[0][1]
        for start, m in ph:
            if h >= start + 1:
                cur = m
            elif h >= start:
                cur = _blend(cur, m, h - start)
        return cur
    return mix


def const_mix(m: Mix) -> Callable[[float, random.Random], Mix]:
    return lambda h, rng: m


def _switch_times(lo_min: float, hi_min: float, seed: str) -> list[float]:
    """Hours of a day at which something flips, every lo..hi minutes (fixed by the seed)."""
    rng = random.Random(seed)
    switches, t = [], 0.0
    while t < 24:
        t += rng.uniform(lo_min, hi_min) / 60
        switches.append(t)
    return switches


def flapping(a: Mix, b: Mix, lo_min: float, hi_min: float, seed: str
             ) -> Callable[[float, random.Random], Mix]:
    """Alternate between two mixes every lo..hi minutes (switch times fixed by the seed)."""
    switches = _switch_times(lo_min, hi_min, seed)

    def mix(h: float, _rng: random.Random) -> Mix:
        n = sum(1 for s in switches if s <= h)
        return a if n % 2 == 0 else b
    return mix


def diurnal(lo: float, hi: float, peak: float = 14.0) -> Callable[[float, random.Random], float]:
    def load(h: float, rng: random.Random) -> float:
        x = 0.5 + 0.5 * math.cos((h - peak) / 24 * 2 * math.pi)
        return max(1.0, (lo + (hi - lo) * x ** 2) * rng.uniform(0.85, 1.15))
    return load


def steady(b: float) -> Callable[[float, random.Random], float]:
    return lambda h, rng: max(1.0, b * rng.uniform(0.85, 1.15))


def spiky(base: float, peak: float, n: int, lo_min: float, hi_min: float, seed: str
          ) -> Callable[[float, random.Random], float]:
    """A base load with n spikes of lo..hi minutes each, at times fixed by the seed."""
    rng = random.Random(seed)
    spikes = []
    for _ in range(n):
        start = rng.uniform(0.5, 23.0)
        spikes.append((start, start + rng.uniform(lo_min, hi_min) / 60))

    def load(h: float, r: random.Random) -> float:
        on = any(a <= h < b for a, b in spikes)
        return max(1.0, (peak if on else base) * r.uniform(0.85, 1.15))
    return load


def step_change(before: float, after: float, at: float) -> Callable[[float, random.Random], float]:
    return lambda h, rng: max(1.0, (before if h < at else after) * rng.uniform(0.85, 1.15))


def alternating(lo: float, hi: float, lo_min: float, hi_min: float, seed: str
                ) -> Callable[[float, random.Random], float]:
    switches = _switch_times(lo_min, hi_min, seed)

    def load(h: float, r: random.Random) -> float:
        n = sum(1 for s in switches if s <= h)
        return max(1.0, (lo if n % 2 == 0 else hi) * r.uniform(0.85, 1.15))
    return load


OFFICE = phases((0, {"chat": .7, "creative": .3}), (8, {"chat": .5, "code": .4, "math": .1}),
                (13, {"code": .7, "chat": .3}), (18, {"creative": .6, "chat": .4}))

# Development scenarios: the policy's constants were chosen looking at these (seed 1).
DEV = [
    Scenario("stationary", const_mix({"chat": .6, "code": .4}), steady(24)),
    Scenario("diurnal", OFFICE, diurnal(2, 96)),
    Scenario("shifting-mix", phases((0, {"code": 1.0}), (8, {"creative": .8, "chat": .2}),
                                    (16, {"summarization": 1.0})), steady(12)),
    Scenario("spiky", const_mix({"chat": .5, "code": .5}),
             spiky(6, 128, 8, 10, 45, "spiky")),
    Scenario("flapping-mix", flapping({"code": 1.0}, {"creative": 1.0}, 20, 40, "flap"),
             steady(16)),
]
# Held-out scenarios: never looked at while choosing constants (run with other seeds too).
HELD_OUT = [
    Scenario("stationary-heavy", const_mix({"math": .5, "chat": .5}), steady(96)),
    Scenario("diurnal-low", phases((0, {"code": .8, "chat": .2}), (11, {"chat": .7,
             "summarization": .3}), (19, {"code": 1.0})), diurnal(1, 24, peak=11)),
    Scenario("shift-at-noon", const_mix({"summarization": .7, "chat": .3}),
             step_change(8, 64, 12.0)),
    Scenario("spiky-short", const_mix({"code": .7, "creative": .3}),
             spiky(32, 256, 12, 10, 25, "spiky-short")),
    Scenario("flapping-load", const_mix({"chat": 1.0}), alternating(4, 48, 30, 60, "fl")),
]
DEV_HARDWARE = ["moe", "dense-early-knee", "small-gpu", "h200-perturbed"]
HELD_OUT_HARDWARE = [*DEV_HARDWARE, "cpu"]


@dataclass
class Trace:
    """The world's truth for one day: per step and replica."""

    hw: Hardware
    s: list[list[tuple[float, ...]]]   # [step][k] true survival at draft length k
    b: list[list[float]]               # [step][replica] running requests
    t_ms: list[list[list[float]]]      # [step][replica][k] true step time
    th: list[list[float]]              # [step][k] tokens/s over all replicas
    replica_f: list[float]

    @property
    def replicas(self) -> int:
        return len(self.replica_f)


def make_trace(sc: Scenario, hw_name: str, seed: int, replicas: int = REPLICAS) -> Trace:
    """One day of ``sc`` on ``hw_name`` with ``replicas`` pods; the load is per replica."""
    hw = profile(hw_name)
    rng = random.Random(f"{sc.name}:{hw_name}:{seed}")
    mix_rng = random.Random(f"{sc.name}:mix:{seed}")
    replica_f = [rng.uniform(0.97, 1.03) for _ in range(replicas)]
    imbalance = [rng.uniform(0.9, 1.1) for _ in range(replicas)]
    ss, bs, ts, ths = [], [], [], []
    for step in range(STEPS):
        h = step * DT / 3600
        mix = sc.mix(h, mix_rng)
        sv = [survival(mix, k) for k in range(K_MAX + 1)]
        load = sc.load(h, rng)
        b = [max(1.0, load * f) for f in imbalance]
        t_r, th = [], [0.0] * (K_MAX + 1)
        for r in range(replicas):
            row = []
            for k in range(K_MAX + 1):
                lk = 1 + sum(sv[k][:k])
                prefill = b[r] * lk * PREFILL_PER_REQUEST / TOKENS_PER_REQUEST
                t = hw.step_seconds(b[r], k, prefill) * 1000 * replica_f[r]
                row.append(t)
                th[k] += b[r] * lk / (t / 1000)
            t_r.append(row)
        ss.append(sv)
        bs.append(b)
        ts.append(t_r)
        ths.append(th)
    return Trace(hw, ss, bs, ts, ths, replica_f)


def replica_tokens_per_second(tr: Trace, t: int, r: int, k: int) -> float:
    """The world's tokens/s of replica ``r`` at step ``t`` running draft length ``k``."""
    lk = 1 + sum(tr.s[t][k][:k])
    return tr.b[t][r] * lk / (tr.t_ms[t][r][k] / 1000)


def observe(tr: Trace, rng: random.Random, k: int, start: int, end: int,
            replicas: list[int] | None = None) -> Window | None:
    """What Prometheus shows for [start, end) at draft length k, summed over the pods
    (``replicas``: the ones that run k; all by default)."""
    if end - start < 1:
        return None
    reps = list(range(tr.replicas)) if replicas is None else replicas
    drafts = gen = itl_sum = itl_count = steps = prompt = 0.0
    per_pos = [0.0] * k
    gauges: list[list[float]] = [[] for _ in reps]
    for t in range(start, end):
        sv = tr.s[t][k]
        lk = 1 + sum(sv[:k])
        for gi, r in enumerate(reps):
            b = tr.b[t][r]
            t_ms = tr.t_ms[t][r][k] * math.exp(rng.gauss(0, STEP_NOISE))
            n = DT / (t_ms / 1000)
            steps += n
            itl_count += b * n
            itl_sum += b * n * t_ms / 1000
            prompt += b * n * lk * PREFILL_PER_REQUEST / TOKENS_PER_REQUEST
            gen += b * n * lk
            if k:
                drafts += b * n
                for i in range(k):
                    per_pos[i] += b * n * sv[i]
            for _ in range(4):   # scraped every 15 s
                gauges[gi].append(max(0.0, round(b * (1 + rng.gauss(0, 0.08)))))
    noisy, prev = [], drafts
    for i in range(k):
        p = per_pos[i] / drafts
        v = min(prev, max(0.0, rng.gauss(drafts * p, math.sqrt(drafts * p * (1 - p) + 1))))
        noisy.append(v)
        prev = v

    def jit(x: float) -> float:
        return x * (1 + rng.gauss(0, SERIES_NOISE))

    load = []
    for g in gauges:
        g.sort()
        load += [(g[min(len(g) - 1, int(q * len(g)))], 1.0) for q in (0.1, 0.3, 0.5, 0.7, 0.9)]
    return Window(k=k, seconds=(end - start) * DT, drafts=jit(drafts),
                  draft_tokens=jit(drafts * k), accepted=jit(sum(noisy)),
                  accepted_per_pos=tuple(jit(v) for v in noisy), generation_tokens=jit(gen),
                  requests=jit(gen / TOKENS_PER_REQUEST), load=tuple(load),
                  itl_sum=jit(itl_sum), itl_count=jit(itl_count), steps=jit(steps),
                  prompt_tokens=jit(prompt))
