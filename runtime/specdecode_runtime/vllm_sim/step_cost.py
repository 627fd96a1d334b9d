"""Engine step cost T(B, k) and the goodput it implies. Pure.

T(B, k) = ttarget(B, q=k+1) + k * tdraft(B) (speculation-math.md), read from a measured table
(default: one H200, ctx 1024) with linear interpolation in B and q, and linear extrapolation
past the measured range. Prefill tokens in a step add a per-token cost taken from the table's
compute-bound corner (largest B, widest q), because the table has no prefill rows.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from specdecode_operator.autotune.step_cost import default_table, interp

from .acceptance import AcceptanceProfile


@dataclass(frozen=True)
class StepCostModel:
    """Step time in seconds for B running requests verifying q = k + 1 tokens each."""

    batch_sizes: tuple[int, ...]
    widths: tuple[int, ...]  # q values measured
    ttarget_ms: tuple[tuple[float, ...], ...]  # [B index][q index]
    tdraft_ms: tuple[float, ...]  # [B index]
    source: str = ""

    @classmethod
    def from_rows(cls, rows: Iterable[tuple[int, int, float, float]], source: str = ""
                  ) -> StepCostModel:
        table: dict[int, dict[int, float]] = {}
        draft: dict[int, float] = {}
        for b, q, target, d in rows:
            table.setdefault(int(b), {})[int(q)] = float(target)
            draft[int(b)] = float(d)
        bs = tuple(sorted(table))
        qs = tuple(sorted(set.intersection(*(set(v) for v in table.values()))))
        if not bs or not qs:
            raise ValueError("cost table has no rows with a common set of q values")
        return cls(bs, qs, tuple(tuple(table[b][q] for q in qs) for b in bs),
                   tuple(draft[b] for b in bs), source)

    @classmethod
    def default(cls) -> StepCostModel:
        """The measured H200 table the operator ships (ctx 1024): one copy of the data."""
        data = default_table()
        rows = [(r["B"], r["q"], r["ttarget_ms"], r["tdraft_ms"])
                for r in data["rows"] if r["ctx"] == 1024]
        return cls.from_rows(rows, f"{data['device']}, ctx 1024")

    @classmethod
    def from_json(cls, path: str | Path, ctx: int = 1024) -> StepCostModel:
        """A file shaped like h200-verify-cost.json: rows of B, ctx, q, ttarget_ms, tdraft_ms."""
        data = json.loads(Path(path).read_text())
        rows = [(r["B"], r["q"], r["ttarget_ms"], r["tdraft_ms"])
                for r in data["rows"] if r.get("ctx", ctx) == ctx]
        if not rows:
            raise ValueError(f"{path}: no rows with ctx={ctx}")
        return cls.from_rows(rows, f"{data.get('device', path)}, ctx {ctx}")

    def ttarget(self, b: float, q: float) -> float:
        """Seconds for the target to verify q tokens for each of b sequences."""
        b, q = max(b, 1.0), max(q, 1.0)
        per_b = [interp(self.widths, row, q) for row in self.ttarget_ms]
        return max(interp(self.batch_sizes, per_b, b), 0.0) / 1000.0

    def tdraft(self, b: float) -> float:
        """Seconds for one drafter step over b sequences."""
        return max(interp(self.batch_sizes, self.tdraft_ms, max(b, 1.0)), 0.0) / 1000.0

    @property
    def prefill_per_token(self) -> float:
        """Seconds per prompt token: the marginal verify cost where compute-bound."""
        b, qs, row = self.batch_sizes[-1], self.widths, self.ttarget_ms[-1]
        if len(qs) < 2:
            return row[0] / b / 1000.0
        return (row[-1] - row[0]) / (b * (qs[-1] - qs[0])) / 1000.0

    def step_seconds(self, b: int, k: int, prefill_tokens: int = 0) -> float:
        """T(B, k) plus the prompt tokens prefilled in this step."""
        if b <= 0:
            return 0.0
        return (self.ttarget(b, k + 1) + k * self.tdraft(b)
                + prefill_tokens * self.prefill_per_token)


def goodput(cost: StepCostModel, profile: AcceptanceProfile, b: int, k: int) -> float:
    """Expected generated tokens per second at steady state: B * L(k) / T(B, k)."""
    return b * profile.mean_acceptance_length(k) / cost.step_seconds(b, k)


def best_k(cost: StepCostModel, profile: AcceptanceProfile, b: int,
           ks: Iterable[int] = range(0, 16)) -> int:
    """The k with the highest goodput (every k evaluated: costs are staircases)."""
    return max(ks, key=lambda k: goodput(cost, profile, b, k))
