"""Logging: text or one JSON object per line, with the request id on every line."""

from __future__ import annotations

import json
import logging
from contextvars import ContextVar
from datetime import UTC, datetime

__all__ = ["REQUEST_ID", "configure_logging"]

REQUEST_ID: ContextVar[str] = ContextVar("request_id", default="-")
_LOGGERS = ("", "uvicorn", "uvicorn.error", "uvicorn.access", "app", "textrnn")


class _RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = REQUEST_ID.get()
        return True


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
