"""Domain errors of the service and their mapping to HTTP, in one place."""

from __future__ import annotations

import logging
from typing import ClassVar

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

__all__ = [
    "DeadlineExceeded",
    "InvalidInput",
    "ModelNotFound",
    "ModelNotReady",
    "Overloaded",
    "ServiceError",
    "Unauthorized",
    "WrongTask",
    "install_error_handlers",
]

log = logging.getLogger(__name__)


class ServiceError(Exception):
    """Base of the errors a client can cause or meet; each carries its HTTP status."""

    status_code = 400
    headers: ClassVar[dict[str, str] | None] = None


class InvalidInput(ServiceError):
    """A request over a configured limit; the message names the field and the limit."""

    status_code = 422


class Unauthorized(ServiceError):
    """An API key is required and was missing or wrong."""

    status_code = 401
    headers: ClassVar[dict[str, str] | None] = {"WWW-Authenticate": "Bearer"}


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


class Overloaded(ServiceError):
    """The model's queue is full."""

    status_code = 503
    headers: ClassVar[dict[str, str] | None] = {"Retry-After": "1"}


class DeadlineExceeded(ServiceError):
    """The request waited past its deadline."""

    status_code = 504


async def _service_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ServiceError)
    return JSONResponse({"detail": str(exc)}, status_code=exc.status_code, headers=exc.headers)


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return JSONResponse({"detail": "internal error"}, status_code=500)


def install_error_handlers(app: FastAPI) -> None:
    """Map domain errors to their statuses; anything else is logged and answered 500."""
    app.add_exception_handler(ServiceError, _service_error)
    app.add_exception_handler(Exception, _unexpected)
