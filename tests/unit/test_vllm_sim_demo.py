"""The demo's pure parts: the SDD it applies and how it reads the tuner's cost model."""

from __future__ import annotations

from pathlib import Path

import pytest

from specdecode_runtime.demo import DEMO_HARDWARE, demo_sdd, line, plot, predicted_step_ms


def test_the_demo_pods_play_a_world_that_is_not_the_h200() -> None:
    env = {e["name"]: e["value"] for e in demo_sdd(0.0, 180, 5, 30, 60)["spec"]["env"]}
    assert env["SPECDECODE_SIM_HARDWARE"] == DEMO_HARDWARE != "h200"
    env = {e["name"]: e["value"]
           for e in demo_sdd(0.0, 180, 5, 30, 60, "moe")["spec"]["env"]}
    assert env["SPECDECODE_SIM_HARDWARE"] == "moe"
    with pytest.raises(ValueError, match="unknown hardware"):
        demo_sdd(0.0, 180, 5, 30, 60, "a100")


def test_canary_demo_runs_two_replicas_in_canary_mode() -> None:
    plain = demo_sdd(0.0, 180, 5, 30, 60)["spec"]
    assert plain["replicas"] == 1 and "canary" not in plain["autotune"]
    spec = demo_sdd(0.0, 180, 5, 30, 60, canary=True)["spec"]
    assert spec["replicas"] == 2 and spec["autotune"]["canary"] == {"enabled": True}
    # Everything else is the plain demo's.
    spec.pop("replicas"), plain.pop("replicas"), spec["autotune"].pop("canary")
    assert spec == plain


def test_the_status_line_shows_a_running_canary() -> None:
    row = {"t": 12.0, "workload": "code", "k": 3, "recommended": 6, "acceptance": 0.8,
           "mean_length": 3.1, "tokens_per_s": 900.0, "step_ms": 60.0, "world_ms": 61.0,
           "model_ms": None, "ready": 2, "decision": "canary: K 6 on 1 of 2 replicas"}
    assert "canary" not in line(row).split("|")[0]
    assert "K= 3 canary=6 " in line({**row, "canary": 6})


def test_the_cost_model_is_read_defensively() -> None:
    for absent in (None, "fitted", [], {}, {"params": "x"}, {"params": {"floor": 1.0}},
                   {"predictedStepMs": "NaN"}):
        assert predicted_step_ms(absent, 16, 3) is None
    assert predicted_step_ms({"predictedStepMs": "41.5"}, 16, 3) == 41.5
    assert predicted_step_ms({"predictedStepSeconds": 0.02}, 16, 3) == pytest.approx(20.0)
    params = {"floor": 10.0, "perSeq": 0.1, "perToken": 0.05, "hinge": 0.2,
              "draftFloor": 1.0, "draftPerSeq": 0.01, "ripple": 0.3, "knee": 32.0}
    # B=16, k=3: N = 64 verify tokens, 32 past the knee
    expected = 10 + 0.1 * 16 + 0.05 * 64 + 0.2 * 32 + 3 * (1.0 + 0.01 * 16)
    assert predicted_step_ms({"source": "fitted", "params": params}, 16, 3) == pytest.approx(
        expected)


def test_plot_has_the_calibration_panel_with_or_without_a_model(tmp_path: Path) -> None:
    rows = [{"t": float(i), "k": 3 + (i > 5), "acceptance": 0.7, "tokens_per_s": 900.0,
             "step_ms": 80.0, "world_ms": 81.0, "prior_ms": 30.0,
             "model_ms": None if i < 4 else 30 + 10 * i} for i in range(10)]
    assert plot(rows, 5.0, tmp_path / "a.png") == tmp_path / "a.png"
    for r in rows:
        r["model_ms"] = None
    assert plot(rows, 5.0, tmp_path / "b.png") == tmp_path / "b.png"
    for i, r in enumerate(rows):
        r["canary"] = 4 if 2 <= i < 5 else None
    assert plot(rows, 5.0, tmp_path / "c.png") == tmp_path / "c.png"
    assert (tmp_path / "a.png").stat().st_size > 10_000
