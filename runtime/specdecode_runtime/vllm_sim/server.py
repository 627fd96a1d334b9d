"""The HTTP shell: aiohttp server, the engine loop on the wall clock, startup and shutdown.

Everything decided here is about time and I/O; what a step does is EngineCore's business.
Like vLLM, the port is bound at once but only listens when "loading" is done, so probes get
connection refused (not 503) during --sim-startup-delay (docs/vllm-sim.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from . import openai_api as api
from .engine import Emission, EngineConfig, EngineCore, SimRequest, natural_length
from .metrics import CONTENT_TYPE, CacheInfo, IntervalStats, VllmMetrics, format_stats
from .serve_args import VLLM_VERSION, ServeArgs, parse_args

log = logging.getLogger("vllm.entrypoints.openai.api_server")
engine_log = logging.getLogger("vllm.v1.metrics.loggers")

# When the loop wakes late by less than this, the next step still starts at the previous
# step's modelled end, so timer jitter does not eat simulated throughput.
RESYNC_SECONDS = 0.05
ENGINE_DEAD = api.ApiError("EngineCore encountered an issue. See stack trace for the root cause.",
                           500, "InternalServerError")


def _dumps(obj: Any) -> str:
    """Compact JSON, as vLLM's FastAPI/pydantic responses are."""
    return json.dumps(obj, separators=(",", ":"))


def _json(obj: Any, status: int = 200) -> web.Response:
    return web.json_response(obj, status=status, dumps=_dumps)


def setup_logging() -> None:
    """vLLM's log line shape: (APIServer pid=N) INFO 11-28 17:16:33 [file.py:335] message."""
    root = logging.getLogger()
    if any(getattr(h, "_specdecode_sim", False) for h in root.handlers):
        return
    handler = logging.StreamHandler()
    handler._specdecode_sim = True  # type: ignore[attr-defined]
    handler.setFormatter(logging.Formatter(
        "(APIServer pid=%(process)d) %(levelname)s %(asctime)s [%(filename)s:%(lineno)d] "
        "%(message)s", datefmt="%m-%d %H:%M:%S"))
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


@dataclass
class _Stream:
    queue: asyncio.Queue[Emission | None]  # None: the engine died
    finished: bool = False


class SimServer:
    """One simulated vLLM server. ``await start()`` ... ``await stop()``."""

    def __init__(self, args: ServeArgs, *, clock: Any = time.monotonic) -> None:
        self.args = args
        self._clock = clock
        self._epoch = clock()
        spec = args.speculative_config
        self.core = EngineCore(EngineConfig(
            spec=spec, schedule=args.sim.schedule, cost=args.sim.hardware,
            max_num_seqs=args.max_num_seqs,
            kv_cache_tokens=args.sim.kv_cache_tokens, time_scale=args.sim.time_scale,
            seed=args.sim.seed))
        self.metrics = VllmMetrics(
            args.model_name, spec.num_speculative_tokens if spec else None,
            CacheInfo(args.sim.kv_cache_tokens, args.max_model_len,
                      args.gpu_memory_utilization, args.kv_cache_memory_bytes or "None"),
            log_stats=not args.disable_log_stats)
        self.port: int | None = None
        self.ready = asyncio.Event()
        self._streams: dict[str, _Stream] = {}
        self._wake = asyncio.Event()
        self._last_end = float("-inf")
        self._tasks: list[asyncio.Task[None]] = []
        self._runner: web.AppRunner | None = None
        self._interval = IntervalStats()
        self._created = int(time.time())
        self._dead = False

    def now(self) -> float:
        return self._clock() - self._epoch

    # ---- lifecycle -------------------------------------------------------------------------

    def _bind(self) -> socket.socket:
        host = self.args.host
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, self.args.port))
        sock.setblocking(False)
        return sock

    async def start(self) -> None:
        a = self.args
        log.info("vLLM API server version %s (specdecode-sim)", VLLM_VERSION)
        log.info("non-default args: %s", a.non_default)
        for flag in a.ignored:
            log.info("specdecode-sim: accepted %s (no effect in the simulator)", flag)
        sock = self._bind()  # bound now, listening only once "loaded"
        self.port = sock.getsockname()[1]
        spec = a.speculative_config
        if spec:
            log.info("Speculative config: method=%s model=%s num_speculative_tokens=%d%s",
                     spec.method, spec.model, spec.num_speculative_tokens,
                     f" per_batch_size={list(spec.per_batch_size)}" if spec.per_batch_size
                     else "")
        log.info("specdecode-sim: acceptance schedule %s, time scale %g, seed %d, hardware %s",
                 a.sim.schedule.describe(), a.sim.time_scale, a.sim.seed,
                 self.core.config.cost.name)
        if a.sim.startup_delay > 0:
            log.info("specdecode-sim: simulating model loading for %.1f s", a.sim.startup_delay)
            await asyncio.sleep(a.sim.startup_delay)
        app = self._app()
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False,
                                    shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.SockSite(self._runner, sock)
        await site.start()
        # Schedule times count from readiness, or from a wall-clock epoch that all pods share
        # (the workload shift is the traffic's, not the pod's: a restart must not rewind it).
        self.core.config.ready_at = self.now()
        if a.sim.schedule_epoch is not None:
            self.core.config.ready_at -= time.time() - a.sim.schedule_epoch
        self._tasks = [asyncio.create_task(self._engine_guard())]
        if not a.disable_log_stats and a.sim.log_interval > 0:
            self._tasks.append(asyncio.create_task(self._stats_loop()))
        shown = f"[{a.host}]" if ":" in a.host else a.host
        log.info("Starting vLLM API server 0 on http://%s:%d", shown, self.port)
        log.info("Available routes are: /health, /ping, /version, /v1/models, "
                 "/v1/completions, /v1/chat/completions, /metrics")
        log.info("Application startup complete.")
        self.ready.set()

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        self._tasks = []
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # ---- engine loop -----------------------------------------------------------------------

    @property
    def engine_dead(self) -> bool:
        return self._dead

    async def _engine_guard(self) -> None:
        """vLLM's EngineDeadError: in-flight requests fail with 500, /health turns 503."""
        try:
            await self._engine_loop()
        except Exception:
            log.exception("EngineCore encountered a fatal error.")
            self._dead = True
            for stream in self._streams.values():
                stream.queue.put_nowait(None)

    async def _engine_loop(self) -> None:
        continuous = False
        while True:
            if not self.core.has_work():
                continuous = False
                self._wake.clear()
                await self._wake.wait()
            wall = self.now()
            if continuous and wall - self._last_end < RESYNC_SECONDS:
                start = self._last_end  # back-to-back steps, timer jitter absorbed
            else:
                start = max(wall, self._last_end)
            out = self.core.step(start)
            if out is None:
                continue
            delay = out.end - self.now()
            await asyncio.sleep(delay if delay > 0 else 0)
            self._last_end, continuous = out.end, True
            self.metrics.observe_step(out)
            # Requests aborted while the step ran are gone already: gauges show the live state.
            self.metrics.set_load(len(self.core.running), len(self.core.waiting),
                                  self.core.kv_cache_usage())
            self._interval.add(out)
            for e in out.emissions:
                stream = self._streams.get(e.request_id)
                if stream is not None:
                    stream.queue.put_nowait(e)

    async def _stats_loop(self) -> None:
        interval = self.args.sim.log_interval
        was_active = False
        while True:
            await asyncio.sleep(interval)
            stats, self._interval = self._interval, IntervalStats()
            if stats.active or was_active:  # vLLM logs one idle line after activity
                for line in format_stats(stats, interval, len(self.core.running),
                                         len(self.core.waiting), self.core.kv_cache_usage()):
                    engine_log.info(line)
            was_active = stats.active

    def _submit(self, req: api.GenerationRequest, rid: str) -> _Stream:
        eos = None if req.ignore_eos else natural_length(
            self.args.sim.seed, req.prompt_text, self.args.sim.eos_mean_tokens)
        stream = _Stream(asyncio.Queue())
        self._streams[rid] = stream
        self.core.add(SimRequest(
            request_id=rid, prompt_tokens=req.prompt_tokens, max_tokens=req.max_tokens,
            arrival=self.now(), eos_at=eos, requested_max_tokens=req.requested_max_tokens))
        self._wake.set()
        return stream

    def _release(self, rid: str) -> None:
        stream = self._streams.pop(rid, None)
        if stream is not None and not stream.finished:
            finished = self.core.abort(rid, self.now())
            if finished is not None:
                self.metrics.observe_finished(finished)
                self.metrics.set_load(len(self.core.running), len(self.core.waiting),
                                      self.core.kv_cache_usage())

    # ---- HTTP ------------------------------------------------------------------------------

    def _app(self) -> web.Application:
        app = web.Application(middlewares=[self._auth])
        app.router.add_get("/health", self._health)
        app.router.add_get("/ping", self._health)
        app.router.add_post("/ping", self._health)
        app.router.add_get("/version", self._version)
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_post("/v1/completions", self._completions)
        app.router.add_post("/v1/chat/completions", self._chat)
        return app

    @web.middleware
    async def _auth(self, request: web.Request, handler: Any) -> web.StreamResponse:
        # --api-key protects /v1 only, as in vLLM.
        keys = self.args.api_keys
        if keys and request.path.startswith("/v1"):
            got = request.headers.get("Authorization", "")
            if got not in {f"Bearer {k}" for k in keys}:
                return _json({"error": "Unauthorized"}, status=401)
        return await handler(request)

    async def _health(self, request: web.Request) -> web.Response:
        return web.Response(status=503 if self._dead else 200)

    async def _version(self, request: web.Request) -> web.Response:
        return _json({"version": VLLM_VERSION})

    async def _models(self, request: web.Request) -> web.Response:
        return _json(api.models_list(
            self.args.served_model_names, self.args.model, self.args.max_model_len,
            self._created))

    async def _metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=self.metrics.exposition(),
                            headers={"Content-Type": CONTENT_TYPE})

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, chat=False)

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, chat=True)

    async def _generate(self, request: web.Request, *, chat: bool) -> web.StreamResponse:
        try:
            body = await request.json()
        except ValueError:
            body = None
        try:
            req = api.parse_request(body, chat=chat, served_names=self.args.served_model_names,
                                    max_model_len=self.args.max_model_len)
        except api.ApiError as e:
            return _json(e.body(), status=e.status)
        if self._dead:
            return _json(ENGINE_DEAD.body(), status=ENGINE_DEAD.status)
        rid, created = api.new_id(chat), int(time.time())
        key = api.prompt_key(req.prompt_text)
        stream = self._submit(req, rid)
        try:
            if req.stream:
                return await self._stream_out(request, req, rid, created, key, stream)
            parts: list[str] = []
            while True:
                e = await stream.queue.get()
                if e is None:
                    return _json(ENGINE_DEAD.body(), status=ENGINE_DEAD.status)
                parts.append(api.filler(key, e.start, e.count))
                if e.finish_reason:
                    stream.finished = True
                    n = e.start + e.count
                    return _json(api.full_response(
                        req, rid, created, "".join(parts), e.finish_reason, n))
        finally:
            self._release(rid)

    async def _stream_out(self, request: web.Request, req: api.GenerationRequest, rid: str,
                          created: int, key: int, stream: _Stream) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream; charset=utf-8",
                                           "Cache-Control": "no-cache"})
        await resp.prepare(request)

        async def send(payload: dict[str, Any] | str) -> None:
            data = payload if isinstance(payload, str) else _dumps(payload)
            await resp.write(f"data: {data}\n\n".encode())

        try:
            if req.chat:  # vLLM's first chat chunk carries only the role
                await send(api.stream_chunk(req, rid, created, None, None, role=True))
            while True:
                e = await stream.queue.get()
                if e is None:  # vLLM ends the stream with an error event
                    await send(ENGINE_DEAD.body())
                    break
                await send(api.stream_chunk(req, rid, created, api.filler(key, e.start, e.count),
                                            e.finish_reason))
                if e.finish_reason:
                    stream.finished = True
                    if req.include_usage:
                        await send(api.stream_chunk(req, rid, created, None, None,
                                                    usage_block=api.usage(req.prompt_tokens,
                                                                          e.start + e.count)))
                    break
            await send("[DONE]")
            await resp.write_eof()
        except (ConnectionResetError, asyncio.CancelledError):
            pass  # client went away: _release aborts the request
        return resp


# ---- entry points ------------------------------------------------------------------------------

async def serve(args: ServeArgs, stop: asyncio.Event | None = None) -> None:
    """Run until ``stop`` is set (or forever)."""
    server = SimServer(args)
    await server.start()
    try:
        await (stop or asyncio.Event()).wait()
    finally:
        await server.stop()


def run(args: ServeArgs) -> int:
    """Blocking: serve until SIGTERM/SIGINT, then exit 0 (like uvicorn)."""
    setup_logging()

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await serve(args, stop)
        log.info("Shutting down")

    try:
        asyncio.run(main())
    except OSError as e:  # e.g. port in use
        log.error("%s", e)
        return 1
    return 0


class ThreadedSim:
    """A simulator running in a background thread (for tests and embedding)::

        with ThreadedSim.start(["serve", "tiny", "--port", "0", ...]) as sim:
            httpx.get(sim.url + "/health")
    """

    def __init__(self, args: ServeArgs) -> None:
        self.args = args
        self.server: SimServer | None = None
        self._loop = asyncio.new_event_loop()
        self._stop: asyncio.Event | None = None
        self._started = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="specdecode-sim", daemon=True)

    @classmethod
    def start(cls, argv: Sequence[str], env: dict[str, str] | None = None,
              wait_ready: bool = True, timeout: float = 10.0) -> ThreadedSim:
        sim = cls(parse_args(argv, env if env is not None else dict(os.environ)))
        sim._thread.start()
        if not sim._started.wait(timeout):
            raise TimeoutError("specdecode-sim thread did not start")
        if sim._error:
            raise sim._error
        if wait_ready:
            sim.wait_ready(timeout)
        return sim

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)

        async def main() -> None:
            self._stop = asyncio.Event()
            self.server = SimServer(self.args)
            self._started.set()
            try:
                await self.server.start()
                await self._stop.wait()
            finally:
                await self.server.stop()

        try:
            self._loop.run_until_complete(main())
        except BaseException as e:  # surfaced to the caller of start()/wait_ready()
            self._error = e
            self._started.set()
        finally:
            self._loop.close()

    def wait_ready(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._error:
                raise self._error
            if self.server is not None and self.server.ready.is_set():
                return
            time.sleep(0.005)
        raise TimeoutError("specdecode-sim not ready")

    @property
    def port(self) -> int:
        while self.server is None or self.server.port is None:
            if self._error:
                raise self._error
            time.sleep(0.005)
        return self.server.port

    @property
    def url(self) -> str:
        host = self.args.host if self.args.host not in ("0.0.0.0", "::") else "127.0.0.1"
        return f"http://{host}:{self.port}"

    def call(self, fn: Any) -> Any:
        """Run ``fn()`` on the server's loop thread (safe access to engine state)."""
        async def wrapper() -> Any:
            return fn()
        return asyncio.run_coroutine_threadsafe(wrapper(), self._loop).result(5)

    def stop(self) -> None:
        if self._stop is not None and not self._loop.is_closed():
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    def __enter__(self) -> ThreadedSim:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def running(argv: Sequence[str], env: dict[str, str] | None = None) -> Iterator[ThreadedSim]:
    """Context manager form of ThreadedSim.start."""
    sim = ThreadedSim.start(argv, env)
    try:
        yield sim
    finally:
        sim.stop()
