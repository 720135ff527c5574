"""Generation in a worker process (RNN_GENERATION_WORKER=process), through a real uvicorn:
the same answers as the thread scheduler, batching across requests, a client that leaves,
a worker that dies, and a shutdown that leaves no process behind."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch

from app.entry import scheduler_kind
from app.generation import GenerationScheduler
from app.genworker import ProcessScheduler
from app.main import create_app
from app.registry import Registry
from app.settings import Settings
from tests.app.conftest import running_server, slowed_steps


def _body(seed: int, n: int) -> dict[str, Any]:
    return {"inputs": "JULIET:" if seed % 2 else "ROMEO:\nShall",
            "parameters": {"max_new_tokens": n, "temperature": 0.8, "top_p": 0.95, "seed": seed,
                           "repetition_penalty": 1.1}}


@pytest.fixture(scope="module")
def worker_server(models_dir: Path) -> Iterator[tuple[str, ProcessScheduler]]:
    app = create_app(Settings(models_dir=models_dir, generation_worker="process"))
    with running_server(app) as url:
        registry: Registry = app.state.registry
        generator = registry.entries["shakespeare"].generator
        assert isinstance(generator, ProcessScheduler)
        yield url, generator
    assert not _alive(generator.pid), "the worker outlived the server"


def test_auto_forks_a_worker_on_the_cpu_and_keeps_the_thread_on_a_gpu() -> None:
    cpu, gpu = torch.device("cpu"), torch.device("cuda", 0)  # a device object needs no GPU
    assert Settings().generation_worker == "auto"
    assert scheduler_kind("auto", cpu) is ProcessScheduler  # the test machines run Linux
    assert scheduler_kind("process", cpu) is ProcessScheduler
    assert scheduler_kind("thread", cpu) is GenerationScheduler
    for setting in ("auto", "process", "thread"):  # CUDA cannot be used in a forked child
        assert scheduler_kind(setting, gpu) is GenerationScheduler


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_the_worker_answers_as_the_thread_scheduler_does(
        models_dir: Path, worker_server: tuple[str, ProcessScheduler]) -> None:
    url, generator = worker_server
    assert generator.pid != os.getpid() and _alive(generator.pid)
    seeds = range(4)
    from_worker = {s: httpx.post(f"{url}/generate", json=_body(s, 60), timeout=30).json()
                   for s in seeds}
    thread_app = create_app(Settings(models_dir=models_dir, generation_worker="thread"))
    with running_server(thread_app) as thread_url:
        from_thread = {s: httpx.post(f"{thread_url}/generate", json=_body(s, 60), timeout=30).json()
                       for s in seeds}
    assert from_worker == from_thread
    with httpx.stream("POST", f"{url}/generate_stream", json=_body(1, 20), timeout=30) as r:
        events = [json.loads(line[5:]) for line in r.iter_lines() if line.startswith("data:")]
    assert [e["index"] for e in events] == list(range(20))
    assert events[-1]["generated_text"] == from_worker[1]["generated_text"][:20]
    metrics = httpx.get(f"{url}/metrics").text
    assert 'rnn_generated_tokens_total{model="shakespeare"}' in metrics


def test_concurrent_requests_share_the_workers_steps(
        worker_server: tuple[str, ProcessScheduler]) -> None:
    url, generator = worker_server

    async def run() -> None:
        async with httpx.AsyncClient(base_url=url, timeout=60) as http:
            alone = {s: (await http.post("/generate", json=_body(s, 100 + s))).json()
                     for s in range(6)}
            steps_before = generator.steps_run
            together = await asyncio.gather(*(http.post("/generate", json=_body(s % 6, 100 + s % 6))
                                              for s in range(24)))
            steps = generator.steps_run - steps_before
            assert all(r.json() == alone[s % 6] for s, r in enumerate(together))
            assert steps < 24 * 100 / 3, steps  # run together, not one by one

    with slowed_steps(generator, 0.001):  # sequences overlap on any machine
        generator.restart()  # a worker forked now runs the slowed steps
        try:
            asyncio.run(run())
        finally:
            generator.restart()


def test_a_client_that_leaves_is_dropped_and_a_dead_worker_is_replaced(
        worker_server: tuple[str, ProcessScheduler]) -> None:
    url, generator = worker_server
    body = {"inputs": "ROMEO:", "parameters": {"max_new_tokens": 1024, "seed": 1,
                                               "temperature": 1.0}}
    with slowed_steps(generator, 0.002):
        generator.restart()
        try:
            with httpx.stream("POST", f"{url}/generate_stream", json=body, timeout=30) as r:
                for n, _ in enumerate(line for line in r.iter_lines() if line.startswith("data:")):
                    if n == 4:
                        break
            deadline = time.monotonic() + 5
            while (generator.active or generator.jobs) and time.monotonic() < deadline:
                time.sleep(0.02)
            assert generator.active == 0 and not generator.jobs

            old = generator.pid
            with httpx.stream("POST", f"{url}/generate_stream", json=body, timeout=30) as r:
                lines = r.iter_lines()
                first = next(line for line in lines if line.startswith("data:"))
                assert json.loads(first[5:])["index"] == 0
                os.kill(old, signal.SIGKILL)
                rest = [json.loads(line[5:]) for line in lines if line.startswith("data:")]
            assert rest[-1]["error_type"] == "overloaded" and "retry" in rest[-1]["error"]
        finally:
            generator.restart()
    deadline = time.monotonic() + 5
    while generator.pid == old and time.monotonic() < deadline:
        time.sleep(0.02)
    assert generator.pid != old and not _alive(old)
    r = httpx.post(f"{url}/generate", json=_body(2, 30), timeout=30)
    assert r.status_code == 200 and len(r.json()["generated_text"]) == 30


def test_a_burst_of_long_prompts_is_buffered_not_blocking_the_event_loop(
        worker_server: tuple[str, ProcessScheduler]) -> None:
    """The child reads its messages between steps. While it is inside a long step, more than
    the socket's buffer of prompts waits in the server's own buffer, and the event loop goes
    on answering; a blocking write would have stalled it until the step ended."""
    url, generator = worker_server
    prompt = ("ROMEO:\nBut soft, what light through yonder window breaks? " * 70)[:4000]
    results: list[int] = []

    async def burst() -> None:
        async with httpx.AsyncClient(base_url=url, timeout=60) as http:
            replies = await asyncio.gather(*(http.post("/generate", json={
                "inputs": prompt, "parameters": {"max_new_tokens": 1, "seed": s}})
                for s in range(80)))
            results.extend(r.status_code for r in replies)

    with slowed_steps(generator, 1.0):
        generator.restart()
        try:
            with httpx.stream("POST", f"{url}/generate_stream", timeout=60, json={
                    "inputs": "ROMEO:", "parameters": {"max_new_tokens": 4}}) as r:
                lines = r.iter_lines()
                next(line for line in lines if line.startswith("data:"))  # now in slow steps
                sender = threading.Thread(target=asyncio.run, args=(burst(),))
                sender.start()
                deadline = time.monotonic() + 5
                while not generator._writing and time.monotonic() < deadline:
                    time.sleep(0.005)
                assert generator._writing, "the prompts fitted the socket: make them longer"
                assert httpx.get(f"{url}/health/live", timeout=0.9).status_code == 200
                list(lines)
                sender.join(timeout=60)
        finally:
            generator.restart()
    assert results == [200] * 80
