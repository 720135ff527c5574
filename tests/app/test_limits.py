"""Overload (503 + Retry-After), deadlines (504), body size (413) and the metrics endpoint."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
from fastapi.testclient import TestClient

from app.main import create_app
from app.settings import Settings
from tests.app.conftest import running_server, slowed, slowed_steps


def _burst(url: str, n: int, path: str, body: dict[str, Any]) -> list[httpx.Response]:
    async def run() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=url, timeout=30) as http:
            return list(await asyncio.gather(*(http.post(path, json=body) for _ in range(n))))
    return asyncio.run(run())


def test_full_queue_answers_503_at_once_then_serves_again(models_dir: Path) -> None:
    app = create_app(Settings(models_dir=models_dir, max_queue=2, max_active_sequences=1))
    with running_server(app) as url:
        engine = app.state.registry.entries["sentiment"].classify
        with slowed(engine, 0.2):
            responses = _burst(url, 12, "/classify", {"inputs": "a fine film"})
        codes = sorted(r.status_code for r in responses)
        # the queue holds 2 (and the worker may already run some): at least 2 served
        assert codes.count(200) >= 2 and codes.count(503) >= 1 and set(codes) <= {200, 503}
        refused = next(r for r in responses if r.status_code == 503)
        assert refused.headers["retry-after"] == "1" and "2 requests waiting" in refused.text
        with slowed_steps(app.state.registry.entries["shakespeare"].generator, 0.002):
            gen = _burst(url, 6, "/generate", {"inputs": "ROMEO:",
                                               "parameters": {"max_new_tokens": 300}})
        assert {r.status_code for r in gen} == {200, 503}
        after = httpx.post(f"{url}/classify", json={"inputs": "a fine film"})
        assert after.status_code == 200


def test_request_waiting_past_its_deadline_gets_504(models_dir: Path) -> None:
    app = create_app(Settings(models_dir=models_dir, request_timeout_s=0.2))
    with running_server(app) as url:
        engine = app.state.registry.entries["sentiment"].classify

        async def run() -> tuple[httpx.Response, list[httpx.Response], float]:
            async with httpx.AsyncClient(base_url=url, timeout=30) as http:
                body = {"inputs": "a fine film"}
                await http.post("/classify", json=body)  # opens a connection
                before = engine.batches_run
                first = asyncio.create_task(http.post("/classify", json=body))
                while engine.batches_run == before:  # until the first is running (1 s)
                    await asyncio.sleep(0.005)
                start = time.monotonic()
                waiting = await asyncio.gather(*(http.post("/classify", json=body)
                                                 for _ in range(4)))
                waited = time.monotonic() - start
                return await first, list(waiting), waited

        with slowed(engine, 1.0):
            first, waiting, waited = asyncio.run(run())
        assert first.status_code == 200
        assert [r.status_code for r in waiting] == [504] * 4
        assert "deadline" in waiting[0].json()["detail"]
        assert waited < 0.8  # answered at the deadline, not when the worker came free


def test_body_over_the_limit_is_413_before_parsing(models_dir: Path) -> None:
    with TestClient(create_app(Settings(models_dir=models_dir, max_body_bytes=2048))) as client:
        big = client.post("/classify", json={"inputs": "x" * 5000})
        assert big.status_code == 413 and "2048 bytes (RNN_MAX_BODY_BYTES)" in big.text

        def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it arrives
            yield b'{"inputs": "'
            for _ in range(10):
                yield b"y" * 500
            yield b'"}'
        streamed = client.post("/classify", content=chunks(),
                               headers={"content-type": "application/json"})
        assert streamed.status_code == 413
        assert streamed.headers["connection"] == "close"  # the rest of the body is not read
        assert client.post("/classify", json={"inputs": "fine"}).status_code == 200


def test_metrics_count_requests_batches_and_tokens(models_dir: Path) -> None:
    with TestClient(create_app(Settings(models_dir=models_dir))) as client:
        client.post("/classify", json={"inputs": ["a fine film", "dull"]})
        client.post("/generate", json={"inputs": "ROMEO:", "parameters": {"max_new_tokens": 5}})
        client.get("/models/nope")
        text = client.get("/metrics").text
    assert 'rnn_requests_total{route="/classify",status="200"}' in text
    assert 'rnn_requests_total{route="/models/{name}",status="404"}' in text
    assert 'rnn_batch_size_bucket{le="2.0",model="sentiment"}' in text
    assert 'rnn_generated_tokens_total{model="shakespeare"}' in text
    for name in ("rnn_request_duration_seconds", "rnn_queue_depth", "rnn_queue_wait_seconds",
                 "rnn_active_sequences", "rnn_time_to_first_token_seconds", "rnn_model_ready"):
        assert name in text, name


def test_generation_waiting_for_a_slot_past_its_deadline_gets_504(models_dir: Path) -> None:
    app = create_app(Settings(models_dir=models_dir, request_timeout_s=0.1,
                              max_active_sequences=1))
    with running_server(app) as url:
        long = {"inputs": "ROMEO:", "parameters": {"max_new_tokens": 1000}}
        short = {"inputs": "ROMEO:", "parameters": {"max_new_tokens": 5}}

        async def run() -> tuple[httpx.Response, httpx.Response, float]:
            async with httpx.AsyncClient(base_url=url, timeout=30) as http:
                first = asyncio.create_task(http.post("/generate", json=long))
                generator = app.state.registry.entries["shakespeare"].generator
                while generator.active == 0:
                    await asyncio.sleep(0.005)
                start = time.monotonic()
                late = await http.post("/generate", json=short)
                waited = time.monotonic() - start
                return await first, late, waited

        with slowed_steps(app.state.registry.entries["shakespeare"].generator, 0.001):
            first, late, waited = asyncio.run(run())
            # the late job, cancelled in the queue, must not keep the next one waiting
            again = httpx.post(f"{url}/generate", json=short, timeout=10)
        assert again.status_code == 200 and len(again.json()["generated_text"]) == 5
        assert first.status_code == 200 and len(first.json()["generated_text"]) == 1000
        assert late.status_code == 504 and "generation slot" in late.text
        assert waited < 0.6
