"""/docs and /redoc render in a real headless browser that cannot reach any outside host.

Uses Debian's chromium when it is installed (CI installs it); skipped otherwise.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.main import create_app
from app.settings import Settings
from tests.app.conftest import running_server

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed")


@pytest.fixture(scope="module")
def url(models_dir: Path) -> Iterator[str]:
    # With an admin key, so that the admin route is served and documented too.
    with running_server(create_app(Settings(models_dir=models_dir, admin_keys=["a"]))) as base:
        yield base


def _rendered_dom(page: str) -> str:
    assert CHROMIUM is not None
    with tempfile.TemporaryDirectory() as profile:
        result = subprocess.run(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
             "--no-first-run", "--disable-background-networking", "--disable-component-update",
             "--disable-sync", f"--user-data-dir={profile}",
             # Every host but the test server resolves to nothing: a CDN asset could not load.
             "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
             "--virtual-time-budget=15000", "--dump-dom", page],
            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def test_swagger_ui_renders_every_endpoint_offline(url: str) -> None:
    dom = _rendered_dom(f"{url}/docs")
    assert "swagger-ui" in dom
    for path in ("/classify", "/generate", "/generate_stream", "/score", "/models/{name}",
                 "/health/ready", "/admin/reload"):
        assert f'data-path="{path}"' in dom, path


def test_redoc_renders_offline(url: str) -> None:
    dom = _rendered_dom(f"{url}/redoc")
    assert "Classify" in dom and "Generate Stream" in dom
    assert "redoc-wrap" in dom or "api-content" in dom
