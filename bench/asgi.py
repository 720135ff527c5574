"""`python -m bench.asgi`: the service's own per-request cost on the event loop, in process.

Requests are handed straight to the ASGI app (no sockets, no uvicorn) with the model's work
replaced by a ready answer, so what is timed is what every request costs the event loop
before and after inference: middleware, routing, validation, the batcher's bookkeeping and
the answer's serialisation. Prints a table and writes bench/results/asgi-<time>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from app.main import create_app
from app.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
CASES = {  # name: (method, path, content type, body)
    "GET /health/live": ("GET", "/health/live", None, b""),
    "POST /classify (fast path)": ("POST", "/classify", b"application/json",
                                   b'{"inputs": "a very good movie , full of heart"}'),
    "POST /classify (FastAPI route)": ("POST", "/classify", b"application/x-bench+json",
                                       b'{"inputs": "a very good movie , full of heart"}'),
}


async def _call(app: Any, method: str, path: str, ctype: bytes | None, body: bytes) -> int:
    headers = [(b"host", b"bench")]
    if ctype is not None:
        headers += [(b"content-type", ctype), (b"content-length", str(len(body)).encode())]
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
             "method": method, "scheme": "http", "path": path, "raw_path": path.encode(),
             "query_string": b"", "root_path": "", "headers": headers,
             "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 8000), "state": {}}
    messages = [{"type": "http.request", "body": body, "more_body": False}]
    status = 0

    async def receive() -> dict[str, Any]:
        if messages:
            return messages.pop()
        await asyncio.Event().wait()  # the client never leaves
        raise AssertionError

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    await app(scope, receive, send)
    return status


async def _run(requests: int) -> dict[str, float]:
    app = create_app(Settings(models_dir=ROOT / "models", log_format="text"))
    async with app.router.lifespan_context(app):
        entry = app.state.registry.get(None, "classify")
        labels = len(entry.artifact.labels)

        def ready(texts: list[str]) -> asyncio.Future[list[list[float]]]:
            future = asyncio.get_running_loop().create_future()
            future.set_result([[1.0 / labels] * labels for _ in texts])
            return future

        entry.classify.submit = ready  # the model's work is not what is measured here
        out = {}
        for name, case in CASES.items():
            for _ in range(200):  # warm-up
                assert await _call(app, *case) == 200, name
            start = time.perf_counter()
            for _ in range(requests):
                await _call(app, *case)
            out[name] = (time.perf_counter() - start) / requests * 1e6
        return out


def main() -> None:
    """Run each case sequentially and report microseconds per request."""
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--requests", type=int, default=5000)
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = p.parse_args()
    result = asyncio.run(_run(args.requests))
    print("| request | us per request (event loop, in process) |\n|---|---|")
    for name, us in result.items():
        print(f"| {name} | {us:.0f} |")
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    (args.out / f"asgi-{stamp}.json").write_text(json.dumps(
        {"when": stamp, "cores": os.cpu_count(), "requests": args.requests,
         "us_per_request": result}, indent=2))


if __name__ == "__main__":
    main()
