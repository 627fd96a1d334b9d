"""The stand-in over HTTP on 127.0.0.1: endpoints, OpenAI shapes, SSE, /metrics under traffic,
startup behaviour. Servers run in-process (ThreadedSim) on a free port, with accelerated time;
one test runs the real console process."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

import specdecode_runtime.vllm_sim as vllm_sim
from specdecode_runtime.vllm_sim.acceptance import parse_profile
from specdecode_runtime.vllm_sim.server import ThreadedSim

REFERENCE = Path(vllm_sim.__file__).parent / "reference"
K = 4
BASE = ["serve", "/models/target", "--served-model-name", "tiny", "tiny-alias",
        "--host", "127.0.0.1", "--port", "0", "--max-model-len", "512",
        "--dtype", "bfloat16", "--enforce-eager", "--sim-log-interval", "0"]
SPEC = ["--speculative-config", json.dumps({"method": "draft_model", "model": "/models/draft",
                                            "num_speculative_tokens": K})]
LV = (("engine", "0"), ("model_name", "tiny"))


@pytest.fixture(scope="module")
def sim() -> Iterator[ThreadedSim]:
    with ThreadedSim.start([*BASE, *SPEC, "--sim-profile", "gsm8k", "--sim-time-scale", "0.001",
                            "--sim-seed", "1"], env={}) as s:
        yield s


def scrape(s: ThreadedSim) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    r = httpx.get(s.url + "/metrics")
    assert r.status_code == 200
    return {(x.name, tuple(sorted(x.labels.items()))): x.value
            for fam in text_string_to_metric_families(r.text) for x in fam.samples
            if x.name.startswith("vllm:")}


def complete(s: ThreadedSim, prompt: str, max_tokens: int, **extra: Any) -> dict[str, Any]:
    r = httpx.post(s.url + "/v1/completions", timeout=30, json={
        "model": "tiny", "prompt": prompt, "max_tokens": max_tokens, "temperature": 0,
        "ignore_eos": True, **extra})
    assert r.status_code == 200, r.text
    return r.json()


def burst(s: ThreadedSim, n: int, max_tokens: int) -> list[dict[str, Any]]:
    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(lambda i: complete(s, f"prompt number {i}", max_tokens), range(n)))


def test_health_version_models(sim: ThreadedSim) -> None:
    for path in ("/health", "/ping"):
        assert httpx.get(sim.url + path).status_code == 200
    r = httpx.get(sim.url + "/version")
    assert (r.status_code, r.text) == (200, '{"version":"0.32.0"}')  # real vLLM 0.32's /version
    models = httpx.get(sim.url + "/v1/models").json()
    real = json.loads((REFERENCE / "v1-models.txt").read_text().splitlines()[0])
    assert models.keys() == real.keys()
    assert [m["id"] for m in models["data"]] == ["tiny", "tiny-alias"]
    card, real_card = models["data"][0], real["data"][0]
    assert card.keys() == real_card.keys()
    assert card["permission"][0].keys() == real_card["permission"][0].keys()
    assert (card["root"], card["max_model_len"], card["owned_by"]) == ("/models/target", 512,
                                                                      "vllm")


def test_completion_shape_like_the_fixture_requests(sim: ThreadedSim) -> None:
    # the captures' request body (reference/README.md): usage and finish_reason.
    body = complete(sim, "the cat is", 64)
    assert body["object"] == "text_completion" and body["id"].startswith("cmpl-")
    choice = body["choices"][0]
    assert choice["finish_reason"] == "length"
    assert len(choice["text"].split()) == 64
    u = body["usage"]
    assert u["completion_tokens"] == 64
    assert u["total_tokens"] == u["prompt_tokens"] + 64
    assert complete(sim, "the cat is", 64)["choices"][0]["text"] == choice["text"]  # like T=0


def sse(r: httpx.Response) -> list[Any]:
    events = []
    for line in r.iter_lines():
        if line.startswith("data: "):
            data = line[len("data: "):]
            events.append(data if data == "[DONE]" else json.loads(data))
    return events


def test_streaming_chat(sim: ThreadedSim) -> None:
    messages = [{"role": "user", "content": "write a haiku about speculative decoding"}]
    whole = httpx.post(sim.url + "/v1/chat/completions", json={
        "model": "tiny", "messages": messages, "max_tokens": 30, "ignore_eos": True}).json()
    assert whole["object"] == "chat.completion"
    with httpx.stream("POST", sim.url + "/v1/chat/completions", json={
            "model": "tiny", "messages": messages, "max_tokens": 30, "ignore_eos": True,
            "stream": True, "stream_options": {"include_usage": True}}) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        events = sse(r)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    content = [c for c in chunks[1:] if c["choices"]]
    assert len(content) > 2  # several engine steps, each with 1 + accepted tokens
    assert [c["choices"][0]["finish_reason"] for c in content][-1] == "length"
    text = "".join(c["choices"][0]["delta"]["content"] for c in content)
    assert text == whole["choices"][0]["message"]["content"]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 30


def test_streaming_completion(sim: ThreadedSim) -> None:
    with httpx.stream("POST", sim.url + "/v1/completions", json={
            "model": "tiny", "prompt": "hello", "max_tokens": 12, "stream": True,
            "ignore_eos": True}) as r:
        events = sse(r)
    assert events[-1] == "[DONE]"
    texts = [e["choices"][0]["text"] for e in events[:-1]]
    assert len("".join(texts).split()) == 12


def test_request_errors(sim: ThreadedSim) -> None:
    r = httpx.post(sim.url + "/v1/completions", json={"model": "nope", "prompt": "x"})
    assert r.status_code == 404 and "does not exist" in r.json()["error"]["message"]
    r = httpx.post(sim.url + "/v1/completions", json={"model": "tiny", "prompt": "x",
                                                       "max_tokens": 600})
    assert r.status_code == 400 and "maximum context length is 512" in r.json()["error"]["message"]
    assert httpx.post(sim.url + "/v1/chat/completions", json={"model": "tiny"}).status_code == 400


def test_metrics_under_traffic_track_the_profile(sim: ThreadedSim) -> None:
    r = httpx.get(sim.url + "/metrics")
    assert r.headers["content-type"] == "text/plain; version=1.0.0; charset=utf-8"
    before = scrape(sim)
    outputs = burst(sim, 16, 480)
    after = scrape(sim)
    for key, value in before.items():
        if key[0].endswith(("_total", "_count", "_bucket")):
            assert after[key] >= value, key

    def delta(name: str, *extra: tuple[str, str]) -> float:
        key = (name, tuple(sorted((*LV, *extra))))
        return after[key] - before[key]
    generated = sum(o["usage"]["completion_tokens"] for o in outputs)
    assert delta("vllm:generation_tokens_total") == generated == 16 * 480
    assert delta("vllm:request_success_total", ("finished_reason", "length")) == 16
    drafts = delta("vllm:spec_decode_num_drafts_total")
    assert drafts > 1500
    assert delta("vllm:spec_decode_num_draft_tokens_total") == K * drafts
    survival = parse_profile("gsm8k").survival(K)
    for i in range(K):
        measured = delta("vllm:spec_decode_num_accepted_tokens_per_pos_total",
                         ("position", str(i))) / drafts
        assert measured == pytest.approx(survival[i], abs=0.05), i
    assert after[("vllm:num_requests_running", LV)] == 0
    assert ("vllm:spec_decode_num_accepted_tokens_per_pos_total",
            tuple(sorted((*LV, ("position", str(K)))))) not in after


def test_schedule_switch_lowers_mean_acceptance_length() -> None:
    # The schedule is wall-clock: the first burst must end before the switch. 1.5 s was
    # enough on an idle machine but not with the other core busy; 4 s leaves room.
    switch = 4.0
    with ThreadedSim.start([*BASE, *SPEC, "--sim-time-scale", "0.001"],
                           env={"SPECDECODE_SIM_SCHEDULE": f"0:code,{switch}:creative"}) as s:
        ready = time.monotonic()
        m0 = scrape(s)
        burst(s, 8, 200)
        m1 = scrape(s)
        assert time.monotonic() - ready < switch, "first burst too slow for the schedule"
        time.sleep(max(0.0, switch - (time.monotonic() - ready)) + 0.05)
        burst(s, 8, 200)
        m2 = scrape(s)

    def mal(a: dict[Any, float], b: dict[Any, float]) -> float:
        drafts = b[("vllm:spec_decode_num_drafts_total", LV)] - \
            a[("vllm:spec_decode_num_drafts_total", LV)]
        acc = b[("vllm:spec_decode_num_accepted_tokens_total", LV)] - \
            a[("vllm:spec_decode_num_accepted_tokens_total", LV)]
        return 1 + acc / drafts
    code, creative = mal(m0, m1), mal(m1, m2)
    assert code == pytest.approx(parse_profile("code").mean_acceptance_length(K), abs=0.25)
    assert creative == pytest.approx(parse_profile("creative").mean_acceptance_length(K),
                                     abs=0.25)
    assert creative < code - 1.5


def test_no_spec_decode_series_without_speculative_config() -> None:
    with ThreadedSim.start([*BASE, "--sim-time-scale", "0.001"], env={}) as s:
        complete(s, "x", 8)
        text = httpx.get(s.url + "/metrics").text
    assert "vllm:generation_tokens_total" in text
    assert "spec_decode" not in text


def test_disable_log_stats_serves_no_vllm_metrics() -> None:
    with ThreadedSim.start([*BASE, *SPEC, "--disable-log-stats"], env={}) as s:
        text = httpx.get(s.url + "/metrics").text
    assert "python_gc_objects_collected_total" in text
    assert "vllm:" not in text


def test_api_key_protects_v1_only() -> None:
    with ThreadedSim.start([*BASE, "--api-key", "sekret"], env={}) as s:
        assert httpx.get(s.url + "/v1/models").status_code == 401
        assert httpx.get(s.url + "/v1/models",
                         headers={"Authorization": "Bearer sekret"}).status_code == 200
        assert httpx.get(s.url + "/health").status_code == 200
        assert httpx.get(s.url + "/metrics").status_code == 200


def test_port_refuses_connections_while_loading() -> None:
    s = ThreadedSim.start([*BASE, "--sim-startup-delay", "0.6"], env={}, wait_ready=False)
    try:
        port = s.port  # bound at once, like vLLM, but not listening yet
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"http://127.0.0.1:{port}/health", timeout=1)
        s.wait_ready()
        assert httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200
    finally:
        s.stop()


def test_client_disconnect_aborts_the_request() -> None:
    with ThreadedSim.start([*BASE, *SPEC], env={}) as s:  # real time: ~20 ms per step
        with httpx.stream("POST", s.url + "/v1/completions", json={
                "model": "tiny", "prompt": "long", "max_tokens": 400, "stream": True,
                "ignore_eos": True}) as r:
            lines = r.iter_lines()
            next(lines)
        abort = ("vllm:request_success_total", (*LV[:1], ("finished_reason", "abort"), LV[1]))
        deadline = time.monotonic() + 5
        while scrape(s)[abort] < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        m = scrape(s)
        assert m[abort] == 1
        assert m[("vllm:num_requests_running", LV)] == 0


def test_engine_death_fails_requests_and_health() -> None:
    """Like vLLM's EngineDeadError: in-flight and new requests get 500, /health 503."""
    with ThreadedSim.start([*BASE, *SPEC], env={}) as s:
        assert s.server is not None
        core = s.server.core

        def boom(now: float) -> None:
            raise RuntimeError("simulated CUDA error")
        s.call(lambda: setattr(core, "step", boom))
        r = httpx.post(s.url + "/v1/completions", json={"model": "tiny", "prompt": "x"})
        assert r.status_code == 500 and r.json()["error"]["type"] == "InternalServerError"
        assert httpx.get(s.url + "/health").status_code == 503
        assert httpx.post(s.url + "/v1/completions",
                          json={"model": "tiny", "prompt": "x"}).status_code == 500


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_console_process_lifecycle() -> None:
    """`specdecode-sim serve ...` as the pod runner starts it: refused while loading, 200 when
    ready, exit 0 on SIGTERM."""
    port = _free_port()
    env = {**os.environ, "SPECDECODE_SIM_STARTUP_DELAY": "1.0"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "specdecode_runtime.vllm_sim", "serve", "tiny", "--host",
         "127.0.0.1", "--port", str(port), *SPEC], env=env, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True)
    try:
        seen: list[str] = []
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                code = httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code
                seen.append(str(code))
                break
            except httpx.ConnectError:
                if not seen:
                    seen.append("refused")
            time.sleep(0.05)
        assert seen == ["refused", "200"]
        assert httpx.get(f"http://127.0.0.1:{port}/v1/models").json()["data"][0]["id"] == "tiny"
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=10)
    assert proc.returncode == 0, out
    assert f"Starting vLLM API server 0 on http://127.0.0.1:{port}" in out


def test_schedule_epoch_is_shared_wall_clock_so_a_restart_does_not_rewind() -> None:
    # The schedule switched to creative 100 s ago by the wall clock: a pod started now
    # serves creative acceptance at once, not code.
    env = {"SPECDECODE_SIM_SCHEDULE": "0:code,50:creative",
           "SPECDECODE_SIM_SCHEDULE_EPOCH": str(time.time() - 150)}
    with ThreadedSim.start([*BASE, *SPEC, "--sim-time-scale", "0.001"], env=env) as s:
        m0 = scrape(s)
        burst(s, 8, 200)
        m1 = scrape(s)
    drafts = m1[("vllm:spec_decode_num_drafts_total", LV)] - \
        m0[("vllm:spec_decode_num_drafts_total", LV)]
    acc = m1[("vllm:spec_decode_num_accepted_tokens_total", LV)] - \
        m0[("vllm:spec_decode_num_accepted_tokens_total", LV)]
    assert 1 + acc / drafts == pytest.approx(
        parse_profile("creative").mean_acceptance_length(K), abs=0.25)
