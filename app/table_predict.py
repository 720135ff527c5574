"""A table file through one model: each row of a CSV, TSV or JSON Lines file classified or
scored by the server's own code (the model folder loaded and warmed up as the server loads it,
its batcher, the /classify answer and the /score figures) and written back with the answer's
columns added, continuing an output an interrupted run left."""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from pydantic import ValidationError

from app.device import resolve_device
from app.entry import ModelEntry
from app.errors import ServiceError
from app.progress import ProgressLog
from app.registry import TASK_OF_ROUTE, Registry
from app.routes import classify as classify_route
from app.schemas import ClassifyRequest
from app.settings import Settings
from app.tabular import (
    Row,
    TableError,
    TableWriter,
    columns_of,
    count_rows,
    read_rows,
    rows_done,
    table_format,
)

__all__ = ["SCORES", "STAMP", "UsageError", "load_model", "model_folder", "predict_table"]

log = logging.getLogger("app.predict")
STAMP = "predicted_by"  # the column naming the model (and weights) that wrote a row
SCORES = ("tokens", "log_prob", "perplexity", "bits_per_char")  # /score's totals


class UsageError(Exception):
    """A bad argument; the message names the flag."""


def model_folder(wanted: str, settings: Settings) -> Path:
    """The folder `--model` names: a path to a model folder, or a name in the models dir."""
    path = Path(wanted)
    if (path / "config.json").is_file():
        return path
    folder = settings.models_dir / wanted
    if (folder / "config.json").is_file() and "/" not in wanted:
        return folder
    names = sorted(p.parent.name for p in settings.models_dir.glob("*/config.json"))
    raise UsageError(f"--model {wanted}: no model folder there, nor in {settings.models_dir}; "
                     f"available: {', '.join(names) or 'none'}")


def load_model(wanted: str | None, route: str, settings: Settings) -> Registry:
    """A registry holding the one model a run uses, loaded and warmed as the server loads it:
    the folder `wanted` names, or the task's default model chosen as the server chooses it."""
    try:
        registry = Registry(settings, resolve_device(settings.device))
    except ValueError as e:
        raise UsageError(str(e)) from None
    if wanted is None:
        if not settings.models_dir.is_dir():
            raise UsageError(f"--models-dir {settings.models_dir} does not exist; name a model "
                             "folder with --model or the folder of models with --models-dir")
        registry.load_all()
        try:
            entry = registry.get(None, route)
        except ServiceError as e:
            raise UsageError(f"--model: {e}") from None
    else:
        folder = model_folder(wanted, settings)
        entry = ModelEntry(folder.resolve().name, folder)
        entry.load(registry.device, settings.weights)
        if entry.status != "ready":
            raise UsageError(f"--model {wanted}: the model folder does not load: {entry.error}")
        task = TASK_OF_ROUTE[route]
        if entry.task != task:
            raise UsageError(f"--model {wanted} is a {entry.task} model; `{route}` needs a "
                             f"{task} model")
    registry.entries = {entry.name: entry}
    return registry


async def _answer_rows(state: SimpleNamespace, entry: ModelEntry, route: str,
                       rows: list[Row], column: str, path: Path) -> list[dict[str, Any]]:
    """The rows with the model's answer added: the /classify answer's labels and scores, or
    the /score totals."""
    texts = []
    for row in rows:
        text = row.values.get(column)
        if not isinstance(text, str):
            raise TableError(f"{path}, line {row.line}: --column {column!r} holds "
                             f"{'nothing' if text is None else type(text).__name__}, not a text")
        texts.append(text)
    try:
        if route == "classify":
            body = ClassifyRequest(inputs=texts, model=entry.name)
            payload, _ = await classify_route.answer(state, body, _connected, "")
            assert entry.artifact is not None
            extra = [_by_label(labels, entry.artifact.labels) for labels in json.loads(payload)]
        else:
            assert entry.score is not None
            results = await entry.score.submit(texts)
            extra = [{k: r[k] for k in SCORES} for r in results]
    except (ServiceError, ValidationError) as e:
        raise TableError(f"{path}, lines {rows[0].line}-{rows[-1].line}: {e}") from None
    return [row.values | values | {STAMP: entry.version}
            for row, values in zip(rows, extra, strict=True)]


def _by_label(answer: list[dict[str, Any]], labels: list[str]) -> dict[str, Any]:
    """A /classify entry (labels best first) as columns: the best label, then each label's
    score in the model's order of labels."""
    scores = {x["label"]: x["score"] for x in answer}
    return {"predicted_label": answer[0]["label"]} | {f"score_{x}": scores[x] for x in labels}


async def _connected() -> Any:
    """The receive channel of a client that stays until its answer is in."""
    await asyncio.Event().wait()


def _added_columns(route: str, entry: ModelEntry) -> list[str]:
    assert entry.artifact is not None
    if route == "classify":
        return ["predicted_label", *(f"score_{x}" for x in entry.artifact.labels), STAMP]
    return [*SCORES, STAMP]


def _chunks(rows: Iterator[Row], size: int) -> Iterator[list[Row]]:
    while chunk := list(itertools.islice(rows, size)):
        yield chunk


async def predict_table(source: Path, output: Path, column: str, model: str | None,
                        route: str, settings: Settings, overwrite: bool) -> int:
    """Classify or score the rows of `source` into `output` (continued unless `overwrite`)."""
    fmt = table_format(source, "input")
    header = columns_of(source, fmt)
    if column not in header:
        raise UsageError(f"--column {column!r} is not a column of {source}; its "
                         f"columns are: {', '.join(header) or 'none'}")
    torch.set_num_threads(settings.threads)
    registry = load_model(model, route, settings)
    entry = next(iter(registry.entries.values()))
    added = _added_columns(route, entry)
    clash = [c for c in added if c in header]
    if clash:
        raise UsageError(f"{source} already has the column {clash[0]!r}, which the "
                         "output adds; rename it in the input")
    columns = header + added
    total = count_rows(source, fmt)
    done = 0
    if output.exists() and output.stat().st_size and not overwrite:
        done = rows_done(output, fmt, read_rows(source, fmt),
                         columns if fmt != "jsonl" else None, (STAMP, entry.version))
    log.info("%s %s (%d rows, column %r) with %s on %s, %d threads -> %s%s", route,
             source, total, column, entry.version, registry.device, settings.threads,
             output, f" (continuing after row {done})" if done else "")
    writer = TableWriter(output, fmt, columns, append=done > 0)
    progress = ProgressLog(log, total, done)
    state = SimpleNamespace(settings=settings, registry=registry)
    await entry.start(settings, registry.device)
    pending: deque[asyncio.Task[list[dict[str, Any]]]] = deque()
    try:
        rows = itertools.islice(read_rows(source, fmt), done, None)
        # Two pieces in flight: the batcher takes the next as soon as one is done.
        for chunk in _chunks(rows, settings.max_batch_size):
            pending.append(asyncio.ensure_future(
                _answer_rows(state, entry, route, chunk, column, source)))
            if len(pending) >= 2:
                _write(writer, progress, await pending.popleft())
        while pending:
            _write(writer, progress, await pending.popleft())
    finally:
        for task in pending:
            task.cancel()
        writer.close()
        await entry.stop()
    progress.finish()
    return 0


def _write(writer: TableWriter, progress: ProgressLog, rows: list[dict[str, Any]]) -> None:
    writer.write(rows)
    progress.advance(len(rows))
