"""OpenAI request parsing and response shapes, as vLLM 0.32 returns them. Pure.

Text is filler: one word per token, chosen from the prompt and the position only, so a prompt
always gets the same completion (like temperature 0) and streamed and non-streamed outputs
agree. Token counts are approximations (words, plus vLLM-like template overhead for chat).
"""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import dataclass
from typing import Any

WORDS = (
    "the", "model", "draft", "token", "verify", "accept", "step", "batch", "cache", "kernel",
    "graph", "target", "length", "rate", "server", "request", "stream", "prefix", "layer",
    "head", "sample", "greedy", "bonus", "reject", "queue", "load", "speed", "tune", "pod",
    "node", "river", "mountain", "cloud", "signal", "value", "vector", "window", "budget",
    "metric", "counter", "gauge", "histogram", "bucket", "shard", "engine", "worker", "replica",
    "rollout", "restart", "tensor", "latency", "goodput", "profile", "schedule", "code",
    "story", "summary", "answer", "question", "reason", "plan", "result", "and", "of",
)
CHAT_MESSAGE_OVERHEAD = 4  # role markers and separators per message in a chat template
CHAT_PROMPT_OVERHEAD = 2  # BOS and the assistant prefix


class ApiError(Exception):
    """An OpenAI-style error response."""

    def __init__(self, message: str, status: int = 400, err_type: str = "BadRequestError",
                 param: str | None = None) -> None:
        super().__init__(message)
        self.status, self.err_type, self.param = status, err_type, param

    def body(self) -> dict[str, Any]:
        return {"error": {"message": str(self), "type": self.err_type, "param": self.param,
                          "code": self.status}}


def _words(text: str) -> int:
    return len(text.split())


def prompt_key(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big")


def filler(key: int, start: int, count: int) -> str:
    """Tokens start .. start+count-1 of the completion for ``key``."""
    out = []
    for i in range(start, start + count):
        h = (key ^ (i * 0x9E3779B97F4A7C15)) & 0xFFFFFFFFFFFFFFFF
        out.append(" " + WORDS[(h >> 17) % len(WORDS)])
    return "".join(out)


@dataclass(frozen=True)
class GenerationRequest:
    """What the engine needs from one /v1/completions or /v1/chat/completions body."""

    chat: bool
    model: str
    prompt_text: str  # what the completion is keyed on
    prompt_tokens: int
    max_tokens: int  # effective: explicit, or what fits in the context
    requested_max_tokens: int | None
    ignore_eos: bool
    stream: bool
    include_usage: bool


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # [{"type": "text", "text": ...}, ...]
        return " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return "" if content is None else str(content)


def _int_param(body: dict[str, Any], name: str) -> int | None:
    v = body.get(name)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int):
        raise ApiError(f"{name} must be an integer", param=name)
    return v


def parse_request(body: Any, *, chat: bool, served_names: tuple[str, ...],
                  max_model_len: int) -> GenerationRequest:
    if not isinstance(body, dict):
        raise ApiError("request body must be a JSON object")
    model = body.get("model") or served_names[0]
    if model not in served_names:
        raise ApiError(f"The model `{model}` does not exist.", 404, "NotFoundError", "model")
    if (_int_param(body, "n") or 1) != 1:
        raise ApiError("specdecode-sim supports only n=1", param="n")
    if chat:
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise ApiError("messages must be a non-empty list", param="messages")
        texts = [_content_text(m.get("content")) if isinstance(m, dict) else str(m)
                 for m in messages]
        prompt_text = "\n".join(texts)
        prompt_tokens = (sum(_words(t) + CHAT_MESSAGE_OVERHEAD for t in texts)
                         + CHAT_PROMPT_OVERHEAD)
        requested = _int_param(body, "max_completion_tokens")
        if requested is None:
            requested = _int_param(body, "max_tokens")
        default_max = None  # chat: whatever fits in the context
    else:
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
            prompt = prompt[0]
        if isinstance(prompt, str):
            prompt_text, prompt_tokens = prompt, _words(prompt) + 1  # + BOS
        elif isinstance(prompt, list) and prompt and all(
                isinstance(t, int) and not isinstance(t, bool) for t in prompt):
            prompt_text, prompt_tokens = " ".join(map(str, prompt)), len(prompt)
        else:
            raise ApiError("prompt must be a string or a list of token ids "
                           "(batched prompts are not simulated)", param="prompt")
        requested = _int_param(body, "max_tokens")
        default_max = 16  # vLLM's CompletionRequest default
    if requested is not None and requested < 1:
        raise ApiError(f"max_tokens must be at least 1, got {requested}.", param="max_tokens")
    room = max_model_len - prompt_tokens
    if room < 1:
        raise ApiError(
            f"This model's maximum context length is {max_model_len} tokens. However, your "
            f"request has {prompt_tokens} input tokens. Please reduce the length of the input "
            "messages.", param="input_tokens")
    effective = requested if requested is not None else (default_max or room)
    if effective > room:
        if requested is not None:
            raise ApiError(
                f"This model's maximum context length is {max_model_len} tokens. However, you "
                f"requested {prompt_tokens + requested} tokens ({prompt_tokens} in the messages, "
                f"{requested} in the completion). Please reduce the length of the messages or "
                "completion.", param="max_tokens")
        effective = room
    options = body.get("stream_options") or {}
    return GenerationRequest(
        chat=chat, model=model, prompt_text=prompt_text, prompt_tokens=prompt_tokens,
        max_tokens=effective, requested_max_tokens=requested,
        ignore_eos=bool(body.get("ignore_eos", False)), stream=bool(body.get("stream", False)),
        include_usage=bool(isinstance(options, dict) and options.get("include_usage")))


def new_id(chat: bool) -> str:
    return f"{'chatcmpl' if chat else 'cmpl'}-{secrets.token_hex(16)}"


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, Any]:
    return {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens + completion_tokens,
            "completion_tokens": completion_tokens, "prompt_tokens_details": None}


def full_response(req: GenerationRequest, rid: str, created: int, text: str,
                  finish_reason: str, completion_tokens: int) -> dict[str, Any]:
    if req.chat:
        choice: dict[str, Any] = {
            "index": 0,
            "message": {"role": "assistant", "content": text, "refusal": None,
                        "annotations": None, "audio": None, "function_call": None,
                        "tool_calls": [], "reasoning_content": None},
            "logprobs": None, "finish_reason": finish_reason, "stop_reason": None}
        obj = "chat.completion"
    else:
        choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason,
                  "stop_reason": None, "prompt_logprobs": None}
        obj = "text_completion"
    return {"id": rid, "object": obj, "created": created, "model": req.model,
            "choices": [choice], "usage": usage(req.prompt_tokens, completion_tokens),
            "system_fingerprint": None, "kv_transfer_params": None}


def stream_chunk(req: GenerationRequest, rid: str, created: int, text: str | None,
                 finish_reason: str | None, *, role: bool = False,
                 usage_block: dict[str, Any] | None = None) -> dict[str, Any]:
    """One SSE payload; a usage-only chunk when ``usage_block`` is given."""
    obj = "chat.completion.chunk" if req.chat else "text_completion"
    out: dict[str, Any] = {"id": rid, "object": obj, "created": created, "model": req.model}
    if usage_block is not None:
        out["choices"] = []
        out["usage"] = usage_block
        return out
    if req.chat:
        delta: dict[str, Any] = {"role": "assistant", "content": ""} if role else {
            "content": text or ""}
        out["choices"] = [{"index": 0, "delta": delta, "logprobs": None,
                           "finish_reason": finish_reason, "stop_reason": None}]
    else:
        out["choices"] = [{"index": 0, "text": text or "", "logprobs": None,
                           "finish_reason": finish_reason, "stop_reason": None}]
    return out


def models_list(served_names: tuple[str, ...], root: str, max_model_len: int,
                created: int | None = None) -> dict[str, Any]:
    """GET /v1/models, shaped like reference/v1-models.txt (one card per served name)."""
    created = int(time.time()) if created is None else created
    return {"object": "list", "data": [{
        "id": name, "object": "model", "created": created, "owned_by": "vllm", "root": root,
        "parent": None, "max_model_len": max_model_len,
        "permission": [{
            "id": f"modelperm-{secrets.token_hex(8)}", "object": "model_permission",
            "created": created, "allow_create_engine": False, "allow_sampling": True,
            "allow_logprobs": True, "allow_search_indices": False, "allow_view": True,
            "allow_fine_tuning": False, "organization": "*", "group": None,
            "is_blocking": False}],
    } for name in served_names]}
