"""A real uvicorn on a loopback port, in a thread, serving the tiny trained models."""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import uvicorn
from fastapi import FastAPI
from fastapi.testclient import TestClient

from app.main import create_app
from app.settings import Settings


@contextmanager
def running_server(app: FastAPI) -> Iterator[str]:
    """Serve `app` with uvicorn on 127.0.0.1 (free port); yield its base URL."""
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on")
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
