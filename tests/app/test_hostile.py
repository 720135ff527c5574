"""Hostile input: lone surrogates in every field, coerced types, bodies that are not declared
JSON, and server faults: always a clear, safely quoted answer with its request id."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.logs import REQUEST_ID
from app.main import create_app
from app.settings import Settings

# A server fault's body: both conventions' fields, and nothing of the fault itself.
INTERNAL = {"detail": "internal error", "error": "internal error", "error_type": "generation"}

JSON = {"content-type": "application/json"}
LONE = '"\\ud800"'  # a JSON string holding a lone surrogate, as an attacker writes it


@pytest.fixture(scope="module")
def hostile(models_dir: Path) -> Iterator[TestClient]:
    with TestClient(create_app(Settings(models_dir=models_dir))) as client:
        yield client


def _answer(client: TestClient, path: str, body: str) -> tuple[int, Any, str]:
    r = client.post(path, content=body.encode(), headers=JSON)
    text = r.content.decode("utf-8")  # always valid UTF-8 ...
    assert len(r.headers["x-request-id"]) == 32
    return r.status_code, json.loads(text), text  # ... and valid JSON


@pytest.mark.parametrize(("path", "body", "where"), [
    ("/classify", f'{{"inputs": {LONE}}}', ["body", "inputs"]),
    ("/classify", f'{{"inputs": ["fine", "a{LONE[1:]}]}}', ["body", "inputs"]),
    ("/classify", f'{{"inputs": "x", "model": {LONE}}}', ["body", "model"]),
    ("/classify", f'{{"inputs": "x", {LONE}: 1}}', ["body"]),
    ("/score", f'{{"inputs": [{LONE}]}}', ["body", "inputs"]),
    ("/generate", f'{{"inputs": "RO{LONE[1:]}}}', ["body", "inputs"]),
    ("/generate", f'{{"inputs": "x", "parameters": {{"stop": [{LONE}]}}}}',
     ["body", "parameters", "stop", 0]),
    ("/generate", f'{{"inputs": "x", "parameters": {{{LONE}: 1}}}}',
     ["body", "parameters"]),
    ("/generate_stream", f'{{"inputs": {LONE}}}', ["body", "inputs"]),
    ("/", f'{{"inputs": "x", "model": "a{LONE[1:]}}}', ["body", "model"]),
])
def test_a_lone_surrogate_anywhere_is_a_422_that_names_the_field(
        hostile: TestClient, path: str, body: str, where: list[Any]) -> None:
    status, answer, text = _answer(hostile, path, body)
    assert status == 422, text
    assert any(e["loc"] == where for e in answer["detail"]), answer
    assert "\\\\ud800" in text  # quoted as an escape, never as the raw code unit
    assert hostile.get("/health/ready").status_code == 200


def test_the_surrogate_message_names_its_position(hostile: TestClient) -> None:
    _, answer, _ = _answer(hostile, "/classify", f'{{"inputs": ["ok", "abc{LONE[1:]}]}}')
    assert answer["detail"][0]["loc"] == ["body", "inputs"]
    assert "inputs[1] holds a lone surrogate U+D800 at character 3" in answer["detail"][0]["msg"]


def test_surrogate_pairs_and_unusual_text_still_work(hostile: TestClient) -> None:
    status, answer, _ = _answer(hostile, "/classify", '{"inputs": ["\\ud83d\\ude00 fine"]}')
    assert status == 200 and len(answer) == 1


@pytest.mark.parametrize(("field", "value"), [
    ("max_new_tokens", "5"), ("max_new_tokens", 5.0), ("max_new_tokens", True),
    ("seed", "7"), ("seed", 7.0), ("top_k", "3"), ("temperature", "0.8"),
    ("do_sample", 1), ("details", "true"),
])
def test_generation_parameters_are_not_coerced(hostile: TestClient, field: str,
                                               value: Any) -> None:
    r = hostile.post("/generate", json={"inputs": "ROMEO:", "parameters": {field: value}})
    assert r.status_code == 422, r.text
    assert any(e["loc"] == ["body", "parameters", field] for e in r.json()["detail"])


@pytest.mark.parametrize("path", ["/v1/completions", "/v1/chat/completions"])
@pytest.mark.parametrize("field", ["temperature", "top_p", "presence_penalty",
                                   "frequency_penalty"])
@pytest.mark.parametrize("value", [True, "0.5"])
def test_openai_sampling_numbers_are_not_coerced(hostile: TestClient, path: str, field: str,
                                                 value: Any) -> None:
    body: dict[str, Any] = {"model": "shakespeare", field: value, "max_tokens": 2}
    body |= ({"prompt": "RO"} if path == "/v1/completions"
             else {"messages": [{"role": "user", "content": "RO"}]})
    r = hostile.post(path, json=body)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == field
    body[field] = 1  # a JSON integer is a number
    assert hostile.post(path, json=body).status_code == 200


@pytest.mark.parametrize(("stop", "param", "says"), [
    (["a"] * 17, "stop", "at most 16 items"), ("b" * 65, "stop[0]", "at most 64 characters"),
    (["c", ""], "stop[1]", "at least 1 character"), (5, "stop", "valid list"),
])
def test_openai_stop_limits_name_the_field(hostile: TestClient, stop: Any, param: str,
                                           says: str) -> None:
    r = hostile.post("/v1/completions", json={"model": "shakespeare", "prompt": "RO",
                                              "max_tokens": 2, "stop": stop})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param and says in r.json()["error"]["message"]


def test_openai_stop_takes_one_long_string_or_sixteen(hostile: TestClient) -> None:
    for stop in ("z" * 64, ["z"] * 16):
        r = hostile.post("/v1/completions", json={"model": "shakespeare", "prompt": "RO",
                                                  "max_tokens": 2, "stop": stop})
        assert r.status_code == 200, r.text


@pytest.mark.parametrize("body", [
    {"inputs": "ROMEO:", "stream": 0}, {"inputs": "ROMEO:", "stream": "false"},
])
def test_stream_is_a_boolean(hostile: TestClient, body: dict[str, Any]) -> None:
    r = hostile.post("/generate", json=body)
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "stream"]


def test_exact_types_are_accepted(hostile: TestClient) -> None:
    r = hostile.post("/generate", json={"inputs": "ROMEO:", "stream": False, "parameters": {
        "max_new_tokens": 3, "seed": 7, "temperature": 1, "top_k": 3, "do_sample": True}})
    assert r.status_code == 200 and len(r.json()["generated_text"]) == 3
    r = hostile.post("/classify", json={"inputs": "fine", "parameters": {"top_k": "1"}})
    assert r.status_code == 422
    assert hostile.post("/classify", json={"inputs": "fine", "parameters": {"top_k": 1}}
                        ).status_code == 200


@pytest.mark.parametrize(("headers", "shown"), [
    ({}, "none"),                                                          # curl --data-binary
    ({"content-type": "application/x-www-form-urlencoded"}, "'application/x-www-form-urlencoded'"),
    ({"content-type": "text/plain"}, "'text/plain'"),
])
def test_a_body_not_declared_json_is_415_naming_the_header(
        hostile: TestClient, headers: dict[str, str], shown: str) -> None:
    for path in ("/classify", "/generate", "/score"):
        r = hostile.post(path, content=b'{"inputs": "fine"}', headers=headers)
        assert r.status_code == 415, r.text
        detail = r.json()["detail"]
        assert "Content-Type: application/json" in detail and shown in detail
        assert "b'" not in r.text and len(r.headers["x-request-id"]) == 32


@pytest.mark.parametrize("content_type", ["application/json; charset=utf-8",
                                          "Application/JSON", "application/vnd.api+json"])
def test_json_content_types_with_parameters_are_read(hostile: TestClient,
                                                     content_type: str) -> None:
    r = hostile.post("/classify", content=b'{"inputs": "fine"}',
                     headers={"content-type": content_type})
    assert r.status_code == 200, r.text


class _Ids(logging.Handler):
    """Records each log line with the request id in force when it was written."""

    def __init__(self) -> None:
        super().__init__()
        self.lines: list[tuple[str, str, bool]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append((REQUEST_ID.get(), record.getMessage(), record.exc_info is not None))


@pytest.mark.parametrize("path", ["/classify", "/score", "/generate"])
def test_a_500_carries_the_request_id_on_the_answer_and_its_traceback(
        models_dir: Path, path: str) -> None:
    app = create_app(Settings(models_dir=models_dir))
    ids = _Ids()
    logging.getLogger("app").addHandler(ids)
    try:
        with TestClient(app, raise_server_exceptions=False) as client:
            def broken(*args: Any) -> Any:
                raise RuntimeError("secret /internal/path")
            app.state.registry.get = broken
            r = client.post(path, json={"inputs": "fine"}, headers={"X-Request-Id": "req-500"})
    finally:
        logging.getLogger("app").removeHandler(ids)
    assert r.status_code == 500 and r.json() == INTERNAL
    assert r.headers["x-request-id"] == "req-500"
    tracebacks = [line for line in ids.lines if line[2]]
    assert tracebacks and all(rid == "req-500" for rid, _, _ in tracebacks)


def test_openapi_lists_every_status_a_route_answers(hostile: TestClient) -> None:
    spec = hostile.get("/openapi.json").json()
    for path in ("/classify", "/generate", "/generate_stream", "/score", "/"):
        answers = spec["paths"][path]["post"]["responses"]
        for code in ("200", "400", "401", "404", "408", "413", "415", "422", "500", "503", "504"):
            assert code in answers, (path, code)
            if code != "200":
                assert answers[code]["content"]["application/json"]["schema"] == {
                    "$ref": "#/components/schemas/ErrorResponse"}
    assert "500" in spec["paths"]["/health/live"]["get"]["responses"]
