"""Serving: the listener, its request-head parser, and a clean stop on SIGTERM/SIGINT.

Kazoo puts caller names in the query string unescaped, so a request line can hold raw UTF-8
(``caller_id_name=José``, specs/kazoo.md §8.1). aiohttp's default C parser (llhttp) answers
such a line with 400 before any handler runs, and Kazoo then retries the upload 30 times and
gives up: the recording is lost. recsink's connections therefore parse request heads with
aiohttp's pure-Python parser, which accepts the bytes and decodes them as UTF-8; bodies still
stream straight into ingest. The cost is in head parsing only; it is measured in the README
("Raw UTF-8 in the query string").
"""

from __future__ import annotations

import asyncio
import signal

from aiohttp import web
from aiohttp.http_parser import HttpRequestParserPy
from aiohttp.web_protocol import MAX_MSG_QUEUE_SIZE, RequestHandler
from aiohttp.web_server import Server

from recsink import logs
from recsink.app import create_app
from recsink.config import Settings


class _Utf8HeadServer:
    """Protocol factory: aiohttp's own request handler, with the pure-Python head parser."""

    def __init__(self, server: Server, read_bufsize: int) -> None:
        self._server = server
        self._read_bufsize = read_bufsize

    def __call__(self) -> RequestHandler:
        handler = self._server()
        # RequestHandler keeps its parser in BaseProtocol._parser and builds it from these
        # same arguments; only the class differs. tests/test_utf8_query.py guards this.
        handler._parser = HttpRequestParserPy(
            handler, asyncio.get_running_loop(), self._read_bufsize,
            max_line_size=handler.max_line_size, max_field_size=handler.max_field_size,
            max_headers=handler.max_headers, payload_exception=web.RequestPayloadError,
            max_msg_queue_size=MAX_MSG_QUEUE_SIZE)
        return handler


class Utf8HeadAppRunner(web.AppRunner):
    """An AppRunner whose sites create connections through :class:`_Utf8HeadServer`."""

    def __init__(self, app: web.Application, *, read_bufsize: int, **kwargs: object) -> None:
        super().__init__(app, read_bufsize=read_bufsize, **kwargs)  # type: ignore[arg-type]
        self._head_read_bufsize = read_bufsize

    @property
    def server(self) -> Server | None:
        server = super().server
        if server is None:
            return None
        return _Utf8HeadServer(server, self._head_read_bufsize)  # type: ignore[return-value]


async def serve(settings: Settings) -> None:
    """Listen on ``server.host:server.port`` until SIGTERM or SIGINT, then stop: no new
    connections, in-flight requests get ``server.shutdown_timeout`` seconds, resources close.
    Logs ``server.listening`` (with the bound port, useful with port 0) and ``server.stopped``."""
    log = logs.get_logger()
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)

    runner = Utf8HeadAppRunner(
        create_app(settings), read_bufsize=settings.server.read_bufsize,
        access_log=None, handle_signals=False,
        shutdown_timeout=settings.server.shutdown_timeout)
    await runner.setup()
    try:
        site = web.TCPSite(runner, settings.server.host, settings.server.port)
        await site.start()
        log.info("server.listening", host=settings.server.host, port=site.port,
                 kazoo_urls=[f"http://{settings.server.host}:{site.port}{p}"
                             for p in settings.kazoo.prefixes])
        await stop.wait()
        log.info("server.stopping")
    finally:
        await runner.cleanup()
    log.info("server.stopped")
