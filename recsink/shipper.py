"""The shipper: moves recordings kept in the local spool (S3 was unreachable) to S3.

Spooled recordings were acknowledged, so the catalog already has them as ``completed`` with
``ship_state = "pending"`` and a ``file://`` storage URL. The shipper takes them in order of
``next_ship_at``: it claims each one like an upload (another instance may have stored the
same recording meanwhile: then the spooled copy is dropped and the record points at that
object), streams the spool file to S3, and only after the catalog names the S3 object does it
delete the spool file. A failure leaves everything in place and retries after 1, 2, 4, …
seconds (capped at ``storage.s3.ship_backoff_max``). The spool lives in the catalog and on
disk, so it survives a restart.
"""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import aiofiles

from recsink import logs
from recsink.catalog import Catalog, Recording, Status, utcnow
from recsink.metrics import Metrics
from recsink.storage import AlreadyStored, Existing, StorageError

if TYPE_CHECKING:
    from recsink.storage.s3 import S3Storage

#: Spooled recordings shipped at once.
BATCH = 4
#: Seconds between looks at the catalog when nothing is due.
IDLE = 1.0
#: Seconds between retries of multipart aborts and claim writes that failed (S3 was
#: unreachable).
SWEEP_INTERVAL = 5.0


class Shipper:
    """Ships ``storage``'s spool to S3; :meth:`run` is the background task."""

    def __init__(self, storage: S3Storage, catalog: Catalog, metrics: Metrics) -> None:
        self.storage = storage
        self.catalog = catalog
        self.metrics = metrics
        self._log = logs.get_logger()
        self._last_sweep = time.monotonic()

    async def run(self) -> None:
        """Ship due recordings forever (cancel to stop)."""
        while True:
            self.metrics.spool_pending.set(await self.catalog.pending("ship"))
            due = await self.catalog.due("ship", utcnow(), BATCH)
            for record in due:
                await self.ship(record)
            if time.monotonic() - self._last_sweep > SWEEP_INTERVAL:
                self._last_sweep = time.monotonic()
                if await asyncio.to_thread(self.storage.leftovers) > 0:
                    await self.storage.sweep_multipart()
                if self.storage.claims.pending:
                    await self.storage.claims.retry_pending()
            if not due:
                await asyncio.sleep(IDLE)

    async def ship(self, record: Recording) -> bool:
        """Ship one spooled recording; True when it is in S3 (or was found there)."""
        assert record.storage_key is not None
        path = self.storage.local_path(record.storage_key)
        if path is None:
            await self.catalog.update(record.id, status=Status.FAILED, ship_state=None,
                                      ship_error="the spooled file is missing")
            self._log.error("spool.missing", id=record.id, key=record.storage_key)
            return False
        try:
            claimed = (await self.storage.claims.claim(record.idempotency_key)
                       if record.idempotency_key else None)
            if isinstance(claimed, Existing):
                await self._settle(record, claimed.key, shipped=False)
                return True
            try:
                key = await self._upload(record, path)
            except BaseException:
                if claimed is not None:
                    await asyncio.shield(claimed.release())
                raise
            if claimed is not None:
                await claimed.settle(key)
            await self._settle(record, key, shipped=True)
            return True
        except StorageError as exc:
            await self._retry_later(record, exc)
            return False

    async def _upload(self, record: Recording, path: Path) -> str:
        assert record.storage_key is not None
        staging = await self.storage.open_direct(record.storage_key, record.object_metadata())
        try:
            async with aiofiles.open(path, "rb") as fh:
                while block := await fh.read(self.storage.settings.part_size):
                    await staging.write(block)
            await staging.finish()
            try:
                stored = await staging.commit(record.object_metadata())
            except AlreadyStored as same:
                return same.key
            return stored.key
        except BaseException:
            await asyncio.shield(staging.abort())
            raise

    async def _settle(self, record: Recording, key: str, *, shipped: bool) -> None:
        """Point the record at the S3 object, then drop the spooled copy."""
        assert record.storage_key is not None
        await self.catalog.update(
            record.id, storage_key=key, storage_url=self.storage.url(key),
            ship_state="shipped", ship_error=None, next_ship_at=None)
        await self.storage.spool.delete(record.storage_key)
        self.storage.mark_reachable()
        self._log.info("recording.shipped" if shipped else "recording.shipped_duplicate",
                       id=record.id, call_id=record.call_id, recording_id=record.recording_id,
                       storage_key=key, attempts=record.ship_attempts + 1)

    async def _retry_later(self, record: Recording, exc: StorageError) -> None:
        attempts = record.ship_attempts + 1
        delay = min(self.storage.settings.ship_backoff_max, 2.0 ** (attempts - 1))
        await self.catalog.update(
            record.id, ship_attempts=attempts, ship_error=str(exc),
            next_ship_at=utcnow() + timedelta(seconds=delay))
        self._log.warning("recording.ship_failed", id=record.id, attempts=attempts,
                          retry_in_s=delay, error=str(exc))
