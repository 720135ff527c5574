"""The service's one ASGI middleware: request id, body limit, draining, API keys, metrics.

One layer instead of five: every request passes through here, and each nested middleware or
FastAPI dependency cost tens of microseconds per request on the event loop that also parses
and answers every other request (measured by `bench/asgi.py`).
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid
from typing import Any

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.errors import (
    BodyTooLarge,
    Forbidden,
    ModelNotReady,
    ServiceError,
    StalledClient,
    Unauthorized,
    send_error,
)
from app.keys import (
    ADMIN_SCOPE_KEY,
    TENANT_SCOPE_KEY,
    bearer_token,
    is_admin_path,
    matches_any,
    tenant_digest,
)
from app.logs import ANSWER_ABANDONED, REQUEST_ID
from app.metrics import REQUEST_DURATION, REQUESTS
from app.settings import Settings

__all__ = ["ServiceMiddleware", "is_public"]

log = logging.getLogger(__name__)

_SAFE_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_PUBLIC = frozenset({"/health", "/health/live", "/health/ready", "/docs", "/redoc",
                     "/openapi.json"})
_PUBLIC_PREFIX = "/docs-assets/"
_PLAYGROUND_PREFIX = "/playground/"


def is_public(path: str, settings: Settings, method: str = "") -> bool:
    """Paths served without a key and while draining: probes, docs, the playground page
    (GET / only: POST / generates) and its assets, and /metrics unless RNN_PROTECT_METRICS.
    Everything else (unknown paths too) is checked first."""
    if path in _PUBLIC or path.startswith(_PUBLIC_PREFIX):
        return True
    if path.startswith(_PLAYGROUND_PREFIX) or (path == "/" and method in ("GET", "HEAD")):
        return True
    return path == "/metrics" and not settings.protect_metrics


def _check_key(headers: list[tuple[bytes, bytes]], keys: list[str]) -> None:
    if not matches_any(bearer_token(headers), keys):
        raise Unauthorized("missing or wrong API key; send 'Authorization: Bearer <key>'")


def _check_admin_key(headers: list[tuple[bytes, bytes]], settings: Settings) -> None:
    token = bearer_token(headers)
    # Both comparisons always run: which one matched must not show in the timing either.
    admin, inference = matches_any(token, settings.admin_keys), matches_any(token, settings.api_keys)
    if admin:
        return
    if inference:
        raise Forbidden("an inference key (RNN_API_KEYS) cannot use the admin routes; send a key "
                        "from RNN_ADMIN_KEYS")
    raise Unauthorized("missing or wrong admin key; send 'Authorization: Bearer <admin key>'")


class ServiceMiddleware:
    """For every HTTP request: take a safe `X-Request-Id` from the client or make one (echoed,
    and on every log line); answer 413 for a body over the limit, before it is parsed (from
    Content-Length, else while the chunks arrive); refuse work while draining (503) or without
    a valid key (401); count and time the request by route template and status."""

    def __init__(self, app: ASGIApp, settings: Settings, state: Any) -> None:
        self.app = app
        self.settings = settings
        self.state = state  # the application's state: `draining` is read per request

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        headers: list[tuple[bytes, bytes]] = scope["headers"]
        request_id = ""
        length = -1
        for name, value in headers:
            if name == b"x-request-id":
                request_id = value.decode("latin-1")
            elif name == b"content-length" and value.isdigit():
                length = int(value)
        if not _SAFE_ID.match(request_id):
            request_id = uuid.uuid4().hex
        # Not reset at the end: each request runs in its own task (its own context), and the
        # server's last lines about it (an unfinished answer) must carry the id too.
        REQUEST_ID.set(request_id)
        status = 500
        refused = False
        seen = 0
        limit = self.settings.max_body_bytes
        send_timeout = self.settings.send_timeout_s

        async def send_wrapped(message: Message) -> None:
            nonlocal status
            if refused:
                return  # the app's own answer after the 413 went out
            if message["type"] == "http.response.start":
                status = message["status"]
                out = MutableHeaders(scope=message)
                out["X-Request-Id"] = request_id
                out["X-Content-Type-Options"] = "nosniff"
            try:
                async with asyncio.timeout(send_timeout):
                    await send(message)
            except TimeoutError:
                # A client that does not read: its answer stops here (a stream's generation
                # is cancelled as its iterator closes) and uvicorn closes the connection.
                raise StalledClient(f"the client took no part of its answer for "
                                    f"{send_timeout:g} s (RNN_SEND_TIMEOUT_S)") from None

        async def receive_limited() -> Message:
            nonlocal seen, refused
            message = await receive()
            if message["type"] == "http.request" and not refused:
                seen += len(message.get("body", b""))
                if seen > limit:
                    # Answer now; the app sees a client that went away and stops reading.
                    await _send_413(send_wrapped, limit, scope["path"])
                    refused = True
                    return {"type": "http.disconnect"}
            return message

        try:
            if length > limit:
                await _send_413(send_wrapped, limit, scope["path"])
            elif (is_public(scope["path"], self.settings, scope["method"])
                  or _preflight(scope, self.settings)
                  or await self._admit(scope, headers, send_wrapped)):
                await self.app(scope, receive_limited, send_wrapped)
        except StalledClient as e:
            ANSWER_ABANDONED.set(True)
            log.info("%s; its answer is dropped and the connection closed", e)
        finally:
            route: Any = scope.get("route")
            label = getattr(route, "path", None) or "unmatched"
            REQUESTS.labels(label, str(status)).inc()
            REQUEST_DURATION.labels(label).observe(time.perf_counter() - start)

    async def _admit(self, scope: Scope, headers: list[tuple[bytes, bytes]], send: Send) -> bool:
        """False (and the answer sent) when draining or the key is missing or wrong; an admin
        route (served only with RNN_ADMIN_KEYS) takes an admin key instead of an inference key."""
        try:
            if self.state.draining:
                raise ModelNotReady("the service is shutting down; retry on another instance")
            if self.settings.admin_keys and is_admin_path(scope):
                _check_admin_key(headers, self.settings)
                scope[ADMIN_SCOPE_KEY] = True  # what the admin routes' own check looks for
            elif self.settings.api_keys:
                _check_key(headers, self.settings.api_keys)
                scope[TENANT_SCOPE_KEY] = tenant_digest(bearer_token(headers))
        except ServiceError as e:
            await send_error(send, e, scope["path"])
            return False
        return True


def _preflight(scope: Scope, settings: Settings) -> bool:
    """A CORS preflight with CORS configured: the browser sends it without credentials, so it
    is answered (by the CORS middleware) before any key check."""
    return (bool(settings.cors_origins) and scope["method"] == "OPTIONS"
            and any(name == b"access-control-request-method" for name, _ in scope["headers"]))


async def _send_413(send: Send, limit: int, path: str) -> None:
    await send_error(send, BodyTooLarge(f"request body is over the limit of {limit} bytes "
                                         "(RNN_MAX_BODY_BYTES)"), path,
                     {"Connection": "close"})  # the rest of the body is not read
