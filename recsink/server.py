"""Serving: the listeners, their connections, systemd notifications and a graceful drain.

**Connections.** Each accepted connection is aiohttp's own request handler (the C parser)
inside a :class:`recsink.connections.Connection`, which percent-encodes raw UTF-8 in request
targets (Kazoo, specs/kazoo.md §8.1), answers heads aiohttp would refuse as JSON, frames
bodies, enforces ``server.header_timeout`` for every head and can hand a body to a worker
thread. recsink uses only aiohttp's public API: ``web.AppRunner`` for the application and
its ``server`` (a protocol factory) for each connection, on listeners made with
``loop.create_server``.

**Slow clients.** A new connection must deliver its first request head within
``server.header_timeout`` seconds, and every later head on a keep-alive connection within
as long from its first byte; an idle keep-alive connection is closed after
``server.keepalive_timeout``; a body that stops arriving is failed after
``server.body_idle_timeout`` (in ingest).

**Many clients.** At most ``server.max_connections`` connections are open at once; one more
is closed as soon as it is accepted, before anything is read
(:class:`~recsink.connections.ConnectionCap`). At start the process's RLIMIT_NOFILE must
leave room for those plus recsink's own files (:func:`ensure_descriptors`); asyncio's
accept() errors, should descriptors still run out, are counted and logged once per 10
seconds (:class:`_LoopErrors`). Every answer carries ``X-Request-ID``. Bodies are never
decompressed.

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
from typing import Any

from aiohttp import web

from recsink import logs, state
from recsink.app import cancel_and_wait, create_app
from recsink.config import Settings
from recsink.connections import (
    FLOOD_LOG_INTERVAL,
    Connection,
    ConnectionCap,
    ReadSizes,
    Refused,
    Registry,
)
from recsink.metrics import Metrics
from recsink.notify import Notifier

#: The largest socket read, bytes (asyncio's own read size).
READ_LARGEST = 256 * 1024
#: Request-head limits, for aiohttp's parser and the check before it (aiohttp's defaults).
HEAD_LIMITS = {"max_line_size": 8190, "max_field_size": 8190, "max_headers": 128}


class Listeners:
    """The protocol factory of recsink's listening sockets: each connection gets aiohttp's
    own request handler (``web.Server``, called as the protocol factory it is) inside a
    :class:`~recsink.connections.Connection`, or :class:`~recsink.connections.Refused`
    beyond the cap."""

    def __init__(self, server: web.Server, registry: Registry, cap: ConnectionCap,
                 header_timeout: float, reads: ReadSizes) -> None:
        self._server = server
        self._reads = reads
        self._registry = registry
        self._cap = cap
        self._header_timeout = header_timeout

    def __call__(self) -> asyncio.BaseProtocol:
        if self._cap.full:
            return Refused(self._cap)  # nothing is built for it
        return Connection(self._server(), self._registry, self._cap, self._header_timeout,
                          HEAD_LIMITS, self._reads)


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
    :data:`FLOOD_LOG_INTERVAL` seconds at most. Everything else goes to asyncio's default
    handler."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics
        self._throttle = logs.Throttle(FLOOD_LOG_INTERVAL)

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
    runner = web.AppRunner(
        app, read_bufsize=settings.server.read_bufsize, auto_decompress=False,
        keepalive_timeout=settings.server.keepalive_timeout,
        # After the drain, what still runs is cancelled within a few seconds (cleanup).
        access_log=None, handle_signals=False, shutdown_timeout=2.0,
        max_line_size=HEAD_LIMITS["max_line_size"],
        max_field_size=HEAD_LIMITS["max_field_size"], max_headers=HEAD_LIMITS["max_headers"])
    previous_handler = loop.get_exception_handler()
    loop.set_exception_handler(_LoopErrors(app[state.METRICS]))
    await runner.setup()
    assert runner.server is not None
    cap = ConnectionCap(settings.server.max_connections, app[state.METRICS])
    factory = Listeners(runner.server, app[state.SERVING].registry, cap,
                        settings.server.header_timeout,
                        ReadSizes(settings.server.read_buffer_bytes, READ_LARGEST))
    watchdog = asyncio.create_task(notifier.watchdog())
    listeners: list[asyncio.Server] = []
    try:
        main = await loop.create_server(factory, settings.server.host, settings.server.port,
                                        reuse_address=True)
        listeners.append(main)
        port = main.sockets[0].getsockname()[1]
        ops_port = None
        if (ops := settings.ops.address) is not None:
            ops_listener = await loop.create_server(factory, *ops, reuse_address=True)
            listeners.append(ops_listener)
            ops_port = ops_listener.sockets[0].getsockname()[1]
            if ops_port == port:  # both picked by the kernel (port 0), or bound twice
                raise RuntimeError(f"ops.listen got port {ops_port}, the main listener's")
            app[state.SERVING].ops_port = ops_port
        log.info("server.listening", host=settings.server.host, port=port,
                 ops_port=ops_port,
                 kazoo_urls=[f"http://{settings.server.host}:{port}{p}"
                             for p in settings.kazoo.prefixes])
        notifier.send("READY=1", f"STATUS=listening on {settings.server.host}:{port}")
        await stop.wait()
        log.info("server.stopping", drain_timeout=settings.server.drain_timeout,
                 uploads=app[state.GATE].receiving)
        notifier.send("STOPPING=1", "STATUS=draining in-flight uploads")
        # aiohttp's own shutdown stops reading bodies at once, so drain first: close the
        # listeners, refuse new uploads, let the running ones finish.
        for listener in listeners:
            listener.close()
        left = await app[state.GATE].drain(settings.server.drain_timeout)
        log.info("server.drained", uploads_cut_off=left)
    finally:
        for listener in listeners:
            listener.close()
        await runner.cleanup()
        await cancel_and_wait(watchdog)
        loop.set_exception_handler(previous_handler)
    log.info("server.stopped")
