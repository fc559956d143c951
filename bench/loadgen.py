"""The load generator: HTTP/1.1 requests over keep-alive connections on loopback, bodies
streamed from files with ``sendfile``, so that the generator itself costs almost no CPU.

One code path for every server (recsink, nginx): only the request heads differ. A
:class:`Request` is a head plus either a file (sent with :meth:`asyncio.loop.sendfile`,
i.e. ``os.sendfile`` on the socket) or a small inline body. :func:`run` sends *jobs* (each a
sequence of requests sent in order on one connection, e.g. a Sinch call's two events) from
``concurrency`` connections, opened before the clock starts, and records each request's
status, reply body and latency (first byte sent to last byte of the answer received).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bench.common import HOST, MiB


@dataclass(frozen=True)
class Request:
    """One request: ``head`` (request line and headers), then ``size`` bytes of the file at
    ``path`` (if any), else ``data``. ``tag`` identifies it in the results."""

    tag: str
    head: bytes
    path: Path | None = None
    size: int = 0
    data: bytes = b""

    @property
    def body_bytes(self) -> int:
        return self.size if self.path is not None else len(self.data)


@dataclass
class Reply:
    """What came back for a :class:`Request` (``status`` -1 and ``error`` when none did)."""

    request: Request
    status: int = -1
    seconds: float = 0.0
    body: bytes = b""
    error: str = ""


@dataclass
class Load:
    """A finished run: every reply, the wall time from the first request to the last answer,
    and the CPU seconds the generator (this process) spent meanwhile."""

    replies: list[Reply]
    wall: float
    client_cpu: float
    latencies: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.latencies = sorted(r.seconds for r in self.replies if r.status >= 0)

    @property
    def body_bytes(self) -> int:
        return sum(r.request.body_bytes for r in self.replies)

    @property
    def mib_per_s(self) -> float:
        return self.body_bytes / MiB / self.wall if self.wall > 0 else 0.0

    @property
    def per_s(self) -> float:
        return len(self.replies) / self.wall if self.wall > 0 else 0.0

    def percentile_ms(self, q: float) -> float:
        """Latency at quantile ``q`` (nearest rank), milliseconds."""
        if not self.latencies:
            return math.nan
        rank = max(1, math.ceil(q * len(self.latencies)))
        return self.latencies[rank - 1] * 1000

    def unexpected(self, statuses: frozenset[int]) -> list[Reply]:
        """Replies whose status is not one of ``statuses``."""
        return [r for r in self.replies if r.status not in statuses]


# -- HTTP/1.1 responses --------------------------------------------------------------------


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes
    close: bool


def parse_response(buf: bytearray) -> tuple[Response, int] | None:
    """The first complete final response in ``buf`` and the bytes it took, or None if more
    bytes are needed. Interim ``1xx`` responses are skipped; bodies by Content-Length or
    chunked; without either, no body (the servers here always frame their bodies)."""
    start = 0
    while True:
        end = buf.find(b"\r\n\r\n", start)
        if end < 0:
            return None
        lines = bytes(buf[start:end]).split(b"\r\n")
        status = int(lines[0].split(b" ", 2)[1])
        pos = end + 4
        if 100 <= status < 200:
            start = pos
            continue
        length, chunked, close = 0, False, False
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            value = value.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"transfer-encoding":
                chunked = b"chunked" in value
            elif name == b"connection":
                close = value == b"close"
        if not chunked:
            if len(buf) < pos + length:
                return None
            return Response(status, bytes(buf[pos:pos + length]), close), pos + length
        body = bytearray()
        while True:
            eol = buf.find(b"\r\n", pos)
            if eol < 0:
                return None
            size = int(bytes(buf[pos:eol]).split(b";")[0], 16)
            if len(buf) < eol + 2 + size + 2:
                return None
            body += buf[eol + 2:eol + 2 + size]
            pos = eol + 2 + size + 2
            if size == 0:
                return Response(status, bytes(body), close), pos


class _Connection(asyncio.Protocol):
    """One keep-alive client connection: one request at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.waiter: asyncio.Future[Response] | None = None
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if self.waiter is not None and not self.waiter.done():
            parsed = parse_response(self.buffer)
            if parsed is not None:
                response, used = parsed
                del self.buffer[:used]
                self.waiter.set_result(response)

    def eof_received(self) -> bool:
        self._gone(ConnectionResetError("the server closed the connection"))
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._gone(exc or ConnectionResetError("connection lost"))

    def _gone(self, exc: BaseException) -> None:
        self.closed = True
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(exc)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


async def _connect(port: int) -> _Connection:
    loop = asyncio.get_running_loop()
    _, conn = await loop.create_connection(_Connection, HOST, port)
    return conn


async def _exchange(conn: _Connection, request: Request) -> Response:
    loop = asyncio.get_running_loop()
    assert conn.transport is not None
    conn.waiter = loop.create_future()
    conn.transport.write(request.head + request.data if request.data else request.head)
    if request.path is not None and request.size:
        with request.path.open("rb") as fh:
            await loop.sendfile(conn.transport, fh, 0, request.size)
    return await conn.waiter


async def _run(port: int, jobs: Sequence[Sequence[Request]], concurrency: int,
               limit_s: float) -> Load:
    connections = [await _connect(port) for _ in range(max(1, min(concurrency, len(jobs))))]
    replies: list[Reply] = []
    todo: Iterator[Sequence[Request]] = iter(jobs)

    async def worker(conn: _Connection) -> None:
        for job in todo:  # one iterator shared by every worker: each job is taken once
            for request in job:
                reply = Reply(request)
                replies.append(reply)
                if conn.closed:
                    conn = await _connect(port)
                started = time.perf_counter()
                try:
                    response = await _exchange(conn, request)
                except (OSError, ValueError, IndexError) as exc:
                    reply.error = f"{type(exc).__name__}: {exc}"
                    conn.close()
                    conn.closed = True
                    continue
                reply.seconds = time.perf_counter() - started
                reply.status, reply.body = response.status, response.body
                if response.close:
                    conn.close()
                    conn.closed = True
        conn.close()

    cpu = time.process_time()
    started = time.perf_counter()
    try:
        await asyncio.wait_for(asyncio.gather(*(worker(c) for c in connections)), limit_s)
    finally:
        for conn in connections:
            conn.close()
    wall = time.perf_counter() - started
    return Load(replies, wall, time.process_time() - cpu)


def run(port: int, jobs: Sequence[Sequence[Request]], concurrency: int,
        timeout: float = 3600) -> Load:
    """Send ``jobs`` to 127.0.0.1:``port`` from ``concurrency`` connections (see the module
    docstring); the whole run is abandoned after ``timeout`` seconds."""
    return asyncio.run(_run(port, jobs, concurrency, timeout))
