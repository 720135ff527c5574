"""Domain errors of the service and their mapping to HTTP, in one place."""

from __future__ import annotations

import json
import logging
from typing import Any, ClassVar, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Send

__all__ = [
    "BodyTooLarge",
    "ClientGone",
    "DeadlineExceeded",
    "Dialect",
    "Forbidden",
    "InvalidInput",
    "ModelNotFound",
    "ModelNotReady",
    "Overloaded",
    "ServiceError",
    "StalledClient",
    "Unauthorized",
    "WrongTask",
    "dialect_of",
    "error_body",
    "error_type",
    "install_error_handlers",
    "openai_error",
    "printable",
    "render",
    "render_exception",
    "send_error",
    "send_json",
    "stream_error",
]

log = logging.getLogger(__name__)


class StalledClient(Exception):
    """A write of an answer waited past RNN_SEND_TIMEOUT_S for its client to read: the answer
    is abandoned (not a ServiceError: nothing can be sent to that client any more)."""


class ServiceError(Exception):
    """Base of the errors a client can cause or meet; each carries its HTTP status, and may
    name the request field it is about (`param`, OpenAI's name for it)."""

    status_code = 400
    headers: ClassVar[dict[str, str] | None] = None

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


class InvalidInput(ServiceError):
    """A request over a configured limit; the message names the field and the limit."""

    status_code = 422


class BodyTooLarge(ServiceError):
    """The request body is over the configured size."""

    status_code = 413


class Unauthorized(ServiceError):
    """An API key is required and was missing or wrong."""

    status_code = 401
    headers: ClassVar[dict[str, str] | None] = {"WWW-Authenticate": "Bearer"}


class Forbidden(ServiceError):
    """A valid key that does not open this route (an inference key on an admin route)."""

    status_code = 403


class ModelNotFound(ServiceError):
    """No model of that name (or no model for the task)."""

    status_code = 404


class WrongTask(ServiceError):
    """The model exists but serves another task."""

    status_code = 422


class ModelNotReady(ServiceError):
    """The model failed to load, or the service is not ready."""

    status_code = 503
    headers: ClassVar[dict[str, str] | None] = {"Retry-After": "5"}


class ClientGone(ServiceError):
    """The client disconnected before its answer was ready (nginx's 499; nobody reads it)."""

    status_code = 499


class Overloaded(ServiceError):
    """The model's queue is full."""

    status_code = 503
    headers: ClassVar[dict[str, str] | None] = {"Retry-After": "1"}


class DeadlineExceeded(ServiceError):
    """The request waited past its deadline."""

    status_code = 504


# TGI's error_type names (its client raises ValidationError, OverloadedError, ... by them).
_ERROR_TYPES: dict[int, str] = {401: "unauthorized", 404: "not_found", 408: "timeout",
                                413: "validation", 415: "validation", 422: "validation",
                                499: "cancelled", 503: "overloaded", 504: "timeout"}
# OpenAI's error `type` for each status.
_OPENAI_TYPES: dict[int, str] = {400: "invalid_request_error", 401: "authentication_error",
                                 404: "invalid_request_error", 422: "invalid_request_error",
                                 503: "server_error", 504: "timeout"}


def error_type(exc: ServiceError) -> str:
    """TGI's `error_type` of a domain error."""
    return _tgi_type(exc.status_code)


def _tgi_type(status: int) -> str:
    return _ERROR_TYPES.get(status, "validation" if status < 500 else "generation")


def openai_error(status: int, message: str, param: str | None = None,
                 code: str | None = None) -> dict[str, Any]:
    """OpenAI's error body: {"error": {"message", "type", "param", "code"}}."""
    kind = _OPENAI_TYPES.get(status, "invalid_request_error" if status < 500 else "server_error")
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


Dialect = Literal["hf", "openai"]


def dialect_of(path: str) -> Dialect:
    """The error dialect of a path: OpenAI's on /v1, Hugging Face's and TGI's elsewhere."""
    return "openai" if path == "/v1" or path.startswith("/v1/") else "hf"


def printable(text: str) -> str:
    """`text` with what UTF-8 cannot carry (lone surrogates) written as `\\udXXX` escapes, so
    quoting a client's value in an answer or a log line can never fail to encode."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _printable_all(value: Any) -> Any:
    """`printable` applied to every string (keys included) inside lists and dicts."""
    if isinstance(value, str):
        return printable(value)
    if isinstance(value, dict):
        return {_printable_all(k): _printable_all(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_printable_all(v) for v in value]
    return value


def render(status: int, message: str, dialect: Dialect, param: str | None = None,
           code: str | None = None) -> tuple[int, dict[str, Any]]:
    """The one error renderer: the status and body of an error in a dialect. Hugging Face's
    and TGI's body is FastAPI's `detail` with TGI's `error` and `error_type`; OpenAI's is
    `{"error": {message, type, param, code}}`, with 400 for an invalid request."""
    message = printable(message)
    if dialect == "openai":
        status = 400 if status == 422 else status
        return status, openai_error(status, message, param, code)
    return status, {"detail": message, "error": message, "error_type": _tgi_type(status)}


def render_exception(exc: BaseException, dialect: Dialect) -> tuple[int, dict[str, Any]]:
    """`render` of a domain error; anything else is an internal error that leaks nothing."""
    if isinstance(exc, ServiceError):
        code = "model_not_found" if isinstance(exc, ModelNotFound) else None
        return render(exc.status_code, str(exc), dialect, exc.param, code)
    return render(500, "internal error", dialect)


def _dumps(body: Any) -> bytes:
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()


def error_body(exc: ServiceError, dialect: Dialect = "hf") -> tuple[int, bytes, dict[str, str]]:
    """Status, JSON body and headers of the answer to a domain error."""
    status, body = render_exception(exc, dialect)
    return status, _dumps(body), dict(exc.headers or {})


def stream_error(exc: BaseException, dialect: Dialect) -> str:
    """An error inside a stream that has started (its status has gone): one `data:` event
    with the error's body, as TGI and OpenAI send it. Internal errors leak nothing."""
    _, body = render_exception(exc, dialect)
    if dialect == "hf":
        body = {"error": body["error"], "error_type": body["error_type"]}
    return f"data: {json.dumps(body)}\n\n"


async def send_json(send: Send, status: int, body: bytes,
                    headers: dict[str, str] | None = None) -> None:
    """A whole JSON answer straight to an ASGI `send` (for code that runs outside FastAPI)."""
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


async def send_error(send: Send, exc: BaseException, path: str,
                     headers: dict[str, str] | None = None) -> None:
    """The answer to an error, as `send_json` writes it, in the path's dialect."""
    status, body = render_exception(exc, dialect_of(path))
    extra = dict(exc.headers or {}) if isinstance(exc, ServiceError) else {}
    await send_json(send, status, _dumps(body), extra | (headers or {}))


async def _service_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ServiceError)
    status, body, headers = error_body(exc, dialect_of(request.url.path))
    return Response(body, status_code=status, headers=headers, media_type="application/json")


async def _unexpected(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    status, body = render(500, "internal error", dialect_of(request.url.path))
    return Response(_dumps(body), status_code=status, media_type="application/json")


async def _http_error(request: Request, exc: Exception) -> Response:
    """Starlette's own errors (an unknown path, a wrong method): FastAPI's shape, and OpenAI's
    on /v1, so that the SDK shows the message, not only the status."""
    assert isinstance(exc, StarletteHTTPException)
    headers = dict(exc.headers or {})
    if dialect_of(request.url.path) == "hf":
        return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=headers)
    message = f"{request.method} {request.url.path}: {exc.detail}"
    if exc.status_code == 404:
        message = (f"{request.url.path} is not served here; the OpenAI routes served are "
                   "/v1/models, /v1/completions and /v1/chat/completions")
    status, body = render(exc.status_code, message, "openai")
    return JSONResponse(body, status_code=status, headers=headers)


def _clip(value: Any, limit: int = 80) -> Any:
    """The offending input itself when it is short and JSON-safe, else a clipped text of it
    (lone surrogates escaped, so that the answer always encodes)."""
    if isinstance(value, str):
        text = value
    else:
        try:
            text = json.dumps(value, allow_nan=False, ensure_ascii=False)
        except (TypeError, ValueError):  # bytes, inf, NaN, ...
            return _clip(repr(value), limit)
    if len(text) <= limit:
        return _printable_all(value)
    return printable(f"{text[:limit]}... ({len(text)} characters)")


_TYPE_TAGS = frozenset({"str", "int", "float", "bool", "list", "dict", "none", "null"})


def _field_path(loc: Any) -> str:
    """A validation error's location as the client wrote the field: `prompt[1]`,
    `messages[0].content`; pydantic's union branch tags (`list[str]`, `function-after[...]`)
    and the `body` prefix left out."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part != "body" and "[" not in part and "(" not in part and part not in _TYPE_TAGS:
            out += f".{part}" if out else part
    return out


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    """FastAPI's 422 shape, with each offending input clipped so a huge value is not echoed."""
    assert isinstance(exc, RequestValidationError)
    detail = [{k: (_clip(v) if k == "input" else v) for k, v in err.items() if k != "ctx"}
              | ({"ctx": {k: str(v) for k, v in err["ctx"].items()}} if "ctx" in err else {})
              for err in exc.errors()]
    # Locations and messages may quote the client's keys and values: escaped too.
    message = printable("; ".join(dict.fromkeys(
        f"{_field_path(err['loc'])}: {err['msg']}" for err in exc.errors())))
    if dialect_of(request.url.path) == "openai":
        first = exc.errors()[0]["loc"] if exc.errors() else ()
        param = printable(_field_path(first)) or None
        status, body = render(422, message, "openai", param)
        return JSONResponse(body, status_code=status)
    return JSONResponse({"detail": _printable_all(detail), "error": message,
                         "error_type": "validation"}, status_code=422)


def install_error_handlers(app: FastAPI) -> None:
    """Map domain errors to their statuses; anything else is logged and answered 500."""
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(ServiceError, _service_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)
