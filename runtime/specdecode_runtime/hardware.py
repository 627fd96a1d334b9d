"""Step-cost worlds: how long one vLLM engine step takes on a given piece of hardware. Pure.

A world answers one question, ``step_seconds(b, k, prefill_tokens)``: the wall time of one
engine step with ``b`` running requests, each verifying ``q = k + 1`` tokens (k drafted + the
bonus token) after ``k`` drafter passes, plus ``prefill_tokens`` prompt tokens scheduled in
the same step (chunked prefill).

The worlds are what the stand-in and the benchmarks *play*; the autotuner never sees them.
``h200`` is the measured table the operator ships as its prior (read here as data, never
through the tuner's code); every other profile has a different shape on purpose, so a tuner
that does not learn the deployment's own cost from its metrics picks the wrong K there.

Analytic profiles are a roofline: a step streams the weights once (memory time) and does
``2 * params`` FLOPs per verify token (compute time); the slower of the two wins, rounded at
the knee (a 4-norm, as measured rooflines are). Per running sequence the step also reads
that sequence's KV cache. Orders of magnitude are given per profile.
"""

from __future__ import annotations

import bisect
import json
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from typing import Any

# The shipped table is the operator's package data; resolving it via the top-level package
# imports nothing but that package's (empty) __init__, not the tuner.
_H200_TABLE = ("specdecode_operator", "autotune/data/h200-verify-cost.json")
_H200_CTX = 1024


@dataclass(frozen=True)
class Hardware:
    """One step-cost world. ``cost_ms(b, k, prefill_tokens)`` is the model in milliseconds."""

    name: str
    description: str
    cost_ms: Callable[[float, int, float], float] = field(repr=False, compare=False)
    draft_ms: Callable[[float], float] = field(repr=False, compare=False)

    def step_seconds(self, b: float, k: int, prefill_tokens: float = 0.0) -> float:
        """Seconds for one engine step; 0 when nothing is scheduled."""
        if k < 0:
            raise ValueError(f"k must be >= 0, got {k}")
        if b <= 0 and prefill_tokens <= 0:
            return 0.0
        return self.cost_ms(max(b, 0.0), k, max(prefill_tokens, 0.0)) / 1000.0

    def draft_seconds(self, b: float) -> float:
        """Seconds of one drafter pass over ``b`` sequences (k of them per step)."""
        return self.draft_ms(max(b, 1.0)) / 1000.0


# --- measured tables --------------------------------------------------------------------

def _interp(xs: Sequence[float], ys: Sequence[float], x: float) -> float:
    """Piecewise linear, extrapolating linearly past either end."""
    if len(xs) == 1:
        return ys[0]
    i = min(max(bisect.bisect_left(xs, x), 1), len(xs) - 1)
    x0, x1, y0, y1 = xs[i - 1], xs[i], ys[i - 1], ys[i]
    return y0 + (y1 - y0) * (x - x0) / (x1 - x0)


@dataclass(frozen=True)
class Table:
    """A measured grid: target verify time (ms) per (B, q) and one drafter pass (ms) per B.

    Interpolated linearly between measured points, never smoothed (the H200 table is a
    staircase in q: odd verify widths ran slower than the next even one). Prefill tokens add
    the table's compute-bound marginal cost per token (largest B, widest q), since the table
    has no prefill rows.
    """

    batch: tuple[int, ...]
    widths: tuple[int, ...]
    target_ms: tuple[tuple[float, ...], ...]   # [B index][q index]
    drafter_ms: tuple[float, ...]              # [B index]

    @classmethod
    def from_rows(cls, rows: Sequence[dict[str, Any]], ctx: int = _H200_CTX) -> Table:
        """Rows shaped like h200-verify-cost.json: B, ctx, q, ttarget_ms, tdraft_ms."""
        grid: dict[int, dict[int, float]] = {}
        draft: dict[int, float] = {}
        for r in rows:
            if r.get("ctx", ctx) != ctx:
                continue
            grid.setdefault(int(r["B"]), {})[int(r["q"])] = float(r["ttarget_ms"])
            draft[int(r["B"])] = float(r["tdraft_ms"])
        if not grid:
            raise ValueError(f"cost table has no rows with ctx={ctx}")
        batch = tuple(sorted(grid))
        widths = tuple(sorted(set.intersection(*(set(v) for v in grid.values()))))
        if not widths:
            raise ValueError("cost table has no q measured at every B")
        return cls(batch, widths, tuple(tuple(grid[b][q] for q in widths) for b in batch),
                   tuple(draft[b] for b in batch))

    def target(self, b: float, q: float) -> float:
        per_b = [_interp(self.widths, row, q) for row in self.target_ms]
        return max(_interp(self.batch, per_b, max(b, 1.0)), 0.0)

    def drafter(self, b: float) -> float:
        return max(_interp(self.batch, self.drafter_ms, max(b, 1.0)), 0.0)

    @property
    def prefill_ms_per_token(self) -> float:
        b, qs, row = self.batch[-1], self.widths, self.target_ms[-1]
        if len(qs) < 2:
            return row[0] / b
        return (row[-1] - row[0]) / (b * (qs[-1] - qs[0]))

    def cost(self, b: float, k: int, prefill_tokens: float) -> float:
        decode = self.target(b, k + 1) + k * self.drafter(b) if b > 0 else 0.0
        return decode + prefill_tokens * self.prefill_ms_per_token

    def perturbed(self, spread: float, seed: str) -> Table:
        """Every cell scaled by its own factor in [1 - spread, 1 + spread] (deterministic per
        cell), then made non-decreasing in B again: a bigger batch never runs faster, and the
        running maximum keeps each cell within the spread of its measured value."""
        def factor(*key: object) -> float:
            return 1.0 + spread * random.Random(f"{seed}:{key}").uniform(-1.0, 1.0)

        cols = [[row[j] * factor(b, q) for b, row in zip(self.batch, self.target_ms, strict=True)]
                for j, q in enumerate(self.widths)]
        cols = [_running_max(c) for c in cols]
        drafter = _running_max([d * factor(b, "draft")
                                for b, d in zip(self.batch, self.drafter_ms, strict=True)])
        return Table(self.batch, self.widths,
                     tuple(tuple(cols[j][i] for j in range(len(self.widths)))
                           for i in range(len(self.batch))),
                     tuple(drafter))


def _running_max(xs: Sequence[float]) -> list[float]:
    out: list[float] = []
    for x in xs:
        out.append(max(x, out[-1]) if out else x)
    return out


@cache
def h200_table() -> Table:
    """The H200 table the operator ships (ctx 1024), read as package data."""
    package, path = _H200_TABLE
    data = json.loads(resources.files(package).joinpath(path).read_text())
    return Table.from_rows(data["rows"])


def table_from_json(text: str, ctx: int = _H200_CTX) -> Table:
    """A user's own measured table (same shape as the shipped one)."""
    return Table.from_rows(json.loads(text)["rows"], ctx)


# --- analytic rooflines ------------------------------------------------------------------

@dataclass(frozen=True)
class Roofline:
    """Target step (ms) = overhead + kv_per_seq * B + knee(memory, compute), where
    memory = weights (+ the distinct experts the step's tokens route to, for MoE) and
    compute = per_token * N over the N = B * q verify tokens plus prefill tokens, padded to
    ``tile`` tokens when GEMM tile quantisation is visible (1 = not)."""

    overhead_ms: float        # launch / scheduler / sampler time per step
    weights_ms: float         # streaming the always-used weights once
    kv_per_seq_ms: float      # reading one sequence's KV cache (ctx ~1k)
    per_token_ms: float       # compute per verify token where compute-bound
    draft_ms: float           # one drafter pass at B = 1
    draft_per_seq_ms: float   # its growth per sequence
    experts_ms: float = 0.0   # streaming every routed expert once (MoE only)
    expert_hit: float = 0.0   # top_k / n_experts: chance one token routes to a given expert
    tile: int = 1
    knee_norm: float = 4.0

    def experts_loaded(self, tokens: float) -> float:
        """Expected fraction of experts touched by ``tokens`` tokens (per layer)."""
        if self.experts_ms <= 0.0:
            return 0.0
        return 1.0 - (1.0 - self.expert_hit) ** max(tokens, 0.0)

    def target(self, b: float, q: float, prefill_tokens: float = 0.0) -> float:
        tokens = b * q + prefill_tokens
        padded = self.tile * math.ceil(tokens / self.tile) if self.tile > 1 else tokens
        memory = self.weights_ms + self.experts_ms * self.experts_loaded(tokens)
        compute = self.per_token_ms * padded
        p = self.knee_norm
        knee = (memory ** p + compute ** p) ** (1.0 / p)
        return self.overhead_ms + self.kv_per_seq_ms * b + knee

    def drafter(self, b: float) -> float:
        return self.draft_ms + self.draft_per_seq_ms * b

    def cost(self, b: float, k: int, prefill_tokens: float) -> float:
        return self.target(b, k + 1, prefill_tokens) + (k * self.drafter(b) if b > 0 else 0.0)


# Orders of magnitude behind each roofline (bf16 unless said): memory time = bytes / HBM
# bandwidth, compute time = 2 * active params / effective FLOP/s per token.
MOE = Roofline(
    # Mixtral-8x7B-class (47 B params, 8 experts, top-2, ~13 B active) on one H200:
    # all experts = ~88 GB / 4.8 TB/s = 18 ms; attention + shared weights ~1 ms;
    # 26 GFLOP per token at ~520 TFLOP/s = 0.05 ms.
    overhead_ms=3.0, weights_ms=1.0, experts_ms=18.0, expert_hit=2 / 8,
    kv_per_seq_ms=0.03, per_token_ms=0.05, draft_ms=1.0, draft_per_seq_ms=0.004)
DENSE_EARLY_KNEE = Roofline(
    # ~70 B dense with 4-bit weights (W4A16) on an H100: 35 GB / 3.35 TB/s = 10.5 ms to
    # stream; 140 GFLOP per token with dequantisation at ~540 TFLOP/s = 0.26 ms, so compute
    # overtakes memory at ~48 tokens; past it, GEMM tiles of 16 tokens make a staircase.
    overhead_ms=1.5, weights_ms=10.5, kv_per_seq_ms=0.02, per_token_ms=0.26, tile=16,
    draft_ms=0.8, draft_per_seq_ms=0.004)
SMALL_GPU = Roofline(
    # 8 B dense on an L4 (300 GB/s, ~120 TFLOP/s): 16 GB / 300 GB/s = 53 ms floor; KV of one
    # 1k-token sequence 128 MB = 0.43 ms; 16 GFLOP per token at ~100 TFLOP/s = 0.16 ms, so
    # the knee sits past ~350 tokens; a ~1 B drafter costs ~10 % of a target pass.
    overhead_ms=2.0, weights_ms=53.0, kv_per_seq_ms=0.43, per_token_ms=0.16,
    draft_ms=5.5, draft_per_seq_ms=0.05)
CPU = Roofline(
    # vLLM's CPU backend, ~0.5 B model on a 16-core AVX-512 server: 1 GB of weights at
    # ~250 GB/s = 4 ms, but ~1 GFLOP per token at ~0.7 TFLOP/s = 1.5 ms, so compute-bound from
    # ~3 tokens on: cost grows linearly with tokens almost from the start; Python scheduler
    # overhead ~5 ms per step.
    overhead_ms=5.0, weights_ms=4.0, kv_per_seq_ms=0.05, per_token_ms=1.5,
    draft_ms=0.6, draft_per_seq_ms=0.15)


def _from_table(name: str, description: str, table: Table) -> Hardware:
    return Hardware(name, description, table.cost, table.drafter)


def _from_roofline(name: str, description: str, roof: Roofline) -> Hardware:
    return Hardware(name, description, roof.cost, roof.drafter)


def _profiles() -> dict[str, Hardware]:
    h200 = h200_table()
    return {p.name: p for p in (
        _from_table(
            "h200", "NVIDIA H200, ~30 B dense decoder, ctx 1024: the measured table the "
            "autotuner ships as its prior (17 ms at B=1, 27 ms at B=64 k=0, 87 ms at B=64 k=7; "
            "odd verify widths slower than the next even one)", h200),
        _from_table(
            "h200-perturbed", "the H200 table with every cell scaled by its own fixed factor "
            "in [0.9, 1.1] (another H200 of the same model: clocks, driver, kernels)",
            h200.perturbed(0.10, "h200-perturbed")),
        _from_roofline(
            "moe", "Mixtral-8x7B-class MoE on one H200: each verify token routes to 2 of 8 "
            "experts, so cost climbs steeply and concavely while new experts load (8.5 ms at 1 "
            "verify token, 16 ms at 4, 20 ms at 8) then flattens at a high ~23 ms floor once "
            "all are loaded (16+ tokens); 0.05 ms per token past ~300",
            MOE),
        _from_roofline(
            "dense-early-knee", "~70 B dense W4A16 on an H100: flat ~12 ms up to ~32 verify "
            "tokens, knee at ~48, then compute-bound at 0.26 ms per token in 16-token GEMM "
            "tiles (37 ms at 128 tokens)",
            DENSE_EARLY_KNEE),
        _from_roofline(
            "small-gpu", "8 B dense on an L4: memory-bound 55 ms floor, 0.43 ms KV per "
            "sequence, knee past ~350 tokens; a drafter pass costs ~10% of a target pass",
            SMALL_GPU),
        _from_roofline(
            "cpu", "vLLM CPU backend, ~0.5 B model on 16 cores: ~5 ms overhead + 1.5 ms per "
            "verify token, linear in tokens almost from the first one", CPU),
    )}


PROFILES: dict[str, Hardware] = _profiles()
DEFAULT_SIM = "dense-early-knee"


def profile(name: str) -> Hardware:
    """The named world; unknown names are a ValueError that lists the known ones."""
    try:
        return PROFILES[name]
    except KeyError:
        raise ValueError(
            f"unknown hardware {name!r}; known: {', '.join(sorted(PROFILES))}") from None


def from_table_json(name: str, text: str, ctx: int = _H200_CTX) -> Hardware:
    """A world from a user's own measured table (JSON shaped like the shipped H200 one)."""
    return _from_table(name, f"measured table {name} (ctx {ctx})", table_from_json(text, ctx))
