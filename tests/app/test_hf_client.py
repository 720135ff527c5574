"""Existing clients work unchanged: huggingface_hub's InferenceClient against a real server."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from huggingface_hub import InferenceClient

from app.main import create_app
from app.settings import Settings
from tests.app.conftest import running_server


@pytest.fixture(scope="module")
def url(models_dir: Path) -> Iterator[str]:
    with running_server(create_app(Settings(models_dir=models_dir))) as base:
        yield base


def test_text_classification(url: str) -> None:
    client = InferenceClient(model=f"{url}/classify")
    out = client.text_classification("a great and moving film")
    assert [o.label for o in out] == ["positive", "negative"]
    assert out[0].score > 0.5
    assert len(client.text_classification("dull , boring plot", top_k=1)) == 1


@pytest.mark.parametrize("path", ["", "/generate"])
def test_text_generation_plain_and_with_details(url: str, path: str) -> None:
    client = InferenceClient(model=url + path)
    text = client.text_generation("ROMEO:", max_new_tokens=12, seed=3, temperature=0.8)
    assert isinstance(text, str) and len(text) == 12
    out = client.text_generation("ROMEO:", max_new_tokens=12, seed=3, temperature=0.8,
                                 details=True)
    assert out.generated_text == text
    assert out.details is not None and out.details.finish_reason == "length"
    assert out.details.generated_tokens == 12 and out.details.seed == 3


def test_text_generation_streaming(url: str) -> None:
    client = InferenceClient(model=url)
    tokens = list(client.text_generation("JULIET:", max_new_tokens=10, seed=4, temperature=0.9,
                                         stream=True))
    whole = client.text_generation("JULIET:", max_new_tokens=10, seed=4, temperature=0.9)
    assert "".join(tokens) == whole
    events = list(client.text_generation("JULIET:", max_new_tokens=10, seed=4, temperature=0.9,
                                         stream=True, details=True))
    assert events[-1].generated_text == whole
    assert events[-1].details is not None and events[-1].details.finish_reason == "length"


def test_stop_sequences_through_the_client(url: str) -> None:
    client = InferenceClient(model=url)
    free = client.text_generation("ROMEO:", max_new_tokens=30)
    stop = free[8:10]
    cut = client.text_generation("ROMEO:", max_new_tokens=30, stop=[stop])
    assert cut == free[: free.index(stop) + len(stop)]
