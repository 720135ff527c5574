"""`textrnn-predict` (`python -m app.predict`): a whole file through a served model.

`classify` and `score` read a column of a CSV, TSV or JSON Lines file and write the rows back
beside it with the model's answer added, through the service's own code: the model folder
loaded and warmed up as the server loads it, its batcher, and the /classify and /score
answers. `batch` runs an OpenAI batch file through the app itself (app/openai_batch.py).
Each writes as it goes and continues an interrupted output when run again.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import logging
import os
import shutil
import signal
import sys
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
from app.logs import configure_logging
from app.progress import ProgressLog
from app.registry import TASK_OF_ROUTE, Registry
from app.routes import classify as classify_route
from app.schemas import ClassifyRequest
from app.settings import Settings, load_settings
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

__all__ = ["build_parser", "main"]

log = logging.getLogger("app.predict")
STAMP = "predicted_by"  # the column naming the model (and weights) that wrote a row
SCORES = ("tokens", "log_prob", "perplexity", "bits_per_char")  # /score's totals
LONG = 10**9  # a limit a file's rows never meet: a file is not a client to defend against


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def build_parser() -> argparse.ArgumentParser:
    """The command line of `textrnn-predict`."""
    parser = argparse.ArgumentParser(prog="textrnn-predict", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="{classify,score,batch}")
    for name, what in (("classify", "label each row's text with a classifier"),
                       ("score", "log-probability and perplexity of each row's text under a "
                                 "language model"),
                       ("batch", "answer an OpenAI batch file (/v1/completions and "
                                 "/v1/chat/completions lines), as vLLM's run-batch does")):
        p = sub.add_parser(name, help=what, description=what, formatter_class=_Help)
        p.add_argument("input", type=Path,
                       help="the .jsonl batch file" if name == "batch"
                       else "a .csv, .tsv or .jsonl file with a header (JSON Lines: objects)")
        if name != "batch":
            p.add_argument("--column", default="text", help="the column that holds the text")
        p.add_argument("--model", default=None, help=(
            "serve only this model folder (a path, or a name in --models-dir); default: every "
            "model in --models-dir, each line's \"model\" choosing as on the server"
            if name == "batch" else "a model folder, or the name of one in --models-dir; "
            "default: the server's default " + ("classifier" if name == "classify"
                                                else "generation model")))
        p.add_argument("--models-dir", type=Path, default=None,
                       help="the folder of model folders (RNN_MODELS_DIR, else models)")
        p.add_argument("--output", type=Path, default=None,
                       help="the file to write; default: beside the input, named "
                            + ("INPUT.results.jsonl" if name == "batch"
                               else "INPUT.predictions.<same suffix>"))
        p.add_argument("--overwrite", action="store_true",
                       help="start the output over (without it, an output from an earlier run "
                            "of the same input and model is continued)")
        p.add_argument("--threads", type=int, default=_cores(),
                       help="torch threads; the default is this machine's cores")
        if name == "batch":
            p.add_argument("--concurrency", type=int, default=None,
                           help="requests in flight (default: RNN_MAX_ACTIVE_SEQUENCES)")
        else:
            p.add_argument("--batch-size", type=int, default=None,
                           help="rows per request to the batcher (default: RNN_MAX_BATCH_SIZE)")
    return parser


class _Help(argparse.ArgumentDefaultsHelpFormatter):
    """Defaults shown where there is one to show (not None, not an unset switch)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default in (None, False) or "default:" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


class UsageError(Exception):
    """A bad argument; the message names the flag."""


def _settings(args: argparse.Namespace, **changes: Any) -> Settings:
    """The server's settings (RNN_* variables), with this run's flags."""
    settings = load_settings()
    if args.models_dir is not None:
        changes["models_dir"] = args.models_dir
    # A file's rows wait their turn however long the file is: no request deadline.
    return settings.model_copy(update=changes | {"threads": args.threads,
                                                 "request_timeout_s": float(LONG)})


def _output_path(args: argparse.Namespace, infix: str, suffix: str) -> Path:
    path: Path = args.output or args.input.with_name(f"{args.input.stem}.{infix}{suffix}")
    if path.resolve() == args.input.resolve():
        raise UsageError(f"--output {path} is the input file; name another")
    return path


def _model_folder(wanted: str, settings: Settings) -> Path:
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
        folder = _model_folder(wanted, settings)
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
            payload, _ = await classify_route.answer(state, body, _connected)
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


async def predict_file(args: argparse.Namespace, route: str) -> int:
    """Classify or score the rows of `args.input` into the output file."""
    fmt = table_format(args.input, "input")
    if not args.input.is_file():
        raise UsageError(f"input {args.input}: no such file")
    output = _output_path(args, "predictions", args.input.suffix)
    header = columns_of(args.input, fmt)
    if args.column not in header:
        raise UsageError(f"--column {args.column!r} is not a column of {args.input}; its "
                         f"columns are: {', '.join(header) or 'none'}")
    settings = _settings(args, generation_worker="thread", max_input_chars=LONG,
                         max_request_chars=LONG, max_inputs=LONG,
                         **({"max_batch_size": args.batch_size} if args.batch_size else {}))
    torch.set_num_threads(settings.threads)
    registry = load_model(args.model, route, settings)
    entry = next(iter(registry.entries.values()))
    added = _added_columns(route, entry)
    clash = [c for c in added if c in header]
    if clash:
        raise UsageError(f"{args.input} already has the column {clash[0]!r}, which the "
                         "output adds; rename it in the input")
    columns = header + added
    total = count_rows(args.input, fmt)
    done = 0
    if output.exists() and output.stat().st_size and not args.overwrite:
        done = rows_done(output, fmt, read_rows(args.input, fmt),
                         columns if fmt != "jsonl" else None, (STAMP, entry.version))
    log.info("%s %s (%d rows, column %r) with %s on %s, %d threads -> %s%s", route,
             args.input, total, args.column, entry.version, registry.device, settings.threads,
             output, f" (continuing after row {done})" if done else "")
    writer = TableWriter(output, fmt, columns, append=done > 0)
    progress = ProgressLog(log, total, done)
    state = SimpleNamespace(settings=settings, registry=registry)
    await entry.start(settings, registry.device)
    try:
        pending: deque[asyncio.Task[list[dict[str, Any]]]] = deque()
        rows = itertools.islice(read_rows(args.input, fmt), done, None)
        # Two pieces in flight: the batcher takes the next as soon as one is done.
        for chunk in _chunks(rows, settings.max_batch_size):
            pending.append(asyncio.ensure_future(
                _answer_rows(state, entry, route, chunk, args.column, args.input)))
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


async def predict_batch(args: argparse.Namespace) -> int:
    """Answer the lines of an OpenAI batch file with the app, in-process."""
    from app.main import create_app
    from app.openai_batch import lines_done, read_batch, run_batch
    from app.serve import link_models

    if args.input.suffix.lower() != ".jsonl":
        raise UsageError(f"input {args.input}: an OpenAI batch file is a .jsonl file")
    if not args.input.is_file():
        raise UsageError(f"input {args.input}: no such file")
    output = _output_path(args, "results", ".jsonl")
    linked = None
    changes: dict[str, Any] = {"api_keys": [], "admin_keys": []}  # no client but this one
    if args.model is not None:
        base = _settings(args)
        try:
            linked = link_models([_model_folder(args.model, base)])
        except ValueError as e:
            raise UsageError(f"--model {args.model}: {e}") from None
        changes["models_dir"] = linked
    settings = _settings(args, **changes)
    if not settings.models_dir.is_dir():
        raise UsageError(f"--models-dir {settings.models_dir} does not exist")
    try:
        done = 0
        if output.exists() and not args.overwrite:
            done = lines_done(output, read_batch(args.input))
        total = sum(1 for _ in read_batch(args.input))
        app = create_app(settings)
        handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
        async with app.router.lifespan_context(app):
            # The server drains on SIGTERM (answering 503); a batch run stops instead, and
            # the next run continues after the lines written.
            for signum, handler in handlers.items():
                signal.signal(signum, handler)
            log.info("batch %s (%d requests) with the models of %s, %d threads -> %s%s",
                     args.input, total, args.model or settings.models_dir, settings.threads,
                     output, f" (continuing after line {done})" if done else "")
            progress = ProgressLog(log, total, done, unit="requests")
            lines = itertools.islice(read_batch(args.input), done, None)
            with output.open("a" if done else "w", encoding="utf-8") as out:
                statuses = await run_batch(app, lines, out, args.concurrency
                                           or settings.max_active_sequences, progress)
        progress.finish()
        log.info("answers by status: %s", ", ".join(
            f"{'not sent' if s == 0 else s}: {n}" for s, n in sorted(statuses.items())) or "none")
    finally:
        if linked is not None:
            shutil.rmtree(linked, ignore_errors=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run `textrnn-predict`; 2 for a bad argument or input file, with a one-line message."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.threads < 1:
        parser.error(f"--threads must be at least 1, not {args.threads}")
    for flag in ("batch_size", "concurrency"):
        value = getattr(args, flag, None)
        if value is not None and value < 1:
            parser.error(f"--{flag.replace('_', '-')} must be at least 1, not {value}")
    configure_logging(load_settings().log_format)
    try:
        if args.command == "batch":
            return asyncio.run(predict_batch(args))
        return asyncio.run(predict_file(args, args.command))
    except (UsageError, TableError) as e:
        parser.exit(2, f"{parser.prog}: error: {e}\n")
    except KeyboardInterrupt:
        sys.stderr.write(f"{parser.prog}: interrupted; run it again to continue\n")
        return 130


if __name__ == "__main__":
    sys.exit(main())
