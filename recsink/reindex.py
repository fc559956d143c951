"""``recsink reindex``: rebuild the catalog from the bucket.

Every object under the S3 prefix (recsink 0.1's ``.recsink/`` objects excepted) is read with
HeadObject and recorded as a completed recording from its ``x-amz-meta-*``
(:meth:`~recsink.catalog.Recording.from_object_metadata`). What an object's create-time
metadata does not carry (a multipart object's sha256, duration, sample rate and channels,
which live in the catalog only) is recomputed from the object itself: its bytes are read
once, hashed, and its first and last bytes probed (:func:`~recsink.audio.probe_parts`).
Records the catalog already has settled are left alone (their objects are not read),
unsettled ones are completed, missing ones are added; nothing in the bucket changes. Use it
after losing a catalog, or to bring a bucket written by recsink 0.1 into a fleet's catalog.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections import Counter

from recsink.audio import Format, probe_parts, scan
from recsink.catalog import SETTLED, Recording, open_catalog
from recsink.config import Settings
from recsink.metrics import Metrics
from recsink.storage.s3 import S3Storage
from recsink.storage.s3client import open_client

#: Objects looked at in parallel.
PARALLEL = 16
#: Bytes read from an object at a time while recomputing its facts.
READ_BLOCK = 1024 * 1024


async def reindex(settings: Settings) -> dict[str, int]:
    """Reindex the catalog of ``settings`` from its bucket; returns counts of objects
    ``seen``, records ``added``, ``completed`` (were unsettled), ``unchanged``, and objects
    whose facts were ``recomputed`` from their bytes."""
    counts: Counter[str] = Counter()
    async with open_client(settings.storage.s3) as client:
        storage = S3Storage(client, settings.storage.s3, Metrics())
        catalog = await open_catalog(settings.catalog)
        try:
            limit = asyncio.Semaphore(PARALLEL)

            async def one(key: str) -> None:
                async with limit:
                    meta = await storage.head(key)
                    if meta is None:
                        return
                    counts["seen"] += 1
                    before = None
                    if "recsink-id" not in meta:
                        # Written by someone else: a record may name it already (an object
                        # adopted where it was, e.g. a Sendbird copy); else its id is one
                        # that stays the same from run to run.
                        before = await catalog.by_storage_key(key)
                        meta["recsink-id"] = (
                            before.id if before is not None
                            else "rec_" + hashlib.sha256(key.encode()).hexdigest()[:20])
                    record = Recording.from_object_metadata(meta, key, storage.url(key))
                    if before is None:
                        before = (await catalog.by_key(record.idempotency_key)
                                  if record.idempotency_key else await catalog.get(record.id))
                    if before is not None and before.status in SETTLED:
                        counts["unchanged"] += 1
                        return
                    if record.sha256 is None or record.duration_ms is None:
                        await _recompute(storage, record)
                        counts["recomputed"] += 1
                    await catalog.adopt(record)
                    counts["added" if before is None else "completed"] += 1

            async with asyncio.TaskGroup() as group:
                async for key in storage.list_objects():
                    group.create_task(one(key))
        finally:
            await catalog.close()
    return {k: counts[k] for k in ("seen", "added", "completed", "unchanged", "recomputed")}


async def _recompute(storage: S3Storage, record: Recording) -> None:
    """Fill ``record``'s sha256, size and audio facts from its object's bytes."""
    assert record.storage_key is not None
    scanned = await scan(storage.read(record.storage_key, READ_BLOCK))
    record.sha256 = scanned.sha256
    record.byte_size = scanned.size
    fmt = Format(record.format) if record.format in ("wav", "mp3") else None
    if fmt is not None:
        facts = await asyncio.to_thread(probe_parts, scanned.head, scanned.tail,
                                        scanned.size, fmt)
        record.duration_ms = record.duration_ms if facts.duration_ms is None \
            else facts.duration_ms
        record.sample_rate = facts.sample_rate or record.sample_rate
        record.channels = facts.channels or record.channels
