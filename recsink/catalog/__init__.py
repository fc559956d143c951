"""The catalog: one row per recording, its idempotency key, its status, and the work kept
with it (pulls, shipping, settling), in SQLite (one machine) or PostgreSQL (a fleet).

One :class:`Catalog` interface (:mod:`recsink.catalog.base`), two engines
(:mod:`~recsink.catalog.sqlite`, :mod:`~recsink.catalog.postgres`), one set of statements
(:mod:`~recsink.catalog.sql`) and versioned migrations (:mod:`~recsink.catalog.migrations`).
Idempotency keys are unique, so at most one row, and so one stored object, exists per key. A
key is ``<source>:rid:<sender's recording id>`` when the sender names the recording, else
``<source>:sha:<call_id>:<sha256 of the body>``, set once the body is complete.
"""

from __future__ import annotations

from recsink.catalog.base import (
    Catalog,
    CatalogFull,
    CatalogUnavailable,
    Conflict,
    Lease,
    LeaseLost,
    SchemaTooNew,
)
from recsink.catalog.records import (
    SETTLED,
    Queue,
    Recording,
    Status,
    iso,
    new_id,
    utcnow,
    whole_number,
)
from recsink.config import CatalogSettings

__all__ = [
    "SETTLED", "Catalog", "CatalogFull", "CatalogUnavailable", "Conflict", "Lease",
    "LeaseLost", "Queue", "Recording", "SchemaTooNew", "Status", "iso", "new_id",
    "open_catalog", "utcnow", "whole_number",
]


async def open_catalog(settings: CatalogSettings, *, migrate: bool = True) -> Catalog:
    """The catalog ``settings`` name: PostgreSQL when ``catalog.url`` is set, else SQLite at
    ``catalog.path``; its schema brought up to date unless ``migrate`` is False. Raises
    :class:`CatalogUnavailable` and :class:`SchemaTooNew`."""
    url = settings.url.get_secret_value()
    if url:
        from recsink.catalog.postgres import PostgresCatalog

        return await PostgresCatalog.open(url, pool_size=settings.pool_size,
                                          wait=settings.connect_timeout, migrate=migrate,
                                          prepare=settings.prepared_statements)
    from recsink.catalog.sqlite import SqliteCatalog

    return await SqliteCatalog.open(settings.path, migrate=migrate)
