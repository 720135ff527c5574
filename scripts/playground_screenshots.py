"""Screenshots of the playground on the shipped models, for the docs.

    .venv/bin/python -m scripts.playground_screenshots [--out docs/images]

Serves models/ (sentiment, shakespeare) on a loopback port, drives Debian's chromium over the
DevTools protocol and saves playground-classify.png, playground-generate.png,
playground-surprisal.png and playground-narrow.png (a phone-sized screen).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from app.main import create_app
from app.settings import Settings
from tests.app.browser import Browser
from tests.app.conftest import ROOT, running_server

WIDTH, HEIGHT = 960, 720
SURPRISAL_TEXT = ("ROMEO:\nBut soft, what light through yonder window breaks?\n"
                  "It is the east, and Juliet is the sun.\nJULIET:\nAy me! Sned the mesage by emial.")


def _shoot(browser: Browser, path: Path, width: int, mobile: bool = False) -> None:
    """The whole page, at its full height."""
    height = browser.evaluate("Math.ceil(document.body.getBoundingClientRect().bottom)")
    browser.resize(width, max(int(height), 200), mobile=mobile)
    browser.screenshot(path)
    browser.resize(width, HEIGHT, mobile=mobile)


def _surprisal(browser: Browser) -> None:
    browser.click("#tab-surprisal")
    browser.fill("#surprisal-text", SURPRISAL_TEXT)
    browser.evaluate("document.querySelector('#surprisal-text').scrollTop = 0")
    browser.click("#surprisal-form button[type=submit]")
    browser.wait_for("document.querySelector('#surprisal-info').textContent")


def main() -> None:
    """Take the screenshots."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "images")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    app = create_app(Settings(models_dir=ROOT / "models"))
    with running_server(app) as url, Browser(WIDTH, HEIGHT) as browser:
        browser.resize(WIDTH, HEIGHT)
        browser.open(f"{url}/#classify")
        browser.wait_for("document.querySelector('#classify-model').options.length > 0")
        browser.fill("#classify-text", "Not the masterpiece it wants to be, but funny and warm.")
        browser.click("#classify-form button[type=submit]")
        browser.wait_for("document.querySelectorAll('.bar').length")
        _shoot(browser, args.out / "playground-classify.png", WIDTH)

        browser.click("#tab-generate")
        browser.fill("#generate-prompt", "ROMEO:\n")
        browser.fill("#seed", "7")
        browser.fill("#max-tokens", "300")
        browser.click("#generate-form button[type=submit]")
        browser.wait_for("document.querySelector('#generate-info').textContent", timeout=120)
        _shoot(browser, args.out / "playground-generate.png", WIDTH)

        _surprisal(browser)
        _shoot(browser, args.out / "playground-surprisal.png", WIDTH)

        browser.resize(390, 844, mobile=True)
        _shoot(browser, args.out / "playground-narrow.png", 390, mobile=True)
    for name in sorted(args.out.glob("playground-*.png")):
        print(name)


if __name__ == "__main__":
    main()
