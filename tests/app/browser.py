"""Headless chromium driven over the DevTools protocol: load pages, type, click, read the DOM,
record every network request and take screenshots. Used by the browser tests and by
scripts/playground_screenshots.py."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import tempfile
import time
import urllib.request
from contextlib import ExitStack
from pathlib import Path
from types import TracebackType
from typing import Any

from websockets.sync.client import ClientConnection, connect

__all__ = ["CHROMIUM", "Browser", "BrowserError"]

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--hide-scrollbars", "--remote-debugging-port=0",
         # Every host but the loopback one resolves to nothing: a CDN asset could not load.
         "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1"]


class BrowserError(RuntimeError):
    """A DevTools command failed, or a page's script threw."""


class Browser:
    """One chromium process with one page, as a context manager."""

    def __init__(self, width: int = 1000, height: int = 800) -> None:
        if CHROMIUM is None:
            raise BrowserError("chromium is not installed")
        # Chromium's helper processes may still be writing to the profile as it is removed.
        self._profile = tempfile.TemporaryDirectory(ignore_cleanup_errors=True)
        self._proc = subprocess.Popen([CHROMIUM, *FLAGS, f"--user-data-dir={self._profile.name}",
                                       f"--window-size={width},{height}", "about:blank"],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self._next_id = 0
        self.requests: list[str] = []  # the URL of every request the page made
        self.console: list[str] = []  # console errors and uncaught exceptions
        self._stack = ExitStack()
        try:
            self._ws = self._stack.enter_context(
                self._connect(Path(self._profile.name) / "DevToolsActivePort"))
            for domain in ("Page", "Network", "Runtime"):
                self.call(f"{domain}.enable")
        except BaseException:
            self.close()
            raise

    def _connect(self, port_file: Path) -> ClientConnection:
        deadline = time.monotonic() + 60
        while not port_file.exists() or not port_file.read_text().strip():
            if time.monotonic() > deadline or self._proc.poll() is not None:
                raise BrowserError("chromium did not start its DevTools server")
            time.sleep(0.05)
        port = port_file.read_text().split()[0]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as r:
            targets = json.load(r)
        page = next(t for t in targets if t["type"] == "page")
        return connect(page["webSocketDebuggerUrl"], max_size=None, open_timeout=10)

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        """End chromium and remove its profile."""
        self._stack.close()
        self._proc.terminate()
        try:
            self._proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        self._profile.cleanup()

    def call(self, method: str, timeout: float = 60, **params: Any) -> dict[str, Any]:
        """Send one DevTools command and return its result; events seen meanwhile are kept."""
        self._next_id += 1
        ident = self._next_id
        self._ws.send(json.dumps({"id": ident, "method": method, "params": params}))
        deadline = time.monotonic() + timeout
        while True:
            message = json.loads(self._ws.recv(timeout=max(0.01, deadline - time.monotonic())))
            if message.get("id") == ident:
                if "error" in message:
                    raise BrowserError(f"{method}: {message['error']}")
                result: dict[str, Any] = message["result"]
                return result
            self._on_event(message)

    def _on_event(self, message: dict[str, Any]) -> None:
        method, params = message.get("method"), message.get("params", {})
        if method == "Network.requestWillBeSent":
            self.requests.append(params["request"]["url"])
        elif method == "Runtime.exceptionThrown":
            self.console.append(params["exceptionDetails"].get("text", "exception"))
        elif method == "Runtime.consoleAPICalled" and params.get("type") == "error":
            self.console.append(" ".join(str(a.get("value", "")) for a in params["args"]))

    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (promises awaited)."""
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True,
                           awaitPromise=True)
        if "exceptionDetails" in result:
            raise BrowserError(f"{expression!r} threw: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 30) -> Any:
        """Poll `expression` until it is truthy; return its value."""
        deadline = time.monotonic() + timeout
        while True:
            value = self.evaluate(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                raise BrowserError(f"timed out waiting for {expression!r}")
            time.sleep(0.05)

    def open(self, url: str) -> None:
        """Load `url` and wait until the page and its scripts have run."""
        self.call("Page.navigate", url=url)
        self.wait_for("document.readyState === 'complete'")

    def resize(self, width: int, height: int, scale: float = 1, mobile: bool = False) -> None:
        """Emulate a screen of this size (CSS pixels)."""
        self.call("Emulation.setDeviceMetricsOverride", width=width, height=height,
                  deviceScaleFactor=scale, mobile=mobile)

    def click(self, selector: str) -> None:
        """Click the middle of the element, as a mouse would, once it is visible."""
        box = self.wait_for(f"""(() => {{ const e = document.querySelector({json.dumps(selector)});
            if (!e) return null; e.scrollIntoView({{block: "center"}});
            const r = e.getBoundingClientRect();  // hidden: wait until it shows
            return r.width && r.height ? [r.x + r.width / 2, r.y + r.height / 2] : null;
            }})()""")
        for kind in ("mousePressed", "mouseReleased"):
            self.call("Input.dispatchMouseEvent", type=kind, x=box[0], y=box[1], button="left",
                      clickCount=1)

    def fill(self, selector: str, text: str) -> None:
        """Replace the field's content by typing `text` into it."""
        self.evaluate(f"(e => {{ e.focus(); e.select(); }})"
                      f"(document.querySelector({json.dumps(selector)}))")
        self.call("Input.dispatchKeyEvent", type="keyDown", key="Delete", code="Delete",
                  windowsVirtualKeyCode=46)
        self.call("Input.dispatchKeyEvent", type="keyUp", key="Delete", code="Delete",
                  windowsVirtualKeyCode=46)
        self.call("Input.insertText", text=text)

    def screenshot(self, path: Path) -> None:
        """Save the whole page as a PNG."""
        data = self.call("Page.captureScreenshot", format="png", captureBeyondViewport=True)
        path.write_bytes(base64.b64decode(data["data"]))
