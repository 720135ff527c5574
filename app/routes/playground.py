"""GET /: the playground page, and its script and style under /playground/.

Plain files from the package folder `app/static/`: no CDN, no build step, works offline. The
page and its assets are public (see `app.middleware.is_public`); the page sends the key the
user types with each API call.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

__all__ = ["ASSETS_PATH", "install_playground"]

ASSETS_PATH = "/playground"
STATIC_DIR = Path(str(files("app") / "static"))
# Only this origin's own files and API: a page that could fetch elsewhere could leak the key.
_CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")


def install_playground(app: FastAPI) -> None:
    """Serve the page at GET / (POST / stays TGI's generate) and its assets."""
    app.mount(ASSETS_PATH, StaticFiles(directory=STATIC_DIR), name="playground")
    router = APIRouter(include_in_schema=False)
    page = (STATIC_DIR / "index.html").read_text(encoding="utf-8")

    @router.get("/")
    async def playground() -> HTMLResponse:
        return HTMLResponse(page, headers={"Content-Security-Policy": _CSP,
                                           "Cache-Control": "no-cache"})

    app.include_router(router)
