"""--speculative-config is accepted and refused like vLLM 0.32 does."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest

from specdecode_runtime.vllm_sim.cli import main
from specdecode_runtime.vllm_sim.spec_config import SpecConfigError, validate

GEMMA4 = "google/gemma-4-31B-it"


@pytest.mark.parametrize(("target", "cfg", "method", "k"), [
    # The operator's examples (tests/operator/test_reconcile_live.py).
    (GEMMA4, {"method": "mtp", "model": "google/gemma-4-31B-it-assistant",
              "num_speculative_tokens": 6}, "mtp", 6),
    ("Qwen/Qwen3-Next-80B-A3B-Instruct", {"method": "mtp", "num_speculative_tokens": 3},
     "mtp", 3),
    ("meta-llama/Llama-3.1-8B-Instruct", {"method": "eagle3",
     "model": "yuhuili/EAGLE3-LLaMA3.1-Instruct-8B", "num_speculative_tokens": 4}, "eagle3", 4),
    ("google/gemma-3-27b-it", {"method": "ngram", "num_speculative_tokens": 7,
                               "prompt_lookup_min": 2, "prompt_lookup_max": 5}, "ngram", 7),
    # The fixture servers' configs.
    ("/models/target", {"method": "draft_model", "model": "/models/draft_noisy",
                        "num_speculative_tokens": 5}, "draft_model", 5),
    # Deprecated model-specific names are aliases of mtp.
    (GEMMA4, {"method": "gemma4_mtp", "model": "x", "num_speculative_tokens": 2}, "mtp", 2),
    ("deepseek-ai/DeepSeek-V3", {"method": "deepseek_mtp", "num_speculative_tokens": 1},
     "mtp", 1),
    ("Qwen/Qwen3.5-27B", {"method": "qwen3_5_mtp", "num_speculative_tokens": 2}, "mtp", 2),
    # No method: guessed from the drafter's name.
    ("m", {"model": "yuhuili/EAGLE-LLaMA3-Instruct-8B", "num_speculative_tokens": 2}, "eagle", 2),
    ("m", {"model": "some/small-drafter", "num_speculative_tokens": "3"}, "draft_model", 3),
])
def test_valid_configs(target: str, cfg: dict[str, Any], method: str, k: int) -> None:
    spec = validate(cfg, target)
    assert (spec.method, spec.num_speculative_tokens) == (method, k)


def _error(cfg: Any, target: str = "Qwen/Qwen3-8B", tp: int = 1) -> str:
    with pytest.raises(SpecConfigError) as e:
        validate(cfg, target, tp)
    text = e.value.render()
    assert "validation error" in text and "for SpeculativeConfig" in text
    return text


def test_unknown_keys_are_forbidden() -> None:
    text = _error({"method": "mtp", "num_speculative_tokens": 2, "disable_by_batch_size": 4})
    assert "disable_by_batch_size\n  Unexpected keyword argument" in text
    assert "type=unexpected_keyword_argument" in text


def test_unknown_method() -> None:
    text = _error({"method": "medusa2", "model": "m", "num_speculative_tokens": 2})
    assert "method\n  Input should be 'ngram', 'medusa'," in text and "type=literal_error" in text
    # In the literal but gone from the engine.
    assert "Unsupported speculative method: 'medusa'" in _error(
        {"method": "medusa", "model": "m", "num_speculative_tokens": 2})


@pytest.mark.parametrize("k", [0, -1])
def test_draft_length_must_be_positive(k: int) -> None:
    text = _error({"method": "ngram", "num_speculative_tokens": k})
    assert "num_speculative_tokens\n  Input should be greater than 0" in text


def test_non_integer_draft_length() -> None:
    assert "Input should be a valid integer" in _error(
        {"method": "ngram", "num_speculative_tokens": 2.5})


@pytest.mark.parametrize("target", [GEMMA4, "google/gemma-4-E4B-it", "/models/gemma4-e2b"])
def test_gemma4_mtp_needs_the_assistant_drafter(target: str) -> None:
    text = _error({"method": "mtp", "num_speculative_tokens": 4}, target)
    assert "Unsupported speculative method: 'mtp'" in text


@pytest.mark.parametrize("method", ["draft_model", "eagle", "eagle3"])
def test_checkpoint_drafters_need_a_model(method: str) -> None:
    text = _error({"method": method, "num_speculative_tokens": 3})
    assert "without speculative model" in text


def test_other_post_init_checks() -> None:
    assert "draft_tensor_parallel_size" in _error(
        {"method": "mtp", "num_speculative_tokens": 2, "tensor_parallel_size": 2})
    assert "draft_tensor_parallel_size=2" in _error(
        {"method": "mtp", "num_speculative_tokens": 2, "draft_tensor_parallel_size": 2}, tp=4)
    validate({"method": "mtp", "num_speculative_tokens": 2, "draft_tensor_parallel_size": 4},
             "Qwen/Qwen3-Next", 4)
    assert "prompt_lookup_min" in _error(
        {"method": "ngram", "num_speculative_tokens": 2, "prompt_lookup_min": 5,
         "prompt_lookup_max": 2})
    assert "n_predict" in _error({"method": "ngram"})
    assert "dictionary" in _error([1, 2])


def test_batch_size_schedule_is_applied_and_capped() -> None:
    spec = validate({"method": "mtp", "num_speculative_tokens": 4,
                     "num_speculative_tokens_per_batch_size": [[1, 8, 6], [9, 64, 2],
                                                               [65, 256, 0]]}, "Qwen/Qwen3-Next")
    assert [spec.k_for_batch(b) for b in (1, 8, 9, 64, 65, 256, 300)] == [4, 4, 2, 2, 0, 0, 4]
    for bad in ([[2, 8, 3]], [[1, 8, 3], [5, 9, 2]], [[1, 8]], [[1, 8, -1]], "x"):
        assert "num_speculative_tokens_per_batch_size" in _error(
            {"method": "mtp", "num_speculative_tokens": 4,
             "num_speculative_tokens_per_batch_size": bad})


def test_synthetic_rejection_sampler_rates_are_honoured() -> None:
    spec = validate({"method": "mtp", "num_speculative_tokens": 3,
                     "rejection_sample_method": "synthetic",
                     "synthetic_acceptance_rates": [0.9, 0.6, 0.3]}, "Qwen/Qwen3-Next")
    assert spec.synthetic_acceptance_rates == (0.9, 0.6, 0.3)
    by_length = validate({"method": "mtp", "num_speculative_tokens": 3,
                          "rejection_sample_method": "synthetic",
                          "synthetic_acceptance_length": 2.5}, "Qwen/Qwen3-Next")
    assert 1 + sum(by_length.synthetic_acceptance_rates or ()) == pytest.approx(2.5)
    assert "synthetic" in _error({"method": "mtp", "num_speculative_tokens": 3,
                                  "synthetic_acceptance_rates": [0.9, 0.6, 0.3]})
    assert "non-increasing" in _error({"method": "mtp", "num_speculative_tokens": 2,
                                       "rejection_sample_method": "synthetic",
                                       "synthetic_acceptance_rates": [0.5, 0.6]})


# ---- through the CLI: exit status and stderr ---------------------------------------------------

@pytest.mark.parametrize(("cfg", "expected", "status"), [
    ('{"method":"mtp","num_speculative_tokens":4,"disable_by_batch_size":4}',
     "Unexpected keyword argument", 1),
    ('{"method":"mtp","num_speculative_tokens":0}', "Input should be greater than 0", 1),
    ('{"method":"mtp","num_speculative_tokens":4}', "Unsupported speculative method: 'mtp'", 1),
    ('{"method":"nope","num_speculative_tokens":4}', "Input should be 'ngram'", 1),
    ('{"method":"eagle3","num_speculative_tokens":4}', "without speculative model", 1),
    ("{method: mtp}", "argument --speculative-config/-sc: invalid loads value", 2),
])
def test_cli_refuses_bad_configs(capsys: pytest.CaptureFixture[str], cfg: str, expected: str,
                                 status: int) -> None:
    rc = main(["serve", GEMMA4, "--port", "0", "--speculative-config", cfg])
    assert rc == status
    assert expected in capsys.readouterr().err


def test_console_entry_point_exits_non_zero() -> None:
    """The real process: python -m ... exits 1 with the pydantic-shaped error on stderr."""
    cfg = json.dumps({"method": "mtp", "num_speculative_tokens": 3, "bogus": 1})
    p = subprocess.run(
        [sys.executable, "-m", "specdecode_runtime.vllm_sim", "serve", "Qwen/Qwen3-Next",
         "--speculative-config", cfg], capture_output=True, text=True, timeout=30)
    assert p.returncode == 1
    assert "1 validation error for SpeculativeConfig\nbogus\n  Unexpected keyword argument" \
        in p.stderr
