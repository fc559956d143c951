"""Serving: the listeners, their connections, systemd notifications and a graceful drain.

**Raw UTF-8 in the query string.** Kazoo puts caller names in the query string unescaped, so
a request line can hold raw UTF-8 (``caller_id_name=José``, specs/kazoo.md §8.1). aiohttp's
default C parser (llhttp) answers such a line with 400 before any handler runs, and Kazoo
then retries the upload 30 times and gives up: the recording is lost. recsink's connections
therefore parse request heads with aiohttp's pure-Python parser, which accepts the bytes and
decodes them as UTF-8; bodies still stream straight into ingest. The cost is in head parsing
only; it is measured in bench/UTF8_PARSER.md.

**Refusals are JSON too.** What aiohttp refuses itself, before any recsink handler runs (a
malformed request head, an unknown ``Expect``), is answered like every other refusal: a JSON
``{"error", "detail"}`` body (DESIGN.md "HTTP errors"), logged as one ``request.rejected``
line (without aiohttp's traceback). A head that is not UTF-8 (which no sender means; its
bytes could not be stored or looked up) and HTTP versions other than 1.0 and 1.1 are
refused there too.

**Slow clients.** A new connection must deliver its first request head within
``server.header_timeout`` seconds; an idle keep-alive connection is closed after
``server.keepalive_timeout``; a body that stops arriving is failed after
``server.body_idle_timeout`` (in ingest).

**Stopping.** On SIGTERM or SIGINT recsink tells systemd ``STOPPING=1``, closes its listening
sockets (no new connections), closes idle connections, gives in-flight requests
``server.drain_timeout`` seconds to finish, then cancels the rest: their uploads commit
nothing and leave no staging file, so the PBX retries them. Then resources close (the
catalog's writes are already durable) and the process exits 0.
"""

from __future__ import annotations

import asyncio
import signal
from http import HTTPStatus
from typing import Any

from aiohttp import web
from aiohttp.http import HttpVersion10, HttpVersion11
from aiohttp.http_exceptions import BadHttpMessage
from aiohttp.http_parser import HttpRequestParserPy, RawRequestMessage
from aiohttp.web_protocol import MAX_MSG_QUEUE_SIZE, RequestHandler
from aiohttp.web_request import BaseRequest
from aiohttp.web_server import Server

from recsink import logs, state
from recsink.app import cancel_and_wait, create_app
from recsink.config import Settings
from recsink.errors import Malformed, RecsinkError
from recsink.notify import Notifier
from recsink.responses import error_response, internal_error

#: Bytes of a connection's first data searched for the end of its request head.
_HEAD_LIMIT = 64 * 1024


class _FirstHeadDeadline(asyncio.Protocol):
    """Wraps a connection's protocol and closes the connection unless its first request head
    (up to the blank line) arrives within ``timeout`` seconds. Its socket reads take the
    read size of ``budget`` (asyncio's own is 256 KiB) while it is open."""

    def __init__(self, inner: RequestHandler, timeout: float, budget: ReadBudget) -> None:
        self._inner = inner
        self._timeout = timeout
        self._budget = budget
        self._seen = bytearray()
        self._timer: asyncio.TimerHandle | None = None
        self._transport: asyncio.BaseTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport
        _set_read_size(transport, self._budget.size)
        self._budget.add(transport)
        self._timer = asyncio.get_running_loop().call_later(self._timeout, self._expire)
        self._inner.connection_made(transport)

    def _expire(self) -> None:
        self._timer = None
        if self._transport is not None:
            logs.get_logger().info("connection.header_timeout",
                                   peer=str(self._transport.get_extra_info("peername")))
            self._transport.close()

    def data_received(self, data: bytes) -> None:
        if self._timer is not None:
            self._seen += data[:_HEAD_LIMIT]
            if b"\r\n\r\n" in self._seen or len(self._seen) >= _HEAD_LIMIT:
                self._timer.cancel()
                self._timer = None
                self._seen = bytearray()
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        self._inner.eof_received()
        return None  # let the transport close its writing side too

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._transport is not None:
            self._budget.remove(self._transport)
        self._inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()


#: Longest ``detail`` of a refused request head (it quotes the offending bytes).
_DETAIL_MAX = 200


class _RequestParser(HttpRequestParserPy):
    """aiohttp's pure-Python head parser, refusing (400) heads that are not UTF-8 and HTTP
    versions other than 1.0 and 1.1 (which it would otherwise echo in the status line)."""

    def parse_message(self, lines: list[bytes]) -> RawRequestMessage:
        for line in lines:
            if not line.isascii():
                try:
                    line.decode("utf-8")
                except UnicodeDecodeError:
                    raise BadHttpMessage("the request head is not valid UTF-8") from None
        message = super().parse_message(lines)
        if message.version not in (HttpVersion10, HttpVersion11):
            major, minor = message.version
            raise BadHttpMessage(f"HTTP/{major}.{minor} is not supported; use HTTP/1.1")
        return message


class _RequestHandler(RequestHandler):
    """aiohttp's per-connection request handler, answering what it refuses itself as JSON."""

    def handle_error(self, request: BaseRequest, status: int = 500,
                     exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        """A malformed request head (400), or an error that escaped the application."""
        if request.writer.output_size > 0:
            raise ConnectionError("the response is already partly sent")
        log = logs.get_logger()
        if status >= 500:
            error = internal_error()
            log.error("request.rejected", status=status, error=error.code, detail=error.detail,
                      remote=request.remote, exc_info=exc)
        else:
            detail = (message or HTTPStatus(status).phrase)[:_DETAIL_MAX]
            error = Malformed("bad_request", f"malformed request: {detail}")
            log.warning("request.rejected", status=status, error=error.code,
                        detail=error.detail, remote=request.remote)
        response = error_response(error, status)
        response.force_close()
        return response

    async def finish_response(self, request: BaseRequest, resp: web.StreamResponse,
                              start_time: float | None) -> tuple[web.StreamResponse, bool]:
        """Render an error response aiohttp made outside recsink's middleware (an
        ``Expect`` it refuses: 417) as JSON."""
        if resp.status >= 400 and not resp.prepared and resp.content_type != "application/json":
            reason = resp.reason or HTTPStatus(resp.status).phrase
            text = resp.text if isinstance(resp, web.Response) else None
            error = RecsinkError(reason.lower().replace(" ", "_"), (text or reason)[:_DETAIL_MAX])
            logs.get_logger().warning("request.rejected", status=resp.status,
                                      error=error.code, detail=error.detail,
                                      method=request.method, remote=request.remote)
            resp = error_response(error, resp.status)
        return await super().finish_response(request, resp, start_time)


#: aiohttp stops reading a connection holding twice this unread (its flow-control limit).
_READ_LIMIT = 32 * 1024


class ReadBudget:
    """Memory for what connections read ahead of their handlers, shared by all of them.

    Each read from a connection's socket takes up to the read size, and aiohttp stops reading
    a connection once it holds 2 x :data:`_READ_LIMIT` unread, so a connection holds at most
    about its read size + 64 KiB. The read size is ``largest`` while few connections are
    open, and shrinks for all of them (64 KiB at least) as more open, so that together they
    stay within ``total``: large reads cost less work per byte, many connections stay within
    the budget (bench/RESULTS.md)."""

    def __init__(self, total: int, largest: int, smallest: int = 64 * 1024) -> None:
        self._total, self._largest, self._smallest = total, largest, smallest
        self._transports: set[asyncio.BaseTransport] = set()
        self.size = largest

    def add(self, transport: asyncio.BaseTransport) -> None:
        self._transports.add(transport)
        self._resize()

    def remove(self, transport: asyncio.BaseTransport) -> None:
        self._transports.discard(transport)
        self._resize()

    def _resize(self) -> None:
        share = self._total // max(1, len(self._transports)) - 2 * _READ_LIMIT
        size = max(self._smallest, min(self._largest, share)) // 4096 * 4096
        if size != self.size:
            self.size = size
            for transport in self._transports:
                _set_read_size(transport, size)


def _set_read_size(transport: asyncio.BaseTransport, size: int) -> None:
    if hasattr(transport, "max_size"):  # asyncio's selector transports read this much
        setattr(transport, "max_size", size)  # noqa: B010


class _RecsinkConnections:
    """Protocol factory: aiohttp's own request handler (with JSON refusals), the
    pure-Python head parser, the first-head deadline and a read size from the budget."""

    def __init__(self, server: Server, budget: ReadBudget, header_timeout: float) -> None:
        self._server = server
        self._budget = budget
        self._header_timeout = header_timeout

    def __call__(self) -> _FirstHeadDeadline:
        # What Server.__call__ does, with the subclass.
        handler = _RequestHandler(self._server, loop=asyncio.get_running_loop(),
                                  **self._server._kwargs)
        # RequestHandler keeps its parser in BaseProtocol._parser and builds it from these
        # same arguments (but read_bufsize: _READ_LIMIT); only the class differs.
        # tests/test_e2e_replay.py guards this.
        handler._parser = _RequestParser(
            handler, asyncio.get_running_loop(), _READ_LIMIT,
            max_line_size=handler.max_line_size, max_field_size=handler.max_field_size,
            max_headers=handler.max_headers, payload_exception=web.RequestPayloadError,
            max_msg_queue_size=MAX_MSG_QUEUE_SIZE)
        return _FirstHeadDeadline(handler, self._header_timeout, self._budget)


class RecsinkAppRunner(web.AppRunner):
    """An AppRunner whose sites create connections through :class:`_RecsinkConnections`,
    all reading under one :class:`ReadBudget`."""

    def __init__(self, app: web.Application, *, read_bufsize: int, read_buffer_bytes: int,
                 header_timeout: float, **kwargs: Any) -> None:
        super().__init__(app, read_bufsize=read_bufsize, **kwargs)
        self._budget = ReadBudget(read_buffer_bytes, read_bufsize)
        self._header_timeout = header_timeout

    @property
    def server(self) -> Server | None:
        server = super().server
        if server is None:
            return None
        return _RecsinkConnections(  # type: ignore[return-value]
            server, self._budget, self._header_timeout)


async def serve(settings: Settings, notifier: Notifier | None = None) -> None:
    """Listen on ``server.host:server.port`` (and ``ops.listen``) until SIGTERM or SIGINT,
    then drain and stop (module docstring). Logs ``server.listening`` (with the bound port,
    useful with port 0), ``server.stopping`` and ``server.stopped``; tells systemd READY=1
    once listening and STOPPING=1 when the drain begins."""
    log = logs.get_logger()
    notifier = notifier or Notifier()
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)

    app = create_app(settings)
    runner = RecsinkAppRunner(
        app, read_bufsize=settings.server.read_bufsize,
        read_buffer_bytes=settings.server.read_buffer_bytes,
        header_timeout=settings.server.header_timeout,
        keepalive_timeout=settings.server.keepalive_timeout,
        # After the drain, what still runs is cancelled within a few seconds (cleanup).
        access_log=None, handle_signals=False, shutdown_timeout=2.0)
    await runner.setup()
    watchdog = asyncio.create_task(notifier.watchdog())
    try:
        site = web.TCPSite(runner, settings.server.host, settings.server.port)
        await site.start()
        ops_port = None
        if (ops := settings.ops.address) is not None:
            ops_site = web.TCPSite(runner, *ops)
            await ops_site.start()
            ops_port = ops_site.port
            if ops_port == site.port:  # both picked by the kernel (port 0), or bound twice
                raise RuntimeError(f"ops.listen got port {ops_port}, the main listener's")
            app[state.SERVING].ops_port = ops_port
        log.info("server.listening", host=settings.server.host, port=site.port,
                 ops_port=ops_port,
                 kazoo_urls=[f"http://{settings.server.host}:{site.port}{p}"
                             for p in settings.kazoo.prefixes])
        notifier.send("READY=1", f"STATUS=listening on {settings.server.host}:{site.port}")
        await stop.wait()
        log.info("server.stopping", drain_timeout=settings.server.drain_timeout,
                 uploads=app[state.GATE].receiving)
        notifier.send("STOPPING=1", "STATUS=draining in-flight uploads")
        # aiohttp's own shutdown stops reading bodies at once, so drain first: close the
        # listeners, refuse new uploads, let the running ones finish.
        for listener in list(runner.sites):
            await listener.stop()
        left = await app[state.GATE].drain(settings.server.drain_timeout)
        log.info("server.drained", uploads_cut_off=left)
    finally:
        await runner.cleanup()
        await cancel_and_wait(watchdog)
    log.info("server.stopped")
