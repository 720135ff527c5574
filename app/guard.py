"""What a hostile or broken client could do to a request, checked before the routes see it.

- A body that is not declared JSON gets 415 naming the header (never a bytes repr in a 422).
- A body not received in full within `RNN_BODY_TIMEOUT_S` of the request's start gets 408, and
  the connection is closed: a client sending one byte a second holds nothing for long.
- An exception that no handler maps is logged with its traceback, under the request's id, and
  answered as a plain 500 that carries `X-Request-Id` (Starlette's own last-resort handler runs
  outside every middleware, so its answer and its log line have no id).

It sits inside `ServiceMiddleware`, so its answers carry the request id and are counted.
"""

from __future__ import annotations

import asyncio
import logging

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.errors import ServiceError, StalledClient, send_error

__all__ = ["BodyTimeout", "RequestGuard", "UnsupportedMediaType", "is_json"]

log = logging.getLogger(__name__)
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


class BodyTimeout(ServiceError):
    """The request body did not arrive in time."""

    status_code = 408


class UnsupportedMediaType(ServiceError):
    """A body was sent without `Content-Type: application/json`."""

    status_code = 415


def is_json(content_type: bytes) -> bool:
    """Whether a Content-Type header declares JSON (`application/json`, `application/*+json`)."""
    media = content_type.split(b";", 1)[0].strip().lower()
    return media == b"application/json" or (media.startswith(b"application/")
                                            and media.endswith(b"+json"))


def _body_declared(scope: Scope) -> tuple[bool, bytes | None]:
    """(whether the request has a body, its Content-Type header or None)."""
    content_type = None
    has_body = False
    for name, value in scope["headers"]:
        if name == b"content-type":
            content_type = value
        elif name == b"content-length":
            has_body = value.strip() not in (b"0", b"")
        elif name == b"transfer-encoding":
            has_body = True
    return has_body, content_type


class RequestGuard:
    """415 for a body that is not JSON, 408 for a body too slow, 500 with the id for a bug."""

    def __init__(self, app: ASGIApp, body_timeout_s: float) -> None:
        self.app = app
        self.body_timeout_s = body_timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        has_body, content_type = _body_declared(scope)
        if has_body and scope["method"] in _BODY_METHODS and not is_json(content_type or b""):
            shown = "none" if content_type is None else repr(content_type.decode("latin-1")[:80])
            await send_error(send, UnsupportedMediaType(
                f"the request body must be JSON, sent with the header 'Content-Type: "
                f"application/json' (Content-Type was {shown})"), scope["path"])
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.body_timeout_s
        body_done = not has_body
        started = answered = False

        async def receive_in_time() -> Message:
            nonlocal body_done, answered
            if answered:
                return {"type": "http.disconnect"}
            if body_done:  # afterwards the app waits for the disconnect, as long as it likes
                return await receive()
            try:
                async with asyncio.timeout_at(deadline):
                    message = await receive()
            except TimeoutError:
                # Answer now and close; the app sees a client that went away and stops reading.
                answered = True
                if not started:
                    await send_error(send, BodyTimeout(
                        f"the request body was not received within {self.body_timeout_s:g} s "
                        "(RNN_BODY_TIMEOUT_S)"), scope["path"], {"Connection": "close"})
                return {"type": "http.disconnect"}
            if message["type"] != "http.request" or not message.get("more_body", False):
                body_done = True
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if answered:
                return  # the app's own answer after the 408 went out
            started = True
            await send(message)

        try:
            await self.app(scope, receive_in_time, guarded_send)
        except StalledClient:
            raise  # the service middleware ends the answer
        except Exception:
            log.exception("unhandled error on %s %s", scope["method"], scope["path"])
            if not started and not answered:
                await send_error(send, RuntimeError(), scope["path"])
