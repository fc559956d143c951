"""Typed application state (``web.AppKey``): what handlers find on ``request.app``.

The objects are created in :func:`recsink.app.create_app` (settings, auth, metrics, signature
verifiers) and in its ``cleanup_ctx`` (catalog, storage, ingestor, fetcher), so each has one
owner and one lifetime.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from aiohttp import web

from recsink.auth import Admission, UploadAuth
from recsink.catalog import Catalog
from recsink.config import Settings
from recsink.connections import Registry
from recsink.errors import Unavailable
from recsink.ingest import Ingestor
from recsink.metrics import Metrics
from recsink.storage import Storage

if TYPE_CHECKING:  # the source modules use these keys: no runtime import back to them
    from recsink.fetch import Fetcher
    from recsink.retention import Retention
    from recsink.sources.laml import LamlVerifier
    from recsink.sources.sendbird_polls import Sendbird
    from recsink.sources.sinch import SinchVerifier
    from recsink.webhooks import Dispatcher


class Serving:
    """What :func:`recsink.server.serve` tells the app about its listeners: the ops port
    when /healthz, /readyz, /metrics have their own, and the open client connections
    (:class:`recsink.connections.Registry`)."""

    def __init__(self) -> None:
        self.ops_port: int | None = None
        self.registry = Registry()


class UploadGate:
    """At most ``limit`` uploads are received at once (``server.max_uploads``); none are
    admitted while draining."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.receiving = 0
        self.draining = False
        self._idle = asyncio.Event()
        self._idle.set()

    def check(self) -> None:
        """Raise 503 (Retry-After) when every slot is taken or recsink is stopping."""
        if self.draining:
            raise Unavailable("stopping", "recsink is stopping; try again shortly",
                              retry_after=5)
        if self.receiving >= self.limit:
            raise Unavailable("busy", f"{self.receiving} uploads are being received "
                              f"(server.max_uploads); try again shortly", retry_after=5)

    @contextmanager
    def slot(self) -> Iterator[None]:
        self.check()
        self.receiving += 1
        self._idle.clear()
        try:
            yield
        finally:
            self.receiving -= 1
            if not self.receiving:
                self._idle.set()

    async def drain(self, seconds: float) -> int:
        """Admit nothing more and wait up to ``seconds`` for the uploads being received;
        return how many are still running."""
        self.draining = True
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), seconds)
        return self.receiving


SETTINGS = web.AppKey("settings", Settings)
AUTH = web.AppKey("auth", UploadAuth)
METRICS = web.AppKey("metrics", Metrics)
CATALOG = web.AppKey("catalog", Catalog)
STORAGE = web.AppKey("storage", Storage)
INGESTOR = web.AppKey("ingestor", Ingestor)
FETCHER: web.AppKey[Fetcher] = web.AppKey("fetcher")
SINCH: web.AppKey[SinchVerifier] = web.AppKey("sinch")
LAML: web.AppKey[LamlVerifier] = web.AppKey("laml")
WEBHOOKS: web.AppKey[Dispatcher] = web.AppKey("webhooks")
SENDBIRD: web.AppKey[Sendbird] = web.AppKey("sendbird")
RETENTION: web.AppKey[Retention] = web.AppKey("retention")
SERVING = web.AppKey("serving", Serving)
GATE = web.AppKey("gate", UploadGate)

#: The source an upload request is for, set by its handler (for error logs and metrics).
UPLOAD_SOURCE = web.RequestKey("upload_source", str)
#: The request's id (``X-Request-ID``: the client's own when usable, else a new one).
REQUEST_ID = web.RequestKey("request_id", str)
#: The platform a status callback comes from, set by its handler (for error logs).
CALLBACK_SOURCE = web.RequestKey("callback_source", str)
#: Who a Kazoo request was admitted as (its credential's accounts), set by its handler.
ADMISSION = web.RequestKey("admission", Admission)
