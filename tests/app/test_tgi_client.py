"""TGI's own Python client (`text_generation`), unchanged, against a real server; and the
TGI routes' shapes it relies on."""

from __future__ import annotations

import asyncio
import math
from typing import Any

import httpx
import pytest
from text_generation import AsyncClient, Client
from text_generation.errors import ValidationError

# The client (0.7) calls pydantic's deprecated `.dict()`: its warning, not ours.
pytestmark = pytest.mark.filterwarnings("ignore:The `dict` method is deprecated")


def test_generate_with_the_clients_defaults(clients_url: str) -> None:
    client = Client(clients_url)
    out = client.generate("ROMEO:", max_new_tokens=12)
    assert len(out.generated_text) == 12
    # The client sends do_sample false and no warper: greedy, so the same text again.
    assert client.generate("ROMEO:", max_new_tokens=12).generated_text == out.generated_text
    assert out.details.finish_reason == "length" and out.details.generated_tokens == 12
    assert out.details.prefill == [] and len(out.details.tokens) == 12


def test_temperature_and_seed_are_honoured_although_do_sample_is_false(clients_url: str) -> None:
    client = Client(clients_url)
    greedy = client.generate("ROMEO:", max_new_tokens=40).generated_text
    texts = {client.generate("ROMEO:", max_new_tokens=40, temperature=1.5, seed=s).generated_text
             for s in range(4)}
    assert len(texts) > 1 and greedy not in texts  # sampled, not greedy
    again = client.generate("ROMEO:", max_new_tokens=40, temperature=1.5, seed=2).generated_text
    assert again in texts


def test_stream_stop_and_seed(clients_url: str) -> None:
    client = Client(clients_url)
    whole = client.generate("JULIET:", max_new_tokens=20, seed=5, top_k=10).generated_text
    events = list(client.generate_stream("JULIET:", max_new_tokens=20, seed=5, top_k=10))
    assert "".join(e.token.text for e in events) == whole
    assert events[-1].generated_text == whole and events[-1].details is not None
    stop = whole[6:8]
    cut = client.generate("JULIET:", max_new_tokens=20, seed=5, top_k=10, stop_sequences=[stop])
    assert cut.generated_text == whole[: whole.index(stop) + len(stop)]
    assert cut.details.finish_reason == "stop_sequence"


def test_prefill_top_tokens_and_full_text(clients_url: str) -> None:
    client = Client(clients_url)
    out = client.generate("ROMEO:", max_new_tokens=5, decoder_input_details=True, top_n_tokens=3,
                          return_full_text=True, seed=1, do_sample=True)
    assert out.generated_text.startswith("ROMEO:") and len(out.generated_text) == 11
    prefill = out.details.prefill
    assert [t.text for t in prefill] == list("ROMEO:")
    assert prefill[0].logprob is None and all(t.logprob is not None and t.logprob < 0
                                              for t in prefill[1:])
    scored = httpx.post(f"{clients_url}/score", json={"inputs": "ROMEO:"}).json()[0]
    assert math.isclose(sum(t.logprob or 0.0 for t in prefill), scored["log_prob"], rel_tol=1e-4)
    assert out.details.top_tokens is not None and len(out.details.top_tokens) == 5
    for token, top in zip(out.details.tokens, out.details.top_tokens, strict=True):
        assert len(top) == 3 and top[0].logprob >= top[1].logprob >= top[2].logprob
        assert token.logprob <= top[0].logprob + 1e-6


def test_best_of_answers_the_likeliest_candidate(clients_url: str) -> None:
    client = Client(clients_url)
    out = client.generate("ROMEO:", max_new_tokens=15, best_of=3, do_sample=True)
    others = out.details.best_of_sequences
    assert others is not None and len(others) == 2
    best = sum(t.logprob or 0.0 for t in out.details.tokens)
    for seq in others:
        assert sum(t.logprob or 0.0 for t in seq.tokens) <= best + 1e-6


def test_a_refused_parameter_raises_the_clients_validation_error(clients_url: str) -> None:
    client = Client(clients_url)
    with pytest.raises(ValidationError, match="watermark"):
        client.generate("ROMEO:", max_new_tokens=3, watermark=True)
    with pytest.raises(ValidationError, match="max_new_tokens"):
        client.generate("ROMEO:", max_new_tokens=100_000)


def test_async_client_generates_and_streams(clients_url: str) -> None:
    async def run() -> tuple[str, str]:
        client = AsyncClient(clients_url)
        out = await client.generate("ROMEO:", max_new_tokens=10, seed=3, temperature=0.8)
        streamed = [e.token.text async for e in client.generate_stream(
            "ROMEO:", max_new_tokens=10, seed=3, temperature=0.8)]
        return out.generated_text, "".join(streamed)
    whole, streamed = asyncio.run(run())
    assert len(whole) == 10 and streamed == whole


def test_root_answers_a_list_and_generate_an_object(clients_url: str) -> None:
    body = {"inputs": "ROMEO:", "parameters": {"max_new_tokens": 4, "seed": 1}}
    root = httpx.post(clients_url, json=body).json()
    plain = httpx.post(f"{clients_url}/generate", json=body).json()
    assert isinstance(root, list) and root == [plain]


def test_info_tokenize_and_health(clients_url: str) -> None:
    info = httpx.get(f"{clients_url}/info").json()
    assert info["model_id"] == "shakespeare" and info["max_total_tokens"] > info["max_input_tokens"]
    tokens = httpx.post(f"{clients_url}/tokenize", json={"inputs": "AB"}).json()
    assert [(t["text"], t["start"], t["stop"]) for t in tokens] == [("A", 0, 1), ("B", 1, 2)]
    assert httpx.get(f"{clients_url}/health").status_code == 200


def test_error_bodies_carry_detail_error_and_error_type(clients_url: str) -> None:
    r = httpx.post(f"{clients_url}/generate", json={"inputs": "x", "model": "nope"})
    body = r.json()
    assert r.status_code == 404 and body["error"] == body["detail"] and body["error_type"] == "not_found"
    r = httpx.post(f"{clients_url}/generate", json={"inputs": "x", "parameters": {"top_k": -1}})
    body = r.json()
    assert r.status_code == 422 and body["error_type"] == "validation" and "top_k" in body["error"]
    assert isinstance(body["detail"], list)


def test_truncate_keeps_the_last_prompt_tokens(clients_url: str) -> None:
    def run(inputs: str, **extra: object) -> dict[str, object]:
        return httpx.post(f"{clients_url}/generate", json={"inputs": inputs, "parameters": {
            "max_new_tokens": 12, "seed": 8, "temperature": 0.8, "details": True} | extra}).json()
    cut = run("First Citizen:\nROMEO:", truncate=6)
    assert cut["generated_text"] == run("ROMEO:")["generated_text"]
    assert cut["details"]["input_length"] == 6  # type: ignore[index]


NEW_PARAMETERS: list[dict[str, object]] = [
    {"typical_p": 0.7, "seed": 1}, {"frequency_penalty": 1.5, "temperature": 0.9, "seed": 2},
    {"top_n_tokens": 3, "top_k": 8, "seed": 3, "details": True},
    {"best_of": 3, "do_sample": True, "seed": 4, "details": True},
    {"truncate": 3, "return_full_text": True, "top_p": 0.8, "seed": 5},
    {"decoder_input_details": True, "details": True, "temperature": 1.3, "seed": 6},
]


def test_each_new_parameter_gives_the_same_answer_alone_or_batched(clients_url: str) -> None:
    def body(extra: dict[str, object]) -> dict[str, object]:
        return {"inputs": "ROMEO:", "parameters": {"max_new_tokens": 24} | extra}

    alone = [httpx.post(f"{clients_url}/generate", json=body(p)).json() for p in NEW_PARAMETERS]

    async def together() -> list[dict[str, Any]]:
        async with httpx.AsyncClient(base_url=clients_url) as client:
            answers = await asyncio.gather(*(client.post("/generate", json=body(p))
                                             for p in NEW_PARAMETERS * 2))
        return [a.json() for a in answers]
    batched = asyncio.run(together())

    # The same text and tokens; logprobs may differ in the last bits, since a batch's matrix
    # products round differently from one row's.
    def chosen(answer: dict[str, Any]) -> object:
        details = answer.get("details") or {}
        return (answer["generated_text"], [t["id"] for t in details.get("tokens", [])],
                [[t["id"] for t in top] for top in details.get("top_tokens") or []],
                [t["id"] for t in details.get("prefill", [])],
                [s["generated_text"] for s in details.get("best_of_sequences") or []])
    assert [chosen(b) for b in batched] == [chosen(a) for a in alone] * 2
