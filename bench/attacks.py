"""`python -m bench.attacks`: fair share under attack (issue #24), one fresh server per attack.

Each attack is one request (or a set of them) that keeps within every per-field limit. For
each, a fresh server serves the shipped models with the default settings (generation in
worker processes). Four light clients, in a process of their own, run throughout, each one
request at a time on a new connection (as a new client comes) with a 30 s timeout (a timeout
is a failure): `/classify` of a short text, `/score` of a 35-character text, `/generate` of
16 tokens, and a `/generate_stream` of 16 tokens, timed to its first token. After a quiet
`--baseline`, the attack starts and the light clients go on for `--window` seconds; the
attacker gets until `--grace` seconds after the window, then its connections are closed.

Recorded per attack: the light clients' p50/p99 latency (successes) and failures among the
requests they started during the window, the server's resident memory before the attack,
after it (once the attacker is done and `--settle` seconds more) and its peak, the
attacker's answers and how long its work lasted. `--tree` serves another checkout (with
`PYTHONPATH` set to it, so that its `app`, `textrnn` and `training` are imported), the
models are this checkout's. The current tree runs with the service's own HTTP protocol
(`--http app.connections:Protocol`, as `textrnn-serve` does), a tree without
`app/connections.py` with uvicorn's. Prints a table, writes JSON to
bench/results/attacks-<label>-<time>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import os
import platform
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import httpx
import torch

from bench.run import ROOT, Server, _children, _pss_mb, _rss_mb

ADMIN_KEY = "bench-attacks-admin"
PROMPT = "ROMEO:\nBut soft, what light through yonder window breaks? It is the east. "
LIGHT = ("classify", "score", "generate", "stream")

# ---------------------------------------------------------------------------------------
# The light clients (a process of their own, so that the attacker's work here is not theirs)


async def _light_request(http: httpx.AsyncClient, name: str) -> tuple[int, float]:
    """One light request: its status and its latency (a stream's: to its first token)."""
    started = time.monotonic()
    if name == "classify":
        r = await http.post("/classify", json={"inputs": "a gripping , beautiful film"})
        return r.status_code, time.monotonic() - started
    if name == "score":
        r = await http.post("/score", json={"inputs": "To be, or not to be, that is the q",
                                            "model": "shakespeare"})
        return r.status_code, time.monotonic() - started
    if name == "generate":
        r = await http.post("/generate", json={"inputs": "ROMEO:",
                                               "parameters": {"max_new_tokens": 16}})
        return r.status_code, time.monotonic() - started
    first = None
    async with http.stream("POST", "/generate_stream", json={
            "inputs": "ROMEO:", "parameters": {"max_new_tokens": 16}}) as r:
        async for line in r.aiter_lines():
            if line.startswith("data:") and first is None:
                first = time.monotonic() - started
    if r.status_code == 200 and first is None:
        return 0, time.monotonic() - started  # a 200 without a token is a failure too
    return r.status_code, first if first is not None else time.monotonic() - started


async def _light_loop(url: str, name: str, end_at: float, timeout: float, pause: float,
                      records: list[tuple[str, float, float, bool, str]]) -> None:
    # No connection kept: each request on a new one, as a new client's would be.
    limits = httpx.Limits(max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=url, timeout=timeout, limits=limits) as http:
        while time.monotonic() < end_at:
            started = time.monotonic()
            try:
                status, latency = await asyncio.wait_for(_light_request(http, name), timeout)
                ok, what = 200 <= status < 300, str(status)
            except TimeoutError:
                ok, what, latency = False, "timeout", time.monotonic() - started
            except httpx.HTTPError as e:
                ok, what, latency = False, type(e).__name__, time.monotonic() - started
            records.append((name, started, latency, ok, what))
            await asyncio.sleep(pause if ok else max(pause, 0.1))


def _light_main(url: str, start_at: float, end_at: float, timeout: float, pause: float,
                conn: Connection) -> None:
    """The light clients from `start_at` to `end_at` (time.monotonic, shared by the
    processes); their requests go back over `conn`."""
    records: list[tuple[str, float, float, bool, str]] = []

    async def run() -> None:
        await asyncio.sleep(max(0.0, start_at - time.monotonic()))
        await asyncio.gather(*(_light_loop(url, name, end_at, timeout, pause, records)
                               for name in LIGHT))

    asyncio.run(run())
    conn.send(records)
    conn.close()


def _stats(records: list[tuple[str, float, float, bool, str]], start: float,
           end: float) -> dict[str, Any]:
    """Per light client, over the requests it started in [start, end): count, failures,
    their kinds, and p50/p99/max latency of the successes (ms)."""
    out: dict[str, Any] = {}
    for name in LIGHT:
        mine = [r for r in records if r[0] == name and start <= r[1] < end]
        good = sorted(r[2] * 1000 for r in mine if r[3])
        def pct(q: float, good: list[float] = good) -> float | None:
            return good[min(len(good) - 1, int(q * len(good)))] if good else None
        out[name] = {"requests": len(mine), "failures": sum(not r[3] for r in mine),
                     "failed_as": dict(Counter(r[4] for r in mine if not r[3])),
                     "p50_ms": statistics.median(good) if good else None,
                     "p99_ms": pct(0.99), "max_ms": good[-1] if good else None}
    return out


# ---------------------------------------------------------------------------------------
# The attacks


@dataclass
class Report:
    """What the attacker saw: its answers (status codes, or what happened instead)."""

    statuses: Counter[str] = field(default_factory=Counter)
    notes: dict[str, Any] = field(default_factory=dict)
    pending: int = 0  # requests sent and not answered (when the attacker is cut off)


@dataclass
class Context:
    url: str
    port: int
    window: float
    models: Path
    idle: int = 20_000


async def _completions(ctx: Context, report: Report) -> None:
    """1. POST /v1/completions, 64 prompts x n 8 x max_tokens 1024, three at once."""
    body = {"model": "shakespeare", "prompt": ["ROMEO:"] * 64, "n": 8, "max_tokens": 1024}
    report.notes["body_bytes"] = len(json.dumps(body))
    async with httpx.AsyncClient(base_url=ctx.url, timeout=None) as http:
        async def one() -> None:
            report.pending += 1
            r = await http.post("/v1/completions", json=body)
            report.pending -= 1
            report.statuses[str(r.status_code)] += 1
        await asyncio.gather(*(one() for _ in range(3)))


def _long_text(chars: int) -> str:
    return (PROMPT * (chars // len(PROMPT) + 1))[:chars]


async def _score(ctx: Context, report: Report, leave_after: float | None = None) -> None:
    """2. /score of 64 texts x 4,000 characters; with `leave_after`, the client disconnects."""
    body = {"inputs": [_long_text(4000)] * 64, "model": "shakespeare"}
    async with httpx.AsyncClient(base_url=ctx.url, timeout=None) as http:
        report.pending += 1
        try:
            r = await asyncio.wait_for(http.post("/score", json=body), leave_after)
            report.statuses[str(r.status_code)] += 1
        except TimeoutError:
            report.statuses[f"left after {leave_after:g} s"] += 1
        report.pending -= 1


async def _score_leaving(ctx: Context, report: Report) -> None:
    await _score(ctx, report, leave_after=2.0)


async def _stops(ctx: Context, report: Report) -> None:
    """3. 8 OpenAI streams at once, each with 16 stop sequences of 64 characters (that never
    match), max_tokens 1024, read to the end."""
    stops = [("e " * 31) + f"{i:02d}" for i in range(16)]
    body = {"model": "shakespeare", "prompt": "ROMEO:", "max_tokens": 1024, "stream": True,
            "stop": stops}
    events: list[int] = []
    async with httpx.AsyncClient(base_url=ctx.url, timeout=None) as http:
        async def one() -> None:
            n = 0
            report.pending += 1
            async with http.stream("POST", "/v1/completions", json=body) as r:
                async for line in r.aiter_lines():
                    n += line.startswith("data:")
            report.pending -= 1
            report.statuses[str(r.status_code)] += 1
            events.append(n)
        await asyncio.gather(*(one() for _ in range(8)))
    report.notes["events_per_stream"] = events


async def _raw_status(loop: asyncio.AbstractEventLoop, sock: socket.socket,
                      timeout: float) -> str:
    """The status of the answer on `sock`, or what came instead."""
    try:
        data = await asyncio.wait_for(loop.sock_recv(sock, 256), timeout)
    except TimeoutError:
        return "no answer"
    except OSError as e:
        return type(e).__name__
    if not data:
        return "closed"
    parts = data.split(b" ", 2)
    return parts[1].decode("ascii", "replace") if data.startswith(b"HTTP/") and len(parts) > 1 \
        else "other"


async def _big_header(ctx: Context, report: Report) -> None:
    """4. One header line of 64 MB, sent as fast as the socket takes it; no key."""
    loop = asyncio.get_running_loop()
    payload = (b"GET /health HTTP/1.1\r\nHost: x\r\nX-Filler: " + b"a" * (64 << 20)
               + b"\r\n\r\n")
    with socket.socket() as sock:
        sock.setblocking(False)
        await loop.sock_connect(sock, ("127.0.0.1", ctx.port))
        sent = 0
        view = memoryview(payload)
        try:
            while sent < len(payload):
                await loop.sock_sendall(sock, view[sent:sent + (1 << 20)])
                sent = min(len(payload), sent + (1 << 20))
            report.notes["sent_all"] = True
            status = await _raw_status(loop, sock, 600)
        except OSError as e:
            report.notes["send_error"] = type(e).__name__
            status = await _raw_status(loop, sock, 1.0)
        finally:
            report.notes["sent_mb"] = round(sent / 2**20, 1)
        report.statuses[status] += 1


def _hold_idle(port: int, count: int, until: float, conn: Connection) -> None:
    """Open `count` connections to `port` that never send a byte, hold them until `until`
    (time.monotonic) or until all are open if later, then say how many are still open,
    closed by the server or never connected, and close them."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    socks: list[socket.socket] = []
    errors: Counter[str] = Counter()
    began = time.monotonic()
    for _ in range(count):
        try:
            s = socket.socket()
        except OSError as e:
            errors[f"socket: {e.strerror}"] += 1
            break
        s.setblocking(False)
        err = s.connect_ex(("127.0.0.1", port))
        if err not in (0, 115):  # EINPROGRESS
            errors[os.strerror(err)] += 1
            s.close()
            continue
        socks.append(s)
    opened_s = time.monotonic() - began
    time.sleep(max(0.0, until - time.monotonic()))
    states: Counter[str] = Counter()
    for s in socks:
        if s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
            states["failed to connect"] += 1
            continue
        try:
            s.getpeername()
        except OSError:
            states["not connected"] += 1
            continue
        try:
            data = s.recv(64, socket.MSG_PEEK | socket.MSG_DONTWAIT)
            states["closed by the server" if not data else "answered"] += 1
        except BlockingIOError:
            states["open"] += 1
        except OSError as e:
            states[type(e).__name__] += 1
    for s in socks:
        s.close()
    conn.send({"opened": len(socks), "open_s": round(opened_s, 2), "errors": dict(errors),
               "at_end": dict(states), "nofile": [soft, hard]})
    conn.close()


async def _idle(ctx: Context, report: Report) -> None:
    """5. 20,000 connections (`--idle`) that never send a byte, held to the end of the
    window. They are opened by processes of their own (at most 10,000 each, within
    RLIMIT_NOFILE's hard limit), all at once."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    per, total = max(1, min(10_000, hard - 200)), ctx.idle
    until = time.monotonic() + ctx.window
    counts = [min(per, total - i) for i in range(0, total, per)]
    spawn = multiprocessing.get_context("spawn")
    procs, pipes = [], []
    for count in counts:
        mine, theirs = spawn.Pipe(duplex=False)
        p = spawn.Process(target=_hold_idle, args=(ctx.port, count, until, theirs))
        p.start()
        procs.append(p)
        pipes.append(mine)
    loop = asyncio.get_running_loop()
    try:
        held = [await loop.run_in_executor(None, pipe.recv) for pipe in pipes]
    finally:
        for p in procs:
            if p.is_alive():
                p.terminate()
            p.join()
    report.notes["processes"] = held
    for h in held:
        for state, n in h["at_end"].items():
            report.statuses[state] += n
        for err, n in h["errors"].items():
            report.statuses[err] += n


async def _unread(ctx: Context, report: Report) -> None:
    """6. 8 OpenAI streams of n 8 x max_tokens 1024 whose answers are never read (a 4 KiB
    receive buffer), held for the window."""
    loop = asyncio.get_running_loop()
    body = json.dumps({"model": "shakespeare", "prompt": "ROMEO:", "n": 8, "max_tokens": 1024,
                       "stream": True}).encode()
    head = (f"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode()
    socks = []
    try:
        for _ in range(8):
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            s.setblocking(False)
            socks.append(s)
            await loop.sock_connect(s, ("127.0.0.1", ctx.port))
            await loop.sock_sendall(s, head + body)
        await asyncio.sleep(ctx.window)
    finally:
        for s in socks:
            try:
                data = s.recv(16, socket.MSG_PEEK | socket.MSG_DONTWAIT)
                report.statuses[data.split(b" ")[1].decode() if data.startswith(b"HTTP/")
                                else "closed" if not data else "other"] += 1
            except BlockingIOError:
                report.statuses["nothing yet"] += 1
            except OSError as e:
                report.statuses[type(e).__name__] += 1
            s.close()


async def _reloads(ctx: Context, report: Report, count: int = 24) -> None:
    """7. 24 reloads (POST /admin/reload), every weights file touched before each so that
    both models really load again."""
    loaded = []
    async with httpx.AsyncClient(base_url=ctx.url, timeout=None) as http:
        for _ in range(count):
            for weights in ctx.models.glob("*/model.safetensors"):
                st = weights.stat()
                os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
            r = await http.post("/admin/reload", headers={"Authorization": f"Bearer {ADMIN_KEY}"})
            report.statuses[str(r.status_code)] += 1
            if r.status_code == 200:
                loaded.append(len(r.json().get("loaded", [])))
    report.notes["models_loaded_per_reload"] = dict(Counter(loaded))


Attack = Callable[[Context, Report], Awaitable[None]]
ATTACKS: dict[str, tuple[str, Attack]] = {
    "1": ("/v1/completions 64 prompts x n 8 x 1024 tokens, 3 at once", _completions),
    "2": ("/score 64 x 4,000 characters", _score),
    "2b": ("/score 64 x 4,000 characters, client leaves after 2 s", _score_leaving),
    "3": ("8 streams, 16 stops x 64 characters, 1024 tokens", _stops),
    "4": ("one 64 MB header line", _big_header),
    "5": ("20,000 idle connections", _idle),
    "6": ("8 unread streams, n 8 x 1024 tokens", _unread),
    "7": ("24 reloads, weights touched", _reloads),
}

# ---------------------------------------------------------------------------------------
# One attack against a fresh server


def _stop(server: Server, wait_s: float = 20.0) -> str:
    """SIGTERM, and SIGKILL for the server and its worker processes if it has not stopped
    within `wait_s` (an old server whose event loop is still busy with the attack)."""
    server._sampling = False
    pids = _children(server.proc.pid)
    server.proc.send_signal(signal.SIGTERM)
    try:
        server.proc.wait(timeout=wait_s)
        how = "stopped"
    except subprocess.TimeoutExpired:
        server.proc.kill()
        server.proc.wait()
        how = "killed"
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return how


def _cpu_s(pid: int) -> float:
    """CPU seconds (user and system) of the server and its worker processes so far."""
    total = 0
    for p in [pid, *_children(pid)]:
        with contextlib.suppress(OSError, ValueError):
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def _memory(pid: int) -> dict[str, float]:
    return {"rss_mb": round(_rss_mb(pid), 1), "pss_mb": round(_pss_mb(pid), 1)}


def _run_attack(key: str, args: argparse.Namespace, http_args: list[str],
                logs: Path) -> dict[str, Any]:
    title, attack = ATTACKS[key]
    if key == "5":
        title = title.replace("20,000", f"{args.idle:,}")
    print(f"  attack {key}: {title}", file=sys.stderr)
    with tempfile.TemporaryDirectory() as tmp:
        models = Path(tmp) / "models"
        shutil.copytree(ROOT / "models", models)  # a copy: the reloads touch its files
        env = {"PYTHONPATH": str(args.tree), "RNN_MODELS_DIR": str(models),
               "RNN_ADMIN_KEYS": ADMIN_KEY, "RNN_LOG_FORMAT": "text"}
        server = Server(env, cwd=args.tree, args=http_args, log=logs / f"server-{key}.log")
        ctx = Context(server.url, server.port, args.window, models, args.idle)
        spawn = multiprocessing.get_context("spawn")
        mine, theirs = spawn.Pipe(duplex=False)
        start_at = time.monotonic() + 2.0  # the light process's start-up
        attack_at = start_at + args.baseline
        end_at = attack_at + args.window
        light = spawn.Process(target=_light_main, args=(
            server.url, start_at, end_at, args.timeout, args.pause, theirs))
        light.start()
        report = Report()
        out: dict[str, Any] = {"attack": key, "title": title, "startup_s": server.startup_s}

        def count_fds() -> None:  # the server's open files near the window's end
            with contextlib.suppress(OSError):
                out["server_fds_at_window_end"] = len(os.listdir(f"/proc/{server.proc.pid}/fd"))

        fds = threading.Timer(max(0.0, end_at - 0.5 - time.monotonic()), count_fds)
        fds.start()
        try:
            time.sleep(max(0.0, attack_at - time.monotonic()))
            out["memory_before"] = _memory(server.proc.pid)
            server.peak_rss_mb = server.peak_pss_mb = 0.0
            cpu_before = _cpu_s(server.proc.pid)
            began = time.monotonic()

            async def attacked() -> bool:
                try:
                    await asyncio.wait_for(attack(ctx, report), args.window + args.grace)
                    return False
                except TimeoutError:
                    return True
                except (OSError, httpx.HTTPError) as e:
                    report.statuses[f"error {type(e).__name__}"] += 1
                    return False

            out["attacker_cut_off"] = asyncio.run(attacked())
            out["attacker_s"] = round(time.monotonic() - began, 2)
            if not mine.poll(end_at + args.timeout + 30 - time.monotonic()):
                raise RuntimeError("the light clients did not report")
            records = mine.recv()
            light.join()
            out["server_cpu_s"] = round(_cpu_s(server.proc.pid) - cpu_before, 1)
            out["memory_end"] = _memory(server.proc.pid)
            time.sleep(args.settle)
            out["memory_after"] = _memory(server.proc.pid)
            out["peak"] = {"rss_mb": round(server.peak_rss_mb, 1),
                           "pss_mb": round(server.peak_pss_mb, 1)}
            out["server_alive"] = server.proc.poll() is None
        finally:
            fds.cancel()
            if light.is_alive():
                light.terminate()
                light.join()
            out["server_stop"] = _stop(server)
        if report.pending:
            report.statuses["no answer (cut off)"] += report.pending
        out["attacker"] = {"statuses": dict(report.statuses), **report.notes}
        out["baseline"] = _stats(records, start_at + 0.5, attack_at)
        out["during"] = _stats(records, attack_at, end_at)
        # Every light request from the attack on: client, start (s after the attack's),
        # latency (ms), and its status or failure.
        out["timeline"] = [[r[0], round(r[1] - attack_at, 3), round(r[2] * 1000, 1), r[4]]
                           for r in records if r[1] >= attack_at]
    return out


# ---------------------------------------------------------------------------------------
# The table


def _ms(x: float | None) -> str:
    return "-" if x is None else f"{x:.0f}" if x >= 10 else f"{x:.1f}"


def _cell(s: dict[str, Any]) -> str:
    return f"{_ms(s['p50_ms'])} / {_ms(s['p99_ms'])}"


def _table(result: dict[str, Any]) -> str:
    label = result["label"]
    rows = [f"| {label}: attack | classify p50 / p99 ms | score p50 / p99 | generate p50 / p99 "
            "| stream TTFT p50 / p99 | light failures / requests | server RSS MB before -> "
            "after (peak) | attacker's answers | attacker's work s |",
            "|---|---|---|---|---|---|---|---|---|"]
    for run in result["attacks"]:
        d = run["during"]
        failures = sum(c["failures"] for c in d.values())
        total = sum(c["requests"] for c in d.values())
        failed = ", ".join(f"{n}: {c['failures']}" for n, c in d.items() if c["failures"])
        answers = ", ".join(f"{k} x{v}" for k, v in run["attacker"]["statuses"].items())
        lasted = f"> {run['attacker_s']:.0f} (cut off)" if run["attacker_cut_off"] \
            else f"{run['attacker_s']:.1f}"
        rows.append(f"| {run['attack']}. {run['title']} | {_cell(d['classify'])} | "
                    f"{_cell(d['score'])} | {_cell(d['generate'])} | {_cell(d['stream'])} | "
                    f"{failures} / {total}" + (f" ({failed})" if failed else "") + " | "
                    f"{run['memory_before']['rss_mb']:.0f} -> {run['memory_after']['rss_mb']:.0f}"
                    f" ({run['peak']['rss_mb']:.0f}) | {answers} | {lasted} |")
    quiet = {name: statistics.median(r["baseline"][name]["p99_ms"] for r in result["attacks"]
                                     if r["baseline"][name]["p99_ms"] is not None)
             for name in LIGHT if any(r["baseline"][name]["p99_ms"] is not None
                                      for r in result["attacks"])}
    rows.append("")
    rows.append("quiet baseline before each attack, median of the p99s (ms): " + ", ".join(
        f"{k} {_ms(v)}" for k, v in quiet.items()))
    m = result["machine"]
    rows.append(f"{label}: commit {result['commit']}, {m['cores']} cores, {m['processor'] or m['platform']}, "
                f"load before the run {result['load_before']}")
    return "\n".join(rows)


def _cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def _git(tree: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=tree, capture_output=True, text=True).stdout.strip()


def main() -> None:
    """Run the attacks."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tree", type=Path, default=ROOT, help="the checkout whose server to run")
    p.add_argument("--label", default="after", help="before or after: names the results")
    p.add_argument("--only", default="", help="comma-separated attacks, e.g. 1,2b,5")
    p.add_argument("--window", type=float, default=15.0, help="seconds of attack measured")
    p.add_argument("--baseline", type=float, default=3.0, help="quiet seconds before it")
    p.add_argument("--grace", type=float, default=30.0,
                   help="seconds after the window the attacker may go on before it is cut off")
    p.add_argument("--timeout", type=float, default=30.0, help="a light request's timeout")
    p.add_argument("--pause", type=float, default=0.05, help="a light client's pause between "
                   "requests")
    p.add_argument("--settle", type=float, default=3.0,
                   help="seconds after the attack before its memory is read")
    p.add_argument("--idle", type=int, default=20_000,
                   help="attack 5's connections (the server's file limit is this process's)")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = p.parse_args()
    args.tree = args.tree.resolve()
    keys = args.only.split(",") if args.only else list(ATTACKS)
    unknown = [k for k in keys if k not in ATTACKS]
    if unknown:
        p.error(f"no attack {', '.join(unknown)}; there are {', '.join(ATTACKS)}")
    # The server inherits this process's file limit: as high as it may go.
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    env = os.environ | {"PYTHONPATH": str(args.tree)}
    imported = subprocess.run(
        [sys.executable, "-c", "import app, textrnn, training; "
         "print(app.__file__, textrnn.__file__, training.__file__)"],
        cwd=args.tree, env=env, capture_output=True, text=True, check=True).stdout.split()
    if not all(Path(f).is_relative_to(args.tree) for f in imported):
        raise SystemExit(f"the server would import {imported}, not {args.tree}'s packages")
    print(f"  {args.label}: serving {args.tree} ({', '.join(imported)})", file=sys.stderr)
    http_args = (["--http", "app.connections:Protocol"]
                 if (args.tree / "app" / "connections.py").exists() else [])
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    logs = Path(tempfile.mkdtemp(prefix=f"attacks-{args.label}-"))
    result: dict[str, Any] = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"), "label": args.label,
        "tree": str(args.tree), "commit": _git(args.tree, "rev-parse", "--short", "HEAD"),
        "bench_commit": _git(ROOT, "rev-parse", "--short", "HEAD"), "imported": imported,
        "http": http_args, "server_logs": str(logs),
        "load_before": Path("/proc/loadavg").read_text().split()[:3],
        "machine": {"platform": platform.platform(), "processor": _cpu_name(),
                    "cores": os.cpu_count(), "torch": torch.__version__,
                    "python": platform.python_version(), "nofile": hard,
                    "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
                                       / 2**30, 1)},
        "settings": vars(args) | {"tree": str(args.tree), "out": str(args.out)},
        "attacks": []}
    for key in keys:
        result["attacks"].append(_run_attack(key, args, http_args, logs))
    result["load_after"] = Path("/proc/loadavg").read_text().split()[:3]
    table = _table(result)
    print(table)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"attacks-{args.label}-{stamp}.json"
    path.write_text(json.dumps(result, indent=1) + "\n")
    print(f"written to {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")


if __name__ == "__main__":
    main()
