"""The step-cost model reproduces the measured H200 table and the best-k table derived from it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from specdecode_operator.autotune.step_cost import default_table
from specdecode_runtime.vllm_sim.acceptance import iid
from specdecode_runtime.vllm_sim.step_cost import StepCostModel, best_k, goodput

COST = StepCostModel.default()


def test_measured_points_are_reproduced() -> None:
    rows = [(r["B"], r["q"], r["ttarget_ms"], r["tdraft_ms"])
            for r in default_table()["rows"] if r["ctx"] == 1024]
    assert len(rows) == 70
    for b, q, ttarget_ms, tdraft_ms in rows:
        assert COST.ttarget(b, q) == pytest.approx(ttarget_ms / 1000)
        assert COST.tdraft(b) == pytest.approx(tdraft_ms / 1000)
        k = q - 1
        assert COST.step_seconds(b, k) == pytest.approx((ttarget_ms + k * tdraft_ms) / 1000)


def test_interpolation_and_extrapolation_are_sane() -> None:
    # Between measured batch sizes the cost lies between its neighbours.
    assert COST.ttarget(16, 4) < COST.ttarget(24, 4) < COST.ttarget(32, 4)
    # q = 7 was not measured: between q = 6 and q = 8 at a compute-bound batch.
    lo, hi = sorted((COST.ttarget(256, 6), COST.ttarget(256, 8)))
    assert lo <= COST.ttarget(256, 7) <= hi
    # Past the table: more sequences and more verified tokens cost more, never less.
    assert COST.ttarget(512, 4) > COST.ttarget(256, 4)
    assert COST.ttarget(1, 20) > 0 and COST.ttarget(256, 20) > COST.ttarget(256, 16)
    assert COST.step_seconds(0, 3) == 0.0
    assert COST.step_seconds(4, 0, prefill_tokens=1000) > COST.step_seconds(4, 0)


# speculation-math.md, "Measured on one H200": best k and speedup over k=0, i.i.d. acceptance a.
# None = speculation off. k is searched over 0..11 as in that table.
PUBLISHED = {
    0.7: {1: (5, 2.13), 16: (5, 1.93), 32: (3, 1.55), 64: (3, 1.18), 128: None, 256: None},
    0.9: {1: (11, 4.08), 16: (9, 3.46), 32: (7, 2.58), 64: (5, 1.77), 128: (5, 1.29),
          256: (5, 1.08)},
    0.5: {1: (3, 1.45), 16: (3, 1.35), 32: (3, 1.15), 64: None},
}


@pytest.mark.parametrize("a", sorted(PUBLISHED))
def test_best_k_table_of_the_notes_is_reproduced(a: float) -> None:
    profile = iid(a)
    for b, expected in PUBLISHED[a].items():
        k = best_k(COST, profile, b, range(0, 12))
        speedup = goodput(COST, profile, b, k) / goodput(COST, profile, b, 0)
        if expected is None:
            assert k == 0, f"a={a} B={b}: speculation should be off, got k={k}"
        else:
            assert (k, round(speedup, 2)) == pytest.approx(expected, abs=0.011), f"a={a} B={b}"


def test_cost_file_in_the_shared_format(tmp_path: Path) -> None:
    rows = [{"B": b, "ctx": 1024, "q": q, "ttarget_ms": 10.0 * b + q, "tdraft_ms": 1.0}
            for b in (1, 8) for q in (1, 2, 4)]
    rows.append({"B": 1, "ctx": 8192, "q": 1, "ttarget_ms": 999.0, "tdraft_ms": 9.0})
    f = tmp_path / "cost.json"
    f.write_text(json.dumps({"device": "test-gpu", "rows": rows}))
    cost = StepCostModel.from_json(f)
    assert cost.ttarget(8, 2) == pytest.approx(0.082)  # ctx 8192 rows ignored
    assert cost.step_seconds(1, 2) == pytest.approx((10 + 3 + 2 * 1.0) / 1000)  # q=3 interpolated
    assert "test-gpu" in cost.source
