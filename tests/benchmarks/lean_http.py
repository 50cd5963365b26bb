"""A lean HTTP/1.1 client for the load generator: keep-alive connections over asyncio
streams, one request per connection at a time, a new connection whenever none is idle.

The generator shares the machine's cores with the stack it measures, so what it spends per
request is taken from Baton: httpx spends several times more CPU per request than this.
It speaks only what the api answers (a Content-Length body) and is no general client.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

# uvicorn closes a connection idle for 5 s (its default keep-alive): use one for less.
IDLE_LIMIT_S = 2.0


class HttpError(Exception):
    """The connection broke or the answer was not HTTP we understand."""


@dataclass
class _Connection:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    last_used: float = 0.0

    def close(self) -> None:
        self.writer.close()


class LeanClient:
    def __init__(self, host: str, port: int, headers: dict[str, str]) -> None:
        self.host = host
        self.port = port
        self._head = "".join(f"{k}: {v}\r\n" for k, v in {"Host": host, **headers}.items())
        self._idle: list[_Connection] = []
        self.opened = 0

    async def request(self, method: str, path: str, body: bytes = b"") -> tuple[int, bytes]:
        """(status code, body). Raises HttpError when the exchange fails."""
        connection = await self._connection()
        message = (
            f"{method} {path} HTTP/1.1\r\n{self._head}"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode() + body
        try:
            connection.writer.write(message)
            status, keep, answer = await _read_response(connection.reader)
        except (OSError, asyncio.IncompleteReadError, ValueError, IndexError) as exc:
            connection.close()
            raise HttpError(f"{type(exc).__name__}: {exc}") from exc
        if keep:
            connection.last_used = time.monotonic()
            self._idle.append(connection)
        else:
            connection.close()
        return status, answer

    async def _connection(self) -> _Connection:
        # Newest first: the least likely to have been closed by the server meanwhile.
        now = time.monotonic()
        while self._idle:
            connection = self._idle.pop()
            if now - connection.last_used < IDLE_LIMIT_S:
                return connection
            connection.close()
        try:
            reader, writer = await asyncio.open_connection(self.host, self.port)
        except OSError as exc:
            raise HttpError(f"cannot connect: {exc}") from exc
        self.opened += 1
        return _Connection(reader, writer)

    def close(self) -> None:
        for connection in self._idle:
            connection.close()
        self._idle.clear()


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bool, bytes]:
    status_line = await reader.readline()
    if not status_line:
        raise HttpError("the server closed the connection")
    status = int(status_line.split(b" ", 2)[1])
    length, keep = 0, True
    while (line := await reader.readline()) not in (b"\r\n", b"\n", b""):
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"connection" and value.strip().lower() == b"close":
            keep = False
        elif name == b"transfer-encoding":
            raise HttpError(f"unsupported transfer encoding {value.strip()!r}")
    return status, keep, await reader.readexactly(length)
