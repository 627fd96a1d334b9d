"""Talking to a real vLLM server on its local port: completions, /metrics counters, and a
background request loop. Standard library only."""

from __future__ import annotations

import json
import re
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

# The request set of the reference captures (docs/vllm-reference.md#reference-captures): 4
# sequential then 4 concurrent completions, 64 tokens each, greedy, ignore_eos. At temperature
# 0 every repetition of the set gives the same tokens and the same spec-decode counts.
PROMPTS = (
    "the cat is", "one two three four", "speculative decoding draft", "red green blue",
    "model token server", "the river and the mountain",
    "a b c a b c a b c a b c a b c a b c", "hello world hello world hello world hello world",
)
MAX_TOKENS = 64

SPEC = "vllm:spec_decode_num_"
_SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? (\S+)$')


def get(port: int, path: str, timeout: float = 5.0) -> tuple[int, str]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as r:
        return r.status, r.read().decode()


def complete(port: int, model: str, prompt: str, timeout: float = 120.0) -> dict[str, Any]:
    body = json.dumps({"model": model, "prompt": prompt, "max_tokens": MAX_TOKENS,
                       "temperature": 0, "ignore_eos": True}).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/completions", body,
                                 {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return dict(json.load(r))


def request_set(port: int, model: str) -> list[dict[str, Any]]:
    out = [complete(port, model, p) for p in PROMPTS[:4]]
    with ThreadPoolExecutor(4) as ex:
        out += list(ex.map(lambda p: complete(port, model, p), PROMPTS[4:]))
    return out


@dataclass(frozen=True)
class Counters:
    """vLLM's spec-decode and request counters as read from one /metrics response."""

    drafts: float
    draft_tokens: float
    accepted: float
    per_pos: tuple[float, ...]
    generation_tokens: float
    requests: float

    @property
    def rate(self) -> float:
        return self.accepted / self.draft_tokens

    @property
    def survival(self) -> tuple[float, ...]:
        return tuple(a / self.drafts for a in self.per_pos)

    def minus(self, other: Counters) -> Counters:
        return Counters(
            self.drafts - other.drafts, self.draft_tokens - other.draft_tokens,
            self.accepted - other.accepted,
            tuple(a - b for a, b in zip(self.per_pos, other.per_pos, strict=True)),
            self.generation_tokens - other.generation_tokens, self.requests - other.requests)


def samples(text: str) -> list[tuple[str, dict[str, str], float]]:
    out = []
    for line in text.splitlines():
        m = _SAMPLE.match(line)
        if not m:
            continue
        labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2) or ""))
        out.append((m.group(1), labels, float(m.group(3))))
    return out


def counters(port: int) -> Counters:
    """Sums over all series of each counter (one engine, so one series each)."""
    _, text = get(port, "/metrics")
    total: dict[str, float] = {}
    per_pos: dict[int, float] = {}
    for name, labels, value in samples(text):
        if name == f"{SPEC}accepted_tokens_per_pos_total":
            per_pos[int(labels["position"])] = per_pos.get(int(labels["position"]), 0) + value
        elif name.endswith("_total"):
            total[name] = total.get(name, 0.0) + value
    return Counters(
        drafts=total[f"{SPEC}drafts_total"], draft_tokens=total[f"{SPEC}draft_tokens_total"],
        accepted=total[f"{SPEC}accepted_tokens_total"],
        per_pos=tuple(per_pos[i] for i in range(len(per_pos))),
        generation_tokens=total["vllm:generation_tokens_total"],
        requests=total["vllm:request_success_total"])


@dataclass
class Traffic:
    """Sends the request set again and again (``pause`` seconds between sets) until stop()."""

    port: int
    model: str
    pause: float = 1.0
    sets: int = 0
    completions: int = 0
    errors: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> Traffic:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                for r in request_set(self.port, self.model):
                    if r["usage"]["completion_tokens"] != MAX_TOKENS:
                        self.errors.append(f"short completion: {r['usage']}")
                    self.completions += 1
                self.sets += 1
            except Exception as e:  # recorded and asserted on by the test
                self.errors.append(f"{type(e).__name__}: {e}")
                time.sleep(1)
            self._stop.wait(self.pause)

    def stop(self) -> None:
        """Returns after the set in flight has finished: the counters are quiet then."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=180)


@dataclass
class ClosedLoop:
    """``clients`` closed-loop clients, each sending one completion after another (no
    pause): the server runs about ``clients`` requests at once. ``set_clients`` changes the
    concurrency on the fly (a client above the new count stops after its request)."""

    port: int
    model: str
    clients: int = 0
    completions: int = 0
    errors: list[str] = field(default_factory=list)
    _threads: dict[int, threading.Thread] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _stop: threading.Event = field(default_factory=threading.Event)

    def set_clients(self, n: int) -> None:
        with self._lock:
            self.clients = n
            for i in range(n):
                # A client told to stop may still finish its request: it then sees i < n
                # again and carries on, so client i is never started twice.
                if i not in self._threads:
                    self._threads[i] = threading.Thread(target=self._run, args=(i,),
                                                        daemon=True)
                    self._threads[i].start()

    def _run(self, i: int) -> None:
        prompt = PROMPTS[i % len(PROMPTS)]
        while True:
            with self._lock:  # leaves the registry under the lock set_clients holds
                if self._stop.is_set() or i >= self.clients:
                    self._threads.pop(i, None)
                    return
            try:
                r = complete(self.port, self.model, prompt)
                if r["usage"]["completion_tokens"] != MAX_TOKENS:
                    self.errors.append(f"short completion: {r['usage']}")
                with self._lock:
                    self.completions += 1
            except Exception as e:  # recorded and asserted on by the test
                self.errors.append(f"{type(e).__name__}: {e}")
                time.sleep(1)

    def stop(self) -> None:
        """Returns after the requests in flight have finished."""
        self._stop.set()
        with self._lock:
            threads = list(self._threads.values())
        for t in threads:
            t.join(timeout=180)
