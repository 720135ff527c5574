"""Connection hygiene below the app: what uvicorn's HTTP protocol leaves to the operator.

The app sees a request only once its head (request line and headers) is complete, so three
limits live here, in a subclass of uvicorn's httptools protocol:

- **The head's size** (RNN_MAX_HEADER_BYTES): a head past it is answered 431 and the
  connection closed. Without it a client could send one header of any length; the parser
  appends each received piece to what it holds, so the work grows with the square of the
  length (nginx bounds the same with `large_client_header_buffers`).
- **The head's time** (RNN_HEADER_TIMEOUT_S): a connection must send a complete head within
  this time of opening (or of its first byte, after a kept-alive answer). One that sent part of
  a head gets 408; one that sent nothing is closed. Idle kept-alive connections are closed by
  uvicorn's own `timeout_keep_alive`.
- **The number of connections** (RNN_MAX_CONNECTIONS): a connection past it takes the place of
  the oldest connection that has no request in flight (idle, or still sending its head), so
  that many silent connections cannot lock out a client with something to ask; when every
  connection has a request in flight, the new one gets 503 and is closed.

uvicorn builds one protocol object per connection from a class: `protocol_for(settings)` makes
the class, `app.serve` passes it, and `uvicorn --http app.connections:Protocol` takes one with
the settings of the environment.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections import OrderedDict
from typing import Any, ClassVar

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from app.errors import dialect_of, render
from app.settings import Settings

__all__ = ["Protocol", "protocol_for"]

log = logging.getLogger(__name__)

_REASONS = {408: b"Request Timeout", 431: b"Request Header Fields Too Large",
            503: b"Service Unavailable"}


class HygienicProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the limits of the module's docstring."""

    max_head_bytes: ClassVar[int] = 32 * 1024
    head_timeout_s: ClassVar[float] = 10.0
    max_connections: ClassVar[int] = 2048
    send_timeout_s: ClassVar[float] = 30.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_bytes = 0
        self._in_head = True  # between a request's first byte (or the connection) and its head
        self._busy = False  # a request in flight: its head is in, its answer not finished
        self._head_timer: asyncio.TimerHandle | None = None
        self._send_timer: asyncio.TimerHandle | None = None

    # Protocol interface
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._idle_line()[self] = None
        if len(self.connections) > self.max_connections and not self._make_room():
            self._refuse(503, f"the server holds {self.max_connections} connections, each "
                         "with a request in flight (RNN_MAX_CONNECTIONS); retry later")
            return
        self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._idle_line().pop(self, None)
        self._disarm_head_timer()
        self._disarm_send_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if not self._in_head:
            super().data_received(data)
            return
        room = self.max_head_bytes - self._head_bytes
        if len(data) <= room:
            self._head_bytes += len(data)
            super().data_received(data)
            return
        # The head must end within `room` bytes; what follows it may be a body.
        super().data_received(data[:room])
        if self._in_head:
            self._refuse(431, f"the request's head (request line and headers) is over "
                         f"{self.max_head_bytes} bytes (RNN_MAX_HEADER_BYTES)")
        elif not self.transport.is_closing():
            super().data_received(data[room:])

    def pause_writing(self) -> None:
        # The client reads nothing of what is written: whatever waits to write (an answer,
        # uvicorn's own 500 after the app gave up on it) is let go with the connection.
        super().pause_writing()
        if self._send_timer is None:
            self._send_timer = self.loop.call_later(self.send_timeout_s, self._send_timed_out)

    def resume_writing(self) -> None:
        self._disarm_send_timer()
        super().resume_writing()

    # Parser callbacks
    def on_message_begin(self) -> None:
        super().on_message_begin()
        # The count is reset when a head completes: the bytes of the piece being parsed,
        # counted before this call, are this head's.
        self._in_head = True
        idle = self._idle_line()
        if self in idle:
            idle.move_to_end(self)
        if self._head_timer is None:
            self._arm_head_timer()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        # What the client sends next is the next request's head: counted, and timed from
        # its first byte (kept-alive connections included).
        self._in_head, self._head_bytes = True, 0

    def on_headers_complete(self) -> None:
        self._in_head, self._busy, self._head_bytes = False, True, 0
        self._idle_line().pop(self, None)
        self._disarm_head_timer()
        super().on_headers_complete()

    def on_response_complete(self) -> None:
        pipelined = bool(self.pipeline)  # a request that came early starts now
        self._busy = pipelined
        if not pipelined and not self.transport.is_closing():
            self._idle_line()[self] = None
            if self._in_head and self._head_timer is None:
                self._arm_head_timer()  # the next head is timed from now
        super().on_response_complete()

    # Limits
    def _arm_head_timer(self) -> None:
        self._head_timer = self.loop.call_later(self.head_timeout_s, self._head_timed_out)

    def _disarm_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _disarm_send_timer(self) -> None:
        if self._send_timer is not None:
            self._send_timer.cancel()
            self._send_timer = None

    def _send_timed_out(self) -> None:
        self._send_timer = None
        if not self.transport.is_closing():
            log.info("a client read nothing for %g s (RNN_SEND_TIMEOUT_S); closing its "
                     "connection", self.send_timeout_s)
            self.transport.abort()  # close() would wait to write what it will never read

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self._busy:  # a request in flight: the next head is timed once it is answered
            return
        if not self._in_head or self.transport.is_closing():
            return
        if self._head_bytes == 0:
            self.transport.close()
            return
        self._refuse(408, f"the request's head was not received within "
                     f"{self.head_timeout_s:g} s (RNN_HEADER_TIMEOUT_S)")

    def _idle_line(self) -> OrderedDict[HygienicProtocol, None]:
        """This server's connections with no request in flight, longest idle first (kept in
        order as they change, so that making room costs no scan of every connection)."""
        state = self.server_state
        line: OrderedDict[HygienicProtocol, None] | None = getattr(state, "textrnn_idle", None)
        if line is None:
            line = OrderedDict()
            state.textrnn_idle = line  # type: ignore[attr-defined]
        return line

    def _make_room(self) -> bool:
        """Close the connection that has waited longest without a request in flight;
        whether there was one."""
        idle = self._idle_line()
        while (oldest := next((c for c in idle if c is not self), None)) is not None:
            del idle[oldest]  # the longest idle is first: no scan of every connection
            if not oldest.transport.is_closing():
                oldest.transport.close()
                return True
        return False

    def _refuse(self, status: int, message: str) -> None:
        """Answer `status` with the message in the dialect of the path so far, and close."""
        path = bytes(getattr(self, "url", b"") or b"").decode("latin-1")
        code, body = render(status, message, dialect_of(path))
        payload = json.dumps(body).encode()
        request_id = uuid.uuid4().hex  # as every answer carries one (no request got this far)
        head = (f"HTTP/1.1 {code} ".encode() + _REASONS[code] + b"\r\n"
                b"content-type: application/json\r\n"
                b"content-length: " + str(len(payload)).encode() + b"\r\n"
                b"x-request-id: " + request_id.encode() + b"\r\n"
                b"x-content-type-options: nosniff\r\n"
                b"connection: close\r\n\r\n")
        peer = f"{self.client[0]}:{self.client[1]}" if self.client else "?"
        log.info("%s; closing the connection from %s (request id %s)", message, peer, request_id)
        self._in_head = False
        self._disarm_head_timer()
        if not self.transport.is_closing():
            self.transport.write(head + payload)
            self.transport.close()


def protocol_for(settings: Settings) -> type[HygienicProtocol]:
    """The protocol class with the settings' limits."""
    return type("Protocol", (HygienicProtocol,), {
        "max_head_bytes": settings.max_header_bytes,
        "head_timeout_s": settings.header_timeout_s,
        "max_connections": settings.max_connections,
        "send_timeout_s": settings.send_timeout_s})


class Protocol(HygienicProtocol):
    """`uvicorn --http app.connections:Protocol`: the limits of the environment's settings,
    read when the first connection arrives."""

    _loaded: ClassVar[bool] = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        cls = type(self)
        if not cls._loaded:
            settings = Settings()
            cls.max_head_bytes = settings.max_header_bytes
            cls.head_timeout_s = settings.header_timeout_s
            cls.max_connections = settings.max_connections
            cls.send_timeout_s = settings.send_timeout_s
            cls._loaded = True
        super().__init__(*args, **kwargs)
