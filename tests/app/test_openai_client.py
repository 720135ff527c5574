"""The OpenAI SDK and LangChain's OpenAI classes, unchanged, against the /v1 routes of a real
server."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest
from langchain_openai import ChatOpenAI, OpenAI
from openai import AsyncOpenAI, AuthenticationError, BadRequestError, NotFoundError
from openai import OpenAI as OpenAIClient

from app.main import create_app
from app.settings import Settings
from tests.app.conftest import running_server


def _client(url: str) -> OpenAIClient:
    return OpenAIClient(base_url=f"{url}/v1", api_key="unused", max_retries=0)


def test_models_lists_the_generation_models(clients_url: str) -> None:
    assert [m.id for m in _client(clients_url).models.list()] == ["shakespeare"]


def test_completions_match_tgi_for_the_same_seed(clients_url: str) -> None:
    client = _client(clients_url)
    out = client.completions.create(model="shakespeare", prompt="ROMEO:", max_tokens=20,
                                    temperature=0.8, seed=11)
    tgi = httpx.post(f"{clients_url}/generate", json={"inputs": "ROMEO:", "parameters": {
        "max_new_tokens": 20, "temperature": 0.8, "seed": 11}}).json()
    assert out.choices[0].text == tgi["generated_text"]
    assert out.choices[0].finish_reason == "length"
    assert out.usage is not None and out.usage.prompt_tokens == 6
    assert out.usage.completion_tokens == 20 and out.usage.total_tokens == 26


def test_completions_n_echo_logprobs_and_a_list_of_prompts(clients_url: str) -> None:
    client = _client(clients_url)
    out = client.completions.create(model="shakespeare", prompt=["ROMEO:", "JULIET:"],
                                    max_tokens=8, n=2, seed=3, echo=True, logprobs=2)
    assert [c.index for c in out.choices] == [0, 1, 2, 3]
    assert all(c.text.startswith("ROMEO:") for c in out.choices[:2])
    assert out.choices[1].text != out.choices[0].text  # seeds 3 and 4
    logprobs = out.choices[2].logprobs
    assert logprobs is not None and logprobs.tokens is not None
    assert "".join(logprobs.tokens) == out.choices[2].text
    assert logprobs.token_logprobs is not None and logprobs.token_logprobs[0] is None
    assert logprobs.top_logprobs is not None and len(logprobs.top_logprobs[-1] or {}) == 2


def test_completions_stop_before_the_stop_sequence_streamed_or_not(clients_url: str) -> None:
    client = _client(clients_url)
    free = client.completions.create(model="shakespeare", prompt="ROMEO:", max_tokens=30,
                                     temperature=0).choices[0].text
    stop = free[10:12]
    cut = client.completions.create(model="shakespeare", prompt="ROMEO:", max_tokens=30,
                                    temperature=0, stop=[stop])
    assert cut.choices[0].text == free[: free.index(stop)]
    assert cut.choices[0].finish_reason == "stop"
    chunks = list(client.completions.create(model="shakespeare", prompt="ROMEO:", max_tokens=30,
                                            temperature=0, stop=stop, stream=True))
    assert "".join(c.choices[0].text for c in chunks) == cut.choices[0].text
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_chat_completions_follow_the_template_and_stop_at_the_turn(clients_url: str) -> None:
    client = _client(clients_url)
    messages = [{"role": "user", "content": "Good morrow."}]
    out = client.chat.completions.create(model="shakespeare", messages=messages,  # type: ignore[arg-type]
                                         max_tokens=60, seed=2, temperature=0.9)
    text = out.choices[0].message.content or ""
    assert out.choices[0].message.role == "assistant" and "\n\n" not in text
    # The same text is TGI's continuation of the rendered prompt, up to the turn's end.
    prompt = "ROMEO:\nGood morrow.\n\nJULIET:\n"
    tgi = httpx.post(f"{clients_url}/generate", json={"inputs": prompt, "parameters": {
        "max_new_tokens": 60, "temperature": 0.9, "seed": 2, "stop": ["\n\n"]}}).json()
    assert tgi["generated_text"].removesuffix("\n\n") == text
    streamed = client.chat.completions.create(model="shakespeare", messages=messages,  # type: ignore[arg-type]
                                              max_tokens=60, seed=2, temperature=0.9,
                                              stream=True, stream_options={"include_usage": True})
    chunks = list(streamed)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == text
    assert chunks[-1].usage is not None and chunks[-1].usage.prompt_tokens == len(prompt)


def test_chat_n_and_logprobs(clients_url: str) -> None:
    out = _client(clients_url).chat.completions.create(
        model="shakespeare", messages=[{"role": "user", "content": "Speak."}], n=3, seed=5,
        max_tokens=10, logprobs=True, top_logprobs=2)
    assert len(out.choices) == 3 and len({c.message.content for c in out.choices}) > 1
    content = out.choices[0].logprobs.content if out.choices[0].logprobs else None
    assert content is not None and all(len(t.top_logprobs) == 2 for t in content)


def test_errors_are_openai_shaped_and_raise_the_sdks_types(clients_url: str) -> None:
    client = _client(clients_url)
    # A name that is not served is answered by the default generation model, as TGI does.
    assert client.completions.create(model="nope", prompt="x", max_tokens=2).model == "shakespeare"
    with pytest.raises(BadRequestError) as classifier:
        client.completions.create(model="sentiment", prompt="x", max_tokens=2)
    assert classifier.value.param == "model" and "shakespeare" in classifier.value.message
    with pytest.raises(NotFoundError) as missing:
        client.models.retrieve("nope")
    assert missing.value.code == "model_not_found"
    with pytest.raises(BadRequestError) as bad:
        client.completions.create(model="shakespeare", prompt="x", max_tokens=2,
                                  logit_bias={"1": 5})
    assert bad.value.param == "logit_bias"
    with pytest.raises(BadRequestError, match="max_tokens"):
        client.chat.completions.create(model="shakespeare", max_tokens=100_000,
                                       messages=[{"role": "user", "content": "x"}])


def test_async_sdk_streams(clients_url: str) -> None:
    async def run() -> str:
        # Closed before the loop ends: its pooled connection would be left to the collector.
        async with AsyncOpenAI(base_url=f"{clients_url}/v1", api_key="unused",
                               max_retries=0) as client:
            stream = await client.completions.create(model="shakespeare", prompt="ROMEO:",
                                                     max_tokens=12, seed=4, stream=True)
            return "".join([c.choices[0].text async for c in stream])
    text = asyncio.run(run())
    whole = _client(clients_url).completions.create(model="shakespeare", prompt="ROMEO:",
                                                    max_tokens=12, seed=4).choices[0].text
    assert text == whole and len(whole) == 12


def test_langchain_openai_with_its_defaults(clients_url: str) -> None:
    llm = OpenAI(base_url=f"{clients_url}/v1", api_key="unused", model="shakespeare",  # type: ignore[call-arg]
                 max_retries=0, max_tokens=20, seed=9)
    text = llm.invoke("ROMEO:")
    assert len(text) == 20 and "".join(llm.stream("ROMEO:")) == text
    chat = ChatOpenAI(base_url=f"{clients_url}/v1", api_key="unused", model="shakespeare",  # type: ignore[call-arg]
                      max_retries=0, max_tokens=40, seed=9)
    answer = chat.invoke("Good morrow.").content
    assert isinstance(answer, str) and "\n\n" not in answer
    assert "".join(str(c.content) for c in chat.stream("Good morrow.")) == answer


def test_a_wrong_key_raises_the_sdks_authentication_error(chat_models: Path) -> None:
    app = create_app(Settings(models_dir=chat_models, api_keys=["right-key"]))
    with running_server(app) as url:
        wrong = OpenAIClient(base_url=f"{url}/v1", api_key="wrong-key", max_retries=0)
        with pytest.raises(AuthenticationError) as caught:
            wrong.models.list()
        assert caught.value.status_code == 401
        assert "API key" in caught.value.message and "right-key" not in caught.value.message
        right = OpenAIClient(base_url=f"{url}/v1", api_key="right-key", max_retries=0)
        assert [m.id for m in right.models.list()] == ["shakespeare"]
