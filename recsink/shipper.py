"""The shipper: moves recordings kept in the local spool (S3 was unreachable) to S3.

Spooled recordings were acknowledged, so the catalog already has them as ``completed`` with
``ship_state = "pending"``, a ``file://`` storage URL, and the spool that holds them
(``ship_spool``: each instance ships only its own spool). The shipper claims due ones from
the catalog under a lease (:class:`~recsink.jobs.Worker`) and ships each with
:meth:`S3Storage.ship <recsink.storage.s3.S3Storage.ship>`, which first looks for the very
same recording in S3 (a put whose answer was lost before the upload was spooled) so nothing
is stored twice. Only after the catalog names the S3 object does it delete the spool file. A
failure leaves everything in place and retries after 1, 2, 4, … seconds (capped at
``storage.s3.ship_backoff_max``). The spool lives in the catalog and on disk, so it survives
a restart; an instance that never comes back leaves its spool on its own disk (README,
"Running a fleet").
"""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING

import aiojobs

from recsink import logs
from recsink.catalog import Status, utcnow
from recsink.commit import Commits, Held
from recsink.errors import RecsinkError
from recsink.jobs import Worker
from recsink.metrics import Metrics
from recsink.storage import MultipartUpload

if TYPE_CHECKING:
    from recsink.storage.s3 import S3Storage

#: Spooled recordings shipped at once.
BATCH = 4
#: Seconds between looks at the catalog when nothing is due.
IDLE = 1.0


class Shipper:
    """Ships ``storage``'s spool to S3; :meth:`run` is the background loop."""

    def __init__(self, storage: S3Storage, commits: Commits, metrics: Metrics,
                 scheduler: aiojobs.Scheduler) -> None:
        self.storage = storage
        self.commits = commits
        self.catalog = commits.catalog
        self.metrics = metrics
        self.worker = Worker("ship", self._claim, self.ship, scheduler, limit=BATCH,
                             idle=IDLE, tick=self._tick)
        self._log = logs.get_logger()

    async def run(self) -> None:
        """Ship due recordings forever (cancel to stop)."""
        await self.worker.run()

    async def _tick(self) -> None:
        self.metrics.spool_pending.set(
            await self.catalog.pending("ship", spool=self.storage.spool_id))

    async def _claim(self, limit: int) -> list[Held]:
        owner = self.commits.new_owner()
        rows = await self.catalog.claim("ship", owner, self.commits.ttl, limit,
                                        spool=self.storage.spool_id)
        return [self.commits.hold(row, owner) for row in rows]

    async def ship(self, held: Held) -> None:
        """Ship one spooled recording (held), or schedule its retry."""
        record = held.record
        assert record.storage_key is not None
        if not self.storage.spool.path(record.storage_key).is_file():
            await self.commits.release(held, status=Status.FAILED, ship_state=None,
                                       ship_error="the spooled file is missing")
            self._log.error("spool.missing", id=record.id, key=record.storage_key)
            return
        try:
            if record.upload_id is not None and record.upload_key is not None:
                # An earlier attempt stopped mid-upload: abort what it left open.
                await self.storage.discard(MultipartUpload(record.upload_key, record.upload_id))
            held.committing = True
            stored = await self.storage.ship(record.storage_key, record.object_metadata(),
                                             self.commits.recorder(held))
        except RecsinkError as exc:
            await self._retry_later(held, exc)
            return
        await self.commits.release(
            held, storage_key=stored.key, storage_url=stored.url, ship_state="shipped",
            ship_error=None, next_ship_at=None, ship_spool=None, upload_key=None,
            upload_id=None)
        try:
            await self.storage.spool.delete(record.storage_key)
        except RecsinkError as exc:  # shipped; the copy left is swept with the spool
            self._log.warning("spool.delete_failed", id=record.id, error=exc.reason())
        self.storage.mark_reachable()
        self._log.info("recording.shipped", id=record.id, call_id=record.call_id,
                       recording_id=record.recording_id, storage_key=stored.key,
                       attempts=record.ship_attempts + 1)

    async def _retry_later(self, held: Held, exc: RecsinkError) -> None:
        record = held.record
        attempts = record.ship_attempts + 1
        delay = min(self.storage.settings.ship_backoff_max, 2.0 ** (attempts - 1))
        await self.commits.release(
            held, ship_attempts=attempts, ship_error=exc.reason(),
            next_ship_at=utcnow() + timedelta(seconds=delay))
        self._log.warning("recording.ship_failed", id=record.id, attempts=attempts,
                          retry_in_s=delay, error=exc.reason())
