"""API keys, request ids and JSON logs, against a real server process where it matters."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from app.settings import Settings
from tests.app.conftest import server_process


def test_api_keys_guard_model_routes_but_not_health(models_dir: Path) -> None:
    app = create_app(Settings(models_dir=models_dir, api_keys=["k-one", "k-two"]))
    with TestClient(app) as client:
        body = {"inputs": "a fine film"}
        missing = client.post("/classify", json=body)
        assert missing.status_code == 401 and missing.headers["www-authenticate"] == "Bearer"
        wrong = client.post("/classify", json=body, headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401
        basic = client.post("/classify", json=body, headers={"Authorization": "Basic k-one"})
        assert basic.status_code == 401
        for key in ("k-one", "k-two"):
            ok = client.post("/classify", json=body, headers={"Authorization": f"Bearer {key}"})
            assert ok.status_code == 200
        assert client.get("/models").status_code == 401
        assert client.post("/admin/reload").status_code == 401
        # keys are checked before routing: an unknown path tells a keyless client nothing
        assert client.get("/no-such-route").status_code == 401
        assert client.get("/no-such-route", headers={"Authorization": "Bearer k-one"}
                          ).status_code == 404
        assert client.get("/health/ready").status_code == 200
        assert client.get("/metrics").status_code == 200
        for page in ("/docs", "/redoc", "/openapi.json", "/docs-assets/swagger-ui.css"):
            assert client.get(page).status_code == 200, page
    with TestClient(create_app(Settings(models_dir=models_dir))) as open_client:
        assert open_client.post("/classify", json={"inputs": "x"}).status_code == 200
    locked = Settings(models_dir=models_dir, api_keys=["k"], protect_metrics=True)
    with TestClient(create_app(locked)) as client:
        assert client.get("/metrics").status_code == 401
        assert client.get("/metrics", headers={"Authorization": "Bearer k"}).status_code == 200
        assert client.get("/health/live").status_code == 200


def test_request_id_is_taken_or_made_and_echoed(models_dir: Path) -> None:
    with TestClient(create_app(Settings(models_dir=models_dir))) as client:
        given = client.get("/health/live", headers={"X-Request-Id": "abc-123"})
        assert given.headers["x-request-id"] == "abc-123"
        made = client.get("/health/live", headers={"X-Request-Id": "bad id\nwith newline"})
        assert len(made.headers["x-request-id"]) == 32
        longest = "a" * 128  # the limit: taken; one more character: replaced
        assert client.get("/health/live", headers={"X-Request-Id": longest}).headers[
            "x-request-id"] == longest
        replaced = client.get("/health/live", headers={"X-Request-Id": longest + "a"})
        assert len(replaced.headers["x-request-id"]) == 32


def test_json_logs_every_line_with_request_ids_and_no_keys(models_dir: Path,
                                                           tmp_path: Path) -> None:
    (tmp_path / "admin-keys").write_text("# mounted secret\nadmin-secret-456\n")
    env = {"RNN_MODELS_DIR": str(models_dir), "RNN_LOG_FORMAT": "json",
           "RNN_API_KEYS": "secret-key-123", "RNN_ADMIN_KEYS_FILE": str(tmp_path / "admin-keys")}
    with server_process(env) as (url, proc):
        r = httpx.post(f"{url}/classify", json={"inputs": "fine"},
                       headers={"X-Request-Id": "req-42", "Authorization": "Bearer secret-key-123"})
        assert r.status_code == 200
        admin = {"Authorization": "Bearer admin-secret-456"}
        assert httpx.post(f"{url}/admin/reload", headers=admin, timeout=30).status_code == 200
        assert httpx.post(f"{url}/admin/reload", headers={
            "Authorization": "Bearer secret-key-123"}).status_code == 403
        assert httpx.post(f"{url}/admin/reload").status_code == 401
        assert httpx.post(f"{url}/classify", json={"inputs": "x"}, headers=admin).status_code == 401
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0
    lines = [line for line in out.splitlines() if line.strip()]
    records = [json.loads(line) for line in lines]  # every line is one JSON object
    messages = " ".join(r["message"] for r in records)
    assert "Uvicorn running" in messages and "Application startup complete" in messages
    access = [r for r in records if r["logger"] == "uvicorn.access" and "/classify" in r["message"]]
    assert access and access[0]["request_id"] == "req-42"
    assert "secret-key-123" not in out and "admin-secret-456" not in out and "Bearer" not in out


def test_stream_in_flight_at_sigterm_completes(models_dir: Path) -> None:
    with server_process({"RNN_MODELS_DIR": str(models_dir), "RNN_LOG_FORMAT": "json"}) as (url, proc):
        body = {"inputs": "ROMEO:", "parameters": {"max_new_tokens": 1024, "seed": 2,
                                                   "temperature": 1.0}}
        events = []
        with httpx.stream("POST", f"{url}/generate_stream", json=body, timeout=60) as r:
            for line in r.iter_lines():
                if line.startswith("data:"):
                    events.append(json.loads(line[5:]))
                    if len(events) == 3:
                        proc.send_signal(signal.SIGTERM)
        assert len(events) == 1024
        assert events[-1]["details"]["finish_reason"] == "length"
        with pytest.raises(httpx.TransportError):
            httpx.get(f"{url}/health/ready", timeout=2)  # no new connections while draining
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0
    assert "draining" in out


def test_cors_allows_only_the_configured_origins(models_dir: Path) -> None:
    app = create_app(Settings(models_dir=models_dir, cors_origins=["https://ok.example"]))
    with TestClient(app) as client:
        ask = {"Access-Control-Request-Method": "POST"}
        ok = client.options("/classify", headers={"Origin": "https://ok.example"} | ask)
        assert ok.headers["access-control-allow-origin"] == "https://ok.example"
        other = client.options("/classify", headers={"Origin": "https://evil.example"} | ask)
        assert "access-control-allow-origin" not in other.headers
