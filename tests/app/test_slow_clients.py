"""Slow clients against a real uvicorn, over raw sockets: a body that trickles in or stops
half-way gets 408 and a closed connection; an idle keep-alive connection is closed."""

from __future__ import annotations

import select
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from app.main import create_app
from app.settings import Settings
from tests.app.conftest import running_server

BODY = b'{"inputs": "a gripping, beautiful film"}'
HEAD = (b"POST /classify HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
        b"X-Request-Id: slow-1\r\nContent-Length: " + str(len(BODY)).encode() + b"\r\n\r\n")


@pytest.fixture(scope="module")
def url(models_dir: Path) -> Iterator[str]:
    with running_server(create_app(Settings(models_dir=models_dir, body_timeout_s=1.0))) as base:
        yield base


def _connect(url: str) -> socket.socket:
    parts = urlsplit(url)
    sock = socket.create_connection((parts.hostname or "", parts.port or 80), timeout=10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _read_until_closed(sock: socket.socket, limit_s: float) -> tuple[bytes, bool]:
    """What the server sent, and whether it closed the connection within `limit_s`."""
    sock.settimeout(limit_s)
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except TimeoutError:
        return data, False
    except ConnectionResetError:  # closed with our bytes unread: closed all the same
        pass
    return data, True


def _trickle(sock: socket.socket, data: bytes, every_s: float) -> bytes:
    """Send `data` a byte every `every_s` until the server answers; its answer's first bytes."""
    for byte in data:
        readable, _, _ = select.select([sock], [], [], every_s)
        if readable:  # answered (and closing): stop sending into a closed connection
            return sock.recv(65536)
        sock.send(bytes([byte]))
    return b""


def test_a_body_sent_a_byte_at_a_time_gets_408_and_the_connection_closes(url: str) -> None:
    with _connect(url) as sock:
        sock.sendall(HEAD)
        start = time.monotonic()
        early = _trickle(sock, BODY, 0.1)  # 4 s for the whole body at this pace
        rest, closed = _read_until_closed(sock, 5)
        elapsed = time.monotonic() - start
    answer = early + rest
    assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]
    assert b"RNN_BODY_TIMEOUT_S" in answer and b"x-request-id: slow-1" in answer.lower()
    assert closed and 0.9 < elapsed < 3.5


def test_a_body_that_stops_half_way_gets_408_and_the_connection_closes(url: str) -> None:
    with _connect(url) as sock:
        start = time.monotonic()
        sock.sendall(HEAD + BODY[:10])
        answer, closed = _read_until_closed(sock, 5)
        elapsed = time.monotonic() - start
    assert answer.startswith(b"HTTP/1.1 408 ") and closed, answer[:200]
    assert b"connection: close" in answer.lower()
    assert 0.9 < elapsed < 3.0
    assert httpx.get(f"{url}/health/ready").status_code == 200


def test_a_body_in_pieces_within_the_bound_is_served(url: str) -> None:
    with _connect(url) as sock:
        sock.sendall(HEAD)
        for i in range(0, len(BODY), 15):
            time.sleep(0.2)
            sock.sendall(BODY[i:i + 15])
        sock.settimeout(10)
        answer = sock.recv(65536)
        assert answer.startswith(b"HTTP/1.1 200 "), answer[:200]
        # The connection stays usable for the next request (keep-alive).
        sock.sendall(HEAD + BODY)
        assert sock.recv(65536).startswith(b"HTTP/1.1 200 ")


def test_an_idle_keep_alive_connection_is_closed(url: str) -> None:
    # uvicorn's --timeout-keep-alive, 5 s by default as the server is started here and in the
    # image; the deployment docs say how to change it.
    with _connect(url) as sock:
        sock.sendall(HEAD + BODY)
        sock.settimeout(10)
        assert sock.recv(65536).startswith(b"HTTP/1.1 200 ")
        start = time.monotonic()
        rest, closed = _read_until_closed(sock, 9)
        assert closed and rest == b"" and 4 < time.monotonic() - start < 8
