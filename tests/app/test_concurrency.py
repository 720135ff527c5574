"""Batching proven with real concurrency: a real uvicorn, many clients at once."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from app.main import create_app
from app.registry import Registry
from app.settings import Settings
from tests.app.conftest import running_server, slowed, slowed_steps
from tests.conftest import sentiment_rows


@pytest.fixture(scope="module")
def server(models_dir: Path) -> Iterator[tuple[str, Registry]]:
    app = create_app(Settings(models_dir=models_dir, max_batch_size=64, max_active_sequences=64))
    with running_server(app) as url:
        registry: Registry = app.state.registry
        yield url, registry




def test_64_concurrent_classify_requests_share_few_forward_passes(
        server: tuple[str, Registry]) -> None:
    url, registry = server
    engine = registry.entries["sentiment"].classify
    assert engine is not None
    texts = [text for _, text in sentiment_rows(64, 7)]

    async def run() -> tuple[list[Any], list[Any]]:
        async with httpx.AsyncClient(base_url=url, timeout=30) as http:
            alone = [(await http.post("/classify", json={"inputs": t})).json() for t in texts[:8]]
            before = metric(url, "rnn_batch_size_count", model="sentiment")
            rows_before = metric(url, "rnn_batch_size_sum", model="sentiment")
            with slowed(engine, 0.2):
                responses = await asyncio.gather(*(http.post("/classify", json={"inputs": t})
                                                   for t in texts))
            passes = metric(url, "rnn_batch_size_count", model="sentiment") - before
            assert metric(url, "rnn_batch_size_sum", model="sentiment") - rows_before == 64
            assert all(r.status_code == 200 for r in responses)
            assert passes <= 16, f"64 requests took {passes} forward passes"
            return alone, [r.json() for r in responses]

    alone, together = asyncio.run(run())
    for single, batched in zip(alone, together[:8], strict=True):
        assert single[0][0]["label"] == batched[0][0]["label"]
        assert single[0][0]["score"] == pytest.approx(batched[0][0]["score"], abs=1e-5)


def test_a_lone_request_does_not_wait_for_company(server: tuple[str, Registry]) -> None:
    url, registry = server
    engine = registry.entries["sentiment"].classify
    assert engine is not None and engine.max_wait_s == 0
    with httpx.Client(base_url=url) as http:
        before = engine.batches_run
        for _ in range(5):
            assert http.post("/classify", json={"inputs": "a fine film"}).status_code == 200
        assert engine.batches_run - before == 5


def metric(url: str, name: str, **labels: str) -> float:
    """A sample's value from the server's /metrics (0 when absent)."""
    text = httpx.get(f"{url}/metrics").text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return 0.0


def _events(lines: list[str]) -> list[dict[str, Any]]:
    return [json.loads(line[5:]) for line in lines if line.startswith("data:")]


def test_seeded_generation_is_the_same_alone_and_among_others(server: tuple[str, Registry]) -> None:
    url, registry = server
    generator = registry.entries["shakespeare"].generator
    assert generator is not None

    def body(seed: int, n: int) -> dict[str, Any]:
        return {"inputs": "JULIET:" if seed % 2 else "ROMEO:\nShall",
                "parameters": {"max_new_tokens": n, "temperature": 0.8, "top_p": 0.95,
                               "seed": seed, "repetition_penalty": 1.1}}

    async def run() -> None:
        async with httpx.AsyncClient(base_url=url, timeout=60) as http:
            alone = {s: (await http.post("/generate", json=body(s, 100 + s))).json()["generated_text"]
                     for s in range(6)}
            steps_before = generator.steps_run
            with slowed_steps(generator, 0.001):  # sequences overlap on any machine
                together = await asyncio.gather(*(http.post("/generate", json=body(s % 6, 100 + s % 6))
                                                  for s in range(24)))
            steps = generator.steps_run - steps_before
            for s, r in enumerate(together):
                assert r.json()["generated_text"] == alone[s % 6], f"seed {s % 6} differed"
            # 24 sequences of ~100 tokens, run together, take far fewer steps than one by one.
            assert steps < 24 * 100 / 3, steps

    asyncio.run(run())


def test_a_disconnected_stream_leaves_the_batch(server: tuple[str, Registry]) -> None:
    url, registry = server
    generator = registry.entries["shakespeare"].generator
    assert generator is not None

    async def run() -> None:
        async with httpx.AsyncClient(base_url=url, timeout=30) as http:
            body = {"inputs": "ROMEO:", "parameters": {"max_new_tokens": 1024, "seed": 1,
                                                       "temperature": 1.0}}
            start_tokens = metric(url, "rnn_generated_tokens_total", model="shakespeare")
            with slowed_steps(generator, 0.001):  # 1,024 steps would take over a second
                async with http.stream("POST", "/generate_stream", json=body) as r:
                    seen = 0
                    async for line in r.aiter_lines():
                        seen += line.startswith("data:")
                        if seen == 5:
                            break
                deadline = time.monotonic() + 5
                while generator.active and time.monotonic() < deadline:
                    await asyncio.sleep(0.02)
            assert generator.active == 0
            assert metric(url, "rnn_active_sequences", model="shakespeare") == 0
            tokens = metric(url, "rnn_generated_tokens_total", model="shakespeare")
            await asyncio.sleep(0.2)  # nothing is generated for the client that left
            assert metric(url, "rnn_generated_tokens_total", model="shakespeare") == tokens
            assert tokens - start_tokens < 512, "the sequence ran on after its client left"

    asyncio.run(run())


def test_max_wait_holds_a_batch_open_for_company(models_dir: Path) -> None:
    app = create_app(Settings(models_dir=models_dir, max_wait_ms=300))
    with running_server(app) as url:
        engine = app.state.registry.entries["sentiment"].classify

        async def run() -> None:
            async with httpx.AsyncClient(base_url=url, timeout=30) as http:
                await http.get("/health/live")  # open the connection first
                before = engine.batches_run
                first = asyncio.create_task(http.post("/classify", json={"inputs": "one"}))
                await asyncio.sleep(0.1)
                second = await http.post("/classify", json={"inputs": "two"})
                assert (await first).status_code == second.status_code == 200
                assert engine.batches_run - before == 1

        asyncio.run(run())
