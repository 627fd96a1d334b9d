"""--speculative-config: validated the way vLLM 0.32 validates it. Pure.

vLLM's SpeculativeConfig is a pydantic dataclass with extra="forbid", so bad input fails at
startup with a pydantic ValidationError; checks in its __post_init__ surface as "Value error, ..."
entries of the same error. SpecConfigError.render() prints that shape, so an operator that
watches pod logs sees what it would see with the real engine.
Field list: vLLM 0.32's SpeculativeConfig (vllm/config/speculative.py).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

from .acceptance import iid_for_length

# Every field of vllm.config.SpeculativeConfig in 0.32.0; anything else is "extra".
FIELDS = (
    "enforce_eager", "num_speculative_tokens", "model", "method", "draft_tensor_parallel_size",
    "tensor_parallel_size", "quantization", "moe_backend", "attention_backend", "kv_cache_dtype",
    "max_model_len", "revision", "code_revision", "index_share_for_mtp_iteration",
    "disable_padded_drafter_batch", "disable_eagle_block_drop", "use_local_argmax_reduction",
    "use_heterogeneous_vocab", "prompt_lookup_max", "prompt_lookup_min", "parallel_drafting",
    "target_model_config", "target_parallel_config", "num_speculative_tokens_per_batch_size",
    "draft_model_config", "draft_parallel_config", "suffix_decoding_max_tree_depth",
    "suffix_decoding_max_cached_requests", "suffix_decoding_max_spec_factor",
    "suffix_decoding_min_token_prob", "draft_load_config", "rejection_sample_method",
    "synthetic_acceptance_rates", "synthetic_acceptance_length", "enable_adaptive_verification",
    "draft_sample_method", "dspark_draft_topk",
)

MTP_ALIASES = (
    "deepseek_mtp", "dots3_note_mtp", "mimo_mtp", "mimo_v2_mtp", "glm4_moe_mtp",
    "glm4_moe_lite_mtp", "glm_ocr_mtp", "ernie_mtp", "nemotron_h_mtp", "exaone_moe_mtp",
    "exaone4_5_mtp", "qwen3_next_mtp", "qwen4_exp_mtp", "qwen3_5_mtp", "longcat_flash_mtp",
    "bailing_hybrid_v3_mtp", "minimax_m3_mtp", "bailing_hybrid_mtp", "kimi_k3_mtp",
    "pangu_ultra_moe_mtp", "step3p5_mtp", "hy_v3_mtp", "hy_v4_mtp", "gemma4_mtp", "inkling_mtp",
    "glm5_next_mtp",
)
# The SpeculativeMethod literal, in vLLM's order (its error message lists them like this).
METHODS = (
    "ngram", "medusa", "mlp_speculator", "draft_model", "suffix", "custom_class", "eagle",
    "eagle3", "extract_hidden_states", *MTP_ALIASES[:19], "mtp", *MTP_ALIASES[19:], "dflash",
    "ngram_gpu", "dspark",
)
# In the literal but not a drafting method any more (docs/vllm-sim.md): fail like vLLM does.
UNSUPPORTED = ("medusa", "mlp_speculator", "extract_hidden_states")
# Drafters that need a checkpoint; ngram/suffix draft from the text, MTP may use the target's.
NEEDS_MODEL = ("draft_model", "eagle", "eagle3", "custom_class", "dflash", "dspark")

PYDANTIC_DOCS = "https://errors.pydantic.dev/2.12/v"


@dataclass(frozen=True)
class ErrorLine:
    loc: str  # field name, or "" for a model-level (post-init) error
    msg: str
    type: str
    input: Any


class SpecConfigError(ValueError):
    """A --speculative-config vLLM would refuse; ``render()`` is its stderr text."""

    def __init__(self, errors: list[ErrorLine], raw: dict[str, Any] | None = None) -> None:
        self.errors = errors
        self.raw = raw or {}
        super().__init__("; ".join(f"{e.loc}: {e.msg}" if e.loc else e.msg for e in errors))

    def render(self) -> str:
        n = len(self.errors)
        lines = [f"pydantic_core._pydantic_core.ValidationError: {n} validation error"
                 f"{'s' if n > 1 else ''} for SpeculativeConfig"]
        for e in self.errors:
            if e.loc:
                lines.append(e.loc)
                shown, kind = repr(e.input), type(e.input).__name__
            else:  # post-init errors report the whole call
                shown, kind = f"ArgsKwargs((), {self.raw!r})", "ArgsKwargs"
            lines.append(f"  {e.msg} [type={e.type}, input_value={shown}, input_type={kind}]")
            lines.append(f"    For further information visit {PYDANTIC_DOCS}/{e.type}")
        return "\n".join(lines)


@dataclass(frozen=True)
class SpecConfig:
    """What the simulator needs from a valid --speculative-config."""

    method: str  # canonical (MTP aliases -> "mtp")
    model: str | None
    num_speculative_tokens: int  # K: sizes the per-position metric series
    per_batch_size: tuple[tuple[int, int, int], ...] = ()
    synthetic_acceptance_rates: tuple[float, ...] | None = None
    raw: tuple[tuple[str, Any], ...] = ()

    def k_for_batch(self, batch: int) -> int:
        """Draft length used in a step with ``batch`` scheduled requests (vLLM's per-batch
        schedule, capped at num_speculative_tokens; outside every range: the full K)."""
        for start, end, k in self.per_batch_size:
            if start <= batch <= end:
                return min(k, self.num_speculative_tokens)
        return self.num_speculative_tokens


def _int(value: Any) -> int | None:
    """pydantic's lax int: ints, integral floats and numeric strings; not bools."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and re.fullmatch(r"\s*[+-]?\d+\s*", value):
        return int(value)
    return None


def looks_like_gemma4(target_model: str) -> bool:
    name = target_model.lower()
    return "gemma-4" in name or "gemma4" in name


def parse_json(text: str) -> Any:
    """The CLI argument as JSON (argparse reports a ValueError from here)."""
    return json.loads(text)


def validate(raw: Any, target_model: str, tensor_parallel_size: int = 1) -> SpecConfig:
    """A SpecConfig, or SpecConfigError with vLLM's complaints."""
    if not isinstance(raw, dict):
        raise SpecConfigError([ErrorLine(
            "", "Input should be a dictionary or an instance of SpeculativeConfig",
            "dataclass_type", raw)])
    errors: list[ErrorLine] = []

    def field_error(loc: str, msg: str, kind: str) -> None:
        errors.append(ErrorLine(loc, msg, kind, raw[loc]))

    for key in raw:
        if key not in FIELDS:
            field_error(key, "Unexpected keyword argument", "unexpected_keyword_argument")

    method = raw.get("method")
    if method is not None and method not in METHODS:
        listed = ", ".join(f"'{m}'" for m in METHODS[:-1]) + f" or '{METHODS[-1]}'"
        field_error("method", f"Input should be {listed}", "literal_error")
    model = raw.get("model")
    if model is not None and not isinstance(model, str):
        field_error("model", "Input should be a valid string", "string_type")

    k: int | None = None
    if raw.get("num_speculative_tokens") is not None:
        k = _int(raw["num_speculative_tokens"])
        if k is None:
            field_error("num_speculative_tokens", "Input should be a valid integer", "int_type")
        elif k <= 0:
            field_error("num_speculative_tokens", "Input should be greater than 0",
                        "greater_than")
    for name in ("draft_tensor_parallel_size", "prompt_lookup_max", "prompt_lookup_min",
                 "max_model_len"):
        if raw.get(name) is not None:
            v = _int(raw[name])
            if v is None:
                field_error(name, "Input should be a valid integer", "int_type")
            elif v < 1:
                field_error(name, "Input should be greater than or equal to 1",
                            "greater_than_equal")
    per_batch = _per_batch(raw, errors)
    if errors:
        raise SpecConfigError(errors, raw)

    # __post_init__-style checks: reported as one "Value error" each, first one wins.
    def fail(msg: str) -> SpecConfigError:
        return SpecConfigError([ErrorLine("", f"Value error, {msg}", "value_error", raw)], raw)

    if raw.get("tensor_parallel_size") is not None:
        raise fail("'tensor_parallel_size' is not a valid argument in the speculative_config. "
                   "Please pass 'draft_tensor_parallel_size' instead.")
    if method is None:
        if model is None:
            raise fail("num_speculative_tokens was provided but without speculative model.")
        # vLLM guesses the method from the drafter's name when it is not given.
        low = model.lower()
        method = "eagle3" if "eagle3" in low else "eagle" if "eagle" in low else "draft_model"
    if method in UNSUPPORTED:
        raise fail(f"Unsupported speculative method: '{method}'")
    canonical = "mtp" if method in MTP_ALIASES else method
    if canonical == "mtp" and model is None and looks_like_gemma4(target_model):
        # Gemma 4 has no MTP heads in the checkpoint: it needs the separate assistant drafter.
        raise fail("Unsupported speculative method: 'mtp'")
    if canonical in NEEDS_MODEL and model is None:
        raise fail("num_speculative_tokens was provided but without speculative model.")
    if k is None:
        if canonical != "mtp":
            raise fail("num_speculative_tokens must be provided with speculative model unless "
                       "the draft model config contains an n_predict parameter.")
        k = 1  # vLLM takes the checkpoint's MTP layer count; 1 is the common case
    dtp = _int(raw.get("draft_tensor_parallel_size"))
    if dtp is not None and dtp not in (1, tensor_parallel_size):
        raise fail(f"draft_tensor_parallel_size={dtp} cannot be other value than 1 or target "
                   f"model tensor_parallel_size={tensor_parallel_size}")
    lo, hi = _int(raw.get("prompt_lookup_min")), _int(raw.get("prompt_lookup_max"))
    if lo is not None and hi is not None and lo > hi:
        raise fail(f"prompt_lookup_min={lo} must be <= prompt_lookup_max={hi}")
    synthetic = _synthetic(raw, k, fail)
    return SpecConfig(
        method=canonical, model=model, num_speculative_tokens=k, per_batch_size=per_batch,
        synthetic_acceptance_rates=synthetic, raw=tuple(raw.items()))


def _per_batch(raw: dict[str, Any], errors: list[ErrorLine]) -> tuple[tuple[int, int, int], ...]:
    name = "num_speculative_tokens_per_batch_size"
    value = raw.get(name)
    if value is None:
        return ()
    out: list[tuple[int, int, int]] = []
    ok = isinstance(value, list) and all(
        isinstance(e, (list, tuple)) and len(e) == 3 and all(_int(x) is not None for x in e)
        for e in value)
    if ok:
        out = [(_int(a), _int(b), _int(c)) for a, b, c in value]  # type: ignore[misc]
        ok = (bool(out) and out[0][0] == 1
              and all(a <= b and k >= 0 for a, b, k in out)
              and all(prev[1] < cur[0] for prev, cur in pairwise(out)))
    if not ok:
        errors.append(ErrorLine(
            name, "Value error, expected [[start_bs, end_bs, k], ...]: inclusive, increasing, "
            "non-overlapping ranges starting at batch size 1, k >= 0", "value_error", value))
        return ()
    return tuple(out)


def _synthetic(raw: dict[str, Any], k: int, fail: Any) -> tuple[float, ...] | None:
    """vLLM's own synthetic rejection sampler: per-position unconditional acceptance rates
    (exactly the survival curve) or a target mean acceptance length. Honoured when given."""
    rates, length = raw.get("synthetic_acceptance_rates"), raw.get("synthetic_acceptance_length")
    if rates is None and length is None:
        return None
    if raw.get("rejection_sample_method") != "synthetic":
        raise fail("synthetic_acceptance_rates/synthetic_acceptance_length are only valid "
                   "when rejection_sample_method is 'synthetic'")
    if rates is not None and length is not None:
        raise fail("synthetic_acceptance_rates and synthetic_acceptance_length are mutually "
                   "exclusive")
    if rates is not None:
        if (not isinstance(rates, list) or len(rates) != k
                or not all(isinstance(r, (int, float)) and 0 <= r <= 1 for r in rates)
                or any(b > a for a, b in pairwise(rates))):
            raise fail(f"synthetic_acceptance_rates must have length num_speculative_tokens={k}, "
                       "entries in [0, 1], monotonically non-increasing")
        return tuple(float(r) for r in rates)
    if not isinstance(length, (int, float)) or not 1 <= length <= k + 1:
        raise fail(f"synthetic_acceptance_length must be in [1, {k + 1}]")
    a = iid_for_length(float(length), k)
    return tuple(a**i for i in range(1, k + 1))
