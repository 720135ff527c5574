"""GET / (the playground) and its assets, and the per-token details of /score that it draws."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from app.settings import Settings

KEY = "k-playground"


@pytest.fixture(scope="module")
def guarded(models_dir: Path) -> Iterator[TestClient]:
    """A service that wants an API key."""
    with TestClient(create_app(Settings(models_dir=models_dir, api_keys=[KEY]))) as c:
        yield c


def test_the_page_and_its_assets_are_public_but_post_root_is_not(guarded: TestClient) -> None:
    page = guarded.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert '<script src="/playground/app.js"' in page.text
    assert "//" not in page.text.replace("http://www.w3.org", "")  # no outside URL
    script = guarded.get("/playground/app.js")
    assert script.status_code == 200 and "javascript" in script.headers["content-type"]
    assert "generate_stream" in script.text
    assert guarded.get("/playground/style.css").headers["content-type"].startswith("text/css")
    assert guarded.get("/playground/nothing.js").status_code == 404
    # POST / is TGI's generate: still behind the key.
    assert guarded.post("/", json={"inputs": "RO"}).status_code == 401
    assert guarded.post("/", json={"inputs": "RO", "parameters": {"max_new_tokens": 2}},
                        headers={"Authorization": f"Bearer {KEY}"}).status_code == 200
    assert guarded.get("/models").status_code == 401


def test_the_page_is_left_out_of_the_schema(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    assert set(spec["paths"]["/"]) == {"post"}
    assert not any(p.startswith("/playground") for p in spec["paths"])
    details = spec["components"]["schemas"]["ScoreParameters"]["properties"]["details"]
    assert details["type"] == "boolean" and details["default"] is False


def test_score_details_give_every_character_its_log_probability(client: TestClient) -> None:
    texts = ["ROMEO:\nBut soft", "zq☃x", "R", ""]
    r = client.post("/score", json={"inputs": texts, "parameters": {"details": True}})
    assert r.status_code == 200, r.text
    results = r.json()
    plain = client.post("/score", json={"inputs": texts}).json()
    for text, result, totals in zip(texts, results, plain, strict=True):
        assert {k: v for k, v in result.items() if k != "details"} == totals  # totals unchanged
        assert "details" not in totals
        tokens = result["details"]["tokens"]
        assert "".join(t["text"] for t in tokens) == text  # one token per character, in order
        if not text:
            assert tokens == []
            continue
        assert tokens[0]["logprob"] is None  # nothing to predict the first character from
        logprobs = [t["logprob"] for t in tokens[1:]]
        assert len(logprobs) == result["tokens"]
        assert all(lp <= 0 for lp in logprobs)
        assert math.fsum(logprobs) == pytest.approx(result["log_prob"], rel=1e-5, abs=1e-5)
    snowman = results[1]["details"]["tokens"][2]
    assert snowman["text"] == "☃" and snowman["id"] == 0  # outside the alphabet: unknown
    # A text's details do not depend on the batch it was scored in (up to float rounding).
    alone = client.post("/score", json={"inputs": texts[0], "parameters": {"details": True}})
    batched = results[0]["details"]["tokens"]
    single = alone.json()[0]["details"]["tokens"]
    assert [t["text"] for t in single] == [t["text"] for t in batched]
    assert [t["logprob"] for t in single[1:]] == pytest.approx([t["logprob"] for t in batched[1:]],
                                                               abs=1e-5)


def test_score_parameters_are_checked(client: TestClient) -> None:
    r = client.post("/score", json={"inputs": "RO", "parameters": {"detials": True}})
    assert r.status_code == 422 and "detials" in r.text
