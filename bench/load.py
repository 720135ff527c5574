"""The load generator: drives a running server over HTTP from this process (async httpx)."""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from collections import Counter
from typing import Any

import httpx

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
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as http:
        await http.post("/classify", json={"inputs": texts[0]})
        start = time.perf_counter()

        async def client() -> None:
            while time.perf_counter() - start < seconds:
                n = next(counter)
                if n >= max_requests:
                    return
                t0 = time.perf_counter()
                try:
                    r = await http.post("/classify", json={"inputs": texts[n % len(texts)]})
                    if r.status_code == 200:
                        latencies.append(time.perf_counter() - t0)
                    else:
                        errors[str(r.status_code)] += 1
                except httpx.HTTPError as e:
                    errors[type(e).__name__] += 1

        await asyncio.gather(*(client() for _ in range(concurrency)))
        elapsed = time.perf_counter() - start
    return _summary(latencies, errors, elapsed, len(latencies), "texts")


async def generate_load(url: str, concurrency: int, tokens: int, rounds: int) -> dict[str, Any]:
    """`concurrency` clients each streaming `rounds` generations of `tokens` tokens."""
    latencies: list[float] = []
    first_token: list[float] = []
    errors: Counter[str] = Counter()
    produced = 0
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as http:
        start = time.perf_counter()

        async def client(index: int) -> None:
            nonlocal produced
            for r in range(rounds):
                body = {"inputs": "ROMEO:", "parameters": {
                    "max_new_tokens": tokens, "temperature": 0.8, "top_k": 40, "top_p": 0.95,
                    "seed": index * 1000 + r}}
                t0 = time.perf_counter()
                seen = 0
                try:
                    async with http.stream("POST", "/generate_stream", json=body) as resp:
                        if resp.status_code != 200:
                            errors[str(resp.status_code)] += 1
                            continue
                        async for line in resp.aiter_lines():
                            if not line.startswith("data:"):
                                continue
                            if seen == 0:
                                first_token.append(time.perf_counter() - t0)
                            seen += 1
                            if json.loads(line[5:]).get("generated_text") is not None:
                                break
                except httpx.HTTPError as e:
                    errors[type(e).__name__] += 1
                    continue
                produced += seen
                latencies.append(time.perf_counter() - t0)

        await asyncio.gather(*(client(i) for i in range(concurrency)))
        elapsed = time.perf_counter() - start
    out = _summary(latencies, errors, elapsed, produced, "tokens")
    out["ttft_p50_ms"] = percentile(first_token, 50) * 1000
    out["ttft_p99_ms"] = percentile(first_token, 99) * 1000
    out["ttft_mean_ms"] = statistics.fmean(first_token) * 1000 if first_token else float("nan")
    return out
