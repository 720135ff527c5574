"""Screenshots of the playground's Memory tab and word contributions on the shipped models.

    .venv/bin/python -m scripts.inside_screenshots [--out docs/images]

Saves playground-memory.png (the speaker names of a Tempest passage marked, the units found
for them, the best unit colouring the text and the heat map) and playground-why.png (a review
classified, each word coloured by its contribution).
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from app.main import create_app
from app.settings import Settings
from tests.app.browser import Browser
from tests.app.conftest import ROOT, running_server

WIDTH, HEIGHT = 960, 720
REVIEW = "The plot is predictable, but the acting is superb and the ending is not bad."


def _shoot(browser: Browser, path: Path) -> None:
    """The whole page, at its full height."""
    height = browser.evaluate("Math.ceil(document.body.getBoundingClientRect().bottom)")
    browser.resize(WIDTH, max(int(height), 200))
    browser.screenshot(path)
    browser.resize(WIDTH, HEIGHT)


def main() -> None:
    """Take the screenshots."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "images")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    app = create_app(Settings(models_dir=ROOT / "models", generation_worker="thread"))
    with running_server(app) as url, Browser(WIDTH, HEIGHT) as browser:
        browser.resize(WIDTH, HEIGHT)
        browser.open(f"{url}/#memory")
        browser.wait_for("document.querySelector('#memory-model').options.length > 0")
        text = browser.evaluate("document.querySelector('#memory-text').value")
        for m in re.finditer(r"(?:^|\n\n)([^\n]+:)\n", text):
            browser.evaluate(f"document.querySelector('#memory-text')"
                             f".setSelectionRange({m.start(1)}, {m.end(1)}); true")
            browser.click("#memory-mark")
        browser.click("#memory-find")
        browser.wait_for("document.querySelector('#memory-output').dataset.unit")
        browser.evaluate("document.querySelector('#memory-text').scrollTop = 0")
        _shoot(browser, args.out / "playground-memory.png")

        browser.click("#tab-classify")
        browser.fill("#classify-text", REVIEW)
        browser.click("#classify-form button[type=submit]")
        browser.wait_for("!document.querySelector('#classify-why').hidden")
        _shoot(browser, args.out / "playground-why.png")
        print(json.dumps(browser.evaluate(
            "[...document.querySelectorAll('#memory-units tbody tr')].map(r => r.textContent)")))
    for name in ("playground-memory.png", "playground-why.png"):
        print(args.out / name)


if __name__ == "__main__":
    main()
