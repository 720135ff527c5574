"""The one generation front end, seen from both protocols: each limit exactly at its value
and one past it, usage counts, a deadline in the queue, OpenAI's shapes and model fallback,
and the same number of writes for a stream on either protocol."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.main import create_app
from app.settings import Settings
from tests.app.conftest import running_server, slowed_steps

LIMITS = {"max_new_tokens": 40, "max_request_tokens": 120, "max_inputs": 3,
          "max_input_chars": 50}


class _CountingWrites:
    """The app, counting the body writes of each answer (what a stream costs the loop)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app, self.writes = app, 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def counted(message: Message) -> None:
            if message["type"] == "http.response.body" and message.get("body"):
                self.writes += 1
            await send(message)
        await self.app(scope, receive, counted)


@pytest.fixture(scope="module")
def served(models_dir: Path) -> Iterator[tuple[TestClient, _CountingWrites]]:
    app = create_app(Settings(models_dir=models_dir, stream_flush_ms=1000, **LIMITS))
    counting = _CountingWrites(app)
    with TestClient(counting) as client:  # the app, through the counter (lifespan too)
        yield client, counting
        assert client.get("/health/ready").status_code == 200


def _tgi(client: TestClient, tokens: int, best_of: int | None = None, **extra: Any) -> Any:
    params = {"max_new_tokens": tokens, "seed": 1} | ({"best_of": best_of} if best_of else {})
    return client.post("/generate", json={"inputs": "ROMEO:", "parameters": params | extra})


def _v1(client: TestClient, **body: Any) -> Any:
    return client.post("/v1/completions", json={"model": "shakespeare", "prompt": "ROMEO:"} | body)


@pytest.mark.parametrize(("field", "at", "over", "setting"), [
    ("max_new_tokens", 40, 41, "RNN_MAX_NEW_TOKENS"),
])
def test_max_new_tokens_at_its_limit_and_one_past(served: Any, field: str, at: int, over: int,
                                                 setting: str) -> None:
    client, _ = served
    assert _tgi(client, at).status_code == 200
    refused = _tgi(client, over)
    assert refused.status_code == 422 and setting in refused.json()["error"]
    assert "parameters.max_new_tokens is 41" in refused.json()["error"]
    assert _v1(client, max_tokens=at).status_code == 200
    refused = _v1(client, max_tokens=over)
    assert refused.status_code == 400
    assert refused.json()["error"]["param"] == "max_tokens" and setting in refused.text
    chat = client.post("/v1/chat/completions", json={
        "model": "shakespeare", "messages": [{"role": "user", "content": "hi"}],
        "max_completion_tokens": over})
    assert chat.status_code == 400 and chat.json()["error"]["param"] == "max_completion_tokens"


def test_the_request_budget_at_its_value_and_one_past(served: Any) -> None:
    """prompts x choices x tokens: 3 x 1 x 40 = 120 is the budget; 3 x 1 x 41 is not possible
    (over max_new_tokens), so n and best_of push it over."""
    client, _ = served
    assert _v1(client, prompt=["a", "b", "c"], max_tokens=40).status_code == 200
    assert _v1(client, n=3, max_tokens=40).status_code == 200
    refused = _v1(client, n=4, max_tokens=30)  # 1 x 4 x 30 = 120: at the budget
    assert refused.status_code == 200
    refused = _v1(client, n=4, max_tokens=31)  # 124
    assert refused.status_code == 400 and "RNN_MAX_REQUEST_TOKENS" in refused.text
    assert refused.json()["error"]["param"] == "max_tokens"
    assert _tgi(client, 40, best_of=3).status_code == 200
    over = _tgi(client, 31, best_of=4)
    assert over.status_code == 422 and "= 124 tokens" in over.json()["error"]
    assert "RNN_MAX_REQUEST_TOKENS" in over.json()["error"]


def test_stop_sequences_at_their_limits_and_one_past(served: Any) -> None:
    client, _ = served
    stops = [f"{i:02d}" + "x" * 62 for i in range(16)]  # 16 stops of 64 characters
    assert _tgi(client, 5, stop=stops).status_code == 200
    assert _v1(client, max_tokens=5, stop=stops).status_code == 200
    assert _tgi(client, 5, stop=[*stops, "y"]).status_code == 422
    assert _v1(client, max_tokens=5, stop=[*stops, "y"]).json()["error"]["param"] == "stop"
    assert _tgi(client, 5, stop=["x" * 65]).status_code == 422
    assert _v1(client, max_tokens=5, stop="x" * 65).json()["error"]["param"] == "stop[0]"


def test_prompts_and_characters_at_their_limits_and_one_past(served: Any) -> None:
    client, _ = served
    assert _v1(client, prompt=["a"] * 3, max_tokens=2).status_code == 200
    refused = _v1(client, prompt=["a"] * 4, max_tokens=2)
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "prompt"
    assert _v1(client, prompt="a" * 50, max_tokens=2).status_code == 200
    refused = _v1(client, prompt=["b", "a" * 51], max_tokens=2)
    assert refused.json()["error"]["param"] == "prompt[1]" and "RNN_MAX_INPUT_CHARS" in refused.text
    assert client.post("/generate", json={"inputs": "a" * 50}).status_code == 200
    assert client.post("/generate", json={"inputs": "a" * 51}).status_code == 422
    assert client.post("/tokenize", json={"inputs": "a" * 51}).status_code == 422
    assert _v1(client, n=8, max_tokens=2).status_code == 200
    assert _v1(client, n=9, max_tokens=2).json()["error"]["param"] == "n"


def test_usage_counts_every_choice_whole_and_streamed(served: Any) -> None:
    client, _ = served
    whole = _v1(client, prompt=["ROMEO:", "JULIET:"], n=2, max_tokens=7, seed=3).json()
    assert len(whole["choices"]) == 4
    assert whole["usage"] == {"prompt_tokens": 6 + 7, "completion_tokens": 4 * 7,
                              "total_tokens": 13 + 28}
    with client.stream("POST", "/v1/completions", json={
            "model": "shakespeare", "prompt": ["ROMEO:", "JULIET:"], "n": 2, "max_tokens": 7,
            "seed": 3, "stream": True, "stream_options": {"include_usage": True}}) as r:
        events = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    usage = json.loads(events[-2])["usage"]
    assert usage == whole["usage"]
    texts = [""] * 4
    for event in events[:-2]:
        choice = json.loads(event)["choices"][0]
        texts[choice["index"]] += choice["text"]
    assert texts == [c["text"] for c in whole["choices"]]


def test_a_stream_is_written_as_often_on_either_protocol(served: Any) -> None:
    """A 40-token stream with a long flush interval: its first token at once, the rest with
    the end, on TGI's route and OpenAI's alike."""
    client, counting = served
    writes = {}
    for name, path, body in [
            ("tgi", "/generate_stream", {"inputs": "ROMEO:", "parameters": {
                "max_new_tokens": 40, "seed": 2}}),
            ("openai", "/v1/completions", {"model": "shakespeare", "prompt": "ROMEO:",
                                           "max_tokens": 40, "seed": 2, "stream": True}),
            ("chat", "/v1/chat/completions", {"model": "shakespeare", "max_tokens": 40,
                                              "messages": [{"role": "user", "content": "hi"}],
                                              "stream": True})]:
        counting.writes = 0
        with client.stream("POST", path, json=body) as r:
            text = "".join(r.iter_text())
        assert r.status_code == 200 and "data:" in text
        writes[name] = counting.writes
    assert writes["tgi"] == writes["openai"] == 2, writes
    assert writes["chat"] <= 2


def test_openai_model_names_that_are_not_served_fall_back_and_models_retrieve(
        served: Any) -> None:
    client, _ = served
    for name in ("dummy", "tgi", "gpt-4o"):
        answer = _v1(client, model=name, max_tokens=3)
        assert answer.status_code == 200 and answer.json()["model"] == "shakespeare"
    wrong = _v1(client, model="sentiment", max_tokens=3)
    assert wrong.status_code == 400 and "shakespeare" in wrong.json()["error"]["message"]
    assert "sentiment" not in wrong.json()["error"]["message"].split("are:")[1]
    card = client.get("/v1/models/shakespeare").json()
    assert card["id"] == "shakespeare" and card["object"] == "model" and card["created"] > 0
    assert all(m["created"] > 0 for m in client.get("/v1/models").json()["data"])
    missing = client.get("/v1/models/sentiment")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "model_not_found"


def test_null_means_the_default_for_every_optional_openai_field(served: Any) -> None:
    client, _ = served
    nulls = {"n": None, "stream": None, "echo": None, "logprobs": None, "temperature": None,
             "stop": None, "seed": None, "max_tokens": None, "stream_options": None}
    answer = _v1(client, **nulls)
    assert answer.status_code == 200 and len(answer.json()["choices"]) == 1
    chat = client.post("/v1/chat/completions", json={
        "model": "shakespeare", "messages": [{"role": "user", "content": "hi", "name": None}],
        "n": None, "stream": None, "logprobs": None, "top_logprobs": None, "max_tokens": 3})
    assert chat.status_code == 200


@pytest.mark.parametrize(("method", "path", "status"), [
    ("POST", "/v1/responses", 404), ("POST", "/v1/embeddings", 404), ("GET", "/v1/completions", 405),
])
def test_every_v1_error_is_in_openais_shape(served: Any, method: str, path: str,
                                           status: int) -> None:
    client, _ = served
    answer = client.request(method, path, json={})
    assert answer.status_code == status
    error = answer.json()["error"]
    assert error["message"] and error["type"] == "invalid_request_error"


def test_v1_413_and_415_are_in_openais_shape(models_dir: Path) -> None:
    app = create_app(Settings(models_dir=models_dir, max_body_bytes=2048))
    with TestClient(app) as client:
        big = client.post("/v1/completions", content=b'{"prompt": "' + b"a" * 4000 + b'"}',
                          headers={"content-type": "application/json"})
        assert big.status_code == 413 and "RNN_MAX_BODY_BYTES" in big.json()["error"]["message"]
        text = client.post("/v1/completions", content=b"hello",
                           headers={"content-type": "text/plain"})
        assert text.status_code == 415 and text.json()["error"]["type"] == "invalid_request_error"


def test_a_deadline_in_the_queue_is_a_504_on_every_route(models_dir: Path) -> None:
    """One slot, held by a slow generation; requests behind it wait past their deadline and
    get 504 before their answer starts, streamed or not, on TGI's and OpenAI's routes."""
    settings = Settings(models_dir=models_dir, max_active_sequences=1, request_timeout_s=0.5,
                        generation_worker="thread")
    app = create_app(settings)
    with running_server(app) as url, httpx.Client(base_url=url, timeout=30) as client:
        generator = app.state.registry.get("shakespeare", "generate").generator
        with slowed_steps(generator, 0.05), client.stream("POST", "/generate_stream", json={
                "inputs": "ROMEO:", "parameters": {"max_new_tokens": 120}}) as hog:
            lines = hog.iter_lines()  # kept: a dropped iterator closes the stream
            assert next(lines).startswith("data:")
            tgi = httpx.post(f"{url}/generate", json={"inputs": "ROMEO:"}, timeout=30)
            tgi_stream = httpx.post(f"{url}/generate_stream", json={"inputs": "ROMEO:"},
                                    timeout=30)
            v1, v1_stream = [httpx.post(f"{url}/v1/completions", json={
                "model": "shakespeare", "prompt": "ROMEO:", "max_tokens": 5, "stream": s},
                timeout=30) for s in (False, True)]
        statuses = [r.status_code for r in (tgi, tgi_stream, v1, v1_stream)]
        assert statuses == [504] * 4, (statuses, [r.text[-80:] for r in (tgi, tgi_stream, v1, v1_stream)])
        assert tgi.json()["error_type"] == "timeout" and "RNN_REQUEST_TIMEOUT_S" in tgi.text
        assert v1.status_code == v1_stream.status_code == 504
        assert v1.json()["error"]["type"] == "timeout"


def test_one_large_request_does_not_starve_a_one_stream_client(models_dir: Path) -> None:
    """16 prompts x 8 choices x 128 tokens (the whole budget): 128 generations for 64 slots.
    A client with one stream sent after them gets its first token within a few steps (a
    running generation of the large request gives up its slot), not when the first 64 end
    (1.3 s) nor after all 128 (2.6 s)."""
    app = create_app(Settings(models_dir=models_dir, generation_worker="thread"))
    with running_server(app) as url:
        generator = app.state.registry.get("shakespeare", "generate").generator
        with slowed_steps(generator, 0.01):
            result: dict[str, Any] = {}

            def hog() -> None:
                result["hog"] = httpx.post(f"{url}/v1/completions", json={
                    "model": "shakespeare", "prompt": ["ROMEO:"] * 16, "n": 8,
                    "max_tokens": 128, "seed": 1}, timeout=60)

            attacker = threading.Thread(target=hog)
            attacker.start()
            deadline = time.monotonic() + 10
            while generator.waiting < 60 and time.monotonic() < deadline:
                time.sleep(0.01)
            assert generator.waiting >= 60  # the slots are full and 64 more wait
            started = time.perf_counter()
            with httpx.stream("POST", f"{url}/generate_stream", json={
                    "inputs": "JULIET:", "parameters": {"max_new_tokens": 8}},
                    timeout=30) as light:
                lines = light.iter_lines()
                first = next(line for line in lines if line.startswith("data:"))
                waited = time.perf_counter() - started
                rest = [line for line in lines if line.startswith("data:")]
            attacker.join()
    assert json.loads(first[5:])["index"] == 0 and len(rest) == 7
    assert waited < 0.6, waited
    hog_answer = result["hog"]
    assert hog_answer.status_code == 200 and len(hog_answer.json()["choices"]) == 128
