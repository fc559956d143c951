"""``create_app(settings)``: wires routes, the error middleware and resource lifetimes.

Nothing here stores, parses or decides; it only connects the pieces (aiohttp-demos style).
Catalog, storage, ingestor and background work live in ``cleanup_ctx``: opened (storage
swept, the catalog migrated, interrupted uploads settled) before the first request, closed
after the last. Errors are answered through :mod:`recsink.responses`' one table.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
import aiojobs
from aiohttp import hdrs, web
from pydantic import SecretStr

from recsink import api, logs, state
from recsink.auth import UploadAuth
from recsink.bodies import DETACHED
from recsink.catalog import Catalog, open_catalog
from recsink.commit import Commits
from recsink.config import FetchBucket, Settings
from recsink.connections import REFUSAL_PATH
from recsink.errors import Forbidden, NotFound, RecsinkError, Unauthorized, Unavailable
from recsink.fetch import Fetcher
from recsink.ingest import Ingestor
from recsink.metrics import Metrics
from recsink.responses import error_response, internal_error, status_of
from recsink.retention import Retention
from recsink.shipper import Shipper
from recsink.sources import kazoo, laml, sendbird, sinch
from recsink.sources.sendbird_polls import Sendbird
from recsink.storage import Storage
from recsink.storage.disk import DiskStorage
from recsink.webhooks import Dispatcher, client_session

_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
REQUEST_ID_HEADER = "X-Request-ID"
#: Seconds the clean-up of failed and cancelled uploads gets at exit.
CLEANUP_WAIT = 10.0


def create_app(settings: Settings) -> web.Application:
    """The recsink application for ``settings`` (served by :mod:`recsink.server`, or by the
    aiohttp test client in tests)."""
    app = web.Application(middlewares=[request_context])
    app.on_response_prepare.append(_stamp_request_id)
    app[state.SETTINGS] = settings
    app[state.AUTH] = UploadAuth(settings.auth)
    app[state.METRICS] = Metrics()
    app[state.SERVING] = state.Serving()
    app[state.GATE] = state.UploadGate(settings.server.max_uploads)
    app[state.SINCH] = sinch.SinchVerifier(settings.sinch)
    app[state.LAML] = laml.LamlVerifier(settings.laml)
    app.cleanup_ctx.append(resources)
    # First: no other route may take its path (a Kazoo prefix of "/" would).
    app.router.add_get(REFUSAL_PATH + "/{token}", _refused)
    kazoo.add_routes(app, settings.kazoo.prefixes)
    sinch.add_routes(app, settings.sinch.path)
    laml.add_routes(app, settings.laml.path)
    if settings.sendbird.enabled:  # else its path is not routed: 404
        sendbird.add_routes(app, settings.sendbird.path)
    api.add_routes(app)
    if settings.ui.enabled:
        from recsink import ui

        ui.add_routes(app)
    return app


async def resources(app: web.Application) -> AsyncIterator[None]:
    """Open storage (sweeping staging leftovers) and the catalog (migrating it), settle the
    uploads a stopped process left, start the background work (lease renewal, the settle
    sweeper, pulls, the spool shipper for S3); undo all of it, in reverse, at exit."""
    settings = app[state.SETTINGS]
    metrics = app[state.METRICS]
    log = logs.get_logger()
    async with contextlib.AsyncExitStack() as stack:
        # Undone in reverse: background loops stop, their jobs are cancelled, the clean-ups
        # those leave are waited for, then leases stop being renewed and the catalog closes.
        storage: Storage
        if settings.storage.backend == "s3":
            # Imported only when used: botocore costs about 11 MiB of memory per process.
            from recsink.storage.s3 import S3Storage
            from recsink.storage.s3client import open_client

            client = await stack.enter_async_context(open_client(settings.storage.s3))
            storage = s3 = S3Storage(client, settings.storage.s3, metrics)
            where = {"destination": s3.destination.url(""), "spool": str(s3.spool.root)}
        else:
            storage = DiskStorage(settings.storage.disk.root, fsync=settings.storage.disk.fsync)
            where = {"root": str(storage.root)}
        swept = await storage.start()
        catalog = await open_catalog(settings.catalog)
        stack.push_async_callback(catalog.close)
        commits = Commits(catalog, storage, settings.catalog)
        stack.push_async_callback(cancel_and_wait, asyncio.create_task(commits.keep_alive()))
        # Clean-up of failed and cancelled uploads: waited for at exit, never cut short.
        cleanups = aiojobs.Scheduler(limit=None)
        stack.push_async_callback(cleanups.wait_and_close, CLEANUP_WAIT)
        completed = failed = 0
        try:  # what a stopped process of this catalog left (all of it, on SQLite)
            while True:
                done, gave_up = await commits.sweep()
                completed, failed = completed + done, failed + gave_up
                if not done + gave_up:
                    break
        except RecsinkError as exc:  # serve meanwhile; the sweeper settles them later
            log.warning("settle.deferred", error=exc.reason())
        stack.push_async_callback(cancel_and_wait, asyncio.create_task(
            commits.sweep_forever(settings.catalog.sweep_interval)))
        ingestor = Ingestor(settings.ingest, settings.storage.key_template, storage, commits,
                            metrics, cleanups, threads=settings.server.max_uploads)
        stack.callback(ingestor.close)
        for name, source in (("sinch", settings.sinch), ("laml", settings.laml)):
            if not source.verify_signatures:
                log.warning(
                    "callbacks.unsigned", source=name, pull=source.pull,
                    detail=f"{name}.verify_signatures is off: anyone who can reach "
                           f"{source.path} can change recording records"
                           + (" and make recsink download from any host fetch.allow allows"
                              if source.pull else ""))
        log.info("storage.ready", backend=settings.storage.backend, **where,
                 staging_swept=swept, catalog=catalog.describe(),
                 recovered_completed=completed, recovered_failed=failed)
        hooks_http = await stack.enter_async_context(client_session(settings.webhooks))
        clients = await stack.enter_async_context(contextlib.AsyncExitStack())
        # Pulls and shipping: cancelled at exit (what they hold is settled by whoever next
        # takes it); their clean-ups go to ``cleanups``.
        workers = aiojobs.Scheduler(limit=None, close_timeout=5.0)
        stack.push_async_callback(workers.close)
        copy_to = settings.sendbird.copy_to if settings.sendbird.enabled else None
        fetcher = Fetcher(
            settings.fetch, ingestor, commits, metrics, clients, workers,
            buckets=[] if copy_to is None else [FetchBucket(
                url=copy_to.url, endpoint_url=copy_to.endpoint_url,
                credentials=SecretStr(f"{copy_to.access_key.get_secret_value()}:"
                                      f"{copy_to.secret_key.get_secret_value()}:"
                                      f"{copy_to.region}"))],
            own=settings.storage.s3.url if settings.storage.backend == "s3" else None)
        stack.push_async_callback(cancel_and_wait, asyncio.create_task(fetcher.run()))
        if settings.sendbird.enabled:
            app[state.SENDBIRD] = await _sendbird(settings, catalog, commits, fetcher, workers,
                                                  stack)
        if settings.storage.backend == "s3":
            shipping = asyncio.create_task(Shipper(s3, commits, metrics, workers).run())
            stack.push_async_callback(cancel_and_wait, shipping)
        # Webhooks: the outbox's dispatcher; its attempts are cancelled at exit like pulls
        # (their leases expire and any instance sends them again).
        dispatcher = Dispatcher(settings.webhooks, catalog, metrics, hooks_http, workers,
                                commits.new_owner)
        commits.on_status = dispatcher.wake
        stack.push_async_callback(cancel_and_wait, asyncio.create_task(dispatcher.run()))
        # Retention: the sweeper (when rules are set), deletions, holds and erasures.
        retention = Retention(settings.retention, commits)
        stack.push_async_callback(cancel_and_wait, asyncio.create_task(retention.run()))
        app[state.RETENTION] = retention
        app[state.WEBHOOKS] = dispatcher
        app[state.STORAGE] = storage
        app[state.CATALOG] = catalog
        app[state.INGESTOR] = ingestor
        app[state.FETCHER] = fetcher
        yield


async def _sendbird(settings: Settings, catalog: Catalog, commits: Commits, fetcher: Fetcher,
                    workers: aiojobs.Scheduler, stack: contextlib.AsyncExitStack) -> Sendbird:
    """Start Sendbird's poll worker and reconcile sweep (stopped at exit, in reverse)."""
    from recsink.sources.sendbird_api import PlatformApi

    session = await stack.enter_async_context(aiohttp.ClientSession())
    poller = Sendbird(settings.sendbird, PlatformApi(settings.sendbird, session), catalog,
                      workers, commits.new_owner, fetcher.wake)
    stack.push_async_callback(cancel_and_wait, asyncio.create_task(poller.run()))
    stack.push_async_callback(cancel_and_wait,
                              asyncio.create_task(poller.reconcile_forever()))
    return poller


async def cancel_and_wait(task: asyncio.Task[None]) -> None:
    """Cancel a background task and wait until it has stopped."""
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def request_id(request: web.BaseRequest) -> str:
    """The request's id, the same on every call: the client's ``X-Request-ID`` when it is 1
    to 64 ASCII letters, digits and dashes, else 16 new hex digits."""
    known: str | None = request.get(state.REQUEST_ID)
    if known is not None:
        return known
    given = request.headers.get(REQUEST_ID_HEADER, "")
    if 0 < len(given) <= 64 and given.isascii() and given.replace("-", "").isalnum():
        made = given
    else:
        made = f"{random.getrandbits(64):016x}"  # a label, not a secret: no syscall
    request[state.REQUEST_ID] = made
    return made


async def _stamp_request_id(request: web.Request, response: web.StreamResponse) -> None:
    """``on_response_prepare``: every answer the application sends carries ``X-Request-ID``
    (streamed GET/HEAD answers too, whose headers leave before the middleware sees them),
    and an error aiohttp answers outside the middleware (its 417 for an ``Expect`` it does
    not know) is rendered as JSON ``{"error", "detail"}`` and logged like every refusal."""
    response.headers.setdefault(REQUEST_ID_HEADER, request_id(request))
    if isinstance(response, web.HTTPException) and response.status >= 400:
        # The middleware did not see this request (aiohttp's expect handler refused it):
        # its connection counts it here, to match the requests that follow to their heads.
        if (connection := request.app[state.SERVING].registry.of(request)) is not None:
            connection.attach(request)
        error = _http_error(response, (response.text or response.reason)[:200])
        logs.get_logger().warning("request.rejected", status=response.status,
                                  error=error.code, detail=error.detail,
                                  method=request.method, remote=request.remote,
                                  request_id=request_id(request))
        body = error_response(error, response.status).body
        assert isinstance(body, bytes)
        response.body = body
        response.content_type = "application/json"
        response.headers[hdrs.CONTENT_LENGTH] = str(len(body))


def _http_error(exc: web.HTTPException, detail: str) -> RecsinkError:
    """An error aiohttp decided (a 404, 405, 417, …) as recsink's: its reason is the code
    (``Expectation Failed`` -> ``expectation_failed``)."""
    return RecsinkError(exc.reason.lower().replace(" ", "_"), detail)


async def _refused(request: web.Request) -> web.StreamResponse:
    """The answer to a head :class:`recsink.connections.Connection` refused before aiohttp
    parsed it (this request stands in its place and asks to close the connection): the
    refusal, raised for the middleware to answer and log like every other."""
    refusals = request.app[state.SERVING].registry.refusals
    raise refusals.pop(request.match_info["token"], None) or NotFound("not_found", "Not Found")


@web.middleware
async def request_context(request: web.Request, handler: _Handler) -> web.StreamResponse:
    """Bind a request id to every log line of the request, answer errors as JSON
    ``{"error", "detail"}`` (:mod:`recsink.responses`) and log each refused or failed
    request once. A refusal for the client's address or credentials (403, 401) closes the
    connection: a client that is refused keeps no connection (nor its file descriptor)."""
    logs.clear_request()
    logs.bind_request(request_id=request_id(request))
    started = time.perf_counter()
    connection = request.app[state.SERVING].registry.of(request)
    if connection is not None:
        connection.attach(request)
    try:
        _check_site(request)
        response = await handler(request)
    except RecsinkError as exc:
        _log_error(request, exc, status_of(exc), started)
        response = error_response(exc)
        if isinstance(exc, Unauthorized | Forbidden):
            response.force_close()
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        error = _http_error(exc, exc.reason)
        _log_error(request, error, exc.status, started)
        response = error_response(error, exc.status)
        if exc.status == 405:
            response.headers["Allow"] = exc.headers.get("Allow", "")
    except asyncio.CancelledError:
        # The drain timed out (or the client is gone for good): nothing was acknowledged.
        if (detached := request.get(DETACHED)) is not None:
            detached.close()
        error = Unavailable("cancelled", "recsink stopped before the request finished")
        _log_error(request, error, 503, started)
        raise
    except Exception as exc:
        _log_error(request, internal_error(), 500, started, exc_info=exc)
        response = error_response(internal_error(), 500)
    if not response.prepared and request.writer.output_size > 0:
        # The handler's own answer is partly sent (a GET probe whose storage failed
        # mid-body): a second one would land inside its body. aiohttp closes the connection.
        raise ConnectionResetError("the response is already partly sent")
    if connection is not None and connection.ending:  # its framing is broken or handed over
        response.force_close()
        if (detached := request.get(DETACHED)) is not None:
            try:  # answer first, then drop what the client still sends, then close
                if not response.prepared:
                    await response.prepare(request)
                    await response.write_eof()
            finally:
                await detached.linger()
    return response


def _check_site(request: web.Request) -> None:
    """With ``ops.listen``, the ops routes answer only on the ops address and every other
    route only on the main one."""
    ops_port = request.app[state.SERVING].ops_port
    if ops_port is None:
        return
    sockname = request.transport.get_extra_info("sockname") if request.transport else None
    on_ops = isinstance(sockname, tuple) and sockname[1] == ops_port
    if (request.path in api.OPS_PATHS) != on_ops and request.match_info.handler is not _refused:
        raise NotFound("not_found", "Not Found")


def _log_error(request: web.Request, exc: RecsinkError, status: int, started: float,
               exc_info: BaseException | None = None) -> None:
    source = request.get(state.UPLOAD_SOURCE)
    fields = dict(status=status, error=exc.code, detail=exc.detail,
                  method=request.method, remote=request.remote,
                  elapsed_ms=round((time.perf_counter() - started) * 1000, 1), **exc.fields)
    log = logs.get_logger()
    if source is None:
        callback = request.get(state.CALLBACK_SOURCE)
        where = {"source": callback} if callback else {}
        if exc_info is not None:  # a bug: keep its traceback
            log.error("request.failed", exc_info=exc_info, **where, **fields)
        else:
            log.warning("callback.rejected" if callback else "request.rejected",
                        **where, **fields)
        return
    # An upload that got as far as a record (or broke on our side) failed; the rest were
    # refused before anything was kept.
    failed = "record_id" in exc.fields or status >= 500
    request.app[state.METRICS].uploads.labels(source, "failed" if failed else "rejected").inc()
    if failed:
        log.error("upload.failed", exc_info=exc_info, **fields)
    else:
        log.warning("upload.rejected", **fields)
