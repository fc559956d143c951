"""Typed application state (``web.AppKey``): what handlers find on ``request.app``.

The objects are created in :func:`recsink.app.create_app` (settings, auth, metrics, signature
verifiers) and in its ``cleanup_ctx`` (catalog, storage, ingestor, fetcher), so each has one
owner and one lifetime.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

from recsink.auth import UploadAuth
from recsink.catalog import Catalog
from recsink.config import Settings
from recsink.ingest import Ingestor
from recsink.metrics import Metrics
from recsink.storage import Storage

if TYPE_CHECKING:  # the source modules use these keys: no runtime import back to them
    from recsink.fetch import Fetcher
    from recsink.sources.laml import LamlVerifier
    from recsink.sources.sinch import SinchVerifier

SETTINGS = web.AppKey("settings", Settings)
AUTH = web.AppKey("auth", UploadAuth)
METRICS = web.AppKey("metrics", Metrics)
CATALOG = web.AppKey("catalog", Catalog)
STORAGE = web.AppKey("storage", Storage)
INGESTOR = web.AppKey("ingestor", Ingestor)
FETCHER: web.AppKey[Fetcher] = web.AppKey("fetcher")
SINCH: web.AppKey[SinchVerifier] = web.AppKey("sinch")
LAML: web.AppKey[LamlVerifier] = web.AppKey("laml")

#: The source an upload request is for, set by its handler (for error logs and metrics).
UPLOAD_SOURCE = web.RequestKey("upload_source", str)
#: The platform a status callback comes from, set by its handler (for error logs).
CALLBACK_SOURCE = web.RequestKey("callback_source", str)
