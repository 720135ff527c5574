"""/docs (Swagger UI) and /redoc, with their JS and CSS served by the app itself.

The assets come from the `fastapi-offline` package, so the pages work with no network. Two
things in them would still reach out: ReDoc draws its maker's logo from a CDN (served here
with that image inlined instead), and Swagger UI sends the schema's address to an online
validator (turned off).
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse, Response
from fastapi.staticfiles import StaticFiles

__all__ = ["ASSETS_PATH", "install_docs"]

ASSETS_PATH = "/docs-assets"
ASSETS_DIR = Path(str(files("fastapi_offline") / "static"))
REDOC_JS = "redoc.offline.js"
_REDOC_LOGO = b"https://cdn.redoc.ly/redoc/logo-mini.svg"
# A blank image of the logo's size: the page draws the same, and asks nobody for it.
_BLANK_SVG = (b"data:image/svg+xml,%3Csvg xmlns='http://www.w3.org/2000/svg' width='1' "
              b"height='1'/%3E")


def _redoc_offline() -> bytes:
    """ReDoc's bundle with its one outside address (the logo) replaced by an inline image."""
    return (ASSETS_DIR / "redoc.standalone.js").read_bytes().replace(_REDOC_LOGO, _BLANK_SVG)


def install_docs(app: FastAPI) -> None:
    """Serve the assets and the two documentation pages."""
    router = APIRouter(include_in_schema=False)
    redoc_js = _redoc_offline()

    @router.get(f"{ASSETS_PATH}/{REDOC_JS}")  # before the mount, which would shadow it
    async def redoc_bundle() -> Response:
        return Response(redoc_js, media_type="text/javascript",
                        headers={"Cache-Control": "public, max-age=86400"})

    @router.get("/docs")
    async def swagger() -> HTMLResponse:
        return get_swagger_ui_html(openapi_url=app.openapi_url or "/openapi.json",
                                   title=f"{app.title} — Swagger UI",
                                   swagger_js_url=f"{ASSETS_PATH}/swagger-ui-bundle.js",
                                   swagger_css_url=f"{ASSETS_PATH}/swagger-ui.css",
                                   swagger_favicon_url=f"{ASSETS_PATH}/favicon.png",
                                   swagger_ui_parameters={"validatorUrl": None})

    @router.get("/redoc")
    async def redoc() -> HTMLResponse:
        return get_redoc_html(openapi_url=app.openapi_url or "/openapi.json",
                              title=f"{app.title} — ReDoc",
                              redoc_js_url=f"{ASSETS_PATH}/{REDOC_JS}",
                              redoc_favicon_url=f"{ASSETS_PATH}/favicon.png",
                              with_google_fonts=False)

    app.include_router(router)
    app.mount(ASSETS_PATH, StaticFiles(directory=ASSETS_DIR), name="docs-assets")
