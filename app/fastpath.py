"""POST /classify without FastAPI's routing, dependency solving and response layers.

Classification requests are many and small, and each one's framework work runs on the event
loop that every other request needs too (about half of the in-process cost of a request,
measured by `bench/asgi.py`). A request whose body is valid JSON for `ClassifyRequest` is
answered here by the same `answer` function the FastAPI route uses; anything else (another
route, another content type, a body that fails validation) goes on to FastAPI unchanged, so
errors keep one format and the OpenAPI document stays the route's.
"""

from __future__ import annotations

import logging
from typing import Any

from pydantic import ValidationError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.errors import INTERNAL_ERROR, ServiceError, send_error, send_json
from app.routes.classify import answer
from app.schemas import ClassifyRequest

__all__ = ["ClassifyFastPath"]

log = logging.getLogger(__name__)


class _Route:
    path = "/classify"  # the metrics label the FastAPI route would give


class ClassifyFastPath:
    """Answer well-formed POST /classify requests directly; pass everything else on."""

    def __init__(self, app: ASGIApp, state: Any) -> None:
        self.app = app
        self.state = state
        self.route = _Route()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (scope["type"] != "http" or scope["path"] != "/classify" or scope["method"] != "POST"
                or not _json_body(scope)):
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        while True:
            message = await receive()
            if message["type"] != "http.request":  # gone before the body was read
                await self.app(scope, _replay(chunks, message, receive), send)
                return
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        try:
            request = ClassifyRequest.model_validate_json(body)
        except ValidationError:  # FastAPI answers it, in its own 422 format
            await self.app(scope, _replay([body], None, receive), send)
            return
        scope["route"] = self.route
        try:
            payload, version = await answer(self.state, request, receive)
        except ServiceError as exc:
            await send_error(send, exc)
        except Exception:
            log.exception("unhandled error on POST /classify")
            await send_json(send, 500, INTERNAL_ERROR)
        else:
            await send_json(send, 200, payload, {"X-Model": version})


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
