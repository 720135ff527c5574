"""Logging: text or one JSON object per line, with the request id on every line."""

from __future__ import annotations

import json
import logging
import re
from contextvars import ContextVar
from datetime import UTC, datetime

__all__ = ["ANSWER_ABANDONED", "REQUEST_ID", "configure_logging", "redact_url"]

REQUEST_ID: ContextVar[str] = ContextVar("request_id", default="-")
_LOGGERS = ("", "uvicorn", "uvicorn.error", "uvicorn.access", "app", "textrnn")


class _RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = REQUEST_ID.get()
        return True


_SECRET_PARAM = re.compile(r"([?&][^=&#]*(?:key|token|auth|secret|password|signature)[^=&#]*=)[^&#]*",
                           re.IGNORECASE)


def redact_url(path: str) -> str:
    """A URL with the values of query parameters that may hold a credential (`api_key`,
    `token`, ...) replaced: a client that puts its key in the query string must not find it
    in the access log."""
    return _SECRET_PARAM.sub(r"\1REDACTED", path) if "?" in path else path


class _RedactFilter(logging.Filter):
    """Redacts credentials from the URL of uvicorn's access log lines."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) >= 3 and isinstance(args[2], str):
            record.args = (*args[:2], redact_url(args[2]), *args[3:])
        return True


# Set in a request's context when its client stopped reading and the middleware ended its
# answer (logged there, with the reason): uvicorn's own line about the unfinished answer is
# then expected, not an error.
ANSWER_ABANDONED: ContextVar[bool] = ContextVar("answer_abandoned", default=False)
_UNFINISHED = "ASGI callable returned without completing response."


class _AbandonedFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.msg == _UNFINISHED and ANSWER_ABANDONED.get())


class JsonFormatter(logging.Formatter):
    """One JSON object per record."""

    def format(self, record: logging.LogRecord) -> str:
        out = {"time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
               "level": record.levelname.lower(), "logger": record.name,
               "message": record.getMessage(), "request_id": getattr(record, "request_id", "-")}
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False)


def configure_logging(fmt: str, level: int = logging.INFO) -> None:
    """Send every logger (uvicorn's included) through one handler in the chosen format."""
    handler = logging.StreamHandler()
    handler.set_name("textrnn")
    handler.addFilter(_RequestIdFilter())
    handler.addFilter(_RedactFilter())
    handler.addFilter(_AbandonedFilter())
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(
        "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"))
    for name in _LOGGERS:
        logger = logging.getLogger(name)
        # Replace uvicorn's handlers and our own earlier one; keep any others (a test's).
        keep = [h for h in logger.handlers if name == "" and h.get_name() != "textrnn"]
        logger.handlers = [*keep, handler] if name == "" else []
        logger.propagate = name != ""
        if name in ("", "app", "textrnn"):
            logger.setLevel(level)
