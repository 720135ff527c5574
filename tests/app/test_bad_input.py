"""Bad and unusual input: always a clear 4xx or a real answer, never a 500 or a NaN."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from fastapi.testclient import TestClient

JSON = {"content-type": "application/json"}
UNUSUAL = ["😀🔥👍", "\u200b\u200d\u2060", "e\u0301\u0301\u0301\u0301", "a\x00b\x00", "   \t\n ",
           "x" * 200, "日本語のテキストです", "مرحبا بالعالم", "\U0010ffff\ue000", ""]


def _finite(value: Any) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, dict):
        return all(_finite(v) for v in value.values())
    if isinstance(value, list):
        return all(_finite(v) for v in value)
    return True


@pytest.mark.parametrize(("content", "headers", "status"), [
    (b'{"inputs": ', JSON, 422),                          # broken JSON
    (b'{"inputs": "\xff\xfe"}', JSON, 400),               # not UTF-8
    (b'{"inputs": "hi"}', {"content-type": "text/plain"}, 415),  # wrong content type
    (b"", JSON, 422),                                     # empty body
    (b"[" * 50_000 + b"]" * 50_000, JSON, 400),           # nesting past the parser's depth
    (b'{"inputs": "a", "inputs": 1}', JSON, 422),         # duplicate key, last one wins: 1
    (b"null", JSON, 422),
])
def test_malformed_bodies_get_4xx(client: TestClient, content: bytes, headers: dict[str, str],
                                  status: int) -> None:
    for path in ("/classify", "/generate", "/score"):
        r = client.post(path, content=content, headers=headers)
        assert r.status_code == status, (path, r.text)


def test_unusual_text_is_answered_with_finite_numbers(client: TestClient) -> None:
    r = client.post("/classify", json={"inputs": UNUSUAL[:8]})
    assert r.status_code == 200 and _finite(r.json()) and len(r.json()) == 8
    r = client.post("/score", json={"inputs": UNUSUAL[:8]})
    assert r.status_code == 200 and _finite(r.json())
    for text in UNUSUAL[:-1]:
        r = client.post("/generate", json={"inputs": text, "parameters": {
            "max_new_tokens": 5, "temperature": 1.0, "details": True}})
        assert r.status_code == 200 and _finite(r.json()), text
        assert r.json()["details"]["generated_tokens"] == 5


@pytest.mark.parametrize("parameters", [
    {"temperature": 1e-30}, {"temperature": 100}, {"top_p": 1e-9}, {"top_k": 1},
    {"repetition_penalty": 99.0}, {"repetition_penalty": 1e-6}, {"seed": 2**53},
])
def test_extreme_but_valid_sampling_parameters_work(client: TestClient,
                                                    parameters: dict[str, Any]) -> None:
    r = client.post("/generate", json={"inputs": "ROMEO:", "parameters": {
        "max_new_tokens": 8, "details": True} | parameters})
    assert r.status_code == 200 and _finite(r.json())
    assert "<unk>" not in r.json()["generated_text"]


@pytest.mark.parametrize("parameters", [
    {"temperature": "hot"}, {"temperature": float("inf")}, {"seed": -1}, {"seed": 2**53 + 1},
    {"top_k": -3}, {"max_new_tokens": 10**30}, {"stop": "not a list"}, {"stop": ["x"] * 17},
    {"top_p": 0}, {"repetition_penalty": 0},
])
def test_out_of_range_values_are_422(client: TestClient, parameters: dict[str, Any]) -> None:
    body = json.dumps({"inputs": "ROMEO:", "parameters": parameters}, allow_nan=True)
    r = client.post("/generate", content=body, headers=JSON)
    assert r.status_code == 422, r.text
    name, detail = next(iter(parameters)), r.json()["detail"]
    assert name in detail if isinstance(detail, str) else any(name in e["loc"] for e in detail)


def test_errors_never_echo_a_whole_oversized_input(client: TestClient) -> None:
    huge = "Q" * 5000
    r = client.post("/generate", json={"inputs": "x", "parameters": {"stop": [huge]}})
    assert r.status_code == 422 and "Q" * 200 not in r.text and "characters)" in r.text
    r = client.post("/classify", json={"inputs": huge})
    assert r.status_code == 422 and "Q" * 200 not in r.text


@pytest.mark.parametrize("name", ["../sentiment", "sentiment/../../etc", "/etc/passwd", ".", "..",
                                  "a" * 200, "sent iment", "%2e%2e"])
def test_a_model_name_is_only_ever_a_name(client: TestClient, name: str) -> None:
    r = client.post("/classify", json={"inputs": "x", "model": name})
    assert r.status_code == 422


def test_a_denormal_repetition_penalty_with_an_unknown_prompt_character(client: TestClient) -> None:
    # Found by schemathesis: 5e-324 underflows to 0 in float32 and made the banned token NaN.
    r = client.post("/generate", json={"inputs": "£M", "parameters": {
        "repetition_penalty": 5e-324, "top_k": 1, "seed": 0, "details": True}})
    assert r.status_code == 200 and _finite(r.json())
    assert all(t["logprob"] is not None for t in r.json()["details"]["tokens"])
