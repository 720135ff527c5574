"""POST /classify as a raw route: no dependency solving, no response model, no Request.

Classification requests are many and small, and each one's framework work runs on the event
loop that every other request needs too (about half of the in-process cost of a request,
measured by `bench/asgi.py`). This route is registered in the app's router ahead of the
FastAPI route for the same path, so routing, the route's metrics label and the error handlers
stay the framework's: an error it raises is answered by the app's handlers. A well-formed body
is answered by the same `answer` function the FastAPI route uses; anything else (another
content type, a body that fails validation) is handed to the FastAPI route, so errors keep one
format and the OpenAPI document stays the route's.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.routing import APIRoute
from pydantic import ValidationError
from starlette.routing import Route
from starlette.types import Message, Receive, Scope, Send

from app.errors import send_json
from app.keys import TENANT_SCOPE_KEY
from app.routes import classify
from app.routes.classify import answer
from app.schemas import ClassifyRequest

__all__ = ["install_classify_fast_path"]


class _ClassifyEndpoint:
    """The raw route's ASGI app; `fallback` is the FastAPI route for the same path."""

    def __init__(self, fallback: APIRoute, state: Any) -> None:
        self.fallback, self.state = fallback, state
        self.path = fallback.path  # the metrics label (scope["route"].path)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope["route"] = self
        if not _json_body(scope):
            await self.fallback.handle(scope, receive, send)
            return
        chunks: list[bytes] = []
        while True:
            message = await receive()
            if message["type"] != "http.request":  # gone before the body was read
                await self.fallback.handle(scope, _replay(chunks, message, receive), send)
                return
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        try:
            request = ClassifyRequest.model_validate_json(body)
        except ValidationError:  # the FastAPI route answers it, in its own 422 format
            await self.fallback.handle(scope, _replay([body], None, receive), send)
            return
        payload, version = await answer(self.state, request, receive,
                                        str(scope.get(TENANT_SCOPE_KEY, "")))
        await send_json(send, 200, payload, {"X-Model": version})


def install_classify_fast_path(app: FastAPI) -> None:
    """Register the raw POST /classify route ahead of the FastAPI route it stands in for."""
    fallback = next(r for r in classify.router.routes if isinstance(r, APIRoute)
                    and r.path == "/classify" and "POST" in (r.methods or ()))
    raw = Route("/classify", _ClassifyEndpoint(fallback, app.state), methods=["POST"],
                include_in_schema=False)
    app.router.routes.insert(0, raw)


def _json_body(scope: Scope) -> bool:
    for name, value in scope["headers"]:
        if name == b"content-type":
            return bool(value.split(b";", 1)[0].strip().lower() == b"application/json")
    return False


def _replay(chunks: list[bytes], last: Message | None, receive: Receive) -> Receive:
    """A receive that gives the messages already read again, then the real ones."""
    pending: list[Message] = [{"type": "http.request", "body": b"".join(chunks),
                               "more_body": last is not None}]
    if last is not None:  # the disconnect that came before the end of the body
        pending.append(last)

    async def replayed() -> Message:
        if pending:
            return pending.pop(0)
        return await receive()

    return replayed
