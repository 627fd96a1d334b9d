"""Step-cost worlds: each is physical (monotone where physics says so) and differs from the
H200 prior in the property its description claims."""

from __future__ import annotations

import itertools
import json
from importlib import resources

import pytest

from specdecode_runtime import hardware
from specdecode_runtime.hardware import PROFILES, profile

ANALYTIC = ("moe", "dense-early-knee", "small-gpu", "cpu")
H200 = profile("h200")


def ms(name: str, b: float, k: int, prefill: float = 0.0) -> float:
    return profile(name).step_seconds(b, k, prefill) * 1000.0


def mean_accepted(a: float, k: int) -> float:
    """Tokens per verify step when every position is accepted with probability a
    (Leviathan et al. 2023): 1 + a + ... + a^k."""
    return sum(a ** i for i in range(k + 1))


def best_k(name: str, b: int, a: float) -> int:
    hw = profile(name)
    return max(range(16), key=lambda k: b * mean_accepted(a, k) / hw.step_seconds(b, k))


def test_the_agreed_profiles_exist_and_describe_themselves() -> None:
    for name in ("h200", "h200-perturbed", "moe", "dense-early-knee", "small-gpu", "cpu"):
        hw = profile(name)
        assert hw.name == name
        assert len(hw.description) > 40


def test_unknown_name_is_a_value_error_listing_the_names() -> None:
    with pytest.raises(ValueError, match=r"known: .*dense-early-knee.*h200.*moe"):
        profile("a100")


def test_nothing_scheduled_costs_nothing_and_negative_k_is_refused() -> None:
    for hw in PROFILES.values():
        assert hw.step_seconds(0, 3) == 0.0
        with pytest.raises(ValueError):
            hw.step_seconds(4, -1)


@pytest.mark.parametrize("name", sorted(PROFILES))
def test_a_bigger_batch_never_runs_faster(name: str) -> None:
    for k in range(0, 16):
        times = [ms(name, b, k) for b in range(1, 300)]
        assert all(t1 >= t0 - 1e-9 for t0, t1 in itertools.pairwise(times)), k


@pytest.mark.parametrize("name", ANALYTIC)
def test_analytic_worlds_never_run_faster_with_more_drafting(name: str) -> None:
    for b in (1, 2, 4, 8, 16, 32, 64, 128, 256):
        times = [ms(name, b, k) for k in range(0, 16)]
        assert all(t1 > t0 for t0, t1 in itertools.pairwise(times)), b


@pytest.mark.parametrize("name", sorted(PROFILES))
def test_prefill_in_the_same_step_costs_time(name: str) -> None:
    assert ms(name, 16, 3, prefill=2048) > ms(name, 16, 3)
    assert ms(name, 0, 0, prefill=512) > 0.0


def _table_cell(b: int, q: int) -> tuple[float, float]:
    text = resources.files("specdecode_operator").joinpath(
        "autotune/data/h200-verify-cost.json").read_text()
    for r in json.loads(text)["rows"]:
        if (r["B"], r["q"], r["ctx"]) == (b, q, 1024):
            return r["ttarget_ms"], r["tdraft_ms"]
    raise AssertionError((b, q))


def test_h200_is_the_shipped_table_at_its_measured_points() -> None:
    for b in (1, 16, 64, 256):
        for q in (1, 2, 3, 4, 8, 16):
            target, draft = _table_cell(b, q)
            assert ms("h200", b, q - 1) == pytest.approx(target + (q - 1) * draft)


def test_h200_keeps_the_measured_staircase() -> None:
    # odd verify widths were slower than the next even one on the H200
    assert ms("h200", 64, 2) > ms("h200", 64, 3)


def test_perturbed_h200_is_within_ten_percent_per_cell_and_really_differs() -> None:
    ratios = [ms("h200-perturbed", b, q - 1) / ms("h200", b, q - 1)
              for b in (1, 4, 16, 32, 64, 128, 256) for q in (1, 2, 3, 4, 5, 6, 8, 10, 12, 16)]
    assert all(0.9 - 1e-9 <= r <= 1.1 + 1e-9 for r in ratios)
    assert max(abs(r - 1.0) for r in ratios) > 0.05
    again = hardware.h200_table().perturbed(0.10, "h200-perturbed")
    assert again == hardware.h200_table().perturbed(0.10, "h200-perturbed")
    # the ±10% is enough to move the best K somewhere the tuner runs
    points = [(b, a) for b in (1, 16, 64) for a in (0.6, 0.8, 0.9)]
    assert any(best_k("h200-perturbed", b, a) != best_k("h200", b, a) for b, a in points)


def test_moe_climbs_concavely_while_experts_load_then_flattens_high() -> None:
    # at B=1 every extra verify token routes to new experts: k=0 -> 3 costs far more
    # (relative) than on the dense H200, and the increments shrink
    rises = [ms("moe", 1, k + 1) - ms("moe", 1, k) for k in range(0, 8)]
    assert all(r1 < r0 for r0, r1 in itertools.pairwise(rises))
    assert ms("moe", 1, 3) / ms("moe", 1, 0) > 1.5 * ms("h200", 1, 3) / ms("h200", 1, 0)
    # once 16+ tokens have loaded every expert, the floor is high and flat in B
    assert ms("moe", 16, 0) / ms("moe", 1, 0) > 2.0
    assert ms("moe", 32, 0) / ms("moe", 16, 0) < 1.1
    assert best_k("moe", 1, 0.8) < best_k("h200", 1, 0.8)


def test_dense_early_knee_is_flat_then_steep_past_48_tokens() -> None:
    # per verify token (drafter passes taken out): 16 -> 32 tokens is below the knee,
    # 256 -> 512 far past it
    hw = profile("dense-early-knee")
    draft16, draft64 = hw.draft_seconds(16) * 1000, hw.draft_seconds(64) * 1000
    below = (ms("dense-early-knee", 16, 1) - ms("dense-early-knee", 16, 0) - draft16) / 16
    past = (ms("dense-early-knee", 64, 7) - ms("dense-early-knee", 64, 3) - 4 * draft64) / 256
    assert below < 0.3 * past
    h200_past = (ms("h200", 64, 7) - ms("h200", 64, 3)) / 256
    assert past > 1.5 * h200_past
    assert best_k("dense-early-knee", 16, 0.8) < best_k("h200", 16, 0.8)


def test_small_gpu_has_a_high_floor_a_late_knee_and_a_costly_drafter() -> None:
    small = profile("small-gpu")
    share = small.draft_seconds(1) / small.step_seconds(1, 0)
    assert 0.08 <= share <= 0.12
    assert share > 1.5 * H200.draft_seconds(1) / H200.step_seconds(1, 0)
    assert ms("small-gpu", 1, 0) > 3 * ms("h200", 1, 0)
    # late knee: quadrupling verify tokens at B=64 hurts it far less than the H200
    assert (ms("small-gpu", 64, 3) / ms("small-gpu", 64, 0)
            < 0.7 * ms("h200", 64, 3) / ms("h200", 64, 0))


def test_cpu_cost_is_linear_in_tokens_almost_from_the_start() -> None:
    rises = [ms("cpu", 16, k + 1) - ms("cpu", 16, k) for k in range(0, 8)]
    assert max(rises) / min(rises) < 1.1
    assert ms("cpu", 16, 0) / ms("cpu", 1, 0) > 2.5
    assert best_k("cpu", 16, 0.8) < best_k("h200", 16, 0.8)


def test_h200_interpolates_between_and_extrapolates_past_the_table() -> None:
    # between measured batch sizes the cost lies between its neighbours
    assert ms("h200", 16, 3) < ms("h200", 24, 3) < ms("h200", 32, 3)
    # q = 7 was not measured: between q = 6 and q = 8 (drafter passes taken out)
    draft = H200.draft_seconds(256) * 1000
    lo, hi = sorted((ms("h200", 256, 5) - 5 * draft, ms("h200", 256, 7) - 7 * draft))
    assert lo <= ms("h200", 256, 6) - 6 * draft <= hi
    # past the table: more sequences and more verify tokens cost more
    assert ms("h200", 512, 3) > ms("h200", 256, 3)
    assert ms("h200", 256, 19) > ms("h200", 256, 15)


# Best K and speedup over k=0 on the H200 table at i.i.d. acceptance a, k searched over 0..11
# (the table in docs/vllm-sim.md); None = speculation off.
PUBLISHED = {
    0.7: {1: (5, 2.13), 16: (5, 1.93), 32: (3, 1.55), 64: (3, 1.18), 128: None, 256: None},
    0.9: {1: (11, 4.08), 16: (9, 3.46), 32: (7, 2.58), 64: (5, 1.77), 128: (5, 1.29),
          256: (5, 1.08)},
    0.5: {1: (3, 1.45), 16: (3, 1.35), 32: (3, 1.15), 64: None},
}


@pytest.mark.parametrize("a", sorted(PUBLISHED))
def test_h200_reproduces_the_best_k_table(a: float) -> None:
    for b, expected in PUBLISHED[a].items():
        def goodput(k: int, b: int = b) -> float:
            return b * mean_accepted(a, k) / H200.step_seconds(b, k)

        k = max(range(12), key=goodput)
        if expected is None:
            assert k == 0, f"a={a} B={b}: speculation should be off, got k={k}"
        else:
            assert (k, round(goodput(k) / goodput(0), 2)) == pytest.approx(
                expected, abs=0.011), f"a={a} B={b}"


def test_a_measured_table_of_your_own() -> None:
    rows = [{"B": b, "ctx": 1024, "q": q, "ttarget_ms": 10.0 * b + q, "tdraft_ms": 1.0}
            for b in (1, 8) for q in (1, 2, 4)]
    rows.append({"B": 1, "ctx": 8192, "q": 1, "ttarget_ms": 999.0, "tdraft_ms": 9.0})
    hw = hardware.from_table_json("mine.json", json.dumps({"device": "test-gpu", "rows": rows}))
    assert hw.step_seconds(8, 1) == pytest.approx((82 + 1) / 1000)  # ctx 8192 rows ignored
    assert hw.step_seconds(1, 2) == pytest.approx((10 + 3 + 2 * 1.0) / 1000)  # q=3 interpolated
    with pytest.raises(ValueError, match="ctx=1024"):
        hardware.from_table_json("x", json.dumps({"rows": rows[-1:]}))
