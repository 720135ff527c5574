"""A minimal keep-alive HTTP/1.1 client on asyncio streams, for load generation.

httpx's connection pool costs several milliseconds per request at 64 concurrent connections
on this machine (a trivial endpoint: 75 requests/s through httpx against 2,500/s through this
client), so the load generator would measure itself, not the server.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

__all__ = ["Connection"]


class Connection:
    """One keep-alive connection; requests on it run one at a time."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def _open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self._reader is None or self._writer is None:
            self._reader, self._writer = await asyncio.open_connection(self.host, self.port)
        return self._reader, self._writer

    async def close(self) -> None:
        """Close the socket."""
        if self._writer is not None:
            self._writer.close()
            self._reader = self._writer = None

    async def _send(self, method: str, path: str, body: Any) -> tuple[int, dict[str, str]]:
        reader, writer = await self._open()
        data = json.dumps(body).encode() if body is not None else b""
        writer.write(f"{method} {path} HTTP/1.1\r\nHost: {self.host}\r\n"
                     f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n"
                     .encode() + data)
        head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
        status = int(head[0].split()[1])
        headers = {k.strip().lower(): v.strip() for k, _, v in
                   (line.partition(":") for line in head[1:] if line)}
        return status, headers

    async def request(self, method: str, path: str, body: Any = None) -> tuple[int, bytes]:
        """Send one request; return (status, body)."""
        status, headers = await self._send(method, path, body)
        chunks = [chunk async for chunk in self._body(headers)]
        if headers.get("connection", "").lower() == "close":
            await self.close()
        return status, b"".join(chunks)

    async def stream(self, path: str, body: Any) -> AsyncIterator[bytes | int]:
        """POST and yield the status first, then each body chunk as it arrives."""
        status, headers = await self._send("POST", path, body)
        yield status
        async for chunk in self._body(headers):
            yield chunk

    async def _body(self, headers: dict[str, str]) -> AsyncIterator[bytes]:
        assert self._reader is not None
        if headers.get("transfer-encoding", "").lower() == "chunked":
            while True:
                size = int((await self._reader.readline()).split(b";")[0], 16)
                chunk = await self._reader.readexactly(size + 2)
                if size == 0:
                    return
                yield chunk[:-2]
        else:
            yield await self._reader.readexactly(int(headers.get("content-length", "0")))
