"""`python -m bench.openloop`: continuous batching (the service) against static batching
(`bench.static_server`) under the same open-loop load, in one run.

Requests arrive as a Poisson process at each `--rates` value for `--seconds`, whether or not
earlier ones were answered; `max_new_tokens` is drawn uniformly from [--min-tokens,
--max-tokens]; a `--stream-share` of them stream. Both servers get the identical schedule
(seeded), in turns per rate. A request's latency runs from its scheduled arrival. Prints a
markdown table and writes bench/results/openloop-<UTC time>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import torch

from bench.http import Connection
from bench.load import percentile
from bench.run import ROOT, Server, _free_port, wait_until_ready

__all__ = ["Arrival", "drive", "make_schedule", "summarise"]

PROMPTS = ["ROMEO:", "JULIET:\n", "KING HENRY:\nWhat", "First Citizen:\nBefore we proceed",
           "HAMLET:\nTo be", "MENENIUS:\nI tell you, friends,"]


@dataclass(frozen=True)
class Arrival:
    """One scheduled request: when (seconds from the start), how long, streamed or not."""

    at: float
    max_new_tokens: int
    stream: bool
    seed: int
    prompt: str


def make_schedule(rate: float, seconds: float, min_tokens: int, max_tokens: int,
                  stream_share: float, seed: int) -> list[Arrival]:
    """Poisson arrivals at `rate` per second over `seconds`, `max_new_tokens` uniform in
    [min_tokens, max_tokens]; the same arguments give the same schedule."""
    rng = random.Random(f"{seed}:{rate}")  # a str seed hashes the same in every process
    out: list[Arrival] = []
    at = rng.expovariate(rate)
    while at < seconds:
        out.append(Arrival(at, rng.randint(min_tokens, max_tokens), rng.random() < stream_share,
                           rng.randrange(2**53), rng.choice(PROMPTS)))
        at += rng.expovariate(rate)
    return out


@dataclass
class Outcome:
    """What happened to one request: seconds from its scheduled arrival."""

    stream: bool
    wanted: int  # max_new_tokens
    tokens: int = 0
    first_s: float | None = None
    done_s: float | None = None
    error: str | None = None


async def _one(host: str, port: int, arrival: Arrival, scheduled: float) -> Outcome:
    body = {"inputs": arrival.prompt, "parameters": {
        "max_new_tokens": arrival.max_new_tokens, "temperature": 0.8, "top_k": 40,
        "top_p": 0.95, "seed": arrival.seed}}
    out = Outcome(arrival.stream, arrival.max_new_tokens)
    conn = Connection(host, port)  # one connection per request: no client-side queueing
    try:
        if arrival.stream:
            status = 0
            async for part in conn.stream("/generate_stream", body):
                if isinstance(part, int):
                    status = part
                    continue
                if out.first_s is None and b'"token"' in part:
                    out.first_s = time.perf_counter() - scheduled
                out.tokens += part.count(b'"token"')
                if b'"error"' in part:
                    out.error = "in-band error"
        else:
            status, _ = await conn.request("POST", "/generate", body)
            if status == 200:
                out.tokens = arrival.max_new_tokens  # no stop sequences: it ends by length
                out.first_s = time.perf_counter() - scheduled  # the whole answer is its first
        if status != 200:
            out.error = str(status)
        elif out.error is None and out.tokens != arrival.max_new_tokens:
            out.error = f"{out.tokens} of {arrival.max_new_tokens} tokens"
        out.done_s = time.perf_counter() - scheduled
    except (OSError, asyncio.IncompleteReadError) as e:
        out.error = type(e).__name__
    finally:
        await conn.close()
    return out


async def drive(url: str, arrivals: list[Arrival], drain_s: float) -> tuple[list[Outcome], float]:
    """Send each arrival at its time without waiting for earlier answers; wait at most
    `drain_s` after the last arrival for the rest. The outcomes, and the seconds from the
    start to the last answer."""
    host, _, port = url.removeprefix("http://").partition(":")
    start = time.perf_counter() + 0.05
    tasks: list[asyncio.Task[Outcome]] = []
    for arrival in arrivals:
        scheduled = start + arrival.at
        await asyncio.sleep(max(0.0, scheduled - time.perf_counter()))
        tasks.append(asyncio.create_task(_one(host, int(port), arrival, scheduled)))
    finished, unfinished = await asyncio.wait(tasks, timeout=drain_s) if tasks else (set(), set())
    for task in unfinished:
        task.cancel()
    outcomes = [t.result() if t in finished else Outcome(a.stream, a.max_new_tokens,
                                                          error="unfinished")
                for t, a in zip(tasks, arrivals, strict=True)]
    ends = [a.at + o.done_s for a, o in zip(arrivals, outcomes, strict=True) if o.done_s is not None]
    return outcomes, max([*ends, arrivals[-1].at if arrivals else 0.0])


def summarise(outcomes: list[Outcome], elapsed: float) -> dict[str, Any]:
    """Throughput over `elapsed` (start to last answer), latency and time to first token
    percentiles over the answered requests, and the errors by kind. Latency per token is a
    request's latency over its length (the mix of lengths is wide); time per output token is
    a stream's time from its first token to its last, per token after the first."""
    ok = [o for o in outcomes if o.error is None and o.done_s is not None]
    streams = [o.first_s for o in ok if o.stream and o.first_s is not None]
    firsts = [o.first_s for o in ok if o.first_s is not None]
    done = [o.done_s for o in ok if o.done_s is not None]
    per_token = [o.done_s / o.wanted for o in ok if o.done_s is not None]
    tpot = [(o.done_s - o.first_s) / (o.tokens - 1) for o in ok if o.stream and o.tokens > 1
            and o.done_s is not None and o.first_s is not None]
    elapsed = max(elapsed, 1e-9)
    return {"requests": len(outcomes), "completed": len(ok),
            "requests_per_s": len(ok) / elapsed,
            "tokens_per_s": sum(o.tokens for o in ok) / elapsed, "elapsed_s": elapsed,
            "p50_ms": percentile(done, 50) * 1000, "p99_ms": percentile(done, 99) * 1000,
            "ttft_p50_ms": percentile(firsts, 50) * 1000, "ttft_p99_ms": percentile(firsts, 99) * 1000,
            "stream_ttft_p50_ms": percentile(streams, 50) * 1000,
            "stream_ttft_p99_ms": percentile(streams, 99) * 1000,
            "per_token_p50_ms": percentile(per_token, 50) * 1000,
            "per_token_p99_ms": percentile(per_token, 99) * 1000,
            "tpot_p50_ms": percentile(tpot, 50) * 1000, "tpot_p99_ms": percentile(tpot, 99) * 1000,
            "errors": dict(Counter(o.error for o in outcomes if o.error is not None))}


class StaticServer:
    """The static-batching baseline under uvicorn in a subprocess."""

    def __init__(self, max_batch: int, window_ms: float, weights: str, flush_ms: float) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {"STATIC_MODEL": str(ROOT / "models" / "shakespeare"),
               "STATIC_MAX_BATCH": str(max_batch), "STATIC_WINDOW_MS": str(window_ms),
               "STATIC_FLUSH_MS": str(flush_ms), "RNN_WEIGHTS": weights}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "--factory", "bench.static_server:app_from_env",
             "--host", "127.0.0.1", "--port", str(self.port), "--log-level", "warning",
             "--no-access-log"], cwd=ROOT, env=os.environ | env,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until_ready(self.url, self.proc, "static baseline")

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=60)


def _steps(url: str) -> tuple[float, float]:
    """(model steps, rows over those steps) so far: the baseline's /stats, or the service's
    rnn_batch_size histogram for the language model (one observation per step)."""
    stats = httpx.get(f"{url}/stats", timeout=30)
    if stats.status_code == 200:
        body = stats.json()
        return float(body["steps"]), float(body["rows_stepped"])
    values = {}
    for line in httpx.get(f"{url}/metrics", timeout=30).text.splitlines():
        name, _, value = line.rpartition(" ")
        if name in ('rnn_batch_size_count{model="shakespeare"}',
                    'rnn_batch_size_sum{model="shakespeare"}'):
            values[name.split("{")[0]] = float(value)
    return values.get("rnn_batch_size_count", 0.0), values.get("rnn_batch_size_sum", 0.0)


def _warm(url: str) -> None:
    """One short request of each kind, so neither server's first batch pays its start-up."""
    for path in ("/generate", "/generate_stream"):
        httpx.post(f"{url}{path}", json={"inputs": "ROMEO:", "parameters": {
            "max_new_tokens": 16, "seed": 1}}, timeout=60).raise_for_status()


def _best(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The repeat that completed the most requests, then with the lowest p99 latency, with
    every repeat beside it: interference from the machine's other work only ever slows a
    run down."""
    def key(r: dict[str, Any]) -> tuple[int, float]:
        p99 = float(r["p99_ms"])
        return -int(r["completed"]), math.inf if math.isnan(p99) else p99
    return min(runs, key=key) | {"runs": runs}


def _table(result: dict[str, Any]) -> str:
    rows = ["| rate req/s | server | completed req/s | tokens/s | p50 ms | p99 ms | "
            "TTFT p50 ms | TTFT p99 ms | stream TTFT p50 ms | stream TTFT p99 ms | "
            "ms per token p50 / p99 | stream TPOT p50 / p99 ms | rows per step | errors |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for level in result["levels"]:
        for name in ("continuous", "static"):
            r = level[name]
            errors = ", ".join(f"{k}: {v}" for k, v in r["errors"].items())
            rows.append(f"| {level['rate']:g} | {name} | {r['requests_per_s']:.2f} | "
                        f"{r['tokens_per_s']:.0f} | {r['p50_ms']:.0f} | {r['p99_ms']:.0f} | "
                        f"{r['ttft_p50_ms']:.0f} | {r['ttft_p99_ms']:.0f} | "
                        f"{r['stream_ttft_p50_ms']:.0f} | {r['stream_ttft_p99_ms']:.0f} | "
                        f"{r['per_token_p50_ms']:.1f} / {r['per_token_p99_ms']:.1f} | "
                        f"{r['tpot_p50_ms']:.1f} / {r['tpot_p99_ms']:.1f} | "
                        f"{r['rows_per_step']:.1f} | {errors} |")
    return "\n".join(rows)


def main() -> None:
    """Run the benchmark."""
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--rates", type=float, nargs="+", default=[2, 4, 8, 16])
    p.add_argument("--seconds", type=float, default=30.0, help="arrivals per rate and server")
    p.add_argument("--min-tokens", type=int, default=16)
    p.add_argument("--max-tokens", type=int, default=512)
    p.add_argument("--stream-share", type=float, default=0.5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--repeats", type=int, default=1,
                   help="runs of each rate per server, in alternating turns; the best p99 is kept")
    p.add_argument("--drain-s", type=float, default=90.0,
                   help="wait after the last arrival for the answers still due")
    p.add_argument("--max-batch", type=int, default=64,
                   help="the baseline's N, and the service's RNN_MAX_ACTIVE_SEQUENCES")
    p.add_argument("--window-ms", type=float, default=5.0, help="the baseline's batch window")
    p.add_argument("--weights", choices=("float16", "float32"), default="float16")
    p.add_argument("--generation-worker", choices=("auto", "thread", "process"), default="auto",
                   help="the service's RNN_GENERATION_WORKER")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = p.parse_args()
    service = Server({"RNN_THREADS": "1", "RNN_DEVICE": "cpu", "RNN_WEIGHTS": args.weights,
                      "RNN_GENERATION_WORKER": args.generation_worker,
                      "RNN_MAX_ACTIVE_SEQUENCES": str(args.max_batch)})
    static: StaticServer | None = None
    levels = []
    try:
        static = StaticServer(args.max_batch, args.window_ms, args.weights, 20.0)
        servers = {"continuous": service.url, "static": static.url}
        for url in servers.values():
            _warm(url)
        for i, rate in enumerate(args.rates):
            arrivals = make_schedule(rate, args.seconds, args.min_tokens, args.max_tokens,
                                     args.stream_share, args.seed)
            level: dict[str, Any] = {"rate": rate, "arrivals": len(arrivals), "offered_tokens_per_s":
                                     sum(a.max_new_tokens for a in arrivals) / args.seconds}
            runs: dict[str, list[dict[str, Any]]] = {name: [] for name in servers}
            for turn in range(args.repeats):
                # Turns alternate which server goes first (A B, B A, ...), so the machine's
                # drift falls on both alike.
                for name in (list(servers) if (i + turn) % 2 == 0 else list(reversed(servers))):
                    steps, rows = _steps(servers[name])
                    outcomes, elapsed = asyncio.run(drive(servers[name], arrivals, args.drain_s))
                    steps_after, rows_after = _steps(servers[name])
                    run = summarise(outcomes, elapsed) | {
                        "steps": steps_after - steps,
                        "rows_per_step": (rows_after - rows) / max(1.0, steps_after - steps),
                        "load_average_1m": os.getloadavg()[0],
                        "outcomes": [asdict(o) | {"at": a.at} for o, a in
                                     zip(outcomes, arrivals, strict=True)]}
                    runs[name].append(run)
                    print(f"  rate {rate:g}: {name} {run['tokens_per_s']:.0f} tokens/s, "
                          f"p99 {run['p99_ms']:.0f} ms", file=sys.stderr)
            for name, done in runs.items():
                level[name] = _best(done)
            levels.append(level)
    finally:
        service.stop()
        if static is not None:
            static.stop()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                            text=True).stdout.strip()
    result = {"when": datetime.now(UTC).isoformat(timespec="seconds"), "commit": commit,
              "machine": {"platform": platform.platform(), "cores": os.cpu_count(),
                          "load_average": os.getloadavg(), "torch": torch.__version__,
                          "python": platform.python_version()},
              "settings": vars(args) | {"out": str(args.out), "tokens_distribution": "uniform"},
              "levels": levels}
    table = _table(result)
    print(table)
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    (args.out / f"openloop-{stamp}.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
