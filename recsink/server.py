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
``server.header_timeout`` seconds, and every later head on a keep-alive connection within
as long from its first byte; an idle keep-alive connection is closed after
``server.keepalive_timeout``; a body that stops arriving is failed after
``server.body_idle_timeout`` (in ingest).

**Many clients.** At most ``server.max_connections`` connections are open at once; one more
is closed as soon as it is accepted, before anything is read (:class:`ConnectionCap`). At
start the process's RLIMIT_NOFILE must leave room for those plus recsink's own files
(:func:`ensure_descriptors`); asyncio's accept() errors, should descriptors still run out,
are counted and logged once per 10 seconds (:class:`_LoopErrors`). Every answer carries
``X-Request-ID``. Bodies are never decompressed.

**Stopping.** On SIGTERM or SIGINT recsink tells systemd ``STOPPING=1``, closes its listening
sockets (no new connections), closes idle connections, gives in-flight requests
``server.drain_timeout`` seconds to finish, then cancels the rest: their uploads commit
nothing and leave no staging file, so the PBX retries them. Then resources close (the
catalog's writes are already durable) and the process exits 0.
"""

from __future__ import annotations

import asyncio
import errno
import resource
import signal
from http import HTTPStatus
from typing import Any

from aiohttp import StreamReader, web
from aiohttp.http import HttpVersion10, HttpVersion11
from aiohttp.http_exceptions import BadHttpMessage
from aiohttp.http_parser import HttpRequestParserPy, RawRequestMessage
from aiohttp.web_protocol import MAX_MSG_QUEUE_SIZE, RequestHandler
from aiohttp.web_request import BaseRequest
from aiohttp.web_server import Server

from recsink import logs, state
from recsink.app import REQUEST_ID_HEADER, cancel_and_wait, create_app, request_id
from recsink.config import Settings
from recsink.errors import Malformed, RecsinkError
from recsink.metrics import Metrics
from recsink.notify import Notifier
from recsink.responses import error_response, internal_error

#: Seconds between two log lines about connections refused at the cap, or accept() failing.
_FLOOD_LOG_INTERVAL = 10.0


class ConnectionCap:
    """``server.max_connections``: client connections open at once, on every listener
    together. A connection beyond it is closed as soon as it is accepted, before a byte is
    read or anything is built for it; it is counted in ``recsink_connections_refused_total``
    and logged as ``connection.refused`` once per :data:`_FLOOD_LOG_INTERVAL` seconds at
    most (with how many were held back since the last line)."""

    def __init__(self, limit: int, metrics: Metrics) -> None:
        self.limit = limit
        self.open = 0
        self._metrics = metrics
        self._throttle = logs.Throttle(_FLOOD_LOG_INTERVAL)

    @property
    def full(self) -> bool:
        return self.open >= self.limit

    def admit(self) -> bool:
        """Take a place for a new connection; False when all are taken."""
        if self.full:
            return False
        self.open += 1
        self._metrics.connections_open.set(self.open)
        return True

    def release(self) -> None:
        self.open -= 1
        self._metrics.connections_open.set(self.open)

    def refuse(self, transport: asyncio.BaseTransport) -> None:
        """Close a connection that found no place (an RST when it already sent bytes)."""
        self._metrics.connections_refused.inc()
        if (held := self._throttle.allow()) is not None:
            logs.get_logger().warning(
                "connection.refused", peer=str(transport.get_extra_info("peername")),
                open=self.open, max_connections=self.limit, suppressed=held)
        if isinstance(transport, asyncio.Transport):
            transport.abort()  # nothing to flush: close the socket now
        else:
            transport.close()


class _Refused(asyncio.Protocol):
    """The protocol of a connection accepted beyond the cap: closed at once."""

    def __init__(self, cap: ConnectionCap) -> None:
        self._cap = cap

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._cap.refuse(transport)


class _HeadDeadline(asyncio.Protocol):
    """Wraps a connection's protocol: takes it a place under the :class:`ConnectionCap`
    (or closes it), and closes it unless each request head (up to its blank line) arrives
    within ``timeout`` seconds, counted for the first head from the connection's opening
    and for a later one on a keep-alive connection from its first byte (an idle
    connection is aiohttp's keep-alive timeout's). Its socket reads take the read size of
    ``budget`` (asyncio's own is 256 KiB) while it is open."""

    def __init__(self, inner: RequestHandler, parser: _RequestParser, timeout: float,
                 budget: ReadBudget, cap: ConnectionCap) -> None:
        self._inner = inner
        self._parser = parser
        self._timeout = timeout
        self._budget = budget
        self._cap = cap
        self._admitted = False
        self._timer: asyncio.TimerHandle | None = None
        self._heads_at_start = 0
        self._transport: asyncio.BaseTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if not self._cap.admit():
            self._cap.refuse(transport)
            return
        self._admitted = True
        self._transport = transport
        _set_read_size(transport, self._budget.size)
        self._budget.add(transport)
        self._start_timer()
        self._inner.connection_made(transport)

    def _start_timer(self) -> None:
        self._heads_at_start = self._parser.heads
        self._timer = asyncio.get_running_loop().call_later(self._timeout, self._expire)

    def _stop_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expire(self) -> None:
        self._timer = None
        if self._transport is None:
            return
        if self._parser.backlog:
            # Requests already parsed wait for the handler, which stopped reading: the
            # client is not the slow one. Give the head its time once they are handled.
            self._start_timer()
            return
        if self._parser.heads != self._heads_at_start:
            return  # the head came in (parsed when aiohttp resumed reading)
        logs.get_logger().info("connection.header_timeout",
                               peer=str(self._transport.get_extra_info("peername")))
        self._transport.close()

    def data_received(self, data: bytes) -> None:
        if self._timer is None and self._parser.awaiting_head:
            self._start_timer()  # the first bytes of a later request's head
        heads = self._parser.heads
        self._inner.data_received(data)
        if self._parser.heads != heads:
            self._stop_timer()

    def eof_received(self) -> bool | None:
        if self._admitted:
            self._inner.eof_received()
        return None  # let the transport close its writing side too

    def connection_lost(self, exc: Exception | None) -> None:
        if not self._admitted:
            return
        self._stop_timer()
        if self._transport is not None:
            self._budget.remove(self._transport)
            self._transport = None
        self._cap.release()
        self._inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()


#: Longest ``detail`` of a refused request head (it quotes the offending bytes).
_DETAIL_MAX = 200


class _RequestParser(HttpRequestParserPy):
    """aiohttp's pure-Python head parser, refusing (400) heads that are not UTF-8 and HTTP
    versions other than 1.0 and 1.1 (which it would otherwise echo in the status line), and
    telling :class:`_HeadDeadline` where request heads begin and end: ``heads`` counts the
    complete heads (refused ones too), ``awaiting_head`` is true once the previous request's
    body is all in (the next bytes begin a head), ``backlog`` counts requests parsed but not
    yet taken up by the handler."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.heads = 0
        self.awaiting_head = True
        self.backlog = 0

    def parse_message(self, lines: list[bytes]) -> RawRequestMessage:
        self.heads += 1
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

    def feed_data(self, data: bytes, *args: Any, **kwargs: Any
                  ) -> tuple[list[tuple[RawRequestMessage, StreamReader]], bool, bytes]:
        messages, upgraded, tail = super().feed_data(data, *args, **kwargs)
        if messages:
            self.backlog += len(messages)
            body = messages[-1][1]  # the bodies before it are all in
            self.awaiting_head = body.is_eof()
            if not self.awaiting_head:
                body.on_eof(self._body_received)
        return messages, upgraded, tail

    def _body_received(self) -> None:
        self.awaiting_head = True

    def message_consumed(self) -> None:
        super().message_consumed()
        self.backlog = max(0, self.backlog - 1)


class _RequestHandler(RequestHandler):
    """aiohttp's per-connection request handler, answering what it refuses itself as JSON,
    with an ``X-Request-ID`` like every other answer."""

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
                      remote=request.remote, request_id=request_id(request), exc_info=exc)
        else:
            detail = (message or HTTPStatus(status).phrase)[:_DETAIL_MAX]
            error = Malformed("bad_request", f"malformed request: {detail}")
            log.warning("request.rejected", status=status, error=error.code,
                        detail=error.detail, remote=request.remote,
                        request_id=request_id(request))
        response = error_response(error, status)
        response.force_close()
        return response

    async def finish_response(self, request: BaseRequest, resp: web.StreamResponse,
                              start_time: float | None) -> tuple[web.StreamResponse, bool]:
        """Render an error response aiohttp made outside recsink's middleware (an
        ``Expect`` it refuses: 417) as JSON, and give every answer not yet sent an
        ``X-Request-ID``."""
        if resp.status >= 400 and not resp.prepared and resp.content_type != "application/json":
            reason = resp.reason or HTTPStatus(resp.status).phrase
            text = resp.text if isinstance(resp, web.Response) else None
            error = RecsinkError(reason.lower().replace(" ", "_"), (text or reason)[:_DETAIL_MAX])
            logs.get_logger().warning("request.rejected", status=resp.status,
                                      error=error.code, detail=error.detail,
                                      method=request.method, remote=request.remote,
                                      request_id=request_id(request))
            resp = error_response(error, resp.status)
        if not resp.prepared:
            resp.headers.setdefault(REQUEST_ID_HEADER, request_id(request))
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
    pure-Python head parser (which never decompresses a body), the connection cap, the
    head deadline and a read size from the budget."""

    def __init__(self, server: Server, budget: ReadBudget, header_timeout: float,
                 cap: ConnectionCap) -> None:
        self._server = server
        self._budget = budget
        self._header_timeout = header_timeout
        self._cap = cap

    def __call__(self) -> asyncio.Protocol:
        if self._cap.full:
            return _Refused(self._cap)  # nothing is built for it
        # What Server.__call__ does, with the subclass.
        handler = _RequestHandler(self._server, loop=asyncio.get_running_loop(),
                                  **self._server._kwargs)
        # RequestHandler keeps its parser in BaseProtocol._parser and builds it from these
        # same arguments (but read_bufsize: _READ_LIMIT); only the class differs.
        # tests/test_e2e_replay.py guards this.
        parser = _RequestParser(
            handler, asyncio.get_running_loop(), _READ_LIMIT,
            max_line_size=handler.max_line_size, max_field_size=handler.max_field_size,
            max_headers=handler.max_headers, payload_exception=web.RequestPayloadError,
            auto_decompress=False, max_msg_queue_size=MAX_MSG_QUEUE_SIZE)
        handler._parser = parser
        return _HeadDeadline(handler, parser, self._header_timeout, self._budget, self._cap)


class RecsinkAppRunner(web.AppRunner):
    """An AppRunner whose sites create connections through :class:`_RecsinkConnections`,
    all reading under one :class:`ReadBudget` and one :class:`ConnectionCap`
    (``max_connections``; default: the application's ``server.max_connections``). Bodies
    are never decompressed (``Content-Encoding`` is refused before reading instead)."""

    def __init__(self, app: web.Application, *, read_bufsize: int, read_buffer_bytes: int,
                 header_timeout: float, max_connections: int | None = None,
                 **kwargs: Any) -> None:
        super().__init__(app, read_bufsize=read_bufsize, auto_decompress=False, **kwargs)
        self._budget = ReadBudget(read_buffer_bytes, read_bufsize)
        self._header_timeout = header_timeout
        if max_connections is None:
            max_connections = app[state.SETTINGS].server.max_connections
        self.cap = ConnectionCap(max_connections, app[state.METRICS])

    @property
    def server(self) -> Server | None:
        server = super().server
        if server is None:
            return None
        return _RecsinkConnections(  # type: ignore[return-value]
            server, self._budget, self._header_timeout, self.cap)


#: File descriptors recsink keeps for itself besides client connections, uploads, pulls
#: and catalog connections: the interpreter, listeners, the event loop, the log, SQLite's
#: files, DNS and TLS.
OWN_DESCRIPTORS = 64
#: Connections in botocore's pool (recsink.storage.s3client), plus spool files being
#: shipped at once (recsink.shipper.BATCH, with room to spare).
S3_DESCRIPTORS = 64 + 8


class DescriptorShortage(RuntimeError):
    """RLIMIT_NOFILE cannot be raised to the file descriptors the settings need."""


def descriptors_needed(settings: Settings) -> dict[str, int]:
    """The file descriptors recsink may hold at once, by use: ``connections``
    (``server.max_connections``), ``uploads`` (a staging or spool file each,
    ``server.max_uploads``), ``pulls`` (a download and its staging file per
    ``fetch.workers``), ``catalog`` (PostgreSQL's ``catalog.pool_size``), ``s3``
    (:data:`S3_DESCRIPTORS`) and ``own`` (:data:`OWN_DESCRIPTORS`)."""
    needed = {"connections": settings.server.max_connections,
              "uploads": settings.server.max_uploads,
              "pulls": 2 * settings.fetch.workers,
              "own": OWN_DESCRIPTORS}
    if settings.catalog.url.get_secret_value():
        needed["catalog"] = settings.catalog.pool_size
    if settings.storage.backend == "s3":
        needed["s3"] = S3_DESCRIPTORS
    return needed


def ensure_descriptors(settings: Settings) -> None:
    """Make sure the process may open :func:`descriptors_needed`: raise the soft
    RLIMIT_NOFILE to the hard one when it is lower (logged as ``server.fd_limit_raised``);
    raise :class:`DescriptorShortage` when even the hard limit is lower (recsink would run
    out of descriptors under load, when an upload's file cannot be opened)."""
    needed = descriptors_needed(settings)
    total = sum(needed.values())
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= total:
        return
    uses = ", ".join(f"{use} {count}" for use, count in needed.items())
    if hard != resource.RLIM_INFINITY and hard < total:
        raise DescriptorShortage(
            f"recsink needs {total} file descriptors ({uses}) but RLIMIT_NOFILE allows "
            f"{hard} (hard limit): raise it (systemd LimitNOFILE=, docker --ulimit nofile=, "
            f"ulimit -Hn) or lower server.max_connections / server.max_uploads")
    raised = total if hard == resource.RLIM_INFINITY else hard
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (raised, hard))
    except (ValueError, OSError) as exc:
        raise DescriptorShortage(
            f"recsink needs {total} file descriptors ({uses}) but RLIMIT_NOFILE allows "
            f"{soft}, and raising it failed: {exc}") from exc
    logs.get_logger().info("server.fd_limit_raised", soft=soft, to=raised, needed=total)


#: accept() errors asyncio reports when the process (or system) has no descriptor or
#: memory left; it then retries each listener a second later.
_OUT_OF_RESOURCES = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


class _LoopErrors:
    """The event loop's exception handler (``loop.set_exception_handler``). asyncio reports
    every failed accept() ("socket.accept() out of system resource", with a traceback),
    up to one per pending connection per listener each time it tries (hundreds of lines a
    second while descriptors run out); here they are counted in
    ``recsink_accept_errors_total`` and logged as ``connection.accept_failed`` once per
    :data:`_FLOOD_LOG_INTERVAL` seconds at most. Everything else goes to asyncio's default
    handler."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics
        self._throttle = logs.Throttle(_FLOOD_LOG_INTERVAL)

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        if (isinstance(exc, OSError) and exc.errno in _OUT_OF_RESOURCES
                and str(context.get("message", "")).startswith("socket.accept()")):
            self._metrics.accept_errors.inc()
            if (held := self._throttle.allow()) is not None:
                logs.get_logger().error(
                    "connection.accept_failed", error=exc.strerror,
                    errno=errno.errorcode.get(exc.errno or 0), suppressed=held,
                    detail="cannot accept connections: no file descriptor or memory left; "
                           "they wait in the listen backlog (see README \"Limits\")")
            return
        loop.default_exception_handler(context)


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

    ensure_descriptors(settings)
    app = create_app(settings)
    runner = RecsinkAppRunner(
        app, read_bufsize=settings.server.read_bufsize,
        read_buffer_bytes=settings.server.read_buffer_bytes,
        header_timeout=settings.server.header_timeout,
        max_connections=settings.server.max_connections,
        keepalive_timeout=settings.server.keepalive_timeout,
        # After the drain, what still runs is cancelled within a few seconds (cleanup).
        access_log=None, handle_signals=False, shutdown_timeout=2.0)
    previous_handler = loop.get_exception_handler()
    loop.set_exception_handler(_LoopErrors(app[state.METRICS]))
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
        loop.set_exception_handler(previous_handler)
    log.info("server.stopped")
