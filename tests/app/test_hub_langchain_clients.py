"""huggingface_hub's async client and LangChain's HuggingFaceEndpoint, unchanged and with their
defaults, against a real server; and one seeded request through every client."""

from __future__ import annotations

import asyncio
import math

import httpx
import pytest
from huggingface_hub import AsyncInferenceClient, InferenceClient
from langchain_huggingface import HuggingFaceEndpoint
from openai import OpenAI
from text_generation import Client

# text_generation (0.7) calls pydantic's deprecated `.dict()`: its warning, not ours.
pytestmark = pytest.mark.filterwarnings("ignore:The `dict` method is deprecated")


def test_async_inference_client_generates_streams_and_gives_details(clients_url: str) -> None:
    async def run() -> tuple[str, str, object]:
        async with AsyncInferenceClient(model=clients_url) as client:
            text = await client.text_generation("ROMEO:", max_new_tokens=10, seed=2,
                                                temperature=0.7)
            stream = await client.text_generation("ROMEO:", max_new_tokens=10, seed=2,
                                                  temperature=0.7, stream=True)
            streamed = "".join([token async for token in stream])
            details = await client.text_generation("ROMEO:", max_new_tokens=10, seed=2,
                                                   temperature=0.7, details=True,
                                                   decoder_input_details=True, top_n_tokens=2)
        return text, streamed, details
    text, streamed, details = asyncio.run(run())
    assert len(text) == 10 and streamed == text
    assert details.generated_text == text  # type: ignore[attr-defined]
    info = details.details  # type: ignore[attr-defined]
    assert [t.text for t in info.prefill] == list("ROMEO:") and info.prefill[0].logprob is None
    assert len(info.top_tokens) == 10 and all(len(top) == 2 for top in info.top_tokens)


@pytest.mark.parametrize("function", ["softmax", "sigmoid", "none"])
def test_text_classification_function_to_apply(clients_url: str, function: str) -> None:
    client = InferenceClient(model=f"{clients_url}/classify")
    out = client.text_classification("a great and moving film",
                                      function_to_apply=function)  # type: ignore[arg-type]
    scores = {o.label: o.score for o in out}
    logits = {o.label: o.score for o in client.text_classification(
        "a great and moving film", function_to_apply="none")}
    assert out[0].label == "positive"
    if function == "softmax":
        assert sum(scores.values()) == pytest.approx(1.0, abs=1e-5)
    elif function == "sigmoid":
        assert all(scores[k] == pytest.approx(1 / (1 + math.exp(-v)), abs=1e-5)
                   for k, v in logits.items())
    else:
        assert any(v < 0 or v > 1 for v in scores.values())  # raw logits


def test_langchain_huggingface_endpoint_with_its_defaults(clients_url: str) -> None:
    # Its defaults: top_p and typical_p 0.95, temperature 0.8, do_sample false, watermark
    # false, max_new_tokens 512.
    llm = HuggingFaceEndpoint(endpoint_url=clients_url, max_new_tokens=20, seed=4)  # type: ignore[call-arg]
    text = llm.invoke("ROMEO:")
    assert len(text) == 20
    assert "".join(llm.stream("ROMEO:")) == text
    assert asyncio.run(llm.ainvoke("ROMEO:")) == text
    # Sampled (typical_p and temperature are honoured), not greedy.
    greedy = httpx.post(f"{clients_url}/generate", json={"inputs": "ROMEO:", "parameters": {
        "max_new_tokens": 20}}).json()["generated_text"]
    same = httpx.post(f"{clients_url}/generate", json={"inputs": "ROMEO:", "parameters": {
        "max_new_tokens": 20, "seed": 4, "temperature": 0.8, "top_p": 0.95,
        "typical_p": 0.95}}).json()
    assert same["generated_text"] == text != greedy


def test_a_seeded_request_gives_the_same_text_through_every_client(clients_url: str) -> None:
    prompt, seed, temperature, n = "JULIET:", 21, 0.9, 24
    texts = {
        "tgi": Client(clients_url).generate(prompt, max_new_tokens=n, seed=seed,
                                            temperature=temperature).generated_text,
        "hub": InferenceClient(model=clients_url).text_generation(
            prompt, max_new_tokens=n, seed=seed, temperature=temperature),
        "openai": OpenAI(base_url=f"{clients_url}/v1", api_key="unused", max_retries=0)
        .completions.create(model="shakespeare", prompt=prompt, max_tokens=n, seed=seed,
                            temperature=temperature).choices[0].text,
        "http": httpx.post(clients_url, json={"inputs": prompt, "parameters": {
            "max_new_tokens": n, "seed": seed, "temperature": temperature}}).json()[0][
            "generated_text"],
    }
    assert len(set(texts.values())) == 1, texts


def test_hub_chat_completion_without_a_model_is_answered_by_the_default_generator(
        clients_url: str) -> None:
    """InferenceClient(base_url=...).chat_completion sends "model": "dummy" (or "tgi"): the
    default generation model answers, as TGI does, streamed or whole."""
    client = InferenceClient(base_url=clients_url)
    messages = [{"role": "user", "content": "Speak, and say where thou art."}]
    whole = client.chat_completion(messages, max_tokens=12, seed=3, temperature=0.7)
    assert whole.model == "shakespeare" and whole.created > 0
    text = whole.choices[0].message.content
    assert text and whole.usage.completion_tokens <= 12
    streamed = "".join(chunk.choices[0].delta.content or "" for chunk in client.chat_completion(
        messages, max_tokens=12, seed=3, temperature=0.7, stream=True) if chunk.choices)
    assert streamed == text


def test_langchain_chat_hugging_face_with_its_defaults(clients_url: str) -> None:
    """LangChain's ChatHuggingFace over a HuggingFaceEndpoint: it sends "model": "dummy" and
    its own defaults; it gets the default generation model's answer."""
    from langchain_core.messages import HumanMessage
    from langchain_huggingface import ChatHuggingFace

    llm = HuggingFaceEndpoint(endpoint_url=clients_url, max_new_tokens=12, seed=5)  # type: ignore[call-arg]
    chat = ChatHuggingFace(llm=llm)
    # ChatHuggingFace sends no seed (its parameters leave the endpoint's out): the text is
    # sampled afresh each time, and the tiny test model may end it at once. So the answers
    # are checked for their shape and ending, not for holding text.
    answer = chat.invoke([HumanMessage(content="Speak, and say where thou art.")])
    assert isinstance(answer.content, str)
    assert answer.response_metadata["system_fingerprint"].startswith("shakespeare@")
    assert answer.response_metadata["finish_reason"] in ("stop", "length")
    chunks = list(chat.stream([HumanMessage(content="Speak, and say where thou art.")]))
    assert chunks and all(isinstance(c.content, str) for c in chunks)
    assert any(c.response_metadata.get("finish_reason") in ("stop", "length") for c in chunks)
