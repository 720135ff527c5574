"""/docs and /redoc render in a real headless browser whose only way out is a proxy that
answers nothing and records every request: a page that loaded anything from outside fails.

Uses Debian's chromium when it is installed (CI installs it); skipped otherwise.
"""

from __future__ import annotations

import shutil
import socketserver
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from app.main import create_app
from app.settings import Settings
from tests.app.conftest import running_server

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed")


class _Recorder(socketserver.StreamRequestHandler):
    """Records the request line (`CONNECT cdn.example:443 ...`) and answers 502."""

    def handle(self) -> None:
        line = self.rfile.readline(4096).decode("latin-1").strip()
        host = urlsplit("//" + line.split(" ")[1].split("://")[-1]).hostname or ""
        # The browser's own services (clock, accounts, updates) are not the page's requests.
        if not host.endswith((".google.com", ".googleapis.com")):
            self.server.seen.append(line)  # type: ignore[attr-defined]
        self.wfile.write(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")


@pytest.fixture(scope="module")
def outside() -> Iterator[list[str]]:
    """The requests the browser tried to send anywhere but the test server."""
    with socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Recorder) as proxy:
        proxy.seen = []  # type: ignore[attr-defined]
        threading.Thread(target=proxy.serve_forever, daemon=True).start()
        proxy.port = proxy.server_address[1]  # type: ignore[attr-defined]
        yield proxy  # type: ignore[misc]
        proxy.shutdown()


@pytest.fixture(scope="module")
def url(models_dir: Path) -> Iterator[str]:
    # With an admin key, so that the admin route is served and documented too.
    with running_server(create_app(Settings(models_dir=models_dir, admin_keys=["a"]))) as base:
        yield base


def _rendered_dom(page: str, proxy: Any) -> str:
    assert CHROMIUM is not None
    with tempfile.TemporaryDirectory() as profile:
        result = subprocess.run(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
             "--no-first-run", "--disable-background-networking", "--disable-component-update",
             "--disable-sync", f"--user-data-dir={profile}",
             # Loopback (the test server) is reached directly; every other host only through
             # the recording proxy, which serves nothing.
             f"--proxy-server=http://127.0.0.1:{proxy.port}",
             "--virtual-time-budget=15000", "--dump-dom", page],
            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def test_swagger_ui_renders_every_endpoint_offline(url: str, outside: Any) -> None:
    dom = _rendered_dom(f"{url}/docs", outside)
    assert "swagger-ui" in dom
    for path in ("/classify", "/generate", "/generate_stream", "/score", "/models/{name}",
                 "/health/ready", "/admin/reload"):
        assert f'data-path="{path}"' in dom, path
    assert outside.seen == [], "\n".join(outside.seen)


def test_redoc_renders_offline(url: str, outside: Any) -> None:
    dom = _rendered_dom(f"{url}/redoc", outside)
    assert "Classify" in dom and "Generate Stream" in dom
    assert "redoc-wrap" in dom or "api-content" in dom
    assert outside.seen == [], "\n".join(outside.seen)
