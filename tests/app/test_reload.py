"""Hot reload under load: new and changed folders swap in, removed ones retire, nothing fails;
a replaced version's memory is given back."""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import gc
import os
import shutil
import subprocess
import sys
import time
import weakref
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from app.settings import Settings
from tests.app.conftest import running_server

ADMIN = {"Authorization": "Bearer admin-key"}
ROOT = Path(__file__).resolve().parents[2]


def test_reload_under_concurrent_load_loses_no_request(models_dir: Path, tmp_path: Path) -> None:
    root = tmp_path / "models"
    shutil.copytree(models_dir, root)
    app = create_app(Settings(models_dir=root, admin_keys=["admin-key"]))
    with running_server(app) as url:
        old_sentiment = app.state.registry.entries["sentiment"]

        async def run() -> tuple[list[int], dict[str, list[str]], httpx.Response, dict[str, list[str]]]:
            async with httpx.AsyncClient(base_url=url, timeout=60) as http:
                codes: list[int] = []
                stop = asyncio.Event()

                async def load() -> None:
                    while not stop.is_set():
                        r = await http.post("/classify", json={"inputs": "a great film"})
                        codes.append(r.status_code)

                workers = [asyncio.create_task(load()) for _ in range(8)]
                long_gen = asyncio.create_task(http.post("/generate", json={
                    "inputs": "ROMEO:", "parameters": {"max_new_tokens": 1000}}))
                await asyncio.sleep(0.3)
                shutil.copytree(root / "sentiment", root / "sentiment-copy")
                weights = root / "sentiment" / "model.safetensors"
                os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 10**9))
                first = (await http.post("/admin/reload", headers=ADMIN)).json()
                shutil.rmtree(root / "shakespeare")
                second = (await http.post("/admin/reload", headers=ADMIN)).json()
                await asyncio.sleep(0.3)
                stop.set()
                await asyncio.gather(*workers)
                return codes, first, await long_gen, second

        codes, first, long_gen, second = asyncio.run(run())
        assert first == {"loaded": ["sentiment", "sentiment-copy"], "kept": ["shakespeare"],
                         "removed": [], "failed": [], "failed_kept_serving": []}
        assert second == {"loaded": [], "kept": ["sentiment", "sentiment-copy"],
                          "removed": ["shakespeare"], "failed": [], "failed_kept_serving": []}
        assert len(codes) > 20 and set(codes) == {200}
        assert long_gen.status_code == 200 and len(long_gen.json()["generated_text"]) == 1000
        assert app.state.registry.entries["sentiment"] is not old_sentiment
        models = httpx.get(f"{url}/models").json()["models"]
        assert [m["name"] for m in models] == ["sentiment", "sentiment-copy"]
        gone = httpx.post(f"{url}/generate", json={"inputs": "x", "model": "shakespeare"})
        assert gone.status_code == 404
        # (the metrics are the process's: other tests' models appear there too)
        ready = httpx.get(f"{url}/metrics").text.splitlines()
        assert 'rnn_model_ready{model="sentiment-copy"} 1.0' in ready
        assert not [line for line in ready if line.startswith('rnn_model_ready{model="shakespeare"')]


def test_a_version_that_fails_to_load_never_replaces_the_one_serving(
        models_dir: Path, tmp_path: Path) -> None:
    """A weights file caught half-written at reload: the version loaded before goes on
    answering (the same scores), /models and the metric report the failure, readiness stays;
    the next reload after the file is whole swaps the new version in and clears the report."""
    root = tmp_path / "models"
    shutil.copytree(models_dir, root)
    app = create_app(Settings(models_dir=root, admin_keys=["admin-key"]))
    weights = root / "sentiment" / "model.safetensors"
    whole = weights.read_bytes()
    with running_server(app) as url, httpx.Client(base_url=url, timeout=30) as http:
        before = http.post("/classify", json={"inputs": "a great film"}).json()
        serving = app.state.registry.entries["sentiment"]
        weights.write_bytes(whole[:len(whole) // 2])  # half-written
        report = http.post("/admin/reload", headers=ADMIN).json()
        assert report["failed"] == ["sentiment"] and report["failed_kept_serving"] == ["sentiment"]
        assert app.state.registry.entries["sentiment"] is serving
        assert http.post("/classify", json={"inputs": "a great film"}).json() == before
        assert http.get("/health/ready").status_code == 200
        listed = http.get("/models/sentiment").json()
        assert listed["status"] == "ready" and "reload_error" in listed
        metrics = http.get("/metrics").text
        assert 'rnn_model_reload_failures_total{model="sentiment"} 1.0' in metrics
        assert 'rnn_model_ready{model="sentiment"} 1.0' in metrics
        weights.write_bytes(whole)
        os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 10**9))
        report = http.post("/admin/reload", headers=ADMIN).json()
        assert report["loaded"] == ["sentiment"] and report["failed"] == []
        assert app.state.registry.entries["sentiment"] is not serving
        assert "reload_error" not in http.get("/models/sentiment").json()
        assert http.post("/classify", json={"inputs": "a great film"}).json() == before


@pytest.mark.parametrize("worker", ["process", "thread"])
def test_a_replaced_version_is_freed_without_the_cyclic_gc(models_dir: Path, tmp_path: Path,
                                                           worker: str) -> None:
    """With the cyclic garbage collector off, each replaced version (its entry and model)
    is freed once it retires, after requests on every route it serves: nothing it leaves
    behind sits in a reference cycle waiting for a collection that may come much later."""
    root = tmp_path / "models"
    shutil.copytree(models_dir, root)
    app = create_app(Settings(models_dir=root, admin_keys=["admin-key"],
                              generation_worker=worker))
    gone: list[weakref.ref[Any]] = []
    gc.collect()
    gc.disable()
    try:
        with TestClient(app) as client:
            for _ in range(3):
                gone += [weakref.ref(x) for e in app.state.registry.entries.values()
                         for x in (e, e.artifact)]
                for weights in root.glob("*/model.safetensors"):
                    st = weights.stat()
                    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
                assert client.post("/admin/reload", headers=ADMIN).json()["loaded"] == [
                    "sentiment", "shakespeare"]
                assert client.post("/classify", json={"inputs": "fine"}).status_code == 200
                assert client.post("/score", json={"inputs": "ROMEO:"}).status_code == 200
                assert client.post("/generate", json={
                    "inputs": "A", "parameters": {"max_new_tokens": 4}}).status_code == 200
                assert client.post("/v1/completions", json={
                    "model": "shakespeare", "prompt": "A", "max_tokens": 4,
                    "stream": True}).status_code == 200
            deadline = time.monotonic() + 10
            while any(ref() is not None for ref in gone):  # retiring: their work is done
                assert time.monotonic() < deadline, [ref() for ref in gone if ref() is not None]
                time.sleep(0.05)
    finally:
        gc.enable()


PROBE = """
import ctypes, ctypes.util, sys
from app.allocator import weights_apart

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks",
                "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
libc.mallinfo2.restype = MallInfo2
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
libc.free(libc.malloc(16 << 20))  # a large block freed raises glibc's threshold

def mapped(size):
    libc.malloc_trim(0)  # no free room at the top of the heap that could serve it
    before = libc.mallinfo2().hblkhd
    block = libc.malloc(size)
    held = libc.mallinfo2().hblkhd - before
    libc.free(block)
    return held

outside = mapped(4 << 20)
with weights_apart():
    inside = mapped(4 << 20)
print(outside, inside, mapped(4 << 20))
"""


def test_weights_loaded_apart_from_the_heap_are_mapped_on_their_own() -> None:
    """Once a freed block has raised glibc's threshold (as the first replaced model's weights
    do), a 4 MB block comes from the heap, where it may not go back to the system while
    smaller blocks live above it; within `weights_apart` (a model's loading) it is mapped on
    its own, whose memory goes back when it is freed; after, serving allocates as before.
    In a fresh interpreter, whose heap holds no free room that could serve the block."""
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    if not hasattr(libc, "gnu_get_libc_version") or not hasattr(libc, "mallinfo2"):
        pytest.skip("glibc's malloc only")
    run = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, capture_output=True,
                         text=True, timeout=60, check=True)
    outside, inside, after = map(int, run.stdout.split())
    assert (outside, after) == (0, 0)
    assert inside >= 4 << 20
