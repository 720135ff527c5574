"""Run every HTTP example in the docs against a real server; check or rewrite its output.

An example in a markdown file is a request block and an output block between markers:

    <!-- example:classify -->
    ```bash
    curl -s localhost:8000/classify -H 'content-type: application/json' -d '{"inputs": "Fine."}'
    ```
    <!-- output:classify -->
    ```json
    [[{"label":"positive","score":0.98},{"label":"negative","score":0.02}]]
    ```
    <!-- /output -->

The request is parsed from the doc itself (one curl command; `-s -S -N -X -H -d -w` are
understood), so the docs show exactly what runs. The server is `uvicorn app.main:app` on a free
loopback port, serving the shipped models on the CPU with every other setting at its default;
`--url` uses a server that is already running instead.

JSON answers are shown laid out for reading (a value that fits on a line stays on one line);
server-sent events as the server writes them. Outputs are compared as values: strings, token
ids and counts exactly (a seeded generation gives the same text), other numbers within a
relative 1e-3 and absolute 1e-4, which float16 weights on another CPU stay within.

    python scripts/docs_examples.py --check     # exit 1 and a diff when an output differs
    python scripts/docs_examples.py --write     # rewrite the outputs that differ
    python scripts/docs_examples.py --write --all   # ... and those that differ in layout only
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import json
import math
import os
import re
import shlex
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

ROOT = Path(__file__).resolve().parents[1]
REL_TOL, ABS_TOL = 1e-3, 1e-4
WIDTH = 120  # a JSON value longer than this is spread over lines

_LINES = r"(?:(?!```)[^\n]*\n)"  # whole lines, none of them a fence
EXAMPLE = re.compile(
    rf"<!-- example:(?P<name>[\w.-]+) -->\n```[\w-]*\n(?P<request>{_LINES}+)```\n"
    rf"<!-- output:(?P=name) -->\n```(?P<lang>[\w-]*)\n(?P<output>{_LINES}*)```\n<!-- /output -->")
MARKER = re.compile(r"<!-- (?:example|output):[\w.-]+ -->")


class ExampleError(ValueError):
    """A doc's example that cannot be run as written (unknown curl option, bad markers)."""


@dataclass
class Request:
    """One HTTP request, as a curl command in the docs describes it."""

    method: str
    path: str
    headers: dict[str, str] = field(default_factory=dict)
    data: str | None = None
    write_out: str | None = None  # curl's -w format


@dataclass
class Example:
    """A request and its documented output, with where the output sits in its file."""

    file: Path
    name: str
    request: Request
    output: str
    span: tuple[int, int]  # character offsets of the output text in the file


@dataclass
class Mismatch:
    """An example whose documented output is not what the server answered."""

    example: Example
    actual: str

    def describe(self) -> str:
        """The file, the example and a unified diff of documented against actual."""
        diff = difflib.unified_diff(self.example.output.splitlines(), self.actual.splitlines(),
                                    "documented", "server", lineterm="")
        return f"{self.example.file}: example '{self.example.name}' differs\n" + "\n".join(diff)


def parse_curl(command: str) -> Request:
    """The request a curl command line makes (the subset the docs use)."""
    words = shlex.split(command.replace("\\\n", " "))
    if not words or words[0] != "curl":
        raise ExampleError(f"an example's request must be one curl command, got {command[:60]!r}")
    method, url, headers, data, write_out = None, None, {}, None, None
    rest = iter(words[1:])
    for word in rest:
        if word in ("-X", "--request"):
            method = next(rest)
        elif word in ("-H", "--header"):
            key, _, value = next(rest).partition(":")
            headers[key.strip()] = value.strip()
        elif word in ("-d", "--data", "--data-raw"):
            data = next(rest)
        elif word in ("-w", "--write-out"):
            write_out = next(rest)
        elif re.fullmatch(r"-[sSN]+", word):
            pass  # silent, show errors, no buffering: the output is the same
        elif word.startswith("-"):
            raise ExampleError(f"curl option {word} is not understood by {Path(__file__).name}")
        elif url is None:
            url = word
        else:
            raise ExampleError(f"a second URL {word!r} in {command[:60]!r}")
    if url is None:
        raise ExampleError(f"no URL in {command[:60]!r}")
    parts = urlsplit(url if "://" in url else "http://" + url)
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return Request(method or ("POST" if data is not None else "GET"), path, headers, data,
                   write_out)


def find_examples(path: Path) -> list[Example]:
    """Every example in a markdown file; a marker outside a complete example is an error."""
    text = path.read_text(encoding="utf-8")
    examples = []
    for m in EXAMPLE.finditer(text):
        examples.append(Example(path, m["name"], parse_curl(m["request"].strip()), m["output"],
                                m.span("output")))
    names = [e.name for e in examples]
    if len(set(names)) != len(names):
        raise ExampleError(f"{path}: example names repeat: {sorted(names)}")
    stray = len(MARKER.findall(text)) - 2 * len(examples)
    if stray:
        raise ExampleError(f"{path}: {stray} example or output marker(s) outside a complete "
                           "example (request block, output marker, output block, <!-- /output -->)")
    return examples


def layout(value: Any, indent: int = 0) -> str:
    """JSON laid out for reading: a value that fits in WIDTH stays on one line."""
    flat = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    if indent + len(flat) <= WIDTH or not isinstance(value, dict | list) or not value:
        return flat
    pad = " " * (indent + 1)
    if isinstance(value, list):
        items = [layout(v, indent + 1) for v in value]
        return "[" + f",\n{pad}".join(items) + "]"
    items = []
    for key, v in value.items():
        head = json.dumps(key, ensure_ascii=False) + ":"
        items.append(head + layout(v, indent + 1 + len(head)))
    return "{" + f",\n{pad}".join(items) + "}"


def _suffix(write_out: str | None, status: int) -> str:
    if write_out is None:
        return ""
    return write_out.replace("%{http_code}", str(status)).replace("\\n", "\n")


def render(request: Request, response: httpx.Response) -> str:
    """What the docs show for an answer: JSON laid out, anything else as sent."""
    body = response.text
    if response.headers.get("content-type", "").startswith("application/json"):
        body = layout(response.json())
    text = body.rstrip("\n") + _suffix(request.write_out, response.status_code)
    return text.rstrip("\n") + "\n"


def _values(text: str, request: Request, status: int) -> Any:
    """An output as values to compare: parsed JSON, a list of stream events, or lines."""
    suffix = _suffix(request.write_out, status).rstrip("\n")
    text = text.rstrip("\n")
    if suffix:
        if not text.endswith(suffix):
            return ("text", text)
        text = text[: -len(suffix)]
    events = [line[len("data: "):] for line in text.splitlines() if line.startswith("data: ")]
    try:
        if events:
            return ("events", [json.loads(e) for e in events])
        return ("json", json.loads(text))
    except json.JSONDecodeError:
        return ("text", text)


def same(documented: Any, actual: Any) -> bool:
    """Equal as values: numbers that are not both integers within the tolerance."""
    if isinstance(documented, bool) or isinstance(actual, bool):
        return documented is actual
    if isinstance(documented, int) and isinstance(actual, int):
        return documented == actual
    if isinstance(documented, int | float) and isinstance(actual, int | float):
        return math.isclose(documented, actual, rel_tol=REL_TOL, abs_tol=ABS_TOL)
    if isinstance(documented, dict) and isinstance(actual, dict):
        return documented.keys() == actual.keys() and all(
            _volatile(k, documented[k], actual[k]) or same(documented[k], actual[k])
            for k in documented)
    if isinstance(documented, list | tuple) and isinstance(actual, list | tuple):
        return len(documented) == len(actual) and all(map(same, documented, actual))
    return bool(documented == actual)


def _volatile(key: str, documented: Any, actual: Any) -> bool:
    """Fields that differ on every call by design: an OpenAI answer's id and creation time."""
    if key == "created":
        return isinstance(documented, int) and isinstance(actual, int)
    return (key == "id" and isinstance(documented, str) and isinstance(actual, str)
            and documented.split("-")[0] == actual.split("-")[0] in ("cmpl", "chatcmpl"))


def run_example(client: httpx.Client, example: Example) -> tuple[str, int]:
    """The server's answer to an example, rendered as the docs show it, and its status."""
    req = example.request
    response = client.request(req.method, req.path, headers=req.headers,
                              content=None if req.data is None else req.data.encode())
    return render(req, response), response.status_code


def check(files: list[Path], url: str, exact: bool = False
          ) -> tuple[list[Example], list[Mismatch]]:
    """Run every example of the files against the server at `url`; the ones that differ (as
    values, or with `exact` in any character)."""
    examples = [e for path in files for e in find_examples(path)]
    mismatches = []
    with httpx.Client(base_url=url, timeout=60) as client:
        for example in examples:
            actual, status = run_example(client, example)
            documented = _values(example.output, example.request, status)
            if (exact and actual != example.output) or not same(
                    documented, _values(actual, example.request, status)):
                mismatches.append(Mismatch(example, actual))
    return examples, mismatches


def write(mismatches: list[Mismatch]) -> None:
    """Put the server's output in place of each documented output that differs."""
    by_file: dict[Path, list[Mismatch]] = {}
    for m in mismatches:
        by_file.setdefault(m.example.file, []).append(m)
    for path, items in by_file.items():
        text = path.read_text(encoding="utf-8")
        for m in sorted(items, key=lambda m: -m.example.span[0]):  # back to front: spans hold
            start, end = m.example.span
            text = text[:start] + m.actual + text[end:]
        path.write_text(text, encoding="utf-8")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


SHIPPED = ("sentiment", "shakespeare")


@contextlib.contextmanager
def serve(models_dir: Path, python: str = sys.executable, timeout_s: float = 120
          ) -> Iterator[str]:
    """`uvicorn app.main:app` on a free loopback port serving the shipped models of
    `models_dir` on the CPU with every other setting at its default; yields its URL once
    ready, stops it after. Other folders there (a user's own models) are left out: the docs
    show what a fresh checkout answers."""
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RNN_")}
    # The server's output goes to a file: a pipe nobody reads would fill and stall it.
    with tempfile.TemporaryFile() as log, tempfile.TemporaryDirectory() as shipped:
        for name in SHIPPED:
            if (models_dir / name).is_dir():
                (Path(shipped) / name).symlink_to((models_dir / name).resolve())
        # On the CPU even where a GPU is present: the docs show the CPU's (float16) answers.
        env |= {"RNN_MODELS_DIR": shipped, "RNN_DEVICE": "cpu"}
        proc = subprocess.Popen([python, "-m", "uvicorn", "app.main:app", "--host", "127.0.0.1",
                                 "--port", str(port), "--log-level", "warning"],
                                cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + timeout_s
            while True:
                with contextlib.suppress(httpx.TransportError):
                    if httpx.get(f"{url}/health/ready", timeout=2).status_code == 200:
                        break
                if proc.poll() is not None or time.monotonic() > deadline:
                    log.seek(0)
                    raise RuntimeError(f"the server did not become ready at {url}\n"
                                       + log.read().decode(errors="replace")[-4000:])
                time.sleep(0.1)
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def default_files() -> list[Path]:
    """README.md and every page under docs/."""
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def main(argv: list[str] | None = None) -> int:
    """Check (exit 1 on a difference) or rewrite the documented outputs."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--check", action="store_true", help="report differences (the default)")
    mode.add_argument("--write", action="store_true", help="rewrite outputs that differ")
    p.add_argument("--all", action="store_true",
                   help="with --write: rewrite every output that is not character for character "
                        "the server's (layout, last digits), not only those that differ as values")
    p.add_argument("--url", help="a running server to use instead of starting one")
    p.add_argument("--models", type=Path, default=ROOT / "models", help="models to serve")
    p.add_argument("files", nargs="*", type=Path, help="markdown files (default: README, docs/)")
    args = p.parse_args(argv)
    files = args.files or default_files()
    try:
        for path in files:
            find_examples(path)  # fail on a malformed example before starting a server
        with contextlib.ExitStack() as stack:
            url = args.url or stack.enter_context(serve(args.models))
            examples, mismatches = check(files, url, exact=args.write and args.all)
    except ExampleError as e:
        sys.stderr.write(f"error: {e}\n")
        return 2
    if args.write:
        write(mismatches)
        sys.stdout.write(f"{len(examples)} examples; {len(mismatches)} outputs rewritten\n")
        return 0
    for m in mismatches:
        sys.stdout.write(m.describe() + "\n")
    sys.stdout.write(f"{len(examples)} examples; {len(mismatches)} differ\n")
    return 1 if mismatches else 0


if __name__ == "__main__":
    raise SystemExit(main())
