"""The playground at GET /, used in a real headless browser against a real server.

Uses Debian's chromium when it is installed (CI installs it); skipped otherwise.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from app.main import create_app
from app.settings import Settings
from tests.app.browser import CHROMIUM, Browser
from tests.app.conftest import running_server, slowed_steps

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed")

KEY = "playground-test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture(scope="module")
def served(models_dir: Path) -> Iterator[tuple[str, FastAPI]]:
    app = create_app(Settings(models_dir=models_dir, api_keys=[KEY], max_new_tokens=500))
    with running_server(app) as base:
        yield base, app


@pytest.fixture(scope="module")
def page(served: tuple[str, FastAPI]) -> Iterator[Browser]:
    """The page, loaded without a key, then given the key as a user would type it."""
    url, _ = served
    with Browser() as browser:
        browser.open(f"{url}/")
        # Without a key the model list is refused, and the page says why.
        message = browser.wait_for("(e => !e.hidden && e.textContent)"
                                   "(document.querySelector('#models-error'))")
        assert "API key" in message and "401" in message
        browser.fill("#key", KEY)
        browser.click("h1")  # leaving the field commits it
        browser.wait_for("document.querySelector('#generate-model').options.length > 0")
        assert browser.evaluate("document.querySelector('#models-error').hidden")
        yield browser


def test_the_page_loads_with_no_outside_request(served: tuple[str, FastAPI],
                                                page: Browser) -> None:
    url, _ = served
    assert f"{url}/playground/app.js" in page.requests
    assert f"{url}/playground/style.css" in page.requests
    assert f"{url}/models" in page.requests
    outside = [u for u in page.requests if not (u.startswith(f"{url}/") or u.startswith("data:"))]
    assert outside == []
    assert page.console == [], page.console
    options = page.evaluate("[...document.querySelectorAll('#classify-model option')]"
                            ".map(o => o.value)")
    assert options == ["sentiment"]
    assert page.evaluate("document.querySelector('#generate-model').value") == "shakespeare"


def test_a_classification_shows_one_bar_per_label(served: tuple[str, FastAPI],
                                                  page: Browser) -> None:
    url, _ = served
    text = "a gripping , beautiful film"
    page.click("#tab-classify")
    page.fill("#classify-text", text)
    page.click("#classify-form button[type=submit]")
    bars = page.wait_for("""(() => { const rows = [...document.querySelectorAll('.bar')];
        return rows.length && rows.map(r => ({
          label: r.querySelector('.label').textContent,
          score: Number(r.querySelector('.fill').dataset.score),
          shown: r.querySelector('.value').textContent,
          ratio: r.querySelector('.fill').getBoundingClientRect().width
                 / r.querySelector('.track').getBoundingClientRect().width})); })()""")
    expected = httpx.post(f"{url}/classify", json={"inputs": text}, headers=AUTH).json()[0]
    assert [(b["label"], b["score"]) for b in bars] == [(e["label"], e["score"]) for e in expected]
    for b in bars:
        assert b["ratio"] == pytest.approx(b["score"], abs=0.005)  # the bar is as long as the score
        assert b["shown"] == f"{b['score'] * 100:.1f}%"


def test_a_streamed_generation_appends_tokens_as_they_come(served: tuple[str, FastAPI],
                                                           page: Browser) -> None:
    url, app = served
    page.click("#tab-generate")
    page.fill("#generate-prompt", "ROMEO:")
    page.fill("#max-tokens", "40")
    page.fill("#seed", "7")
    # Record the generated text's length at every change of the output.
    page.evaluate("""window.lengths = []; new MutationObserver(() => {
        const g = document.querySelector('#generate-output .generated');
        if (g) window.lengths.push(g.textContent.length);
      }).observe(document.querySelector('#generate-output'),
                 {childList: true, subtree: true, characterData: true}); true""")
    generator = app.state.registry.entries["shakespeare"].generator
    with slowed_steps(generator, 0.03):  # 40 steps over more than a second: several writes
        page.click("#generate-form button[type=submit]")
        info = page.wait_for("document.querySelector('#generate-info').textContent")
    assert "40 tokens" in info and "seed 7" in info and "finish: length" in info
    lengths = page.evaluate("window.lengths")
    steps = sorted(set(lengths))
    assert steps[-1] == 40 and len(steps) >= 3, lengths  # appended in several steps
    shown = page.evaluate("document.querySelector('#generate-output .generated').textContent")
    parameters = {"max_new_tokens": 40, "temperature": 0.8, "top_k": 40, "top_p": 0.95, "seed": 7}
    answer = httpx.post(f"{url}/generate", headers=AUTH, timeout=60,
                        json={"inputs": "ROMEO:", "parameters": parameters}).json()
    assert shown == answer["generated_text"]  # the controls reached the server as set
    assert page.evaluate("document.querySelector('#generate-output .prompt').textContent") == "ROMEO:"


def test_the_surprisal_view_colours_every_character(served: tuple[str, FastAPI],
                                                    page: Browser) -> None:
    url, _ = served
    text = "ROMEO:\nBut soft qzx"
    page.click("#tab-surprisal")
    page.fill("#surprisal-text", text)
    page.click("#surprisal-form button[type=submit]")
    spans = page.wait_for("""(() => { const s = [...document.querySelectorAll(
          '#surprisal-output span')];
        return s.length && s.map(e => ({cls: e.className, bits: e.dataset.bits ?? null,
          background: getComputedStyle(e).backgroundColor, title: e.title})); })()""")
    tokens = httpx.post(f"{url}/score", headers=AUTH, json={
        "inputs": text, "parameters": {"details": True}}).json()[0]["details"]["tokens"]
    assert len(spans) == len(tokens) == len(text)
    assert spans[0]["cls"] == "first" and spans[0]["bits"] is None
    bounds = [1, 2, 4, 8, math.inf]
    for span, token in zip(spans[1:], tokens[1:], strict=True):
        bits = -token["logprob"] / math.log(2)
        assert float(span["bits"]) == pytest.approx(bits, abs=0.006)
        assert span["cls"] == f"s{next(i for i, b in enumerate(bounds) if bits < b)}"
        assert json.dumps(token["text"]) in span["title"]
    colours = {s["cls"]: s["background"] for s in spans[1:]}
    assert len(set(colours.values())) == len(colours) >= 2  # each bin its own colour
    assert page.evaluate("document.querySelectorAll('#surprisal-legend li').length") == 5
    info = page.evaluate("document.querySelector('#surprisal-info').textContent")
    assert "bits per character" in info and "Most surprising" in info


def test_an_api_error_is_shown_with_its_message(page: Browser) -> None:
    page.click("#tab-generate")
    page.fill("#max-tokens", "100000")
    page.click("#generate-form button[type=submit]")
    message = page.wait_for("(e => !e.hidden && e.textContent)"
                            "(document.querySelector('#generate .error'))")
    assert "max_new_tokens" in message and "500" in message and "422" in message
    page.fill("#max-tokens", "5")
    page.click("#generate-form button[type=submit]")
    page.wait_for("document.querySelector('#generate .error').hidden")


def test_stop_ends_the_stream_and_the_server_drops_the_generation(served: tuple[str, FastAPI],
                                                                   page: Browser) -> None:
    _, app = served
    generator = app.state.registry.entries["shakespeare"].generator
    page.click("#tab-generate")
    page.fill("#max-tokens", "300")
    with slowed_steps(generator, 0.05):  # 300 steps: 15 s unless stopped
        page.click("#generate-form button[type=submit]")
        page.wait_for("document.querySelector('#generate-output .generated').textContent.length >= 3")
        page.click("#generate-stop")
        info = page.wait_for("document.querySelector('#generate-info').textContent")
        assert info.startswith("stopped after")
        assert int(info.split()[2]) < 300
        assert page.evaluate("document.querySelector('#generate .error').hidden")
        deadline = time.monotonic() + 10
        while generator.active + generator.waiting > 0:
            assert time.monotonic() < deadline, "the server kept generating"
            time.sleep(0.05)
