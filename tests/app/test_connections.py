"""Connection hygiene on a real uvicorn: the request head's size (431 one byte past the limit,
at the limit served), its time (408 for a partial head, a silent connection closed), and the
number of connections (idle ones make room; 503 when all are busy), each next to a light
client that keeps being served."""

from __future__ import annotations

import json
import re
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import suppress
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from app.connections import HygienicProtocol
from app.main import create_app
from app.settings import Settings
from tests.app.conftest import running_server, server_process, slowed_steps

HEAD_LIMIT = 2048


@pytest.fixture(scope="module")
def served(models_dir: Path) -> Iterator[tuple[str, Any]]:
    app = create_app(Settings(models_dir=models_dir, max_header_bytes=HEAD_LIMIT,
                              header_timeout_s=1.0, max_connections=16,
                              generation_worker="thread"))
    with running_server(app) as base:
        yield base, app


@pytest.fixture
def url(served: tuple[str, Any]) -> str:
    return served[0]


def _connect(url: str) -> socket.socket:
    parts = urlsplit(url)
    sock = socket.create_connection((parts.hostname, parts.port), timeout=10)
    return sock


def _head_of_size(size: int, path: str = "/health") -> bytes:
    """A GET whose head (request line, headers, blank line) is exactly `size` bytes."""
    start = f"GET {path} HTTP/1.1\r\nHost: t\r\nX-Pad: ".encode()
    end = b"\r\n\r\n"
    return start + b"a" * (size - len(start) - len(end)) + end


def _answer(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes or stops for a second."""
    sock.settimeout(5)
    out = b""
    try:
        while chunk := sock.recv(65536):
            out += chunk
            if b"\r\n\r\n" in out and b"content-length" in out.lower():
                head, _, body = out.partition(b"\r\n\r\n")
                length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
                if len(body) >= length:
                    break
    except (TimeoutError, ConnectionResetError):
        pass
    return out


def test_a_head_at_the_limit_is_served_and_one_byte_more_is_431(url: str) -> None:
    with _connect(url) as sock:
        sock.sendall(_head_of_size(HEAD_LIMIT))
        assert _answer(sock).startswith(b"HTTP/1.1 200")
    with _connect(url) as sock:
        sock.sendall(_head_of_size(HEAD_LIMIT + 1))
        answer = _answer(sock)
    assert answer.startswith(b"HTTP/1.1 431 Request Header Fields Too Large")
    assert b"RNN_MAX_HEADER_BYTES" in answer and b"connection: close" in answer
    head = answer.partition(b"\r\n\r\n")[0].lower()  # what every answer carries
    assert re.search(rb"\r\nx-request-id: [0-9a-f]{32}\r\n", head)
    assert b"\r\nx-content-type-options: nosniff\r\n" in head


def test_the_head_limit_holds_on_a_kept_alive_connection_too(url: str) -> None:
    """The second request of a connection: at the limit it is served, one byte more 431."""
    with _connect(url) as sock:
        sock.sendall(_head_of_size(100))
        assert _answer(sock).startswith(b"HTTP/1.1 200")
        sock.sendall(_head_of_size(HEAD_LIMIT))
        assert _answer(sock).startswith(b"HTTP/1.1 200")
        sock.sendall(_head_of_size(HEAD_LIMIT + 1))
        assert _answer(sock).startswith(b"HTTP/1.1 431")


def test_a_partial_second_head_gets_408(url: str) -> None:
    with _connect(url) as sock:
        sock.sendall(_head_of_size(100))
        assert _answer(sock).startswith(b"HTTP/1.1 200")
        sock.sendall(b"GET /health HTTP/1.1\r\nHo")
        assert _answer(sock).startswith(b"HTTP/1.1 408")


def test_a_431_on_v1_is_in_openais_shape(url: str) -> None:
    with _connect(url) as sock:
        sock.sendall(_head_of_size(HEAD_LIMIT + 1, "/v1/models"))
        answer = _answer(sock)
    assert answer.startswith(b"HTTP/1.1 431") and b'"error": {"message"' in answer


def test_a_huge_header_is_cut_off_while_light_clients_are_served(url: str) -> None:
    """64 MB of one header line: the server reads 2 KB of it, answers 431 and closes, and a
    client asking meanwhile is answered at once."""
    result: dict[str, bytes] = {}

    def attack() -> None:
        with _connect(url) as sock:
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: t\r\nX-Big: ")
            try:
                for _ in range(1024):
                    sock.sendall(b"b" * 65536)
            except OSError:  # closed by the server, as it should be
                pass
            result["answer"] = _answer(sock)

    attacker = threading.Thread(target=attack)
    attacker.start()
    latencies = []
    with httpx.Client(base_url=url, timeout=10) as client:
        for _ in range(20):
            started = time.perf_counter()
            assert client.post("/classify", json={"inputs": "a fine film"}).status_code == 200
            latencies.append(time.perf_counter() - started)
    attacker.join(timeout=30)
    assert not attacker.is_alive()
    assert max(latencies) < 2.0, latencies
    answer = result.get("answer", b"")
    assert answer == b"" or answer.startswith(b"HTTP/1.1 431"), answer[:200]


def test_a_partial_head_gets_408_and_a_silent_connection_is_closed(url: str) -> None:
    with _connect(url) as silent, _connect(url) as partial:
        partial.sendall(b"GET /health HTTP/1.1\r\nHost: t\r\n")
        started = time.monotonic()
        assert _answer(silent) == b""  # closed without a word
        assert 0.8 < time.monotonic() - started < 4
        answer = _answer(partial)
    assert answer.startswith(b"HTTP/1.1 408") and b"RNN_HEADER_TIMEOUT_S" in answer


def test_idle_connections_make_room_for_a_client_with_a_request(url: str) -> None:
    """Far more silent connections than the limit: each new one takes the place of the oldest
    idle one, so the light client is always let in."""
    idle = [_connect(url) for _ in range(80)]
    try:
        with httpx.Client(base_url=url, timeout=10) as client:
            assert client.get("/health").status_code == 200
        assert _answer(idle[0]) == b""  # the oldest made room
    finally:
        for sock in idle:
            sock.close()


def test_the_connection_idle_longest_makes_room_not_one_just_served(url: str) -> None:
    """8 silent connections, then one that is served (idle since), then 8 more silent: the
    17th connection past the limit of 16 closes the first silent one; the served connection
    keeps its place and is served again (all within the 1 s head timeout)."""
    request = b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n"
    early = [_connect(url) for _ in range(8)]
    kept = _connect(url)
    late: list[socket.socket] = []
    try:
        kept.sendall(request)
        assert _answer(kept).startswith(b"HTTP/1.1 200")
        late = [_connect(url) for _ in range(8)]
        assert _answer(early[0]) == b""  # closed to make room
        kept.sendall(request)
        assert _answer(kept).startswith(b"HTTP/1.1 200")
    finally:
        for sock in [*early, kept, *late]:
            sock.close()


def test_when_every_connection_is_busy_one_more_gets_503(served: tuple[str, Any]) -> None:
    url, app = served
    body = b'{"inputs":"ROMEO:","parameters":{"max_new_tokens":300}}'
    head = (b"POST /generate_stream HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
            b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n")
    busy: list[socket.socket] = []
    generator = app.state.registry.get("shakespeare", "generate").generator
    with slowed_steps(generator, 0.02):  # 300 steps: the streams stay busy for 6 s
        try:
            for _ in range(16):
                sock = _connect(url)
                sock.sendall(head + body)
                sock.settimeout(10)
                assert sock.recv(12).startswith(b"HTTP/1.1 200")  # its stream has begun
                busy.append(sock)
            with _connect(url) as extra:
                answer = _answer(extra)
            assert answer.startswith(b"HTTP/1.1 503") and b"RNN_MAX_CONNECTIONS" in answer
        finally:
            for sock in busy:
                sock.close()


def test_a_stream_nobody_reads_is_cancelled_after_the_send_timeout(models_dir: Path) -> None:
    """A client asks for megabytes of stream and reads none of it: once a write has waited
    RNN_SEND_TIMEOUT_S, its generations leave the engine and its connection is closed, while
    another client is served throughout."""
    app = create_app(Settings(models_dir=models_dir, send_timeout_s=1.0, max_request_tokens=65536,
                              generation_worker="thread"))
    body = json.dumps({"model": "shakespeare", "prompt": ["ROMEO:"] * 8, "n": 8,
                       "max_tokens": 1000, "logprobs": 5, "stream": True, "seed": 1}).encode()
    head = (b"POST /v1/completions HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
            b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n")
    with running_server(app) as url, httpx.Client(base_url=url, timeout=10) as client:
        generator = app.state.registry.get("shakespeare", "generate").generator
        parts = urlsplit(url)
        # 1,000 steps of at least 20 ms: finished by itself, the stream would take 20 s.
        with slowed_steps(generator, 0.02), socket.socket() as reader:
            reader.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            reader.connect((parts.hostname, parts.port))
            reader.sendall(head + body)
            deadline = time.monotonic() + 10
            time.sleep(0.5)
            while generator.requests and time.monotonic() < deadline:
                assert client.post("/generate", json={
                    "inputs": "ROMEO:", "parameters": {"max_new_tokens": 5}}).status_code == 200
                time.sleep(0.2)
            assert not generator.requests  # its 64 generations were cancelled
            reader.settimeout(10)
            received = b""
            try:
                while chunk := reader.recv(1 << 20):  # what was in flight, then the close
                    received += chunk
            except ConnectionResetError:
                pass
    assert received.startswith(b"HTTP/1.1 200")
    assert len(received) < 64 * 1000 * 200  # far from the whole answer


def test_clients_that_read_nothing_cannot_hold_their_connections(
        models_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two clients ask for a 4 MB /score answer and then another answer on the same
    connection, and read nothing: the second answer cannot even start. After RNN_SEND_TIMEOUT_S both
    connections are let go (else each would hold a place under RNN_MAX_CONNECTIONS as busy,
    for good)."""
    app = create_app(Settings(models_dir=models_dir, send_timeout_s=1.0,
                              generation_worker="thread"))
    held: list[socket.socket] = []
    opened: list[HygienicProtocol] = []
    made = HygienicProtocol.connection_made
    body = json.dumps({"inputs": ["to be or not " * 307] * 16, "parameters": {"details": True}})
    big = (b"POST /score HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
           b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body.encode())

    def note(protocol: HygienicProtocol, transport: Any) -> None:
        opened.append(protocol)
        made(protocol, transport)
    monkeypatch.setattr(HygienicProtocol, "connection_made", note)
    with running_server(app) as url:
        parts = urlsplit(url)
        try:
            for _ in range(2):
                sock = socket.socket()
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                sock.connect((parts.hostname, parts.port))
                sock.sendall(big)  # one write of 4 MB: it is written whole, into buffers
                time.sleep(1.0)
                sock.setblocking(False)
                with suppress(BlockingIOError):
                    sock.send(b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n")
                held.append(sock)
            deadline = time.monotonic() + 10
            while open_ := [p for p in opened if p in p.connections]:
                assert time.monotonic() < deadline, f"{len(open_)} still held"
                time.sleep(0.1)
            with httpx.Client(base_url=url, timeout=5) as client:
                assert client.get("/health").status_code == 200
        finally:
            for sock in held:
                sock.close()


def test_a_bare_uvicorn_named_with_the_protocol_reads_the_limits_from_the_environment(
        models_dir: Path) -> None:
    """`uvicorn app.main:app --http app.connections:Protocol`, as the image runs it."""
    env = {"RNN_MODELS_DIR": str(models_dir), "RNN_MAX_HEADER_BYTES": str(HEAD_LIMIT)}
    with server_process(env) as (url, proc):
        with _connect(url) as sock:
            sock.sendall(_head_of_size(HEAD_LIMIT))
            assert _answer(sock).startswith(b"HTTP/1.1 200")
        with _connect(url) as sock:
            sock.sendall(_head_of_size(HEAD_LIMIT + 1))
            assert _answer(sock).startswith(b"HTTP/1.1 431")
        proc.terminate()
        proc.communicate(timeout=30)
