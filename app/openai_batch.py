"""An OpenAI batch file run through the service in-process, as vLLM's `run-batch` does.

Each input line `{"custom_id", "method": "POST", "url", "body"}` is sent as a request to the
app itself (its middleware, validation, routes, engine and error rendering, unchanged), many
at a time so that the engine batches them, and answered by one output line in OpenAI's batch
output shape, in input order:
`{"id", "custom_id", "response": {"status_code", "request_id", "body"}, "error": null}`.
A line that cannot be sent (broken JSON, another URL or method, a streamed request) gets
`"response": null` and `"error": {"code", "message"}`; no line stops the run.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from starlette.types import ASGIApp, Message

from app.logs import REQUEST_ID
from app.progress import ProgressLog
from app.tabular import TableError

__all__ = ["URLS", "BatchLine", "asgi_post", "lines_done", "read_batch", "run_batch"]

log = logging.getLogger(__name__)
URLS = ("/v1/completions", "/v1/chat/completions")


@dataclass(frozen=True)
class BatchLine:
    """One input line: its request, or why it cannot be sent (`code`, `message`)."""

    line: int
    custom_id: str | None
    url: str = ""
    body: bytes = b""
    code: str | None = None
    message: str | None = None


def parse_line(number: int, text: str) -> BatchLine:
    """A line of the input file, checked as OpenAI checks a batch's lines."""
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        return BatchLine(number, None, code="invalid_json_line",
                         message=f"line {number}: broken JSON ({e.msg})")
    if not isinstance(obj, dict):
        return BatchLine(number, None, code="invalid_json_line",
                         message=f"line {number}: the line must be a JSON object")
    custom_id = obj.get("custom_id")
    custom_id = custom_id if isinstance(custom_id, str) else None
    url, method, body = obj.get("url"), obj.get("method"), obj.get("body")
    fail = None
    if custom_id is None:
        fail = ("missing_required_parameter", "custom_id must be a string")
    elif url not in URLS:
        fail = ("invalid_url", f"url {url!r} is not served in a batch; use one of "
                               f"{', '.join(URLS)}")
    elif method != "POST":
        fail = ("invalid_method", f"method {method!r}: batch requests are POST")
    elif not isinstance(body, dict):
        fail = ("invalid_request", "body must be a JSON object (the request's body)")
    elif body.get("stream") not in (None, False):
        fail = ("invalid_request", "stream must be false in a batch: each answer is written "
                                   "whole")
    if fail is not None:
        return BatchLine(number, custom_id, code=fail[0], message=f"line {number}: {fail[1]}")
    assert isinstance(url, str) and isinstance(body, dict)
    return BatchLine(number, custom_id, url, json.dumps(body).encode())


def read_batch(path: Path) -> Iterator[BatchLine]:
    """The non-blank lines of a batch file, parsed."""
    try:
        with path.open(encoding="utf-8") as f:
            for number, text in enumerate(f, 1):
                if text.strip():
                    yield parse_line(number, text)
    except UnicodeDecodeError as e:
        raise TableError(f"{path}: not valid UTF-8; convert the file to UTF-8") from e


async def asgi_post(app: ASGIApp, path: str, body: bytes) -> tuple[int, str, bytes]:
    """POST a JSON body to the app in-process: (status, X-Request-Id, answer body). The
    client stays connected until the whole answer is in."""
    scope = {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"},
             "http_version": "1.1", "method": "POST", "scheme": "http", "path": path,
             "raw_path": path.encode(), "root_path": "", "query_string": b"",
             "headers": [(b"host", b"textrnn-predict"), (b"content-type", b"application/json"),
                         (b"content-length", str(len(body)).encode())],
             "client": ("127.0.0.1", 0), "server": ("textrnn-predict", 80), "extensions": {}}
    pending: list[Message] = [{"type": "http.request", "body": body, "more_body": False}]
    answered = asyncio.Event()
    status, headers, chunks = 500, [], []

    async def receive() -> Message:
        if pending:
            return pending.pop()
        await answered.wait()
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        nonlocal status, headers
        if message["type"] == "http.response.start":
            status, headers = message["status"], list(message.get("headers", []))
        elif message["type"] == "http.response.body":
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                answered.set()

    try:
        await app(scope, receive, send)
    finally:
        answered.set()
    request_id = next((v.decode("latin-1") for k, v in headers if k.lower() == b"x-request-id"), "")
    return status, request_id, b"".join(chunks)


def _output(line: BatchLine, status: int | None = None, request_id: str = "",
            body: bytes = b"") -> dict[str, Any]:
    """The output line of an input line."""
    out: dict[str, Any] = {"id": f"batch_req_{uuid.uuid4().hex}", "custom_id": line.custom_id}
    if status is None:
        return out | {"response": None, "error": {"code": line.code, "message": line.message}}
    try:
        answer: Any = json.loads(body)
    except ValueError:
        answer = body.decode("utf-8", "replace")
    return out | {"response": {"status_code": status, "request_id": request_id, "body": answer},
                  "error": None}


async def _answer(app: ASGIApp, line: BatchLine) -> dict[str, Any]:
    if line.code is not None:
        return _output(line)
    status, request_id, body = await asgi_post(app, line.url, line.body)
    return _output(line, status, request_id, body)


async def run_batch(app: ASGIApp, lines: Iterator[BatchLine], out: IO[str], concurrency: int,
                    progress: ProgressLog) -> dict[int, int]:
    """Answer every line, up to `concurrency` at once, writing the answers in input order
    (each flushed as written); the count of answers by status (0: not sent)."""
    slots = asyncio.Semaphore(concurrency)
    results: dict[int, dict[str, Any]] = {}
    tasks: set[asyncio.Task[None]] = set()
    statuses: dict[int, int] = {}
    written = 0

    async def one(i: int, line: BatchLine) -> None:
        nonlocal written
        try:
            results[i] = await _answer(app, line)
            REQUEST_ID.set("-")  # the app set its request's id in this task: lines below are the run's
        except Exception as e:  # the app answers its own errors: this is a bug, kept to its line
            log.exception("line %d failed", line.line)
            results[i] = _output(BatchLine(line.line, line.custom_id, code="server_error",
                                           message=f"line {line.line}: {type(e).__name__}"))
        finally:
            slots.release()
        while written in results:  # whichever task completes the front writes it
            answer = results.pop(written)
            response = answer["response"]
            status = 0 if response is None else response["status_code"]
            statuses[status] = statuses.get(status, 0) + 1
            out.write(json.dumps(answer, ensure_ascii=False) + "\n")
            out.flush()
            written += 1
            progress.advance(1)

    for index, line in enumerate(lines):
        await slots.acquire()
        task = asyncio.get_running_loop().create_task(one(index, line))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    while tasks:
        await asyncio.gather(*tasks)
    return statuses


def lines_done(output: Path, lines: Iterator[BatchLine]) -> int:
    """How many lines of an earlier run's `output` continue this input (same custom_id, in
    order); a partial last line is cut off, any other difference is a `TableError`."""
    raw = output.read_bytes()
    texts = raw.decode("utf-8", "replace").split("\n")
    whole = texts[:-1]  # the piece after the last newline is a write cut short (or empty)
    for number, text in enumerate(whole, 1):
        source = next(lines, None)
        try:
            custom_id = json.loads(text)["custom_id"]
        except (ValueError, KeyError, TypeError):
            raise TableError(f"{output}, line {number}: not an answer line; --overwrite starts "
                             "it over, or --output names another file") from None
        if source is None or custom_id != source.custom_id:
            expected = "no more lines" if source is None else repr(source.custom_id)
            raise TableError(f"{output}, line {number}: custom_id {custom_id!r} where the input "
                             f"has {expected}; it does not continue this run. --overwrite "
                             "starts it over, or --output names another file")
    cut = raw.rfind(b"\n") + 1
    if cut < len(raw):
        with output.open("r+b") as f:
            f.truncate(cut)
    return len(whole)
