"""Load generator: OpenAI completion requests at a target concurrency per SpecDecodeDeployment.

Endpoints come from the Prometheus file_sd target files the pod runner writes (127.0.0.1 and
the pod's local port, labelled with the SDD); the list is re-read every second, so traffic
follows a rolling restart. Pod IPs are never dialled.

    specdecode-loadgen --targets-dir DIR --sdd NAMESPACE/NAME=CONCURRENCY [...]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

# A prompt mix; the stand-in's acceptance follows its schedule, real vLLM's follows the text.
PROMPTS = {
    "code": ["def quicksort(xs):\n    ", "SELECT name, count(*) FROM", "for (int i = 0; i <"],
    "chat": ["What is a good name for a cat?", "Explain Kubernetes in one paragraph."],
    "summarization": ["Summarize: The meeting covered the quarterly roadmap and"],
    "creative": ["Write a poem about the sea at night:", "Once upon a time, in a city of"],
}


def endpoints(targets_dir: Path) -> dict[tuple[str, str], list[str]]:
    """(namespace, sdd) -> ["127.0.0.1:PORT", ...] from file_sd target files."""
    out: dict[tuple[str, str], list[str]] = {}
    for f in sorted(targets_dir.glob("*.json")):
        try:
            groups = json.loads(f.read_text())
        except (OSError, json.JSONDecodeError):
            continue  # being rewritten
        for g in groups:
            labels = g.get("labels", {})
            key = (labels.get("namespace", ""), labels.get("sdd", ""))
            out.setdefault(key, []).extend(
                t for t in g.get("targets", []) if t.startswith("127.0.0.1:"))
    return out


@dataclass
class Stats:
    ok: int = 0
    errors: int = 0
    tokens: int = 0
    latencies: list[float] = field(default_factory=list)


@dataclass
class LoadGenerator:
    targets_dir: Path
    concurrency: dict[tuple[str, str], int]
    max_tokens: int = 128
    model: str | None = None  # None: the served name from /v1/models
    stats: dict[tuple[str, str], Stats] = field(default_factory=dict)
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _models: dict[str, str] = field(default_factory=dict)
    _health: dict[str, tuple[float, bool]] = field(default_factory=dict)

    async def _ready(self, client: httpx.AsyncClient, addr: str) -> bool:
        """Like a Service, send only to pods whose /health answers (checked once a second):
        a starting pod's port is listed before its model is loaded."""
        checked, ok = self._health.get(addr, (0.0, False))
        if time.monotonic() - checked < 1.0:
            return ok
        try:
            ok = (await client.get(f"http://{addr}/health", timeout=1)).status_code == 200
        except httpx.HTTPError:
            ok = False
        self._health[addr] = (time.monotonic(), ok)
        return ok

    async def _model_for(self, client: httpx.AsyncClient, addr: str) -> str:
        if self.model:
            return self.model
        if addr not in self._models:
            r = await client.get(f"http://{addr}/v1/models", timeout=5)
            self._models[addr] = r.json()["data"][0]["id"]
        return self._models[addr]

    async def _worker(self, key: tuple[str, str], n: int, client: httpx.AsyncClient) -> None:
        rng = random.Random(f"{key}:{n}")
        st = self.stats.setdefault(key, Stats())
        while not self._stop.is_set():
            addrs = [a for a in endpoints(self.targets_dir).get(key, [])
                     if await self._ready(client, a)]
            if not addrs:
                await asyncio.sleep(0.5)
                continue
            addr = addrs[n % len(addrs)]
            task = rng.choice(list(PROMPTS))
            body = {"prompt": rng.choice(PROMPTS[task]), "max_tokens": self.max_tokens,
                    "temperature": 0, "ignore_eos": True}
            t0 = time.monotonic()
            try:
                body["model"] = await self._model_for(client, addr)
                r = await client.post(f"http://{addr}/v1/completions", json=body, timeout=60)
                r.raise_for_status()
                st.ok += 1
                st.tokens += int(r.json().get("usage", {}).get("completion_tokens", 0))
                st.latencies.append(time.monotonic() - t0)
                del st.latencies[:-1000]
            except (httpx.HTTPError, KeyError, ValueError):
                # A pod going away mid-rollout: count it, back off briefly, pick again.
                st.errors += 1
                self._models.pop(addr, None)
                await asyncio.sleep(0.3)

    async def run(self, duration: float | None = None) -> None:
        async with httpx.AsyncClient() as client:
            tasks = [asyncio.create_task(self._worker(key, i, client))
                     for key, c in self.concurrency.items() for i in range(c)]
            try:
                if duration is None:
                    await self._stop.wait()
                else:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._stop.wait(), duration)
            finally:
                self._stop.set()
                await asyncio.gather(*tasks, return_exceptions=True)

    def stop(self) -> None:
        self._stop.set()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="specdecode-loadgen", description=__doc__.split("\n\n")[0])
    ap.add_argument("--targets-dir", type=Path, required=True,
                    help="file_sd directory written by the pod runner")
    ap.add_argument("--sdd", action="append", required=True,
                    help="NAMESPACE/NAME=CONCURRENCY (repeatable)")
    ap.add_argument("--duration", type=float, default=None, help="seconds (default: forever)")
    ap.add_argument("--max-tokens", type=int, default=128)
    args = ap.parse_args(argv)
    conc: dict[tuple[str, str], int] = {}
    for item in args.sdd:
        target, _, c = item.partition("=")
        ns, _, name = target.partition("/")
        if not (ns and name and c.isdigit()):
            ap.error(f"--sdd {item!r}: expected NAMESPACE/NAME=CONCURRENCY")
        conc[(ns, name)] = int(c)
    gen = LoadGenerator(args.targets_dir, conc, max_tokens=args.max_tokens)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(gen.run(args.duration))
    for (ns, name), st in gen.stats.items():
        print(f"{ns}/{name}: {st.ok} requests, {st.errors} errors, {st.tokens} tokens")
    return 0


if __name__ == "__main__":
    sys.exit(main())
