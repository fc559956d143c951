"""Typed application state (``web.AppKey``): what handlers find on ``request.app``.

The objects are created in :func:`recsink.app.create_app` (settings, auth, metrics) and in
its ``cleanup_ctx`` (catalog, storage, ingestor), so each has one owner and one lifetime.
"""

from __future__ import annotations

from aiohttp import web

from recsink.auth import UploadAuth
from recsink.catalog import Catalog
from recsink.config import Settings
from recsink.ingest import Ingestor
from recsink.metrics import Metrics
from recsink.storage import Storage

SETTINGS = web.AppKey("settings", Settings)
AUTH = web.AppKey("auth", UploadAuth)
METRICS = web.AppKey("metrics", Metrics)
CATALOG = web.AppKey("catalog", Catalog)
STORAGE = web.AppKey("storage", Storage)
INGESTOR = web.AppKey("ingestor", Ingestor)

#: The source an upload request is for, set by its handler (for error logs and metrics).
UPLOAD_SOURCE = web.RequestKey("upload_source", str)
