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
import fcntl
import itertools
import logging
import os
import shutil
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from app.logs import configure_logging
from app.openai_batch import lines_done, read_batch, run_batch
from app.progress import ProgressLog
from app.settings import Settings, load_settings
from app.table_predict import UsageError, model_folder, predict_table
from app.tabular import TableError

__all__ = ["build_parser", "main"]

log = logging.getLogger("app.predict")
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
    if not path.parent.is_dir():
        raise UsageError(f"--output {path}: there is no folder {path.parent}")
    return path


@contextmanager
def _exclusive(output: Path) -> Iterator[None]:
    """Hold the output for this run: a second run writing the same file at the same time
    would interleave their rows, so it is refused (an advisory lock beside the file)."""
    lock = output.with_name(f".{output.name}.lock")
    with lock.open("a+", encoding="utf-8") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            raise UsageError(f"--output {output}: another run (pid {f.read().strip() or '?'}) "
                             "is writing it; wait for it, or name another --output") from None
        f.truncate(0)
        f.write(str(os.getpid()))
        f.flush()
        try:
            yield
        finally:
            lock.unlink(missing_ok=True)


async def predict_batch(args: argparse.Namespace) -> int:
    """Answer the lines of an OpenAI batch file with the app, in-process."""
    from app.serve import link_models

    if args.input.suffix.lower() != ".jsonl":
        raise UsageError(f"input {args.input}: an OpenAI batch file is a .jsonl file")
    output = _output_path(args, "results", ".jsonl")
    linked = None
    changes: dict[str, Any] = {"api_keys": [], "admin_keys": []}  # no client but this one
    if args.model is not None:
        base = _settings(args)
        try:
            linked = link_models([model_folder(args.model, base)])
        except ValueError as e:
            raise UsageError(f"--model {args.model}: {e}") from None
        changes["models_dir"] = linked
    settings = _settings(args, **changes)
    if not settings.models_dir.is_dir():
        raise UsageError(f"--models-dir {settings.models_dir} does not exist")
    try:
        with _exclusive(output):
            return await _run_batch_file(args, settings, output)
    finally:
        if linked is not None:
            shutil.rmtree(linked, ignore_errors=True)


async def _run_batch_file(args: argparse.Namespace, settings: Settings, output: Path) -> int:
    """The batch run proper, with `output` held."""
    # Imported here: app.main builds the module-level app of the environment's settings,
    # which a classify or score run has no use for.
    from app.main import create_app

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
        if not args.input.is_file():
            raise UsageError(f"input {args.input}: no such file")
        if args.command == "batch":
            return asyncio.run(predict_batch(args))
        output = _output_path(args, "predictions", args.input.suffix)
        settings = _settings(args, generation_worker="thread", max_input_chars=LONG,
                             max_request_chars=LONG, max_inputs=LONG,
                             **({"max_batch_size": args.batch_size} if args.batch_size else {}))
        with _exclusive(output):
            return asyncio.run(predict_table(args.input, output, args.column, args.model,
                                             args.command, settings, args.overwrite))
    except (UsageError, TableError) as e:
        parser.exit(2, f"{parser.prog}: error: {e}\n")
    except KeyboardInterrupt:
        sys.stderr.write(f"{parser.prog}: interrupted; run it again to continue\n")
        return 130


if __name__ == "__main__":
    sys.exit(main())
