"""The two transports of the generation engine through a real uvicorn: the same text and the
same metrics from a thread and from a worker process, batching across requests, a client
that leaves, a worker that dies, and a worker that is never forked from the server."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch

from app.generation.build import transport_kind
from app.generation.process import ProcessTransport
from app.generation.service import Generator
from app.main import create_app
from app.registry import Registry
from app.settings import Settings
from tests.app.conftest import running_server, slowed_steps


def _body(seed: int, n: int) -> dict[str, Any]:
    return {"inputs": "JULIET:" if seed % 2 else "ROMEO:\nShall",
            "parameters": {"max_new_tokens": n, "temperature": 0.8, "top_p": 0.95, "seed": seed,
                           "repetition_penalty": 1.1}}


@pytest.fixture(scope="module")
def worker_server(models_dir: Path) -> Iterator[tuple[str, Generator]]:
    app = create_app(Settings(models_dir=models_dir, generation_worker="process"))
    with running_server(app) as url:
        registry: Registry = app.state.registry
        generator = registry.entries["shakespeare"].generator
        assert generator is not None and isinstance(generator.transport, ProcessTransport)
        pid = generator.transport.pid
        yield url, generator
    assert not _alive(pid), "the worker outlived the server"


def test_auto_runs_a_worker_process_on_the_cpu_and_the_thread_on_a_gpu() -> None:
    cpu, gpu = torch.device("cpu"), torch.device("cuda", 0)  # a device object needs no GPU
    assert Settings().generation_worker == "auto"
    assert transport_kind("auto", cpu) == "process"  # the test machines run Linux
    assert transport_kind("process", cpu) == "process"
    assert transport_kind("thread", cpu) == "thread"
    for setting in ("auto", "process", "thread"):
        assert transport_kind(setting, gpu) == "thread"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _families(metrics: str) -> dict[str, float]:
    """The generation metric samples of the shakespeare model, by name."""
    out: dict[str, float] = {}
    for line in metrics.splitlines():
        if 'model="shakespeare"' in line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            out[name.split("{")[0]] = out.get(name.split("{")[0], 0.0) + float(value)
    return out


def test_both_transports_give_the_same_text_and_the_same_metrics(
        models_dir: Path, worker_server: tuple[str, Generator]) -> None:
    url, generator = worker_server
    assert isinstance(generator.transport, ProcessTransport)
    assert generator.transport.pid != os.getpid() and _alive(generator.transport.pid)
    seeds = range(4)
    before = _families(httpx.get(f"{url}/metrics").text)
    from_worker = {s: httpx.post(f"{url}/generate", json=_body(s, 60), timeout=30).json()
                   for s in seeds}
    worker_metrics = _families(httpx.get(f"{url}/metrics").text)
    thread_app = create_app(Settings(models_dir=models_dir, generation_worker="thread"))
    with running_server(thread_app) as thread_url:
        thread_before = _families(httpx.get(f"{thread_url}/metrics").text)
        from_thread = {s: httpx.post(f"{thread_url}/generate", json=_body(s, 60),
                                     timeout=30).json() for s in seeds}
        thread_metrics = _families(httpx.get(f"{thread_url}/metrics").text)
    assert from_worker == from_thread
    assert set(worker_metrics) == set(thread_metrics)
    for name in ("rnn_queue_wait_seconds_count", "rnn_time_to_first_token_seconds_count"):
        assert worker_metrics[name] - before.get(name, 0) == 4, name
        assert thread_metrics[name] - thread_before.get(name, 0) == 4, name
    tokens = "rnn_generated_tokens_total"
    assert worker_metrics[tokens] - before.get(tokens, 0) == 240
    with httpx.stream("POST", f"{url}/generate_stream", json=_body(1, 20), timeout=30) as r:
        events = [json.loads(line[5:]) for line in r.iter_lines() if line.startswith("data:")]
    assert [e["index"] for e in events] == list(range(20))
    assert events[-1]["generated_text"] == from_worker[1]["generated_text"][:20]


def test_concurrent_requests_share_the_workers_steps(
        worker_server: tuple[str, Generator]) -> None:
    url, generator = worker_server

    async def run() -> None:
        async with httpx.AsyncClient(base_url=url, timeout=60) as http:
            alone = {s: (await http.post("/generate", json=_body(s, 100 + s))).json()
                     for s in range(6)}
            with slowed_steps(generator, 0.001):  # sequences overlap on any machine
                steps_before = generator.steps_run
                together = await asyncio.gather(*(http.post("/generate", json=_body(s % 6, 100 + s % 6))
                                                  for s in range(24)))
                steps = generator.steps_run - steps_before
            assert all(r.json() == alone[s % 6] for s, r in enumerate(together))
            assert steps < 24 * 100 / 3, steps  # run together, not one by one

    asyncio.run(run())


def test_a_client_that_leaves_is_dropped_and_a_dead_worker_is_replaced(
        worker_server: tuple[str, Generator]) -> None:
    url, generator = worker_server
    transport = generator.transport
    assert isinstance(transport, ProcessTransport)
    body = {"inputs": "ROMEO:", "parameters": {"max_new_tokens": 1024, "seed": 1,
                                               "temperature": 1.0}}
    with slowed_steps(generator, 0.002):
        with httpx.stream("POST", f"{url}/generate_stream", json=body, timeout=30) as r:
            for n, _ in enumerate(line for line in r.iter_lines() if line.startswith("data:")):
                if n == 4:
                    break
        deadline = time.monotonic() + 5
        while (generator.active or generator.requests) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert generator.active == 0 and not generator.requests

        old = transport.pid
        with httpx.stream("POST", f"{url}/generate_stream", json=body, timeout=30) as r:
            lines = r.iter_lines()
            first = next(line for line in lines if line.startswith("data:"))
            assert json.loads(first[5:])["index"] == 0
            os.kill(old, signal.SIGKILL)
            rest = [json.loads(line[5:]) for line in lines if line.startswith("data:")]
        assert rest[-1]["error_type"] == "overloaded" and "retry" in rest[-1]["error"]
        deadline = time.monotonic() + 30
        while ((generator.restarting or transport.pid == old or generator.waiting)
               and time.monotonic() < deadline):
            time.sleep(0.05)
        assert transport.pid != old and not _alive(old) and not generator.restarting
    r = httpx.post(f"{url}/generate", json=_body(2, 30), timeout=30)
    assert r.status_code == 200 and len(r.json()["generated_text"]) == 30


def test_a_burst_of_long_prompts_is_buffered_not_blocking_the_event_loop(
        worker_server: tuple[str, Generator]) -> None:
    """The worker reads its messages between turns. While it is inside a long step, more
    than the socket's buffer of prompts waits in the server's own buffer, and the event loop
    goes on answering; a blocking write would have stalled it until the step ended."""
    url, generator = worker_server
    transport = generator.transport
    assert isinstance(transport, ProcessTransport)
    prompt = ("ROMEO:\nBut soft, what light through yonder window breaks? " * 70)[:4000]
    results: list[int] = []

    async def burst() -> None:
        async with httpx.AsyncClient(base_url=url, timeout=120) as http:
            replies = await asyncio.gather(*(http.post("/generate", json={
                "inputs": prompt, "parameters": {"max_new_tokens": 1, "seed": s}})
                for s in range(80)))
            results.extend(r.status_code for r in replies)

    with slowed_steps(generator, 1.0), httpx.stream("POST", f"{url}/generate_stream", timeout=60, json={
            "inputs": "ROMEO:", "parameters": {"max_new_tokens": 4}}) as r:
        lines = r.iter_lines()
        next(line for line in lines if line.startswith("data:"))  # now in slow steps
        sender = threading.Thread(target=asyncio.run, args=(burst(),))
        sender.start()
        deadline = time.monotonic() + 5
        while not transport._writing and time.monotonic() < deadline:
            time.sleep(0.005)
        assert transport._writing, "the prompts fitted the socket: make them longer"
        assert httpx.get(f"{url}/health/live", timeout=0.9).status_code == 200
        list(lines)
        sender.join(timeout=120)
    assert results == [200] * 80


def test_the_worker_is_never_forked_from_the_server(
        models_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Forking a multi-threaded server may deadlock the child (Python 3.12 warns on it): the
    worker comes from the fork server, a clean process, so the server never calls fork."""
    def no_fork() -> int:
        raise AssertionError("the server forked")
    monkeypatch.setattr(os, "fork", no_fork)
    app = create_app(Settings(models_dir=models_dir, generation_worker="process"))
    with running_server(app) as url:
        generator = app.state.registry.entries["shakespeare"].generator
        r = httpx.post(f"{url}/generate", json=_body(1, 10), timeout=60)
        assert r.status_code == 200 and len(r.json()["generated_text"]) == 10
        assert isinstance(generator.transport, ProcessTransport)
        assert generator.transport.pid not in (0, os.getpid())


def test_the_worker_module_imports_no_web_stack() -> None:
    """The generation worker process runs the engine only: importing its module pulls in
    neither the web framework nor the metrics library nor the settings loader."""
    code = ("import sys, app.generation.worker; "
            "print(sorted(m for m in ('fastapi', 'starlette', 'prometheus_client', "
            "'pydantic_settings', 'uvicorn') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=Path(__file__).resolve().parents[2])
    assert out.stdout.strip() == "[]"


def test_a_worker_that_cannot_start_backs_off_and_refuses_at_once(
        models_dir: Path, tmp_path: Path) -> None:
    """The worker dies and its model's weights are damaged meanwhile: each new worker fails to
    load, and the next try waits twice as long; generation requests get 503 at once (not at
    their deadline), readiness and /models say so, scoring goes on; once the weights are whole
    again, a worker starts and generation is back."""
    import shutil
    root = tmp_path / "models"
    shutil.copytree(models_dir, root)
    app = create_app(Settings(models_dir=root, generation_worker="process"))
    weights = root / "shakespeare" / "model.safetensors"
    whole = weights.read_bytes()
    with running_server(app) as url, httpx.Client(base_url=url, timeout=30) as http:
        generator = app.state.registry.get("shakespeare", "generate").generator
        assert isinstance(generator.transport, ProcessTransport)
        weights.write_bytes(whole[:100])
        os.kill(generator.transport.pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while not generator.restarting and time.monotonic() < deadline:
            time.sleep(0.02)
        lost = time.monotonic()
        started = time.perf_counter()
        refused = http.post("/generate", json=_body(1, 5))
        assert time.perf_counter() - started < 1.0
        assert refused.status_code == 503 and "restarting" in refused.json()["error"]
        assert http.post("/score", json={"inputs": "ROMEO:"}).status_code == 200
        ready = http.get("/health/ready").json()
        assert "shakespeare" in ready["restarting"]
        assert http.get("/models/shakespeare").json()["generation"].startswith("restarting")
        assert 'rnn_model_ready{model="shakespeare"} 0.0' in http.get("/metrics").text
        time.sleep(max(0.0, lost + 3.0 - time.monotonic()))
        # waits of 0.2, 0.4, 0.8, 1.6 s: at most four tries in the first three seconds
        assert 1 <= generator.restarts <= 4, generator.restarts
        reason = http.get("/models/shakespeare").json()["generation"]
        assert "restart failed" in reason, reason  # why the new worker could not start
        weights.write_bytes(whole)
        deadline = time.monotonic() + 30
        while generator.restarting and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not generator.restarting
        answer = http.post("/generate", json=_body(2, 10))
        assert answer.status_code == 200 and len(answer.json()["generated_text"]) == 10
        assert 'rnn_model_ready{model="shakespeare"} 1.0' in http.get("/metrics").text
