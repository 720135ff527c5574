"""The small holes: lone surrogates on the OpenAI routes and /tokenize (422/400, never 500),
a key in a query string kept out of the access log, CORS preflight answered before the key
check, X-Content-Type-Options on every answer, /health open with keys set."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.logs import redact_url
from app.main import create_app
from app.settings import Settings

LONE = '"\\ud800"'  # a JSON string holding a lone surrogate
JSON = {"Content-Type": "application/json"}


@pytest.fixture(scope="module")
def keyed(models_dir: Path) -> TestClient:
    app = create_app(Settings(models_dir=models_dir, api_keys=["k1"],
                              cors_origins=["https://app.example"]))
    with TestClient(app) as client:
        yield client  # type: ignore[misc]


@pytest.mark.parametrize(("path", "body", "status", "param"), [
    ("/v1/completions", f'{{"model": "shakespeare", "prompt": {LONE}}}', 400, "prompt"),
    ("/v1/completions", f'{{"model": "shakespeare", "prompt": ["ok", {LONE}]}}', 400,
     "prompt"),
    ("/v1/chat/completions",
     f'{{"model": "shakespeare", "messages": [{{"role": "user", "content": {LONE}}}]}}', 400,
     "messages[0].content"),
    ("/tokenize", f'{{"inputs": {LONE}}}', 422, None),
])
def test_lone_surrogates_are_refused_on_every_route(keyed: TestClient, path: str, body: str,
                                                    status: int, param: str | None) -> None:
    r = keyed.post(path, content=body.encode(), headers=JSON | {"Authorization": "Bearer k1"})
    assert r.status_code == status, r.text
    if param is not None:  # OpenAI's shape names the field as the client wrote it
        assert r.json()["error"]["param"] == param
    assert "U+D800" in r.text


def test_every_answer_says_nosniff_and_health_is_open(keyed: TestClient) -> None:
    for path in ("/health", "/health/live", "/health/ready"):
        r = keyed.get(path)
        assert r.status_code == 200 and r.headers["x-content-type-options"] == "nosniff"
    refused = keyed.post("/classify", json={"inputs": "x"})
    assert refused.status_code == 401 and refused.headers["x-content-type-options"] == "nosniff"


def test_a_cors_preflight_is_answered_before_the_key_check(keyed: TestClient) -> None:
    r = keyed.options("/classify", headers={
        "Origin": "https://app.example", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization,content-type"})
    assert r.status_code == 200
    assert r.headers["access-control-allow-origin"] == "https://app.example"
    # An OPTIONS that is not a preflight still needs the key.
    assert keyed.options("/classify").status_code == 401


def test_a_key_in_the_query_string_is_not_logged(keyed: TestClient) -> None:
    assert redact_url("/classify?api_key=s3cret&x=1") == "/classify?api_key=REDACTED&x=1"
    assert redact_url("/classify?token=abc") == "/classify?token=REDACTED"
    assert redact_url("/classify") == "/classify"
    # uvicorn's access line, through the service's log handler (set up by the app)
    handler = next(h for h in logging.getLogger().handlers if h.get_name() == "textrnn")
    record = logging.getLogger("uvicorn.access").makeRecord(
        "uvicorn.access", logging.INFO, __file__, 0, '%s - "%s %s HTTP/%s" %d',
        ("127.0.0.1:1", "GET", "/health?api_key=s3cret", "1.1", 200), None)
    assert handler.filter(record)
    line = handler.format(record)
    assert "s3cret" not in line and "api_key=REDACTED" in line
