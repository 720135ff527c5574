from __future__ import annotations

import asyncio
import itertools
import json
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
from fastapi.testclient import TestClient

from app.generation.choices import Choices, TokenEvent
from app.generation.messages import GenerationSpec, Sampling
from app.jobs import sse_events
from app.main import create_app
from app.routes.generate import TgiFrames
from app.schemas import StreamResponse
from app.settings import Settings
from textrnn.artifact import load_artifact
from textrnn.inference import classify_logits
from textrnn.tokenization import encode_batch


def test_health_and_models_list_the_broken_folder(client: TestClient) -> None:
    assert client.get("/health/live").json() == {"status": "live"}
    ready = client.get("/health/ready")
    assert ready.status_code == 200
    assert "sha256" in ready.json()["failed"]["broken"]
    models = {m["name"]: m for m in client.get("/models").json()["models"]}
    assert models["broken"]["status"] == "failed" and "sha256" in models["broken"]["reason"]
    assert models["sentiment"]["status"] == "ready"
    assert models["sentiment"]["labels"] == ["negative", "positive"]
    assert models["sentiment"]["metrics"]["dev"]["accuracy"] > 0.9
    assert models["shakespeare"]["task"] == "generation" and models["shakespeare"]["parameters"] > 0
    assert models["sentiment"]["weights"] == models["shakespeare"]["weights"] == "float16"
    assert client.get("/models/sentiment").json()["sha256"] == models["sentiment"]["sha256"]
    r = client.get("/models/nope")
    assert r.status_code == 404
    assert r.json()["detail"] == "model 'nope' not found; available: broken, sentiment, shakespeare"


def test_weights_setting_chooses_how_the_models_are_held(models_dir: Path) -> None:
    text = "a great and moving film"
    art = load_artifact(models_dir / "sentiment")
    with torch.inference_mode():
        probs = torch.softmax(classify_logits(art.net, encode_batch(art.tokenizer, [text])), -1)[0]
    expected = dict(zip(art.labels, probs.tolist(), strict=True))
    for weights in ("float32", "float16"):
        with TestClient(create_app(Settings(models_dir=models_dir, weights=weights))) as c:
            assert c.get("/models/sentiment").json()["weights"] == weights
            assert c.get("/models/shakespeare").json()["weights"] == weights
            got = {x["label"]: x["score"] for x in c.post("/classify", json={"inputs": text}).json()[0]}
        for label, score in expected.items():
            assert got[label] == (score if weights == "float32" else pytest.approx(score, abs=1e-3))


def test_classify_answers_each_input_in_order_with_sorted_labels(client: TestClient) -> None:
    r = client.post("/classify", json={"inputs": ["a great and moving film", "dull , boring plot"]})
    assert r.status_code == 200
    assert r.headers["x-model"].startswith("sentiment@")
    first, second = r.json()
    assert first[0]["label"] == "positive" and second[0]["label"] == "negative"
    assert first[0]["score"] >= first[1]["score"]
    assert sum(x["score"] for x in first) == pytest.approx(1.0, abs=1e-5)
    one = client.post("/classify", json={"inputs": "a great film", "parameters": {"top_k": 1}})
    assert len(one.json()) == 1 and len(one.json()[0]) == 1


@pytest.mark.parametrize(("body", "status", "needle"), [
    ({"inputs": ["x"] * 9}, 422, "limit is 8 (RNN_MAX_INPUTS)"),
    ({"inputs": "x" * 201}, 422, "inputs has 201 characters; the limit is 200"),
    ({"inputs": ["ok", "x" * 201]}, 422, "inputs[1] has 201 characters"),
    ({"inputs": []}, 422, "at least one text"),
    ({"inputs": "x", "model": "nope"}, 404, "model 'nope' not found; available:"),
    ({"inputs": "x", "model": "shakespeare"}, 422, "needs a classification model"),
    ({"inputs": "x", "model": "broken"}, 503, "model 'broken' is failed"),
    ({"inputs": "x", "model": "../etc"}, 422, "model"),
    ({"inputs": "x", "parameters": {"top_k": 0}}, 422, "top_k"),
    ({"text": "x"}, 422, "inputs"),
])
def test_classify_refuses_bad_requests_by_name(client: TestClient, body: dict[str, object],
                                               status: int, needle: str) -> None:
    r = client.post("/classify", json=body)
    assert r.status_code == status, r.text
    assert needle in r.text


def test_generate_is_deterministic_for_a_seed(client: TestClient) -> None:
    body = {"inputs": "ROMEO:", "parameters": {"max_new_tokens": 40, "temperature": 0.9,
                                               "top_k": 20, "seed": 5, "details": True}}
    a, b = client.post("/generate", json=body).json(), client.post("/generate", json=body).json()
    assert a == b
    assert a["details"]["finish_reason"] == "length" and a["details"]["generated_tokens"] == 40
    assert a["details"]["seed"] == 5 and len(a["details"]["tokens"]) == 40
    assert "".join(t["text"] for t in a["details"]["tokens"]) == a["generated_text"]
    other = client.post("/generate", json=body | {"parameters": body["parameters"] | {"seed": 6}})  # type: ignore[operator]
    assert other.json()["generated_text"] != a["generated_text"]


def test_generate_without_seed_echoes_the_one_it_drew(client: TestClient) -> None:
    body = {"inputs": "JULIET:", "parameters": {"max_new_tokens": 20, "do_sample": True,
                                                "details": True}}
    first = client.post("/generate", json=body).json()
    seed = first["details"]["seed"]
    again = client.post("/generate", json=body | {"parameters": body["parameters"] | {"seed": seed}})  # type: ignore[operator]
    assert again.json()["generated_text"] == first["generated_text"]


def test_greedy_generation_ends_at_the_first_stop_sequence(client: TestClient) -> None:
    prompt = {"inputs": "ROMEO:\nBut soft, what light"}
    free = client.post("/generate", json=prompt | {"parameters": {"max_new_tokens": 30}}).json()
    text = free["generated_text"]
    assert len(text) == 30
    stop = text[10:13]
    r = client.post("/generate", json=prompt | {"parameters": {
        "max_new_tokens": 30, "stop": ["never-there", stop], "details": True}})
    out = r.json()
    assert out["generated_text"] == text[: text.index(stop) + len(stop)]
    assert out["details"]["finish_reason"] == "stop_sequence"
    assert out["details"]["generated_tokens"] == len(out["generated_text"])


@pytest.mark.parametrize(("parameters", "needle"), [
    ({"max_new_tokens": 301}, "limit is 300 (RNN_MAX_NEW_TOKENS)"),
    ({"max_new_tokens": 0}, "max_new_tokens"),
    ({"temperature": -1}, "temperature"),
    ({"top_p": 1.5}, "top_p"),
    ({"best_of": 9}, "best_of"),
    ({"best_of": "2"}, "best_of"),
    ({"typical_p": 0}, "typical_p"),
    ({"top_n_tokens": 6}, "top_n_tokens"),
    ({"truncate": 0}, "truncate"),
    ({"grammar": {"type": "json", "value": {}}}, "grammar is not supported"),
    ({"adapter_id": "x"}, "adapter_id is not supported"),
    ({"watermark": True}, "watermark is not supported"),
    ({"stop": [""]}, "stop sequence"),
    ({"unknown_thing": 1}, "unknown_thing"),
])
def test_generate_refuses_bad_parameters_by_name(client: TestClient, parameters: dict[str, object],
                                                 needle: str) -> None:
    r = client.post("/generate", json={"inputs": "ROMEO:", "parameters": parameters})
    assert r.status_code == 422 and needle in r.text


def test_tgi_neutral_values_are_accepted(client: TestClient) -> None:
    r = client.post("/generate", json={"inputs": "ROMEO:", "stream": False, "parameters": {
        "max_new_tokens": 3, "best_of": 1, "watermark": False, "decoder_input_details": False,
        "return_full_text": False, "top_n_tokens": None, "typical_p": None, "truncate": None}})
    assert r.status_code == 200 and len(r.json()["generated_text"]) == 3


def test_stream_sends_one_event_per_token_then_the_text(client: TestClient) -> None:
    body = {"inputs": "ROMEO:", "parameters": {"max_new_tokens": 12, "seed": 1, "temperature": 0.7}}
    with client.stream("POST", "/generate_stream", json=body) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        events = [json.loads(line[5:]) for line in r.iter_lines() if line.startswith("data:")]
    assert [e["index"] for e in events] == list(range(12))
    for event in events:  # the hand-built events keep the documented (TGI) shape
        assert StreamResponse.model_validate(event).model_dump(mode="json", exclude_unset=True) == event
    assert all(e["generated_text"] is None for e in events[:-1])
    whole = client.post("/generate", json=body).json()["generated_text"]
    assert events[-1]["generated_text"] == whole == "".join(e["token"]["text"] for e in events)
    assert events[-1]["details"]["finish_reason"] == "length"
    with client.stream("POST", "/generate", json=body | {"stream": True}) as r:
        again = [json.loads(line[5:]) for line in r.iter_lines() if line.startswith("data:")]
    assert again == events


def test_score_reports_log_probability_per_text(client: TestClient) -> None:
    r = client.post("/score", json={"inputs": ["ROMEO:\nBut soft", "zqxj vbkw", "R"]})
    good, noise, single = r.json()
    assert good["tokens"] == 14 and good["log_prob"] < 0
    assert good["bits_per_char"] < noise["bits_per_char"]
    assert good["perplexity"] == pytest.approx(2 ** good["bits_per_char"], rel=1e-4)
    assert single == {"tokens": 0, "log_prob": 0.0, "perplexity": None, "bits_per_char": None}
    assert client.post("/score", json={"inputs": "x", "model": "sentiment"}).status_code == 422


def test_the_classify_fast_path_answers_as_the_route_does(client: TestClient) -> None:
    # application/json takes the fast path; another JSON media type reaches the FastAPI route
    def both(body: dict[str, object]) -> tuple[httpx.Response, httpx.Response]:
        fast = client.post("/classify", json=body)
        route = client.post("/classify", content=json.dumps(body),
                            headers={"content-type": "application/x-test+json"})
        return fast, route

    bodies: list[dict[str, object]] = [
        {"inputs": "a great film"}, {"inputs": ["dull , boring plot", "", "  "]},
        {"inputs": ["fine", "bad"], "parameters": {"top_k": 1}},
        {"inputs": "x", "model": "sentiment"},
        {"inputs": "x", "model": "shakespeare"}, {"inputs": "x", "model": "nope"},
        {"inputs": ["x"] * 10_000}, {"inputs": 3}, {"inputs": "x", "extra": 1}]
    statuses = set()
    for body in bodies:
        fast, route = both(body)
        assert (fast.status_code, fast.content) == (route.status_code, route.content), body
        assert fast.headers.get("x-model") == route.headers.get("x-model")
        assert fast.headers["content-type"] == "application/json"
        statuses.add(fast.status_code)
    assert statuses == {200, 404, 422}
    metrics = client.get("/metrics").text
    assert 'rnn_requests_total{route="/classify",status="200"}' in metrics
    assert 'rnn_requests_total{route="/classify",status="422"}' in metrics


def _choices(max_new_tokens: int, members: int = 1) -> Choices:
    """A request's choices with nothing behind them (events are handed in by the test)."""
    specs = [GenerationSpec(i, (1,), Sampling(max_new_tokens), seed=7 + i) for i in range(members)]
    return Choices(specs, cancel=lambda _: None, timeout_s=60)


def test_hand_written_stream_events_are_the_json_encoders_bytes() -> None:
    async def run() -> None:
        frames = TgiFrames.of(_choices(5).members[0], "", [])
        text: list[str] = []
        for i, (piece, logprob) in enumerate([('"', -0.25), ("\\", -1e-7), ("\n", float("-inf")),
                                              ("é", -3.0), ("\u2028", float("nan"))]):
            text.append(piece)
            reason = "length" if i == 4 else None
            line = frames.event(TokenEvent(i, 40 + i, piece, logprob, reason))
            expected = {"index": i, "token": {"id": 40 + i, "text": piece, "logprob": logprob,
                                              "special": False},
                        "generated_text": None, "details": None}
            if reason:
                expected |= {"generated_text": "".join(text), "details": {
                    "finish_reason": reason, "generated_tokens": 5, "seed": 7, "input_length": 1}}
            assert line == f"data: {json.dumps(expected, separators=(',', ':'))}\n\n"

    asyncio.run(run())


async def _feed(choices: Choices, events: list[TokenEvent], gap_s: float) -> None:
    """Hand the request its events `gap_s` apart, as the generator does."""
    for event in events:
        await asyncio.sleep(gap_s)
        choices.members[0].put(event)


@pytest.mark.parametrize("flush_ms", [0, 40, 500])
def test_a_stream_writes_its_first_token_at_once_the_rest_per_flush_interval_and_its_end_at_once(
        flush_ms: int) -> None:
    """Tokens arrive every 2 ms; with a flush interval they go out together, each still its
    own event, in the same bytes as written one per token. The last one is not held back."""
    async def run() -> tuple[list[str], list[float]]:
        loop = asyncio.get_running_loop()
        choices = _choices(40)
        events = [TokenEvent(i, 40 + i % 5, "ab"[i % 2], -0.5, "length" if i == 39 else None)
                  for i in range(40)]
        choices.members[0].put(events[0])
        producer = asyncio.create_task(_feed(choices, events[1:], 0.002))
        start = loop.time()
        writes, times = [], []
        frames = TgiFrames.of(choices.members[0], "", [])
        async for chunk in sse_events(choices, flush_ms / 1000, frames, "hf"):
            writes.append(chunk)
            times.append(loop.time() - start)
        await producer
        return writes, times

    writes, times = asyncio.run(run())
    whole = "".join(writes)
    assert whole.count("data:") == 40
    assert [json.loads(line[5:])["index"] for line in whole.split("\n\n") if line] == list(range(40))
    assert writes[0].count("data:") == 1 and times[0] < 0.02  # the first token is not held back
    if flush_ms == 0:
        assert len(writes) >= 20  # written as they come (a late loop may merge a few)
    elif flush_ms == 40:
        assert len(writes) <= 5  # 40 tokens over about 80 ms, written every 40 ms at most
        assert all(later - earlier >= 0.039 for earlier, later in itertools.pairwise(times[:-1]))
    else:  # the whole stream fits in one pause, which its last token ends
        assert len(writes) == 2 and times[-1] < 0.4


def test_a_whole_answer_wakes_its_request_once_not_once_per_token() -> None:
    async def run() -> tuple[str, int]:
        choices = _choices(30)
        events = [TokenEvent(i, 40, "ab"[i % 2], -0.5, "length" if i == 29 else None)
                  for i in range(30)]
        waits = 0
        real_wait = choices._wait

        async def counting_wait(*args: Any) -> None:
            nonlocal waits
            waits += 1
            await real_wait(*args)
        choices._wait = counting_wait  # type: ignore[method-assign]

        choices.members[0].put(events[0])
        producer = asyncio.create_task(_feed(choices, events[1:], 0.001))
        [answer] = await choices.finished()
        await producer
        assert len(answer.events) == 30
        return answer.text, waits

    text, waits = asyncio.run(run())
    assert text == "ab" * 15 and waits == 1
