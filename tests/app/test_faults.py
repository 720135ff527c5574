"""Faults: broken model folders, exceptions inside a batch or a generation step."""

from __future__ import annotations

import asyncio
import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from app.settings import Settings
from tests.app.conftest import FailingStep, patched_steps, running_server, slowed_steps


def _break(folder: Path, how: str) -> None:
    weights, config = folder / "model.safetensors", folder / "config.json"
    if how == "flipped-byte":
        data = bytearray(weights.read_bytes())
        data[len(data) // 2] ^= 0x40
        weights.write_bytes(bytes(data))
    elif how == "truncated-weights":
        weights.write_bytes(weights.read_bytes()[:100])
    elif how == "broken-tokenizer":
        (folder / "tokenizer.json").write_text('{"version": "1.0", "model": ')
    elif how == "missing-tokenizer":
        (folder / "tokenizer.json").unlink()
    elif how == "future-format":
        config.write_text(json.dumps(json.loads(config.read_text()) | {"format_version": 7}))
    elif how == "wrong-shapes":
        cfg = json.loads(config.read_text())
        cfg["architecture"]["embedding_dim"] += 1
        config.write_text(json.dumps(cfg))
    elif how == "not-json-config":
        config.write_bytes(b"\x00\x01binary")


BREAKS = ["flipped-byte", "truncated-weights", "broken-tokenizer", "missing-tokenizer",
          "future-format", "wrong-shapes", "not-json-config"]


def test_every_kind_of_broken_folder_is_reported_and_the_rest_serve(models_dir: Path,
                                                                     tmp_path: Path) -> None:
    root = tmp_path / "models"
    shutil.copytree(models_dir, root)
    for how in BREAKS:
        shutil.copytree(models_dir / "sentiment", root / how)
        _break(root / how, how)
    (root / "empty-folder").mkdir()
    with TestClient(create_app(Settings(models_dir=root))) as client:
        assert client.get("/health/ready").status_code == 200
        models = {m["name"]: m for m in client.get("/models").json()["models"]}
        reasons = {name: m.get("reason", "") for name, m in models.items()}
        assert models["sentiment"]["status"] == models["shakespeare"]["status"] == "ready"
        assert "sha256" in reasons["flipped-byte"] and "sha256" in reasons["truncated-weights"]
        assert "cannot read tokenizer.json" in reasons["broken-tokenizer"]
        assert "missing tokenizer.json" in reasons["missing-tokenizer"]
        assert "format_version 7 is not supported" in reasons["future-format"]
        assert "do not fit the architecture" in reasons["wrong-shapes"]
        assert "cannot read config.json" in reasons["not-json-config"]
        assert "missing config.json" in reasons["empty-folder"]
        ready = client.get("/health/ready").json()
        assert set(ready["failed"]) == {*BREAKS, "empty-folder"}
        r = client.post("/classify", json={"inputs": "fine", "model": "flipped-byte"})
        assert r.status_code == 503 and "sha256" in r.json()["detail"]
        assert client.post("/classify", json={"inputs": "a great film"}).status_code == 200


@pytest.fixture(scope="module")
def live(models_dir: Path) -> Iterator[tuple[str, Any]]:
    app = create_app(Settings(models_dir=models_dir))
    with running_server(app) as url:
        yield url, app.state.registry


def test_a_batch_that_fails_once_is_run_again_member_by_member(live: tuple[str, Any]) -> None:
    url, registry = live
    engine = registry.entries["sentiment"].classify
    real = engine.run_batch
    calls = {"n": 0}

    def failing_second(items: list[str]) -> Any:
        calls["n"] += 1
        if calls["n"] == 2:  # the batch queued behind the first request
            raise RuntimeError("secret /internal/path detail")
        time.sleep(0.1)
        return real(items)

    engine.run_batch = failing_second
    before = engine.batches_split
    try:
        async def run() -> list[httpx.Response]:
            async with httpx.AsyncClient(base_url=url, timeout=30) as http:
                first = asyncio.create_task(http.post("/classify", json={"inputs": "x"}))
                await asyncio.sleep(0.05)
                rest = await asyncio.gather(*(http.post("/classify", json={"inputs": f"x{i}"})
                                              for i in range(5)))
                return [await first, *rest]
        responses = asyncio.run(run())
    finally:
        engine.run_batch = real
    assert [r.status_code for r in responses] == [200] * 6
    assert engine.batches_split == before + 1 and calls["n"] == 2 + 5


def test_exception_in_a_generation_step_fails_that_batch_and_generation_goes_on(
        live: tuple[str, Any]) -> None:
    url, registry = live
    generator = registry.entries["shakespeare"].generator
    with patched_steps(generator, FailingStep(3)):
        with httpx.stream("POST", f"{url}/generate_stream", json={
                "inputs": "ROMEO:", "parameters": {"max_new_tokens": 20}}) as s:
            events = [json.loads(line[5:]) for line in s.iter_lines() if line.startswith("data:")]
        # the same loop goes on to the next request, whose third step fails too
        r = httpx.post(f"{url}/generate", json={"inputs": "ROMEO:",
                                                "parameters": {"max_new_tokens": 20}})
    assert events[-1] == {"error": "internal error", "error_type": "generation"}
    assert 1 <= len(events) <= 4  # the tokens before the failing step, then the error
    assert r.status_code == 500 and r.json()["detail"] == "internal error"
    after = httpx.post(f"{url}/generate", json={"inputs": "ROMEO:",
                                                "parameters": {"max_new_tokens": 20}})
    assert after.status_code == 200 and len(after.json()["generated_text"]) == 20
    assert "secret" not in r.text


def test_a_client_that_leaves_while_queued_frees_its_work(live: tuple[str, Any]) -> None:
    url, registry = live
    engine = registry.entries["sentiment"].classify
    seen: list[str] = []
    real = engine.run_batch

    def recording(items: list[str]) -> Any:
        seen.extend(items)
        time.sleep(0.5)
        return real(items)

    async def run() -> None:
        async with httpx.AsyncClient(base_url=url, timeout=30) as http:
            busy = asyncio.create_task(http.post("/classify", json={"inputs": "first"}))
            while not engine.running:
                await asyncio.sleep(0.005)
            with pytest.raises(httpx.ReadTimeout):  # gives up and closes its connection
                await http.post("/classify", json={"inputs": "impatient"}, timeout=0.1)
            assert (await busy).status_code == 200

    engine.run_batch = recording
    try:
        asyncio.run(run())
        time.sleep(0.3)
    finally:
        engine.run_batch = real
    assert seen == ["first"] and engine.depth == 0


def test_a_client_that_leaves_a_plain_generate_frees_its_sequence(live: tuple[str, Any]) -> None:
    url, registry = live
    generator = registry.entries["shakespeare"].generator
    steps = generator.steps_run
    with slowed_steps(generator, 0.001):
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(f"{url}/generate", json={"inputs": "ROMEO:", "parameters": {
                "max_new_tokens": 1024}}, timeout=0.05)
        deadline = time.monotonic() + 2
        while generator.active and time.monotonic() < deadline:
            time.sleep(0.01)
    assert generator.active == 0 and generator.waiting == 0
    assert generator.steps_run - steps < 1000, "the sequence ran on after its client left"
