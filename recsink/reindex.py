"""``recsink reindex``: rebuild an instance's catalog from the bucket's object metadata.

Every object under the S3 prefix (recsink's own ``.recsink/`` objects excepted) is read with
HeadObject and recorded as a completed recording from its ``x-amz-meta-*``
(:meth:`~recsink.catalog.Recording.from_object_metadata`). Records the catalog already has
settled are left alone, unsettled ones are completed, missing ones are added; nothing in the
bucket changes. Use it for a new instance, after losing a catalog, or to let an instance
answer GET probes and API queries for recordings another instance stored.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections import Counter

from recsink.catalog import SETTLED, Catalog, Recording
from recsink.config import Settings
from recsink.metrics import Metrics
from recsink.storage.s3 import S3Storage
from recsink.storage.s3client import open_client

#: HeadObject requests in flight.
PARALLEL = 16


async def reindex(settings: Settings) -> dict[str, int]:
    """Reindex the catalog of ``settings`` from its bucket; returns counts of objects
    ``seen``, records ``added``, ``completed`` (were unsettled) and ``unchanged``."""
    counts: Counter[str] = Counter()
    async with open_client(settings.storage.s3) as client:
        storage = S3Storage(client, settings.storage.s3, Metrics())
        catalog = await Catalog.open(settings.catalog.path)
        try:
            limit = asyncio.Semaphore(PARALLEL)

            async def one(key: str) -> None:
                async with limit:
                    meta = await storage.head(key)
                if meta is None:
                    return
                counts["seen"] += 1
                # An object recsink did not write gets an id that stays the same across runs.
                stable_id = "rec_" + hashlib.sha256(key.encode()).hexdigest()[:20]
                meta.setdefault("recsink-id", stable_id)
                record = Recording.from_object_metadata(meta, key, storage.url(key))
                before = (await catalog.by_key(record.idempotency_key) if record.idempotency_key
                          else await catalog.get(record.id))
                await catalog.adopt(record)
                if before is None:
                    counts["added"] += 1
                elif before.status in SETTLED:
                    counts["unchanged"] += 1
                else:
                    counts["completed"] += 1

            async with asyncio.TaskGroup() as group:
                async for key in storage.list_objects():
                    group.create_task(one(key))
        finally:
            await catalog.close()
    return {k: counts[k] for k in ("seen", "added", "completed", "unchanged")}
