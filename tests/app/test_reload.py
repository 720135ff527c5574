"""Hot reload under load: new and changed folders swap in, removed ones retire, nothing fails."""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path

import httpx

from app.main import create_app
from app.settings import Settings
from tests.app.conftest import running_server

ADMIN = {"Authorization": "Bearer admin-key"}


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
