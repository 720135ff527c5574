"""A real uvicorn on a loopback port, in a thread, serving the tiny trained models."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI
from fastapi.testclient import TestClient

from app.connections import protocol_for
from app.main import create_app
from app.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


@contextmanager
def running_server(app: FastAPI) -> Iterator[str]:
    """Serve `app` with uvicorn on 127.0.0.1 (free port), with the service's HTTP protocol
    and the app's limits; yield its base URL."""
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on",
                            http=protocol_for(app.state.settings))
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


@contextmanager
def slowed(engine: Any, seconds: float) -> Iterator[None]:
    """Make a batch engine's forward pass take `seconds` longer, as a bigger model's would."""
    real = engine.run_batch

    def slow(items: list[Any]) -> Any:
        time.sleep(seconds)
        return real(items)
    engine.run_batch = slow
    try:
        yield
    finally:
        engine.run_batch = real


class SlowStep:
    """Wraps a generation step so that it takes `seconds` longer (picklable: a worker process
    applies it to its own model)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def __call__(self, real: Callable[..., Any]) -> Callable[..., Any]:
        def slow(*args: Any) -> Any:
            time.sleep(self.seconds)
            return real(*args)
        return slow


class FailingStep:
    """Wraps a generation step so that every `every`-th call raises (counted by the process
    that steps: the server's thread, or the worker)."""

    def __init__(self, every: int) -> None:
        self.every = every

    def __call__(self, real: Callable[..., Any]) -> Callable[..., Any]:
        calls = [0]

        def failing(*args: Any) -> Any:
            calls[0] += 1
            if calls[0] % self.every == 0:
                raise RuntimeError("secret step failure")
            return real(*args)
        return failing


def on_server_loop(generator: Any, coroutine: Any) -> Any:
    """Run a coroutine on the event loop of the server `generator` belongs to, and wait."""
    return asyncio.run_coroutine_threadsafe(coroutine, generator.loop).result(timeout=120)


@contextmanager
def patched_steps(generator: Any, wrapper: Callable[..., Any]) -> Iterator[None]:
    """Run a generator's steps through `wrapper(real_step)` for the duration: its engine is
    restarted with the wrapper, and restarted plain afterwards."""
    on_server_loop(generator, generator.restart(wrapper))
    try:
        yield
    finally:
        on_server_loop(generator, generator.restart())


@contextmanager
def slowed_steps(generator: Any, seconds: float) -> Iterator[None]:
    """Make each generation step of a generator take `seconds` longer, so that concurrent
    requests overlap however fast or slow the machine is."""
    with patched_steps(generator, SlowStep(seconds)):
        yield


def wait_ready(url: str, proc: subprocess.Popen[Any], timeout_s: float = 120,
               why: Callable[[], str] = lambda: "server did not start") -> None:
    """Wait until the server `proc` at `url` answers /health/ready with 200."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if httpx.get(f"{url}/health/ready").status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline and proc.poll() is None, why()
        time.sleep(0.1)


def descendants(root: int) -> set[int]:
    """Every live process below `root` (from /proc)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat.rpartition(")")[2].split()[1])
    found: set[int] = set()
    frontier = {root}
    while frontier:
        frontier = {pid for pid, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


@contextmanager
def server_process(env: dict[str, str]) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    """`uvicorn app.main:app` as a child process with `env` added; yields (url, process) once
    it is ready. The caller stops it (SIGTERM) and reads its output."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "uvicorn", "app.main:app", "--host",
                             "127.0.0.1", "--port", str(port), "--http", "app.connections:Protocol"],
                            cwd=ROOT, env=os.environ | env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, proc)
        yield url, proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="session")
def models_with_broken(models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny models plus one broken folder."""
    root = tmp_path_factory.mktemp("served") / "models"
    shutil.copytree(models_dir, root)
    broken = root / "broken"
    shutil.copytree(models_dir / "sentiment", broken)
    data = bytearray((broken / "model.safetensors").read_bytes())
    data[-3] ^= 0xFF
    (broken / "model.safetensors").write_bytes(bytes(data))
    return root


@pytest.fixture(scope="module")
def client(models_with_broken: Path) -> Iterator[TestClient]:
    """TestClient over the app (lifespan run) with the tiny models and a broken folder."""
    with TestClient(create_app(Settings(models_dir=models_with_broken, max_inputs=8,
                                        max_input_chars=200, max_new_tokens=300))) as c:
        yield c


SHAKESPEARE_CHAT = {"turn": "{name}:\n{content}\n\n",
                    "names": {"system": "CHORUS", "user": "ROMEO", "assistant": "JULIET"},
                    "stop": ["\n\n"]}


@pytest.fixture(scope="session")
def chat_models(models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny models, the language model with the shipped model's chat template."""
    root = tmp_path_factory.mktemp("chat") / "models"
    shutil.copytree(models_dir, root)
    config_path = root / "shakespeare" / "config.json"
    config = json.loads(config_path.read_text())
    config["chat_template"] = SHAKESPEARE_CHAT
    config_path.write_text(json.dumps(config))
    return root


@pytest.fixture(scope="session")
def clients_url(chat_models: Path) -> Iterator[str]:
    """One real uvicorn on a loopback port for the real-client tests."""
    with running_server(create_app(Settings(models_dir=chat_models, max_new_tokens=300))) as base:
        yield base
