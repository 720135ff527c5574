"""The load generator: drives a running server over HTTP from this process (asyncio)."""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from collections import Counter
from typing import Any

from bench.http import Connection

__all__ = ["classify_load", "generate_load", "percentile"]


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0-100) by nearest rank; NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))]


def _summary(latencies: list[float], errors: Counter[str], elapsed: float, units: float,
             unit: str) -> dict[str, Any]:
    return {"requests": len(latencies), "requests_per_s": len(latencies) / elapsed,
            f"{unit}_per_s": units / elapsed,
            "p50_ms": percentile(latencies, 50) * 1000, "p90_ms": percentile(latencies, 90) * 1000,
            "p99_ms": percentile(latencies, 99) * 1000, "errors": dict(errors)}


async def classify_load(url: str, texts: list[str], concurrency: int, seconds: float,
                        max_requests: int) -> dict[str, Any]:
    """`concurrency` clients each sending one text per request until time or count runs out."""
    latencies: list[float] = []
    errors: Counter[str] = Counter()
    counter = iter(range(10**9))
    host, port = _address(url)
    warm = Connection(host, port)
    await warm.request("POST", "/classify", {"inputs": texts[0]})
    await warm.close()
    start = time.perf_counter()

    async def client() -> None:
        conn = Connection(host, port)
        try:
            while time.perf_counter() - start < seconds:
                n = next(counter)
                if n >= max_requests:
                    return
                t0 = time.perf_counter()
                try:
                    status, _ = await conn.request("POST", "/classify",
                                                   {"inputs": texts[n % len(texts)]})
                except (OSError, asyncio.IncompleteReadError) as e:
                    errors[type(e).__name__] += 1
                    await conn.close()
                    continue
                if status == 200:
                    latencies.append(time.perf_counter() - t0)
                else:
                    errors[str(status)] += 1
        finally:
            await conn.close()

    await asyncio.gather(*(client() for _ in range(concurrency)))
    elapsed = time.perf_counter() - start
    return _summary(latencies, errors, elapsed, len(latencies), "texts")


async def generate_load(url: str, concurrency: int, tokens: int, rounds: int,
                        stream: bool = True) -> dict[str, Any]:
    """`concurrency` clients each running `rounds` generations of `tokens` tokens: streamed
    (`/generate_stream`, with the time to first token), or whole answers (`/generate`, the
    tokens counted in the text: the shipped model's tokens are one character each)."""
    latencies: list[float] = []
    first_token: list[float] = []
    errors: Counter[str] = Counter()
    produced = 0
    host, port = _address(url)
    start = time.perf_counter()

    async def client(index: int) -> None:
        nonlocal produced
        conn = Connection(host, port)
        for r in range(rounds):
            body = {"inputs": "ROMEO:", "parameters": {
                "max_new_tokens": tokens, "temperature": 0.8, "top_k": 40, "top_p": 0.95,
                "seed": index * 1000 + r}}
            t0 = time.perf_counter()
            seen = 0
            status = 0
            try:
                if not stream:
                    status, answer = await conn.request("POST", "/generate", body)
                    if status == 200:
                        seen = len(json.loads(answer)["generated_text"])
                    else:
                        errors[str(status)] += 1
                        continue
                    produced += seen
                    latencies.append(time.perf_counter() - t0)
                    continue
                async for part in conn.stream("/generate_stream", body):
                    if isinstance(part, int):
                        status = part
                        continue
                    if status == 200 and seen == 0:
                        first_token.append(time.perf_counter() - t0)
                    seen += part.count(b"data:")
            except (OSError, asyncio.IncompleteReadError) as e:
                errors[type(e).__name__] += 1
                await conn.close()
                continue
            if status != 200:
                errors[str(status)] += 1
                continue
            produced += seen
            latencies.append(time.perf_counter() - t0)
        await conn.close()

    await asyncio.gather(*(client(i) for i in range(concurrency)))
    elapsed = time.perf_counter() - start
    out = _summary(latencies, errors, elapsed, produced, "tokens")
    out["ttft_p50_ms"] = percentile(first_token, 50) * 1000
    out["ttft_p99_ms"] = percentile(first_token, 99) * 1000
    out["ttft_mean_ms"] = statistics.fmean(first_token) * 1000 if first_token else float("nan")
    return out


def _address(url: str) -> tuple[str, int]:
    host, _, port = url.removeprefix("http://").partition(":")
    return host, int(port)
