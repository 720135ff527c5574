"""The playground's Memory tab and the Classify tab's word contributions, in headless chromium
against a real server on the tiny models (skipped without chromium)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.main import create_app
from app.settings import Settings
from tests.app.browser import CHROMIUM, Browser
from tests.app.conftest import running_server

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed")

KEY = "inside-browser-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
TEXT = "ROMEO:\nBut soft, what light.\n\nJULIET:\nO Romeo, Romeo.\n"


def diverging(value: float, scale: float) -> tuple[int, int, int]:
    """The page's colour scale, as app.js computes it."""
    t = max(-1.0, min(1.0, value / scale))
    ends = (178, 24, 43) if t >= 0 else (33, 102, 172)
    r, g, b = (round(255 + (c - 255) * abs(t)) for c in ends)
    return r, g, b


@pytest.fixture(scope="module")
def url(models_dir: Path) -> Iterator[str]:
    app = create_app(Settings(models_dir=models_dir, api_keys=[KEY], generation_worker="thread"))
    with running_server(app) as base:
        yield base


@pytest.fixture(scope="module")
def page(url: str) -> Iterator[Browser]:
    with Browser() as browser:
        browser.open(f"{url}/#memory")
        browser.fill("#key", KEY)
        browser.click("h1")
        browser.wait_for("document.querySelector('#memory-model').options.length > 0")
        yield browser


def _spans(page: Browser, selector: str) -> list[dict[str, Any]]:
    spans: list[dict[str, Any]] = page.wait_for(f"""(() => {{
        const s = [...document.querySelectorAll({json.dumps(selector)})];
        return s.length && s.map(e => ({{text: e.textContent, value: Number(e.dataset.value),
          background: getComputedStyle(e).backgroundColor}})); }})()""")
    return spans


def test_the_memory_model_list_holds_both_tasks(page: Browser) -> None:
    options = page.evaluate("[...document.querySelectorAll('#memory-model option')].map(o => o.value)")
    assert sorted(options) == ["sentiment", "shakespeare"]
    assert page.evaluate("document.querySelector('#memory-model').value") == "shakespeare"
    assert page.console == [], page.console


def test_a_unit_colours_every_character_by_its_activation(url: str, page: Browser) -> None:
    page.click("#tab-memory")
    page.fill("#memory-text", TEXT)
    page.fill("#memory-unit", "3")
    page.click("#memory-form button[type=submit]")
    page.wait_for("document.querySelector('#memory-output').dataset.unit === '3'")
    spans = _spans(page, "#memory-output .step")
    memory = httpx.post(f"{url}/inside/memory", headers=AUTH,
                        json={"inputs": TEXT, "units": [3]}).json()
    values = [row[0] for row in memory["series"]["hidden"]]
    assert len(spans) == len(TEXT) == len(values)
    for span, value, ch in zip(spans, values, TEXT, strict=True):
        assert span["value"] == pytest.approx(value)
        assert span["text"] == ("↵\n" if ch == "\n" else ch)
        assert span["background"] == "rgb({}, {}, {})".format(*diverging(value, 1))
    assert "Unit 3 of layer 0" in page.evaluate("document.querySelector('#memory-info').textContent")


def test_marked_spans_find_units_and_draw_their_heat_map(url: str, page: Browser) -> None:
    page.click("#tab-memory")
    page.fill("#memory-text", TEXT)
    page.evaluate("document.querySelector('#memory-find').click(); true")  # nothing marked yet
    message = page.wait_for("(e => !e.hidden && e.textContent)(document.querySelector('#memory .error'))")
    assert "Mark part of the text" in message
    julie = TEXT.index("JULIET:")
    for start, end in ((0, 6), (julie, julie + 7)):
        page.evaluate(f"document.querySelector('#memory-text').setSelectionRange({start}, {end}); true")
        page.click("#memory-mark")
    marks = page.evaluate("[...document.querySelectorAll('#memory-marks li')].map(e => e.textContent)")
    assert marks == ['"ROMEO:" (0–6)', f'"JULIET:" ({julie}–{julie + 7})']
    page.click("#memory-find")
    rows = page.wait_for("""(() => { const r = [...document.querySelectorAll('#memory-units tbody tr')];
        return r.length && r.map(e => [...e.children].map(c => c.textContent)); })()""")
    found = httpx.post(f"{url}/inside/units", headers=AUTH, json={
        "inputs": TEXT, "spans": [{"start": 0, "end": 6}, {"start": julie, "end": julie + 7}],
        "top_k": 10}).json()
    assert [int(r[0]) for r in rows] == [u["unit"] for u in found["units"]]
    assert [r[1] for r in rows] == [f"{u['auc']:.3f}" for u in found["units"]]
    best = str(found["units"][0]["unit"])
    page.wait_for(f"document.querySelector('#memory-output').dataset.unit === '{best}'")
    # The heat map: one column per step, one row per unit, each cell the unit's value there.
    shape = page.evaluate("""(c => ({w: c.width, h: c.height, cell: +c.dataset.cell,
        row: +c.dataset.row, strip: +c.dataset.strip, units: c.dataset.units}))
        (document.querySelector('#memory-heatmap'))""")
    assert shape["w"] == len(TEXT) * shape["cell"] and shape["h"] == shape["strip"] + 10 * shape["row"]
    assert shape["units"] == ",".join(str(u["unit"]) for u in found["units"])
    for t, k in ((0, 0), (10, 3), (len(TEXT) - 1, 9)):
        x, y = t * shape["cell"], shape["strip"] + k * shape["row"] + 1
        pixel = page.evaluate(f"[...document.querySelector('#memory-heatmap').getContext('2d')"
                              f".getImageData({x}, {y}, 1, 1).data].slice(0, 3)")
        assert tuple(pixel) == diverging(found["values"][t][k], 1)
    marked = page.evaluate(f"[...document.querySelector('#memory-heatmap').getContext('2d')"
                           f".getImageData(0, 0, {shape['w']}, 1).data].filter((v, i) => i % 4 === 0)")
    dark = [i // shape["cell"] for i, v in enumerate(marked) if v < 100]
    assert sorted(set(dark)) == [*range(0, 6), *range(julie, julie + 7)]  # the strip marks the marked steps
    # A click on another unit colours the text by it.
    other = str(found["units"][1]["unit"])
    page.click("#memory-units tbody tr:nth-child(2) button")
    page.wait_for(f"document.querySelector('#memory-output').dataset.unit === '{other}'")
    assert page.evaluate("document.querySelector('#memory-unit').value") == other


def test_a_classification_shows_each_words_contribution(url: str, page: Browser) -> None:
    text = "the acting was superb , the plot dull"
    page.click("#tab-classify")
    page.fill("#classify-text", text)
    page.click("#classify-form button[type=submit]")
    spans = _spans(page, "#classify-words .step")
    why = httpx.post(f"{url}/explain", headers=AUTH, json={"inputs": text}).json()
    assert [s["text"] for s in spans] == text.split()
    scale = max(abs(w["contribution"]) for w in why["words"])
    for span, word in zip(spans, why["words"], strict=True):
        assert span["value"] == pytest.approx(word["contribution"])
        assert span["background"] == "rgb({}, {}, {})".format(*diverging(word["contribution"], scale))
    info = page.evaluate("document.querySelector('#classify-why-info').textContent")
    assert f'Why "{why["label"]}"' in info and "add up to" in info
    assert page.evaluate("document.querySelectorAll('#classify-result .bar').length") == 2
